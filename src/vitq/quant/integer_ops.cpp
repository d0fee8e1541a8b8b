#include "vitq/quant/integer_ops.h"

#include <ATen/ATen.h>

#include <cmath>

#include "vitq/util/error.h"

namespace vitq {

namespace {
constexpr double kA = 0.3585, kB = 1.353, kC = 0.344;
constexpr int kLnFrac = 16, kLnGammaFrac = 12;
constexpr int64_t kMaxRatio = (int64_t{1} << 31) - 1;  // r is clamped here so that r^2 fits in int64: codes
                                                        // of 31 and more are beyond every log2 grid (b <= 4)

int64_t isqrt64(int64_t v) {
  if (v <= 0) return 0;
  auto s = static_cast<int64_t>(std::sqrt(static_cast<double>(v)));
  while (s * s > v) --s;
  while ((s + 1) * (s + 1) <= v) ++s;
  return s;
}

int64_t floor_div(int64_t a, int64_t b) {  // b > 0
  int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

int64_t floor_log2(int64_t r) {  // r >= 1
  int64_t m = 0;
  while ((r >> (m + 1)) > 0) ++m;
  return m;
}

at::Tensor check_codes(const at::Tensor& codes, const char* what) {
  if (codes.scalar_type() != at::kLong) fail("{}: codes must be int64", what);
  return codes.contiguous();
}

at::Tensor pow2(const at::Tensor& e) { return at::bitwise_left_shift(at::ones_like(e), e); }

int64_t log2_top(const QuantSpec& out) { return (int64_t{1} << out.bits) - 1; }

void check_softmax_out(const QuantSpec& out) {
  if (out.kind != QuantKind::Log2 && !(out.kind == QuantKind::Uniform && !out.is_signed))
    fail("integer softmax outputs a log2 or an unsigned uniform quantizer, not {}", out.describe());
}
}  // namespace

IntExp int_exp_constants(double s) {
  if (!std::isfinite(s) || s < 1e-7 || s > 1e3) fail("integer exp: input step {} is outside [1e-7, 1e3]", s);
  IntExp c;
  while (s > std::ldexp(1.0, -10)) {
    s /= 2;
    ++c.shift;
  }
  c.q_ln2 = std::llround(std::log(2.0) / s);
  c.q_b = std::llround(kB / s);
  c.q_c = std::llround(kC / (kA * s * s));
  c.out_scale = kA * s * s;
  return c;
}

at::Tensor int_exp(const at::Tensor& codes_in, const IntExp& c) {
  auto codes = check_codes(codes_in, "int_exp");
  if (codes.numel() && codes.max().item<int64_t>() > 0) fail("int_exp: codes must be <= 0");
  auto q = codes * (int64_t{1} << c.shift);
  auto z = at::div(-q, c.q_ln2, "floor");
  auto p = q + z * c.q_ln2;
  auto v = (p + c.q_b).pow(2) + c.q_c;
  auto shifted = at::bitwise_right_shift(v, at::clamp_max(z, 62));
  return at::where(z > 62, at::zeros_like(v), shifted);
}

at::Tensor int_exp_reference(const at::Tensor& codes_in, const IntExp& c) {
  auto codes = check_codes(codes_in, "int_exp_reference");
  auto out = at::empty_like(codes);
  const int64_t* q = codes.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < codes.numel(); ++i) {
    if (q[i] > 0) fail("int_exp_reference: codes must be <= 0");
    const int64_t x = q[i] * (int64_t{1} << c.shift);
    const int64_t z = floor_div(-x, c.q_ln2);
    const int64_t p = x + z * c.q_ln2;
    const int64_t v = (p + c.q_b) * (p + c.q_b) + c.q_c;
    o[i] = z > 62 ? 0 : (v >> z);
  }
  return out;
}

QuantParams int_softmax_uniform_params(int bits) {
  const double top = static_cast<double>((int64_t{1} << bits) - 1);
  return {at::full({1}, 1.0 / top), at::zeros({1}), {}};
}

at::Tensor int_softmax(const at::Tensor& codes_in, double input_scale, const QuantSpec& out) {
  check_softmax_out(out);
  auto codes = check_codes(codes_in, "int_softmax");
  const IntExp c = int_exp_constants(input_scale);
  auto e = int_exp(codes - std::get<0>(codes.max(-1, true)), c);
  auto sum = e.sum(-1, true);
  if (out.kind == QuantKind::Log2) {
    auto r = at::clamp_max(at::where(e > 0, at::div(sum, at::clamp_min(e, 1), "floor"), at::ones_like(e)), kMaxRatio);
    auto m = at::floor(at::log2(r.to(at::kDouble))).to(at::kLong);
    m = at::where(pow2(m) > r, m - 1, m);
    m = at::where(pow2(m + 1) <= r, m + 1, m);
    auto code = m + (r * r >= pow2(2 * m + 1)).to(at::kLong);
    auto keep = (e > 0) & (code <= log2_top(out));
    return at::where(keep, at::exp2(-code.to(at::kFloat)), at::zeros({}, at::kFloat));
  }
  const int64_t top = (int64_t{1} << out.bits) - 1;
  auto code = at::div(2 * e * top + sum, 2 * sum, "floor");
  return code.to(at::kFloat) / static_cast<float>(top);
}

at::Tensor int_softmax_reference(const at::Tensor& codes_in, double input_scale, const QuantSpec& out) {
  check_softmax_out(out);
  auto codes = check_codes(codes_in, "int_softmax_reference");
  const IntExp c = int_exp_constants(input_scale);
  const int64_t n = codes.size(-1), rows = codes.numel() / std::max<int64_t>(n, 1);
  auto result = at::empty(codes.sizes(), at::kFloat);
  const int64_t* q = codes.data_ptr<int64_t>();
  float* o = result.data_ptr<float>();
  std::vector<int64_t> row(static_cast<size_t>(n));
  for (int64_t r = 0; r < rows; ++r) {
    int64_t mx = q[r * n];
    for (int64_t j = 1; j < n; ++j) mx = std::max(mx, q[r * n + j]);
    for (int64_t j = 0; j < n; ++j) row[static_cast<size_t>(j)] = q[r * n + j] - mx;
    auto e = int_exp_reference(at::tensor(row), c);
    const int64_t* ep = e.data_ptr<int64_t>();
    int64_t sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += ep[j];
    for (int64_t j = 0; j < n; ++j) {
      float& y = o[r * n + j];
      if (out.kind == QuantKind::Log2) {
        if (ep[j] == 0) {
          y = 0;
          continue;
        }
        const int64_t ratio = std::min(sum / ep[j], kMaxRatio);
        const int64_t m = floor_log2(ratio);
        const int64_t code = m + (ratio * ratio >= (int64_t{1} << (2 * m + 1)) ? 1 : 0);
        y = code <= log2_top(out) ? static_cast<float>(std::exp2(-static_cast<double>(code))) : 0.0f;
      } else {
        const int64_t top = (int64_t{1} << out.bits) - 1;
        y = static_cast<float>(floor_div(2 * ep[j] * top + sum, 2 * sum)) / static_cast<float>(top);
      }
    }
  }
  return result;
}

at::Tensor ptf_factors(const at::Tensor& scale) {
  auto s = scale.reshape({-1}).to(at::kDouble);
  if (!(s > 0).all().item<bool>()) fail("power-of-two-factor steps must be positive");
  auto ratio = s / s.min();
  auto alpha = at::round(at::log2(ratio));
  if (!at::allclose(ratio, at::exp2(alpha), 1e-4, 0) || alpha.max().item<double>() > 3)
    fail("power-of-two-factor steps must be s·2^α with α in 0..3");
  return alpha.to(at::kLong);
}

namespace {
struct LnConsts {
  at::Tensor alpha, g, b;  // int64 [C]
  double zo = 0, so = 0, qmin = 0, qmax = 0;
};
LnConsts ln_consts(const at::Tensor& in_scale, const at::Tensor& gamma, const at::Tensor& beta, const QuantSpec& out_spec,
                   const QuantParams& out_params, int64_t channels) {
  if (out_spec.kind != QuantKind::Uniform || out_params.scale.numel() != 1)
    fail("integer LayerNorm needs a per-tensor uniform output quantizer, got {}", out_spec.describe());
  LnConsts k;
  k.alpha = ptf_factors(in_scale);
  if (k.alpha.numel() != channels || gamma.numel() != channels || beta.numel() != channels)
    fail("integer LayerNorm: {} channels but {} factors, {} weights, {} biases", channels, k.alpha.numel(), gamma.numel(),
         beta.numel());
  k.so = out_params.scale.item<double>();
  k.zo = out_params.zero_point.item<double>();
  k.qmin = static_cast<double>(out_spec.qmin());
  k.qmax = static_cast<double>(out_spec.qmax());
  k.g = at::round(gamma.reshape({-1}).to(at::kDouble) / k.so * std::ldexp(1.0, kLnGammaFrac)).to(at::kLong);
  k.b = at::round(beta.reshape({-1}).to(at::kDouble) / k.so * std::ldexp(1.0, kLnFrac + kLnGammaFrac)).to(at::kLong);
  return k;
}
}  // namespace

at::Tensor int_layernorm(const at::Tensor& codes_in, const at::Tensor& in_scale, double zp, const at::Tensor& gamma,
                         const at::Tensor& beta, const QuantSpec& out_spec, const QuantParams& out_params) {
  auto codes = check_codes(codes_in, "int_layernorm");
  const int64_t C = codes.size(-1);
  LnConsts k = ln_consts(in_scale, gamma, beta, out_spec, out_params, C);
  auto x = (codes - static_cast<int64_t>(zp)) * pow2(k.alpha);
  auto s1 = x.sum(-1, true), s2 = (x * x).sum(-1, true);
  auto v = C * s2 - s1 * s1;
  auto sigma = at::floor(at::sqrt(v.to(at::kDouble))).to(at::kLong);
  sigma = at::where(sigma * sigma > v, sigma - 1, sigma);
  sigma = at::where((sigma + 1) * (sigma + 1) <= v, sigma + 1, sigma);
  auto num = (C * x - s1) * (int64_t{1} << kLnFrac);
  auto safe = at::clamp_min(sigma, 1);
  auto n = at::where(sigma > 0, at::div(2 * num + safe, 2 * safe, "floor"), at::zeros_like(num));
  const int shift = kLnFrac + kLnGammaFrac;
  auto acc = n * k.g + k.b;
  auto o = at::div(acc + (int64_t{1} << (shift - 1)), int64_t{1} << shift, "floor").to(at::kDouble) + k.zo;
  o = at::clamp(o, k.qmin, k.qmax);
  return ((o - k.zo) * k.so).to(at::kFloat);
}

at::Tensor int_layernorm_reference(const at::Tensor& codes_in, const at::Tensor& in_scale, double zp,
                                   const at::Tensor& gamma, const at::Tensor& beta, const QuantSpec& out_spec,
                                   const QuantParams& out_params) {
  auto codes = check_codes(codes_in, "int_layernorm_reference");
  const int64_t C = codes.size(-1), rows = codes.numel() / std::max<int64_t>(C, 1);
  LnConsts k = ln_consts(in_scale, gamma, beta, out_spec, out_params, C);
  const int64_t* a = k.alpha.data_ptr<int64_t>();
  const int64_t* g = k.g.data_ptr<int64_t>();
  const int64_t* b = k.b.data_ptr<int64_t>();
  const int64_t* q = codes.data_ptr<int64_t>();
  auto result = at::empty(codes.sizes(), at::kFloat);
  float* out = result.data_ptr<float>();
  const int shift = kLnFrac + kLnGammaFrac;
  std::vector<int64_t> x(static_cast<size_t>(C));
  for (int64_t r = 0; r < rows; ++r) {
    int64_t s1 = 0, s2 = 0;
    for (int64_t c = 0; c < C; ++c) {
      const int64_t v = (q[r * C + c] - static_cast<int64_t>(zp)) * (int64_t{1} << a[c]);
      x[static_cast<size_t>(c)] = v;
      s1 += v;
      s2 += v * v;
    }
    const int64_t sigma = isqrt64(C * s2 - s1 * s1);
    for (int64_t c = 0; c < C; ++c) {
      const int64_t num = (C * x[static_cast<size_t>(c)] - s1) * (int64_t{1} << kLnFrac);
      const int64_t n = sigma > 0 ? floor_div(2 * num + sigma, 2 * sigma) : 0;
      const int64_t acc = n * g[c] + b[c];
      double o = static_cast<double>(floor_div(acc + (int64_t{1} << (shift - 1)), int64_t{1} << shift)) + k.zo;
      o = std::min(std::max(o, k.qmin), k.qmax);
      out[r * C + c] = static_cast<float>((o - k.zo) * k.so);
    }
  }
  return result;
}

}  // namespace vitq
