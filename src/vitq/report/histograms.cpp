#include "vitq/report/histograms.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "vitq/graph/executor.h"
#include "vitq/quant/fake_quant.h"
#include "vitq/quant/quantizer.h"

namespace vitq {

namespace {

// Every value a per-tensor quantizer produces: fake_quant over a sweep of inputs dense enough to hit each
// level (the sweep's step is far below the finest step of any grid up to 8 bits), deduplicated.
std::vector<double> grid_levels(const QuantPoint& p, double bound) {
  const int64_t n = int64_t{1} << 21;
  at::Tensor sweep = at::linspace(-bound, bound, n, at::kFloat);
  at::Tensor q = std::get<0>(at::_unique(fake_quant(sweep, p.spec, p.params), /*sorted=*/true));
  q = q.to(at::kDouble).contiguous();
  return {q.data_ptr<double>(), q.data_ptr<double>() + q.numel()};
}

}  // namespace

std::vector<ActivationHistogram> activation_histograms(const Graph& g, const QuantPlan& plan, const at::Tensor& images,
                                                       const std::vector<std::string>& nodes, int bins) {
  at::InferenceMode guard;
  const std::set<std::string> wanted(nodes.begin(), nodes.end());
  std::map<std::pair<std::string, int>, at::Tensor> inputs;
  ExecHooks capture;
  capture.transform_input = [&](const Node& n, size_t slot, const at::Tensor& t) {
    if (wanted.count(n.name)) {
      const QuantPoint* p = plan.find(n.name, static_cast<int>(slot));
      if (p && !p->weight) inputs[{n.name, static_cast<int>(slot)}] = t;
    }
    return t;
  };
  const Graph reparameterised = with_reparams(g, plan);  // the inputs the quantizers see (RepQ-ViT's plans)
  Executor(reparameterised).run(images, &capture);

  std::vector<ActivationHistogram> out;
  for (const auto& name : nodes) {
    for (const auto& [key, x] : inputs) {
      if (key.first != name) continue;
      const QuantPoint& p = *plan.find(key.first, key.second);
      ActivationHistogram h;
      h.node = key.first;
      h.slot = key.second;
      h.label = point_label(p);
      h.granularity = std::string("per-") + granularity_name(p.spec.granularity);
      at::Tensor v = x.detach().to(at::kFloat).contiguous();
      h.values = v.numel();
      h.lo = v.min().item<double>();
      h.hi = v.max().item<double>();
      double lo = h.lo, hi = h.hi;
      if (!(hi > lo)) {  // constant input: a unit-wide window around it
        lo -= 0.5;
        hi += 0.5;
      }
      at::Tensor c = at::histc(v.flatten(), bins, lo, hi).to(at::kLong).contiguous();
      h.counts.assign(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
      // The range, element by element (per-channel quantizers broadcast over the input): what inputs far beyond
      // every range quantize to.
      double smax = p.params.scale.abs().max().item<double>();
      if (p.params.scale2.defined()) smax = std::max(smax, p.params.scale2.abs().max().item<double>());
      const double reach = smax * std::ldexp(1.0, p.spec.bits + 2);
      const double far = 4 * std::max({std::abs(h.lo), std::abs(h.hi), reach, 1.0});
      at::Tensor top = fake_quant(at::full_like(v, far), p.spec, p.params);
      at::Tensor bottom = fake_quant(at::full_like(v, -far), p.spec, p.params);
      h.range_lo = bottom.min().item<double>();
      h.range_hi = top.max().item<double>();
      // clipped: beyond the end levels by more than rounding to them explains (half a step of the grid there;
      // a log2 grid's top level 2^0 takes values up to 2^0.5; anything below a log2 or unsigned grid's 0 is cut)
      at::Tensor s1 = p.params.scale.abs(), step_top = s1, step_bottom = s1;
      if (p.spec.kind == QuantKind::TwinUniform && p.params.scale2.defined()) step_top = p.params.scale2.abs();
      at::Tensor top_margin = 0.5 * step_top, bottom_margin = 0.5 * step_bottom;
      if (is_any_log_kind(p.spec.kind)) {
        top_margin = (std::exp2(0.5 / log_codes_per_octave(p.spec, p.params)) - 1) * s1;
        bottom_margin = at::zeros_like(s1);
      }
      h.outside = (v > top + top_margin).logical_or(v < bottom - bottom_margin).sum().item<int64_t>();
      if (p.params.scale.numel() == 1 && (!p.params.scale2.defined() || p.params.scale2.numel() == 1))
        h.grid = grid_levels(p, std::max({std::abs(h.range_lo), std::abs(h.range_hi)}) * 1.01 + 1e-12);
      out.push_back(std::move(h));
    }
  }
  return out;
}

}  // namespace vitq
