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

int64_t QuantSpec::qmin() const {
  if (!is_signed) return 0;
  return symmetric ? -((int64_t{1} << (bits - 1)) - 1) : -(int64_t{1} << (bits - 1));
}
int64_t QuantSpec::qmax() const { return is_signed ? (int64_t{1} << (bits - 1)) - 1 : (int64_t{1} << bits) - 1; }

void QuantSpec::validate() const {
  if (bits < 2 || bits > 8) fail("bits must be between 2 and 8, got {}", bits);
  if (granularity == Granularity::PerGroup && group_size <= 0) fail("per-group quantization needs a positive group size");
}

std::string QuantSpec::describe() const {
  std::string g = granularity_name(granularity);
  if (granularity == Granularity::PerChannel || granularity == Granularity::PerHead) g += fmt::format("({})", axis);
  if (granularity == Granularity::PerGroup) g += fmt::format("({})", group_size);
  return fmt::format("{}{} {} per-{}", is_signed ? "int" : "uint", bits, symmetric ? "sym" : "asym", g);
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

at::Tensor quantize_codes(const at::Tensor& x, const QuantSpec& s, const QuantParams& p) {
  check_axis(x, s);
  auto xg = grouped(x, s);
  auto q = at::round(xg / group_param(p.scale, s)) + group_param(p.zero_point, s);
  return at::clamp(q, static_cast<double>(s.qmin()), static_cast<double>(s.qmax())).reshape(x.sizes());
}

at::Tensor fake_quant(const at::Tensor& x, const QuantSpec& s, const QuantParams& p) {
  check_axis(x, s);
  auto xg = grouped(x, s);
  auto scale = group_param(p.scale, s), zp = group_param(p.zero_point, s);
  auto v = xg / scale;
  auto r = v + (at::round(v) - v).detach();  // straight-through round
  auto q = at::clamp(r + zp, static_cast<double>(s.qmin()), static_cast<double>(s.qmax()));
  return ((q - zp) * scale).reshape(x.sizes());
}

at::Tensor fake_quant_reference(const at::Tensor& x_in, const QuantSpec& s, const QuantParams& p) {
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
