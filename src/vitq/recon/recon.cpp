#include "vitq/recon/recon.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <torch/optim/adam.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <random>
#include <set>

#include "vitq/quant/fake_quant.h"
#include "vitq/recon/learnable.h"
#include "vitq/util/allocator.h"
#include "vitq/util/error.h"

namespace vitq::recon {

// ---------------------------------------------------------------------------------------------- options
void ReconOptions::validate() const {
  if (mode != "layer" && mode != "block") fail("--reconstruct must be layer or block, got '{}'", mode);
  if (iters < 1 || iters > 1000000) fail("--recon-iters must be between 1 and 1000000, got {}", iters);
  if (batch < 1 || batch > 4096) fail("--recon-batch must be between 1 and 4096, got {}", batch);
  if (images < 0) fail("--recon-images must be 0 (all) or positive, got {}", images);
  for (auto [name, v] : {std::pair{"--recon-lr-round", lr_round}, {"--recon-lr-scale", lr_scale}, {"--recon-lr-zero-point", lr_zero_point}, {"--recon-lr-log", lr_log}})
    if (!(v >= 0) || !std::isfinite(v) || v > 10) fail("{} must be a finite learning rate in [0, 10], got {}", name, v);
  if (!(round_weight >= 0) || !std::isfinite(round_weight)) fail("rounding regulariser weight must be finite and >= 0");
  if (!(warmup >= 0 && warmup < 1)) fail("recon warm-up must be in [0, 1), got {}", warmup);
  if (!(beta_start >= beta_end && beta_end > 0) || !std::isfinite(beta_start)) fail("AdaRound's β must go from a larger to a smaller positive value");
  if (loss != "fisher" && loss != "fisher-dplr" && loss != "mse")
    fail("--recon-loss must be fisher, fisher-dplr or mse, got '{}'", loss);
  if (!(fisher_damping >= 0) || !std::isfinite(fisher_damping) || fisher_damping > 1e6)
    fail("--recon-damping must be a finite number in [0, 1e6], got {}", fisher_damping);
  if (fisher_damping > 0 && loss == "mse")
    fail("--recon-damping {} mixes plain squared error into the Fisher weights; with --recon-loss mse there are none", fisher_damping);
  if (!(memory_available >= 0) || !std::isfinite(memory_available)) fail("reconstruction: memory_available must be >= 0 bytes");
  if (augment < 0 || augment > 64) fail("--recon-augment must be between 0 and 64 views an image, got {}", augment);
  if (!(qdrop >= 0 && qdrop < 1)) fail("--qdrop must be a probability in [0, 1), got {}", qdrop);
  if (!learn_rounding && !learn_steps) fail("reconstruction with nothing to learn (rounding and steps both off)");
  if (learn_log && !learn_steps)
    fail("reconstruction: learning the AdaLog quantizers (learn_log) needs learn_steps on; "
         "with the steps fixed it would learn nothing more");
  if (token_scales && !learn_steps)
    fail("reconstruction: token-wise activation steps (--recon-token-scales) need learn_steps on; with the steps fixed "
         "every token would keep the per-tensor step");
  bool cuda = false;
  try {
    c10::Device d(device);
    if (!d.is_cpu() && !d.is_cuda()) throw std::runtime_error("other device");
    cuda = d.is_cuda();
  } catch (const std::exception&) {
    fail("--device must be cpu or cuda[:N], got '{}'", device);
  }
  if (cuda && !at::hasCUDA()) fail("--device {}: this vitq's libtorch has no CUDA support or no GPU is visible", device);
}

nlohmann::json ReconOptions::to_json() const {
  return {{"mode", mode}, {"iters", iters}, {"batch", batch}, {"images", images}, {"lr_round", lr_round}, {"lr_scale", lr_scale},
          {"lr_zero_point", lr_zero_point}, {"lr_log", lr_log}, {"round_weight", round_weight}, {"warmup", warmup}, {"beta", {beta_start, beta_end}},
          {"loss", loss}, {"fisher_damping", fisher_damping}, {"augment", augment}, {"qdrop", qdrop}, {"learn_rounding", learn_rounding}, {"learn_steps", learn_steps}, {"learn_log", learn_log}, {"seed", seed},
          {"device", device}};
}

// ---------------------------------------------------------------------------------------------- blocks
namespace {

// Rows per image of a tensor whose rows are grouped per image, `images` of them; otherwise a one-line error that
// starts with `what`.
int64_t rows_per_image(const at::Tensor& t, int64_t images, const char* what) {
  if (images < 1 || t.dim() == 0 || t.size(0) % images != 0)
    fail("{}: {} rows are not a whole number of rows per image ({} images)", what, t.dim() ? t.size(0) : 0, images);
  return t.size(0) / images;
}

// Values computed from constants alone (a gathered position bias): the same for every image.
std::vector<bool> static_values(const Graph& g) {
  std::vector<bool> s(g.values.size(), false);
  for (size_t v = 0; v < g.values.size(); ++v) s[v] = g.is_const(static_cast<int>(v));
  for (const auto& n : g.nodes) {
    bool all = !n.inputs.empty();
    for (int u : n.inputs) all = all && (u < 0 || s[static_cast<size_t>(u)]);
    for (int v : n.outputs) s[static_cast<size_t>(v)] = all;
  }
  return s;
}

std::vector<int> last_use(const Graph& g) {
  std::vector<int> last(g.values.size(), -1);
  for (size_t i = 0; i < g.nodes.size(); ++i)
    for (int v : g.nodes[i].inputs)
      if (v >= 0) last[static_cast<size_t>(v)] = static_cast<int>(i);
  return last;
}

// live[p]: per-image activation values alive between node p - 1 and node p (made before p, read at p or later)
std::vector<int> live_counts(const Graph& g) {
  const auto stat = static_values(g);
  const auto last = last_use(g);
  std::vector<int> diff(g.nodes.size() + 2, 0);
  for (size_t v = 0; v < g.values.size(); ++v) {
    if (stat[v] || last[v] < 0) continue;
    const int from = g.values[v].producer + 1;  // the image: producer -1, alive from position 0
    diff[static_cast<size_t>(from)] += 1;
    diff[static_cast<size_t>(last[v]) + 1] -= 1;
  }
  std::vector<int> live(g.nodes.size() + 1, 0);
  int run = 0;
  for (size_t p = 0; p <= g.nodes.size(); ++p) live[p] = run += diff[p];
  return live;
}

// "blocks.3.attn.qkv" -> "blocks.3"; "stages.2.1.conv_kxk.conv" -> "stages.2.1"; "head" -> "head"
std::string scope_key(const std::string& name) {
  size_t end = std::string::npos;
  size_t start = 0;
  while (start <= name.size()) {
    size_t dot = name.find('.', start);
    const size_t stop = dot == std::string::npos ? name.size() : dot;
    const std::string part = name.substr(start, stop - start);
    if (!part.empty() && part.find_first_not_of("0123456789") == std::string::npos) end = stop;
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return end == std::string::npos ? name : name.substr(0, end);
}

std::map<std::string, size_t> node_index(const Graph& g) {
  std::map<std::string, size_t> idx;
  for (size_t i = 0; i < g.nodes.size(); ++i) idx.emplace(g.nodes[i].name, i);
  return idx;
}

}  // namespace

Block make_block(const Graph& g, size_t begin, size_t end, const std::string& name) {
  if (begin >= end || end > g.nodes.size()) fail("block {}: empty or out-of-range node range [{}, {})", name, begin, end);
  const auto stat = static_values(g);
  const auto last = last_use(g);
  Block b;
  b.name = name;
  b.begin = begin;
  b.end = end;
  std::set<int> seen;
  for (size_t i = begin; i < end; ++i) {
    for (int v : g.nodes[i].inputs) {
      if (v < 0 || g.is_const(v) || !seen.insert(v).second) continue;
      if (g.values[static_cast<size_t>(v)].producer < static_cast<int>(begin)) b.inputs.push_back(v);
    }
  }
  for (size_t i = begin; i < end; ++i)
    for (int v : g.nodes[i].outputs)
      if (!stat[static_cast<size_t>(v)] && (v == g.output || last[static_cast<size_t>(v)] >= static_cast<int>(end))) b.outputs.push_back(v);
  if (b.outputs.empty()) fail("block {}: nothing it computes is read after it", name);
  return b;
}

Block bridge_block(const Graph& g, const BridgeBlock& bridge) {
  const auto idx = node_index(g);
  size_t lo = g.nodes.size(), hi = 0;
  for (const auto& l : bridge.layers) {
    auto it = idx.find(l);
    if (it == idx.end()) fail("bridge block {}: layer {} is not in the model", bridge.name, l);
    lo = std::min(lo, it->second);
    hi = std::max(hi, it->second + 1);
  }
  if (lo >= hi) fail("bridge block {} has no layers", bridge.name);
  return make_block(g, lo, hi, "bridge " + bridge.name);
}

std::vector<Block> plan_blocks(const Graph& g, const QuantPlan& plan, const std::string& mode, const std::vector<BridgeBlock>& joint) {
  if (mode != "layer" && mode != "block") fail("reconstruction mode must be layer or block, got '{}'", mode);
  std::set<std::string> planned;
  for (const auto& p : plan.points) planned.insert(p.node);
  struct Unit {
    size_t begin, end;
    std::string name;
    bool fixed;  // a bridge block: not widened
  };
  std::vector<Unit> units;
  const auto idx = node_index(g);
  for (const auto& br : joint) {
    bool any = false;
    for (const auto& l : br.layers) any = any || planned.count(l);
    if (!any) continue;
    Block b = bridge_block(g, br);
    units.push_back({b.begin, b.end, b.name, true});
  }
  std::sort(units.begin(), units.end(), [](const Unit& a, const Unit& b) { return a.begin < b.begin; });
  for (size_t k = 1; k < units.size();) {  // overlapping bridge blocks become one
    if (units[k].begin < units[k - 1].end) {
      units[k - 1].end = std::max(units[k - 1].end, units[k].end);
      units[k - 1].name += " + " + units[k].name.substr(7);
      units.erase(units.begin() + static_cast<long>(k));
    } else {
      ++k;
    }
  }
  auto in_bridge = [&](size_t i) {
    for (const auto& u : units)
      if (i >= u.begin && i < u.end) return true;
    return false;
  };
  std::vector<Unit> runs;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    if (!is_quantizable(g, n) || !planned.count(n.name) || in_bridge(i)) continue;
    const std::string key = mode == "layer" ? n.name : scope_key(n.name);
    bool extend = !runs.empty() && mode == "block" && runs.back().name == key;
    if (extend)  // no bridge block in between
      for (size_t j = runs.back().end; j < i && extend; ++j) extend = !in_bridge(j);
    if (extend) runs.back().end = i + 1;
    else runs.push_back({i, i + 1, key, false});
  }
  units.insert(units.end(), runs.begin(), runs.end());
  std::sort(units.begin(), units.end(), [](const Unit& a, const Unit& b) { return a.begin < b.begin; });
  if (mode == "block") {  // widen to the nearest single-tensor cuts that stay clear of the neighbours
    const auto live = live_counts(g);
    for (size_t k = 0; k < units.size(); ++k) {
      if (units[k].fixed) continue;
      const size_t floor_begin = k == 0 ? 0 : units[k - 1].end;
      const size_t ceil_end = k + 1 == units.size() ? g.nodes.size() : units[k + 1].begin;
      size_t b = units[k].begin;
      while (b > floor_begin && live[b] > 1) --b;
      if (live[b] <= 1) units[k].begin = b;
      size_t e = units[k].end;
      while (e < ceil_end && live[e] > 1) ++e;
      if (live[e] <= 1) units[k].end = e;
    }
  }
  std::vector<Block> blocks;
  for (const auto& u : units) blocks.push_back(make_block(g, u.begin, u.end, u.name));
  return blocks;
}

// ---------------------------------------------------------------------------------------------- fisher
std::map<int, at::Tensor> fisher_gradients(const Graph& g, const at::Tensor& images, uint64_t seed, const std::vector<int>& values,
                                           const c10::Device& device) {
  c10::InferenceMode not_inference(false);
  at::AutoGradMode grad_on(true);
  Executor ex(g, device);
  const std::set<int> want(values.begin(), values.end());
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  // each value's gradients written into one tensor made at the first chunk (rows per image known from it):
  // gathering the chunks and concatenating them held every gradient twice at the end, 2 × 14 outputs × 3000 images
  // of DeiT-Tiny (13 GB) with --recon-augment 2 on 1000 images
  std::map<int, at::Tensor> out;
  const int64_t total = images.size(0);
  const int64_t chunk = device.is_cuda() ? 32 : 4;
  for (int64_t b = 0; b < images.size(0); b += chunk) {
    std::map<int, at::Tensor> outs;
    ExecHooks h;
    h.on_output = [&](const Node& n, const std::vector<at::Tensor>& o) {
      for (size_t k = 0; k < o.size(); ++k)
        if (want.count(n.outputs[k]) && o[k].requires_grad()) {
          o[k].retain_grad();
          outs[n.outputs[k]] = o[k];
        }
    };
    auto x = images.narrow(0, b, std::min(chunk, images.size(0) - b)).to(device, at::kFloat).clone().set_requires_grad(true);
    auto logp = at::log_softmax(ex.run(x, &h), -1);
    auto p = logp.detach().exp().to(at::kDouble).cumsum(-1).cpu().contiguous();
    std::vector<int64_t> labels;
    for (int64_t i = 0; i < p.size(0); ++i) {
      const double u = uniform(rng) * p[i][-1].item<double>();
      labels.push_back(std::min<int64_t>(at::searchsorted(p[i], at::scalar_tensor(u, at::kDouble)).item<int64_t>(), p.size(1) - 1));
    }
    auto loss = -logp.gather(1, at::tensor(labels).unsqueeze(1).to(device)).sum();
    loss.backward();
    const int64_t n = x.size(0);
    for (auto& [v, o] : outs) {
      const at::Tensor gr = o.grad().defined() ? o.grad().detach() : at::zeros_like(o).detach();
      const int64_t rows = rows_per_image(gr, n, "fisher gradients");
      auto it = out.find(v);
      if (it == out.end()) {
        std::vector<int64_t> shape = gr.sizes().vec();
        shape[0] = rows * total;
        it = out.emplace(v, at::empty(shape, gr.options())).first;
      }
      it->second.narrow(0, b * rows, n * rows).copy_(gr);
    }
  }
  for (int v : values)
    if (!out.count(v)) fail("fisher gradients: value {} is not computed from the image", g.values[static_cast<size_t>(v)].name);
  return out;
}

// ---------------------------------------------------------------------------------------------- loss
at::Tensor block_loss(const std::vector<at::Tensor>& outs, const std::vector<at::Tensor>& targets, const std::vector<at::Tensor>& weights,
                      const std::vector<at::Tensor>& directions, int64_t n_images) {
  if (targets.size() != outs.size() || (!weights.empty() && weights.size() != outs.size()) ||
      (!directions.empty() && directions.size() != outs.size()))
    fail("block loss: {} outputs, {} targets, {} weights and {} directions", outs.size(), targets.size(), weights.size(), directions.size());
  at::Tensor loss, along;  // along: per image, Σ over every output of direction · (out − target)
  for (size_t k = 0; k < outs.size(); ++k) {
    auto diff = outs[k] - targets[k];
    auto d = diff.pow(2);
    if (!weights.empty()) d = d * weights[k];
    auto s = d.sum();
    loss = loss.defined() ? loss + s : s;
    if (!directions.empty()) {
      rows_per_image(diff, n_images, "block loss: an output");
      auto a = (diff * directions[k]).reshape({n_images, -1}).sum(1);
      along = along.defined() ? along + a : a;
    }
  }
  if (along.defined()) loss = loss + along.pow(2).sum();
  return loss;
}

// ---------------------------------------------------------------------------------------------- one block
namespace {

// Rows of t that belong to images `idx` of `images` (t is [images·k, ...]).
at::Tensor rows_of(const at::Tensor& t, const at::Tensor& idx, int64_t images) {
  const int64_t k = rows_per_image(t, images, "a block tensor");
  std::vector<int64_t> shape = t.sizes().vec();
  std::vector<int64_t> grouped = {images, k};
  grouped.insert(grouped.end(), shape.begin() + 1, shape.end());
  auto sel = t.reshape(grouped).index_select(0, idx.to(t.device()));
  shape[0] = idx.numel() * k;
  return sel.reshape(shape);
}

struct Trainable {
  QuantPoint* point = nullptr;
  size_t node = 0;
  // weights (AdaRound)
  at::Tensor w_floor, v, scale_full, zp_full;
  // activations (LSQ; AdaLog: log_scale and log_tau)
  at::Tensor log_scale, zero_point, log_tau;
  double shift = 0;
  bool learned = false;
};

class BlockTrainer {
 public:
  BlockTrainer(const Executor& ex, QuantPlan& plan, const Block& b, const ReconOptions& o)
      : ex_(ex), g_(ex.graph()), b_(b), o_(o), dev_(ex.device()) {
    std::map<std::string, size_t> in_block;
    for (size_t i = b.begin; i < b.end; ++i) in_block.emplace(g_.nodes[i].name, i);
    for (auto& p : plan.points) {
      auto it = in_block.find(p.node);
      if (it == in_block.end()) continue;
      Trainable t;
      t.point = &p;
      t.node = it->second;
      const Node& n = g_.nodes[it->second];
      if (p.weight) {
        const at::Tensor w = plan_weight(plan, p.node, g_.const_tensor(n.inputs[static_cast<size_t>(p.slot)])).to(dev_, at::kFloat);
        t.scale_full = full_scale(p, w).to(dev_).clone();
        t.zp_full = full_zero_point(p, w).to(dev_).clone();
        if (o.learn_rounding && p.spec.kind == QuantKind::Uniform) {
          auto ws = w / t.scale_full;
          t.w_floor = at::floor(ws);
          t.v = rect_sigmoid_inverse(ws - t.w_floor).set_requires_grad(true);
          t.learned = true;
        }
      } else if (o.learn_steps && p.spec.kind == QuantKind::Uniform) {
        t.log_scale = at::log(p.params.scale.to(dev_, at::kFloat)).clone().set_requires_grad(true);
        if (!p.spec.symmetric) t.zero_point = p.params.zero_point.to(dev_, at::kFloat).clone().set_requires_grad(true);
        t.learned = true;
      } else if (o.learn_steps && o.learn_log && p.spec.kind == QuantKind::AdaLog) {
        t.log_scale = at::log(p.params.scale.to(dev_, at::kFloat)).clone().set_requires_grad(true);
        t.log_tau = at::log(p.params.base.to(dev_, at::kFloat)).clone().set_requires_grad(true);
        t.shift = log_shift(p.spec, p.params);
        t.learned = true;
      }
      points_.push_back(std::move(t));
    }
    for (auto& t : points_) {
      const auto key = std::make_pair(t.node, static_cast<size_t>(t.point->slot));
      by_edge_[key] = &t;
      if (!t.point->weight && !t.learned) {
        const auto& pp = t.point->params;
        // clones: the plan's tensors may be inference tensors (made under InferenceMode), which autograd cannot save
        fixed_params_[key] = pp.to(dev_, true);
      }
      if (t.point->weight && !t.learned) {
        const Node& n = g_.nodes[t.node];
        // on the CPU, where the plan's parameters are, then moved
        fixed_weights_[key] =
            quantize_point(*t.point, plan_weight(plan, n.name, g_.const_tensor(n.inputs[static_cast<size_t>(t.point->slot)])).to(at::kFloat))
                .to(dev_)
                .clone();
      }
    }
    for (const auto& [node, bias] : plan.bias) {
      auto it = in_block.find(node);
      if (it != in_block.end()) bias_[it->second] = bias.to(dev_, at::kFloat).clone();
    }
    for (const auto& op : plan.int_ops) {
      auto it = in_block.find(op.node);
      if (it != in_block.end()) int_ops_[it->second] = &op;
    }
  }

  int points() const { return static_cast<int>(points_.size()); }
  int learned() const {
    int k = 0;
    for (const auto& t : points_) k += t.learned;
    return k;
  }
  std::vector<at::Tensor> params() const {
    std::vector<at::Tensor> ps;
    for (const auto& t : points_) {
      if (t.v.defined()) ps.push_back(t.v);
      if (t.log_scale.defined()) ps.push_back(t.log_scale);
      if (t.zero_point.defined()) ps.push_back(t.zero_point);
      if (t.log_tau.defined()) ps.push_back(t.log_tau);
    }
    return ps;
  }
  std::vector<torch::optim::OptimizerParamGroup> groups() const {
    std::vector<at::Tensor> round, scale, zp, log;
    for (const auto& t : points_) {
      if (t.v.defined()) round.push_back(t.v);
      if (t.log_tau.defined()) {
        log.push_back(t.log_scale);
        log.push_back(t.log_tau);
      } else if (t.log_scale.defined()) {
        scale.push_back(t.log_scale);
      }
      if (t.zero_point.defined()) zp.push_back(t.zero_point);
    }
    std::vector<torch::optim::OptimizerParamGroup> gs;
    auto add = [&](std::vector<at::Tensor> ts, double lr) {
      if (!ts.empty()) gs.emplace_back(std::move(ts), std::make_unique<torch::optim::AdamOptions>(lr));
    };
    add(round, o_.lr_round);
    add(scale, o_.lr_scale);
    add(zp, o_.lr_zero_point);
    add(log, o_.lr_log);
    return gs;
  }
  at::Tensor regularizer(double beta) const {
    at::Tensor r = at::zeros({}, at::TensorOptions().device(dev_));
    for (const auto& t : points_)
      if (t.v.defined()) r = r + rounding_regularizer(t.v, beta);
    return r;
  }

  // Block outputs for the given inputs (rows of `n_images` images). `hard`: learned rounding at floor/ceil;
  // `gen`: QDrop's random source (null: no QDrop).
  std::vector<at::Tensor> forward(const std::vector<at::Tensor>& inputs, int64_t n_images, bool hard, at::Generator* gen) {
    std::map<size_t, at::Tensor> weights;
    for (auto& t : points_)
      if (t.v.defined())
        weights[t.node * 64 + static_cast<size_t>(t.point->slot)] =
            adaround_weight(t.w_floor, t.v, t.scale_full, t.zp_full, t.point->spec, hard);
    ExecHooks h;
    h.transform_input = [&](const Node& n, size_t slot, const at::Tensor& x) -> at::Tensor {
      const size_t i = static_cast<size_t>(&n - g_.nodes.data());
      if (slot == 2) {
        auto bi = bias_.find(i);
        if (bi != bias_.end()) return bi->second;
      }
      auto it = by_edge_.find({i, slot});
      if (it == by_edge_.end()) return x;
      Trainable& t = *it->second;
      if (t.point->weight) {
        if (t.v.defined()) return weights.at(i * 64 + slot);
        return fixed_weights_.at({i, slot});
      }
      at::Tensor q;
      if (t.log_tau.defined()) q = adalog_fake_quant(x, t.point->spec, at::exp(t.log_scale), at::clamp(at::exp(t.log_tau), 0.25, 8.0), t.shift);
      else if (t.log_scale.defined()) q = lsq_fake_quant(x, t.point->spec, at::exp(t.log_scale), t.zero_point);
      else q = fake_quant(x, t.point->spec, fixed_params_.at({i, slot}));
      if (gen && o_.qdrop > 0) {
        // x where kept, q elsewhere: x·keep + q·(1 − keep) with 0/1 factors is exactly at::where's value and
        // gradients for finite x and q, and runs vectorised; where's CPU kernel branches on every element of a
        // random mask (a branch mispredicted half the time) and was a quarter of a step on 2 cores
        auto [keep, drop] = qdrop_masks(x, *gen);
        q = x * keep + q * drop;
      }
      return q;
    };
    h.replace = [&](const Node& n, const std::vector<at::Tensor>& args) -> std::vector<at::Tensor> {
      const size_t i = static_cast<size_t>(&n - g_.nodes.data());
      auto it = int_ops_.find(i);
      if (it == int_ops_.end()) return {};
      QuantPoint in = *by_edge_.at({i, 0})->point;  // integer ops read a fixed (PTF / uniform) input quantizer
      auto fp = run_node(n, args, n_images)[0];
      std::vector<at::Tensor> plain;
      for (const auto& a : args) plain.push_back(a.defined() ? a.detach() : a);
      auto q = run_int_op(*it->second, in, plain);
      return {fp + (q - fp).detach()};  // straight-through
    };
    std::vector<at::Tensor> vals = ex_.constants();
    for (size_t k = 0; k < b_.inputs.size(); ++k) vals[static_cast<size_t>(b_.inputs[k])] = inputs[k];
    // values of constants alone that the block reads (made before it, e.g. a gathered bias) are recomputed here
    ex_.run_range(vals, b_.begin, b_.end, n_images, &h);
    std::vector<at::Tensor> outs;
    for (int v : b_.outputs) outs.push_back(vals[static_cast<size_t>(v)]);
    return outs;
  }

  // QDrop's masks as 0/1 floats, (keep, 1 − keep): keep is 1 (leave the value unquantized) with probability qdrop
  // per element. Drawn as a window at a random offset of a pool of random bytes made once per block (one random
  // number per element per step from the generator would cost more than the block's forward pass on 2 cores),
  // turned into the two float pools once, so that a step only takes views of them.
  std::pair<at::Tensor, at::Tensor> qdrop_masks(const at::Tensor& x, at::Generator& gen) {
    const int64_t n = x.numel();
    if (!keep_pool_.defined() || keep_pool_.numel() < 2 * n) {
      const int64_t size = std::max<int64_t>(int64_t{1} << 22, 4 * n);
      const int64_t threshold = std::lround(o_.qdrop * 256.0);
      auto bytes = at::randint(0, 256, {size}, gen, at::TensorOptions().dtype(at::kByte)).to(x.device());
      keep_pool_ = (bytes < threshold).to(at::kFloat);
      drop_pool_ = 1.0 - keep_pool_;
    }
    const int64_t off = at::randint(0, keep_pool_.numel() - n + 1, {1}, gen, at::TensorOptions().dtype(at::kLong)).item<int64_t>();
    return {keep_pool_.narrow(0, off, n).view(x.sizes()), drop_pool_.narrow(0, off, n).view(x.sizes())};
  }

  // Writes the learned parameters into the plan; returns how many zero points had to be clamped onto the grid.
  int64_t write_back() {
    int64_t clamped = 0;
    for (auto& t : points_) {
      QuantPoint& p = *t.point;
      if (t.v.defined()) p.codes = adaround_codes(t.w_floor, t.v.detach(), t.zp_full, p.spec).cpu();
      if (t.log_scale.defined()) {
        auto s = at::clamp_min(at::exp(t.log_scale.detach()), 1e-8).cpu().reshape(p.params.scale.sizes());
        p.params.scale = s;
        // τ within the range the plan format (and the integer runtime) accepts
        if (t.log_tau.defined()) p.params.base = at::clamp(at::exp(t.log_tau.detach()), 0.25, 8.0).cpu().reshape(p.params.base.sizes());
        if (t.zero_point.defined()) {
          auto z = at::round(t.zero_point.detach()).cpu();
          const double lo = static_cast<double>(p.spec.qmin()), hi = static_cast<double>(p.spec.qmax());
          clamped += ((z < lo) | (z > hi)).sum().item<int64_t>();
          p.params.zero_point = at::clamp(z, lo, hi).reshape(p.params.scale.sizes());
        }
      }
    }
    return clamped;
  }

 private:
  const Executor& ex_;
  const Graph& g_;
  const Block& b_;
  const ReconOptions& o_;
  c10::Device dev_;
  std::vector<Trainable> points_;
  std::map<std::pair<size_t, size_t>, Trainable*> by_edge_;
  std::map<std::pair<size_t, size_t>, QuantParams> fixed_params_;
  std::map<std::pair<size_t, size_t>, at::Tensor> fixed_weights_;
  std::map<size_t, at::Tensor> bias_;
  std::map<size_t, const IntOp*> int_ops_;
  at::Tensor keep_pool_, drop_pool_;  // QDrop's masks (qdrop_masks)
};

}  // namespace

BlockResult reconstruct_block(const Executor& ex, QuantPlan& plan, const Block& b, const std::vector<at::Tensor>& inputs,
                              const std::vector<at::Tensor>& targets, const std::vector<at::Tensor>& weights, int64_t images,
                              const ReconOptions& o, const std::vector<at::Tensor>& directions) {
  o.validate();
  const auto t0 = std::chrono::steady_clock::now();
  if (inputs.size() != b.inputs.size() || targets.size() != b.outputs.size() || (!weights.empty() && weights.size() != targets.size()) ||
      (!directions.empty() && directions.size() != targets.size()))
    fail("block {}: {} inputs and {} targets given, it reads {} and makes {}", b.name, inputs.size(), targets.size(), b.inputs.size(),
         b.outputs.size());
  if (images < 1) fail("block {}: no images to reconstruct on", b.name);
  c10::InferenceMode not_inference(false);
  at::AutoGradMode grad_on(true);
  BlockTrainer tr(ex, plan, b, o);
  BlockResult r;
  r.name = b.name;
  r.points = tr.points();
  r.learned = tr.learned();
  if (r.points == 0) fail("block {} has no quantization points to reconstruct", b.name);
  const auto dev = ex.device();
  auto to_dev = [&](const std::vector<at::Tensor>& ts) {
    std::vector<at::Tensor> out;
    for (const auto& t : ts) out.push_back(t.to(dev, at::kFloat).clone());  // normal tensors, not inference ones
    return out;
  };
  const auto x_all = to_dev(inputs), y_all = to_dev(targets), w_all = to_dev(weights), d_all = to_dev(directions);
  const auto stat = static_values(ex.graph());
  auto select = [&](const std::vector<at::Tensor>& ts, const std::vector<int>& ids, const at::Tensor& idx) {
    std::vector<at::Tensor> out;
    for (size_t k = 0; k < ts.size(); ++k) out.push_back(stat[static_cast<size_t>(ids[k])] ? ts[k] : rows_of(ts[k], idx, images));
    return out;
  };
  // loss on all images with hard rounding, in chunks of the batch size
  auto full_loss = [&]() {
    at::NoGradGuard no_grad;
    double total = 0;
    for (int64_t s = 0; s < images; s += o.batch) {
      const int64_t n = std::min<int64_t>(o.batch, images - s);
      auto idx = at::arange(s, s + n, at::kLong);
      auto outs = tr.forward(select(x_all, b.inputs, idx), n, true, nullptr);
      total += block_loss(outs, select(y_all, b.outputs, idx), w_all.empty() ? w_all : select(w_all, b.outputs, idx),
                          d_all.empty() ? d_all : select(d_all, b.outputs, idx), n).item<double>();
    }
    return total / static_cast<double>(images);
  };
  r.loss_start = full_loss();
  if (!std::isfinite(r.loss_start))
    fail("block {}: the reconstruction loss is not finite before any step (NaN or Inf in the block's inputs or FP outputs)", b.name);
  if (r.learned == 0) {
    r.loss_end = r.loss_start;
    r.kept_start = true;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
  }
  std::vector<at::Tensor> params = tr.params();
  std::vector<at::Tensor> start;
  for (const auto& p : params) start.push_back(p.detach().clone());
  std::vector<at::Tensor> last_good;
  for (const auto& p : start) last_good.push_back(p.clone());  // its own storage: copied into every step
  torch::optim::Adam adam(tr.groups());
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  const int warm = static_cast<int>(o.warmup * o.iters);
  for (int it = 0; it < o.iters; ++it) {
    at::Tensor idx = images <= o.batch ? at::arange(images, at::kLong) : at::randperm(images, gen, at::kLong).narrow(0, 0, o.batch);
    const int64_t n = idx.numel();
    auto outs = tr.forward(select(x_all, b.inputs, idx), n, false, o.qdrop > 0 ? &gen : nullptr);
    auto loss = block_loss(outs, select(y_all, b.outputs, idx), w_all.empty() ? w_all : select(w_all, b.outputs, idx),
                           d_all.empty() ? d_all : select(d_all, b.outputs, idx), n) /
                static_cast<double>(n);
    if (it >= warm && o.round_weight > 0) {
      const double rel = o.iters > warm ? static_cast<double>(it - warm) / static_cast<double>(o.iters - warm) : 1.0;
      const double beta = o.beta_end + (o.beta_start - o.beta_end) * std::max(0.0, 1.0 - rel);
      loss = loss + o.round_weight * tr.regularizer(beta);
    }
    // one device-to-host transfer a step: the loss and every parameter finite (on a GPU each read waits for the
    // queue to drain, and the step is bound by launching kernels, not by the GPU's work)
    // (one sum per parameter: a sum is finite only if every element is, short of an overflow that parameters of
    // this size cannot reach; a test of every element cost 3% of a step on 2 cores)
    bool finite;
    {
      at::NoGradGuard no_grad;
      at::Tensor acc = loss.detach();
      for (const auto& p : params) acc = acc + p.sum();
      finite = at::isfinite(acc).item<bool>();
    }
    if (!finite) {
      const double lv = loss.item<double>();
      for (size_t k = 0; k < params.size(); ++k) {
        at::NoGradGuard no_grad;
        params[k].copy_(last_good[k]);
      }
      r.stopped_nonfinite = true;
      fmt::print(stderr, "warning: block {}: the reconstruction loss became {} at step {}; stopped, the last finite parameters kept\n",
                 b.name, lv, it);
      break;
    }
    {
      at::NoGradGuard no_grad;
      for (size_t k = 0; k < params.size(); ++k) last_good[k].copy_(params[k].detach());
    }
    adam.zero_grad();
    loss.backward();
    adam.step();
    r.steps = it + 1;
    if (o.on_step) o.on_step(b.name, it, params);
  }
  r.loss_end = full_loss();
  if (!std::isfinite(r.loss_end) || r.loss_end >= r.loss_start) {
    at::NoGradGuard no_grad;
    for (size_t k = 0; k < params.size(); ++k) params[k].copy_(start[k]);
    r.kept_start = true;
    r.loss_end = r.loss_start;
  } else {
    r.zero_points_clamped = tr.write_back();
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

// ---------------------------------------------------------------------------------------------- augmentation
namespace {
void check_views(const at::Tensor& images, int views) {
  if (images.dim() != 4 || images.size(0) < 1) fail("augmented views: images must be [N, C, H, W] with N >= 1");
  if (views < 1) fail("augmented views: need at least one view an image, got {}", views);
}

// augment_views written into `dst` ([N·views, C, H, W] float): the caller's storage, so that the views need not be
// made and then copied next to the images (1000 images' views are 0.6 GB). The caller has run check_views.
void write_views(const at::Tensor& images, int views, uint64_t seed, at::Tensor dst) {
  const int64_t h = images.size(2), w = images.size(3);
  std::mt19937_64 rng(seed ^ 0x61756776ULL);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  for (int64_t i = 0; i < images.size(0); ++i) {
    const at::Tensor img = images.narrow(0, i, 1).to(at::kFloat);
    for (int v = 0; v < views; ++v) {
      // area fraction and aspect ratio (log-uniform), the crop shrunk until it fits
      const double area = 0.3 + 0.7 * unit(rng);
      const double aspect = std::exp(std::log(3.0 / 4.0) + (std::log(4.0 / 3.0) - std::log(3.0 / 4.0)) * unit(rng));
      auto ch = static_cast<int64_t>(std::lround(std::sqrt(area * static_cast<double>(h * w) / aspect)));
      auto cw = static_cast<int64_t>(std::lround(std::sqrt(area * static_cast<double>(h * w) * aspect)));
      ch = std::clamp<int64_t>(ch, 1, h);
      cw = std::clamp<int64_t>(cw, 1, w);
      const auto top = static_cast<int64_t>(unit(rng) * static_cast<double>(h - ch + 1));
      const auto left = static_cast<int64_t>(unit(rng) * static_cast<double>(w - cw + 1));
      at::Tensor crop = img.narrow(2, std::min(top, h - ch), ch).narrow(3, std::min(left, w - cw), cw);
      crop = at::upsample_bilinear2d(crop.contiguous(), {h, w}, /*align_corners=*/false);
      if (unit(rng) < 0.5) crop = crop.flip({3});
      dst.narrow(0, i * views + v, 1).copy_(crop);
    }
  }
}
}  // namespace

at::Tensor augment_views(const at::Tensor& images, int views, uint64_t seed) {
  check_views(images, views);
  at::Tensor out = at::empty({images.size(0) * views, images.size(1), images.size(2), images.size(3)}, at::kFloat);
  write_views(images, views, seed, out);
  return out;
}

// ---------------------------------------------------------------------------------------------- pipeline
namespace {

// images a stream runs at once
int64_t stream_chunk(const c10::Device& d) { return d.is_cuda() ? 256 : 32; }

// The values of a model over a set of images, advanced range by range, `chunk` images at a time: only the values
// alive at the end of a range (read by a later node, or the graph's output) are kept for every image; what lives
// inside a range lives for one chunk, each activation freed after its last reader (Executor::release_dead). Run on
// all 2000 images at once (1000 and one view each), the quantized stream's fake-quantized transformer block
// got DeiT-Tiny's reconstruction OOM-killed at 23.4 GB.
class Stream {
 public:
  Stream(const Executor& ex, const at::Tensor& images, int64_t chunk)
      : ex_(ex), stat_(static_values(ex.graph())), vals_(ex.constants()), images_(images.size(0)), chunk_(std::max<int64_t>(chunk, 1)) {
    vals_[static_cast<size_t>(ex.graph().input)] = images.to(ex.device(), at::kFloat);
  }
  void advance(size_t to, const ExecHooks* hooks) {
    if (to <= cursor_) return;
    const Graph& g = ex_.graph();
    const auto& last = ex_.last_use();
    std::vector<at::Tensor> out = ex_.constants();
    std::vector<char> through(vals_.size(), 0);  // alive now and still alive at `to`: kept as they are, not copied
    for (size_t u = 0; u < vals_.size(); ++u)
      if (vals_[u].defined() && !g.is_const(static_cast<int>(u)) &&
          (stat_[u] || static_cast<int>(u) == g.output || last[u] >= static_cast<int>(to))) {
        through[u] = 1;
        out[u] = vals_[u];
      }
    for (int64_t s = 0; s < images_; s += chunk_) {
      const int64_t n = std::min(chunk_, images_ - s);
      std::vector<at::Tensor> v = ex_.constants();
      for (size_t u = 0; u < vals_.size(); ++u)
        if (vals_[u].defined() && !g.is_const(static_cast<int>(u))) v[u] = stat_[u] ? vals_[u] : rows(vals_[u], s, n, images_);
      ex_.run_range(v, cursor_, to, n, hooks, /*free_dead=*/true);
      for (size_t u = 0; u < v.size(); ++u) {
        if (!v[u].defined() || g.is_const(static_cast<int>(u)) || through[u]) continue;
        if (stat_[u]) {  // the same for every image: one copy
          if (!out[u].defined()) out[u] = v[u];
          continue;
        }
        const int64_t k = v[u].dim() ? v[u].size(0) / n : 0;
        if (k == 0 || v[u].size(0) != k * n)
          fail("reconstruction: value {} has {} rows for {} images", g.values[u].name, v[u].dim() ? v[u].size(0) : 0, n);
        if (!out[u].defined()) {
          std::vector<int64_t> shape = v[u].sizes().vec();
          shape[0] = k * images_;
          out[u] = at::empty(shape, v[u].options());
        }
        out[u].narrow(0, s * k, n * k).copy_(v[u]);
      }
    }
    vals_ = std::move(out);
    cursor_ = to;
  }
  const at::Tensor& value(int v) const {
    const auto& t = vals_[static_cast<size_t>(v)];
    if (!t.defined()) fail("reconstruction: value {} is not available at node {}", ex_.graph().values[static_cast<size_t>(v)].name, cursor_);
    return t;
  }

 private:
  // images [s, s + n) of a value whose rows are grouped per image
  static at::Tensor rows(const at::Tensor& t, int64_t s, int64_t n, int64_t images) {
    const int64_t k = rows_per_image(t, images, "reconstruction: a value");
    return t.narrow(0, s * k, n * k);
  }

  const Executor& ex_;
  std::vector<bool> stat_;  // values computed from constants alone
  std::vector<at::Tensor> vals_;
  int64_t images_, chunk_;
  size_t cursor_ = 0;
};

// FIMA-Q's token-wise steps: each per-tensor uniform input of a Linear whose input is [B, N, C] (one image through
// the model tells the shapes) becomes per channel on axis 1, one step and zero point per token, each the per-tensor
// one to start with. Returns how many inputs changed.
int64_t expand_to_token_steps(const Graph& g, const at::Tensor& image, QuantPlan& plan) {
  std::map<std::pair<std::string, size_t>, QuantPoint*> wanted;
  for (auto& p : plan.points)
    if (!p.weight && p.spec.kind == QuantKind::Uniform && p.spec.granularity == Granularity::PerTensor)
      if (const Node* n = g.find_node(p.node); n && n->op == OpKind::Linear) wanted[{p.node, static_cast<size_t>(p.slot)}] = &p;
  if (wanted.empty()) return 0;
  std::map<std::pair<std::string, size_t>, std::vector<int64_t>> shapes;
  ExecHooks seen;
  seen.transform_input = [&](const Node& n, size_t slot, const at::Tensor& x) {
    if (wanted.count({n.name, slot})) shapes[{n.name, slot}] = x.sizes().vec();
    return x;
  };
  Executor(g).run(image, &seen);
  int64_t changed = 0;
  for (auto& [key, p] : wanted) {
    auto it = shapes.find(key);
    if (it == shapes.end() || it->second.size() != 3) continue;
    const int64_t tokens = it->second[1];
    p->spec.granularity = Granularity::PerChannel;
    p->spec.axis = 1;
    p->params.scale = p->params.scale.reshape({1, 1, 1}).expand({1, tokens, 1}).clone();
    p->params.zero_point = p->params.zero_point.reshape({1, 1, 1}).expand({1, tokens, 1}).clone();
    ++changed;
  }
  return changed;
}

// Mean of the squared Fisher gradients over all of a block's outputs; 0 when they are all zero or not finite.
double fisher_mean_square(const std::map<int, at::Tensor>& grads, const Block& b) {
  double sum = 0;
  int64_t count = 0;
  for (int v : b.outputs) {
    sum += grads.at(v).pow(2).sum().item<double>();
    count += grads.at(v).numel();
  }
  const double mean = count ? sum / static_cast<double>(count) : 0;
  return mean > 0 && std::isfinite(mean) ? mean : 0;
}

// Fisher weights of a block: squared gradients normalised to mean 1 over the block's outputs (all ones when the
// gradients carry nothing), then (w + damping) / (1 + damping) (ReconOptions::fisher_damping); `mean` is
// fisher_mean_square's.
std::vector<at::Tensor> fisher_weights(const std::map<int, at::Tensor>& grads, const Block& b, double mean, double damping) {
  std::vector<at::Tensor> w;
  for (int v : b.outputs) {
    at::Tensor x = mean > 0 ? grads.at(v).pow(2) / mean : at::ones_like(grads.at(v));
    w.push_back(damping > 0 ? (x + damping) / (1 + damping) : x);
  }
  return w;
}

// The share of a block's output elements that carries its loss weights: (Σw)² / (n · Σw²), 1 when every element
// weighs the same, 1/n when one element carries all.
double weight_spread(const std::vector<at::Tensor>& w) {
  double sum = 0, sq = 0, n = 0;
  for (const auto& t : w) {
    sum += t.sum().item<double>();
    sq += t.pow(2).sum().item<double>();
    n += static_cast<double>(t.numel());
  }
  return sq > 0 && n > 0 ? sum * sum / (n * sq) : 1.0;
}

// fisher-dplr's directions (recon.h): the gradients on the same scale, so that their squares are the weights above
// (zeros, no rank-one term, when the gradients carry nothing).
std::vector<at::Tensor> fisher_directions(const std::map<int, at::Tensor>& grads, const Block& b, double mean) {
  std::vector<at::Tensor> u;
  for (int v : b.outputs) u.push_back(mean > 0 ? grads.at(v) / std::sqrt(mean) : at::zeros_like(grads.at(v)));
  return u;
}

}  // namespace

double reconstruction_bytes(const Graph& g, const at::Tensor& image, int64_t images, const std::vector<Block>& blocks,
                            const ReconOptions& o) {
  if (image.dim() != 4 || image.size(0) != 1) fail("reconstruction_bytes: the image must be [1, C, H, W]");
  at::InferenceMode guard;
  Executor ex(g);
  std::vector<at::Tensor> vals = ex.constants();
  vals[static_cast<size_t>(g.input)] = image.to(at::kFloat);
  std::vector<double> bytes(g.values.size(), 0.0);
  auto live = [&] {
    double sum = 0;
    for (size_t v = 0; v < vals.size(); ++v)
      if (vals[v].defined() && !g.is_const(static_cast<int>(v))) sum += static_cast<double>(vals[v].nbytes());
    return sum;
  };
  double peak = 0;                               // inside a node: its inputs and outputs alive
  std::vector<double> between(g.nodes.size() + 1, 0.0);  // after node i - 1, what is dead freed
  between[0] = live();
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    ex.run_range(vals, i, i + 1, 1);
    peak = std::max(peak, live());
    for (int v : g.nodes[i].outputs) bytes[static_cast<size_t>(v)] = static_cast<double>(vals[static_cast<size_t>(v)].nbytes());
    ex.release_dead(vals, i);
    between[i + 1] = live();
  }
  const bool fisher = o.loss == "fisher" || o.loss == "fisher-dplr";
  const double copies = 1.0 + (fisher ? 1.0 : 0.0) + (o.loss == "fisher-dplr" ? 1.0 : 0.0);  // targets, weights, directions
  double grads = 0, block = 0, boundary = 0;
  for (const auto& b : blocks) {
    double in = 0, out = 0;
    for (int v : b.inputs) in += bytes[static_cast<size_t>(v)];
    for (int v : b.outputs) out += bytes[static_cast<size_t>(v)];
    grads += out;
    block = std::max(block, in + copies * out);
    boundary = std::max({boundary, between[b.begin], between[b.end]});
  }
  // two streams, each holding its values at a block boundary twice while it advances to the next (old and new)
  const double per_image = static_cast<double>(image.nbytes()) + (fisher ? grads : 0.0) + 4 * boundary + block;
  const double fixed = 2.0 * static_cast<double>(stream_chunk(c10::Device(o.device))) * peak;  // a chunk inside each stream
  return per_image * static_cast<double>(images) + fixed;
}

std::vector<BlockResult> reconstruct(const Graph& model, const at::Tensor& calib, QuantPlan& plan, const std::vector<Block>& blocks,
                                     const ReconOptions& o) {
  o.validate();
  // a reparameterised plan (RepQ-ViT) trains the reparameterised model's weights and LayerNorms (the same FP function)
  const Graph g = with_reparams(model, plan);
  if (blocks.empty()) fail("reconstruction: the plan quantizes no layer, there is nothing to reconstruct");
  if (calib.dim() != 4 || calib.size(0) < 1) fail("reconstruction: the calibration images must be [N, C, H, W] with N >= 1");
  const c10::Device dev(o.device);
  const int64_t base = o.images > 0 ? std::min<int64_t>(o.images, calib.size(0)) : calib.size(0);
  at::Tensor images = calib.narrow(0, 0, base);
  if (dev.is_cpu()) {  // an oversize run is refused here, not killed by the system an hour in
    const double need = reconstruction_bytes(g, calib.narrow(0, 0, 1), base * (1 + o.augment), blocks, o);
    const double have = o.memory_available > 0 ? o.memory_available : available_memory_bytes();
    if (have > 0 && need > have)
      fail("reconstruction on {} images{} needs about {:.1f} GB of memory and {:.1f} GB is available: lower --recon-images{}",
           base * (1 + o.augment), o.augment > 0 ? fmt::format(" ({} and {} view{} of each)", base, o.augment, o.augment == 1 ? "" : "s") : "", need / 1e9, have / 1e9,
           o.augment > 0 ? " or --recon-augment" : "");
    if (o.progress) fmt::print(stderr, "recon: about {:.1f} GB of memory for {} images ({:.1f} GB available)\n", need / 1e9, base * (1 + o.augment), have / 1e9);
  }
  if (o.augment > 0) {
    at::InferenceMode guard;
    check_views(images, o.augment);
    at::Tensor all = at::empty({base * (1 + o.augment), images.size(1), images.size(2), images.size(3)}, at::kFloat);
    all.narrow(0, 0, base).copy_(images);
    write_views(images, o.augment, o.seed, all.narrow(0, base, base * o.augment));
    images = all;
    if (o.progress)
      fmt::print(stderr, "recon: {} images and {} augmented views of each (--recon-augment): {} in all\n", base, o.augment, images.size(0));
  }
  const int64_t n = images.size(0);
  for (const auto& p : plan.points)
    if (!p.params.scale.defined()) fail("reconstruction: {} slot {} has no parameters (plan not calibrated)", p.node, p.slot);
  const auto adalog_input = [](const QuantPoint& p) { return !p.weight && p.spec.kind == QuantKind::AdaLog; };
  if (o.learn_log && std::none_of(plan.points.begin(), plan.points.end(), adalog_input))
    fmt::print(stderr, "warning: --recon-learn-log: the plan has no AdaLog activation quantizer (add +adalog to the method); "
                       "nothing more is learned\n");
  int64_t token_points = 0;
  if (o.token_scales) {
    at::InferenceMode guard;
    token_points = expand_to_token_steps(g, images.narrow(0, 0, 1), plan);
    if (o.progress)
      fmt::print(stderr, "recon: {} Linear inputs get one learned step per token (--recon-token-scales)\n", token_points);
    if (token_points == 0)
      fmt::print(stderr, "warning: --recon-token-scales: no per-tensor uniform input of a Linear on [B, N, C] tensors; "
                         "nothing changes\n");
  }
  std::map<int, at::Tensor> grads;
  const bool fisher = o.loss == "fisher" || o.loss == "fisher-dplr";
  if (o.loss == "fisher-dplr")
    fmt::print(stderr, "warning: --recon-loss fisher-dplr is experimental: it collapsed DeiT-Tiny at W3A3 to 1.9% top-1 "
                       "(docs/decisions.md); the default fisher loss is the tested one\n");
  if (fisher) {
    std::vector<int> outs;
    for (const auto& b : blocks) outs.insert(outs.end(), b.outputs.begin(), b.outputs.end());
    if (o.progress) fmt::print(stderr, "recon: Fisher weights from one backward pass of the FP model on {} images\n", n);
    grads = fisher_gradients(g, images, o.seed, outs, dev);
  }
  Executor ex(g, dev);  // its constants are normal tensors (reconstruction trains through them)
  at::InferenceMode guard;
  Stream fp(ex, images, stream_chunk(dev)), q(ex, images, stream_chunk(dev));
  std::vector<BlockResult> results;
  nlohmann::json rows = nlohmann::json::array();
  int64_t clamped = 0;
  for (size_t k = 0; k < blocks.size(); ++k) {
    const Block& b = blocks[k];
    {
      QuantizedModel qm(g, plan, dev);
      q.advance(b.begin, &qm.hooks());
    }
    fp.advance(b.end, nullptr);
    std::vector<at::Tensor> x, y, w, dirs;
    for (int v : b.inputs) x.push_back(q.value(v));
    for (int v : b.outputs) y.push_back(fp.value(v));
    if (fisher) {
      const double mean = fisher_mean_square(grads, b);
      w = fisher_weights(grads, b, mean, o.fisher_damping);
      if (o.loss == "fisher-dplr") dirs = fisher_directions(grads, b, mean);
      for (int v : b.outputs) grads.erase(v);  // a value is one block's output: its gradients are not read again
    }
    ReconOptions bo = o;
    bo.seed = o.seed + k;
    bool any = false;  // a block whose layers all stay FP is skipped
    for (const auto& p : plan.points)
      for (size_t i = b.begin; i < b.end && !any; ++i) any = p.node == g.nodes[i].name;
    if (!any) continue;
    const double spread = fisher ? weight_spread(w) : 1.0;
    BlockResult r = reconstruct_block(ex, plan, b, x, y, w, n, bo, dirs);
    clamped += r.zero_points_clamped;
    if (o.progress)
      fmt::print(stderr, "recon {:>3}/{} {:<30} {:>3} points  loss {:.5g} -> {:.5g}{}  {:.1f} s{}\n", k + 1, blocks.size(), b.name,
                 r.points, r.loss_start, r.loss_end, r.kept_start ? " (start kept)" : "", r.seconds,
                 fisher ? fmt::format("  (weights spread over {:.3g}% of the outputs)", 100 * spread) : "");
    rows.push_back({{"block", b.name}, {"points", r.points}, {"learned", r.learned}, {"loss_start", r.loss_start},
                    {"loss_end", r.loss_end}, {"steps", r.steps}, {"kept_start", r.kept_start},
                    {"stopped_nonfinite", r.stopped_nonfinite}, {"seconds", r.seconds}, {"weight_spread", spread}});
    results.push_back(r);
  }
  nlohmann::json rec = o.to_json();
  rec["images"] = base;
  if (o.augment > 0) rec["images_with_views"] = n;
  rec["blocks"] = rows;
  rec["zero_points_clamped"] = clamped;
  if (o.token_scales) rec["token_scales"] = token_points;  // how many inputs got them (the key only when asked)
  plan.settings["reconstruction"] = rec;
  return results;
}

double block_output_mse(const Graph& model, const at::Tensor& images, const QuantPlan& plan, const Block& b) {
  at::InferenceMode guard;
  const Graph g = with_reparams(model, plan);
  Executor ex(g);
  Stream fp(ex, images, stream_chunk(ex.device())), q(ex, images, stream_chunk(ex.device()));
  QuantizedModel qm(g, plan);
  q.advance(b.end, &qm.hooks());
  fp.advance(b.end, nullptr);
  double total = 0;
  for (int v : b.outputs) total += (q.value(v) - fp.value(v)).to(at::kDouble).pow(2).sum().item<double>();
  return total / static_cast<double>(images.size(0));
}

}  // namespace vitq::recon
