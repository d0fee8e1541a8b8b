// What the report draws for the worst layers: the FP distribution of a quantized activation next to the
// quantizer the plan chose for it (its representable range and every level of its grid).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "vitq/graph/graph.h"
#include "vitq/quant/plan.h"

namespace vitq {

struct ActivationHistogram {
  std::string node, label;  // label: point_label ("A4ta", "A4twin", "A8log2", ...)
  int slot = 0;
  std::string granularity;  // "per-tensor", "per-channel", ...
  double lo = 0, hi = 0;    // the FP values' min and max: the histogram spans [lo, hi]
  std::vector<int64_t> counts;
  // The quantizer's representable range (the union over channels/heads when it is not per tensor), and, for a
  // per-tensor quantizer, every value it can produce, ascending (twin and log2 grids as they are).
  double range_lo = 0, range_hi = 0;
  std::vector<double> grid;
  // values counted, and those clipped: beyond their (channel's) end level by more than rounding to it explains
  int64_t values = 0, outside = 0;
};

// The activation points of `nodes` (weights are not drawn), measured on the FP inputs those nodes receive for
// `images`. The grid and range come from fake_quant itself (a dense sweep of inputs, and inputs far beyond any
// range), so they are the quantizer's actual output values, whatever its kind.
std::vector<ActivationHistogram> activation_histograms(const Graph& graph, const QuantPlan& plan, const at::Tensor& images,
                                                       const std::vector<std::string>& nodes, int bins = 100);

}  // namespace vitq
