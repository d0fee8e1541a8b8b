// AdaLog (Wu et al., ECCV 2024): log quantizers whose base is searched, for the post-softmax and post-GELU inputs
// of any method's plan (the variant suffix +adalog).
//   * The base is 2^(1/τ): τ codes per octave, τ searched on a grid with the scale (log2 is τ = 1, RepQ-ViT's
//     log√2 τ = 2). A small τ reaches far below the scale (at 3 bits log√2 keeps only values above scale/8,
//     log2 above scale/64); a large one is fine near the scale.
//   * Post-GELU values are shifted by −min (GELU's tail, ~0.17) before the log grid and back after, so the grid's
//     dense end sits at GELU's minimum and its codes still resolve the many values near 0.
//   * Each candidate quantizes the input the quantizer sees in the model as the method left it (one pass of the
//     calibration batch); the least squared error wins, and the AdaLog quantizer replaces the method's own only
//     where it quantizes with less error than that one.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "vitq/methods/method.h"
#include "vitq/methods/search.h"
#include "vitq/quant/fake_quant.h"
#include "vitq/util/error.h"
#include "vitq/util/progress.h"

namespace vitq {

namespace {

const std::vector<double> kTaus = {0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0};
const std::vector<double> kTop = {1.0, 0.99999, 0.9999, 0.999};  // scale candidates: max and top quantiles
constexpr int64_t kMaxSearch = int64_t{1} << 20;                   // values scored per candidate

double mse(const at::Tensor& a, const at::Tensor& b) { return (a - b).pow(2).mean().item<double>(); }

// A seeded subsample of at most kMaxSearch values (all of them when fewer).
at::Tensor search_sample(const at::Tensor& x, uint64_t seed) {
  auto flat = x.detach().to(at::kFloat).reshape({-1});
  if (flat.numel() <= kMaxSearch) return flat;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return flat.index_select(0, at::randperm(flat.numel(), gen, at::TensorOptions().dtype(at::kLong)).narrow(0, 0, kMaxSearch));
}

}  // namespace

AdaLogFit fit_adalog(const at::Tensor& x_in, int bits, bool shifted) {
  const auto x = x_in.detach().to(at::kFloat).reshape({-1});
  QuantSpec spec;
  spec.bits = bits;
  spec.symmetric = false;
  spec.is_signed = false;
  spec.kind = QuantKind::AdaLog;
  spec.validate();
  const double shift = shifted ? std::max(0.0, -x.min().item<double>()) : 0.0;
  // the candidate scales are top quantiles (the lowest 0.1% from the top): only the largest values are ordered
  const search::RowTails tails((x + shift).reshape({1, -1}), *std::min_element(kTop.begin(), kTop.end()));
  const int64_t n = tails.size();
  AdaLogFit best;
  best.error = INFINITY;
  for (double q : kTop) {
    const double scale = tails.rank(std::llround(q * static_cast<double>(n - 1)))[0].item<double>();
    if (!(scale > 0) || !std::isfinite(scale)) continue;
    for (double tau : kTaus) {
      QuantParams p = adalog_params(scale, tau, shift);
      const double err = mse(fake_quant(x, spec, p), x);
      if (err < best.error) best = {spec, p, err};
    }
  }
  if (!std::isfinite(best.error)) {  // no positive candidate scale (x + shift is all zero): any scale is exact
    const QuantParams p = adalog_params(1.0, 2.0, shift);
    best = {spec, p, mse(fake_quant(x, spec, p), x)};
  }
  return best;
}

nlohmann::json adalog_refit(const Graph& g, const at::Tensor& calib, QuantPlan& plan, const MethodOptions& o) {
  // the activation points that read a post-softmax or post-GELU value, by that value
  std::map<int, std::vector<QuantPoint*>> targets;
  for (auto& p : plan.points) {
    if (p.weight || !p.params.scale.defined()) continue;
    const Node* n = g.find_node(p.node);
    const int v = n->inputs[static_cast<size_t>(p.slot)];
    if (g.values[static_cast<size_t>(v)].roles & (kPostSoftmax | kPostGelu)) targets[v].push_back(&p);
  }
  nlohmann::json record = {{"replaced", 0}, {"kept", 0}, {"taus", nlohmann::json::object()}};
  if (targets.empty()) return record;
  std::map<int, at::Tensor> seen;
  ExecHooks capture;
  capture.on_output = [&](const Node& n, const std::vector<at::Tensor>& outs) {
    for (size_t k = 0; k < outs.size() && k < n.outputs.size(); ++k)
      if (targets.count(n.outputs[k])) seen[n.outputs[k]] = outs[k].detach().to(at::kFloat);
  };
  {
    at::InferenceMode guard;
    QuantizedModel(g, plan).run(calib, &capture);
  }
  Progress bar("adalog search", targets.size(), o.progress);
  size_t done = 0;
  int replaced = 0, kept = 0;
  for (auto& [v, points] : targets) {
    auto it = seen.find(v);
    if (it == seen.end()) fail("adalog: the calibration pass never produced the input of {}", points[0]->node);
    const bool softmax = g.values[static_cast<size_t>(v)].roles & kPostSoftmax;
    const auto x = search_sample(it->second, o.seed + static_cast<uint64_t>(v));
    for (QuantPoint* p : points) {
      AdaLogFit fit = fit_adalog(x, p->spec.bits, !softmax);
      const double current = mse(fake_quant(x, p->spec, p->params), x);
      if (fit.error < current) {
        p->spec = fit.spec;
        p->params = fit.params;
        ++replaced;
        record["taus"][p->node] = fit.params.base.item<double>();
      } else {
        ++kept;
      }
    }
    bar.update(++done, points[0]->node);
  }
  bar.finish(fmt::format("{} replaced, {} kept", replaced, kept));
  record["replaced"] = replaced;
  record["kept"] = kept;
  return record;
}

}  // namespace vitq
