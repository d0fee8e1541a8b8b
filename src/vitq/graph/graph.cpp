#include "vitq/graph/graph.h"

#include <ATen/ATen.h>

#include <array>
#include <utility>

#include "vitq/util/error.h"

namespace vitq {

namespace {
constexpr std::array<std::pair<OpKind, const char*>, 45> kOpNames = {{
    {OpKind::Conv2d, "Conv2d"}, {OpKind::Linear, "Linear"}, {OpKind::MatMul, "MatMul"}, {OpKind::Add, "Add"},
    {OpKind::Sub, "Sub"}, {OpKind::Mul, "Mul"}, {OpKind::Div, "Div"}, {OpKind::Pow, "Pow"},
    {OpKind::Sqrt, "Sqrt"}, {OpKind::Erf, "Erf"}, {OpKind::ReduceMean, "ReduceMean"},
    {OpKind::Softmax, "Softmax"}, {OpKind::LayerNorm, "LayerNorm"}, {OpKind::Gelu, "Gelu"},
    {OpKind::Relu, "Relu"}, {OpKind::Sigmoid, "Sigmoid"}, {OpKind::Tanh, "Tanh"}, {OpKind::SiLU, "SiLU"},
    {OpKind::BatchNorm, "BatchNorm"}, {OpKind::GroupNorm, "GroupNorm"}, {OpKind::InstanceNorm, "InstanceNorm"},
    {OpKind::HardSwish, "HardSwish"}, {OpKind::HardSigmoid, "HardSigmoid"}, {OpKind::AvgPool, "AvgPool"},
    {OpKind::GlobalAvgPool, "GlobalAvgPool"}, {OpKind::ReduceSum, "ReduceSum"}, {OpKind::Roll, "Roll"},
    {OpKind::Pad, "Pad"}, {OpKind::Resize, "Resize"},
    {OpKind::Reshape, "Reshape"}, {OpKind::Flatten, "Flatten"}, {OpKind::Transpose, "Transpose"},
    {OpKind::Concat, "Concat"}, {OpKind::Slice, "Slice"}, {OpKind::Gather, "Gather"}, {OpKind::Split, "Split"},
    {OpKind::Squeeze, "Squeeze"}, {OpKind::Unsqueeze, "Unsqueeze"}, {OpKind::Expand, "Expand"},
    {OpKind::Identity, "Identity"}, {OpKind::Shape, "Shape"}, {OpKind::Cast, "Cast"},
    {OpKind::ConstantOfShape, "ConstantOfShape"}, {OpKind::Equal, "Equal"}, {OpKind::Where, "Where"},
}};
}  // namespace

const char* op_name(OpKind op) {
  for (auto& [k, n] : kOpNames)
    if (k == op) return n;
  return "?";
}

std::optional<OpKind> op_from_name(std::string_view name) {
  for (auto& [k, n] : kOpNames)
    if (name == n) return k;
  return std::nullopt;
}

std::string roles_to_string(uint32_t roles) {
  static const std::pair<Role, const char*> names[] = {
      {kPostSoftmax, "post-softmax"}, {kPostGelu, "post-gelu"}, {kPostLayerNorm, "post-layernorm"},
      {kResidual, "residual"},        {kAttnQK, "attn-qk"},     {kAttnV, "attn-v"},
      {kResidualAdd, "residual-add"}, {kNormBatch, "norm-bn"},  {kNormLayer, "norm-ln"},
      {kNormGroup, "norm-gn"},        {kBridge, "bridge"}};
  std::string s;
  for (auto& [r, n] : names) {
    if (!(roles & r)) continue;
    if (!s.empty()) s += ',';
    s += n;
  }
  return s;
}

int64_t Node::geti(const std::string& key, int64_t fallback) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return fallback;
  if (auto* v = std::get_if<int64_t>(&it->second)) return *v;
  fail("node {}: attribute {} is not an integer", name, key);
}

double Node::getf(const std::string& key, double fallback) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return fallback;
  if (auto* v = std::get_if<double>(&it->second)) return *v;
  if (auto* v = std::get_if<int64_t>(&it->second)) return static_cast<double>(*v);
  fail("node {}: attribute {} is not a number", name, key);
}

std::vector<int64_t> Node::getints(const std::string& key, std::vector<int64_t> fallback) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return fallback;
  if (auto* v = std::get_if<std::vector<int64_t>>(&it->second)) return *v;
  if (auto* v = std::get_if<int64_t>(&it->second)) return {*v};
  fail("node {}: attribute {} is not an integer list", name, key);
}

std::string Node::gets(const std::string& key, std::string fallback) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return fallback;
  if (auto* v = std::get_if<std::string>(&it->second)) return *v;
  fail("node {}: attribute {} is not a string", name, key);
}

std::vector<int64_t> ShapeSpec::resolve(int64_t batch) const {
  std::vector<int64_t> out = dims;
  for (size_t i = 0; i < out.size() && i < batch_mult.size(); ++i)
    if (batch_mult[i] != 0) out[i] = batch_mult[i] * batch;
  return out;
}

int Graph::add_value(const std::string& name) {
  values.push_back(Value{name, -1, kRoleNone});
  consts.emplace_back();
  return static_cast<int>(values.size()) - 1;
}

int Graph::add_const(const std::string& name, at::Tensor tensor) {
  int id = add_value(name);
  consts[static_cast<size_t>(id)] = std::move(tensor);
  return id;
}

int Graph::add_node(OpKind op, const std::string& name, std::vector<int> inputs, int num_outputs,
                    std::map<std::string, AttrValue> attrs) {
  Node n{op, name, std::move(inputs), {}, std::move(attrs), kRoleNone};
  int idx = static_cast<int>(nodes.size());
  for (int k = 0; k < num_outputs; ++k) {
    int v = add_value(k == 0 ? name : fmt::format("{}:{}", name, k));
    values[static_cast<size_t>(v)].producer = idx;
    n.outputs.push_back(v);
  }
  nodes.push_back(std::move(n));
  return idx;
}

// A missing optional input (-1, an ONNX input named "") is not a constant: callers check inputs from files.
bool Graph::is_const(int value) const {
  return value >= 0 && static_cast<size_t>(value) < consts.size() && consts[static_cast<size_t>(value)].defined();
}

const at::Tensor& Graph::const_tensor(int value) const {
  if (!is_const(value)) {
    if (value < 0 || static_cast<size_t>(value) >= values.size()) fail("a missing input is not a constant");
    fail("value {} is not a constant", values[static_cast<size_t>(value)].name);
  }
  return consts[static_cast<size_t>(value)];
}

std::optional<int> Graph::find_value(const std::string& name) const {
  for (size_t i = 0; i < values.size(); ++i)
    if (values[i].name == name) return static_cast<int>(i);
  return std::nullopt;
}

const Node* Graph::find_node(const std::string& name) const {
  for (const auto& n : nodes)
    if (n.name == name) return &n;
  return nullptr;
}

std::vector<std::vector<int>> Graph::consumers() const {
  std::vector<std::vector<int>> c(values.size());
  for (size_t i = 0; i < nodes.size(); ++i)
    for (int v : nodes[i].inputs)
      if (v >= 0) c[static_cast<size_t>(v)].push_back(static_cast<int>(i));
  return c;
}

void Graph::validate() const {
  std::vector<bool> ready(values.size(), false);
  if (input < 0 || input >= static_cast<int>(values.size())) fail("graph has no input");
  ready[static_cast<size_t>(input)] = true;
  for (size_t v = 0; v < values.size(); ++v)
    if (is_const(static_cast<int>(v))) ready[v] = true;
  for (auto& n : nodes) {
    for (int v : n.inputs) {
      if (v < 0) continue;  // optional input left out
      if (v >= static_cast<int>(values.size())) fail("node {}: input id {} out of range", n.name, v);
      if (!ready[static_cast<size_t>(v)])
        fail("node {}: input {} is used before it is computed", n.name, values[static_cast<size_t>(v)].name);
    }
    for (int v : n.outputs) ready[static_cast<size_t>(v)] = true;
  }
  if (output < 0 || !ready[static_cast<size_t>(output)]) fail("graph output is never computed");
}

int64_t Graph::num_parameters() const {
  if (meta.declared_parameters > 0) return meta.declared_parameters;
  std::vector<bool> seen(values.size(), false);
  int64_t total = 0;
  for (auto& n : nodes)
    for (int v : n.inputs)
      if (v >= 0 && is_const(v) && !seen[static_cast<size_t>(v)]) {
        seen[static_cast<size_t>(v)] = true;
        if (consts[static_cast<size_t>(v)].is_floating_point() && consts[static_cast<size_t>(v)].numel() > 1) total += consts[static_cast<size_t>(v)].numel();
      }
  return total;
}

bool is_quantizable(const Graph& g, const Node& n) {
  if (n.op == OpKind::Linear || n.op == OpKind::Conv2d) return true;
  return n.op == OpKind::MatMul && n.inputs.size() == 2 && !g.is_const(n.inputs[0]) && !g.is_const(n.inputs[1]);
}

}  // namespace vitq
