// Shared pieces of the layer-wise grid searches (EasyQuant, PTQ4ViT): ranges, candidate steps, and a grid
// search that picks the best candidate independently for each group of scales whose effect on the layer
// output is separate (an output channel of a per-channel weight, a head of a per-head matmul input, the q, k or
// v rows of a qkv weight).
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

#include "vitq/graph/graph.h"
#include "vitq/quant/plan.h"

namespace vitq::search {

struct Range {
  at::Tensor lo, hi;
};
Range range_of(const at::Tensor& x, const QuantSpec& spec);
// The range a uniform quantizer's parameters cover: [(qmin - zp)·s, (qmax - zp)·s].
Range range_of_params(const QuantSpec& spec, const QuantParams& params);
// Parameters for the range shrunk or stretched by alpha (a number, or a tensor broadcastable to the range).
QuantParams scaled(const Range& r, const QuantSpec& spec, const at::Tensor& alpha);
QuantParams scaled(const Range& r, const QuantSpec& spec, double alpha);
std::vector<double> linspace(double a, double b, int n);

// How the scales of point p of node n map onto the node's output: `count` groups in contiguous chunks along
// output axis `axis` (count 1: the whole output). Only a per-channel (or per-head) weight's output channels and a
// MatMul input's heads own slices of the output; any other point is one group, its scales sharing one choice.
// `groups_override` > 0 forces that many groups on a point that has them (q/k/v).
struct Groups {
  int64_t axis = 0;
  int64_t count = 1;
};
Groups output_groups(const Node& n, const QuantPoint& p, int64_t groups_override = 0);
// Sums v (shaped like the layer output) within each group: [count].
at::Tensor reduce_to_groups(const at::Tensor& v, const Groups& groups);
// Per-group values [count] spread over a scale tensor shaped `like` (contiguous chunks).
at::Tensor expand_groups(const at::Tensor& per_group, const at::Tensor& like);

// Runs node n with slot `slot` quantized by candidate k = 0..candidates-1 (make(k) gives its parameters; the
// other arguments as given) and returns, per group, the index of the candidate with the highest score(output)
// ([count] scores per call; ties keep the earlier candidate): int64 [count].
at::Tensor grid_search(const Node& n, std::vector<at::Tensor> args, int slot, const QuantSpec& spec, int64_t candidates,
                       const std::function<QuantParams(int64_t)>& make,
                       const std::function<at::Tensor(const at::Tensor&)>& score, int64_t batch);

// The layers whose two inputs (weight and input, or both matmul inputs) the plan quantizes, in graph order.
std::vector<std::string> two_input_layers(const Graph& g, const QuantPlan& plan);

// The rows of activation t (of a batch of `total` images) that belong to the first `images` images. Activations
// are [total·k, ...]: k = 1 for most layers, k = windows per image in Swin's window attention.
at::Tensor first_rows(const at::Tensor& t, int64_t images, int64_t total);
// The rows of images [begin, begin + count) (first_rows generalised).
at::Tensor image_rows(const at::Tensor& t, int64_t begin, int64_t count, int64_t total);
// first_rows of every activation argument (constants untouched).
std::vector<at::Tensor> first_images(const Graph& g, const Node& n, const std::vector<at::Tensor>& args, int64_t images,
                                     int64_t total);

// Quantiles from the ends of each row of a [R, N] tensor, as a sort of every row would give them (linear
// interpolation between the closest ranks), for searches whose quantiles all lie within 1 - inner of either end
// (RepQ-ViT's percentiles, AdaLog's top quantiles): only the ends are ordered (top-k), not whole rows. Sorting
// whole rows of 19M activations (fc2's input over 128 images) took most of repqvit's calibration time.
class RowTails {
 public:
  RowTails(const at::Tensor& rows, double inner);
  at::Tensor rank(int64_t r) const;  // the element of ascending rank r of every row: [R]
  at::Tensor quantile(double q) const;
  at::Tensor min() const { return rank(0); }
  at::Tensor max() const { return rank(n_ - 1); }
  int64_t size() const { return n_; }

 private:
  int64_t n_;
  at::Tensor full_, top_, bottom_;  // full_: every row sorted (when the tails would overlap); else the two ends
};

}  // namespace vitq::search
