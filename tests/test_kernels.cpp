#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "vitq/graph/kernels.h"

using namespace vitq;

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
