// Data-free calibration: calibration images synthesised from the model itself, for when no images may be used.
//
// The idea of PSAQ-ViT (Li et al., ECCV 2022): a ViT's self-attention makes the patches of a real image differ
// from one another in many ways, while noise gives patches that all look alike to the network. Starting from
// Gaussian noise, the images are optimised (Adam on the pixels) to
//   - be classified as a random target class each (cross-entropy),
//   - maximise the diversity of patch similarity: per attention block, the cosine similarities between the
//     tokens of its output (the output projection after attn·v) and the differential entropy of their
//     distribution (a Gaussian kernel density estimate) — the loss takes its negative,
//   - stay smooth (total variation) and within the pixel range the model's normalisation allows.
// Written from the paper's description; our own code. Models without attention (none here) get only the
// classification and smoothness terms; BatchNorm statistics cannot be matched because BatchNorm is folded into
// the convolutions at load.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "vitq/graph/graph.h"

namespace vitq {

struct SyntheticOptions {
  int64_t images = 32;
  uint64_t seed = 0;
  int iters = 50;              // Adam steps over every image
  double lr = 0.1;             // Adam step on the normalised pixels
  double patch_weight = 1.0;   // weight of the patch-similarity entropy term (per attention block, averaged)
  double tv_weight = 0.05;     // weight of the total-variation prior
  int64_t chunk = 8;           // images per forward/backward pass (memory)
  bool progress = true;
};

// [images, 3, H, W] normalised like the model's eval transform, deterministic for a seed and thread count.
// Error: images < 1, iters < 0, a model without classes.
at::Tensor synthesize_calibration(const Graph& graph, const SyntheticOptions& options);

// "synthetic" or "synthetic:N" as a --calib argument: true and N (0 when not given); false for anything else (a
// folder; ./synthetic names a folder called so). Error for "synthetic:" followed by anything but 1-1024.
bool parse_synthetic_calib(const std::string& calib, int64_t* count);

// The names of the layers whose outputs are attention results (the Linear/Conv reached from each attn·v matmul
// through data movement only), in graph order.
std::vector<std::string> attention_output_layers(const Graph& graph);

}  // namespace vitq
