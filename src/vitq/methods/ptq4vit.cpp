// Yuan, Xu, Wu, Chen, Sun. "PTQ4ViT: Post-Training Quantization for Vision Transformers with Twin Uniform
// Quantization". ECCV 2022.
//
// Twin-uniform quantizers (quantizer.h) for the post-softmax input of attn·v and the post-GELU input of fc2;
// every step is chosen layer by layer, each layer fed its FP input, by the Hessian-guided metric
//     min_Δ  E[ (∂L/∂O ⊙ (O − Ô))² ]     L = KL(p_FP ‖ p_quantized)
// At Ô = O the gradient of this KL is zero; its Hessian there is the Fisher information of the FP model,
// E_{y ~ p_FP}[g_y g_yᵀ] with g_y = ∂(−log p_FP(y))/∂O. We use that: one label y per calibration image drawn
// (seeded) from the FP prediction, −log p(y) backpropagated through the FP model (libtorch autograd on our
// executor), and ∂L/∂O := g_y — so the metric is the diagonal of the Fisher approximation of the KL increase.
// Search: 101 candidates Δ = α·max|x|/qmax, α in [0.01, 1.2] (search_steps + 1 points), weights (or the
// second matmul input) and activations alternating, 3 rounds. Post-softmax: Δ2 = 1/2^(b−1), Δ1 = Δ2·2^-i,
// i = 0..19. Post-GELU: the coarse step Δ2 over the same 101 candidates, the fine (negative) step the finest
// power-of-two fraction of it that still reaches −0.17.
// The paper's convention (--convention paper): symmetric quantizers; weights per tensor except the qkv weight
// (one step each for its q, k and v rows) and the patch embedding (per channel); matmul inputs per head.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <random>

#include "vitq/graph/executor.h"
#include "vitq/methods/method.h"
#include "vitq/methods/search.h"
#include "vitq/util/error.h"
#include "vitq/util/progress.h"

namespace vitq {

namespace {

bool post_gelu(const Graph& g, const Node& n) {
  return n.op == OpKind::Linear && (g.values[static_cast<size_t>(n.inputs[0])].roles & kPostGelu);
}
// attn·v's first input when it is the softmax output itself (in [0, 1]; EfficientFormerV2 mixes heads in between)
bool post_softmax(const Graph& g, const Node& n, int slot) {
  return n.op == OpKind::MatMul && (n.roles & kAttnV) && slot == 0 &&
         (g.values[static_cast<size_t>(n.inputs[0])].roles & kPostSoftmax);
}
// A Linear whose output is split into q, k and v: weight [3C, C], and its output reaches a Split (or a node
// with three readers, as ONNX's Gathers) through reshapes / transposes.
bool is_qkv(const Graph& g, const std::vector<std::vector<int>>& readers, const Node& n) {
  if (n.op != OpKind::Linear) return false;
  const auto& w = g.const_tensor(n.inputs[1]);
  if (w.dim() != 2 || w.size(0) != 3 * w.size(1)) return false;
  int v = n.outputs[0];
  for (int hop = 0; hop < 4; ++hop) {
    const auto& rs = readers[static_cast<size_t>(v)];
    if (rs.size() >= 3) return true;
    if (rs.size() != 1) return false;
    const Node& r = g.nodes[static_cast<size_t>(rs[0])];
    if (r.op == OpKind::Split) return true;
    if ((r.op != OpKind::Reshape && r.op != OpKind::Transpose) || r.outputs.size() != 1) return false;
    v = r.outputs[0];
  }
  return false;
}

// ∂(−log p_FP(y))/∂O for the output O of every quantizable layer, y drawn from the FP prediction.
std::map<std::string, at::Tensor> fisher_gradients(const Graph& g, const at::Tensor& images, uint64_t seed) {
  c10::InferenceMode not_inference(false);
  at::AutoGradMode grad_on(true);
  Executor ex(g);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::map<std::string, std::vector<at::Tensor>> grads;
  const int64_t chunk = 4;
  for (int64_t b = 0; b < images.size(0); b += chunk) {
    std::map<std::string, at::Tensor> outs;
    ExecHooks h;
    h.on_output = [&](const Node& n, const std::vector<at::Tensor>& o) {
      if (is_quantizable(g, n) && o[0].requires_grad()) {
        o[0].retain_grad();
        outs[n.name] = o[0];
      }
    };
    auto x = images.narrow(0, b, std::min(chunk, images.size(0) - b)).clone().set_requires_grad(true);
    auto logp = at::log_softmax(ex.run(x, &h), -1);
    auto p = logp.detach().exp().to(at::kDouble).cumsum(-1).contiguous();
    std::vector<int64_t> labels;
    for (int64_t i = 0; i < p.size(0); ++i) {
      const double u = uniform(rng) * p[i][-1].item<double>();
      labels.push_back(std::min<int64_t>(at::searchsorted(p[i], at::scalar_tensor(u, at::kDouble)).item<int64_t>(), p.size(1) - 1));
    }
    auto loss = -logp.gather(1, at::tensor(labels).unsqueeze(1)).sum();
    loss.backward();
    for (auto& [name, o] : outs) grads[name].push_back(o.grad().detach().clone());
  }
  std::map<std::string, at::Tensor> out;
  for (auto& [name, v] : grads) out[name] = at::cat(v);
  return out;
}

void paper_placement(const Graph& g, const std::vector<std::vector<int>>& readers, std::vector<QuantPoint>& points) {
  for (auto& p : points) {
    const Node& n = *g.find_node(p.node);
    p.spec.symmetric = true;
    if (p.weight) {
      p.spec.is_signed = true;
      p.spec.granularity = (n.op == OpKind::Conv2d || is_qkv(g, readers, n)) ? Granularity::PerChannel : Granularity::PerTensor;
      p.spec.axis = 0;
    } else {
      p.spec.is_signed = true;
      if (n.op == OpKind::MatMul) {
        p.spec.granularity = Granularity::PerHead;
        p.spec.axis = 1;
      }
    }
  }
}

QuantPlan run_ptq4vit(const Graph& g, const at::Tensor& calib, const MethodOptions& o) {
  if (o.search_steps < 2) fail("search steps must be at least 2");
  const bool paper = o.convention == "paper";
  QuantPlan plan;
  plan.points = default_placement(g, o.placement);
  const auto readers = g.consumers();
  if (paper) paper_placement(g, readers, plan.points);
  for (auto& p : plan.points) {
    const Node& n = *g.find_node(p.node);
    if (post_softmax(g, n, p.slot) || (p.slot == 0 && post_gelu(g, n))) {
      p.spec.kind = QuantKind::TwinUniform;
      p.spec.symmetric = true;
      p.spec.is_signed = !post_softmax(g, n, p.slot);
      p.spec.granularity = Granularity::PerTensor;
    }
  }
  const int64_t sub = std::min<int64_t>(o.search_images, calib.size(0));
  const auto grads = fisher_gradients(g, calib.narrow(0, 0, sub), o.seed);
  at::InferenceMode guard;
  LayerTensors storage;
  const LayerTensors& t = fp_layer_tensors(g, calib, o, storage);

  const int rounds = o.rounds > 0 ? o.rounds : 3;
  const int candidates = o.search_steps + 1;
  const auto alphas = search::linspace(0.01, 1.2, candidates);
  const auto alpha_t = at::tensor(alphas, at::kDouble);
  plan.settings["metric"] = "hessian (Fisher of KL(FP||Q), labels drawn from the FP prediction)";
  plan.settings["search"] = {{"alpha", {0.01, 1.2}}, {"candidates", candidates}, {"rounds", rounds}, {"images", sub}};

  const std::vector<std::string> layers = search::two_input_layers(g, plan);
  Progress bar("ptq4vit search", layers.size(), o.progress);
  size_t done = 0;
  for (const auto& name : layers) {
    const Node& n = *g.find_node(name);
    const auto& all = t.inputs.at(name);
    const auto args = search::first_images(g, n, all, sub, calib.size(0));
    const at::Tensor out = search::first_rows(t.outputs.at(name), sub, calib.size(0));
    const at::Tensor grad = grads.at(name);
    QuantPoint* pts[2] = {plan.find(name, 0), plan.find(name, 1)};
    // Start: max |x| (symmetric) per scale group over the whole calibration batch. make[s](k): the parameters
    // of candidate k for slot s; current[s]: the parameters chosen so far.
    search::Range ranges[2];
    QuantParams current[2];
    std::function<QuantParams(int64_t)> make[2];
    for (int s = 0; s < 2; ++s) {
      QuantPoint& p = *pts[s];
      const at::Tensor& x = all[static_cast<size_t>(s)];
      if (p.spec.kind == QuantKind::TwinUniform && !p.spec.is_signed) {
        make[s] = [&p](int64_t k) { return twin_softmax_params(p.spec.bits, static_cast<int>(k)); };
      } else if (p.spec.kind == QuantKind::TwinUniform) {
        const double top = x.max().item<double>() / static_cast<double>((1 << (p.spec.bits - 1)) - 1);
        make[s] = [&p, top, &alphas](int64_t k) { return twin_gelu_params(p.spec.bits, std::max(top, 1e-8) * alphas[static_cast<size_t>(k)]); };
      } else {
        QuantSpec range_spec = p.spec;
        if (p.spec.granularity == Granularity::PerChannel && is_qkv(g, readers, n) && paper && p.weight) {
          // q, k, v: one range per third of the rows
          auto amax = x.abs().reshape({3, -1}).amax(1);
          ranges[s] = {-amax.repeat_interleave(x.size(0) / 3).reshape({-1, 1}), amax.repeat_interleave(x.size(0) / 3).reshape({-1, 1})};
        } else {
          ranges[s] = search::range_of(x, range_spec);
        }
        make[s] = [&p, &ranges, s, &alphas](int64_t k) { return search::scaled(ranges[s], p.spec, alphas[static_cast<size_t>(k)]); };
      }
      if (p.spec.kind != QuantKind::TwinUniform) current[s] = search::scaled(ranges[s], p.spec, 1.0);
      else current[s] = p.spec.is_signed ? make[s](candidates * 5 / 6) : make[s](0);  // α ≈ 1 / one range
    }
    auto hessian_score = [&](const search::Groups& gr) {
      return [&, gr](const at::Tensor& q) { return -search::reduce_to_groups(((out - q) * grad).to(at::kDouble).pow(2), gr); };
    };
    for (int r = 0; r < rounds; ++r) {
      for (int slot : {1, 0}) {
        const int other = 1 - slot;
        QuantPoint& p = *pts[slot];
        std::vector<at::Tensor> qargs = args;
        qargs[static_cast<size_t>(other)] = fake_quant(args[static_cast<size_t>(other)], pts[other]->spec, current[other]);
        const bool twin = p.spec.kind == QuantKind::TwinUniform;
        search::Groups gr;
        if (!twin && p.spec.granularity != Granularity::PerTensor)
          gr = search::output_groups(n, p, is_qkv(g, readers, n) && paper && p.weight ? 3 : ranges[slot].lo.numel());
        const int64_t count = twin && !p.spec.is_signed ? 20 : candidates;
        auto best = search::grid_search(n, qargs, slot, p.spec, count, make[slot], hessian_score(gr), sub);
        if (twin || gr.count == 1) {
          current[slot] = make[slot](best.item<int64_t>());
        } else {
          auto a = search::expand_groups(alpha_t.index_select(0, best), ranges[slot].lo);
          current[slot] = search::scaled(ranges[slot], p.spec, a);
        }
      }
    }
    for (int s = 0; s < 2; ++s) pts[s]->params = current[s];
    bar.update(++done, name);
  }
  bar.finish();
  return plan;
}

}  // namespace

MethodInfo method_ptq4vit() {
  return {"ptq4vit", "Yuan et al., ECCV 2022",
          "twin-uniform post-softmax/post-GELU quantizers, Hessian-guided (Fisher) step search, per-head matmul inputs",
          run_ptq4vit};
}

}  // namespace vitq
