// FP32 (and, later, quantized) evaluation over a labelled image set: top-1/top-5 and throughput.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "vitq/data/dataset.h"
#include "vitq/graph/graph.h"

namespace vitq {

struct EvalOptions {
  size_t batch = 32;
  size_t limit = 0;          // 0 = every image
  bool strict = false;       // stop at the first image that fails to decode
  bool progress = true;
  int workers = 1;           // decoding threads
  std::string device = "cpu";
  bool keep_logits = false;
};

struct EvalResult {
  size_t images = 0;          // evaluated (decoded) images
  size_t failed = 0;          // images that could not be read
  size_t top1 = 0, top5 = 0;  // correct counts
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
