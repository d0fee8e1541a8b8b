// The trainable forms of the quantizers that reconstruction optimises (recon.h), each a plain function of
// tensors so its gradients can be checked on its own (tests/test_recon.cpp):
//   - LSQ (Esser et al., ICLR 2020): a uniform quantizer whose step (and zero point) get gradients through the
//     straight-through round: ∂x̂/∂s = round(x/s) − x/s inside the grid, qmin − zp or qmax − zp where clamped;
//     ∂x̂/∂x = 1 inside the grid, 0 outside.
//   - AdaRound (Nagel et al., ICML 2020): each weight rounds to floor(w/s) + h(V) with the rectified sigmoid
//     h(V) = clamp(σ(V)(ζ − γ) + γ, 0, 1), ζ = 1.1, γ = −0.1; the regulariser Σ 1 − |2h(V) − 1|^β (β annealed
//     from large to small) pushes every h to 0 or 1, so the final code is floor or ceil: floor + [V >= 0].
//   - AdaLog with a trainable scale s and base τ (vitq's, the log analogue of LSQ): x̂ = s·2^(−c/τ) − δ with
//     c = max(0, round(−τ·log2((x + δ)/s))) straight-through, 0 − δ below the smallest level. In log terms the
//     level is log2 s − c/τ, so inside the grid s has no gradient (moving it moves every code with it) and τ gets
//     (c − u)/τ², u the unrounded code: LSQ's rounding-error gradient; above the grid (c = 0) s gets 1.
#pragma once
#include <ATen/core/Tensor.h>

#include "vitq/quant/quantizer.h"

namespace vitq::recon {

at::Tensor rect_sigmoid(const at::Tensor& v);
// The V whose h(V) is `frac` (frac in [0, 1); clamped away from the ends so V stays finite).
at::Tensor rect_sigmoid_inverse(const at::Tensor& frac);
// Σ 1 − |2h(V) − 1|^β
at::Tensor rounding_regularizer(const at::Tensor& v, double beta);

// AdaRound's weight: (clamp(w_floor + zp + h(V), qmin, qmax) − zp) · s, with h(V) replaced by [V >= 0] when
// `hard`. w_floor = floor(w / s); s and zp broadcast against it.
at::Tensor adaround_weight(const at::Tensor& w_floor, const at::Tensor& v, const at::Tensor& scale, const at::Tensor& zero_point,
                           const QuantSpec& spec, bool hard);
// The integer codes of the hard AdaRound weight: clamp(w_floor + zp + [V >= 0], qmin, qmax).
at::Tensor adaround_codes(const at::Tensor& w_floor, const at::Tensor& v, const at::Tensor& zero_point, const QuantSpec& spec);

// LSQ fake quantization with a trainable step `scale` (> 0) and, when defined, a trainable zero point (rounded
// straight-through and kept on the grid). Both broadcast against x (the shapes QuantParams uses).
at::Tensor lsq_fake_quant(const at::Tensor& x, const QuantSpec& spec, const at::Tensor& scale, const at::Tensor& zero_point);

// AdaLog fake quantization with a trainable scale (> 0) and base τ (> 0), one value each; `shift` is δ (fixed).
// Equal to fake_quant with those parameters.
at::Tensor adalog_fake_quant(const at::Tensor& x, const QuantSpec& spec, const at::Tensor& scale, const at::Tensor& tau, double shift);

}  // namespace vitq::recon
