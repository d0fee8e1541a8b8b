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

// What the integer grid looks like (the uniform map above is the default):
//   Uniform           the map above.
//   TwinUniform       PTQ4ViT: two uniform ranges of 2^(b-1) codes each (one bit picks the range), steps
//                     Δ1 = scale (fine) and Δ2 = scale2 (coarse), Δ2 / Δ1 a power of two.
//                     unsigned (post-softmax): x̂ = c·Δ1 if round(x/Δ1) <= 2^(b-1)-1, else clamp(round(x/Δ2))·Δ2;
//                     signed (post-GELU): x < 0 on the fine grid (-(2^(b-1)-1)..0)·Δ1, x >= 0 on the coarse grid.
//   Log2              FQ-ViT's log quantizer for values in [0, scale]: c = round(-log2(x/scale)) (rounded in the
//                     log domain), x̂ = scale·2^-c for c <= 2^b - 1, 0 beyond (and for x <= 0).
//   LogSqrt2          RepQ-ViT's log√2 quantizer for values in [0, scale]: c = round(-2·log2(x/scale)) (at least 0),
//                     x̂ = scale·2^(-c/2) for c <= 2^b - 1, 0 beyond (and for x <= 0) — twice log2's resolution.
//   AdaLog            AdaLog's log quantizer with a searched base (Wu et al. 2024): the base is 2^(1/τ), τ = params.base
//                     codes per octave (log2: τ = 1, log√2: τ = 2); values are shifted by params.shift >= 0 first
//                     (post-GELU: GELU's negative tail up to 0), so y = (x + shift)/scale, c = round(-τ·log2 y) (at
//                     least 0), x̂ = scale·2^(-c/τ) - shift for c <= 2^b - 1, -shift beyond (and for y <= 0).
//   PowerOfTwoFactor  FQ-ViT's PTF: per-channel uniform (axis = channel) whose scales are s·2^α_c, α_c in 0..3,
//                     and one zero point for every channel — a uniform per-channel quantizer with that
//                     constraint, checked when a plan is loaded.
enum class QuantKind { Uniform, TwinUniform, Log2, PowerOfTwoFactor, LogSqrt2, AdaLog };
// Log2 or LogSqrt2 (the fixed-base log quantizers the integer runtime runs natively; not AdaLog)
bool is_log_kind(QuantKind k);
// Log2, LogSqrt2 or AdaLog
bool is_any_log_kind(QuantKind k);
const char* quant_kind_name(QuantKind k);
QuantKind parse_quant_kind(const std::string& name);

struct QuantSpec {
  int bits = 8;
  bool symmetric = true;
  bool is_signed = true;  // symmetric signed: [-(2^(b-1) - 1), 2^(b-1) - 1]; unsigned: [0, 2^b - 1]
  Granularity granularity = Granularity::PerTensor;
  int axis = 0;
  int group_size = 0;
  QuantKind kind = QuantKind::Uniform;

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
  at::Tensor scale2;      // TwinUniform only: the coarse range's step, shaped like scale
  at::Tensor base{};      // AdaLog only: τ, codes per octave (one value; the log base is 2^(1/τ))
  at::Tensor shift{};     // AdaLog only: added before quantizing, subtracted after (one value >= 0; undefined: 0)

  // Every defined field on `device`, cloned if asked.
  QuantParams to(const at::Device& device, bool clone = false) const;
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
// Integer codes (float tensor holding integers) of a Uniform / PowerOfTwoFactor quantizer; for Log2 the
// exponent c (2^b for values that quantize to 0), for LogSqrt2 likewise (x̂ = scale·2^(-c/2)).
at::Tensor quantize_codes(const at::Tensor& x, const QuantSpec& spec, const QuantParams& params);
// The log kinds' codes per octave (1 for Log2, 2 for LogSqrt2, the base τ for AdaLog, whose parameters it checks)
// and the shift added before quantizing (AdaLog's, else 0).
double log_codes_per_octave(const QuantSpec& spec, const QuantParams& params);
double log_shift(const QuantSpec& spec, const QuantParams& params);
// The log kinds' largest code, 2^b − 1: codes 0..2^b − 1 are the levels scale·2^(−c/τ); values below the
// smallest level quantize to 0.
double log2_max_code(const QuantSpec& spec);
// Plain-loop reference of fake_quant on CPU (round half to even, as libtorch's round), for the tests; covers
// every kind.
at::Tensor fake_quant_reference(const at::Tensor& x, const QuantSpec& spec, const QuantParams& params);

// The parameters of the non-uniform kinds.
//   Twin uniform for post-softmax values (unsigned): Δ2 = 1 / 2^(b-1) (the coarse range reaches 1 − Δ2), Δ1 =
//   Δ2 · 2^-shift. For post-GELU values (signed): coarse step `coarse` for x >= 0, and the finest Δ1 = Δ2·2^-m
//   whose 2^(b-1)-1 codes still reach `negative_floor` (GELU's minimum, -0.17).
QuantParams twin_softmax_params(int bits, int shift);
QuantParams twin_gelu_params(int bits, double coarse, double negative_floor = -0.17);
QuantParams log2_params();  // scale 1: values in [0, 1]
// AdaLog: τ codes per octave (0.25..8), values shifted by `shift` >= 0. Error outside those ranges.
QuantParams adalog_params(double scale, double tau, double shift = 0.0);
// Checks an AdaLog quantizer's base and shift (one finite value each, τ in 0.25..8, shift >= 0); `what` names it.
void check_adalog(const QuantParams& p, const std::string& what);

}  // namespace vitq
