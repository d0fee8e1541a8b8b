// A small progress reporter: a redrawn bar on a terminal, plain lines (every 10%) otherwise, so logs of CI
// runs stay readable. Writes to stderr; results go to stdout.
#pragma once
#include <chrono>
#include <cstddef>
#include <string>

namespace vitq {

class Progress {
 public:
  Progress(std::string label, size_t total, bool enabled = true);
  void update(size_t done, const std::string& status = "");
  void finish(const std::string& status = "");

 private:
  std::string label_;
  size_t total_;
  bool enabled_, tty_;
  int last_decile_ = -1;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace vitq
