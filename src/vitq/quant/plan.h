// QuantPlan: which edge of the graph gets which quantizer with which parameters — independent of how it will
// be executed (fake-quant here; ONNX QDQ and the int8 runtime later). Saved as versioned JSON.
//
// An edge is (node name, input slot): for Linear/Conv2d slot 0 is the activation input and slot 1 the weight;
// for an activation x activation MatMul both slots are activations.
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
};

struct QuantPlan {
  static constexpr int kVersion = 1;
  std::string model;      // Graph::meta.name
  std::string method;
  nlohmann::json settings = nlohmann::json::object();  // bits, calibration set, size, seed, method options
  std::vector<QuantPoint> points;
  std::map<std::string, at::Tensor> bias;  // node -> replacement bias (bias correction)

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
};
std::vector<QuantPoint> default_placement(const Graph& graph, const PlacementOptions& options);

nlohmann::json plan_to_json(const QuantPlan& plan);
QuantPlan plan_from_json(const nlohmann::json& j, const std::string& where);
void save_plan(const QuantPlan& plan, const std::string& path);
// Loads and checks the plan against `graph`: same model, every point on an existing node and slot, parameter
// shapes that fit the tensors. One-line Error otherwise.
QuantPlan load_plan(const std::string& path, const Graph& graph);
void check_plan(const QuantPlan& plan, const Graph& graph, const std::string& where);

}  // namespace vitq
