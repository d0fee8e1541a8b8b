// RepQ-ViT (Li et al., ICCV 2023): quantizer scale reparameterisation, no gradients.
//   1. Post-LayerNorm activations (qkv / fc1 inputs), whose channels have very different ranges, are calibrated
//      per channel: step s_c and an integer zero point z_c per channel, no constraint that the range hold 0.
//   2. They are reparameterised into one per-tensor quantizer: s̃ = mean(s), z̃ = round(mean(z)); the LayerNorm's
//      output becomes x'_c = (x_c + s_c·r2_c) / r1_c with r1 = s / s̃, r2 = z − z̃ (QuantPlan::Reparam: γ, β and the
//      readers' W, b change; the FP function does not). Since r2 is an integer, the per-tensor quantizer (s̃, z̃) of
//      x' gives exactly the codes the per-channel quantizer gives x, and the readers' W' = W·diag(r1) absorb the
//      per-channel steps — the weight quantizers are then calibrated on W'.
//   3. Post-softmax values: the log√2 quantizer (QuantKind::LogSqrt2), its scale searched.
//   4. Every other quantizer: RepQ-ViT's clipping search — the range of the 99.9th / 99.99th / 99.999th percentile
//      (and the 0.1st / ... at the bottom), whichever quantizes the calibration tensor with the least squared error
//      (per channel for per-channel weights).
// Convention "paper": weights asymmetric per channel, activations asymmetric per tensor, the image input at 8 bits
// (as the official code); "common": the placement as given. Calibration sees each layer's FP input (the official
// code calibrates in a forward pass of the partly quantized model). A LayerNorm whose output is read by anything
// but Linear layers with a bias (Swin's window partition, for instance) is not reparameterised: its readers' inputs
// get the per-tensor search.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "vitq/methods/method.h"
#include "vitq/util/error.h"
#include "vitq/util/progress.h"

namespace vitq {

namespace {

const std::vector<double> kPercentiles = {0.999, 0.9999, 0.99999};

// Linear-interpolated quantile q of each row of `sorted` (rows sorted ascending), as torch.quantile: [rows].
at::Tensor row_quantile(const at::Tensor& sorted, double q) {
  const int64_t n = sorted.size(1);
  const double pos = q * static_cast<double>(n - 1);
  const int64_t lo = static_cast<int64_t>(std::floor(pos)), hi = std::min(lo + 1, n - 1);
  const double frac = pos - static_cast<double>(lo);
  return sorted.select(1, lo) * (1.0 - frac) + sorted.select(1, hi) * frac;
}

// x as rows of what one quantizer parameter covers: [channels, elements] (per channel on `axis`) or [1, all].
at::Tensor as_rows(const at::Tensor& x, const QuantSpec& s) {
  if (s.granularity == Granularity::PerTensor) return x.reshape({1, -1});
  const int64_t axis = s.axis < 0 ? s.axis + x.dim() : s.axis;
  return x.movedim(axis, 0).reshape({x.size(axis), -1});
}

// RepQ-ViT's clipping search for a uniform quantizer (per tensor or per channel): candidates clip at the percentile
// pairs (p, 1 − p); per row the one with the least mean squared quantization error wins.
QuantParams search_clipping(const at::Tensor& x_in, const QuantSpec& s) {
  const auto x = x_in.detach().to(at::kFloat);
  const auto stat_shape = reduce_amax(x, s).sizes().vec();
  const auto sorted = std::get<0>(as_rows(x, s).sort(1));
  QuantParams best;
  at::Tensor best_err;
  for (double pct : kPercentiles) {
    auto lo = row_quantile(sorted, 1.0 - pct).reshape(stat_shape), hi = row_quantile(sorted, pct).reshape(stat_shape);
    QuantParams p = params_from_range(lo, hi, s);
    auto err = as_rows((fake_quant(x, s, p) - x).pow(2), s).mean(1).reshape(stat_shape);
    if (!best_err.defined()) {
      best = p;
      best_err = err;
      continue;
    }
    auto better = err < best_err;
    best.scale = at::where(better, p.scale, best.scale);
    best.zero_point = at::where(better, p.zero_point, best.zero_point);
    best_err = at::where(better, err, best_err);
  }
  return best;
}

// The log√2 quantizer's scale: the maximum or one of the top percentiles, whichever quantizes x with the least
// squared error.
QuantParams search_log_scale(const at::Tensor& x_in, const QuantSpec& s) {
  const auto x = x_in.detach().to(at::kFloat);
  const auto sorted = std::get<0>(x.reshape({1, -1}).sort(1));
  std::vector<double> candidates = {sorted[0][-1].item<double>()};
  for (double pct : kPercentiles) candidates.push_back(row_quantile(sorted, pct).item<double>());
  QuantParams best;
  double best_err = INFINITY;
  for (double c : candidates) {
    if (!(c > 0) || !std::isfinite(c)) continue;
    QuantParams p{at::full({1}, static_cast<float>(c)), at::zeros({1}), {}};
    const double err = (fake_quant(x, s, p) - x).pow(2).mean().item<double>();
    if (err < best_err) {
      best_err = err;
      best = p;
    }
  }
  if (!best.scale.defined()) best = log2_params();  // all zero: any scale quantizes it exactly
  return best;
}

// Per-channel (last axis) steps and integer zero points of a LayerNorm output, by the clipping search, without
// requiring the range to hold 0 (the zero points are folded away by the reparameterisation).
struct ChannelParams {
  at::Tensor step, zero_point;  // [C], double
};
ChannelParams search_channels(const at::Tensor& x_in, int bits) {
  const auto x = x_in.detach().to(at::kDouble);
  const int64_t c = x.size(-1);
  const auto rows = x.reshape({-1, c}).t().contiguous();  // [C, N]
  const auto sorted = std::get<0>(rows.sort(1));
  const double top = static_cast<double>((int64_t{1} << bits) - 1);
  ChannelParams best;
  at::Tensor best_err;
  for (double pct : kPercentiles) {
    auto lo = row_quantile(sorted, 1.0 - pct), hi = row_quantile(sorted, pct);
    auto step = at::clamp_min((hi - lo) / top, 1e-8);
    auto zp = at::round(-lo / step);
    auto q = at::clamp(at::round(rows / step.unsqueeze(1)) + zp.unsqueeze(1), 0.0, top);
    auto err = ((q - zp.unsqueeze(1)) * step.unsqueeze(1) - rows).pow(2).mean(1);
    if (!best_err.defined()) {
      best = {step, zp};
      best_err = err;
      continue;
    }
    auto better = err < best_err;
    best.step = at::where(better, step, best.step);
    best.zero_point = at::where(better, zp, best.zero_point);
    best_err = at::where(better, err, best_err);
  }
  return best;
}

// The Linear layers reading LayerNorm `ln`'s output, when every reader is one with a constant weight and bias (else
// empty: that LayerNorm is not reparameterised).
std::vector<const Node*> reparam_readers(const Graph& g, const Node& ln, const std::vector<std::vector<int>>& readers) {
  std::vector<const Node*> out;
  if (ln.inputs.size() < 3 || !g.is_const(ln.inputs[1]) || !g.is_const(ln.inputs[2]) || ln.outputs[0] == g.output) return {};
  if (g.const_tensor(ln.inputs[1]).dim() != 1) return {};
  for (int k : readers[static_cast<size_t>(ln.outputs[0])]) {
    const Node& n = g.nodes[static_cast<size_t>(k)];
    if (n.op != OpKind::Linear || n.inputs[0] != ln.outputs[0] || n.inputs.size() < 3 || n.inputs[2] < 0 ||
        !g.is_const(n.inputs[1]) || !g.is_const(n.inputs[2]))
      return {};
    out.push_back(&n);
  }
  return out;
}

QuantPlan run_repqvit(const Graph& g, const at::Tensor& calib, const MethodOptions& o) {
  QuantPlan plan;
  plan.points = default_placement(g, o.placement);
  const bool paper = o.convention == "paper";
  if (paper)
    for (auto& p : plan.points)
      if (p.weight) {
        p.spec.symmetric = false;
        p.spec.granularity = Granularity::PerChannel;
        p.spec.axis = 0;
      }
  const auto readers = g.consumers();
  // post-softmax inputs: log√2
  for (auto& p : plan.points) {
    if (p.weight || !o.log_softmax) continue;
    const Node* n = g.find_node(p.node);
    if (g.values[static_cast<size_t>(n->inputs[static_cast<size_t>(p.slot)])].roles & kPostSoftmax) {
      p.spec.kind = QuantKind::LogSqrt2;
      p.spec.symmetric = false;
      p.spec.is_signed = false;
      p.spec.validate();
    }
  }
  LayerTensors storage;
  const LayerTensors& fp = fp_layer_tensors(g, calib, o, storage);
  auto fp_input = [&](const std::string& node, int slot) -> const at::Tensor& {
    auto it = fp.inputs.find(node);
    if (it == fp.inputs.end() || static_cast<int>(it->second.size()) <= slot || !it->second[static_cast<size_t>(slot)].defined())
      fail("repqvit: no calibration input captured for {} slot {}", node, slot);
    return it->second[static_cast<size_t>(slot)];
  };

  // 1-2. LayerNorms whose readers are all Linear layers with a quantized input: per-channel, reparameterised
  std::set<std::string> reparam_done;  // reader layers whose input quantizer comes from a reparameterisation
  int reparameterised = 0;
  for (const auto& ln : g.nodes) {
    if (ln.op != OpKind::LayerNorm || !o.reparam) continue;
    auto layers = reparam_readers(g, ln, readers);
    if (layers.empty()) continue;
    const QuantPoint* first = nullptr;
    bool all_quantized = true;
    for (const Node* n : layers) {
      const QuantPoint* p = plan.find(n->name, 0);
      all_quantized &= p && p->spec.kind == QuantKind::Uniform && !p->spec.symmetric && !p->spec.is_signed &&
                       p->spec.granularity == Granularity::PerTensor && (!first || p->spec.bits == first->spec.bits);
      if (!first) first = p;
    }
    if (!all_quantized || !first) continue;
    const int bits = first->spec.bits;
    ChannelParams cp = search_channels(fp_input(layers[0]->name, 0), bits);
    const double top = static_cast<double>((int64_t{1} << bits) - 1);
    const double s_mean = cp.step.mean().item<double>();
    const double z_mean = std::clamp(std::nearbyint(cp.zero_point.mean().item<double>()), 0.0, top);
    Reparam r;
    r.layernorm = ln.name;
    r.scale = (cp.step / s_mean).to(at::kFloat);
    r.shift = (cp.step * (cp.zero_point - z_mean)).to(at::kFloat);
    plan.reparams.push_back(std::move(r));
    for (const Node* n : layers) {
      QuantPoint* p = plan.find(n->name, 0);
      p->params = {at::full({1}, static_cast<float>(s_mean)), at::full({1}, static_cast<float>(z_mean)), {}};
      reparam_done.insert(n->name);
    }
    ++reparameterised;
  }
  const auto changed = reparam_constants(g, plan);

  // 3-4. the other quantizers; weights of reparameterised layers are W'
  Progress bar("repqvit clipping search", plan.points.size(), o.progress);
  size_t done = 0;
  for (auto& p : plan.points) {
    bar.update(done++, p.node);
    const Node* n = g.find_node(p.node);
    if (p.weight) {
      const int v = n->inputs[static_cast<size_t>(p.slot)];
      p.params = search_clipping(changed.count(v) ? changed.at(v) : g.const_tensor(v), p.spec);
    } else if (p.slot == 0 && reparam_done.count(p.node)) {
      continue;
    } else if (p.spec.kind == QuantKind::LogSqrt2) {
      p.params = search_log_scale(fp_input(p.node, p.slot), p.spec);
    } else {
      p.params = search_clipping(fp_input(p.node, p.slot), p.spec);
    }
  }
  bar.finish(fmt::format("{} LayerNorms reparameterised", reparameterised));
  plan.settings["reparameterised_layernorms"] = reparameterised;
  plan.settings["clipping_percentiles"] = kPercentiles;
  plan.settings["softmax_quantizer"] = o.log_softmax ? "log_sqrt2" : "uniform";
  plan.settings["weights"] = paper ? "asymmetric per-channel (paper)" : "as placed (common)";
  return plan;
}

}  // namespace

MethodInfo method_repqvit() {
  return {"repqvit", "Li et al., ICCV 2023",
          "post-LayerNorm activations per channel, reparameterised into LayerNorm and the next weights; log√2 softmax; "
          "percentile clipping search",
          run_repqvit};
}

}  // namespace vitq
