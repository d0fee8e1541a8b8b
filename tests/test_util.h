// Helpers shared by the tests: paths to ../shared, temporary directories, running the vitq binary.
#pragma once
#include <gtest/gtest.h>
#include <png.h>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>
#include <sys/wait.h>

namespace vitq::test {

namespace fs = std::filesystem;

inline fs::path shared_dir() { return fs::path(VITQ_SHARED_DIR); }
inline fs::path model_dir() { return shared_dir() / "models" / "deit_tiny_patch16_224"; }
inline fs::path golden(const std::string& name) { return model_dir() / "golden" / name; }
inline fs::path imagenet(const std::string& set) { return shared_dir() / "data" / "imagenet" / set; }

class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("vitq_test_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

inline void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out << bytes;
}

inline std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

struct CliResult {
  int code = -1;
  std::string output;  // stdout and stderr together
};

// Runs a shell command line (sh -c), stdout and stderr together.
inline CliResult run_command(const std::string& cmd) {
  CliResult r;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// Runs `vitq ARGS` (ARGS already shell-quoted where needed).
inline CliResult run_vitq(const std::string& args) { return run_command(std::string(VITQ_BINARY) + " " + args); }

// Runs `command` under bash (for trap, ulimit, & and wait).
inline CliResult run_bash(const std::string& command) {
  std::string q;
  for (char c : command) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return run_command("bash -c '" + q + "'");
}

// The first `n` images of val1000 copied into DIR/name, with their labels.txt.
inline fs::path val_subset(const fs::path& dir, size_t n, const std::string& name = "images") {
  const fs::path d = dir / name;
  fs::create_directories(d);
  std::istringstream in(read_file(imagenet("val1000") / "labels.txt"));
  std::string line, labels;
  for (size_t i = 0; i < n && std::getline(in, line); ++i) {
    fs::copy_file(imagenet("val1000") / line.substr(0, line.find(' ')), d / line.substr(0, line.find(' ')));
    labels += line + "\n";
  }
  write_file(d / "labels.txt", labels);
  return d;
}

// An RGB PNG of one colour.
inline void write_png(const fs::path& path, int w, int h, unsigned char value = 0) {
  FILE* f = std::fopen(path.c_str(), "wb");
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  png_init_io(png, f);
  png_set_IHDR(png, info, static_cast<png_uint_32>(w), static_cast<png_uint_32>(h), 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  std::vector<png_byte> row(static_cast<size_t>(w) * 3, value);
  for (int y = 0; y < h; ++y) png_write_row(png, row.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  std::fclose(f);
}

// The line of `output` that starts with "vitq: error:", or "" if none.
inline std::string error_line(const std::string& output) {
  auto pos = output.find("vitq: error:");
  if (pos == std::string::npos) return "";
  return output.substr(pos, output.find('\n', pos) - pos);
}

inline std::string quoted(const fs::path& p) { return "'" + p.string() + "'"; }

// Expects a nonzero exit without a crash, and a "vitq: error:" line that contains `needle`.
inline void expect_cli_error(const CliResult& r, const std::string& needle) {
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_LT(r.code, 128) << "crashed: " << r.output;
  EXPECT_NE(error_line(r.output).find(needle), std::string::npos) << "output: " << r.output;
}

// Expects fn() to throw an exception whose message contains `needle` (`what`: the case, for the failure message).
template <class Fn>
void expect_throw_mentioning(Fn&& fn, const std::string& needle, const std::string& what) {
  try {
    fn();
    ADD_FAILURE() << what << " was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << what << ": " << e.what();
  }
}

}  // namespace vitq::test
