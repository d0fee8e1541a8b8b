// Observers estimate a quantizer's range from data, with a two-call contract: collect(x) for every batch,
// then compute() once. Statistics are kept in the quantizer's granularity (see QuantSpec).
//   minmax      running min and max
//   percentile  the p-th / (100-p)-th percentiles of the collected values (per tensor)
//   mse         OMSE: the clipping of [min, max] (90 candidates, 1% steps down to 11%) with the lowest squared
//               quantization error on the collected values, per scale group
//   kl          TensorRT-style entropy calibration: the |x| threshold whose quantized histogram has the
//               smallest KL divergence from the observed one (per tensor, 2048 bins)
#pragma once
#include <ATen/core/Tensor.h>

#include <memory>
#include <string>

#include "vitq/quant/quantizer.h"

namespace vitq {

class Observer {
 public:
  explicit Observer(QuantSpec spec) : spec_(spec) {}
  virtual ~Observer() = default;
  virtual void collect(const at::Tensor& x) = 0;
  // Error if nothing was collected.
  virtual QuantParams compute() const = 0;
  const QuantSpec& spec() const { return spec_; }

 protected:
  QuantSpec spec_;
};

struct ObserverOptions {
  double percentile = 99.99;
  int64_t max_samples = 1 << 22;  // values kept for percentile / mse / kl (whole leading slices of batches)
};

// kind: minmax | percentile | mse | kl
std::unique_ptr<Observer> make_observer(const std::string& kind, const QuantSpec& spec, const ObserverOptions& options = {});

}  // namespace vitq
