// Lee, Kim, Ham, Kim. "Q-HyViT: Post-Training Quantization of Hybrid Vision Transformers with Bridge Block
// Reconstruction for IoT Systems". arXiv 2303.12557 (IEEE IoT Journal 2024).
//
// Hybrid ViTs break the pure-ViT methods in four ways: activation ranges that change wildly from layer to
// layer, asymmetric zero points that overflow the integer type in bridge blocks, BatchNorm / LayerNorm /
// GroupNorm side by side, and models too small to absorb the error. Q-HyViT:
//   1. starts from PTQ4ViT's Hessian-guided search (hessian_search.h: twin-uniform post-softmax / post-GELU
//      quantizers, steps searched against the Fisher-weighted output error);
//   2. chooses per quantized layer how to quantize: for each uniform weight the granularity (per channel or per
//      tensor), for each uniform activation input the scheme (symmetric or asymmetric), by the same
//      Hessian-guided error — every combination searched (1 round, a quarter of the candidates), the best kept,
//      then searched in full;
//   3. keeps every asymmetric zero point on the integer grid (the quantized range always contains 0 and the zero
//      point is clamped; the count of clamped zero points is recorded in the plan);
//   4. reconstructs each bridge block (the conv <-> transformer transitions, Graph::bridges) jointly — all its
//      steps and weight roundings together, against the block's output — and the rest layer by layer or block
//      by block (--reconstruct), with the reconstruction engine (recon/recon.h).
// Choices the paper leaves open (the candidate budget of the choice, that weights stay symmetric, the
// reconstruction engine's settings) are written down in docs/decisions.md.
#include <ATen/ATen.h>

#include "vitq/methods/hessian_search.h"
#include "vitq/methods/method.h"
#include "vitq/methods/search.h"
#include "vitq/quant/fake_quant.h"
#include "vitq/util/error.h"
#include "vitq/util/progress.h"

namespace vitq {

namespace {

// The alternatives of one point: weights {per channel, per tensor}; activations {asymmetric, symmetric}.
std::vector<QuantSpec> alternatives(const QuantPoint& p) {
  std::vector<QuantSpec> out = {p.spec};
  if (p.spec.kind != QuantKind::Uniform) return out;
  QuantSpec alt = p.spec;
  if (p.weight) {
    if (p.spec.granularity != Granularity::PerChannel && p.spec.granularity != Granularity::PerTensor) return out;
    alt.granularity = p.spec.granularity == Granularity::PerChannel ? Granularity::PerTensor : Granularity::PerChannel;
    alt.axis = 0;
  } else {
    alt.symmetric = !p.spec.symmetric;
    alt.is_signed = alt.symmetric;
  }
  out.push_back(alt);
  return out;
}

QuantPlan run_qhyvit(const Graph& g, const at::Tensor& calib, const MethodOptions& o) {
  if (o.search_steps < 4) fail("search steps must be at least 4");
  const std::string mode = o.reconstruct.empty() ? "block" : o.reconstruct;
  const bool paper = o.convention == "paper";
  QuantPlan plan;
  plan.points = default_placement(g, o.placement);
  const auto readers = g.consumers();
  if (paper) hessian::paper_placement(g, readers, plan.points);
  hessian::set_twin_kinds(g, plan.points);
  const int64_t sub = std::min<int64_t>(o.search_images, calib.size(0));
  const auto grads = hessian::layer_gradients(g, calib.narrow(0, 0, sub), o.seed);
  std::vector<std::string> layers;
  {
    at::InferenceMode guard;
    LayerTensors storage;
    const LayerTensors& t = fp_layer_tensors(g, calib, o, storage);
    const int rounds = o.rounds > 0 ? o.rounds : 3;
    const int candidates = o.search_steps + 1;
    hessian::SearchConfig full, quick;
    full.rounds = rounds;
    full.alphas = search::linspace(0.01, 1.2, candidates);
    full.qkv_thirds = paper;
    quick = full;
    quick.rounds = 1;
    quick.alphas = search::linspace(0.01, 1.2, candidates / 4 + 1);
    plan.settings["metric"] = "hessian (Fisher of KL(FP||Q), labels drawn from the FP prediction)";
    plan.settings["search"] = {{"alpha", {0.01, 1.2}}, {"candidates", candidates}, {"rounds", rounds}, {"images", sub},
                               {"choice", {{"candidates", candidates / 4 + 1}, {"rounds", 1}}}};
    layers = search::two_input_layers(g, plan);
    nlohmann::json choices = nlohmann::json::object();
    Progress bar("qhyvit search", layers.size(), o.progress);
    size_t done = 0;
    for (const auto& name : layers) {
      const Node& n = *g.find_node(name);
      const auto& all = t.inputs.at(name);
      const auto args = search::first_images(g, n, all, sub, calib.size(0));
      const at::Tensor out = search::first_rows(t.outputs.at(name), sub, calib.size(0));
      const at::Tensor& grad = grads.at(name);
      QuantPoint* pts[2] = {plan.find(name, 0), plan.find(name, 1)};
      const auto alt0 = alternatives(*pts[0]), alt1 = alternatives(*pts[1]);
      size_t best0 = 0, best1 = 0;
      if (alt0.size() * alt1.size() > 1) {
        double best = std::numeric_limits<double>::infinity();
        for (size_t a = 0; a < alt0.size(); ++a)
          for (size_t b = 0; b < alt1.size(); ++b) {
            QuantPoint c0 = *pts[0], c1 = *pts[1];
            c0.spec = alt0[a];
            c1.spec = alt1[b];
            QuantPoint* cp[2] = {&c0, &c1};
            const double err = hessian::search_layer(g, readers, n, cp, all, args, out, grad, sub, quick);
            if (err < best) {  // ties keep the earlier (the starting convention)
              best = err;
              best0 = a;
              best1 = b;
            }
          }
      }
      pts[0]->spec = alt0[best0];
      pts[1]->spec = alt1[best1];
      hessian::search_layer(g, readers, n, pts, all, args, out, grad, sub, full);
      choices[name] = point_label(*pts[0]) + " " + point_label(*pts[1]);
      bar.update(++done, name);
    }
    bar.finish();
    plan.settings["choices"] = choices;
  }
  // Zero points: on the grid by construction (the range holds 0); checked here, counted after reconstruction.
  for (const auto& p : plan.points)
    if (!p.spec.symmetric && p.params.zero_point.defined()) {
      const auto& z = p.params.zero_point;
      if (z.min().item<double>() < static_cast<double>(p.spec.qmin()) || z.max().item<double>() > static_cast<double>(p.spec.qmax()))
        fail("qhyvit: {} slot {}: a zero point left the integer range", p.node, p.slot);
    }
  if (mode != "none") {
    plan.settings["joint_bridges"] = o.joint_bridges;
    reconstruct_plan(g, calib, plan, mode, o, o.joint_bridges ? g.bridges : std::vector<BridgeBlock>{});
  }
  return plan;
}

}  // namespace

MethodInfo method_qhyvit() {
  MethodInfo m{"qhyvit", "Lee et al., arXiv 2303.12557 (Q-HyViT)",
               "PTQ4ViT's Hessian-guided search with per-layer granularity/scheme choice, zero points kept on the grid, "
               "bridge blocks reconstructed jointly (AdaRound + LSQ), the rest per --reconstruct (default block)",
               run_qhyvit};
  m.reconstructs = true;
  return m;
}

}  // namespace vitq
