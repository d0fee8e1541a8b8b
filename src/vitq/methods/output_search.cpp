// The output-error search any plan can go through (the variant suffix +osearch): the calibration AdaLog's and
// APHQ-ViT's codes run for their uniform quantizers, on top of whatever the method found.
//   * One pass of the calibration batch through the model being quantized, layer after layer: each layer sees the
//     input the quantized layers before it produce (already searched), unquantized.
//   * At a layer with two quantized inputs (a Linear or Conv2d's input and weight, an attention matmul's two
//     inputs), the clipping of each uniform quantizer is searched to minimise the squared error of the layer's
//     output against its output from the same inputs unquantized, alternating between the two inputs for
//     `kRounds` rounds, the other input quantized as last chosen. A per-channel weight chooses per output
//     channel (the output columns it alone affects), a per-head input per head, a per-tensor input on the whole
//     output, scored on the first 32 calibration images (all of them when fewer). Candidates scale the range of
//     min/max (weights: α from 0.2 to 1 in steps of 0.025; activations: α = 0.95^k, k = 0..59), the method's own
//     parameters being the first candidate, so that a layer's output error never grows. Under +osends an
//     asymmetric quantizer's two ends are then searched apart, in the same round: the lower end over the same α
//     of min (the upper where the first search put it), then the upper end over α of max, each grid again with
//     the parameters as they are first: min/max scaled alike clips a skewed input's short side by the same
//     fraction as its long one. The record counts the points searched so and those moved.
//   * Log quantizers (log√2, AdaLog, log2), twin uniform and PTF points are applied as the plan has them and not
//     searched, except under +oslog: there an AdaLog quantizer (post-softmax, post-GELU) is searched in the same
//     alternation on the same output error, as AdaLog's own code chooses its base and scale: candidates τ × scale
//     (kLogTaus × kLogScales of the largest shifted value the layer sees over the whole batch), its shift kept,
//     its current parameters the first candidate. The record lists each one's choice.
//   * Plans already reconstructed (learned weight codes: qhyvit's own reconstruction) and plans with
//     integer LayerNorm / softmax (fqvit) are refused: the stage comes before any reconstruction, and models
//     the fake-quantized float graph only.
//   * The record: each searched layer's output squared error on the scoring images with the method's parameters
//     and with the searched ones, both on the inputs the already-searched layers before it produce, summed.
// The question it answers at 3 bits: RepQ-ViT's percentile candidates and +wmse choose each quantizer by its own
// tensor's error, blind to what the other input's quantization does to the output.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <set>

#include "vitq/graph/executor.h"
#include "vitq/graph/kernels.h"
#include "vitq/methods/method.h"
#include "vitq/methods/search.h"
#include "vitq/quant/fake_quant.h"
#include "vitq/util/error.h"
#include "vitq/util/progress.h"

namespace vitq {

namespace {

constexpr int kRounds = 3;
constexpr int64_t kScoreImages = 32;  // images the candidates are scored on (the first of the calibration batch)

bool searchable(const QuantPoint* p) {
  return p && p->spec.kind == QuantKind::Uniform && !p->codes.defined() && p->params.scale.defined();
}
// +oslog: an AdaLog quantizer (one scale, base and shift) is searched too
bool log_searchable(const QuantPoint* p) {
  return p && p->spec.kind == QuantKind::AdaLog && !p->codes.defined() && p->params.scale.defined() &&
         p->params.scale.numel() == 1;
}

// AdaLog candidates: τ codes per octave (finer than +adalog's grid where 3 bits need it) and the scale as a
// fraction of the largest shifted value the layer sees.
const std::vector<double> kLogTaus = {0.5, 0.6, 0.75, 0.9, 1.0, 1.15, 1.3, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0};
const std::vector<double> kLogScales = {1.0, 0.85, 0.7, 0.6, 0.5, 0.42, 0.35, 0.3, 0.25, 0.2};

std::vector<double> weight_alphas() {
  std::vector<double> a;
  for (int k = 0; k <= 32; ++k) a.push_back(1.0 - 0.025 * k);  // 1 .. 0.2
  return a;
}
std::vector<double> activation_alphas() {
  std::vector<double> a;
  for (int k = 0; k < 60; ++k) a.push_back(std::pow(0.95, k));  // 1 .. 0.048
  return a;
}

// Σ (q − out)² per group, negated (grid_search keeps the highest score).
at::Tensor neg_error(const at::Tensor& out, const at::Tensor& q, const search::Groups& groups) {
  return -search::reduce_to_groups((q.to(at::kDouble) - out.to(at::kDouble)).pow(2), groups);
}

}  // namespace

nlohmann::json output_search(const Graph& model, const at::Tensor& calib, QuantPlan& plan, const MethodOptions& o) {
  if (!plan.int_ops.empty()) fail("+osearch: the plan runs {} LayerNorm / softmax nodes in integers, which the output search does not model", plan.int_ops.size());
  for (const auto& p : plan.points)
    if (p.codes.defined()) fail("+osearch: the plan was already reconstructed ({} has learned rounding); the output search comes before reconstruction", p.node);
  const Graph g = with_reparams(model, plan);  // the model the plan's quantizers see (x', W')
  const auto w_alphas = weight_alphas(), a_alphas = activation_alphas();
  const bool logs = o.output_search_log, ends = o.output_search_ends;
  auto any_searchable = [&](const QuantPoint* p) { return searchable(p) || (logs && log_searchable(p)); };
  std::vector<std::string> layers;
  auto two_input_layer = [&](const Node& n) {
    return (n.op == OpKind::Linear || n.op == OpKind::Conv2d || n.op == OpKind::MatMul) && plan.find(n.name, 0) &&
           plan.find(n.name, 1) && (any_searchable(plan.find(n.name, 0)) || any_searchable(plan.find(n.name, 1)));
  };
  for (const auto& n : g.nodes)
    if (two_input_layer(n)) layers.push_back(n.name);
  nlohmann::json record = {{"layers", 0}, {"rounds", kRounds}, {"scoring_images", std::min<int64_t>(kScoreImages, calib.size(0))},
                           {"output_error_method", 0.0}, {"output_error_searched", 0.0},
                           {"measured", "each searched layer's output squared error on the scoring images, with the method's "
                                        "parameters and with the searched ones, on the inputs the searched layers before it "
                                        "produce; summed"},
                           {"weight_alphas", {w_alphas.back(), w_alphas.front(), w_alphas.size()}},
                           {"activation_alphas", {a_alphas.back(), a_alphas.front(), a_alphas.size()}}};
  if (logs) {
    record["adalog"] = {{"taus", kLogTaus}, {"scale_fractions", kLogScales}, {"searched", 0}, {"moved", 0},
                        {"chosen", nlohmann::json::object()}};
  }
  if (layers.empty()) return record;
  int log_searched = 0, log_moved = 0;
  std::set<const QuantPoint*> ends_searched, ends_moved;  // +osends: the points whose ends were searched, moved
  std::map<const QuantPoint*, double> log_fraction;  // the scale last chosen, as a fraction of the largest value
  Progress bar("output search", layers.size(), o.progress);
  size_t done = 0;
  double before = 0, after = 0;
  const int64_t images = calib.size(0);
  ExecHooks h;
  h.replace = [&](const Node& n, const std::vector<at::Tensor>& in) -> std::vector<at::Tensor> {
    // what the quantized layer computes with, as QuantizedModel applies the plan: its weight update and bias
    std::vector<at::Tensor> args = in;
    QuantPoint* pts[2] = {plan.find(n.name, 0), plan.find(n.name, 1)};
    if (pts[1] && pts[1]->weight && args.size() > 1 && args[1].defined())
      args[1] = plan_weight(plan, n.name, args[1]).to(args[1].device());
    if (auto b = plan.bias.find(n.name); b != plan.bias.end() && args.size() > 2 && args[2].defined())
      args[2] = b->second.to(args[2].device());
    const bool search = two_input_layer(n);
    if (search) {
      // scored on the first `sub` images; ranges from all of them
      const int64_t sub = std::min<int64_t>(kScoreImages, images);
      const auto sargs = search::first_images(g, n, args, sub, images);
      // the target: the model's own weight and bias, unquantized
      const at::Tensor out = run_node(n, search::first_images(g, n, in, sub, images), sub)[0];
      auto quantized = [&](int s) { return quantize_point(*pts[s], sargs[static_cast<size_t>(s)]); };
      auto error = [&]() {
        std::vector<at::Tensor> q = sargs;
        q[0] = quantized(0);
        q[1] = quantized(1);
        return (run_node(n, q, sub)[0] - out).pow(2).sum().item<double>();
      };
      const double e0 = error();
      const QuantParams start[2] = {pts[0]->params, pts[1]->params};
      // what the candidates are built from, the same in every round: a uniform input's min/max over all the
      // images, an AdaLog input's largest value plus its (kept) shift
      search::Range ranges[2];
      double tops[2] = {0.0, 0.0};
      for (int s = 0; s < 2; ++s) {
        const auto& x = args[static_cast<size_t>(s)];
        if (searchable(pts[s])) ranges[s] = search::range_of(x, pts[s]->spec);
        else if (logs && log_searchable(pts[s])) tops[s] = x.max().item<double>() + log_shift(pts[s]->spec, pts[s]->params);
      }
      for (int r = 0; r < kRounds; ++r) {
        for (int slot : {1, 0}) {
          QuantPoint& p = *pts[slot];
          if (!any_searchable(&p)) continue;
          const int other = 1 - slot;
          std::vector<at::Tensor> qargs = sargs;
          qargs[static_cast<size_t>(other)] = quantized(other);
          if (p.spec.kind == QuantKind::AdaLog) {
            // one quantizer for the whole input: (scale, τ) on a grid, the shift kept; candidate 0 as it is
            const double shift = log_shift(p.spec, p.params);
            const double top = tops[slot];
            const QuantParams current = p.params;
            std::vector<QuantParams> cands{current};
            std::vector<double> fraction{0.0};  // of `top`; 0: the current parameters
            if (top > 0 && std::isfinite(top))
              for (double f : kLogScales)
                for (double tau : kLogTaus) {
                  cands.push_back(adalog_params(top * f, tau, shift));
                  fraction.push_back(f);
                }
            const auto best = static_cast<size_t>(search::grid_search(
                n, qargs, slot, p.spec, static_cast<int64_t>(cands.size()),
                [&](int64_t k) { return cands[static_cast<size_t>(k)]; },
                [&](const at::Tensor& q) { return neg_error(out, q, search::Groups{}); }, sub).item<int64_t>());
            p.params = cands[best];
            if (best > 0) log_fraction[&p] = fraction[best];
            continue;
          }
          const auto& alphas = p.weight ? w_alphas : a_alphas;
          const auto& range = ranges[slot];
          const auto groups = search::output_groups(n, p);
          const auto alpha_t = at::tensor(alphas, at::kDouble);
          // One grid over α: candidate 0 the parameters as they are, then with_alpha(α) for each α; per group the
          // chosen candidate's parameters (candidate 0 keeps the current ones). Returns whether any group moved.
          auto search_alpha = [&](const std::function<QuantParams(const at::Tensor&)>& with_alpha) {
            const QuantParams current = p.params;
            auto make = [&](int64_t k) {
              return k == 0 ? current : with_alpha(at::scalar_tensor(alphas[static_cast<size_t>(k - 1)], at::kDouble));
            };
            auto best = search::grid_search(
                n, qargs, slot, p.spec, static_cast<int64_t>(alphas.size()) + 1, make,
                [&](const at::Tensor& q) { return neg_error(out, q, groups); }, sub);
            auto chosen = search::expand_groups(alpha_t.index_select(0, at::clamp_min(best - 1, 0)), range.lo);
            QuantParams grid = with_alpha(chosen);
            auto keep = search::expand_groups((best == 0).to(at::kDouble), range.lo).to(at::kBool);
            auto cur_scale = current.scale.reshape(grid.scale.sizes()).to(grid.scale.device());
            auto cur_zp = current.zero_point.reshape(grid.zero_point.sizes()).to(grid.zero_point.device());
            p.params.scale = at::where(keep.reshape(grid.scale.sizes()), cur_scale, grid.scale).contiguous();
            p.params.zero_point = at::where(keep.reshape(grid.zero_point.sizes()), cur_zp, grid.zero_point).contiguous();
            return !keep.all().item<bool>();
          };
          // both ends of min/max scaled by the same α
          search_alpha([&](const at::Tensor& a) { return search::scaled(range, p.spec, a); });
          if (ends && !p.spec.symmetric) {
            // +osends: then each end of an asymmetric quantizer on its own (the other where the last choice put it)
            bool end_moved = false;
            for (int end : {0, 1}) {
              const auto now = search::range_of_params(p.spec, p.params);  // shaped like the scale, not the range
              const at::Tensor lo = now.lo.reshape(range.lo.sizes()), hi = now.hi.reshape(range.hi.sizes());
              end_moved |= search_alpha([&](const at::Tensor& a) {
                return end == 0 ? params_from_range(range.lo * a, hi, p.spec) : params_from_range(lo, range.hi * a, p.spec);
              });
            }
            if (end_moved) ends_moved.insert(&p);
            ends_searched.insert(&p);
          }
        }
      }
      double e1 = error();
      if (!(e1 <= e0)) {  // numerical ties aside, never worse than the start
        pts[0]->params = start[0];
        pts[1]->params = start[1];
        e1 = e0;
        ends_moved.erase(pts[0]);
        ends_moved.erase(pts[1]);
      }
      if (logs)
        for (int s = 0; s < 2; ++s)
          if (log_searchable(pts[s])) {
            ++log_searched;
            const bool moved = pts[s]->params.scale.item<double>() != start[s].scale.item<double>() ||
                               pts[s]->params.base.item<double>() != start[s].base.item<double>();
            if (moved) ++log_moved;
            record["adalog"]["chosen"][pts[s]->node] = {{"tau", pts[s]->params.base.item<double>()},
                                                        {"scale", pts[s]->params.scale.item<double>()},
                                                        {"scale_fraction", moved ? log_fraction[pts[s]] : 0.0},
                                                        {"moved", moved}};
          }
      before += e0;
      after += e1;
      bar.update(++done, n.name);
    }
    for (int s = 0; s < 2; ++s)
      if (pts[s]) args[static_cast<size_t>(s)] = quantize_point(*pts[s], args[static_cast<size_t>(s)]);
    return run_node(n, args, images);
  };
  {
    at::InferenceMode guard;
    Executor(g).run(calib, &h);
  }
  bar.finish(fmt::format("layers' output error {:.4g} with the method's parameters, {:.4g} searched", before, after));
  record["layers"] = done;
  record["output_error_method"] = before;
  record["output_error_searched"] = after;
  if (ends) record["ends"] = {{"searched", ends_searched.size()}, {"moved", ends_moved.size()}};
  if (logs) {
    record["adalog"]["searched"] = log_searched;
    record["adalog"]["moved"] = log_moved;
  }
  return record;
}

}  // namespace vitq
