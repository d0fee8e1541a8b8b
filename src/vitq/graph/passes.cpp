#include "vitq/graph/passes.h"

#include <algorithm>
#include <ATen/ATen.h>

#include <cmath>
#include <functional>
#include <set>

#include "vitq/graph/executor.h"
#include "vitq/util/error.h"

namespace vitq {

namespace {

bool is_shape_op(OpKind op) {
  return op == OpKind::Shape || op == OpKind::Cast || op == OpKind::ConstantOfShape || op == OpKind::Equal ||
         op == OpKind::Where;
}

// Scalar value of a constant float tensor with one element, if `v` is one.
std::optional<double> const_scalar(const Graph& g, int v) {
  if (v < 0 || !g.is_const(v)) return std::nullopt;
  const auto& t = g.const_tensor(v);
  if (t.numel() != 1) return std::nullopt;
  return t.to(at::kDouble).item<double>();
}

bool near(std::optional<double> x, double want) { return x && std::abs(*x - want) < 1e-4 * std::abs(want); }

// The single node consuming value v, or -1.
int sole_consumer(const std::vector<std::vector<int>>& cons, int v) {
  return cons[static_cast<size_t>(v)].size() == 1 ? cons[static_cast<size_t>(v)][0] : -1;
}

// The other input of a binary node, given one of them.
int other_input(const Node& n, int v) { return n.inputs[0] == v ? n.inputs[1] : n.inputs[0]; }

std::string scope_of(const std::string& name) {
  auto dot = name.rfind('.');
  return dot == std::string::npos ? std::string() : name.substr(0, dot);
}

void make_identity(Node& n, int input) {
  n.op = OpKind::Identity;
  n.inputs = {input};
  n.attrs.clear();
}

}  // namespace

void fold_shape_subgraphs(Graph& g, int64_t height, int64_t width) {
  Executor ex(g);
  // The graph comes from a file: before each node runs, bound what it would allocate, so that a malformed one
  // (a ConstantOfShape of [1e6, 1e6], a broadcast of [N,1] with [1,N]) is an error, not an exhausted memory.
  // A real network's tensors, even at the batch of 2 images below, are far below these limits.
  auto guarded_run = [&](int64_t batch) {
    const double image = static_cast<double>(batch) * 3.0 * static_cast<double>(height) * static_cast<double>(width);
    const double per_tensor = std::max(1024.0 * image, double{1 << 22}), all = std::max(8192.0 * image, double{1 << 25});
    double total = 0.0;
    ExecHooks hooks;
    hooks.replace = [&](const Node& n, const std::vector<at::Tensor>& in) {
      double bound = output_elements_bound(n, in, batch);
      if (bound > per_tensor)
        fail("node {} ({}): its output would have {:.3g} elements ({:.3g} times the input image); the graph is "
             "malformed", n.name, op_name(n.op), bound, bound / image);
      return std::vector<at::Tensor>{};
    };
    hooks.on_output = [&](const Node& n, const std::vector<at::Tensor>& outs) {
      for (const auto& t : outs)
        if (t.defined()) total += static_cast<double>(t.numel());
      if (total > all)
        fail("node {} ({}): the graph's values add up to {:.3g} elements ({:.3g} times the input image); the "
             "graph is malformed", n.name, op_name(n.op), total, total / image);
    };
    return ex.run_all(at::zeros({batch, 3, height, width}), &hooks);
  };
  auto run1 = guarded_run(1);
  auto run2 = guarded_run(2);
  // static: computable without knowing the image (constants, shapes, and what is computed only from them)
  std::vector<bool> is_static(g.values.size(), false);
  for (size_t v = 0; v < g.values.size(); ++v) is_static[v] = g.is_const(static_cast<int>(v));
  for (auto& n : g.nodes) {
    bool s = n.op == OpKind::Shape;
    if (!s) {
      s = true;
      for (int v : n.inputs)
        if (v >= 0 && !is_static[static_cast<size_t>(v)]) s = false;
    }
    // A Reshape/Expand of constants to a batch-dependent shape (the class token broadcast to [B,1,C]) is
    // real work at run time: keep it, and fold only its shape input below.
    if (s && (n.op == OpKind::Reshape || n.op == OpKind::Expand)) {
      const auto& a = run1[static_cast<size_t>(n.outputs[0])];
      const auto& b = run2[static_cast<size_t>(n.outputs[0])];
      if (a.sizes() != b.sizes()) s = false;
    }
    for (int v : n.outputs) is_static[static_cast<size_t>(v)] = s;
  }
  for (auto& n : g.nodes) {
    bool node_static = !n.outputs.empty() && is_static[static_cast<size_t>(n.outputs[0])];
    if (node_static) continue;
    for (size_t slot = 0; slot < n.inputs.size(); ++slot) {
      int v = n.inputs[slot];
      if (v < 0 || g.is_const(v) || !is_static[static_cast<size_t>(v)]) continue;
      const auto& a = run1[static_cast<size_t>(v)];
      const auto& b = run2[static_cast<size_t>(v)];
      if (a.sizes() == b.sizes() && at::equal(a, b)) {
        // same at every batch size: a constant. Detach it from its producer (which becomes dead).
        int producer = g.values[static_cast<size_t>(v)].producer;
        auto& outs = g.nodes[static_cast<size_t>(producer)].outputs;
        int dummy = g.add_value(g.values[static_cast<size_t>(v)].name + ":folded");
        g.values[static_cast<size_t>(dummy)].producer = producer;
        std::replace(outs.begin(), outs.end(), v, dummy);
        g.values[static_cast<size_t>(v)].producer = -1;
        g.consts[static_cast<size_t>(v)] = a.clone();
        continue;
      }
      if ((n.op == OpKind::Reshape || n.op == OpKind::Expand) && slot == 1 && a.dim() == 1 &&
          a.sizes() == b.sizes() && !a.is_floating_point()) {
        auto ai = a.to(at::kLong), bi = b.to(at::kLong);
        std::vector<int64_t> dims, mult;
        for (int64_t i = 0; i < ai.numel(); ++i) {
          int64_t x = ai[i].item<int64_t>(), y = bi[i].item<int64_t>();
          if (x == y) {
            dims.push_back(x);
            mult.push_back(0);
          } else if (y == 2 * x) {
            dims.push_back(1);
            mult.push_back(x);
          } else {
            fail("node {}: target shape depends on the batch size in a way vitq cannot fold", n.name);
          }
        }
        n.attrs["shape"] = dims;
        n.attrs["batch_mult"] = mult;
        n.inputs.resize(1);
        break;
      }
      fail("node {} ({}): input {} depends on the batch size and cannot be folded", n.name, op_name(n.op),
           g.values[static_cast<size_t>(v)].name);
    }
  }
  compact(g);
  for (auto& n : g.nodes)
    if (is_shape_op(n.op)) fail("node {}: {} could not be folded away", n.name, op_name(n.op));
}

void inputs_to_attrs(Graph& g) {
  auto ints = [&](int v) {
    auto t = g.const_tensor(v).to(at::kLong).contiguous();
    return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
  };
  for (auto& n : g.nodes) {
    std::vector<std::string> keys;
    switch (n.op) {
      case OpKind::Reshape:
      case OpKind::Expand: keys = {"shape"}; break;
      case OpKind::Squeeze:
      case OpKind::Unsqueeze:
      case OpKind::ReduceMean: keys = {"axes"}; break;
      case OpKind::Split: keys = {"split"}; break;
      case OpKind::Slice: keys = {"starts", "ends", "axes", "steps"}; break;
      default: continue;
    }
    bool all_const = true;
    for (size_t k = 0; k < keys.size(); ++k) {
      size_t slot = k + 1;
      if (slot < n.inputs.size() && n.inputs[slot] >= 0 && !g.is_const(n.inputs[slot])) all_const = false;
    }
    if (!all_const) continue;
    for (size_t k = 0; k < keys.size(); ++k) {
      size_t slot = k + 1;
      if (slot < n.inputs.size() && n.inputs[slot] >= 0) {
        n.attrs[keys[k]] = ints(n.inputs[slot]);
        if (keys[k] == "shape") n.attrs["batch_mult"] = std::vector<int64_t>(ints(n.inputs[slot]).size(), 0);
      }
    }
    n.inputs.resize(1);
  }
}

void fuse_linear(Graph& g) {
  auto cons = g.consumers();
  for (auto& n : g.nodes) {
    if (n.op != OpKind::MatMul || n.inputs.size() != 2 || g.is_const(n.inputs[0]) || !g.is_const(n.inputs[1]))
      continue;
    const auto& w = g.const_tensor(n.inputs[1]);
    if (w.dim() != 2) continue;
    int bias = -1;
    int add = sole_consumer(cons, n.outputs[0]);
    if (add >= 0 && g.nodes[static_cast<size_t>(add)].op == OpKind::Add) {
      int b = other_input(g.nodes[static_cast<size_t>(add)], n.outputs[0]);
      if (g.is_const(b) && g.const_tensor(b).dim() == 1 && g.const_tensor(b).size(0) == w.size(1)) bias = b;
    }
    // Name the layer after its bias tensor when it has a timm name ("blocks.0.attn.qkv.bias").
    std::string name = scope_of(n.name);
    if (bias >= 0) {
      const auto& bn = g.values[static_cast<size_t>(bias)].name;
      if (bn.size() > 5 && bn.compare(bn.size() - 5, 5, ".bias") == 0) name = bn.substr(0, bn.size() - 5);
    }
    if (name.empty()) name = n.name;
    int wt = g.add_const(name + ".weight", w.t().contiguous());
    n.op = OpKind::Linear;
    n.name = name;
    n.inputs = {n.inputs[0], wt};
    if (bias >= 0) {
      n.inputs.push_back(bias);
      auto& a = g.nodes[static_cast<size_t>(add)];
      make_identity(a, n.outputs[0]);
    }
  }
}

void fuse_gelu(Graph& g) {
  auto cons = g.consumers();
  auto node_of = [&](int idx) -> Node* { return idx >= 0 ? &g.nodes[static_cast<size_t>(idx)] : nullptr; };
  for (auto& erf : g.nodes) {
    if (erf.op != OpKind::Erf) continue;
    // erf input: x / √2  or  x * (1/√2)
    int pre = g.values[static_cast<size_t>(erf.inputs[0])].producer;
    Node* scale = node_of(pre);
    if (!scale || scale->inputs.size() != 2) continue;
    int x = scale->inputs[0];
    auto c = const_scalar(g, scale->inputs[1]);
    bool ok = (scale->op == OpKind::Div && near(c, std::sqrt(2.0))) || (scale->op == OpKind::Mul && near(c, std::sqrt(0.5)));
    if (!ok) continue;
    Node* add = node_of(sole_consumer(cons, erf.outputs[0]));
    if (!add || add->op != OpKind::Add || !near(const_scalar(g, other_input(*add, erf.outputs[0])), 1.0)) continue;
    Node* mul = node_of(sole_consumer(cons, add->outputs[0]));
    if (!mul || mul->op != OpKind::Mul) continue;
    int mul_other = other_input(*mul, add->outputs[0]);
    Node* last = nullptr;
    if (mul_other == x) {
      // (x * (1 + erf)) * 0.5
      Node* half = node_of(sole_consumer(cons, mul->outputs[0]));
      if (half && half->op == OpKind::Mul && near(const_scalar(g, other_input(*half, mul->outputs[0])), 0.5))
        last = half;
    } else {
      // (x * 0.5) * (1 + erf)
      Node* half = node_of(g.values[static_cast<size_t>(mul_other)].producer);
      if (half && half->op == OpKind::Mul && other_input(*half, x) != x &&
          near(const_scalar(g, other_input(*half, x)), 0.5) && (half->inputs[0] == x || half->inputs[1] == x))
        last = mul;
    }
    if (!last) continue;
    last->op = OpKind::Gelu;
    last->inputs = {x};
    last->attrs = {{"approximate", std::string("none")}};
    last->name = scope_of(scale->name).empty() ? last->name : scope_of(scale->name);
  }
  compact(g);
}

void fuse_layer_norm(Graph& g) {
  auto cons = g.consumers();
  auto producer = [&](int v) -> Node* {
    int p = v >= 0 ? g.values[static_cast<size_t>(v)].producer : -1;
    return p >= 0 ? &g.nodes[static_cast<size_t>(p)] : nullptr;
  };
  auto last_axis_mean = [&](const Node* n) {
    return n && n->op == OpKind::ReduceMean && n->getints("axes") == std::vector<int64_t>{-1} &&
           n->geti("keepdims", 1) == 1;
  };
  for (auto& out : g.nodes) {
    // out = (d / sqrt(mean(d^2) + eps)) * gamma + beta,  d = x - mean(x)
    if (out.op != OpKind::Add || out.inputs.size() != 2) continue;
    Node* mul = producer(out.inputs[0]);
    int beta = out.inputs[1];
    if (!mul) { mul = producer(out.inputs[1]); beta = out.inputs[0]; }
    if (!mul || mul->op != OpKind::Mul || !g.is_const(beta)) continue;
    Node* div = producer(mul->inputs[0]);
    int gamma = mul->inputs[1];
    if (!div) { div = producer(mul->inputs[1]); gamma = mul->inputs[0]; }
    if (!div || div->op != OpKind::Div || !g.is_const(gamma)) continue;
    Node* sub = producer(div->inputs[0]);
    Node* sqrt = producer(div->inputs[1]);
    if (!sub || sub->op != OpKind::Sub || !sqrt || sqrt->op != OpKind::Sqrt) continue;
    Node* add_eps = producer(sqrt->inputs[0]);
    if (!add_eps || add_eps->op != OpKind::Add) continue;
    auto eps = const_scalar(g, add_eps->inputs[1]);
    Node* var = producer(add_eps->inputs[0]);
    if (!eps || !last_axis_mean(var)) continue;
    Node* pow = producer(var->inputs[0]);
    if (!pow || pow->op != OpKind::Pow || pow->inputs[0] != sub->outputs[0] || !near(const_scalar(g, pow->inputs[1]), 2.0))
      continue;
    Node* mean = producer(sub->inputs[1]);
    int x = sub->inputs[0];
    if (!last_axis_mean(mean) || mean->inputs[0] != x) continue;
    // the intermediate values must not be used elsewhere
    if (cons[static_cast<size_t>(sub->outputs[0])].size() != 2 || cons[static_cast<size_t>(div->outputs[0])].size() != 1)
      continue;
    const auto& gname = g.values[static_cast<size_t>(gamma)].name;
    std::string name = gname.size() > 7 && gname.compare(gname.size() - 7, 7, ".weight") == 0
                           ? gname.substr(0, gname.size() - 7) : scope_of(out.name);
    out.op = OpKind::LayerNorm;
    out.name = name.empty() ? out.name : name;
    out.inputs = {x, gamma, beta};
    out.attrs = {{"axis", int64_t{-1}}, {"epsilon", *eps}};
  }
  compact(g);
}

void fold_batch_norm(Graph& g) {
  auto cons = g.consumers();
  bool changed = false;
  for (auto& bn : g.nodes) {
    if (bn.op != OpKind::BatchNorm || bn.inputs.size() != 5) continue;
    bool stats_const = true;
    for (size_t k = 1; k < 5; ++k) stats_const = stats_const && bn.inputs[k] >= 0 && g.is_const(bn.inputs[k]);
    int p = g.values[static_cast<size_t>(bn.inputs[0])].producer;
    if (!stats_const || p < 0) continue;
    Node& conv = g.nodes[static_cast<size_t>(p)];
    if (conv.op != OpKind::Conv2d || !g.is_const(conv.inputs[1]) || sole_consumer(cons, conv.outputs[0]) < 0) continue;
    if (conv.inputs.size() > 2 && conv.inputs[2] >= 0 && !g.is_const(conv.inputs[2])) continue;
    auto d = [&](int v) { return g.const_tensor(v).to(at::kDouble); };
    const auto& w = g.const_tensor(conv.inputs[1]);
    auto scale = d(bn.inputs[1]) / at::sqrt(d(bn.inputs[4]) + bn.getf("epsilon", 1e-5));
    auto b0 = conv.inputs.size() > 2 && conv.inputs[2] >= 0 ? d(conv.inputs[2]) : at::zeros({w.size(0)}, at::kDouble);
    // a config alone's placeholder weight (one value seen through every index, stride 0: models/builder_util.cpp)
    // stays one value a channel, so that a large model's config costs no memory
    const auto& st = w.strides();
    const bool placeholder = w.numel() > 0 && std::all_of(st.begin(), st.end(), [](int64_t s) { return s == 0; });
    auto wf = placeholder ? (w.as_strided({}, {}).to(at::kDouble) * scale).to(at::kFloat).view({-1, 1, 1, 1}).expand(w.sizes())
                          : (w.to(at::kDouble) * scale.view({-1, 1, 1, 1})).to(at::kFloat).contiguous();
    auto bf = ((b0 - d(bn.inputs[3])) * scale + d(bn.inputs[2])).to(at::kFloat).contiguous();
    const std::string wname = g.values[static_cast<size_t>(conv.inputs[1])].name;
    int wv = g.add_const(wname, wf);
    int bv = g.add_const(conv.name + ".bias", bf);
    conv.inputs.resize(3);
    conv.inputs[1] = wv;
    conv.inputs[2] = bv;
    conv.attrs["norm"] = std::string("batchnorm");
    // what the BatchNorm's running statistics say of the folded output (its per-channel mean and standard
    // deviation over the data they were measured on): data-free calibration matches them (quant/synthetic.h)
    const auto var = d(bn.inputs[4]);
    const auto bn_std = (d(bn.inputs[1]).abs() * at::sqrt(var / (var + bn.getf("epsilon", 1e-5)))).contiguous();
    const auto bn_mean = d(bn.inputs[2]).contiguous();
    conv.attrs["bn_mean"] = std::vector<double>(bn_mean.data_ptr<double>(), bn_mean.data_ptr<double>() + bn_mean.numel());
    conv.attrs["bn_std"] = std::vector<double>(bn_std.data_ptr<double>(), bn_std.data_ptr<double>() + bn_std.numel());
    make_identity(bn, bn.inputs[0]);
    changed = true;
  }
  if (changed) compact(g);
}

void compact(Graph& g) {
  // 1. bypass Identity nodes
  std::vector<int> alias(g.values.size());
  for (size_t v = 0; v < alias.size(); ++v) alias[v] = static_cast<int>(v);
  for (auto& n : g.nodes)
    if (n.op == OpKind::Identity) alias[static_cast<size_t>(n.outputs[0])] = alias[static_cast<size_t>(n.inputs[0])];
  for (auto& n : g.nodes)
    for (auto& v : n.inputs)
      if (v >= 0) v = alias[static_cast<size_t>(v)];
  g.output = alias[static_cast<size_t>(g.output)];
  // 2. keep only nodes that contribute to the output
  std::vector<bool> live_value(g.values.size(), false), live_node(g.nodes.size(), false);
  live_value[static_cast<size_t>(g.output)] = true;
  for (size_t i = g.nodes.size(); i-- > 0;) {
    auto& n = g.nodes[i];
    if (n.op == OpKind::Identity) continue;
    bool live = false;
    for (int v : n.outputs) live = live || live_value[static_cast<size_t>(v)];
    if (!live) continue;
    live_node[i] = true;
    for (int v : n.inputs)
      if (v >= 0) live_value[static_cast<size_t>(v)] = true;
  }
  live_value[static_cast<size_t>(g.input)] = true;
  // 3. renumber
  Graph out;
  out.meta = g.meta;
  out.bridges = g.bridges;
  std::vector<int> remap(g.values.size(), -1);
  auto map_value = [&](int v) {
    if (v < 0) return v;
    if (remap[static_cast<size_t>(v)] < 0) {
      int id = out.add_value(g.values[static_cast<size_t>(v)].name);
      out.values[static_cast<size_t>(id)].roles = g.values[static_cast<size_t>(v)].roles;
      out.consts[static_cast<size_t>(id)] = g.consts[static_cast<size_t>(v)];
      remap[static_cast<size_t>(v)] = id;
    }
    return remap[static_cast<size_t>(v)];
  };
  out.input = map_value(g.input);
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    if (!live_node[i]) continue;
    Node n = g.nodes[i];
    for (auto& v : n.inputs) v = map_value(v);
    for (auto& v : n.outputs) {
      v = map_value(v);
      out.values[static_cast<size_t>(v)].producer = static_cast<int>(out.nodes.size());
    }
    out.nodes.push_back(std::move(n));
  }
  out.output = map_value(g.output);
  g = std::move(out);
}

bool is_data_movement(OpKind op) {
  switch (op) {
    case OpKind::Reshape: case OpKind::Transpose: case OpKind::Flatten: case OpKind::Squeeze:
    case OpKind::Unsqueeze: case OpKind::Identity: return true;
    default: return false;
  }
}

namespace {

bool is_norm(OpKind op) {
  return op == OpKind::LayerNorm || op == OpKind::GroupNorm || op == OpKind::InstanceNorm;
}

// Residual add: y = a + b where one input (the skip) is read elsewhere too and is an ancestor of the other.
bool is_skip_of(const Graph& g, const std::vector<std::vector<int>>& cons, int skip, int branch) {
  if (cons[static_cast<size_t>(skip)].size() < 2 || g.is_const(skip) || g.is_const(branch)) return false;
  const int floor = g.values[static_cast<size_t>(skip)].producer;  // nodes before it cannot lie on the path
  std::vector<int> stack = {branch};
  std::set<int> seen;
  while (!stack.empty()) {
    int v = stack.back();
    stack.pop_back();
    if (v == skip) return true;
    int p = g.values[static_cast<size_t>(v)].producer;
    if (p < 0 || p < floor || !seen.insert(p).second) continue;
    for (int u : g.nodes[static_cast<size_t>(p)].inputs)
      if (u >= 0 && !g.is_const(u)) stack.push_back(u);
  }
  return false;
}

// The normalisation kind of quantizable layer n: a BatchNorm folded into it or reading its output, or the norm
// its input comes from through data movement only.
uint32_t norm_role(const Graph& g, const std::vector<std::vector<int>>& cons, const Node& n) {
  if (n.gets("norm", "") == "batchnorm") return kNormBatch;
  int c = sole_consumer(cons, n.outputs[0]);
  if (c >= 0 && g.nodes[static_cast<size_t>(c)].op == OpKind::BatchNorm) return kNormBatch;
  int v = n.inputs[0];
  for (;;) {
    int p = g.values[static_cast<size_t>(v)].producer;
    if (p < 0) return kRoleNone;
    const Node& q = g.nodes[static_cast<size_t>(p)];
    if (q.op == OpKind::LayerNorm) return kNormLayer;
    if (q.op == OpKind::GroupNorm || q.op == OpKind::InstanceNorm) return kNormGroup;
    if (q.op == OpKind::BatchNorm) return kNormBatch;
    const bool moves = is_data_movement(q.op) || q.op == OpKind::Roll || q.op == OpKind::Pad || q.op == OpKind::Slice;
    if (!moves || q.inputs.empty()) return kRoleNone;
    v = q.inputs[0];
  }
}

// Bridge blocks (see graph.h). A transition is a maximal chain of data-movement nodes that either
//  - conv->transformer: reads (through non-quantizable ops) the output of a Conv2d that does not read the image
//    (patch embeddings of pure ViTs are not bridges), and whose output feeds a LayerNorm / GroupNorm (a
//    pre-norm transformer block) directly or through data movement; or
//  - transformer->conv: reads a LayerNorm / GroupNorm output (the transformer's final norm) directly or through
//    data movement, and is followed (through non-quantizable ops) by a Conv2d.
// The block's layers: on the conv side the chain of convolutions next to the transition (at most two, walking
// while each value has a single reader — MobileViT's local representation conv_kxk + conv_1x1,
// EfficientFormer's last 4-D MLP fc1 + fc2), after a transformer->conv transition also the layer behind the
// next join (MobileViT's fusion conv after the concatenation); on the transformer side the one layer next to
// the transition (the first qkv, the last fc2).
void find_bridges(Graph& g) {
  g.bridges.clear();
  auto cons = g.consumers();
  auto producer = [&](int v) -> const Node* {
    int p = v >= 0 ? g.values[static_cast<size_t>(v)].producer : -1;
    return p >= 0 ? &g.nodes[static_cast<size_t>(p)] : nullptr;
  };
  auto index_of = [&](const Node* n) { return static_cast<int>(n - g.nodes.data()); };
  // values computed from constants alone (a reshaped layer scale, a gathered position bias)
  std::vector<bool> is_static(g.values.size(), false);
  for (size_t v = 0; v < g.values.size(); ++v) is_static[v] = g.is_const(static_cast<int>(v));
  for (const auto& n : g.nodes) {
    bool s = !n.inputs.empty();
    for (int u : n.inputs) s = s && (u < 0 || is_static[static_cast<size_t>(u)]);
    for (int v : n.outputs) is_static[static_cast<size_t>(v)] = s;
  }
  // Walks back from value v through non-quantizable ops (at an Add, along the input read by nobody else: the
  // branch, not the skip) to the nearest quantizable layer; `crossed_norm` tells whether a norm was passed.
  auto back_to_layer = [&](int v, bool* crossed_norm) -> const Node* {
    for (int steps = 0; steps < 64; ++steps) {
      const Node* p = producer(v);
      if (!p) return nullptr;
      if (is_quantizable(g, *p)) return p;
      if (crossed_norm && is_norm(p->op)) *crossed_norm = true;
      int next = -1;
      for (int u : p->inputs)
        if (u >= 0 && !is_static[static_cast<size_t>(u)] && (next < 0 || cons[static_cast<size_t>(u)].size() == 1)) next = u;
      if (next < 0) return nullptr;
      v = next;
    }
    return nullptr;
  };
  // Walks forward from value v along the first reader to the nearest quantizable layer; counts joins passed.
  auto forward_to_layer = [&](int v, int* joins) -> const Node* {
    for (int steps = 0; steps < 64; ++steps) {
      const auto& readers = cons[static_cast<size_t>(v)];
      if (readers.empty()) return nullptr;
      const Node& c = g.nodes[static_cast<size_t>(readers[0])];
      if (is_quantizable(g, c)) return &c;
      if (joins && (c.op == OpKind::Concat || c.op == OpKind::Add)) ++*joins;
      v = c.outputs[0];
    }
    return nullptr;
  };
  auto reaches_norm = [&](int v) {
    std::vector<int> stack = {v};
    while (!stack.empty()) {
      int u = stack.back();
      stack.pop_back();
      for (int c : cons[static_cast<size_t>(u)]) {
        const Node& r = g.nodes[static_cast<size_t>(c)];
        if (is_norm(r.op)) return true;
        if (is_data_movement(r.op)) stack.push_back(r.outputs[0]);
      }
    }
    return false;
  };
  auto norm_behind = [&](int v) {
    for (const Node* p = producer(v); p; p = producer(p->inputs[0])) {
      if (is_norm(p->op)) return true;
      if (!is_data_movement(p->op)) return false;
    }
    return false;
  };
  for (const auto& start : g.nodes) {
    if (!is_data_movement(start.op)) continue;
    const Node* before = producer(start.inputs[0]);
    if (before && is_data_movement(before->op)) continue;  // not the start of a chain
    const Node* end = &start;
    for (int c; (c = sole_consumer(cons, end->outputs[0])) >= 0 && is_data_movement(g.nodes[static_cast<size_t>(c)].op);)
      end = &g.nodes[static_cast<size_t>(c)];
    BridgeBlock b;
    b.transition = start.name;
    std::vector<const Node*> layers;
    bool crossed_norm = false;
    const Node* conv = back_to_layer(start.inputs[0], &crossed_norm);
    if (conv && conv->op == OpKind::Conv2d && !crossed_norm && conv->inputs[0] != g.input && reaches_norm(end->outputs[0])) {
      b.kind = "conv->transformer";
      for (const Node* l = conv; l && l->op == OpKind::Conv2d && layers.size() < 2;) {
        layers.insert(layers.begin(), l);
        int in = l->inputs[0];
        if (cons[static_cast<size_t>(in)].size() != 1) break;
        l = back_to_layer(in, nullptr);
      }
      if (const Node* next = forward_to_layer(end->outputs[0], nullptr)) layers.push_back(next);
    } else if (norm_behind(start.inputs[0])) {
      int joins = 0;
      const Node* next = forward_to_layer(end->outputs[0], &joins);
      if (!next || next->op != OpKind::Conv2d || joins > 0) continue;
      b.kind = "transformer->conv";
      const Node* prev = back_to_layer(start.inputs[0], nullptr);
      if (prev) layers.push_back(prev);
      layers.push_back(next);
      int after_joins = 0;
      const Node* fusion = forward_to_layer(next->outputs[0], &after_joins);
      if (fusion && fusion->op == OpKind::Conv2d && after_joins > 0) layers.push_back(fusion);
    } else {
      continue;
    }
    std::string scope = scope_of(start.name);
    b.name = scope.empty() ? start.name : scope;
    std::sort(layers.begin(), layers.end(), [&](const Node* x, const Node* y) { return index_of(x) < index_of(y); });
    for (const Node* l : layers) b.layers.push_back(l->name);
    g.bridges.push_back(std::move(b));
  }
  for (const auto& b : g.bridges)
    for (const auto& name : b.layers)
      for (auto& n : g.nodes)
        if (n.name == name && is_quantizable(g, n)) n.roles |= kBridge;
}

}  // namespace

void annotate_roles(Graph& g) {
  for (auto& v : g.values) v.roles = kRoleNone;
  for (auto& n : g.nodes) n.roles = kRoleNone;
  auto cons = g.consumers();
  auto feeds_layer_norm = [&](int v) {
    for (int c : cons[static_cast<size_t>(v)])
      if (g.nodes[static_cast<size_t>(c)].op == OpKind::LayerNorm) return true;
    return false;
  };
  for (auto& n : g.nodes) {
    auto& out = g.values[static_cast<size_t>(n.outputs[0])];
    switch (n.op) {
      case OpKind::Softmax: out.roles |= kPostSoftmax; break;
      case OpKind::Gelu: out.roles |= kPostGelu; break;
      case OpKind::LayerNorm: out.roles |= kPostLayerNorm; break;
      default: break;
    }
  }
  std::set<std::string> used_names;
  for (auto& n : g.nodes) {
    if (n.op == OpKind::MatMul && is_quantizable(g, n)) {
      // attn·v: the first input is the softmax output, or computed from it without another matmul within three
      // nodes (EfficientFormerV2's talking-head conv between the softmax and attn·v)
      bool av = false;
      for (int v = n.inputs[0], hops = 0; v >= 0 && hops < 4 && !av; ++hops) {
        const int p = g.values[static_cast<size_t>(v)].producer;
        if (p < 0) break;
        const Node& q = g.nodes[static_cast<size_t>(p)];
        av = q.op == OpKind::Softmax;
        if (q.op == OpKind::MatMul || q.op == OpKind::Linear || q.inputs.empty()) break;
        v = q.inputs[0];
      }
      n.roles |= av ? kAttnV : kAttnQK;
      std::string scope = scope_of(n.name);
      n.name = (scope.empty() ? "" : scope + ".") + (av ? "matmul_av" : "matmul_qk");
      g.values[static_cast<size_t>(n.outputs[0])].name = n.name;
    }
    // Plans address layers by name: make the names of quantizable layers unique (exporters that write no
    // module path leave every attention matmul named alike).
    if (is_quantizable(g, n)) {
      std::string base = n.name;
      for (int k = 1; used_names.count(n.name); ++k) n.name = fmt::format("{}_{}", base, k);
      used_names.insert(n.name);
      g.values[static_cast<size_t>(n.outputs[0])].name = n.name;
      n.roles |= norm_role(g, cons, n);
    }
    // Residual: y = x + f(x). Pre-norm transformers: the skip input x also feeds a LayerNorm; in general (conv
    // stages, post-norm blocks) x is read elsewhere too and is an ancestor of the other input.
    if (n.op == OpKind::Add && n.inputs.size() == 2 && !g.is_const(n.inputs[0]) && !g.is_const(n.inputs[1])) {
      for (int k = 0; k < 2; ++k) {
        int v = n.inputs[static_cast<size_t>(k)], other = n.inputs[static_cast<size_t>(1 - k)];
        if (feeds_layer_norm(v) || is_skip_of(g, cons, v, other)) {
          n.roles |= kResidualAdd;
          g.values[static_cast<size_t>(v)].roles |= kResidual;
          g.values[static_cast<size_t>(n.outputs[0])].roles |= kResidual;
        }
      }
    }
  }
  find_bridges(g);
}

}  // namespace vitq
