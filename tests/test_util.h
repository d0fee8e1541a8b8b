// Helpers shared by the tests: paths to ../shared, temporary directories, running the vitq binary.
#pragma once
#include <gtest/gtest.h>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
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

// Runs `vitq ARGS` (ARGS already shell-quoted where needed).
inline CliResult run_vitq(const std::string& args) {
  CliResult r;
  std::string cmd = std::string(VITQ_BINARY) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
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

}  // namespace vitq::test
