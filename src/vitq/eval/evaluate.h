// FP32 (and, later, quantized) evaluation over a labelled image set: top-1/top-5 and throughput.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "vitq/data/dataset.h"
#include "vitq/graph/graph.h"

namespace vitq {

struct QuantPlan;

struct EvalOptions {
  const QuantPlan* plan = nullptr;  // evaluate the fake-quantized model (and compare it with FP) when set
  const std::vector<float>* fp_logits = nullptr;  // FP logits of the same images, in order (saves the FP run)
  size_t batch = 32;
  size_t limit = 0;          // 0 = every image
  bool strict = false;       // stop at the first image that fails to decode
  bool progress = true;
  int workers = 1;           // decoding threads
  std::string device = "cpu";
  bool keep_logits = false;
  // Runs the model instead of vitq's executor (ONNX Runtime, the integer runtime): its logits are scored, and
  // compared with vitq's own (the fake-quant model under `plan`, else FP32) on the same images.
  std::function<at::Tensor(const at::Tensor&)> runtime;
};

struct EvalResult {
  size_t images = 0;          // evaluated (decoded) images
  size_t failed = 0;          // images that could not be read
  size_t top1 = 0, top5 = 0;  // correct counts
  // with a plan: how often the quantized model's top-1 equals FP's, and mean KL(FP softmax || quantized softmax)
  size_t agree = 0;
  double kl_sum = 0;
  size_t fp_top1 = 0;
  double agreement_pct() const { return images ? 100.0 * static_cast<double>(agree) / static_cast<double>(images) : 0.0; }
  double mean_kl() const { return images ? kl_sum / static_cast<double>(images) : 0.0; }
  double fp_top1_pct() const { return images ? 100.0 * static_cast<double>(fp_top1) / static_cast<double>(images) : 0.0; }
  // with a runtime: agreement of its top-1 with vitq's own model, that model's top-1, max |logit difference|
  size_t vitq_agree = 0, vitq_top1 = 0;
  double max_logit_diff = 0;
  double vitq_agreement_pct() const { return images ? 100.0 * static_cast<double>(vitq_agree) / static_cast<double>(images) : 0.0; }
  double vitq_top1_pct() const { return images ? 100.0 * static_cast<double>(vitq_top1) / static_cast<double>(images) : 0.0; }
  double seconds_total = 0, seconds_model = 0;
  std::vector<std::string> failures;
  std::vector<int64_t> labels, predictions;
  std::vector<float> logits;  // [images, classes] when keep_logits
  double top1_pct() const { return images ? 100.0 * static_cast<double>(top1) / static_cast<double>(images) : 0.0; }
  double top5_pct() const { return images ? 100.0 * static_cast<double>(top5) / static_cast<double>(images) : 0.0; }
  double images_per_second() const { return seconds_total > 0 ? static_cast<double>(images) / seconds_total : 0.0; }
  double model_images_per_second() const { return seconds_model > 0 ? static_cast<double>(images) / seconds_model : 0.0; }
};

// "cpu" or "cuda" (Error if this libtorch has no usable GPU).
void check_device(const std::string& device);
EvalResult evaluate(const Graph& graph, const Dataset& data, const EvalOptions& options);

}  // namespace vitq
