// PTQ methods, one per file, reached through a registry by name. Each turns a graph and a calibration batch
// into a calibrated QuantPlan.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <vector>

#include "vitq/quant/calibration.h"
#include "vitq/quant/observer.h"
#include "vitq/quant/plan.h"
#include "vitq/recon/recon.h"

namespace vitq {

struct MethodOptions {
  PlacementOptions placement;  // wbits / abits live here
  ObserverOptions observer;
  uint64_t seed = 0;
  bool progress = true;
  // "paper": each method quantizes where and how its paper does (docs/methods.md in this repo);
  // "common": every method uses `placement` as given (the literature's common protocol), so results compare.
  std::string convention = "paper";
  // FP inputs / outputs of the quantizable layers on the calibration batch, when the caller already has them
  // (vitq compare captures them once for every method); null = the method captures them.
  const LayerTensors* fp_layers = nullptr;
  // The images a reconstruction optimises on when it is given more than the calibration batch (`--recon-images`
  // above `--calib-size`: the same seeded draw, longer, so the calibration batch comes first); null = the
  // calibration batch. The method's own search still sees the calibration batch alone.
  const at::Tensor* recon_calib = nullptr;
  // liu2021
  bool ranking = true;              // ranking-aware loss on the q·kᵀ matmul
  bool bias_correction = true;
  std::string similarity = "pearson";  // or "cosine"
  int search_steps = 100;           // grid points in [0.5, 1.2] x the min-max step
  int search_images = 8;            // calibration images the similarity is measured on (ranges use them all)
  double ranking_weight = 1.0;      // γ
  // keep a searched step only where it also scores better than min/max on the next search_images calibration
  // images, which the search did not score on (liu2021.cpp; the variant liu2021+holdout)
  bool holdout = false;
  // keep a kind of input's searched steps only where the model's KL on the calibration images, with that kind alone
  // quantized, is lower than with min/max's steps (liu2021.cpp). On by default (vitq's fix of the paper's search,
  // issue 11); off in the variant liu2021+paper
  bool kl_check = true;
  bool mixed_precision = false;
  double avg_bits = 0;              // mixed-precision budget (average bits over weights, and over activations)
  // how widths are chosen: "kind" (vitq's, the default: one width a kind of layer, weights and inputs apart, by the
  // model's KL with that kind alone quantized; liu2021.cpp), "nuclear" (the paper's, the variant liu2021+paper: one
  // width a layer, its output's nuclear norm x (1 − Pearson of its output)) or "kl" (vitq's, experimental, the
  // variant liu2021+mpkl: weights and inputs separately, by the model's KL from FP32, swaps from the uniform model
  // each checked on calibration images)
  std::string mp_sensitivity = "kind";
  // repqvit: the scale reparameterisation of post-LayerNorm inputs (off: they get the per-tensor search, the
  // variant repqvit+noreparam) and the log√2 post-softmax quantizer (off: uniform with the search, repqvit+nolog)
  bool reparam = true;
  bool log_softmax = true;
  // repqvit: ERQ-style ridge update of every Linear weight before it is quantized, W* = argmin ||W* x̂ − W x||² +
  // λ ||W* − W||² (x̂ its quantized input, x the same input unquantized), λ = erq_lambda × the mean of diag(x̂ᵀx̂);
  // 0 = off
  // (the variant repqvit+erq sets 0.1)
  double erq_lambda = 0;
  // repqvit: the uniform inputs of the attention MatMuls (q, kᵀ, v; the attention too under +nolog) get one step
  // and zero point per head instead of one per tensor, as AdaLog's and APHQ-ViT's codes quantize them (the
  // variant repqvit+headwise)
  bool matmul_per_head = false;
  // repqvit: weight ranges clipped by a least-squared-error search over 81 ratios of min/max per channel instead of
  // the percentile candidates (the variant repqvit+wmse; the start the 3-bit reconstruction needs)
  bool weight_mse = false;
  // repqvit: the uniform activation inputs the percentile search would calibrate (not the reparameterised ones)
  // clipped by a least-squared-error search over 81 geometric ratios of min/max (the variant repqvit+amse)
  bool activation_mse = false;
  // any method (the variant suffix +adalog): post-softmax and post-GELU inputs get AdaLog quantizers (a searched
  // log base) where those quantize them with less error than the method's own (adalog.cpp)
  bool adalog = false;
  // any method (the variant suffix +osearch): after the method (and +adalog), the clipping of every uniform quantizer
  // of a two-input layer searched on that layer's output error, alternating its two inputs (output_search.cpp)
  bool output_search = false;
  // +oslog: the output search also chooses each AdaLog quantizer's base and scale on the layer's output error (as
  // AdaLog's code does) instead of keeping +adalog's fit of the input alone; implies output_search
  bool output_search_log = false;
  // +osends: after the output search's α (both ends of min/max scaled alike), each end of an asymmetric uniform
  // quantizer searched on its own on the same output error (lower end, then upper); implies output_search
  bool output_search_ends = false;
  // easyquant / ptq4vit: alternating rounds (0 = the paper's: 2 for EasyQuant, 3 for PTQ4ViT)
  int rounds = 0;
  // fqvit: bits of the softmax output; 4 or fewer = Log-Int-Softmax (log2 codes), 8 = uniform 8-bit codes
  int attn_bits = 4;
  // Reconstruction after the method (recon/recon.h): "" = the method's default (qhyvit: block, others: none),
  // "none", "layer" or "block". `recon` holds its other options (its mode is set from this).
  std::string reconstruct;
  recon::ReconOptions recon;
  // qhyvit: reconstruct each bridge block as one block (Q-HyViT); off = bridge layers as `reconstruct` says
  bool joint_bridges = true;
};

// The FP layer tensors: options.fp_layers when set, else captured into `storage`.
const LayerTensors& fp_layer_tensors(const Graph& graph, const at::Tensor& calib, const MethodOptions& options,
                                     LayerTensors& storage);

using MethodFn = std::function<QuantPlan(const Graph&, const at::Tensor& calib, const MethodOptions&)>;

struct MethodInfo {
  std::string name, citation, summary;
  MethodFn run;
  bool reconstructs = false;  // runs the reconstruction itself (qhyvit); otherwise run_method adds it on request
};

const std::vector<MethodInfo>& method_registry();
const MethodInfo& find_method(const std::string& name);  // Error naming the known methods

// Runs a method and stamps the plan (model, method, settings), then checks it against the graph.
QuantPlan run_method(const Graph& graph, const at::Tensor& calib, const std::string& method, const MethodOptions& options);

// Each method file defines one of these (listed in registry.cpp).
MethodInfo baseline_minmax();
MethodInfo baseline_percentile();
MethodInfo baseline_omse();
MethodInfo method_liu2021();
MethodInfo method_easyquant();
MethodInfo method_fqvit();
MethodInfo method_ptq4vit();
MethodInfo method_qhyvit();
MethodInfo method_repqvit();

// AdaLog's quantizer for the values x (all of one quantizer's input): τ and scale searched, least squared error;
// `shifted`: shifted by −min(x) first (post-GELU).
struct AdaLogFit {
  QuantSpec spec;
  QuantParams params;
  double error = 0;  // mean squared quantization error of x
};
AdaLogFit fit_adalog(const at::Tensor& x, int bits, bool shifted);

// repqvit's least-squared-error clipping searches (+wmse, +amse): per row of the quantizer's granularity, the range
// [α·min, α·max] with the least mean squared quantization error of x; weights: α = 1, 0.99, …, 0.2; activations:
// α = 0.96^k, k = 0..80. α = 1 (min/max) is always a candidate.
QuantParams search_weight_mse(const at::Tensor& w, const QuantSpec& spec);
QuantParams search_activation_mse(const at::Tensor& x, const QuantSpec& spec);

// The +adalog stage any plan can go through: each post-softmax / post-GELU input quantizer is replaced by the AdaLog
// fit of the input it sees in the plan's model where that fit quantizes it with less error. Returns a record for
// the plan's settings ({"replaced", "kept", "taus": {node: τ}}).
nlohmann::json adalog_refit(const Graph& graph, const at::Tensor& calib, QuantPlan& plan, const MethodOptions& options);

// The output-error search any plan can go through (`+osearch`, after +adalog and before +recon): per two-input
// layer, in one sequential pass of the calibration batch, the clipping of each uniform quantizer chosen on the layer's
// output error (output_search.cpp). Returns a record for the plan's settings.
nlohmann::json output_search(const Graph& graph, const at::Tensor& calib, QuantPlan& plan, const MethodOptions& options);

// The reconstruction stage any plan can go through (`+recon`): blocks as `mode` says ("layer" / "block"),
// bridge blocks joint when given. Prints one line per block when options.progress.
void reconstruct_plan(const Graph& graph, const at::Tensor& calib, QuantPlan& plan, const std::string& mode,
                      const MethodOptions& options, const std::vector<BridgeBlock>& joint = {});

}  // namespace vitq
