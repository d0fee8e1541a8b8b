#include "vitq/quant/synthetic.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <regex>
#include <set>

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

// The images as Natural (see SyntheticInit) parameterises them: octaves z_s of white noise, s = 1, 2, 4, ... up to
// a quarter of the image size, x = (sum_s sqrt(s) up(z_s) - mu) / sigma with mu (per image and channel) and sigma
// (per image) those of the starting sum, so that the start has zero mean and unit deviation.
struct Octaves {
  std::vector<at::Tensor> z;
  std::vector<double> weight;
  at::Tensor mu, sigma;
  int64_t H = 0, W = 0;

  Octaves(int64_t n, int64_t h, int64_t w, at::Generator& gen) : H(h), W(w) {
    for (int64_t cell = 1; cell <= std::min(H, W) / 4; cell *= 2) {
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
  Progress bar(fmt::format("synthesising {} calibration images ({} attention blocks)", n, attn.size()), static_cast<size_t>(o.iters),
               o.progress);
  double last_ce = 0, last_ent = 0;
  for (int it = 0; it < o.iters; ++it) {
    at::Tensor grad = at::zeros_like(x);
    double ce_sum = 0, ent_sum = 0;
    for (int64_t b = 0; b < n; b += o.chunk) {
      const int64_t k = std::min(o.chunk, n - b);
      at::Tensor xc = x.narrow(0, b, k).clone().set_requires_grad(true);
      std::vector<at::Tensor> entropies;
      ExecHooks h;
      h.on_output = [&](const Node& node, const std::vector<at::Tensor>& outs) {
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
    bar.update(static_cast<size_t>(it + 1), fmt::format("cross-entropy {:.3f}, patch-similarity entropy {:.3f}", last_ce, last_ent));
  }
  bar.finish(fmt::format("cross-entropy {:.3f}, patch-similarity entropy {:.3f}", last_ce, last_ent));
  return x.detach().contiguous();
}

}  // namespace vitq
