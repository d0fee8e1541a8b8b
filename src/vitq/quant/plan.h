// QuantPlan: which edge of the graph gets which quantizer with which parameters — independent of how it will
// be executed (fake-quant here; ONNX QDQ and the int8 runtime later). Saved as versioned JSON.
//
// An edge is (node name, input slot): for Linear/Conv2d slot 0 is the activation input and slot 1 the weight;
// for an activation x activation MatMul both slots are activations. Fully quantized plans (FQ-ViT) also put
// quantizers on the input of LayerNorm, Softmax and GELU nodes and on both inputs of residual adds
// (is_quant_point), and may ask for a LayerNorm or Softmax to run in integers (IntOp).
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "vitq/graph/graph.h"
#include "vitq/quant/quantizer.h"

namespace vitq {

struct QuantPoint {
  std::string node;
  int slot = 0;
  bool weight = false;  // a constant (weight) rather than an activation
  QuantSpec spec;
  QuantParams params;   // undefined until calibrated
  // Weights only, when rounding was learned (AdaRound): the integer code of every weight element (a float tensor
  // of integers in [qmin, qmax], shaped like the weight); the weight is (codes - zero_point) * scale. Each code
  // is the floor or the ceiling of w / scale + zero_point (clamped to the grid), checked when a plan is loaded.
  at::Tensor codes;
};

// x quantized as point p says: from p.codes when the rounding was learned, else fake_quant(x, p.spec, p.params).
at::Tensor quantize_point(const QuantPoint& p, const at::Tensor& x);
// The scale and zero point of p spread to the full shape of its (weight) tensor x.
at::Tensor full_scale(const QuantPoint& p, const at::Tensor& x);
at::Tensor full_zero_point(const QuantPoint& p, const at::Tensor& x);
// A per-token activation input (the reconstruction's --recon-token-scales): uniform, one step and zero point per
// index of dim 1 of a [B, N, C] tensor, the parameters shaped [1, N, 1].
bool is_per_token_input(const QuantPoint& p);
// Why a per-token input's zero points cannot serve as integer offsets ("" if they can): one for each step, each an
// integer. (Where their codes go, the integer runtime and the export check the range themselves.)
std::string per_token_zero_point_problem(const QuantPoint& p);

// A LayerNorm or Softmax node computed in integers (integer_ops.h) from the codes of its input quantizer (the
// point on slot 0: PowerOfTwoFactor for LayerNorm, per-tensor uniform for Softmax), producing codes of
// out_spec / out_params (LayerNorm: the next layer's input quantizer; Softmax: log2 or uniform 1/(2^b-1)).
struct IntOp {
  std::string node;
  std::string kind;  // "layernorm" | "softmax"
  QuantSpec out_spec;
  QuantParams out_params;
};

// RepQ-ViT's scale reparameterisation of one LayerNorm (methods/repqvit.cpp): its output x becomes, per channel c,
// x'_c = (x_c + shift_c) / scale_c, through γ'_c = γ_c / scale_c and β'_c = (β_c + shift_c) / scale_c, and every
// Linear that reads it absorbs the change: W' = W · diag(scale), b' = b − W · shift — the FP model computes the
// same function, and a per-tensor quantizer of x' can equal a per-channel one of x. The plan's quantizers are those
// of the reparameterised model (its weight points quantize W').
struct Reparam {
  std::string layernorm;  // node name
  at::Tensor scale;       // [C], positive
  at::Tensor shift;       // [C]
};

struct QuantPlan {
  // 2: quantizer kinds (twin uniform, log2, PTF), scale2, integer ops. 3: learned weight codes (AdaRound).
  // 4: reparameterisations, weight updates, the log√2 quantizer. 5: AdaLog quantizers (base, shift). Versions 1
  // to 4 load.
  static constexpr int kVersion = 5;
  std::string model;      // Graph::meta.name
  std::string method;
  nlohmann::json settings = nlohmann::json::object();  // bits, calibration set, size, seed, method options
  std::vector<QuantPoint> points;
  std::map<std::string, at::Tensor> bias;  // node -> replacement bias (bias correction)
  // node -> the weight its weight quantizer quantizes instead of the model's (after any reparameterisation): weights
  // updated to absorb activation error (ERQ-style ridge regression). Like `bias`, a quantization parameter: the FP
  // model keeps its weights.
  std::map<std::string, at::Tensor> weights;
  std::vector<IntOp> int_ops;
  std::vector<Reparam> reparams;

  QuantPoint* find(const std::string& node, int slot);
  const QuantPoint* find(const std::string& node, int slot) const;
};

// Where the literature quantizes (methods.md): weights and inputs of every Linear/Conv, both inputs of the
// attention matmuls, the image input at 8 bits; LayerNorm, softmax, GELU and residual adds stay FP.
struct PlacementOptions {
  int wbits = 8, abits = 8;
  Granularity weight_granularity = Granularity::PerChannel;
  bool act_symmetric = false;                   // activations asymmetric (zero point) by default
  std::set<std::string> keep_fp;                // layers left in floating point
  std::map<std::string, int> layer_bits;        // per-layer override: both weight and input bits
  std::map<std::string, int> layer_wbits;       // per-layer override of the weight bits alone (wins over layer_bits)
  std::map<std::string, int> layer_abits;       // per-layer override of the input bits alone (wins over layer_bits)
};
std::vector<QuantPoint> default_placement(const Graph& graph, const PlacementOptions& options);
// Whether (node, slot) may carry a quantizer: inputs 0/1 of quantizable layers, the activation input of a
// LayerNorm / Softmax / GELU, both inputs of a residual add.
bool is_quant_point(const Graph& graph, const Node& node, int slot);

// The constants the plan's reparameterisations change, by value id (LayerNorm γ/β, the readers' weights and
// biases); empty when it has none, or when `graph` is already reparameterised by them (with_reparams). Error when a
// reparameterisation does not fit the graph (not a LayerNorm, a reader that is not a Linear with a bias, sizes).
std::map<int, at::Tensor> reparam_constants(const Graph& graph, const QuantPlan& plan);
// The weight the plan quantizes for layer `node` (plan.weights, else `model_weight`).
const at::Tensor& plan_weight(const QuantPlan& plan, const std::string& node, const at::Tensor& model_weight);
// The graph with the plan's reparameterisations applied (a copy sharing the unchanged tensors), marked so that
// applying them again changes nothing: what the exporter, the integer runtime and the reconstruction work on.
Graph with_reparams(const Graph& graph, const QuantPlan& plan);

nlohmann::json plan_to_json(const QuantPlan& plan);
QuantPlan plan_from_json(const nlohmann::json& j, const std::string& where);
void save_plan(const QuantPlan& plan, const std::string& path);
// Loads and checks the plan against `graph`: same model, every point on an existing node and slot, parameter
// shapes that fit the tensors. One-line Error otherwise.
QuantPlan load_plan(const std::string& path, const Graph& graph);
void check_plan(const QuantPlan& plan, const Graph& graph, const std::string& where);

}  // namespace vitq
