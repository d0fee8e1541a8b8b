// RepQ-ViT (Li et al., ICCV 2023): quantizer scale reparameterisation, no gradients.
//   1. Post-LayerNorm activations (qkv / fc1 inputs), whose channels have very different ranges, are calibrated
//      per channel: step s_c and an integer zero point z_c per channel, no constraint that the range hold 0.
//   2. They are reparameterised into one per-tensor quantizer: s̃ = mean(s), z̃ = round(mean(z)); the LayerNorm's
//      output becomes x'_c = (x_c + s_c·r2_c) / r1_c with r1 = s / s̃, r2 = z − z̃ (QuantPlan::Reparam: γ, β and the
//      readers' W, b change; the FP function does not). Since r2 is an integer, the per-tensor quantizer (s̃, z̃) of
//      x' gives exactly the codes the per-channel quantizer gives x, and the readers' W' = W·diag(r1) absorb the
//      per-channel steps — the weight quantizers are then calibrated on W'.
//   3. Post-softmax values: the log√2 quantizer (QuantKind::LogSqrt2), its scale searched.
//   4. Optionally (repqvit+erq, ERQ: Zhong et al., ICML 2024, its activation-error part): before a Linear's weight is
//      quantized, a closed-form ridge regression updates it so that the layer's output from its quantized input x̂
//      matches its output from the unquantized one x (both in the model being quantized): W* = (W x x̂ᵀ + λW)(x̂ x̂ᵀ
//      + λI)⁻¹ (QuantPlan::weights).
//   5. Every other quantizer: RepQ-ViT's clipping search — the range of the 99.9th / 99.99th / 99.999th percentile
//      (and the 0.1st / ... at the bottom), whichever quantizes the calibration tensor with the least squared error
//      (per channel for per-channel weights).
// Convention "paper": weights asymmetric per channel, activations asymmetric per tensor, the image input at 8 bits
// (as the official code); "common": the placement as given. Calibration is one pass of the calibration batch through
// the model being quantized, as in the official code: each quantizer sees what the already quantized layers before it
// produce. A LayerNorm whose output is read by anything
// but Linear layers with a bias (Swin's window partition, for instance) is not reparameterised: its readers' inputs
// get the per-tensor search.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <set>

#include "vitq/methods/method.h"
#include "vitq/methods/search.h"
#include "vitq/util/error.h"
#include "vitq/util/progress.h"

namespace vitq {

namespace {

const std::vector<double> kPercentiles = {0.999, 0.9999, 0.99999};

// The percentiles' quantiles of each row, as torch.quantile gives them from a sort (search.h).
using search::RowTails;

// x as rows of what one quantizer parameter covers: [channels, elements] (per channel on `axis`) or [1, all].
at::Tensor as_rows(const at::Tensor& x, const QuantSpec& s) {
  if (s.granularity == Granularity::PerTensor) return x.reshape({1, -1});
  const int64_t axis = s.axis < 0 ? s.axis + x.dim() : s.axis;
  return x.movedim(axis, 0).reshape({x.size(axis), -1});
}

// Of the candidate ranges (lo, hi) that `range(k)` gives for k < n (statistics shaped as reduce_amax's), per row
// (channel, head or the whole tensor) the one whose parameters quantize x with the least mean squared error.
QuantParams least_error_range(const at::Tensor& x, const QuantSpec& s, int n,
                              const std::function<std::pair<at::Tensor, at::Tensor>(int)>& range) {
  const auto stat_shape = reduce_amax(x, s).sizes().vec();
  QuantParams best;
  at::Tensor best_err;
  for (int k = 0; k < n; ++k) {
    const auto [lo, hi] = range(k);
    QuantParams p = params_from_range(lo.reshape(stat_shape), hi.reshape(stat_shape), s);
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

// RepQ-ViT's clipping search for a uniform quantizer (per tensor or per channel): candidates clip at the percentile
// pairs (p, 1 − p); per row the one with the least mean squared quantization error wins.
QuantParams search_clipping(const at::Tensor& x_in, const QuantSpec& s) {
  const auto x = x_in.detach().to(at::kFloat);
  const RowTails tails(as_rows(x, s), kPercentiles.front());
  return least_error_range(x, s, static_cast<int>(kPercentiles.size()), [&](int k) {
    const double pct = kPercentiles[static_cast<size_t>(k)];
    return std::make_pair(tails.quantile(1.0 - pct), tails.quantile(pct));
  });
}

// Per row, the range [α·min, α·max] for α = alpha(k), k = 0..80 (alpha(0) = 1: min/max), with the least mean
// squared quantization error (the +wmse and +amse searches; only their grids differ).
QuantParams least_error_ratio(const at::Tensor& x_in, const QuantSpec& s, const std::function<double(int)>& alpha) {
  const auto x = x_in.detach().to(at::kFloat);
  const at::Tensor lo = reduce_amin(x, s), hi = reduce_amax(x, s);
  return least_error_range(x, s, 81, [&](int k) { return std::make_pair(lo * alpha(k), hi * alpha(k)); });
}

}  // namespace

// The weight clipping of the variant +wmse: α on a grid from 1 down to 0.2 in steps of 0.01. At 3 and 4 bits the
// squared-error optimum clips well inside the extremes, which the percentile candidates (≈ min/max for a few
// hundred weights a row) cannot.
QuantParams search_weight_mse(const at::Tensor& w, const QuantSpec& s) {
  return least_error_ratio(w, s, [](int k) { return 1.0 - 0.01 * k; });
}

// The activation clipping of the variant +amse: α = 0.96^k (1 down to 0.038) over the whole input (per head for
// per-head inputs); a geometric grid, as activations' tails are long and at 3 bits the optimum can clip most of
// the range away.
QuantParams search_activation_mse(const at::Tensor& x, const QuantSpec& s) {
  return least_error_ratio(x, s, [](int k) { return std::pow(0.96, k); });
}

namespace {

// The log√2 quantizer's scale: the maximum or one of the top percentiles, whichever quantizes x with the least
// squared error.
QuantParams search_log_scale(const at::Tensor& x_in, const QuantSpec& s) {
  const auto x = x_in.detach().to(at::kFloat);
  const RowTails tails(x.reshape({1, -1}), kPercentiles.front());
  std::vector<double> candidates = {tails.max().item<double>()};
  for (double pct : kPercentiles) candidates.push_back(tails.quantile(pct).item<double>());
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
  const RowTails tails(rows, kPercentiles.front());
  const double top = static_cast<double>((int64_t{1} << bits) - 1);
  ChannelParams best;
  at::Tensor best_err;
  for (double pct : kPercentiles) {
    auto lo = tails.quantile(1.0 - pct), hi = tails.quantile(pct);
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
  // A constant channel (a LayerNorm γ of 0 leaves β alone) has no range: give it the median step, with the zero
  // point that puts its value mid-grid (within half a step), rather than a step of ~0 and a zero point of ~1e8,
  // which would pull the mean zero point (the per-tensor one) off the grid and, through it, offset every other
  // channel of the reparameterised input.
  const auto lo = tails.min();
  const auto range = tails.max() - lo;
  const auto flat = range <= 1e-6 * std::max(1e-30, range.max().item<double>());
  if (flat.any().item<bool>() && !flat.all().item<bool>()) {
    const double median_step = best.step.masked_select(~flat).median().item<double>();
    best.step = at::where(flat, at::full_like(best.step, median_step), best.step);
    best.zero_point = at::where(flat, at::round(-lo / median_step + top / 2), best.zero_point);
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

  if (o.matmul_per_head)  // after the log√2 choice: the post-softmax input stays one log quantizer
    for (auto& p : plan.points)
      if (!p.weight && g.find_node(p.node)->op == OpKind::MatMul && p.spec.kind == QuantKind::Uniform) {
        p.spec.granularity = Granularity::PerHead;
        p.spec.axis = 1;  // heads of [B, H, N, D]
      }

  // LayerNorms whose readers are all Linear layers with an asymmetric per-tensor input quantizer of one width
  struct Group {
    std::vector<const Node*> layers;
    bool done = false;
    at::Tensor scale, shift;                   // float [C], on the activations' device
    std::map<std::string, at::Tensor> w, b;    // reader -> W', b'
  };
  std::vector<Group> groups;
  std::map<std::string, size_t> group_of;  // reader layer -> its group
  for (const auto& ln : g.nodes) {
    if (ln.op != OpKind::LayerNorm || !o.reparam) continue;
    Group grp;
    grp.layers = reparam_readers(g, ln, readers);
    if (grp.layers.empty()) continue;
    const QuantPoint* first = plan.find(grp.layers[0]->name, 0);
    bool fits = true;
    for (const Node* n : grp.layers) {
      const QuantPoint* p = plan.find(n->name, 0);
      fits &= p && first && p->spec.kind == QuantKind::Uniform && !p->spec.symmetric && !p->spec.is_signed &&
              p->spec.granularity == Granularity::PerTensor && p->spec.bits == first->spec.bits;
    }
    if (!fits) continue;
    for (const Node* n : grp.layers) group_of[n->name] = groups.size();
    groups.push_back(std::move(grp));
  }

  // ERQ-style ridge update (erq_lambda > 0): each Linear's weight absorbs the error of its quantized input
  const bool erq = o.erq_lambda > 0;
  std::map<std::string, std::pair<at::Tensor, at::Tensor>> layer_input;  // Linear -> (its input, quantized)
  auto ridge = [&](const Node& n, const at::Tensor& w_in) -> at::Tensor {
    const auto w = w_in.to(at::kDouble);
    const int64_t in = w.size(1);
    const auto& [x_in, xq_in] = layer_input.at(n.name);
    const auto x = x_in.to(at::kDouble).reshape({-1, in}), xq = xq_in.to(at::kDouble).reshape({-1, in});
    auto a = at::matmul(xq.t(), xq);
    const double lambda = o.erq_lambda * a.diagonal().mean().item<double>();
    a = a + lambda * at::eye(in, a.options());
    const auto b = at::matmul(w, at::matmul(x.t(), xq)) + lambda * w;
    auto updated = at::linalg_solve(a, b.t()).t().contiguous();  // a is symmetric
    layer_input.erase(n.name);
    if (!at::isfinite(updated).all().item<bool>()) return w_in;
    plan.weights[n.name] = updated.to(at::kFloat);
    return plan.weights[n.name];
  };
  Progress bar("repqvit calibration", plan.points.size(), o.progress);
  size_t calibrated = 0;
  auto calibrate = [&](QuantPoint& p, const at::Tensor& t) {
    if (p.params.scale.defined()) return;
    if (p.spec.kind == QuantKind::LogSqrt2) p.params = search_log_scale(t, p.spec);
    else if (p.weight && o.weight_mse) p.params = search_weight_mse(t, p.spec);
    else if (!p.weight && o.activation_mse && p.spec.kind == QuantKind::Uniform) p.params = search_activation_mse(t, p.spec);
    else p.params = search_clipping(t, p.spec);
    bar.update(++calibrated, p.node);
  };
  // One pass of the calibration batch through the model being quantized, as the official code calibrates: each
  // quantizer takes its parameters from the first input it sees — the output of the layers before it, already
  // quantized — and quantizes it. At a reparameterised LayerNorm's first reader the per-channel parameters are
  // searched, turned into the reparameterisation, and the readers run as the reparameterised model does (x', W', b').
  ExecHooks h;
  h.transform_input = [&](const Node& n, size_t slot, const at::Tensor& t) -> at::Tensor {
    QuantPoint* p = plan.find(n.name, static_cast<int>(slot));
    auto git = group_of.find(n.name);
    if (git != group_of.end() && slot <= 2) {
      Group& grp = groups[git->second];
      if (slot == 0 && !grp.done) {
        const int bits = p->spec.bits;
        ChannelParams cp = search_channels(t, bits);
        const double top = static_cast<double>((int64_t{1} << bits) - 1);
        const double s_mean = cp.step.mean().item<double>();
        const double z_mean = std::clamp(std::nearbyint(cp.zero_point.mean().item<double>()), 0.0, top);
        const auto scale = cp.step / s_mean, shift = cp.step * (cp.zero_point - z_mean);
        const Node* ln = g.nodes[static_cast<size_t>(g.values[static_cast<size_t>(n.inputs[0])].producer)].op == OpKind::LayerNorm
                             ? &g.nodes[static_cast<size_t>(g.values[static_cast<size_t>(n.inputs[0])].producer)]
                             : nullptr;
        if (!ln) fail("repqvit: the input of {} is not a LayerNorm output", n.name);
        plan.reparams.push_back({ln->name, scale.to(at::kFloat), shift.to(at::kFloat)});
        for (const Node* r : grp.layers) {
          const auto wd = g.const_tensor(r->inputs[1]).to(at::kDouble);
          grp.w[r->name] = (wd * scale.unsqueeze(0)).to(at::kFloat);
          grp.b[r->name] = (g.const_tensor(r->inputs[2]).to(at::kDouble) - at::mv(wd, shift)).to(at::kFloat);
          QuantPoint* in = plan.find(r->name, 0);
          in->params = {at::full({1}, static_cast<float>(s_mean)), at::full({1}, static_cast<float>(z_mean)), {}};
          bar.update(++calibrated, r->name);
        }
        grp.scale = scale.to(t.device(), at::kFloat);
        grp.shift = shift.to(t.device(), at::kFloat);
        grp.done = true;
      }
      if (slot == 0) {
        auto x = (t + grp.shift) / grp.scale;
        auto xq = fake_quant(x, p->spec, p->params);
        if (erq) layer_input[n.name] = {x, xq};
        return xq;
      }
      if (slot == 2) return grp.b.at(n.name).to(t.device());
      at::Tensor w = grp.w.at(n.name);
      if (!p) return w.to(t.device());
      if (erq && !p->params.scale.defined()) w = ridge(n, w);
      calibrate(*p, w);
      return quantize_point(*p, w).to(t.device());
    }
    if (!p) return t;
    if (erq && n.op == OpKind::Linear && slot == 1 && !p->params.scale.defined() && layer_input.count(n.name)) {
      const at::Tensor w = ridge(n, t);
      calibrate(*p, w);
      return quantize_point(*p, w);
    }
    calibrate(*p, t);
    auto q = quantize_point(*p, t);
    if (erq && n.op == OpKind::Linear && slot == 0) layer_input[n.name] = {t, q};
    return q;
  };
  {
    at::InferenceMode guard;
    Executor(g).run(calib, &h);
  }
  for (const auto& p : plan.points)
    if (!p.params.scale.defined()) fail("repqvit: {} input {} was not reached by the calibration pass", p.node, p.slot);
  bar.finish(fmt::format("{} LayerNorms reparameterised", plan.reparams.size()));
  plan.settings["reparameterised_layernorms"] = plan.reparams.size();
  plan.settings["clipping_percentiles"] = kPercentiles;
  plan.settings["softmax_quantizer"] = o.log_softmax ? "log_sqrt2" : "uniform";
  plan.settings["weights"] = paper ? "asymmetric per-channel (paper)" : "as placed (common)";
  plan.settings["calibration"] = "one pass of the model being quantized (sequential)";
  plan.settings["matmul_inputs"] = o.matmul_per_head ? "per head" : "per tensor";
  plan.settings["weight_clipping"] = o.weight_mse ? "least squared error, 81 ratios" : "percentile search";
  plan.settings["activation_clipping"] = o.activation_mse ? "least squared error, 81 ratios" : "percentile search";
  if (erq) {
    plan.settings["erq_lambda"] = o.erq_lambda;
    plan.settings["erq_updated_weights"] = plan.weights.size();
  }
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
