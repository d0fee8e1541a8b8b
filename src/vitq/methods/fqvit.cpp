// Lin, Zhang, Sun, Chu, Zhou. "FQ-ViT: Post-Training Quantization for Fully Quantized Vision Transformer".
// IJCAI 2022.
//
// Fully quantized: besides the weights (int, symmetric, per channel, min/max) and the inputs of every Linear
// and matmul (uint, asymmetric, per tensor, min/max), FQ-ViT quantizes the image, the LayerNorm inputs, the
// attention scores, the softmax output, the GELU input and both inputs of every residual add:
//   - Power-of-Two Factor (PTF) for LayerNorm inputs (the residual stream, whose channels differ by orders of
//     magnitude): one layer-wise step s and per-channel factors α_c in {0, 1, 2, 3} (step s·2^α_c), each α_c
//     the one with the least squared error on the calibration batch, one zero point; s·8 covers the min/max
//     range. The LayerNorm then runs in integers (integer_ops.h) and writes the next layer's input codes.
//     The residual add reads the same stream with the same PTF quantizer.
//   - Log-Int-Softmax: the attention scores are quantized (8-bit, per tensor, min/max), the softmax runs in
//     integers (integer exp) and writes log2 codes of attn_bits (4 by default: the paper's 8/8/4), so attn·v
//     is a shift-add; attn_bits 8 writes uniform 8-bit codes instead (the paper's 8/8/8).
// Under --convention common only the common quantization points are used (min/max; the post-softmax input of
// attn·v as log2 codes of attn_bits, or uniform 8-bit), with no integer LayerNorm or softmax.
#include <ATen/ATen.h>

#include "vitq/graph/executor.h"
#include "vitq/methods/method.h"
#include "vitq/quant/integer_ops.h"
#include "vitq/util/error.h"

namespace vitq {

namespace {

QuantSpec uint_spec(int bits) {
  QuantSpec s;
  s.bits = bits;
  s.symmetric = false;
  s.is_signed = false;
  return s;
}

QuantSpec ptf_spec(int bits) {
  QuantSpec s = uint_spec(bits);
  s.kind = QuantKind::PowerOfTwoFactor;
  s.granularity = Granularity::PerChannel;
  s.axis = -1;
  return s;
}

// PTF parameters for x [..., C]: s·8 spans [min, max] with zero point z; per channel the α with least error.
QuantParams ptf_params(const at::Tensor& x, const QuantSpec& spec) {
  QuantSpec whole = uint_spec(spec.bits);
  QuantParams full = params_from_range(x.min(), x.max(), whole);
  const double s = full.scale.item<double>() / 8.0;
  const int64_t C = x.size(-1);
  auto flat = x.reshape({-1, C});
  std::vector<at::Tensor> errs;
  for (int a = 0; a < 4; ++a) {
    QuantParams p{at::full({1, C}, s * (1 << a)), at::full({1, C}, full.zero_point.item<float>()), {}};
    QuantSpec ch = spec;
    ch.kind = QuantKind::Uniform;
    ch.axis = 1;
    errs.push_back((fake_quant(flat, ch, p) - flat).pow(2).sum(0));
  }
  auto alpha = at::stack(errs).argmin(0).to(at::kFloat);  // ties: the smallest factor
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape.back() = C;
  return {(s * at::exp2(alpha)).reshape(shape), at::full(shape, full.zero_point.item<float>()), {}};
}

// The quantizer that reads LayerNorm n's output: the input point of the first quantizable layer reached through
// single-consumer data-movement nodes (the class-token Gather before the head, reshapes).
const QuantPoint* output_quantizer(const Graph& g, const std::vector<std::vector<int>>& consumers, const Node& n,
                                   const QuantPlan& plan) {
  int v = n.outputs[0];
  for (int hops = 0; hops < 4; ++hops) {
    const auto& cs = consumers[static_cast<size_t>(v)];
    if (cs.size() != 1) return nullptr;
    const Node& c = g.nodes[static_cast<size_t>(cs[0])];
    if (is_quantizable(g, c)) return c.inputs[0] == v ? plan.find(c.name, 0) : nullptr;
    const bool moves = c.op == OpKind::Gather || c.op == OpKind::Reshape || c.op == OpKind::Slice ||
                       c.op == OpKind::Squeeze || c.op == OpKind::Flatten || c.op == OpKind::Identity;
    if (!moves || c.outputs.size() != 1) return nullptr;
    v = c.outputs[0];
  }
  return nullptr;
}

// Whether a node of kind `op` reads node n's output (slot < 0) or n's input `slot`.
bool reads_into(const Graph& g, const std::vector<std::vector<int>>& consumers, const Node& n, OpKind op, int slot = -1) {
  int v = slot < 0 ? n.outputs[0] : n.inputs[static_cast<size_t>(slot)];
  for (int c : consumers[static_cast<size_t>(v)])
    if (g.nodes[static_cast<size_t>(c)].op == op) return true;
  return false;
}

// Softmax n is read by an attention matmul (attn·v) alone: the Log-Int-Softmax case. MobileViTv2's separable
// attention softmax (read by a Mul) and EfficientFormerV2's (read by a talking-head conv) are not.
bool feeds_attn_v(const Graph& g, const std::vector<std::vector<int>>& consumers, const Node& n) {
  const auto& cs = consumers[static_cast<size_t>(n.outputs[0])];
  return cs.size() == 1 && g.nodes[static_cast<size_t>(cs[0])].op == OpKind::MatMul &&
         (g.nodes[static_cast<size_t>(cs[0])].roles & kAttnV);
}

QuantPlan run_fqvit(const Graph& g, const at::Tensor& calib, const MethodOptions& o) {
  at::InferenceMode guard;
  const bool paper = o.convention == "paper";
  PlacementOptions po = o.placement;
  if (paper) {
    po.act_symmetric = false;
    po.weight_granularity = Granularity::PerChannel;
  }
  QuantPlan plan;
  plan.points = default_placement(g, po);
  const int abits = po.abits;
  std::set<std::pair<std::string, int>> fixed;  // points whose parameters are not calibrated by min/max
  auto consumers = g.consumers();
  if (paper) {
    for (const auto& n : g.nodes) {
      if (po.keep_fp.count(n.name)) continue;
      if (n.op == OpKind::LayerNorm && is_quant_point(g, n, 0)) plan.points.push_back({n.name, 0, false, ptf_spec(abits), {}, {}});
      if (n.op == OpKind::Softmax && is_quant_point(g, n, 0) && feeds_attn_v(g, consumers, n))
        plan.points.push_back({n.name, 0, false, uint_spec(8), {}, {}});
      // GELU and residual adds only in the LayerNorm-based (transformer) parts: a GELU feeding a Linear, an add
      // on a stream a LayerNorm reads. Convolution stages of hybrids (BatchNorm folded, GroupNorm) stay FP there.
      if (n.op == OpKind::Gelu && is_quant_point(g, n, 0) && reads_into(g, consumers, n, OpKind::Linear))
        plan.points.push_back({n.name, 0, false, uint_spec(abits), {}, {}});
      if (n.op == OpKind::Add && is_quant_point(g, n, 0) &&
          (reads_into(g, consumers, n, OpKind::LayerNorm, 0) || reads_into(g, consumers, n, OpKind::LayerNorm, 1)))
        for (int s = 0; s < 2; ++s) plan.points.push_back({n.name, s, false, uint_spec(abits), {}, {}});
    }
  }
  for (auto& p : plan.points) {
    const Node& n = *g.find_node(p.node);
    if (n.op == OpKind::MatMul && (n.roles & kAttnV) && p.slot == 0 &&
        (g.values[static_cast<size_t>(n.inputs[0])].roles & kPostSoftmax)) {
      if (o.attn_bits == 8) {
        p.spec = uint_spec(8);
        p.params = int_softmax_uniform_params(8);
      } else {
        p.spec = uint_spec(o.attn_bits);
        p.spec.kind = QuantKind::Log2;
        p.params = log2_params();
      }
      fixed.insert({p.node, p.slot});
    }
    if (p.spec.kind == QuantKind::PowerOfTwoFactor) fixed.insert({p.node, p.slot});
  }
  // Residual adds read the stream a LayerNorm reads: same PTF quantizer (copied below).
  std::map<std::pair<std::string, int>, std::string> same_as_ln;
  for (const auto& p : plan.points) {
    const Node& n = *g.find_node(p.node);
    if (n.op != OpKind::Add) continue;
    for (int c : consumers[static_cast<size_t>(n.inputs[static_cast<size_t>(p.slot)])]) {
      const Node& r = g.nodes[static_cast<size_t>(c)];
      if (r.op == OpKind::LayerNorm && plan.find(r.name, 0)) {
        same_as_ln[{p.node, p.slot}] = r.name;
        fixed.insert({p.node, p.slot});
      }
    }
  }
  // min/max for everything else
  std::vector<QuantPoint> minmax;
  for (const auto& p : plan.points)
    if (!fixed.count({p.node, p.slot})) minmax.push_back(p);
  calibrate_with_observers(g, calib, minmax, "minmax", "minmax", o.observer);
  for (const auto& m : minmax) plan.find(m.node, m.slot)->params = m.params;
  // PTF on the LayerNorm inputs
  if (paper) {
    LayerTensors ln = capture_layers(g, calib, [&](const Node& n) { return n.op == OpKind::LayerNorm && plan.find(n.name, 0); });
    for (auto& p : plan.points)
      if (p.spec.kind == QuantKind::PowerOfTwoFactor) p.params = ptf_params(ln.inputs.at(p.node)[0], p.spec);
    for (const auto& [point, ln_name] : same_as_ln) {
      const QuantPoint& src = *plan.find(ln_name, 0);
      QuantPoint& dst = *plan.find(point.first, point.second);
      dst.spec = src.spec;
      dst.params = src.params;
    }
    // integer LayerNorm and softmax
    for (const auto& n : g.nodes) {
      if (!plan.find(n.name, 0)) continue;
      if (n.op == OpKind::LayerNorm && n.inputs.size() == 3) {
        if (const QuantPoint* out = output_quantizer(g, consumers, n, plan))
          if (out->spec.kind == QuantKind::Uniform && out->params.scale.numel() == 1)
            plan.int_ops.push_back({n.name, "layernorm", out->spec, out->params});
      }
      if (n.op == OpKind::Softmax) {
        const auto& cs = consumers[static_cast<size_t>(n.outputs[0])];
        if (cs.size() == 1 && feeds_attn_v(g, consumers, n))
          if (const QuantPoint* out = plan.find(g.nodes[static_cast<size_t>(cs[0])].name, 0))
            plan.int_ops.push_back({n.name, "softmax", out->spec, out->params});
      }
    }
  }
  plan.settings["observer"] = "minmax";
  plan.settings["attn_bits"] = o.attn_bits;
  plan.settings["softmax_output"] = o.attn_bits == 8 ? "uniform" : "log2";
  plan.settings["integer_ops"] = plan.int_ops.size();
  return plan;
}

}  // namespace

MethodInfo method_fqvit() {
  return {"fqvit", "Lin et al., IJCAI 2022",
          "fully quantized: power-of-two factor for LayerNorm inputs, Log-Int-Softmax, integer LayerNorm/softmax, "
          "quantized residual adds",
          run_fqvit};
}

}  // namespace vitq
