// FP32 kernels on oneDNN for the executor's hot ops (Linear: brgemm with packed weights, fused bias and GELU;
// measured 347 GFLOP/s for DeiT-Tiny's fc1 on 2 cores against OpenBLAS's 260). Without oneDNN the executor
// keeps libtorch's ops.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <memory>

namespace vitq {

// One Linear node's oneDNN state: primitives per row count and the weight packed in the layout they want. The
// packed weight is rebuilt when the node sees a different weight tensor (fake-quantized weights, searches).
class DnnlLinear {
 public:
  DnnlLinear();
  ~DnnlLinear();
  // Whether dnnl_linear can run these operands (CPU float32, no autograd, 2-D weight).
  static bool usable(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b);
  // y = x Wᵀ + b (then GELU (erf) when gelu).
  at::Tensor run(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b, bool gelu);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One MatMul node of two activations on oneDNN: batched (equal leading dims, rank 2-4), each operand read with its
// own strides (transposed and sliced views need no copy); primitives cached per shape and strides.
class DnnlMatMul {
 public:
  DnnlMatMul();
  ~DnnlMatMul();
  static bool usable(const at::Tensor& a, const at::Tensor& b);
  at::Tensor run(const at::Tensor& a, const at::Tensor& b);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vitq
