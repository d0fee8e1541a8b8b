// Uniform quantizers described as data (QuantSpec) with their parameters (QuantParams).
//
// A quantizer maps x to  q = clamp(round(x / scale) + zero_point, qmin, qmax)  and back to  (q - zp) * scale.
// Granularity decides which elements share a scale:
//   PerTensor  one scale;
//   PerChannel one scale per index of `axis` (weights: axis 0 = output channel);
//   PerHead    one scale per index of `axis` of an attention tensor [B, H, N, D] (axis 1) — per channel on
//              the head axis, kept separate so plans say what they mean;
//   PerGroup   weights [out, in]: one scale per (row, group of `group_size` consecutive inputs).
// Scales are stored in a shape that broadcasts against x (e.g. [out, 1] for per-channel weights); for
// PerGroup they are [out, in / group_size].
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

namespace vitq {

enum class Granularity { PerTensor, PerChannel, PerHead, PerGroup };
const char* granularity_name(Granularity g);
Granularity parse_granularity(const std::string& name);

struct QuantSpec {
  int bits = 8;
  bool symmetric = true;
  bool is_signed = true;  // symmetric signed: [-(2^(b-1) - 1), 2^(b-1) - 1]; unsigned: [0, 2^b - 1]
  Granularity granularity = Granularity::PerTensor;
  int axis = 0;
  int group_size = 0;

  int64_t qmin() const;
  int64_t qmax() const;
  // Error: bits outside 2..8, per-group without a group size. (Unsigned symmetric is allowed: [0, 2^b - 1]
  // with zero point 0, for data known to be non-negative.)
  void validate() const;
  std::string describe() const;  // "int8 sym per-channel(0)"
};

struct QuantParams {
  at::Tensor scale;       // float32, broadcastable to the quantized tensor (see above)
  at::Tensor zero_point;  // float32 (integer-valued), same shape; zeros for symmetric
};

// Reduces x to the statistics shape of `spec` (keepdim), e.g. amax over everything but the channel axis.
at::Tensor reduce_amax(const at::Tensor& x, const QuantSpec& spec);
at::Tensor reduce_amin(const at::Tensor& x, const QuantSpec& spec);

// Parameters that map [lo, hi] (statistics shape) onto the integer grid. Degenerate ranges (lo == hi, e.g.
// an all-zero channel) get a finite positive scale; non-finite bounds are an Error.
QuantParams params_from_range(const at::Tensor& lo, const at::Tensor& hi, const QuantSpec& spec);

// Fast fake quantization (libtorch ops). Differentiable: straight-through for round (identity gradient inside
// the clamp range), so gradients reach x and, LSQ-style, scale when it requires grad.
at::Tensor fake_quant(const at::Tensor& x, const QuantSpec& spec, const QuantParams& params);
// Integer codes (float tensor holding integers) and the inverse.
at::Tensor quantize_codes(const at::Tensor& x, const QuantSpec& spec, const QuantParams& params);
// Plain-loop reference of fake_quant on CPU (round half to even, as libtorch's round), for the tests.
at::Tensor fake_quant_reference(const at::Tensor& x, const QuantSpec& spec, const QuantParams& params);

}  // namespace vitq
