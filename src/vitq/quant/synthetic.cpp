#include "vitq/quant/synthetic.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <utility>

#include "vitq/graph/executor.h"
#include "vitq/graph/passes.h"
#include "vitq/util/error.h"
#include "vitq/util/progress.h"

namespace vitq {

namespace {

// Differential entropy of the cosine similarities between the tokens of `x` ([..., N, D], leading dims are
// images or windows), estimated with a Gaussian kernel density on `m` similarities sampled per group (the same
// pairs every step: `pairs` indexes the flattened N x N matrix).
at::Tensor similarity_entropy(const at::Tensor& x, const at::Tensor& pairs) {
  at::Tensor t = x.reshape({-1, x.size(-2), x.size(-1)});
  t = t / (t.norm(2, -1, true) + 1e-6);
  at::Tensor sim = at::bmm(t, t.transpose(1, 2)).reshape({t.size(0), -1});  // [G, N*N]
  at::Tensor s = sim.index_select(1, pairs);                                 // [G, m]
  const double m = static_cast<double>(s.size(1));
  // Silverman's bandwidth per group (no gradient through it)
  at::Tensor h = (1.06 * s.detach().std(1, true, true) * std::pow(m, -0.2)).clamp_min(1e-3);  // [G, 1]
  at::Tensor d = (s.unsqueeze(2) - s.unsqueeze(1)) / h.unsqueeze(2);                           // [G, m, m]
  at::Tensor density = at::exp(-0.5 * d * d).mean(2) / (h * std::sqrt(2 * M_PI));             // [G, m]
  return -at::log(density + 1e-8).mean();
}

at::Tensor total_variation(const at::Tensor& x) {
  using namespace at::indexing;
  auto dh = x.index({Slice(), Slice(), Slice(1, None), Slice()}) - x.index({Slice(), Slice(), Slice(None, -1), Slice()});
  auto dw = x.index({Slice(), Slice(), Slice(), Slice(1, None)}) - x.index({Slice(), Slice(), Slice(), Slice(None, -1)});
  return dh.abs().mean() + dw.abs().mean();
}

// Per-channel mean and (biased) standard deviation of a layer output [B, C, ...] over everything but the channel.
std::pair<at::Tensor, at::Tensor> channel_statistics(const at::Tensor& y) {
  const at::Tensor t = y.transpose(0, 1).reshape({y.size(1), -1});
  const at::Tensor mean = t.mean(1);
  return {mean, (t - mean.unsqueeze(1)).pow(2).mean(1).add(1e-8).sqrt()};
}

// The root-mean-square gaps of a layer output's channel statistics from its BatchNorm target, added.
at::Tensor batchnorm_gap(const at::Tensor& y, const BatchNormTarget& t) {
  const auto [mean, stdv] = channel_statistics(y);
  return (mean - t.mean).pow(2).mean().sqrt() + (stdv - t.std).pow(2).mean().sqrt();
}

// The images as Natural (see SyntheticInit) parameterises them: octaves z_s of white noise, s = 1, 2, 4, ... up to
// a quarter of the image size, x = (sum_s sqrt(s) up(z_s) - mu) / sigma with mu (per image and channel) and sigma
// (per image) those of the starting sum, so that the start has zero mean and unit deviation.
struct Octaves {
  std::vector<at::Tensor> z;
  std::vector<double> weight;
  at::Tensor mu, sigma;
  int64_t H = 0, W = 0;

  Octaves(int64_t n, int64_t h, int64_t w, at::Generator& gen) : H(h), W(w) {
    for (int64_t cell = 1; cell == 1 || cell <= std::min(H, W) / 4; cell *= 2) {  // at least the full-size octave
      z.push_back(at::randn({n, 3, std::max<int64_t>(1, H / cell), std::max<int64_t>(1, W / cell)}, gen, at::kFloat));
      weight.push_back(std::sqrt(static_cast<double>(cell)));
    }
    const at::Tensor sum = raw();
    mu = sum.mean({2, 3}, true);
    sigma = (sum - mu).flatten(1).std(1, true, true).clamp_min(1e-12).view({n, 1, 1, 1});
  }
  at::Tensor raw() const {
    at::Tensor x = at::zeros({z[0].size(0), 3, H, W}, at::kFloat);
    for (size_t k = 0; k < z.size(); ++k) x = x + at::upsample_bilinear2d(z[k], {H, W}, false) * weight[k];
    return x;
  }
  at::Tensor image() const { return (raw() - mu) / sigma; }
};

}  // namespace

SyntheticInit parse_synthetic_init(const std::string& name) {
  if (name == "natural") return SyntheticInit::Natural;
  if (name == "white") return SyntheticInit::White;
  fail("--synthetic-init {}: expected natural or white", name);
}

const char* synthetic_init_name(SyntheticInit init) { return init == SyntheticInit::Natural ? "natural" : "white"; }

std::vector<BatchNormTarget> batchnorm_targets(const Graph& g) {
  std::vector<BatchNormTarget> out;
  auto tensor = [](const std::vector<double>& v) { return at::tensor(v, at::kDouble).to(at::kFloat); };
  for (const auto& n : g.nodes) {
    if (n.op == OpKind::Conv2d && n.has("bn_mean") && n.has("bn_std")) {
      out.push_back({n.name, tensor(std::get<std::vector<double>>(n.attrs.at("bn_mean"))),
                     tensor(std::get<std::vector<double>>(n.attrs.at("bn_std")))});
    } else if (n.op == OpKind::BatchNorm && n.inputs.size() == 5) {
      bool constant = true;
      for (size_t k = 1; k < 5; ++k) constant = constant && n.inputs[k] >= 0 && g.is_const(n.inputs[k]);
      if (!constant) continue;
      auto d = [&](int v) { return g.const_tensor(v).to(at::kDouble); };
      const at::Tensor var = d(n.inputs[4]);
      out.push_back({n.name, d(n.inputs[2]).to(at::kFloat),
                     (d(n.inputs[1]).abs() * at::sqrt(var / (var + n.getf("epsilon", 1e-5)))).to(at::kFloat)});
    }
  }
  return out;
}

double batchnorm_statistics_gap(const Graph& g, const at::Tensor& images) {
  const auto targets = batchnorm_targets(g);
  if (targets.empty()) fail("BatchNorm statistics: the model has no BatchNorm with running statistics");
  if (images.size(0) < 2) fail("BatchNorm statistics: at least 2 images, got {}", images.size(0));
  std::map<std::string, const BatchNormTarget*> by_name;
  for (const auto& t : targets) by_name[t.node] = &t;
  at::InferenceMode guard;
  double sum = 0;
  int64_t layers = 0;
  ExecHooks h;
  h.on_output = [&](const Node& node, const std::vector<at::Tensor>& outs) {
    auto it = by_name.find(node.name);
    if (it == by_name.end() || outs[0].dim() < 2 || outs[0].size(1) != it->second->mean.numel()) return;
    sum += batchnorm_gap(outs[0], *it->second).item<double>();
    ++layers;
  };
  Executor(g).run(images, &h);
  if (layers == 0) fail("BatchNorm statistics: no BatchNorm output was seen");
  return sum / static_cast<double>(layers);
}

std::vector<std::string> attention_output_layers(const Graph& g) {
  const auto readers = g.consumers();
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (const auto& n : g.nodes) {
    if (!(n.roles & kAttnV)) continue;
    std::vector<int> stack = {n.outputs[0]};
    while (!stack.empty()) {
      const int v = stack.back();
      stack.pop_back();
      for (int r : readers[static_cast<size_t>(v)]) {
        const Node& q = g.nodes[static_cast<size_t>(r)];
        if (is_data_movement(q.op)) {
          stack.push_back(q.outputs[0]);
        } else if ((q.op == OpKind::Linear || q.op == OpKind::Conv2d) && seen.insert(q.name).second) {
          out.push_back(q.name);
        }
      }
    }
  }
  // graph order
  std::vector<std::string> ordered;
  for (const auto& n : g.nodes)
    if (seen.count(n.name) && std::find(ordered.begin(), ordered.end(), n.name) == ordered.end()) ordered.push_back(n.name);
  return ordered;
}

bool parse_synthetic_calib(const std::string& calib, int64_t* count) {
  if (calib != "synthetic" && calib.rfind("synthetic:", 0) != 0) return false;  // a folder (./synthetic for one so named)
  std::smatch m;
  if (!std::regex_match(calib, m, std::regex(R"(synthetic(:(\d{1,6}))?)")))
    fail("--calib {}: expected 'synthetic' or 'synthetic:N' (N images, 1-1024)", calib);
  *count = m[2].matched ? std::stoll(m[2]) : 0;
  if (m[2].matched && (*count < 1 || *count > 1024)) fail("--calib {}: N must be in 1-1024", calib);
  return true;
}

at::Tensor synthesize_calibration(const Graph& g, const SyntheticOptions& o) {
  if (o.images < 1) fail("synthetic calibration: at least 1 image, got {}", o.images);
  if (o.iters < 0) fail("synthetic calibration: iterations must be >= 0, got {}", o.iters);
  if (g.meta.num_classes < 1) fail("synthetic calibration: the model has no classes to aim at");
  c10::InferenceMode not_inference(false);
  at::AutoGradMode grad_on(true);
  const auto& p = g.meta.preprocess;
  const int64_t n = o.images, H = p.input_height, W = p.input_width;
  // the pixel range [0, 1] after normalisation, per channel
  at::Tensor mean = at::tensor(std::vector<float>(p.mean.begin(), p.mean.end())).view({1, 3, 1, 1});
  at::Tensor stdv = at::tensor(std::vector<float>(p.std.begin(), p.std.end())).view({1, 3, 1, 1});
  const at::Tensor lo = (0 - mean) / stdv, hi = (1 - mean) / stdv;

  auto gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  // the parameters Adam moves: the pixels (White) or the octaves (Natural, whose steps then keep the spectrum)
  std::optional<Octaves> octaves;
  std::vector<at::Tensor> params;
  if (o.init == SyntheticInit::Natural) {
    octaves.emplace(n, H, W, gen);
    params = octaves->z;
  } else {
    params = {at::randn({n, 3, H, W}, gen, at::kFloat).clamp(lo, hi)};
  }
  at::Tensor x = octaves ? octaves->image().clamp(lo, hi) : params[0];
  const at::Tensor targets = at::randint(0, g.meta.num_classes, {n}, gen, at::kLong);
  Executor ex(g);
  const auto bn_targets = o.bn_weight > 0 ? batchnorm_targets(g) : std::vector<BatchNormTarget>{};
  std::map<std::string, const BatchNormTarget*> bn_by_name;
  for (const auto& t : bn_targets) bn_by_name[t.node] = &t;
  const auto attn = attention_output_layers(g);
  const std::set<std::string> attn_set(attn.begin(), attn.end());
  // the similarity pairs sampled once (per token count: Swin's windows and stages differ)
  std::map<int64_t, at::Tensor> pairs;
  auto pairs_for = [&](int64_t tokens) {
    auto it = pairs.find(tokens);
    if (it == pairs.end()) {
      const int64_t m = std::min<int64_t>(256, tokens * tokens);
      it = pairs.emplace(tokens, at::randperm(tokens * tokens, gen, at::kLong).narrow(0, 0, m)).first;
    }
    return it->second;
  };

  std::vector<at::Tensor> m1, m2;
  for (const auto& t : params) {
    m1.push_back(at::zeros_like(t));
    m2.push_back(at::zeros_like(t));
  }
  const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
  const std::string what = bn_targets.empty() ? fmt::format("{} attention blocks", attn.size())
                                              : fmt::format("{} attention blocks, {} BatchNorms", attn.size(), bn_targets.size());
  Progress bar(fmt::format("synthesising {} calibration images ({})", n, what), static_cast<size_t>(o.iters), o.progress);
  double last_ce = 0, last_ent = 0, last_bn = 0;
  auto status = [&] {
    std::string line = fmt::format("cross-entropy {:.3f}, patch-similarity entropy {:.3f}", last_ce, last_ent);
    if (!bn_targets.empty()) line += fmt::format(", BatchNorm statistics gap {:.3f}", last_bn);
    return line;
  };
  for (int it = 0; it < o.iters; ++it) {
    at::Tensor grad = at::zeros_like(x);
    double ce_sum = 0, ent_sum = 0, bn_sum = 0;
    for (int64_t b = 0; b < n; b += o.chunk) {
      const int64_t k = std::min(o.chunk, n - b);
      at::Tensor xc = x.narrow(0, b, k).clone().set_requires_grad(true);
      std::vector<at::Tensor> entropies, bn_gaps;
      ExecHooks h;
      h.on_output = [&](const Node& node, const std::vector<at::Tensor>& outs) {
        if (auto it = bn_by_name.find(node.name); it != bn_by_name.end()) {
          // statistics of one image's single pixel say nothing: need two values per channel
          const at::Tensor& y = outs[0];
          if (y.dim() >= 2 && y.size(1) == it->second->mean.numel() && y.numel() / y.size(1) >= 2)
            bn_gaps.push_back(batchnorm_gap(y, *it->second));
        }
        if (!attn_set.count(node.name)) return;
        at::Tensor t = outs[0];
        if (t.dim() == 4) t = t.flatten(2).transpose(1, 2);  // a Conv's [B, C, H, W] output as tokens
        if (t.dim() < 3 || t.size(-2) < 2) return;
        entropies.push_back(similarity_entropy(t, pairs_for(t.size(-2))));
      };
      at::Tensor logits = ex.run(xc, &h);
      at::Tensor ce = at::cross_entropy_loss(logits, targets.narrow(0, b, k));
      at::Tensor loss = ce + o.tv_weight * total_variation(xc);
      if (!entropies.empty()) {
        at::Tensor ent = at::stack(entropies).mean();
        loss = loss - o.patch_weight * ent;
        ent_sum += ent.item<double>() * static_cast<double>(k);
      }
      if (!bn_gaps.empty()) {
        at::Tensor gap = at::stack(bn_gaps).mean();
        loss = loss + o.bn_weight * gap;
        bn_sum += gap.item<double>() * static_cast<double>(k);
      }
      // each chunk's loss is a mean over its images: weight it by its share of the batch
      (loss * (static_cast<double>(k) / static_cast<double>(n))).backward();
      grad.narrow(0, b, k).copy_(xc.grad());
      ce_sum += ce.item<double>() * static_cast<double>(k);
    }
    if (!std::isfinite(ce_sum) || !at::isfinite(grad).all().item<bool>())
      fail("synthetic calibration: the loss went non-finite at step {} (try a smaller learning rate)", it + 1);
    std::vector<at::Tensor> grads = {grad};
    if (octaves) {  // the gradient of the loss with respect to the octaves, through the rendering
      for (auto& z : octaves->z) z = z.detach().set_requires_grad(true);
      octaves->image().clamp(lo, hi).backward(grad);
      grads.clear();
      for (auto& z : octaves->z) grads.push_back(z.grad());
    }
    {  // Adam
      at::NoGradGuard no_grad;
      const double c1 = 1 - std::pow(b1, it + 1), c2 = 1 - std::pow(b2, it + 1);
      for (size_t k = 0; k < params.size(); ++k) {
        m1[k].mul_(b1).add_(grads[k], 1 - b1);
        m2[k].mul_(b2).addcmul_(grads[k], grads[k], 1 - b2);
        const at::Tensor step = o.lr * (m1[k] / c1) / ((m2[k] / c2).sqrt() + eps);
        if (octaves)
          octaves->z[k] = octaves->z[k].detach() - step;
        else
          params[k] = (params[k] - step).clamp(lo, hi);
      }
      x = octaves ? octaves->image().clamp(lo, hi) : params[0];
    }
    last_ce = ce_sum / static_cast<double>(n);
    last_ent = ent_sum / static_cast<double>(n);
    last_bn = bn_sum / static_cast<double>(n);
    bar.update(static_cast<size_t>(it + 1), status());
  }
  bar.finish(status());
  return x.detach().contiguous();
}

}  // namespace vitq
