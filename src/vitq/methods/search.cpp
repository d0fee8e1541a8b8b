#include "vitq/methods/search.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "vitq/graph/executor.h"
#include "vitq/util/error.h"

namespace vitq::search {

Range range_of(const at::Tensor& x, const QuantSpec& s) { return {reduce_amin(x, s), reduce_amax(x, s)}; }

Range range_of_params(const QuantSpec& s, const QuantParams& p) {
  return {(static_cast<double>(s.qmin()) - p.zero_point) * p.scale, (static_cast<double>(s.qmax()) - p.zero_point) * p.scale};
}

QuantParams scaled(const Range& r, const QuantSpec& s, const at::Tensor& alpha) {
  return params_from_range(r.lo * alpha, r.hi * alpha, s);
}
QuantParams scaled(const Range& r, const QuantSpec& s, double alpha) { return params_from_range(r.lo * alpha, r.hi * alpha, s); }

std::vector<double> linspace(double a, double b, int n) {
  std::vector<double> v;
  for (int k = 0; k < n; ++k) v.push_back(n == 1 ? a : a + (b - a) * k / (n - 1));
  return v;
}

Groups output_groups(const Node& n, const QuantPoint& p, int64_t groups_override) {
  Groups g;
  // A weight's output channel and an input's head each own a slice of the output; an input's channel does not (a
  // Linear or Conv2d sums over the input channels), so a per-channel input is scored on the whole output.
  const bool per_group = p.weight ? p.spec.granularity == Granularity::PerChannel || p.spec.granularity == Granularity::PerHead
                                  : p.spec.granularity == Granularity::PerHead && n.op == OpKind::MatMul;
  if (!per_group) return g;
  if (p.weight) g.axis = n.op == OpKind::Conv2d ? 1 : -1;  // output channels
  else g.axis = 1;                                         // heads of [B, H, N, D]
  if (groups_override > 0) g.count = groups_override;
  else if (p.params.scale.defined()) g.count = p.params.scale.numel();
  return g;
}

at::Tensor reduce_to_groups(const at::Tensor& v, const Groups& gr) {
  if (gr.count == 1) return v.sum().reshape({1});
  const int64_t axis = gr.axis < 0 ? gr.axis + v.dim() : gr.axis;
  auto per = v.transpose(0, axis).reshape({v.size(axis), -1}).sum(1);
  if (per.size(0) % gr.count != 0) fail("{} output channels do not split into {} groups", per.size(0), gr.count);
  return per.reshape({gr.count, -1}).sum(1);
}

at::Tensor expand_groups(const at::Tensor& per_group, const at::Tensor& like) {
  const int64_t rep = like.numel() / per_group.numel();
  return per_group.repeat_interleave(rep).reshape(like.sizes()).to(like.scalar_type());
}

at::Tensor grid_search(const Node& n, std::vector<at::Tensor> args, int slot, const QuantSpec& spec, int64_t candidates,
                       const std::function<QuantParams(int64_t)>& make,
                       const std::function<at::Tensor(const at::Tensor&)>& score, int64_t batch) {
  const at::Tensor x = args[static_cast<size_t>(slot)];
  at::Tensor best, best_index;
  for (int64_t k = 0; k < candidates; ++k) {
    args[static_cast<size_t>(slot)] = fake_quant(x, spec, make(k));
    auto s = score(run_node(n, args, batch)[0]).to(at::kDouble);
    s = at::nan_to_num(s, -1e300, -1e300, -1e300);
    if (!best.defined()) {
      best = s;
      best_index = at::zeros(s.sizes(), at::kLong);
      continue;
    }
    auto better = s > best;
    best = at::where(better, s, best);
    best_index = at::where(better, at::full_like(best_index, k), best_index);
  }
  return best_index;
}

std::vector<std::string> two_input_layers(const Graph& g, const QuantPlan& plan) {
  std::vector<std::string> layers;
  for (const auto& n : g.nodes)
    if (plan.find(n.name, 0) && plan.find(n.name, 1)) layers.push_back(n.name);
  return layers;
}

at::Tensor first_rows(const at::Tensor& t, int64_t images, int64_t total) {
  if (images >= total) return t;
  if (total <= 0 || t.size(0) % total != 0)
    fail("activation of {} rows is not a whole number of rows for each of {} images", t.size(0), total);
  return t.narrow(0, 0, images * (t.size(0) / total));
}

at::Tensor image_rows(const at::Tensor& t, int64_t begin, int64_t count, int64_t total) {
  if (total <= 0 || t.size(0) % total != 0)
    fail("activation of {} rows is not a whole number of rows for each of {} images", t.size(0), total);
  if (begin < 0 || count < 0 || begin + count > total) fail("images [{}, {}) outside the batch of {}", begin, begin + count, total);
  const int64_t k = t.size(0) / total;
  return t.narrow(0, begin * k, count * k);
}

std::vector<at::Tensor> first_images(const Graph& g, const Node& n, const std::vector<at::Tensor>& args, int64_t images,
                                     int64_t total) {
  std::vector<at::Tensor> out = args;
  for (size_t s = 0; s < out.size(); ++s)
    if (out[s].defined() && n.inputs[s] >= 0 && !g.is_const(n.inputs[s])) out[s] = first_rows(out[s], images, total);
  return out;
}

RowTails::RowTails(const at::Tensor& rows, double inner) : n_(rows.dim() == 2 ? rows.size(1) : 0) {
  if (n_ == 0) fail("row tails: quantiles of an empty or non-2-d tensor");
  if (!(inner >= 0.5 && inner <= 1.0)) fail("row tails: inner quantile {} outside [0.5, 1]", inner);
  // ranks from floor(inner (n - 1)) up, n - F of them; +1: on the bottom end the mirrored floor of
  // (1 - inner)(n - 1), plus one for the interpolation, reaches rank n - F when both products are whole numbers
  // (n = 1001 at 0.999)
  const int64_t k = std::min<int64_t>(n_, n_ - static_cast<int64_t>(std::floor(inner * static_cast<double>(n_ - 1))) + 1);
  if (2 * k >= n_) {
    full_ = std::get<0>(rows.sort(1));
    return;
  }
  top_ = std::get<0>(rows.topk(k, 1, /*largest=*/true, /*sorted=*/true));      // descending
  bottom_ = std::get<0>(rows.topk(k, 1, /*largest=*/false, /*sorted=*/true));  // ascending
}

at::Tensor RowTails::rank(int64_t r) const {
  if (r < 0 || r >= n_) fail("row tails: rank {} of {}", r, n_);
  if (full_.defined()) return full_.select(1, r);
  if (r < bottom_.size(1)) return bottom_.select(1, r);
  const int64_t from_top = n_ - 1 - r;
  if (from_top < top_.size(1)) return top_.select(1, from_top);
  fail("row tails: rank {} of {} is not within the kept ends ({} each)", r, n_, top_.size(1));
}

at::Tensor RowTails::quantile(double q) const {
  const double pos = q * static_cast<double>(n_ - 1);
  const int64_t lo = static_cast<int64_t>(std::floor(pos)), hi = std::min(lo + 1, n_ - 1);
  const double frac = pos - static_cast<double>(lo);
  return rank(lo) * (1.0 - frac) + rank(hi) * frac;
}

}  // namespace vitq::search
