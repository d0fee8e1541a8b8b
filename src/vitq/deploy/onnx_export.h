// Export of a Graph, FP32 or quantized by a plan, as a standard ONNX model (opset 17).
//
// Quantized edges become QuantizeLinear / DequantizeLinear pairs (QDQ), the form ONNX Runtime and TensorRT fuse
// into integer kernels:
//   - uniform and PTF activation quantizers: Q/DQ with int8 (signed) or uint8 (unsigned / asymmetric unsigned)
//     zero points, per tensor or per axis (per channel / per head); below 8 bits the input is first clipped to
//     the grid's range, (qmin − zp)·s … (qmax − zp)·s, since QDQ's types saturate at 8 bits;
//   - weights: the integer codes (the plan's learned codes when present, else round(w / s) + zp) stored as int8 /
//     uint8 initializers, followed by DequantizeLinear (per channel with the output-channel axis). Linear weights
//     are stored transposed, [in, out], for MatMul; per-group weights dequantize through Reshape/Sub/Mul;
//   - uniform activation quantizers whose zero points vary along an axis (asymmetric per-head q, k, v): centred
//     codes q − zp, int8 with zero points 0 (the input clipped first), since ONNX Runtime fuses a Q/DQ pair with
//     zero points along an axis into an integer MatMul that refuses them; at 8 bits, where q − zp leaves int8, the
//     formula's standard ops;
//   - twin-uniform (PTQ4ViT) and log (FQ-ViT, RepQ-ViT, AdaLog) quantizers, which QDQ cannot express, as the
//     standard ops that compute the simulation's formula (Div, Round, Clip, Where, …): the same numbers, not
//     integer kernels;
//   - a Linear whose input has one step and zero point per token (--recon-token-scales): QDQ cannot say it (ONNX
//     Runtime fuses the pair into an integer MatMul with one input zero point), so it is written in integer ops:
//     QuantizeLinear along the token axis, MatMulInteger with the int8 weight codes (and their zero points), each
//     token's zero point taken out in int32 (zp_n · Σ_k (w_kc − zp_c)), then the two steps and the bias in float;
//   - integer LayerNorm / Softmax (FQ-ViT's integer ops) are refused with an Error naming the layer: the
//     standard ops would not reproduce their integer arithmetic.
// Biases stay float32 (the simulation keeps them in float; int32 biases would move the numbers).
#pragma once
#include <cstdint>
#include <string>

#include "vitq/graph/graph.h"

namespace vitq {

struct QuantPlan;

struct ExportResult {
  std::string bytes;              // the serialized ModelProto
  int opset = 17;
  int qdq_activations = 0;        // Q/DQ pairs on activation edges
  int int8_weights = 0;           // weights stored as 8-bit integer codes
  int standard_op_quantizers = 0; // twin-uniform / log / 8-bit per-axis-zero-point edges written as standard ops
  int integer_linears = 0;        // Linears with per-token inputs written as QuantizeLinear + MatMulInteger
  int64_t weight_bytes = 0;       // bytes of all initializers
};

// `plan` null: the FP32 model. Checks the result with the ONNX checker. Error (one line) for a plan that does
// not fit the graph, a quantizer or op that cannot be exported.
ExportResult export_onnx(const Graph& graph, const QuantPlan* plan);

}  // namespace vitq
