// vitq's native integer runtime: a plan executed with int8 GEMMs (oneDNN, VNNI where the CPU has it).
//
// Native layers (each a GEMM or convolution on integer codes, int32 accumulation, the dequantization scale
// s_x·s_w, the input's zero point and the bias fused into oneDNN's epilogue; a GELU after a Linear too):
//   - Conv2d with a per-tensor uniform input and a symmetric weight quantizer (per tensor or per output channel),
//     grouped and depthwise included (zero points by oneDNN, so padding stays a real zero).
//   - Linear whose input quantizer is per-tensor uniform (≤ 8 bits), twin uniform or log2, or per-token uniform on
//     a [B, N, C] input (one step and zero point per token, --recon-token-scales: centred codes q − zp_n up to 7
//     bits, at 8 bits the codes and zp_n · Σ_k w subtracted after the GEMM; row n of the output scaled by s_n after
//     the GEMM, then the bias and GELU), and whose weight
//     quantizer is symmetric uniform per tensor or per output channel (learned codes used as they are). Weights
//     are quantized and packed once, at load.
//   - MatMul of two activations (q·kᵀ, attn·v) whose inputs are per-tensor uniform, twin uniform or log2 (left)
//     and per-tensor uniform (right), or per-head symmetric uniform on either side (then the per-head scale is
//     applied after the GEMM).
// Non-uniform codes run natively as sums of integer grids: a twin-uniform input is its fine codes (step Δ1) plus
// its coarse codes (step Δ2), a log2 input (FQ-ViT, 2^-c for c ≤ 2^b − 1) is two uint8 grids of powers of two
// (c ≤ 7: 2^(7−c) · s/2^7, else 2^(15−c) · s/2^15); the second GEMM accumulates into the first's output.
// Everything else (LayerNorm, Softmax, GELU, residual adds, convolutions, quantizers the GEMMs cannot take) runs
// as vitq's simulation does: FP32, fake-quantized inputs, and integer LayerNorm / Softmax where the plan asks.
// stats() lists which layers fell back and why.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "vitq/graph/graph.h"

namespace vitq {

struct QuantPlan;

struct Int8Stats {
  int native_linear = 0, native_matmul = 0, native_conv = 0;
  int twin_inputs = 0, log2_inputs = 0, adalog_inputs = 0;  // native inputs of those kinds (each two GEMMs)
  int token_inputs = 0;  // native per-token uniform Linear inputs (their steps applied to the output's rows)
  std::vector<std::string> fallbacks;    // "node: why" for quantized layers run by the simulation instead
};

// Whether this vitq was built with oneDNN.
bool int8_runtime_available();

class Int8Model {
 public:
  // The plan must be checked against the graph (load_plan / check_plan) and outlive the model.
  Int8Model(const Graph& graph, const QuantPlan& plan);
  ~Int8Model();
  Int8Model(const Int8Model&) = delete;
  Int8Model& operator=(const Int8Model&) = delete;
  // input [B, 3, H, W] float32 on the CPU -> logits
  at::Tensor run(const at::Tensor& input) const;
  // Same, calling after_node after each node (profiling).
  at::Tensor run(const at::Tensor& input, const std::function<void(const Node&)>& after_node) const;
  const Int8Stats& stats() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// One quantized input as integer grids: x̂ = Σ_g step_g · (codes_g − zero_point_g). Exposed for the tests
// (reference of the runtime's input quantization).
struct IntGrid {
  at::Tensor codes;  // int8 (kChar) or uint8 (kByte), the input's shape
  float step = 1;
  int32_t zero_point = 0;
  double shift = 0;  // subtracted from every value: x̂ = step · (codes − zero_point) − shift (AdaLog's δ)
  // Per-token steps (float [N]) of a [B, N, C] Linear input (--recon-token-scales): step is then 1, and row n of the
  // GEMM's output is multiplied by row_step[n] after it. The codes are centred (q − zp_n) where that fits int8 (up to
  // 7 bits); else they are q, and row_zero_point[n] · Σ_k w is subtracted from row n before the step.
  at::Tensor row_step{}, row_zero_point{};
};

}  // namespace vitq
