// Executes a Graph under a QuantPlan by simulating quantization (quantize-dequantize on every planned edge),
// and measures, per quantized layer, how far its output moves from FP.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "vitq/graph/executor.h"
#include "vitq/quant/plan.h"

namespace vitq {

class QuantizedModel {
 public:
  // The plan must be calibrated and checked (check_plan) and outlive the model. Weights are fake-quantized
  // once, here; LayerNorm / Softmax nodes the plan lists as integer ops run in integers (integer_ops.h).
  QuantizedModel(const Graph& graph, const QuantPlan& plan, c10::Device device = c10::Device(c10::kCPU));
  QuantizedModel(const QuantizedModel&) = delete;
  QuantizedModel& operator=(const QuantizedModel&) = delete;
  at::Tensor run(const at::Tensor& input, const ExecHooks* observe = nullptr) const;
  const Graph& graph() const { return exec_.graph(); }
  // The hooks that apply the plan (for running the model piece by piece with Executor::run_range).
  const ExecHooks& hooks() const { return hooks_; }

 private:
  Executor exec_;
  // per node index: replacement tensors for constant slots, quantizers for activation slots
  std::vector<std::vector<at::Tensor>> constants_;
  std::vector<std::vector<const QuantPoint*>> activations_;
  std::vector<const IntOp*> int_ops_;  // per node index, or null
  ExecHooks hooks_;
};

// Runs a LayerNorm / Softmax node in integers: `args` are its inputs with slot 0 already quantized by `in`.
at::Tensor run_int_op(const IntOp& op, const QuantPoint& in, const std::vector<at::Tensor>& args);

// A point in a few characters, for tables: "W4cs+ar" = weight, 4 bits, per-channel (t tensor, c channel, h head,
// g group), symmetric (a: asymmetric), rounding learned; "A4twin", "A4log2", "A8ptf" for the other kinds.
std::string point_label(const QuantPoint& p);
// The plan's points counted by label, most frequent first: "A4ta×49 W4cs+ar×49 A4twin×24 …".
std::string plan_summary(const QuantPlan& plan);

// Per quantized layer: SQNR and cosine of its output against FP, two ways:
//   isolated     only this layer quantized, fed its FP input (what the layer itself costs);
//   accumulated  the whole plan applied (what reaches this layer, errors of earlier layers included).
struct LayerReport {
  std::string node, op, quantizers;  // e.g. "A4ta W4cs+ar" (point_label of each input)
  double sqnr_isolated = 0, cosine_isolated = 0, sqnr_accumulated = 0, cosine_accumulated = 0;
};
std::vector<LayerReport> layer_report(const Graph& graph, const QuantPlan& plan, const at::Tensor& images);
std::string format_layer_report(const std::vector<LayerReport>& report);

// SQNR in dB of `approx` against `ref` (inf when equal) and their cosine similarity (flattened).
double sqnr_db(const at::Tensor& ref, const at::Tensor& approx);
double cosine(const at::Tensor& a, const at::Tensor& b);

}  // namespace vitq
