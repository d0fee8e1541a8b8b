#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "vitq/graph/kernels.h"
#include "vitq/util/blas.h"

using namespace vitq;

// scripts/setup.sh selects OpenBLAS's OpenMP build for libtorch; on its pthreads build (what Debian picks when both
// are installed) a reconstruction on 2 cores takes ~20% longer (docs/decisions.md). A libtorch on another
// BLAS (MKL in pip's wheels) passes: only the pthreads OpenBLAS fails.
TEST(Kernels, LibtorchDoesNotRunOnThePthreadsOpenBlas) {
  const BlasInfo b = blas_info();
  std::printf("BLAS: %s\n", b.summary().c_str());
  EXPECT_NE(b.threading, "pthreads") << "run scripts/setup.sh, or select the OpenMP build for libopenblas.so.0";
  if (!b.config.empty()) EXPECT_NE(b.config.find("OpenBLAS"), std::string::npos) << b.config;
  EXPECT_EQ(blas_warning(1), "");  // one thread: no pool to fight over
  EXPECT_EQ(blas_warning(2).empty(), b.threading != "pthreads");
}

TEST(Kernels, ErfFastAgainstStdErf) {
  double max_err = 0;
  for (int i = -2000000; i <= 2000000; ++i) {
    const float x = static_cast<float>(i) * 5e-6f;  // [-10, 10]
    max_err = std::max(max_err, std::abs(static_cast<double>(erf_fast(x)) - std::erf(static_cast<double>(x))));
  }
  std::printf("erf_fast max abs error on [-10, 10]: %.3g\n", max_err);
  EXPECT_LE(max_err, 6e-7);
  EXPECT_EQ(erf_fast(0.0f), 0.0f);
  EXPECT_EQ(erf_fast(1e30f), 1.0f);
  EXPECT_EQ(erf_fast(-1e30f), -1.0f);
}

TEST(Kernels, GeluMatchesReference) {
  auto x = at::randn({7, 333}) * 4;
  auto fast = gelu_erf(x);
  auto ref = x * 0.5 * (1 + at::erf(x.to(at::kDouble) / std::sqrt(2.0))).to(at::kFloat);
  EXPECT_LE((fast - ref).abs().max().item<float>(), 2e-6f);
  // non-contiguous input
  auto t = x.t();
  EXPECT_TRUE(at::allclose(gelu_erf(t), at::gelu(t), 1e-5, 2e-6));
}

// Our softmax against a plain double-precision reference: rows of odd lengths (vector tails), large and
// very negative values (the max shift), a row of equal values, a non-contiguous input.
TEST(Kernels, SoftmaxMatchesReference) {
  at::manual_seed(0);
  for (int64_t n : {1, 7, 16, 197, 1000}) {
    auto x = at::randn({5, 3, n}) * 20;
    x[0][0].fill_(3.0f);
    x[1][1] -= 1000.0f;
    auto fast = softmax_lastdim(x);
    auto xd = x.to(at::kDouble);
    auto e = (xd - std::get<0>(xd.max(-1, true))).exp();
    auto ref = (e / e.sum(-1, true)).to(at::kFloat);
    const float err = (fast - ref).abs().max().item<float>();
    EXPECT_LE(err, 2e-7f) << "row length " << n;
    EXPECT_LE((fast.sum(-1) - 1).abs().max().item<float>(), 2e-6f) << n;
  }
  auto x = at::randn({4, 9, 33});
  auto t = x.transpose(0, 1);
  EXPECT_LE((softmax_lastdim(t) - at::softmax(t, -1)).abs().max().item<float>(), 2e-7f);
}
