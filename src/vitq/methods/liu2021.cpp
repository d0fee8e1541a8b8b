// Liu, Wang, Han, Zhang, Ma, Gao. "Post-Training Quantization for Vision Transformer". NeurIPS 2021.
//
// For every quantized layer l, with FP input X and weight W (for an attention matmul: its two inputs) taken
// from the FP model on the calibration batch, search the quantization steps
//     max_{Δ_W, Δ_X}  Γ(O, Ô) − γ · L_rank(O, Ô)        O = f(X, W),  Ô = f(Q(X; Δ_X), Q(W; Δ_W))
// where Γ is the Pearson correlation of the flattened outputs (cosine as an ablation) and L_rank is only
// used on the q·kᵀ matmul: a pairwise hinge on attention scores whose order flips after quantization,
//     L_rank = mean over sampled pairs (i, j) of  relu(−(Ô_i − Ô_j) · sign(O_i − O_j)) / std(O).
// The search alternates: Δ_W (or the second matmul input) over the grid [0.5, 1.2] · Δ0, then Δ_X, one round,
// Δ0 from min/max. Then bias correction: b ← b − E[Ŵ x̂ − W x], per output channel.
// Mixed precision: a layer's sensitivity is the nuclear norm of its output feature (for the attention
// matmuls: of the attention scores / output); bits in {4, 6, 8} are assigned greedily, most sensitivity-
// weighted error removed per bit first, under a budget on the average weight bits and the average activation
// bits (weighted by element count), so the model is no larger than a uniform model at that many bits.
// Variant +mpkl (vitq's): a layer's error at b bits is instead measured where it matters, as the KL divergence of
// the model's predictions from FP32 with that layer alone quantized at b bits (min/max steps), on the first
// search_images calibration images; the greedy allocation is the same. The nuclear-norm proxy weighs a layer's
// own output error by the size of that output, which says little about what the error does to the prediction.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>

#include "vitq/graph/executor.h"
#include "vitq/methods/method.h"
#include "vitq/methods/search.h"
#include "vitq/quant/calibration.h"
#include "vitq/util/error.h"
#include "vitq/util/progress.h"

namespace vitq {

namespace {

using search::Range;
using search::range_of;
using search::scaled;

double similarity(const at::Tensor& o, const at::Tensor& q, bool pearson) {
  auto a = o.flatten(), b = q.flatten();
  if (pearson) {
    a = a - a.mean();
    b = b - b.mean();
  }
  const double den = a.norm().item<double>() * b.norm().item<double>();
  return den > 0 ? (a * b).sum().item<double>() / den : 0.0;
}

struct RankPairs {
  at::Tensor i, j;  // key indices along the last dimension
};

double ranking_loss(const at::Tensor& o, const at::Tensor& q, const RankPairs& pairs) {
  auto oi = o.index_select(-1, pairs.i), oj = o.index_select(-1, pairs.j);
  auto qi = q.index_select(-1, pairs.i), qj = q.index_select(-1, pairs.j);
  const double sd = o.std().item<double>();
  if (sd == 0) return 0.0;
  return at::relu(-(qi - qj) * at::sign(oi - oj)).mean().item<double>() / sd;
}

const Node& node_named(const Graph& g, const std::string& name) {
  if (const Node* n = g.find_node(name)) return *n;
  fail("no node {}", name);
}

// Quantized output of node n with the given parameters (undefined params = slot left FP).
at::Tensor quantized_output(const Node& n, std::vector<at::Tensor> args, const QuantPoint* p0, const QuantParams& q0,
                            const QuantPoint* p1, const QuantParams& q1, int64_t batch) {
  if (p0) args[0] = fake_quant(args[0], p0->spec, q0);
  if (p1) args[1] = fake_quant(args[1], p1->spec, q1);
  return run_node(n, args, batch)[0];
}

// Nuclear norm of a layer's output (the rows of up to 4 images), averaged over images and heads.
double nuclear_norm(const Node& n, const at::Tensor& out) {
  const auto& o = out;
  at::Tensor mats;
  if (n.op == OpKind::Conv2d) mats = o.flatten(2);                        // [b, C, HW]
  else if (o.dim() == 4) mats = o.flatten(0, 1);                           // [b*H, N, M]
  else if (o.dim() == 3) mats = o;                                         // [b, N, C]
  else mats = o.unsqueeze(0);                                              // [1, b, C]
  return at::linalg_svdvals(mats.to(at::kDouble)).sum(-1).mean().item<double>();
}

// Greedy bit allocation under the average-bits budget; returns bits per layer.
std::map<std::string, int> allocate_bits(const Graph& g, const LayerTensors& t, const MethodOptions& o,
                                         const std::vector<std::string>& layers, const at::Tensor& calib) {
  const int64_t images = calib.size(0);
  const std::vector<int> choices = {4, 6, 8};
  if (o.avg_bits < choices.front() || o.avg_bits > choices.back())
    fail("--avg-bits must be between {} and {}, got {}", choices.front(), choices.back(), o.avg_bits);
  if (o.mp_sensitivity != "nuclear" && o.mp_sensitivity != "kl")
    fail("mixed-precision sensitivity must be nuclear or kl, got '{}'", o.mp_sensitivity);
  const bool kl = o.mp_sensitivity == "kl";
  // kl: the FP32 predictions on the scoring images, and a run with one layer's inputs fake-quantized
  std::unique_ptr<Executor> ex;
  at::Tensor kl_images, ref_logp;
  if (kl) {
    ex = std::make_unique<Executor>(g);
    kl_images = calib.narrow(0, 0, std::min<int64_t>(images, o.search_images));
    ref_logp = at::log_softmax(ex->run(kl_images).to(at::kDouble), -1);
  }
  auto kl_with = [&](const std::string& name, const QuantPoint* p0, const QuantParams& q0, const QuantPoint* p1,
                     const QuantParams& q1) {
    ExecHooks hooks;
    hooks.transform_input = [&](const Node& node, size_t slot, const at::Tensor& x) {
      if (node.name != name) return x;
      if (slot == 0 && p0) return fake_quant(x, p0->spec, q0);
      if (slot == 1 && p1) return fake_quant(x, p1->spec, q1);
      return x;
    };
    auto logp = at::log_softmax(ex->run(kl_images, &hooks).to(at::kDouble), -1);
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1).mean().item<double>();
  };
  Progress bar(kl ? "liu2021 bit allocation (KL per layer)" : "liu2021 bit allocation", layers.size(), o.progress && kl);
  struct Layer {
    std::string name;
    double sens = 0, wsize = 0, asize = 0;
    std::vector<double> err;  // per choice: 1 - similarity with min/max steps at those bits
    size_t pick = 0;
  };
  std::vector<Layer> ls;
  double wtotal = 0, atotal = 0;
  for (const auto& name : layers) {
    const Node& n = node_named(g, name);
    const auto& args = t.inputs.at(name);
    const auto& out = t.outputs.at(name);
    const int64_t batch = out.size(0);
    Layer l;
    l.name = name;
    l.sens = kl ? 1.0 : nuclear_norm(n, search::first_rows(out, std::min<int64_t>(4, images), images));
    const bool matmul = n.op == OpKind::MatMul;
    l.wsize = matmul ? 0.0 : static_cast<double>(args[1].numel());
    // activation elements per image (Swin's window rows and MobileViT's patch rows are several rows an image)
    l.asize = static_cast<double>(args[0].numel() + (matmul ? args[1].numel() : 0)) / static_cast<double>(images);
    for (int bits : choices) {
      PlacementOptions po = o.placement;
      po.wbits = po.abits = bits;
      po.layer_bits.clear();
      po.keep_fp.clear();
      auto pts = default_placement(g, po);
      QuantPoint *p0 = nullptr, *p1 = nullptr;
      for (auto& p : pts)
        if (p.node == name) (p.slot == 0 ? p0 : p1) = &p;
      QuantParams q0 = scaled(range_of(args[0], p0->spec), p0->spec, 1.0);
      QuantParams q1 = scaled(range_of(args[1], p1->spec), p1->spec, 1.0);
      l.err.push_back(kl ? kl_with(name, p0, q0, p1, q1)
                         : 1.0 - similarity(out, quantized_output(n, args, p0, q0, p1, q1, batch), true));
    }
    bar.update(ls.size() + 1, name);
    wtotal += l.wsize;
    atotal += l.asize;
    ls.push_back(std::move(l));
  }
  double wused = 0, aused = 0;
  for (const auto& l : ls) {
    wused += l.wsize * choices[0];
    aused += l.asize * choices[0];
  }
  const double wbudget = o.avg_bits * wtotal + 1e-6, abudget = o.avg_bits * atotal + 1e-6;
  for (;;) {
    double best_gain = 0;
    Layer* best = nullptr;
    for (auto& l : ls) {
      if (l.pick + 1 >= choices.size()) continue;
      const double db = choices[l.pick + 1] - choices[l.pick];
      if (wused + l.wsize * db > wbudget || aused + l.asize * db > abudget) continue;
      const double gain = l.sens * (l.err[l.pick] - l.err[l.pick + 1]);
      const double cost = db * (l.wsize / std::max(wtotal, 1.0) + l.asize / std::max(atotal, 1.0));
      if (gain / cost > best_gain || !best) {
        best_gain = gain / cost;
        best = &l;
      }
    }
    if (!best) break;
    const double db = choices[best->pick + 1] - choices[best->pick];
    wused += best->wsize * db;
    aused += best->asize * db;
    ++best->pick;
  }
  std::map<std::string, int> bits;
  for (const auto& l : ls) bits[l.name] = choices[l.pick];
  bar.finish();
  return bits;
}

QuantPlan run_liu2021(const Graph& g, const at::Tensor& calib, const MethodOptions& o) {
  at::InferenceMode guard;
  if (o.similarity != "pearson" && o.similarity != "cosine")
    fail("--similarity must be pearson or cosine, got '{}'", o.similarity);
  if (o.search_steps < 2) fail("search steps must be at least 2");
  const bool pearson = o.similarity == "pearson";
  LayerTensors storage;
  const LayerTensors& t = fp_layer_tensors(g, calib, o, storage);
  QuantPlan plan;
  PlacementOptions placement = o.placement;
  std::vector<std::string> layers;
  for (const auto& n : g.nodes)
    if (is_quantizable(g, n) && !placement.keep_fp.count(n.name)) layers.push_back(n.name);
  if (o.mixed_precision) {
    placement.layer_bits = allocate_bits(g, t, o, layers, calib);
    nlohmann::json bits = nlohmann::json::object();
    for (const auto& [name, b] : placement.layer_bits) bits[name] = b;
    plan.settings["mixed_precision"] = {{"avg_bits", o.avg_bits}, {"sensitivity", o.mp_sensitivity}, {"bits", bits}};
  }
  plan.points = default_placement(g, placement);
  plan.settings["similarity"] = o.similarity;
  plan.settings["ranking"] = o.ranking;
  plan.settings["bias_correction"] = o.bias_correction;
  plan.settings["search"] = {{"alpha", {0.5, 1.2}}, {"steps", o.search_steps}, {"rounds", 1}, {"images", o.search_images}};

  std::mt19937_64 rng(o.seed);
  int64_t kept_minmax = 0;
  // The similarity is measured on the first `sub` images (activations are [B, ...]); with the held-out check the
  // next `held` images decide between the searched steps and min/max.
  const int64_t sub = std::min<int64_t>(calib.size(0), o.search_images);
  const int64_t held = o.holdout ? std::min<int64_t>(calib.size(0) - sub, o.search_images) : 0;
  Progress bar("liu2021 search", layers.size(), o.progress);
  size_t done = 0;
  for (const auto& name : layers) {
    const Node& n = node_named(g, name);
    const auto& args = t.inputs.at(name);
    const auto& out = t.outputs.at(name);
    const int64_t batch = out.size(0);
    QuantPoint* p0 = plan.find(name, 0);
    QuantPoint* p1 = plan.find(name, 1);
    Range r0 = range_of(args[0], p0->spec), r1 = range_of(args[1], p1->spec);
    double a0 = 1.0, a1 = 1.0;
    const bool rank = o.ranking && (n.roles & kAttnQK);
    RankPairs pairs;
    if (rank) {
      const int64_t keys = out.size(-1);
      std::vector<int64_t> i, j;
      for (int k = 0; k < 64; ++k) {
        i.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(keys)));
        j.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(keys)));
      }
      pairs = {at::tensor(i), at::tensor(j)};
    }
    const std::vector<at::Tensor> sargs = search::first_images(g, n, args, sub, calib.size(0));
    const at::Tensor sout = search::first_rows(out, sub, calib.size(0));
    auto score_of = [&](const std::vector<at::Tensor>& qargs) {
      auto q = run_node(n, qargs, sub)[0];
      double score = similarity(sout, q, pearson);
      if (rank) score -= o.ranking_weight * ranking_loss(sout, q, pairs);
      return score;
    };
    // one alternating round: the weight (second input) first, then the activation; the other slot is
    // quantized once per sweep
    for (int slot : {1, 0}) {
      const int other = 1 - slot;
      QuantPoint* ps = slot == 1 ? p1 : p0;
      QuantPoint* po = slot == 1 ? p0 : p1;
      const Range& rs = slot == 1 ? r1 : r0;
      const Range& ro = slot == 1 ? r0 : r1;
      std::vector<at::Tensor> qargs = sargs;
      qargs[static_cast<size_t>(other)] =
          fake_quant(sargs[static_cast<size_t>(other)], po->spec, scaled(ro, po->spec, slot == 1 ? a0 : a1));
      double best = -std::numeric_limits<double>::infinity(), best_alpha = 1.0;
      for (int k = 0; k < o.search_steps; ++k) {
        const double alpha = 0.5 + 0.7 * k / (o.search_steps - 1);
        qargs[static_cast<size_t>(slot)] = fake_quant(sargs[static_cast<size_t>(slot)], ps->spec, scaled(rs, ps->spec, alpha));
        const double s = score_of(qargs);
        if (s > best) {
          best = s;
          best_alpha = alpha;
        }
      }
      (slot == 1 ? a1 : a0) = best_alpha;
    }
    // Held out: the search scored its candidates on `sub` images only, and the similarity is blind to a scale
    // error, so a searched step may fit those images and hurt others. Keep it only where it also wins on the
    // next images of the calibration batch (never scored on): among min/max for both slots, either slot's
    // searched step alone, or both, the best there (ties keep min/max).
    if (held > 0 && (a0 != 1.0 || a1 != 1.0)) {
      std::vector<at::Tensor> hargs = args;
      for (size_t s = 0; s < args.size(); ++s)
        if (args[s].defined() && !g.is_const(n.inputs[s])) hargs[s] = search::image_rows(args[s], sub, held, calib.size(0));
      const at::Tensor hout = search::image_rows(out, sub, held, calib.size(0));
      auto held_score = [&](double x0, double x1) {
        std::vector<at::Tensor> q = hargs;
        q[0] = fake_quant(hargs[0], p0->spec, scaled(r0, p0->spec, x0));
        q[1] = fake_quant(hargs[1], p1->spec, scaled(r1, p1->spec, x1));
        auto o_q = run_node(n, q, held)[0];
        double score = similarity(hout, o_q, pearson);
        if (rank) score -= o.ranking_weight * ranking_loss(hout, o_q, pairs);
        return score;
      };
      double best = held_score(1.0, 1.0), b0 = 1.0, b1 = 1.0;
      for (auto [x0, x1] : {std::pair{a0, 1.0}, std::pair{1.0, a1}, std::pair{a0, a1}}) {
        if (x0 == b0 && x1 == b1) continue;
        if (const double s = held_score(x0, x1); s > best) {
          best = s;
          b0 = x0;
          b1 = x1;
        }
      }
      a0 = b0;
      a1 = b1;
      kept_minmax += (a0 == 1.0 && a1 == 1.0);
    }
    p0->params = scaled(r0, p0->spec, a0);
    p1->params = scaled(r1, p1->spec, a1);
    if (o.bias_correction && (n.op == OpKind::Linear || n.op == OpKind::Conv2d) && args.size() > 2 && args[2].defined()) {
      auto q = quantized_output(n, args, p0, p0->params, p1, p1->params, batch);
      auto err = q - out;
      // mean error per output channel: Linear's last axis, Conv2d's axis 1
      at::Tensor mean = n.op == OpKind::Linear ? err.flatten(0, -2).mean(0) : err.transpose(0, 1).flatten(1).mean(1);
      plan.bias[name] = (args[2] - mean).contiguous();
    }
    bar.update(++done, name);
  }
  bar.finish();
  if (o.holdout) {
    plan.settings["search"]["holdout_images"] = held;
    plan.settings["search"]["layers_kept_at_minmax"] = kept_minmax;
  }
  return plan;
}

}  // namespace

MethodInfo method_liu2021() {
  return {"liu2021", "Liu et al., NeurIPS 2021",
          "similarity-aware step search (Pearson), ranking loss on attention, bias correction, nuclear-norm mixed precision",
          run_liu2021};
}

}  // namespace vitq
