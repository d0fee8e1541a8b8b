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

#include "vitq/methods/hessian_search.h"
#include "vitq/methods/method.h"
#include "vitq/methods/search.h"
#include "vitq/util/error.h"
#include "vitq/util/progress.h"

namespace vitq {

namespace {

QuantPlan run_ptq4vit(const Graph& g, const at::Tensor& calib, const MethodOptions& o) {
  if (o.search_steps < 2) fail("search steps must be at least 2");
  const bool paper = o.convention == "paper";
  QuantPlan plan;
  plan.points = default_placement(g, o.placement);
  const auto readers = g.consumers();
  if (paper) hessian::paper_placement(g, readers, plan.points);
  hessian::set_twin_kinds(g, plan.points);
  const int64_t sub = std::min<int64_t>(o.search_images, calib.size(0));
  const auto grads = hessian::layer_gradients(g, calib.narrow(0, 0, sub), o.seed);
  at::InferenceMode guard;
  LayerTensors storage;
  const LayerTensors& t = fp_layer_tensors(g, calib, o, storage);

  const int rounds = o.rounds > 0 ? o.rounds : 3;
  const int candidates = o.search_steps + 1;
  hessian::SearchConfig cfg;
  cfg.rounds = rounds;
  cfg.alphas = search::linspace(0.01, 1.2, candidates);
  cfg.qkv_thirds = paper;
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
    QuantPoint* pts[2] = {plan.find(name, 0), plan.find(name, 1)};
    hessian::search_layer(g, readers, n, pts, all, args, out, grads.at(name), sub, cfg);
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
