#include "vitq/recon/learnable.h"

#include <ATen/ATen.h>

namespace vitq::recon {

namespace {
constexpr double kZeta = 1.1, kGamma = -0.1;
at::Tensor ste_round(const at::Tensor& x) { return x + (at::round(x) - x).detach(); }
}  // namespace

at::Tensor rect_sigmoid(const at::Tensor& v) { return at::clamp(at::sigmoid(v) * (kZeta - kGamma) + kGamma, 0.0, 1.0); }

at::Tensor rect_sigmoid_inverse(const at::Tensor& frac) {
  // σ(V) = (h − γ) / (ζ − γ)  =>  V = −log((ζ − γ) / (h − γ) − 1)
  auto h = at::clamp(frac, 1e-4, 1.0 - 1e-4);
  return -at::log((kZeta - kGamma) / (h - kGamma) - 1.0);
}

at::Tensor rounding_regularizer(const at::Tensor& v, double beta) {
  return (1.0 - at::pow(at::abs(2.0 * rect_sigmoid(v) - 1.0), beta)).sum();
}

at::Tensor adaround_weight(const at::Tensor& w_floor, const at::Tensor& v, const at::Tensor& scale, const at::Tensor& zero_point,
                           const QuantSpec& spec, bool hard) {
  auto h = hard ? (v >= 0).to(w_floor.scalar_type()) : rect_sigmoid(v);
  auto q = at::clamp(w_floor + zero_point + h, static_cast<double>(spec.qmin()), static_cast<double>(spec.qmax()));
  return (q - zero_point) * scale;
}

at::Tensor adaround_codes(const at::Tensor& w_floor, const at::Tensor& v, const at::Tensor& zero_point, const QuantSpec& spec) {
  auto h = (v >= 0).to(w_floor.scalar_type());
  return at::clamp(w_floor + zero_point + h, static_cast<double>(spec.qmin()), static_cast<double>(spec.qmax()));
}

at::Tensor lsq_fake_quant(const at::Tensor& x, const QuantSpec& spec, const at::Tensor& scale, const at::Tensor& zero_point) {
  const double lo = static_cast<double>(spec.qmin()), hi = static_cast<double>(spec.qmax());
  auto r = ste_round(x / scale);
  if (!zero_point.defined()) return at::clamp(r, lo, hi) * scale;
  auto zp = at::clamp(ste_round(zero_point), lo, hi);
  return (at::clamp(r + zp, lo, hi) - zp) * scale;
}

at::Tensor adalog_fake_quant(const at::Tensor& x, const QuantSpec& spec, const at::Tensor& scale, const at::Tensor& tau, double shift) {
  auto y = (shift != 0.0 ? x + shift : x) / scale;
  // log2 of a floor, not of y: a zero or negative y quantizes to 0 − δ below, and its gradient must be 0, not NaN
  auto u = -tau * at::log2(at::clamp_min(y, 1e-30));
  auto c = at::clamp_min(ste_round(u), 0.0);
  auto keep = (y > 0) & (c.detach() <= log2_max_code(spec));
  // the level times a 0/1 mask, not at::where (whose CPU kernel branches on every element): the same value and
  // gradients, since the level is finite for any c >= 0
  auto q = scale * at::exp2(-c / tau) * keep.to(y.scalar_type());
  return shift != 0.0 ? q - shift : q;
}

}  // namespace vitq::recon
