#include <ATen/ATen.h>

#include "vitq/methods/method.h"
#include "vitq/util/error.h"

namespace vitq {

const std::vector<MethodInfo>& method_registry() {
  static const std::vector<MethodInfo> methods = {baseline_minmax(), baseline_percentile(), baseline_omse(),
                                                  method_liu2021(), method_easyquant(), method_fqvit(),
                                                  method_ptq4vit(), method_qhyvit(),
                                                  method_repqvit()};
  return methods;
}

const MethodInfo& find_method(const std::string& name) {
  std::string names;
  for (const auto& m : method_registry()) {
    if (m.name == name) return m;
    names += (names.empty() ? "" : ", ") + m.name;
  }
  fail("unknown method '{}' (known: {})", name, names);
}

const LayerTensors& fp_layer_tensors(const Graph& g, const at::Tensor& calib, const MethodOptions& o, LayerTensors& storage) {
  if (o.fp_layers) return *o.fp_layers;
  storage = capture_layers(g, calib);
  return storage;
}

void reconstruct_plan(const Graph& g, const at::Tensor& calib, QuantPlan& plan, const std::string& mode, const MethodOptions& o,
                      const std::vector<BridgeBlock>& joint) {
  recon::ReconOptions ro = o.recon;
  ro.mode = mode;
  ro.progress = o.progress;
  ro.seed = o.seed;
  auto blocks = recon::plan_blocks(g, plan, mode, joint);
  recon::reconstruct(g, o.recon_calib && o.recon_calib->defined() ? *o.recon_calib : calib, plan, blocks, ro);
}

QuantPlan run_method(const Graph& g, const at::Tensor& calib, const std::string& name, const MethodOptions& o) {
  const MethodInfo& m = find_method(name);
  if (o.placement.wbits < 2 || o.placement.wbits > 8) fail("--wbits must be between 2 and 8, got {}", o.placement.wbits);
  if (o.placement.abits < 2 || o.placement.abits > 8) fail("--abits must be between 2 and 8, got {}", o.placement.abits);
  if (calib.size(0) == 0) fail("empty calibration batch");
  if (o.convention != "paper" && o.convention != "common")
    fail("--convention must be paper or common, got '{}'", o.convention);
  if (o.rounds < 0 || o.rounds > 10) fail("--rounds must be between 1 and 10 (0: the paper's), got {}", o.rounds);
  if (o.attn_bits != 8 && (o.attn_bits < 2 || o.attn_bits > 4))
    fail("--attn-bits must be 2-4 (log2 softmax codes) or 8 (uniform), got {}", o.attn_bits);
  if (!o.reconstruct.empty() && o.reconstruct != "none" && o.reconstruct != "layer" && o.reconstruct != "block")
    fail("--reconstruct must be none, layer or block, got '{}'", o.reconstruct);
  const bool recon_after = !m.reconstructs && (o.reconstruct == "layer" || o.reconstruct == "block");
  if (recon_after || m.reconstructs) {
    recon::ReconOptions ro = o.recon;
    if (recon_after) ro.mode = o.reconstruct;
    ro.validate();  // before the search, not after it
  }
  QuantPlan plan = m.run(g, calib, o);
  plan.model = g.meta.name;
  if (o.adalog) plan.settings["adalog"] = adalog_refit(g, calib, plan, o);  // before the reconstruction starts from it
  if (o.output_search) plan.settings["output_search"] = output_search(g, calib, plan, o);  // on the AdaLog quantizers' outputs
  if (recon_after) reconstruct_plan(g, calib, plan, o.reconstruct, o);
  plan.method = name;
  plan.settings["wbits"] = o.placement.wbits;
  plan.settings["abits"] = o.placement.abits;
  plan.settings["weight_granularity"] = granularity_name(o.placement.weight_granularity);
  plan.settings["calib_images"] = calib.size(0);
  plan.settings["seed"] = o.seed;
  plan.settings["convention"] = o.convention;
  check_plan(plan, g, "method " + name);
  return plan;
}

}  // namespace vitq
