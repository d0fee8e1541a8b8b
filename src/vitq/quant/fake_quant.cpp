#include "vitq/quant/fake_quant.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>

#include "vitq/quant/integer_ops.h"
#include "vitq/util/error.h"

namespace vitq {

namespace {
std::map<std::string, size_t> node_index(const Graph& g) {
  std::map<std::string, size_t> idx;
  for (size_t i = 0; i < g.nodes.size(); ++i) idx[g.nodes[i].name] = i;
  return idx;
}
}  // namespace

QuantizedModel::QuantizedModel(const Graph& g, const QuantPlan& plan, c10::Device device) : exec_(g, device) {
  constants_.assign(g.nodes.size(), {});
  activations_.assign(g.nodes.size(), {});
  auto idx = node_index(g);
  // reparameterised constants (RepQ-ViT) replace the graph's on every node that reads them
  const auto changed = reparam_constants(g, plan);
  if (!changed.empty())
    for (size_t i = 0; i < g.nodes.size(); ++i) {
      const Node& n = g.nodes[i];
      for (size_t s = 0; s < n.inputs.size(); ++s)
        if (auto it = changed.find(n.inputs[s]); it != changed.end()) {
          constants_[i].resize(n.inputs.size());
          constants_[i][s] = it->second.to(device);
        }
    }
  for (const auto& p : plan.points) {
    auto it = idx.find(p.node);
    if (it == idx.end()) fail("plan point {} is not in the model", p.node);
    const Node& n = g.nodes[it->second];
    auto& consts = constants_[it->second];
    auto& acts = activations_[it->second];
    consts.resize(n.inputs.size());
    acts.resize(n.inputs.size(), nullptr);
    if (p.weight) {
      const int v = n.inputs[static_cast<size_t>(p.slot)];
      // a handle (reference-counted), not a reference: GCC 13 cannot tell that plan_weight returns a plan's or a
      // graph's tensor, never the temporary string's, and warns of a dangling reference
      const at::Tensor w = plan_weight(plan, p.slot == 1 ? p.node : "", changed.count(v) ? changed.at(v) : g.const_tensor(v));
      consts[static_cast<size_t>(p.slot)] = quantize_point(p, w).to(device);
    } else {
      acts[static_cast<size_t>(p.slot)] = &p;
    }
  }
  for (const auto& [node, bias] : plan.bias) {
    auto it = idx.find(node);
    if (it == idx.end()) fail("plan corrects the bias of {}, which is not in the model", node);
    auto& consts = constants_[it->second];
    consts.resize(std::max<size_t>(consts.size(), 3));
    consts[2] = bias.to(device);
  }
  int_ops_.assign(g.nodes.size(), nullptr);
  for (const auto& op : plan.int_ops) {
    auto it = idx.find(op.node);
    if (it == idx.end()) fail("plan computes {} in integers, which is not in the model", op.node);
    int_ops_[it->second] = &op;
  }
  hooks_.replace = [this, &g](const Node& n, const std::vector<at::Tensor>& args) -> std::vector<at::Tensor> {
    const size_t i = static_cast<size_t>(&n - g.nodes.data());
    if (!int_ops_[i]) return {};
    return {run_int_op(*int_ops_[i], *activations_[i].at(0), args)};
  };
  // Linear + GELU may run fused unless the GELU's input is quantized or computed in integers (the Linear itself is
  // never replaced here).
  hooks_.allow_fusion = [this, &g](const Node&, const Node& gelu) {
    const size_t i = static_cast<size_t>(&gelu - g.nodes.data());
    return !int_ops_[i] && (activations_[i].empty() || !activations_[i][0]);
  };
  // Scales of activation quantizers live on the device too.
  hooks_.transform_input = [this, &g](const Node& n, size_t slot, const at::Tensor& t) -> at::Tensor {
    const size_t i = static_cast<size_t>(&n - g.nodes.data());
    const auto& consts = constants_[i];
    if (slot < consts.size() && consts[slot].defined()) return consts[slot];
    const auto& acts = activations_[i];
    if (slot < acts.size() && acts[slot]) {
      const QuantPoint& p = *acts[slot];
      return fake_quant(t, p.spec, p.params.to(t.device()));
    }
    return t;
  };
}

at::Tensor run_int_op(const IntOp& op, const QuantPoint& in, const std::vector<at::Tensor>& args) {
  const auto device = args[0].device();
  auto codes = quantize_codes(args[0].cpu(), in.spec, in.params).to(at::kLong);
  if (op.kind == "softmax") return int_softmax(codes, in.params.scale.item<double>(), op.out_spec).to(device);
  return int_layernorm(codes, in.params.scale, in.params.zero_point.reshape({-1})[0].item<double>(), args[1].cpu(),
                       args[2].cpu(), op.out_spec, op.out_params)
      .to(device);
}

at::Tensor QuantizedModel::run(const at::Tensor& input, const ExecHooks* observe) const {
  if (!observe) return exec_.run(input, &hooks_);
  ExecHooks h = hooks_;
  h.on_output = observe->on_output;
  return exec_.run(input, &h);
}

double sqnr_db(const at::Tensor& ref, const at::Tensor& approx) {
  const double signal = ref.to(at::kDouble).pow(2).sum().item<double>();
  const double noise = (ref.to(at::kDouble) - approx.to(at::kDouble)).pow(2).sum().item<double>();
  if (noise == 0.0) return std::numeric_limits<double>::infinity();
  if (signal == 0.0) return -std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(signal / noise);
}

double cosine(const at::Tensor& a, const at::Tensor& b) {
  auto x = a.flatten().to(at::kDouble), y = b.flatten().to(at::kDouble);
  const double den = x.norm().item<double>() * y.norm().item<double>();
  return den == 0.0 ? (x.equal(y) ? 1.0 : 0.0) : (x * y).sum().item<double>() / den;
}

std::string point_label(const QuantPoint& p) {
  std::string s = fmt::format("{}{}", p.weight ? "W" : "A", p.spec.bits);
  if (p.spec.kind == QuantKind::TwinUniform) return s + "twin";
  if (p.spec.kind == QuantKind::Log2) return s + "log2";
  if (p.spec.kind == QuantKind::LogSqrt2) return s + "log√2";
  if (p.spec.kind == QuantKind::AdaLog) return s + "adalog";
  if (p.spec.kind == QuantKind::PowerOfTwoFactor) return s + "ptf";
  const char* g = p.spec.granularity == Granularity::PerTensor ? "t" : p.spec.granularity == Granularity::PerChannel ? "c"
                  : p.spec.granularity == Granularity::PerHead ? "h" : "g";
  s += fmt::format("{}{}", g, p.spec.symmetric ? "s" : "a");
  if (p.codes.defined()) s += "+ar";
  return s;
}

std::string plan_summary(const QuantPlan& plan) {
  std::map<std::string, int> counts;
  for (const auto& p : plan.points) ++counts[point_label(p)];
  std::vector<std::pair<int, std::string>> order;
  for (const auto& [label, n] : counts) order.emplace_back(-n, label);
  std::sort(order.begin(), order.end());
  std::string s;
  for (const auto& [n, label] : order) s += fmt::format("{}{}×{}", s.empty() ? "" : " ", label, -n);
  return s;
}

std::vector<LayerReport> layer_report(const Graph& g, const QuantPlan& plan, const at::Tensor& images) {
  // a reparameterised plan is measured against the reparameterised FP model (the same function; its layers' inputs
  // are the ones the plan's quantizers see)
  if (!plan.reparams.empty() && g.reparameterised.empty()) return layer_report(with_reparams(g, plan), plan, images);
  at::InferenceMode guard;
  Executor fp(g);
  std::map<std::string, std::vector<at::Tensor>> fp_inputs;
  std::map<std::string, at::Tensor> fp_out, q_out;
  std::set<std::string> planned;
  for (const auto& p : plan.points) planned.insert(p.node);
  ExecHooks capture;
  capture.transform_input = [&](const Node& n, size_t slot, const at::Tensor& t) {
    if (planned.count(n.name)) {
      auto& v = fp_inputs[n.name];
      v.resize(std::max(v.size(), slot + 1));
      v[slot] = t;
    }
    return t;
  };
  capture.on_output = [&](const Node& n, const std::vector<at::Tensor>& outs) {
    if (planned.count(n.name)) fp_out[n.name] = outs[0];
  };
  fp.run(images, &capture);
  QuantizedModel qm(g, plan);
  ExecHooks observe;
  observe.on_output = [&](const Node& n, const std::vector<at::Tensor>& outs) {
    if (planned.count(n.name)) q_out[n.name] = outs[0];
  };
  qm.run(images, &observe);

  std::vector<LayerReport> report;
  for (const auto& n : g.nodes) {
    if (!planned.count(n.name)) continue;
    LayerReport r{n.name, op_name(n.op), "", 0, 0, 0, 0};
    std::vector<at::Tensor> args = fp_inputs[n.name];
    for (size_t slot = 0; slot < args.size(); ++slot) {
      if (const QuantPoint* p = plan.find(n.name, static_cast<int>(slot))) {
        args[slot] = quantize_point(*p, slot == 1 ? plan_weight(plan, n.name, args[slot]) : args[slot]);
        r.quantizers += fmt::format("{}{}", r.quantizers.empty() ? "" : " ", point_label(*p));
      }
    }
    if (auto it = plan.bias.find(n.name); it != plan.bias.end() && args.size() > 2) args[2] = it->second;
    const IntOp* op = nullptr;
    for (const auto& o : plan.int_ops)
      if (o.node == n.name) op = &o;
    auto iso = op ? run_int_op(*op, *plan.find(n.name, 0), args) : run_node(n, args, images.size(0))[0];
    if (op) r.quantizers += op->kind == "softmax" ? " int-softmax" : " int-LN";
    r.sqnr_isolated = sqnr_db(fp_out[n.name], iso);
    r.cosine_isolated = cosine(fp_out[n.name], iso);
    r.sqnr_accumulated = sqnr_db(fp_out[n.name], q_out[n.name]);
    r.cosine_accumulated = cosine(fp_out[n.name], q_out[n.name]);
    report.push_back(r);
  }
  return report;
}

std::string format_layer_report(const std::vector<LayerReport>& report) {
  std::string s = fmt::format("{:<26} {:<9} {:<16} {:>13} {:>10} {:>16} {:>12}\n", "layer", "op", "bits", "SQNR isolated",
                              "cos iso.", "SQNR accumulated", "cos accum.");
  for (const auto& r : report)
    s += fmt::format("{:<26} {:<9} {:<16} {:>10.2f} dB {:>10.5f} {:>13.2f} dB {:>12.5f}\n", r.node, r.op, r.quantizers,
                     r.sqnr_isolated, r.cosine_isolated, r.sqnr_accumulated, r.cosine_accumulated);
  return s;
}

}  // namespace vitq
