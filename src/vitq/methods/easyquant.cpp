// Wu, Liu, Zhou, Zhuang, Zhang, Yu. "EasyQuant: Post-training Quantization via Scale Optimization".
// arXiv 2006.16669, 2020.
//
// Layer by layer, each layer fed its FP input ("parallel" calibration), maximise the cosine similarity between
// the FP output O and the quantized output Ô:
//     max_{S_W, S_X} cos(O, Ô)
// alternating between the per-channel weight scales S_W (each output channel c chosen on cos(O_c, Ô_c), the
// channel it alone affects) and the per-tensor activation scale S_X (cos of the whole output), for 2 rounds.
// Start: activations from KL (histogram) calibration, weights from max |W| per channel; the search grid is
// [0.5, 2.0] x the start in 100 steps. For an attention matmul the two inputs alternate.
// The paper's convention (--convention paper): symmetric quantizers everywhere, weights per channel,
// activations per tensor (unsigned where the FP data is non-negative, e.g. the softmax output).
#include <ATen/ATen.h>

#include "vitq/graph/executor.h"
#include "vitq/methods/method.h"
#include "vitq/methods/search.h"
#include "vitq/util/error.h"
#include "vitq/util/progress.h"

namespace vitq {

namespace {

at::Tensor cosine_per_group(const at::Tensor& o, const at::Tensor& q, const search::Groups& gr) {
  auto a = o.to(at::kDouble), b = q.to(at::kDouble);
  auto dot = search::reduce_to_groups(a * b, gr);
  auto den = at::sqrt(search::reduce_to_groups(a * a, gr) * search::reduce_to_groups(b * b, gr));
  return at::where(den > 0, dot / at::clamp_min(den, 1e-300), at::zeros_like(dot));
}

QuantPlan run_easyquant(const Graph& g, const at::Tensor& calib, const MethodOptions& o) {
  at::InferenceMode guard;
  if (o.search_steps < 2) fail("search steps must be at least 2");
  const bool paper = o.convention == "paper";
  PlacementOptions po = o.placement;
  if (paper) {
    po.act_symmetric = true;
    po.weight_granularity = Granularity::PerChannel;
  }
  QuantPlan plan;
  plan.points = default_placement(g, po);
  LayerTensors storage;
  const LayerTensors& t = fp_layer_tensors(g, calib, o, storage);
  if (paper)  // non-negative data (post-softmax) on the unsigned grid: one more bit of resolution
    for (auto& p : plan.points)
      if (!p.weight && t.inputs.at(p.node)[static_cast<size_t>(p.slot)].min().item<double>() >= 0) p.spec.is_signed = false;
  calibrate_with_observers(g, calib, plan.points, "kl", "minmax", o.observer);

  const int rounds = o.rounds > 0 ? o.rounds : 2;
  const auto alphas = search::linspace(0.5, 2.0, o.search_steps);
  const auto alpha_t = at::tensor(alphas, at::kDouble);
  plan.settings["objective"] = "cosine";
  plan.settings["search"] = {{"alpha", {0.5, 2.0}}, {"steps", o.search_steps}, {"rounds", rounds}, {"images", o.search_images},
                             {"init", "kl (activations), max (weights)"}};
  const std::vector<std::string> layers = search::two_input_layers(g, plan);
  Progress bar("easyquant search", layers.size(), o.progress);
  size_t done = 0;
  for (const auto& name : layers) {
    const Node& n = *g.find_node(name);
    const int64_t sub = std::min<int64_t>(o.search_images, calib.size(0));
    const auto args = search::first_images(g, n, t.inputs.at(name), sub, calib.size(0));
    const at::Tensor out = search::first_rows(t.outputs.at(name), sub, calib.size(0));
    QuantPoint* pts[2] = {plan.find(name, 0), plan.find(name, 1)};
    search::Range ranges[2] = {search::range_of_params(pts[0]->spec, pts[0]->params),
                               search::range_of_params(pts[1]->spec, pts[1]->params)};
    at::Tensor alpha[2] = {at::ones_like(ranges[0].lo), at::ones_like(ranges[1].lo)};
    for (int r = 0; r < rounds; ++r) {
      for (int slot : {1, 0}) {
        const int other = 1 - slot;
        QuantPoint& p = *pts[slot];
        std::vector<at::Tensor> qargs = args;
        qargs[static_cast<size_t>(other)] = fake_quant(args[static_cast<size_t>(other)], pts[other]->spec,
                                                       search::scaled(ranges[other], pts[other]->spec, alpha[other]));
        const auto groups = p.weight ? search::output_groups(n, p) : search::Groups{};
        auto best = search::grid_search(
            n, qargs, slot, p.spec, static_cast<int64_t>(alphas.size()),
            [&](int64_t k) { return search::scaled(ranges[slot], p.spec, alphas[static_cast<size_t>(k)]); },
            [&](const at::Tensor& q) { return cosine_per_group(out, q, groups); }, sub);
        alpha[slot] = search::expand_groups(alpha_t.index_select(0, best), ranges[slot].lo);
      }
    }
    for (int s = 0; s < 2; ++s) pts[s]->params = search::scaled(ranges[s], pts[s]->spec, alpha[s]);
    bar.update(++done, name);
  }
  bar.finish();
  return plan;
}

}  // namespace

MethodInfo method_easyquant() {
  return {"easyquant", "Wu et al., arXiv 2006.16669 (2020)",
          "cosine-similarity scale search, alternating per-channel weight and per-tensor activation scales, from KL",
          run_easyquant};
}

}  // namespace vitq
