// PTQ4ViT's Hessian-guided step search for one layer, shared by ptq4vit and qhyvit (Q-HyViT starts from it).
//
// The metric: E[(∂L/∂O ⊙ (O − Ô))²] over the layer output O, with ∂L/∂O the gradient of −log p_FP(y), y drawn
// from the FP prediction (the diagonal Fisher approximation of the KL increase; ptq4vit.cpp explains).
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <vector>

#include "vitq/graph/graph.h"
#include "vitq/quant/plan.h"

namespace vitq::hessian {

// fc2's input (the GELU output) and attn·v's first input when it is the softmax output itself
bool post_gelu(const Graph& g, const Node& n);
bool post_softmax(const Graph& g, const Node& n, int slot);
// A Linear whose output splits into q, k and v.
bool is_qkv(const Graph& g, const std::vector<std::vector<int>>& readers, const Node& n);
// PTQ4ViT's twin-uniform kinds on the post-softmax and post-GELU points.
void set_twin_kinds(const Graph& g, std::vector<QuantPoint>& points);
// PTQ4ViT's own placement (--convention paper): symmetric; weights per tensor except qkv and convolutions;
// matmul inputs per head.
void paper_placement(const Graph& g, const std::vector<std::vector<int>>& readers, std::vector<QuantPoint>& points);

// ∂(−log p_FP(y))/∂O for the output O of every quantizable layer, by layer name.
std::map<std::string, at::Tensor> layer_gradients(const Graph& g, const at::Tensor& images, uint64_t seed);

struct SearchConfig {
  int rounds = 3;
  std::vector<double> alphas;  // candidate range factors
  bool qkv_thirds = false;     // one step per q / k / v third of a qkv weight (PTQ4ViT's paper placement)
};

// Searches the parameters of both points of two-input layer n (pts[0]: slot 0, pts[1]: slot 1), alternating
// weight and input for cfg.rounds rounds, each candidate scored by the metric on `args` (the layer's FP inputs
// on the scoring images) against `out` / `grad`. `all` are the inputs on every calibration image (ranges).
// Writes the parameters into the points and returns the metric of the result.
double search_layer(const Graph& g, const std::vector<std::vector<int>>& readers, const Node& n, QuantPoint* pts[2],
                    const std::vector<at::Tensor>& all, const std::vector<at::Tensor>& args, const at::Tensor& out,
                    const at::Tensor& grad, int64_t scoring_images, const SearchConfig& cfg);

}  // namespace vitq::hessian
