#include "vitq/quant/quantizer.h"

#include <ATen/ATen.h>

#include <cmath>

#include "vitq/util/error.h"

namespace vitq {

namespace {
// Smallest scale we hand out: an all-zero channel quantizes to 0 with it, and 1/scale stays finite.
constexpr double kMinScale = 1e-8;

std::vector<int64_t> reduce_dims(const at::Tensor& x, const QuantSpec& s) {
  std::vector<int64_t> dims;
  const int64_t axis = s.axis < 0 ? s.axis + x.dim() : s.axis;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (s.granularity == Granularity::PerTensor || d != axis) dims.push_back(d);
  return dims;
}

void check_axis(const at::Tensor& x, const QuantSpec& s) {
  if (s.granularity == Granularity::PerChannel || s.granularity == Granularity::PerHead) {
    const int64_t axis = s.axis < 0 ? s.axis + x.dim() : s.axis;
    if (axis < 0 || axis >= x.dim()) fail("quantizer axis {} out of range for a {}-d tensor", s.axis, x.dim());
  }
  if (s.granularity == Granularity::PerGroup && (x.dim() != 2 || x.size(1) % s.group_size != 0))
    fail("per-group quantization needs a 2-d tensor whose columns divide into groups of {}", s.group_size);
}

// [out, in] -> [out, in/g, g] for per-group; identity otherwise
at::Tensor grouped(const at::Tensor& x, const QuantSpec& s) {
  if (s.granularity != Granularity::PerGroup) return x;
  return x.reshape({x.size(0), x.size(1) / s.group_size, s.group_size});
}
at::Tensor group_param(const at::Tensor& p, const QuantSpec& s) {
  return s.granularity == Granularity::PerGroup ? p.unsqueeze(-1) : p;
}
}  // namespace

const char* granularity_name(Granularity g) {
  switch (g) {
    case Granularity::PerTensor: return "tensor";
    case Granularity::PerChannel: return "channel";
    case Granularity::PerHead: return "head";
    case Granularity::PerGroup: return "group";
  }
  return "?";
}

Granularity parse_granularity(const std::string& name) {
  if (name == "tensor") return Granularity::PerTensor;
  if (name == "channel") return Granularity::PerChannel;
  if (name == "head") return Granularity::PerHead;
  if (name == "group") return Granularity::PerGroup;
  fail("unknown granularity '{}' (tensor, channel, head, group)", name);
}

const char* quant_kind_name(QuantKind k) {
  switch (k) {
    case QuantKind::Uniform: return "uniform";
    case QuantKind::TwinUniform: return "twin_uniform";
    case QuantKind::Log2: return "log2";
    case QuantKind::PowerOfTwoFactor: return "ptf";
    case QuantKind::LogSqrt2: return "log_sqrt2";
    case QuantKind::AdaLog: return "adalog";
  }
  return "?";
}

bool is_log_kind(QuantKind k) { return k == QuantKind::Log2 || k == QuantKind::LogSqrt2; }
bool is_any_log_kind(QuantKind k) { return is_log_kind(k) || k == QuantKind::AdaLog; }

QuantKind parse_quant_kind(const std::string& name) {
  for (auto k : {QuantKind::Uniform, QuantKind::TwinUniform, QuantKind::Log2, QuantKind::PowerOfTwoFactor, QuantKind::LogSqrt2,
                 QuantKind::AdaLog})
    if (name == quant_kind_name(k)) return k;
  fail("unknown quantizer kind '{}' (uniform, twin_uniform, log2, log_sqrt2, adalog, ptf)", name);
}

int64_t QuantSpec::qmin() const {
  if (!is_signed) return 0;
  return symmetric ? -((int64_t{1} << (bits - 1)) - 1) : -(int64_t{1} << (bits - 1));
}
int64_t QuantSpec::qmax() const { return is_signed ? (int64_t{1} << (bits - 1)) - 1 : (int64_t{1} << bits) - 1; }

void QuantSpec::validate() const {
  if (bits < 2 || bits > 8) fail("bits must be between 2 and 8, got {}", bits);
  if (granularity == Granularity::PerGroup && group_size <= 0) fail("per-group quantization needs a positive group size");
  if (is_any_log_kind(kind) && is_signed) fail("a {} quantizer is for non-negative data (unsigned)", quant_kind_name(kind));
  if (kind == QuantKind::AdaLog && granularity != Granularity::PerTensor) fail("an adalog quantizer is per tensor");
  if (kind == QuantKind::PowerOfTwoFactor && granularity != Granularity::PerChannel)
    fail("a power-of-two-factor quantizer is per channel");
  if (kind != QuantKind::Uniform && kind != QuantKind::PowerOfTwoFactor && granularity == Granularity::PerGroup)
    fail("a {} quantizer cannot be per group", quant_kind_name(kind));
}

std::string QuantSpec::describe() const {
  std::string g = granularity_name(granularity);
  if (granularity == Granularity::PerChannel || granularity == Granularity::PerHead) g += fmt::format("({})", axis);
  if (granularity == Granularity::PerGroup) g += fmt::format("({})", group_size);
  if (kind == QuantKind::Log2) return fmt::format("log2 {}-bit", bits);
  if (kind == QuantKind::LogSqrt2) return fmt::format("log-sqrt2 {}-bit", bits);
  if (kind == QuantKind::AdaLog) return fmt::format("adalog {}-bit", bits);
  const std::string k = kind == QuantKind::Uniform ? "" : std::string(" ") + quant_kind_name(kind);
  return fmt::format("{}{} {}{} per-{}", is_signed ? "int" : "uint", bits, symmetric ? "sym" : "asym", k, g);
}

at::Tensor reduce_amax(const at::Tensor& x, const QuantSpec& s) {
  check_axis(x, s);
  if (s.granularity == Granularity::PerGroup) return grouped(x, s).amax(-1);
  return x.amax(reduce_dims(x, s), true);
}

at::Tensor reduce_amin(const at::Tensor& x, const QuantSpec& s) {
  check_axis(x, s);
  if (s.granularity == Granularity::PerGroup) return grouped(x, s).amin(-1);
  return x.amin(reduce_dims(x, s), true);
}

QuantParams params_from_range(const at::Tensor& lo_in, const at::Tensor& hi_in, const QuantSpec& s) {
  s.validate();
  if (!at::isfinite(lo_in).all().item<bool>() || !at::isfinite(hi_in).all().item<bool>())
    fail("non-finite values in the statistics of a {} quantizer (inf or NaN activations?)", s.describe());
  auto lo = at::clamp_max(lo_in.to(at::kFloat), 0.0), hi = at::clamp_min(hi_in.to(at::kFloat), 0.0);
  QuantParams p;
  const double levels = static_cast<double>(s.qmax() - s.qmin());
  if (s.symmetric) {
    auto amax = at::maximum(lo.abs(), hi);
    p.scale = at::clamp_min(amax / static_cast<double>(s.qmax()), kMinScale);
    p.zero_point = at::zeros_like(p.scale);
  } else {
    p.scale = at::clamp_min((hi - lo) / levels, kMinScale);
    p.zero_point = at::clamp(static_cast<double>(s.qmin()) - at::round(lo / p.scale), static_cast<double>(s.qmin()),
                             static_cast<double>(s.qmax()));
  }
  return p;
}

double log2_max_code(const QuantSpec& s) { return static_cast<double>((int64_t{1} << s.bits) - 1); }

namespace {
double twin_max_code(const QuantSpec& s) { return static_cast<double>((int64_t{1} << (s.bits - 1)) - 1); }

void check_twin(const QuantParams& p) {
  if (!p.scale2.defined()) fail("twin-uniform quantizer without its second step (scale2)");
}

at::Tensor twin_fake_quant(const at::Tensor& x, const QuantSpec& s, const QuantParams& p) {
  check_twin(p);
  const double n = twin_max_code(s);
  const auto& d1 = p.scale;
  const auto& d2 = p.scale2;
  auto coarse = at::clamp(at::round(x / d2), 0.0, n) * d2;
  at::Tensor q;
  if (s.is_signed) {
    auto fine = at::clamp(at::round(x / d1), -n, 0.0) * d1;
    q = at::where(x < 0, fine, coarse);
  } else {
    auto c1 = at::round(x / d1);
    q = at::where(c1 <= n, at::clamp(c1, 0.0, n) * d1, coarse);
  }
  if (!x.requires_grad()) return q;  // exactly on the grid
  return x + (q - x).detach();       // straight-through
}

}  // namespace

double log_codes_per_octave(const QuantSpec& s, const QuantParams& p) {
  if (s.kind == QuantKind::AdaLog) {
    check_adalog(p, "adalog quantizer");
    return p.base.item<double>();
  }
  return s.kind == QuantKind::LogSqrt2 ? 2.0 : 1.0;
}
double log_shift(const QuantSpec& s, const QuantParams& p) {
  return s.kind == QuantKind::AdaLog && p.shift.defined() ? p.shift.item<double>() : 0.0;
}

namespace {

// Codes 0..top, and top + 1 for "below the grid" (y = 0, y < 0, NaN). Without at::where, whose CPU kernel branches
// on every element: log2 of y <= 0 is -inf or NaN, the clamp sends -(-inf) to top + 1 and keeps NaN, and
// nan_to_num sends NaN to top + 1.
at::Tensor log2_codes(const at::Tensor& x, const QuantSpec& s, const QuantParams& p) {
  const double shift = log_shift(s, p);
  auto y = (shift != 0.0 ? x + shift : x) / p.scale;
  const double top = log2_max_code(s);
  auto c = at::clamp(at::round(-log_codes_per_octave(s, p) * at::log2(y)), 0.0, top + 1);
  return at::nan_to_num(c, top + 1);
}

at::Tensor log2_fake_quant(const at::Tensor& x, const QuantSpec& s, const QuantParams& p) {
  at::Tensor q;
  {
    at::NoGradGuard no_grad;  // the value only: the gradient is straight-through below
    auto c = log2_codes(x, s, p);
    // the level where c <= top, 0 below the grid: a product with a 0/1 mask (the level is finite for any c)
    q = p.scale * at::exp2(-c / log_codes_per_octave(s, p)) * (c <= log2_max_code(s)).to(c.scalar_type());
    const double shift = log_shift(s, p);
    if (shift != 0.0) q = q - shift;
  }
  if (!x.requires_grad()) return q;
  return x + (q - x.detach());
}
}  // namespace

QuantParams twin_softmax_params(int bits, int shift) {
  if (shift < 0 || shift > 30) fail("twin-uniform shift must be in 0..30, got {}", shift);
  const double d2 = 1.0 / static_cast<double>(int64_t{1} << (bits - 1));
  QuantParams p;
  p.scale2 = at::full({1}, d2);
  p.scale = at::full({1}, std::ldexp(d2, -shift));
  p.zero_point = at::zeros({1});
  return p;
}

QuantParams twin_gelu_params(int bits, double coarse, double negative_floor) {
  if (!(coarse > 0) || !std::isfinite(coarse)) fail("twin-uniform step must be positive and finite, got {}", coarse);
  const double n = static_cast<double>((int64_t{1} << (bits - 1)) - 1);
  int m = 0;  // finest fine step whose n codes still reach negative_floor
  while (m < 30 && n * std::ldexp(coarse, -(m + 1)) >= -negative_floor) ++m;
  QuantParams p;
  p.scale2 = at::full({1}, coarse);
  p.scale = at::full({1}, std::ldexp(coarse, -m));
  p.zero_point = at::zeros({1});
  return p;
}

QuantParams log2_params() { return {at::ones({1}), at::zeros({1}), {}}; }

void check_adalog(const QuantParams& p, const std::string& what) {
  if (!p.base.defined() || p.base.numel() != 1) fail("{}: needs one base (codes per octave)", what);
  const double tau = p.base.item<double>();
  if (!(tau >= 0.25 && tau <= 8.0)) fail("{}: base (codes per octave) must be in 0.25..8, got {}", what, tau);
  if (p.shift.defined()) {
    if (p.shift.numel() != 1) fail("{}: needs one shift", what);
    const double shift = p.shift.item<double>();
    if (!(shift >= 0.0 && std::isfinite(shift))) fail("{}: shift must be finite and >= 0, got {}", what, shift);
  }
}

QuantParams adalog_params(double scale, double tau, double shift) {
  if (!(scale > 0) || !std::isfinite(scale)) fail("adalog scale must be positive and finite, got {}", scale);
  QuantParams p{at::full({1}, scale), at::zeros({1}), {}, at::full({1}, tau), at::full({1}, shift)};
  check_adalog(p, "adalog quantizer");
  return p;
}

QuantParams QuantParams::to(const at::Device& device, bool clone) const {
  auto move = [&](const at::Tensor& t) {
    if (!t.defined()) return at::Tensor();
    auto m = t.to(device);
    return clone ? m.clone() : m;
  };
  return {move(scale), move(zero_point), move(scale2), move(base), move(shift)};
}

at::Tensor quantize_codes(const at::Tensor& x, const QuantSpec& s, const QuantParams& p) {
  if (is_any_log_kind(s.kind)) return log2_codes(x, s, p);
  if (s.kind == QuantKind::TwinUniform) fail("quantize_codes: twin-uniform codes are not a single grid");
  check_axis(x, s);
  auto xg = grouped(x, s);
  auto q = at::round(xg / group_param(p.scale, s)) + group_param(p.zero_point, s);
  return at::clamp(q, static_cast<double>(s.qmin()), static_cast<double>(s.qmax())).reshape(x.sizes());
}

at::Tensor fake_quant(const at::Tensor& x, const QuantSpec& s, const QuantParams& p) {
  if (s.kind == QuantKind::TwinUniform) return twin_fake_quant(x, s, p);
  if (is_any_log_kind(s.kind)) return log2_fake_quant(x, s, p);
  check_axis(x, s);
  auto xg = grouped(x, s);
  auto scale = group_param(p.scale, s), zp = group_param(p.zero_point, s);
  auto v = xg / scale;
  auto r = v + (at::round(v) - v).detach();  // straight-through round
  auto q = at::clamp(r + zp, static_cast<double>(s.qmin()), static_cast<double>(s.qmax()));
  return ((q - zp) * scale).reshape(x.sizes());
}

namespace {
// Element-wise references of the non-uniform kinds (per-tensor parameters).
at::Tensor reference_elementwise(const at::Tensor& x_in, const QuantSpec& s, const QuantParams& p) {
  auto x = x_in.to(at::kFloat).contiguous();
  auto out = at::empty_like(x);
  const float* xs = x.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const float d1 = p.scale.reshape({-1})[0].item<float>();
  if (s.kind == QuantKind::TwinUniform) {
    check_twin(p);
    const float d2 = p.scale2.reshape({-1})[0].item<float>();
    const double n = twin_max_code(s);
    for (int64_t i = 0; i < x.numel(); ++i) {
      const float v = xs[i];
      const double c1 = std::nearbyint(static_cast<double>(v / d1));
      const double c2 = std::min(std::max(std::nearbyint(static_cast<double>(v / d2)), 0.0), n);
      if (s.is_signed)
        o[i] = v < 0 ? static_cast<float>(std::max(c1, -n)) * d1 : static_cast<float>(c2) * d2;
      else
        o[i] = c1 <= n ? static_cast<float>(std::max(c1, 0.0)) * d1 : static_cast<float>(c2) * d2;
    }
  } else {  // Log2, LogSqrt2, AdaLog
    const double top = log2_max_code(s);
    const double k = log_codes_per_octave(s, p);
    const auto shift = static_cast<float>(log_shift(s, p));
    for (int64_t i = 0; i < x.numel(); ++i) {
      const float y = (xs[i] + shift) / d1;
      if (!(y > 0)) {
        o[i] = -shift;
        continue;
      }
      const double c = std::max(0.0, std::nearbyint(-k * std::log2(static_cast<double>(y))));
      o[i] = (c <= top ? static_cast<float>(d1 * std::exp2(-c / k)) : 0.0f) - shift;
    }
  }
  return out.reshape(x_in.sizes());
}
}  // namespace

at::Tensor fake_quant_reference(const at::Tensor& x_in, const QuantSpec& s, const QuantParams& p) {
  if (s.kind == QuantKind::TwinUniform || is_any_log_kind(s.kind)) {
    if (s.kind == QuantKind::AdaLog) check_adalog(p, "adalog quantizer");
    if (p.scale.numel() != 1) fail("the reference of a {} quantizer takes one scale", quant_kind_name(s.kind));
    return reference_elementwise(x_in, s, p);
  }
  check_axis(x_in, s);
  auto x = x_in.to(at::kFloat).contiguous();
  auto xg = grouped(x, s);
  auto scale = group_param(p.scale, s).expand(xg.sizes()).contiguous();
  auto zp = group_param(p.zero_point, s).expand(xg.sizes()).contiguous();
  auto out = at::empty_like(xg);
  const float* xs = xg.contiguous().data_ptr<float>();
  const float* ss = scale.data_ptr<float>();
  const float* zs = zp.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const double lo = static_cast<double>(s.qmin()), hi = static_cast<double>(s.qmax());
  for (int64_t i = 0; i < out.numel(); ++i) {
    float v = xs[i] / ss[i];                              // same float division as the fast path
    double q = std::nearbyint(static_cast<double>(v)) + zs[i];  // round half to even
    q = std::min(std::max(q, lo), hi);
    o[i] = static_cast<float>(q - zs[i]) * ss[i];
  }
  return out.reshape(x.sizes());
}

}  // namespace vitq
