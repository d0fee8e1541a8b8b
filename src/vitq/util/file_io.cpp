#include "vitq/util/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "vitq/util/error.h"

namespace vitq {

namespace fs = std::filesystem;

namespace {
const char* kind_of(mode_t m) {
  if (S_ISDIR(m)) return "a folder";
  if (S_ISFIFO(m)) return "a FIFO (named pipe)";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  return "not a regular file";
}

// Writes all of `bytes` to `fd`; false (errno set) on failure.
bool write_all(int fd, std::string_view bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (n == 0) {
      errno = ENOSPC;
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}
}  // namespace

void check_regular_file(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail("{}: cannot open {}: {}", path, what, std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail("{}: the {} is {}, not a file vitq can read", path, what, kind_of(st.st_mode));
}

std::string read_file(const std::string& path, const std::string& what, uint64_t max_bytes) {
  check_regular_file(path, what);
  // O_NONBLOCK: should the path have become a FIFO since the check, open() still returns at once.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open {}: {}", path, what, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{}: the {} is not a regular file", path, what);
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size > max_bytes) {
    ::close(fd);
    fail("{}: {} bytes, more than vitq reads as a {} ({})", path, size, what, max_bytes);
  }
  std::string out;
  try {
    out.resize(size);
  } catch (const std::exception&) {
    ::close(fd);
    fail("{}: out of memory reading the {} ({} bytes)", path, what, size);
  }
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::read(fd, out.data() + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int e = errno;
      ::close(fd);
      if (n == 0) fail("{}: the {} shrank while it was read ({} of {} bytes)", path, what, done, size);
      fail("{}: reading the {} failed: {}", path, what, std::strerror(e));
    }
    done += static_cast<size_t>(n);
  }
  char extra = 0;
  const ssize_t more = ::read(fd, &extra, 1);
  ::close(fd);
  if (more > 0) fail("{}: the {} grew while it was read", path, what);
  return out;
}

void check_output_path(const std::string& output, const std::vector<std::string>& inputs, const std::string& what) {
  if (output.empty()) fail("{}: no output path given", what);
  check_not_an_input(output, inputs, what);
  struct stat st {};
  if (::stat(output.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) fail("{} {}: is a folder, not a file to write", what, output);
    if (!S_ISREG(st.st_mode) && !S_ISCHR(st.st_mode) && !S_ISFIFO(st.st_mode))
      fail("{} {}: is {}, not a file to write", what, output, kind_of(st.st_mode));
    if (::access(output.c_str(), W_OK) != 0) fail("{} {}: not writable: {}", what, output, std::strerror(errno));
    if (!S_ISREG(st.st_mode)) return;  // a device or pipe (/dev/null, /dev/stdout): written in place
  }
  // The file is written beside its final place and renamed: its folder must exist and be writable.
  fs::path dir = fs::path(output).parent_path();
  if (dir.empty()) dir = ".";
  struct stat sd {};
  if (::stat(dir.c_str(), &sd) != 0 || !S_ISDIR(sd.st_mode)) fail("{} {}: folder {} does not exist", what, output, dir.string());
  if (::access(dir.c_str(), W_OK) != 0) fail("{} {}: folder {} is not writable: {}", what, output, dir.string(), std::strerror(errno));
  // access() says yes to root everywhere (even in /proc): try to create the temporary file for real
  std::string probe = (dir / ".vitq-probe.XXXXXX").string();
  const int fd = ::mkstemp(probe.data());
  if (fd < 0) fail("{} {}: cannot create files in {}: {}", what, output, dir.string(), std::strerror(errno));
  ::close(fd);
  ::unlink(probe.c_str());
}

void make_output_dir(const std::string& dir, const std::string& what) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    fail("{} {}: cannot create the folder{}", what, dir, ec ? ": " + ec.message() : std::string());
  if (::access(dir.c_str(), W_OK) != 0) fail("{} {}: folder is not writable: {}", what, dir, std::strerror(errno));
}

void write_file_atomic(const std::string& path_arg, std::string_view bytes, bool overwrite) {
  if (path_arg.empty()) fail("no output path given");
  struct stat target {};
  if (::stat(path_arg.c_str(), &target) == 0 && (S_ISCHR(target.st_mode) || S_ISFIFO(target.st_mode))) {
    // /dev/null, /dev/full, a terminal, /dev/stdout into a pipe: written in place, every write checked. A FIFO
    // is opened without blocking: with nobody reading it that is an error, not a hang.
    if (!overwrite) fail("{}: exists (use --force to overwrite it)", path_arg);
    const bool fifo = S_ISFIFO(target.st_mode);
    const int fd = ::open(path_arg.c_str(), O_WRONLY | O_CLOEXEC | (fifo ? O_NONBLOCK : 0));
    if (fd < 0 && fifo && errno == ENXIO) fail("{}: a FIFO (named pipe) that nobody reads", path_arg);
    if (fd < 0) fail("{}: cannot open: {}", path_arg, std::strerror(errno));
    if (fifo) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    const bool ok = write_all(fd, bytes);
    const int e = errno;
    if (::close(fd) != 0 || !ok) fail("{}: write failed: {}", path_arg, std::strerror(ok ? errno : e));
    return;
  }
  std::error_code ec;
  // Through a link the file it points at is replaced, not the link.
  std::string path = path_arg;
  if (fs::is_symlink(fs::symlink_status(path_arg, ec))) {
    const fs::path target = fs::weakly_canonical(path_arg, ec);
    if (!ec) path = target.string();
  }
  const fs::path out(path);
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) fail("{}: is a directory, not a file to write", path_arg);
    if (!overwrite) fail("{}: exists (use --force to overwrite it)", path_arg);
    if (!S_ISREG(st.st_mode)) fail("{}: is {}, not a file to write", path_arg, kind_of(st.st_mode));
  }
  fs::path dir = out.parent_path();
  if (dir.empty()) dir = ".";
  if (!fs::is_directory(dir, ec)) fail("{}: folder {} does not exist", path, dir.string());
  std::string tmp = (dir / ("." + out.filename().string() + ".tmp.XXXXXX")).string();
  int fd = ::mkstemp(tmp.data());
  if (fd < 0) fail("{}: cannot write in {}: {}", path_arg, dir.string(), std::strerror(errno));
  auto abandon = [&](const std::string& why) {
    ::close(fd);
    ::unlink(tmp.c_str());
    fail("{}: {}", path_arg, why);
  };
  if (!write_all(fd, bytes)) abandon(fmt::format("write failed: {}", std::strerror(errno)));
  if (::fchmod(fd, 0644) != 0 || ::fsync(fd) != 0) abandon(fmt::format("write failed: {}", std::strerror(errno)));
  if (::close(fd) != 0) {
    ::unlink(tmp.c_str());
    fail("{}: write failed: {}", path, std::strerror(errno));
  }
  if (overwrite) {
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      const int e = errno;
      ::unlink(tmp.c_str());
      fail("{}: cannot move the finished file into place: {}", path, std::strerror(e));
    }
    return;
  }
  // No clobbering, atomically: link() fails with EEXIST when a file appeared meanwhile.
  if (::link(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    if (e == EEXIST) fail("{}: exists (use --force to overwrite it)", path);
    fail("{}: cannot move the finished file into place: {}", path, std::strerror(e));
  }
  ::unlink(tmp.c_str());
}

void check_not_an_input(const std::string& output, const std::vector<std::string>& inputs, const std::string& what) {
  std::error_code ec;
  struct stat so {};
  const bool out_exists = ::stat(output.c_str(), &so) == 0;
  const fs::path out_abs = fs::weakly_canonical(fs::path(output), ec);
  for (const auto& in : inputs) {
    if (in.empty()) continue;
    std::error_code ec2;
    const fs::path in_abs = fs::weakly_canonical(fs::path(in), ec2);
    bool same = !ec && !ec2 && out_abs == in_abs;
    struct stat si {};
    if (!same && out_exists && ::stat(in.c_str(), &si) == 0) same = si.st_dev == so.st_dev && si.st_ino == so.st_ino;
    if (same) fail("{} {} is also an input ({}): refusing to overwrite it", what, output, in);
  }
}

}  // namespace vitq
