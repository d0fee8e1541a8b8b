#pragma once
#include <string>

namespace vitq::cli {

struct BenchOptions {
  std::string model, data, out_dir, device = "cpu";
  size_t batch = 32, iters = 10, limit = 512;
  int threads = 0, workers = 1;
};
int run_bench(const BenchOptions& opt);

// Sets libtorch's intra-op threads (0 = all cores) and returns the count in use.
int set_threads(int threads);

}  // namespace vitq::cli
