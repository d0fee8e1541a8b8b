// Data-free calibration: calibration images synthesised from the model itself, for when no images may be used.
//
// The idea of PSAQ-ViT (Li et al., ECCV 2022): a ViT's self-attention makes the patches of a real image differ
// from one another in many ways, while noise gives patches that all look alike to the network. Starting from
// Gaussian noise (see SyntheticInit), the images are optimised (Adam on the pixels, or on the natural start's octaves) to
//   - be classified as a random target class each (cross-entropy),
//   - maximise the diversity of patch similarity: per attention block, the cosine similarities between the
//     tokens of its output (the output projection after attn·v) and the differential entropy of their
//     distribution (a Gaussian kernel density estimate) — the loss takes its negative,
//   - stay smooth (total variation) and within the pixel range the model's normalisation allows.
// For models with BatchNorm (the hybrids' convolution stages), as ZeroQ / DeepInversion do: the batch statistics
// of every BatchNorm's output are pulled towards what its running statistics say (mean β, standard deviation
// |γ|·√(var / (var + ε)) per channel; the folding keeps them on the conv, see fold_batch_norm) — the root-mean-
// square gap of the channel means plus that of the standard deviations, averaged over the BatchNorms.
// Written from the papers' descriptions; our own code. Models without attention get only the classification,
// smoothness and BatchNorm terms. An ONNX model whose exporter folded BatchNorm away has no statistics to match.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "vitq/graph/graph.h"

namespace vitq {

// The noise the images start from.
//   - Natural (the default): Gaussian noise with a spectrum falling with frequency as natural images' does, so that
//     it has smooth and flat regions as well as texture — a sum of white noise drawn at every octave of the image
//     size (full, 1/2, ..., 1/32 on 224 pixels), each upsampled bilinearly and weighted by √(its cell size),
//     normalised to zero mean per channel and unit standard deviation per image. Adam then moves those octaves
//     (the gradient reaches them through the upsampling), not the pixels, so that its steps have the same spectrum
//     and the images stay natural-like; per-pixel steps of ±lr would add white noise back.
//   - White: white Gaussian noise, PSAQ-ViT's start, and Adam on the pixels.
// Why (measured on DeiT-Tiny, 32 images, repqvit+adalog W8A8): images grown from white noise left a tenth of the
// post-LayerNorm channels with ranges under 0.8x those of 32 real images (1% for a second draw of real images),
// most in blocks 0-3, so that RepQ-ViT's per-channel steps clipped real images; from the natural start with Adam on
// the pixels, 4%. (Why those channels are narrower is not established; flat patches, which white noise lacks, are
// one guess.)
// README, Data-free calibration, has the accuracies.
enum class SyntheticInit { Natural, White };

// "natural" or "white"; error for anything else.
SyntheticInit parse_synthetic_init(const std::string& name);
const char* synthetic_init_name(SyntheticInit init);

struct SyntheticOptions {
  SyntheticInit init = SyntheticInit::Natural;
  int64_t images = 32;
  uint64_t seed = 0;
  int iters = 50;              // Adam steps over every image
  double lr = 0.1;             // Adam step on the normalised pixels
  double patch_weight = 1.0;   // weight of the patch-similarity entropy term (per attention block, averaged)
  double tv_weight = 0.05;     // weight of the total-variation prior
  double bn_weight = 100;      // weight of the BatchNorm statistics term (0: off; models without BatchNorm: none).
                               // MobileViT-XXS (shared reference model, 2 images, 20 steps): the gap (see
                               // batchnorm_statistics_gap) went 2.53 -> 2.00 at weight 10 and -> 0.91 at 100 (real
                               // images: 0.29); at 1 it did not fall, the cross-entropy's gradient ruling the steps
  int64_t chunk = 8;           // images per forward/backward pass (memory)
  bool progress = true;
};

// [images, 3, H, W] normalised like the model's eval transform, deterministic for a seed and thread count.
// Error: images < 1, iters < 0, a model without classes.
at::Tensor synthesize_calibration(const Graph& graph, const SyntheticOptions& options);

// "synthetic" or "synthetic:N" as a --calib argument: true and N (0 when not given); false for anything else (a
// folder; ./synthetic names a folder called so). Error for "synthetic:" followed by anything but 1-1024.
bool parse_synthetic_calib(const std::string& calib, int64_t* count);

// The outputs whose per-channel statistics a BatchNorm's running statistics fix: a conv with a BatchNorm folded in
// (attrs bn_mean / bn_std) or a BatchNorm op with constant statistics; mean and std as float tensors [C].
struct BatchNormTarget {
  std::string node;
  at::Tensor mean, std;
};
std::vector<BatchNormTarget> batchnorm_targets(const Graph& graph);

// The mean over the BatchNorm outputs of the gap between the images' channel statistics and the targets (the term
// the synthesis minimises): near 0 for images like those the statistics were measured on. Error for a model without
// BatchNorm statistics or fewer than 2 images.
double batchnorm_statistics_gap(const Graph& graph, const at::Tensor& images);

// The names of the layers whose outputs are attention results (the Linear/Conv reached from each attn·v matmul
// through data movement only), in graph order.
std::vector<std::string> attention_output_layers(const Graph& graph);

}  // namespace vitq
