// Calibration baselines of the ViT PTQ literature: every planned edge gets its range from an observer.
//   minmax      weights and activations: min/max
//   percentile  activations: the 99.99th percentile (weights min/max) — the clipping used by PTQ baselines
//   omse        weights and activations: OMSE (Choukroun et al. 2019), the clipping with least squared error,
//               as FQ-ViT's baseline uses it
#include "vitq/methods/method.h"
#include "vitq/quant/calibration.h"

namespace vitq {

namespace {
MethodFn observer_method(std::string act, std::string weight) {
  return [act, weight](const Graph& g, const at::Tensor& calib, const MethodOptions& o) {
    QuantPlan plan;
    plan.points = default_placement(g, o.placement);
    calibrate_with_observers(g, calib, plan.points, act, weight, o.observer);
    plan.settings["activation_observer"] = act;
    plan.settings["weight_observer"] = weight;
    return plan;
  };
}
}  // namespace

MethodInfo baseline_minmax() {
  return {"minmax", "-", "min/max ranges for weights and activations", observer_method("minmax", "minmax")};
}
MethodInfo baseline_percentile() {
  return {"percentile", "-", "activations clipped at the 99.99th percentile, weights min/max",
          observer_method("percentile", "minmax")};
}
MethodInfo baseline_omse() {
  return {"omse", "Choukroun et al. 2019", "least-squared-error clipping for weights and activations",
          observer_method("mse", "mse")};
}

}  // namespace vitq
