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

void write_file_atomic(const std::string& path, std::string_view bytes, bool overwrite) {
  if (path.empty()) fail("no output path given");
  const fs::path out(path);
  std::error_code ec;
  if (fs::is_directory(out, ec)) fail("{}: is a directory, not a file to write", path);
  if (!overwrite && fs::exists(fs::symlink_status(out, ec))) fail("{}: exists (use --force to overwrite it)", path);
  fs::path dir = out.parent_path();
  if (dir.empty()) dir = ".";
  if (!fs::is_directory(dir, ec)) fail("{}: folder {} does not exist", path, dir.string());
  std::string tmp = (dir / ("." + out.filename().string() + ".tmp.XXXXXX")).string();
  int fd = ::mkstemp(tmp.data());
  if (fd < 0) fail("{}: cannot write in {}: {}", path, dir.string(), std::strerror(errno));
  auto abandon = [&](const std::string& why) {
    ::close(fd);
    ::unlink(tmp.c_str());
    fail("{}: {}", path, why);
  };
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      abandon(fmt::format("write failed: {}", std::strerror(errno)));
    }
    done += static_cast<size_t>(n);
  }
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
