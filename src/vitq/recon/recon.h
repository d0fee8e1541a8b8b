// The reconstruction engine: optimises the quantizers of one block of a model at a time so that the block's
// quantized output matches its FP output on calibration images (BRECQ, QDrop, AdaRound, LSQ — see
// docs/decisions.md, "Reconstruction").
//
// A block is a range of nodes [begin, end) in graph order — one layer, one transformer block, a bridge block,
// a convolution stage — with the activation values it reads from before the range (its inputs) and the values
// it produces that are read after it (its outputs). Inside a block, with libtorch autograd and Adam:
//   - the weight rounding of every uniform weight quantizer is learned (AdaRound, learnable.h) and written back
//     into the plan as integer codes (QuantPoint::codes), so the plan stays what an integer runtime executes;
//   - the step (and zero point, when asymmetric) of every uniform activation quantizer is learned (LSQ; the step
//     as exp(θ) so that one learning rate suits steps of any size); zero points stay on the integer grid;
//   - with learn_log, the scale and base τ of every AdaLog activation quantizer are learned too (adalog_fake_quant
//     in learnable.h; both as exp(θ)); its shift stays;
//   - other quantizers (twin uniform, log2, power-of-two factor) and integer LayerNorm / softmax are applied as
//     the plan says and not trained (integer ops pass gradients straight through);
//   - QDrop (default 0.5, 0 = off): each element of each activation quantizer's input keeps its unquantized
//     value with probability `qdrop` during training (in steps of 1/256);
//   - loss: Σ (Ô − O)² over a block's outputs per image (mse), or weighted by the squared gradient of
//     −log p_FP(y) at O with y drawn from the FP prediction (fisher, the diagonal Fisher / Hessian weighting
//     PTQ4ViT's metric uses; one backward pass of the FP model serves every block), or (fisher-dplr) that plus,
//     per image, (Σ g·(Ô − O))² on the same scale: the Fisher quadratic form along the sampled label's gradient,
//     whose expectation over the label is the full Fisher form Δᵀ F Δ (the second-order KL increase) that the
//     diagonal leaves out — a diagonal-plus-low-rank Fisher as FIMA-Q's, one rank per image; plus AdaRound's
//     rounding regulariser after a warm-up.
// Blocks are reconstructed in order, each on the inputs the quantized model (with the blocks before it already
// reconstructed) produces, against the FP model's outputs. A block whose final loss (hard rounding, all
// images) is not below its starting loss keeps its starting parameters.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "vitq/graph/executor.h"
#include "vitq/quant/plan.h"

namespace vitq::recon {

struct ReconOptions {
  std::string mode = "block";   // how the pipeline cuts the model: "layer" (each quantized layer) or "block"
  int iters = 300;              // Adam steps per block
  int batch = 8;                // images per step
  int images = 0;               // calibration images used (0: all)
  double lr_round = 2e-2;       // AdaRound's V
  double lr_scale = 2e-3;       // log of activation steps
  double lr_zero_point = 5e-2;  // activation zero points (in codes)
  double lr_log = 2e-4;         // log of AdaLog scales and bases (learn_log)
  double round_weight = 0.01;   // λ of the rounding regulariser
  double warmup = 0.2;          // fraction of the steps before the regulariser starts
  double beta_start = 20, beta_end = 2;
  std::string loss = "fisher";  // "fisher" | "fisher-dplr" | "mse"
  // Fisher loss only: each block's weights (squared gradients, mean 1) become (w + damping) / (1 + damping), a share
  // of plain squared error in every element, still mean 1 (0: the Fisher weights alone). The one-label Fisher puts
  // nearly all the weight on few elements (in DeiT-Tiny's last block
  // it can only sit on the class token, the one the head reads), leaving the rest unconstrained.
  double fisher_damping = 0;
  double qdrop = 0.5;           // probability of keeping an activation unquantized during training (0: off)
  bool learn_rounding = true, learn_steps = true;
  bool learn_log = false;       // also AdaLog activation quantizers' scale and base (with learn_steps)
  // FIMA-Q's token-wise activation steps: before the blocks are reconstructed, every per-tensor uniform input of a
  // Linear whose input is [B, N, C] gets one step and zero point per token (the same start for every token, then
  // learned with the other steps; needs learn_steps)
  bool token_scales = false;
  // augmented views: each of the images gets this many more, each a random resized crop of it (30–100% of the
  // area, aspect 3/4–4/3, resized back bilinearly) flipped left-right half the time, seeded; the targets are the
  // FP model's outputs on them (0: the images alone)
  int augment = 0;
  uint64_t seed = 0;
  std::string device = "cpu";   // "cpu" | "cuda" (| "cuda:N")
  bool progress = true;
  // bytes reconstruct() may use on the CPU; it refuses to start when reconstruction_bytes says more (0: what the
  // system has available, available_memory_bytes; not recorded in the plan)
  double memory_available = 0;
  // Called after every step with the block's name, the step and the trainable tensors (tests poison them).
  std::function<void(const std::string& block, int step, std::vector<at::Tensor>& params)> on_step;

  void validate() const;  // one-line Error for nonsense values
  nlohmann::json to_json() const;
};

struct Block {
  std::string name;
  size_t begin = 0, end = 0;   // node range
  std::vector<int> inputs;     // value ids read in the range and made before it (the image, activations, and
                               // values of constants alone such as a gathered bias, which are not per image)
  std::vector<int> outputs;    // value ids made in the range and read after it (or the graph output)
};
// The block of nodes [begin, end): inputs and outputs found from the graph.
Block make_block(const Graph& g, size_t begin, size_t end, const std::string& name);
// The block that covers a bridge block's layers (from the first to the last, and what lies between).
Block bridge_block(const Graph& g, const BridgeBlock& bridge);
// The blocks the pipeline reconstructs for `plan`, in graph order, covering every quantized layer once:
//   mode "layer": one block per quantized layer (Linear, Conv2d, attention MatMul);
//   mode "block": layers grouped by the module they belong to (the name up to its last index, e.g.
//     "blocks.3", "stages.2.1.transformer.0"), each group widened to the nearest points where a single tensor
//     carries the whole state (the residual stream between transformer blocks);
//   `joint`: these bridge blocks become one block each (Q-HyViT); the rest as `mode` says.
std::vector<Block> plan_blocks(const Graph& g, const QuantPlan& plan, const std::string& mode,
                               const std::vector<BridgeBlock>& joint = {});

struct BlockResult {
  std::string name;
  int points = 0, learned = 0;    // quantization points in the block, of which trained
  double loss_start = 0, loss_end = 0;  // on all images, hard rounding, per image
  int steps = 0;                  // steps taken
  bool kept_start = false;        // final loss not lower: the starting parameters stay
  bool stopped_nonfinite = false; // the loss went NaN / Inf: stopped, last finite parameters kept
  int64_t zero_points_clamped = 0;
  double seconds = 0;
};

// The reconstruction loss of a batch of `images` images (rows grouped per image), summed over the images:
//   Σ w · (out − target)²  (w = 1 when `weights` is empty)
//   + Σ over images of (Σ over the image's elements of every output of u · (out − target))²  (when `directions`
//     is not empty: u, same shapes as the targets, e.g. the scaled Fisher gradients of fisher-dplr).
at::Tensor block_loss(const std::vector<at::Tensor>& outs, const std::vector<at::Tensor>& targets, const std::vector<at::Tensor>& weights,
                      const std::vector<at::Tensor>& directions, int64_t images);

// `views` augmented views of each image of `images` [N, C, H, W] (ReconOptions::augment), in the order image 0's
// views, image 1's, ...: [N·views, C, H, W]. Deterministic for a seed.
at::Tensor augment_views(const at::Tensor& images, int views, uint64_t seed);

// Reconstructs one block: `inputs` are the values of block.inputs and `targets` the FP values of
// block.outputs, on `images` images (rows grouped per image); `weights` (same shapes as targets, or empty for
// the plain MSE) weigh the squared error, and `directions` (same shapes, or empty) add block_loss's per-image
// term. Writes the learned parameters into `plan`.
BlockResult reconstruct_block(const Executor& ex, QuantPlan& plan, const Block& block, const std::vector<at::Tensor>& inputs,
                              const std::vector<at::Tensor>& targets, const std::vector<at::Tensor>& weights,
                              int64_t images, const ReconOptions& options, const std::vector<at::Tensor>& directions = {});

// About how many bytes reconstruct() holds at its peak on the CPU for `images` reconstruction images (views
// included), `image` one of them [1, C, H, W], from one image passed through the graph: per image, the image, the
// Fisher gradients of every block's output (fisher losses), the values alive at a block boundary four times (the FP
// and quantized streams, each holding them twice while it advances), and the largest block's inputs and targets
// (with weights and directions) copied for training; plus, once, the values alive inside a node for the images the
// two streams run at once (32 on the CPU).
double reconstruction_bytes(const Graph& g, const at::Tensor& image, int64_t images, const std::vector<Block>& blocks,
                            const ReconOptions& options);

// The whole pipeline over `blocks` (plan_blocks), on the calibration images. On the CPU it first refuses (one-line
// Error) to start a run whose reconstruction_bytes exceed the memory available (ReconOptions::memory_available).
// Records what it did in plan.settings["reconstruction"].
std::vector<BlockResult> reconstruct(const Graph& g, const at::Tensor& calib, QuantPlan& plan, const std::vector<Block>& blocks,
                                     const ReconOptions& options);

// Per-image mean of Σ (Ô − O)² over the block's outputs, the block fed the quantized model's own inputs (for
// measuring a plan against another).
double block_output_mse(const Graph& g, const at::Tensor& images, const QuantPlan& plan, const Block& block);

// ∂(−log p_FP(y))/∂v on the FP model for each value v in `values`, y drawn (seeded) from the FP prediction of
// each image; images run on `device` in chunks of 4 (32 on a GPU). Values that do not reach the logits get zeros. The
// gradients stay on `device`.
std::map<int, at::Tensor> fisher_gradients(const Graph& g, const at::Tensor& images, uint64_t seed, const std::vector<int>& values,
                                           const c10::Device& device = c10::Device(c10::kCPU));

}  // namespace vitq::recon
