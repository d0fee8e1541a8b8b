// Integer kernels of a fully quantized ViT (FQ-ViT, Lin et al. IJCAI 2022): exponential, softmax and
// LayerNorm computed on integer codes only, simulated bit-accurately with int64 tensors. Each has a plain-loop
// reference (the same integer algorithm written element by element) that the tests compare bit for bit, and
// the tests also bound the distance to the floating-point operation.
//
// Integer exp (the second-order polynomial of I-BERT, Kim et al. 2021), for codes q <= 0 with step S:
//   1. work at a finer step S' = S / 2^k (k the smallest shift with S' <= 2^-10): q' = q << k, so the integer
//      constants below are exact to about 1e-3 whatever S is;
//   2. x = q'S' = -z·ln2 + p·S' with q_ln2 = round(ln2 / S'), z = floor(-q' / q_ln2), p = q' + z·q_ln2 in
//      (-q_ln2, 0];
//   3. exp(p S') ≈ a (p S' + b)^2 + c (a = 0.3585, b = 1.353, c = 0.344) = (p + q_b)^2 + q_c in units of a S'^2,
//      with q_b = round(b / S'), q_c = round(c / (a S'^2));
//   4. exp(x) ≈ ((p + q_b)^2 + q_c) >> z, step a S'^2.
// Error bound (documented and tested exhaustively over q in [-6000, 0] and steps S from 2^-12 to 3 in
// tests/test_integer_ops.cpp):
//   |int_exp(q)·a S'^2 − exp(q S)| <= kIntExpMaxAbsError = 3e-3   for every code q <= 0 and step S.
// It is the polynomial's own error on [−ln2, 0] (at most 2.1e-3, near x = −0.13) plus the rounding of ln2, b
// and c at step S' <= 2^-10 (each at most S'/2 in the argument, about 5e-4 together) and the truncating shift
// (below one output step a S'^2 < 4e-7). Measured worst case over that grid: 2.5e-3.
//
// Integer softmax over the last axis, from codes q and step S of its input: subtract the row maximum, int_exp,
// integer row sum Σ; then
//   log2 output (Log-Int-Softmax): r = min(floor(Σ / e), 2^31 − 1), code = round(log2 r) computed exactly in integers
//   (m = floor(log2 r), +1 when r^2 >= 2^(2m+1)), value 2^-code, and 0 for code > 2^b − 1 or e = 0;
//   uniform output: code = round(e (2^b − 1) / Σ) (half up), value code / (2^b − 1).
//
// Integer LayerNorm over the last axis (C channels) of PTF codes q_c with zero point z and factors α_c:
//   x_c = (q_c − z)·2^α_c;  S1 = Σ x_c;  S2 = Σ x_c^2;  σ = isqrt(C·S2 − S1^2)   (σ = C·std(x), floored)
//   n_c = round((C·x_c − S1)·2^16 / σ)                                          ((x − mean)/std in Q16)
//   out_c = clamp(round_half_up((n_c·G_c + B_c) / 2^(16+F)) + z_o)   G_c = round(γ_c / s_o · 2^F),
//                                                                    B_c = round(β_c / s_o · 2^(16+F)), F = 12
// where (s_o, z_o) is the output quantizer (the next layer's input). The layer-wise step s of the input
// cancels (LayerNorm is scale invariant), so only the codes and the factors enter. ε of LayerNorm is ignored
// (it matters only for rows whose variance is below ε, where σ = 0 and the output is β).
#pragma once
#include <ATen/core/Tensor.h>

#include "vitq/quant/quantizer.h"

namespace vitq {

constexpr double kIntExpMaxAbsError = 3e-3;

struct IntExp {
  int shift = 0;           // k: codes are multiplied by 2^k first
  int64_t q_ln2 = 0, q_b = 0, q_c = 0;
  double out_scale = 0;    // a·S'^2: the step of int_exp's result
};
// Error for a step outside [1e-7, 1e3] or non-finite (the bound below is tested for steps 2^-12 ... 3).
IntExp int_exp_constants(double input_scale);
at::Tensor int_exp(const at::Tensor& codes, const IntExp& c);            // int64 codes <= 0 -> int64
at::Tensor int_exp_reference(const at::Tensor& codes, const IntExp& c);  // plain loop

// Integer softmax over the last axis. `codes`: int64 tensor of the input codes (any zero point: the row
// maximum is subtracted first), `input_scale` their step. `out`: a Log2 spec (value 2^-code) or a uniform
// unsigned spec (step 1/(2^b − 1)). Returns the dequantized output (float).
at::Tensor int_softmax(const at::Tensor& codes, double input_scale, const QuantSpec& out);
at::Tensor int_softmax_reference(const at::Tensor& codes, double input_scale, const QuantSpec& out);
// The output step of a uniform integer softmax: 1 / (2^b − 1).
QuantParams int_softmax_uniform_params(int bits);

// Integer LayerNorm over the last axis. `codes`: int64 [..., C] codes of a PowerOfTwoFactor quantizer whose
// per-channel steps are `in_scale` (broadcastable to [..., C], all s·2^α_c) and zero point `in_zero_point`;
// gamma/beta [C]; (out_spec, out_params) a per-tensor uniform output quantizer. Returns the dequantized output.
at::Tensor int_layernorm(const at::Tensor& codes, const at::Tensor& in_scale, double in_zero_point, const at::Tensor& gamma,
                         const at::Tensor& beta, const QuantSpec& out_spec, const QuantParams& out_params);
at::Tensor int_layernorm_reference(const at::Tensor& codes, const at::Tensor& in_scale, double in_zero_point,
                                   const at::Tensor& gamma, const at::Tensor& beta, const QuantSpec& out_spec,
                                   const QuantParams& out_params);
// α_c = log2(scale_c / min scale) of a PTF quantizer's steps; Error unless each is an integer in 0..3.
at::Tensor ptf_factors(const at::Tensor& scale);

}  // namespace vitq
