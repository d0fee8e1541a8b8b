// Elementwise CPU kernels where libtorch's own are slow on this build. Each has a plain reference (std::)
// that the tests compare against.
#pragma once
#include <ATen/core/Tensor.h>

namespace vitq {

// erf(x) for float, vectorisable: Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7) with our own exp.
// |erf_fast(x) - erf(x)| <= 6e-7 over all finite x (tested; float rounding adds to the 1.5e-7 of the formula).
float erf_fast(float x);
// Exact-erf GELU y = x/2 (1 + erf(x/√2)) on float32 CPU tensors with AVX2 or AVX-512 (else: at::gelu).
at::Tensor gelu_erf(const at::Tensor& x);
// Softmax over the last dim of a float32 CPU tensor with our exp (relative error < 2e-8 before rounding) and
// AVX2 / AVX-512; libtorch's softmax elsewhere (other dtypes, devices, autograd).
at::Tensor softmax_lastdim(const at::Tensor& x);
// softmax_lastdim followed by uniform quantization to uint8 codes, clamp(rint(p / step) + zero_point, qmin, qmax),
// in one pass: the codes are exactly those of quantizing softmax_lastdim's output. Undefined tensor when it
// cannot run (no AVX2/AVX-512, not float32 on the CPU, a grid outside uint8).
at::Tensor softmax_lastdim_codes(const at::Tensor& x, float step, float zero_point, float qmin, float qmax);

}  // namespace vitq
