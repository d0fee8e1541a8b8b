#include "vitq/util/progress.h"

#include <unistd.h>

#include <cstdio>

namespace vitq {

Progress::Progress(std::string label, size_t total, bool enabled)
    : label_(std::move(label)), total_(total), enabled_(enabled), tty_(isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()) {}

void Progress::update(size_t done, const std::string& status) {
  if (!enabled_ || total_ == 0) return;
  double frac = static_cast<double>(done) / static_cast<double>(total_);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (tty_) {
    constexpr int width = 30;
    int filled = static_cast<int>(frac * width);
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(width, '.');
    std::fprintf(stderr, "\r%s [%s] %zu/%zu %.0fs %s\033[K", label_.c_str(), bar.c_str(), done, total_, secs,
                 status.c_str());
  } else {
    int decile = static_cast<int>(frac * 10);
    if (decile == last_decile_) return;
    last_decile_ = decile;
    std::fprintf(stderr, "%s: %zu/%zu (%d%%) %.0fs %s\n", label_.c_str(), done, total_, decile * 10, secs,
                 status.c_str());
  }
  std::fflush(stderr);
}

void Progress::finish(const std::string& status) {
  if (!enabled_) return;
  if (tty_) {
    update(total_, status);
    std::fprintf(stderr, "\n");
  } else if (last_decile_ != 10) {
    update(total_, status);
  }
}

}  // namespace vitq
