// Calibration data and the FP statistics methods start from.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "vitq/data/dataset.h"
#include "vitq/graph/graph.h"
#include "vitq/quant/observer.h"
#include "vitq/quant/plan.h"

namespace vitq {

// `n` images drawn with `seed` from `data`, through the model's eval transform: [k, 3, H, W].
// Error for an empty set, a set smaller than `n`, or no readable image; unreadable images are skipped with a
// warning (then k < n, and a warning says so); a warning when the images are (nearly) constant, e.g. all
// black — the scales stay finite but will not mean much. Every layer input of the calibration batch is held in
// memory by methods that search per layer (about 25 MB per image for DeiT-Tiny).
at::Tensor load_calibration(const Graph& graph, const Dataset& data, size_t n, uint64_t seed, bool progress = true);

// FP inputs and outputs of the quantizable layers on the calibration batch: inputs[node][slot] for every
// input (activations and constants), outputs[node].
struct LayerTensors {
  std::map<std::string, std::vector<at::Tensor>> inputs;
  std::map<std::string, at::Tensor> outputs;
};
LayerTensors capture_layers(const Graph& graph, const at::Tensor& images);
// The same for the nodes `which` selects (e.g. LayerNorms), run in chunks of `chunk` images.
LayerTensors capture_layers(const Graph& graph, const at::Tensor& images, const std::function<bool(const Node&)>& which,
                            int64_t chunk = 8);

// Fills the parameters of every point from observers (weights see their tensor once; activations see the
// calibration batch, run in chunks of `chunk` images).
void calibrate_with_observers(const Graph& graph, const at::Tensor& images, std::vector<QuantPoint>& points,
                              const std::string& activation_observer, const std::string& weight_observer,
                              const ObserverOptions& options = {}, int64_t chunk = 8);

}  // namespace vitq
