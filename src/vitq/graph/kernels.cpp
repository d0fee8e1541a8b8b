#include "vitq/graph/kernels.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <bit>
#include <cmath>
#include <cstdint>

namespace vitq {

namespace {

// exp(y) for y in [-88, 0]: y = k ln2 + r with |r| <= ln2/2, exp(r) by its Taylor series to r^7
// (relative error < 2e-8 there), times 2^k built in the exponent bits. Branch-free so loops vectorise.
[[gnu::always_inline]] inline float exp_nonpositive(float y) {
  constexpr float log2e = 1.44269504088896341f, ln2_hi = 0.693145751953125f, ln2_lo = 1.42860682030941723e-6f;
  constexpr float round_magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  y = y < -87.0f ? -87.0f : y;  // (NaN passes and stays NaN below)
  const float kr = y * log2e + round_magic;  // k in the low mantissa bits: the ulp at 1.5 * 2^23 is 1
  const float k = kr - round_magic;
  const float r = (y - k * ln2_hi) - k * ln2_lo;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // 2^k from k's bits, not through a float-to-int conversion, which is undefined for NaN (a softmax row holding
  // inf - inf): unsigned arithmetic wraps, and NaN * anything stays NaN for evaluate's check to catch.
  const uint32_t bits = (std::bit_cast<uint32_t>(kr) - std::bit_cast<uint32_t>(round_magic) + 127u) << 23;
  return p * std::bit_cast<float>(bits);
}

[[gnu::always_inline]] inline float erf_inline(float x) {
  // A&S 7.1.26 on |x|, sign restored; |x| > 4 gives exactly ±1 in float anyway.
  const float a = std::fabs(x) < 4.0f ? std::fabs(x) : 4.0f;
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  float poly = 1.061405429f;
  poly = poly * t - 1.453152027f;
  poly = poly * t + 1.421413741f;
  poly = poly * t - 0.284496736f;
  poly = poly * t + 0.254829592f;
  const float e = 1.0f - poly * t * exp_nonpositive(-a * a);
  return std::copysign(e, x);
}

[[gnu::always_inline]] inline void gelu_span(const float* __restrict__ src, float* __restrict__ dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = 0.5f * src[i] * (1.0f + erf_inline(src[i] * 0.70710678118654752f));
}

// Compiled per instruction set and chosen at run time. The baseline (SSE2) build of this loop measured slower
// than libtorch's own GELU, so without AVX2 we use that instead.
[[gnu::target("avx512f,avx512vl,avx512dq,fma")]] void gelu_avx512(const float* src, float* dst, int64_t n) {
  gelu_span(src, dst, n);
}
[[gnu::target("avx2,fma")]] void gelu_avx2(const float* src, float* dst, int64_t n) { gelu_span(src, dst, n); }

using GeluFn = void (*)(const float*, float*, int64_t);
GeluFn pick_gelu() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return gelu_avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return gelu_avx2;
  return nullptr;
}

// Softmax of one row: max, exp(x - max) with our exp, sum, scale. Vectorises (no branches in the loops).
// The max and the sum are reduced in 16 lanes (float reductions do not vectorise without reassociation).
[[gnu::always_inline]] inline void softmax_row(const float* __restrict__ x, float* __restrict__ y, int64_t n) {
  constexpr int64_t L = 16;
  const int64_t body = n - n % L;
  float lanes[L];
  for (int64_t l = 0; l < L; ++l) lanes[l] = x[0];
  for (int64_t i = 0; i < body; i += L)
    for (int64_t l = 0; l < L; ++l) lanes[l] = x[i + l] > lanes[l] ? x[i + l] : lanes[l];
  float m = lanes[0];
  for (int64_t l = 1; l < L; ++l) m = lanes[l] > m ? lanes[l] : m;
  for (int64_t i = body; i < n; ++i) m = x[i] > m ? x[i] : m;
  for (int64_t i = 0; i < n; ++i) y[i] = exp_nonpositive(x[i] - m);
  for (int64_t l = 0; l < L; ++l) lanes[l] = 0.0f;
  for (int64_t i = 0; i < body; i += L)
    for (int64_t l = 0; l < L; ++l) lanes[l] += y[i + l];
  float sum = 0.0f;
  for (int64_t l = 0; l < L; ++l) sum += lanes[l];
  for (int64_t i = body; i < n; ++i) sum += y[i];
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) y[i] *= inv;
}
[[gnu::target("avx512f,avx512vl,avx512dq,fma")]] void softmax_rows_avx512(const float* x, float* y, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) softmax_row(x + r * n, y + r * n, n);
}
[[gnu::target("avx2,fma")]] void softmax_rows_avx2(const float* x, float* y, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) softmax_row(x + r * n, y + r * n, n);
}
// Softmax rows straight to uint8 codes: clamp(rint(p / s) + zp, lo, hi), p computed exactly as softmax_row does.
[[gnu::always_inline]] inline void softmax_codes_rows(const float* x, uint8_t* q, float* tmp, int64_t rows, int64_t n, float s,
                                                      float zp, float lo, float hi) {
  for (int64_t r = 0; r < rows; ++r) {
    softmax_row(x + r * n, tmp, n);
    uint8_t* out = q + r * n;
    for (int64_t i = 0; i < n; ++i) {
      float v = __builtin_rintf(tmp[i] / s) + zp;
      v = v < lo ? lo : v;
      v = v > hi ? hi : v;
      out[i] = static_cast<uint8_t>(v);
    }
  }
}
[[gnu::target("avx512f,avx512vl,avx512dq,avx512bw,fma")]] void softmax_codes_avx512(const float* x, uint8_t* q, float* tmp, int64_t rows,
                                                                                    int64_t n, float s, float zp, float lo, float hi) {
  softmax_codes_rows(x, q, tmp, rows, n, s, zp, lo, hi);
}
void softmax_codes_generic(const float* x, uint8_t* q, float* tmp, int64_t rows, int64_t n, float s, float zp, float lo, float hi) {
  softmax_codes_rows(x, q, tmp, rows, n, s, zp, lo, hi);
}

using SoftmaxFn = void (*)(const float*, float*, int64_t, int64_t);
SoftmaxFn pick_softmax() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return softmax_rows_avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return softmax_rows_avx2;
  return nullptr;
}

}  // namespace

float erf_fast(float x) { return erf_inline(x); }

at::Tensor softmax_lastdim_codes(const at::Tensor& input, float step, float zero_point, float qmin, float qmax) {
  static const SoftmaxFn kernel = pick_softmax();
  __builtin_cpu_init();
  static const bool avx512 = kernel == softmax_rows_avx512 && __builtin_cpu_supports("avx512bw");
  if (!kernel || input.scalar_type() != at::kFloat || !input.device().is_cpu() || input.dim() == 0 || input.size(-1) == 0 || qmin < 0 ||
      qmax > 255)
    return at::Tensor();
  auto x = input.contiguous();
  auto q = at::empty(x.sizes(), at::kByte);
  const int64_t n = x.size(-1), rows = x.numel() / n;
  const float* src = x.data_ptr<float>();
  uint8_t* dst = q.data_ptr<uint8_t>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / n), [&](int64_t b, int64_t e) {
    std::vector<float> tmp(static_cast<size_t>(n));
    (avx512 ? softmax_codes_avx512 : softmax_codes_generic)(src + b * n, dst + b * n, tmp.data(), e - b, n, step, zero_point, qmin, qmax);
  });
  return q;
}

at::Tensor softmax_lastdim(const at::Tensor& input) {
  static const SoftmaxFn kernel = pick_softmax();
  if (!kernel || input.scalar_type() != at::kFloat || !input.device().is_cpu() || input.dim() == 0 || input.size(-1) == 0 ||
      (at::GradMode::is_enabled() && input.requires_grad()))
    return at::softmax(input, -1);
  auto x = input.contiguous();
  auto y = at::empty_like(x);
  const int64_t n = x.size(-1), rows = x.numel() / n;
  const float* src = x.data_ptr<float>();
  float* dst = y.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / n), [&](int64_t b, int64_t e) { kernel(src + b * n, dst + b * n, e - b, n); });
  return y;
}

at::Tensor gelu_erf(const at::Tensor& input) {
  static const GeluFn kernel = pick_gelu();
  if (!kernel || input.scalar_type() != at::kFloat || !input.device().is_cpu()) return at::gelu(input);
  auto x = input.contiguous();
  auto y = at::empty_like(x);
  const float* src = x.data_ptr<float>();
  float* dst = y.data_ptr<float>();
  at::parallel_for(0, x.numel(), 32768, [&](int64_t begin, int64_t end) { kernel(src + begin, dst + begin, end - begin); });
  return y;
}

}  // namespace vitq
