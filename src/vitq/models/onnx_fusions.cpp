#include "vitq/models/onnx_fusions.h"

#include <ATen/ATen.h>

#include "vitq/graph/executor.h"
#include "vitq/graph/passes.h"
#include "vitq/util/error.h"

namespace vitq {

namespace {

std::vector<int64_t> ints_of(const at::Tensor& t) {
  auto c = t.to(at::kCPU).to(at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

std::vector<double> doubles_of(const at::Tensor& t) {
  auto c = t.to(at::kCPU).to(at::kDouble).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

std::string scope_of(const std::string& name) {
  auto dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(0, dot);
}

bool absent(const Node& n, size_t slot) { return slot >= n.inputs.size() || n.inputs[slot] < 0; }
bool const_at(const Graph& g, const Node& n, size_t slot) { return !absent(n, slot) && g.is_const(n.inputs[slot]); }

int sole_consumer(const std::vector<std::vector<int>>& cons, int v) {
  return cons[static_cast<size_t>(v)].size() == 1 ? cons[static_cast<size_t>(v)][0] : -1;
}

// Whether a Reshape/Expand's ShapeSpec has the batch as its first entry (B, or 0 = "copy" without allowzero).
bool batch_first(const Node& n) {
  auto dims = n.getints("shape"), mult = n.getints("batch_mult", std::vector<int64_t>(dims.size(), 0));
  if (dims.empty() || mult.size() != dims.size()) return false;
  for (size_t i = 1; i < mult.size(); ++i)
    if (mult[i] != 0) return false;
  return (mult[0] == 1 && dims[0] == 1) || (mult[0] == 0 && dims[0] == 0 && n.geti("allowzero", 0) == 0);
}

// t broadcasts as one value per channel (dim 1) of a rank-`rank` tensor with `c` channels: [C,1,..] or [1,C,1,..].
bool per_channel(const at::Tensor& t, int64_t c, int64_t rank) {
  if (!t.is_floating_point() || t.numel() != c) return false;
  if (t.dim() == rank - 1) return t.size(0) == c;
  if (t.dim() == rank) return t.size(0) == 1 && t.size(1) == c;
  return false;
}

}  // namespace

void resize_sizes_to_attrs(Graph& g, int64_t height, int64_t width) {
  std::vector<size_t> todo;
  for (size_t i = 0; i < g.nodes.size(); ++i)
    if (g.nodes[i].op == OpKind::Resize && !absent(g.nodes[i], 3) && !g.is_const(g.nodes[i].inputs[3])) todo.push_back(i);
  if (todo.empty()) return;
  std::vector<std::vector<int64_t>> at1, at2;
  {
    Executor ex(g);
    auto run1 = ex.run_all(at::zeros({1, 3, height, width}));
    auto run2 = ex.run_all(at::zeros({2, 3, height, width}));
    for (size_t i : todo) {
      auto v = static_cast<size_t>(g.nodes[i].inputs[3]);
      at1.push_back(ints_of(run1[v]));
      at2.push_back(ints_of(run2[v]));
    }
  }
  for (size_t k = 0; k < todo.size(); ++k) {
    auto& n = g.nodes[todo[k]];
    const auto &a = at1[k], &b = at2[k];
    // [B, C, H, W]: only the batch may differ between the runs
    if (a.size() != 4 || b.size() != 4 || a[1] != b[1] || a[2] != b[2] || a[3] != b[3] || b[0] != 2 * a[0] || a[0] != 1)
      fail("node {}: Resize output size depends on the batch in a way vitq cannot fold", n.name);
    n.attrs["sizes"] = std::vector<int64_t>{a[2], a[3]};
    n.inputs.resize(1);
  }
}

void onnx_inputs_to_attrs(Graph& g) {
  for (auto& n : g.nodes) {
    if (n.op == OpKind::ReduceSum) {
      if (const_at(g, n, 1)) n.attrs["axes"] = ints_of(g.const_tensor(n.inputs[1]));
      else if (!absent(n, 1)) continue;  // computed axes: the executor reads them
      // no axes with noop_with_empty_axes: the identity
      if (n.getints("axes").empty() && n.geti("noop_with_empty_axes", 0) != 0) {
        n.op = OpKind::Identity;
        n.attrs.erase("axes");
      }
      n.attrs.erase("noop_with_empty_axes");
      n.inputs.resize(1);
    } else if (n.op == OpKind::Pad) {  // [x, pads, constant_value?]
      if (!const_at(g, n, 1) || !(absent(n, 2) || const_at(g, n, 2))) continue;
      n.attrs["pads"] = ints_of(g.const_tensor(n.inputs[1]));
      if (!absent(n, 2)) {
        const auto& v = g.const_tensor(n.inputs[2]);
        if (v.numel() > 1) fail("node {}: Pad constant_value must be a scalar", n.name);
        if (v.numel() == 1) n.attrs["value"] = v.to(at::kDouble).item<double>();
      }
      n.inputs.resize(1);
    } else if (n.op == OpKind::Resize) {  // [x, roi, scales, sizes]; roi only matters for tf_crop_and_resize
      if (!(absent(n, 2) || const_at(g, n, 2)) || !(absent(n, 3) || const_at(g, n, 3))) continue;
      if (!absent(n, 3) && g.const_tensor(n.inputs[3]).numel() > 0)
        n.attrs["sizes"] = ints_of(g.const_tensor(n.inputs[3]));
      else if (!absent(n, 2) && g.const_tensor(n.inputs[2]).numel() > 0)
        n.attrs["scales"] = doubles_of(g.const_tensor(n.inputs[2]));
      n.inputs.resize(1);
    }
  }
}

void fuse_silu(Graph& g) {
  auto cons = g.consumers();
  bool changed = false;
  for (auto& sig : g.nodes) {
    if (sig.op != OpKind::Sigmoid) continue;
    int m = sole_consumer(cons, sig.outputs[0]);
    if (m < 0) continue;
    Node& mul = g.nodes[static_cast<size_t>(m)];
    const int x = sig.inputs[0];
    if (mul.op != OpKind::Mul || mul.inputs.size() != 2 ||
        !((mul.inputs[0] == x && mul.inputs[1] == sig.outputs[0]) || (mul.inputs[1] == x && mul.inputs[0] == sig.outputs[0])))
      continue;
    mul.op = OpKind::SiLU;
    mul.inputs = {x};
    mul.attrs.clear();
    mul.name = scope_of(mul.name);  // "stem.bn.act.Mul" -> "stem.bn.act"
    changed = true;  // the Sigmoid is dead now
  }
  if (changed) compact(g);
}

void fuse_group_norm(Graph& g) {
  auto cons = g.consumers();
  auto producer = [&](int v) -> Node* {
    int p = v >= 0 ? g.values[static_cast<size_t>(v)].producer : -1;
    return p >= 0 ? &g.nodes[static_cast<size_t>(p)] : nullptr;
  };
  auto only_reader = [&](const Node& n) -> Node* {
    int c = sole_consumer(cons, n.outputs[0]);
    return c >= 0 ? &g.nodes[static_cast<size_t>(c)] : nullptr;
  };
  bool changed = false;
  for (auto& inorm : g.nodes) {
    if (inorm.op != OpKind::InstanceNorm || inorm.inputs.size() != 3 || !const_at(g, inorm, 1) || !const_at(g, inorm, 2))
      continue;
    // scale 1, bias 0 over G "channels" (the groups)
    const auto& scale = g.const_tensor(inorm.inputs[1]);
    const auto& bias = g.const_tensor(inorm.inputs[2]);
    const int64_t groups = scale.numel();
    if (groups < 1 || bias.numel() != groups || !at::all(scale == 1).item<bool>() || !at::all(bias == 0).item<bool>())
      continue;
    // x -> Reshape [B, G, -1] -> InstanceNorm
    Node* r1 = producer(inorm.inputs[0]);
    if (!r1 || r1->op != OpKind::Reshape || r1->inputs.size() != 1 || !batch_first(*r1) || !only_reader(*r1)) continue;
    auto d1 = r1->getints("shape");
    if (d1.size() != 3 || d1[1] != groups || d1[2] != -1) continue;
    // -> Reshape back to [B, C, ...] (x's shape: torch writes the target as Shape(x); the executor would fail
    // on a GroupNorm whose channels differ from C)
    Node* r2 = only_reader(inorm);
    if (!r2 || r2->op != OpKind::Reshape || r2->inputs.size() != 1 || !batch_first(*r2)) continue;
    auto d2 = r2->getints("shape");
    const auto rank = static_cast<int64_t>(d2.size());
    const int64_t channels = rank >= 3 ? d2[1] : 0;
    if (channels <= 0 || channels % groups != 0) continue;
    // -> Mul γ -> Add β (each optional, per channel)
    Node* last = r2;
    int gamma = -1, beta = -1;
    auto affine = [&](OpKind op) -> int {
      Node* n = only_reader(*last);
      if (!n || n->op != op || n->inputs.size() != 2) return -1;
      int other = n->inputs[0] == last->outputs[0] ? n->inputs[1] : n->inputs[0];
      if (!g.is_const(other) || !per_channel(g.const_tensor(other), channels, rank)) return -1;
      last = n;
      return other;
    };
    gamma = affine(OpKind::Mul);
    if (gamma >= 0) beta = affine(OpKind::Add);
    std::string name = scope_of(inorm.name);  // "stages.3.1.transformer.0.norm1.InstanceNormalization"
    auto opts = at::TensorOptions().dtype(at::kFloat);
    int gv = g.add_const(name + ".weight", gamma >= 0 ? g.const_tensor(gamma).reshape({channels}).to(at::kFloat).contiguous()
                                                      : at::ones({channels}, opts));
    int bv = g.add_const(name + ".bias", beta >= 0 ? g.const_tensor(beta).reshape({channels}).to(at::kFloat).contiguous()
                                                   : at::zeros({channels}, opts));
    const double eps = inorm.getf("epsilon", 1e-5);
    last->op = OpKind::GroupNorm;
    last->name = name;
    last->inputs = {r1->inputs[0], gv, bv};
    last->attrs = {{"num_groups", groups}, {"epsilon", eps}};
    changed = true;  // the Reshapes, InstanceNorm and Mul are dead now
  }
  if (changed) compact(g);
}

void drop_broadcast_expand(Graph& g, int64_t height, int64_t width) {
  auto cons = g.consumers();
  std::vector<std::pair<size_t, int>> todo;  // (Expand node, the other operand of its reader)
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& e = g.nodes[i];
    int r = e.op == OpKind::Expand ? sole_consumer(cons, e.outputs[0]) : -1;
    if (r < 0) continue;
    const Node& op = g.nodes[static_cast<size_t>(r)];
    bool elementwise = op.op == OpKind::Add || op.op == OpKind::Sub || op.op == OpKind::Mul || op.op == OpKind::Div;
    if (!elementwise || op.inputs.size() != 2 || op.inputs[0] == op.inputs[1]) continue;
    todo.emplace_back(i, op.inputs[0] == e.outputs[0] ? op.inputs[1] : op.inputs[0]);
  }
  if (todo.empty()) return;
  std::vector<bool> same(todo.size(), true);
  {
    Executor ex(g);
    for (int64_t batch : {1, 2}) {
      auto vals = ex.run_all(at::zeros({batch, 3, height, width}));
      for (size_t k = 0; k < todo.size(); ++k)
        same[k] = same[k] && vals[static_cast<size_t>(g.nodes[todo[k].first].outputs[0])].sizes() ==
                                 vals[static_cast<size_t>(todo[k].second)].sizes();
    }
  }
  bool changed = false;
  for (size_t k = 0; k < todo.size(); ++k)
    if (same[k]) {
      Node& e = g.nodes[todo[k].first];
      e.op = OpKind::Identity;
      e.inputs.resize(1);
      e.attrs.clear();
      changed = true;
    }
  if (changed) compact(g);
}

void scale_after_qk(Graph& g) {
  auto cons = g.consumers();
  std::vector<Node> out;
  out.reserve(g.nodes.size());
  bool changed = false;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    Node n = g.nodes[i];
    int p = n.op == OpKind::MatMul && n.inputs.size() == 2 ? g.values[static_cast<size_t>(n.inputs[0])].producer : -1;
    Node* mul = p >= 0 ? &g.nodes[static_cast<size_t>(p)] : nullptr;
    if (!mul || mul->op != OpKind::Mul || mul->inputs.size() != 2 || g.is_const(n.inputs[1]) ||
        sole_consumer(cons, mul->outputs[0]) != static_cast<int>(i)) {
      out.push_back(std::move(n));
      continue;
    }
    const int q = g.is_const(mul->inputs[1]) ? mul->inputs[0] : mul->inputs[1];
    const int s = q == mul->inputs[0] ? mul->inputs[1] : mul->inputs[0];
    if (!g.is_const(s) || g.is_const(q) || g.const_tensor(s).numel() != 1 || !g.const_tensor(s).is_floating_point()) {
      out.push_back(std::move(n));
      continue;
    }
    // the Mul is moved behind the MatMul (the old one is dead once the MatMul reads q)
    Node scaled = *mul;
    const int qk = g.add_value(n.name);
    scaled.inputs = {qk, s};
    scaled.outputs = n.outputs;
    n.inputs[0] = q;
    n.outputs = {qk};
    out.push_back(std::move(n));
    out.push_back(std::move(scaled));
    changed = true;
  }
  if (!changed) return;
  g.nodes = std::move(out);
  for (auto& v : g.values) v.producer = -1;
  for (size_t i = 0; i < g.nodes.size(); ++i)
    for (int v : g.nodes[i].outputs) g.values[static_cast<size_t>(v)].producer = static_cast<int>(i);
  compact(g);
}

void mark_exported_batch_norm(Graph& g) {
  for (auto& n : g.nodes)
    if (n.op == OpKind::Conv2d && n.inputs.size() > 1 && n.inputs[1] >= 0 &&
        g.values[static_cast<size_t>(n.inputs[1])].name.rfind("onnx::Conv_", 0) == 0)
      n.attrs["norm"] = std::string("batchnorm");
}

}  // namespace vitq
