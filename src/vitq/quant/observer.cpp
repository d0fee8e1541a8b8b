#include "vitq/quant/observer.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <vector>

#include "vitq/util/error.h"

namespace vitq {

namespace {

class MinMaxObserver : public Observer {
 public:
  using Observer::Observer;
  void collect(const at::Tensor& x) override {
    auto lo = reduce_amin(x.detach().to(at::kFloat), spec_), hi = reduce_amax(x.detach().to(at::kFloat), spec_);
    lo_ = lo_.defined() ? at::minimum(lo_, lo) : lo;
    hi_ = hi_.defined() ? at::maximum(hi_, hi) : hi;
  }
  QuantParams compute() const override {
    if (!lo_.defined()) fail("observer saw no data");
    return params_from_range(lo_, hi_, spec_);
  }

 private:
  at::Tensor lo_, hi_;
};

// Keeps whole leading slices (along dim 0) of what it sees, up to max_samples values.
class SampleObserver : public Observer {
 public:
  SampleObserver(QuantSpec spec, ObserverOptions opt) : Observer(spec), opt_(opt) {}
  void collect(const at::Tensor& x) override {
    auto t = x.detach().to(at::kFloat);
    if (t.dim() == 0) t = t.reshape({1});
    int64_t have = 0;
    for (const auto& s : samples_) have += s.numel();
    const int64_t per_row = std::max<int64_t>(1, t.numel() / std::max<int64_t>(1, t.size(0)));
    const int64_t rows = std::min<int64_t>(t.size(0), std::max<int64_t>(0, (opt_.max_samples - have) / per_row));
    if (rows > 0) samples_.push_back(t.narrow(0, 0, rows).contiguous());
    else if (samples_.empty()) samples_.push_back(t.narrow(0, 0, 1).contiguous());
  }

 protected:
  at::Tensor all() const {
    if (samples_.empty()) fail("observer saw no data");
    return at::cat(samples_, 0);
  }
  ObserverOptions opt_;
  std::vector<at::Tensor> samples_;
};

class PercentileObserver : public SampleObserver {
 public:
  using SampleObserver::SampleObserver;
  QuantParams compute() const override {
    auto v = all().flatten();
    const double p = opt_.percentile / 100.0;
    auto sorted = std::get<0>(v.sort());
    auto at_q = [&](double q) {
      auto idx = static_cast<int64_t>(std::llround(q * static_cast<double>(v.numel() - 1)));
      return sorted[idx].reshape({});
    };
    // one percentile pair for the whole tensor, in the statistics shape of the spec
    const auto shape = reduce_amax(all(), spec_).sizes().vec();
    auto lo = at_q(1.0 - p).expand(shape).contiguous(), hi = at_q(p).expand(shape).contiguous();
    return params_from_range(lo, hi, spec_);
  }
};

class MseObserver : public SampleObserver {
 public:
  using SampleObserver::SampleObserver;
  QuantParams compute() const override {
    auto x = all();
    auto lo = reduce_amin(x, spec_), hi = reduce_amax(x, spec_);
    QuantParams best;
    at::Tensor best_err;
    for (int k = 0; k < 90; ++k) {
      const double r = 1.0 - 0.01 * k;
      auto p = params_from_range(lo * r, hi * r, spec_);
      auto diff = (fake_quant(x, spec_, p) - x).pow(2);
      // squared error summed per scale group
      at::Tensor err = spec_.granularity == Granularity::PerGroup
                           ? diff.reshape({x.size(0), x.size(1) / spec_.group_size, spec_.group_size}).sum(-1)
                           : (spec_.granularity == Granularity::PerTensor ? diff.sum().reshape(p.scale.sizes())
                                                                         : reduce_sum(diff));
      if (!best_err.defined()) {
        best = p;
        best_err = err;
        continue;
      }
      auto better = err < best_err;
      best_err = at::where(better, err, best_err);
      best.scale = at::where(better, p.scale, best.scale);
      best.zero_point = at::where(better, p.zero_point, best.zero_point);
    }
    return best;
  }

 private:
  at::Tensor reduce_sum(const at::Tensor& d) const {
    std::vector<int64_t> dims;
    const int64_t axis = spec_.axis < 0 ? spec_.axis + d.dim() : spec_.axis;
    for (int64_t i = 0; i < d.dim(); ++i)
      if (i != axis) dims.push_back(i);
    return d.sum(dims, true);
  }
};

class KlObserver : public SampleObserver {
 public:
  using SampleObserver::SampleObserver;
  QuantParams compute() const override {
    if (spec_.granularity != Granularity::PerTensor) fail("the kl observer supports per-tensor quantizers only");
    const auto shape = reduce_amax(all(), spec_).sizes().vec();
    auto x = all().flatten();
    const bool nonneg = x.min().item<float>() >= 0.0f;
    auto a = x.abs();
    const double amax = a.max().item<double>();
    if (amax == 0.0) return params_from_range(at::zeros(shape), at::zeros(shape), spec_);
    constexpr int kBins = 2048;
    auto hist_t = at::histc(a, kBins, 0.0, amax).to(at::kDouble).contiguous();
    std::vector<double> hist(hist_t.data_ptr<double>(), hist_t.data_ptr<double>() + kBins);
    // Levels of the target grid that cover |x|: all of them for non-negative data, half for signed data
    // (the range becomes [-T, T]).
    const int64_t all_levels = spec_.qmax() - spec_.qmin();
    const int levels = static_cast<int>(nonneg ? all_levels : std::max<int64_t>(1, all_levels / 2));
    const int start = std::min(kBins, std::max(levels, 128));
    double best_kl = std::numeric_limits<double>::infinity();
    int best_i = kBins;
    for (int i = start; i <= kBins; ++i) {
      // P: the first i bins, everything beyond folded into the last one
      std::vector<double> p(hist.begin(), hist.begin() + i);
      for (int j = i; j < kBins; ++j) p[static_cast<size_t>(i - 1)] += hist[static_cast<size_t>(j)];
      // Q: P merged into `levels` buckets and spread back over the non-empty bins of each bucket
      std::vector<double> q(static_cast<size_t>(i), 0.0);
      for (int b = 0; b < levels; ++b) {
        const int lo = static_cast<int>(static_cast<int64_t>(b) * i / levels);
        const int hi = static_cast<int>(static_cast<int64_t>(b + 1) * i / levels);
        double sum = 0;
        int nonzero = 0;
        for (int j = lo; j < hi; ++j) {
          sum += hist[static_cast<size_t>(j)];
          nonzero += hist[static_cast<size_t>(j)] > 0;
        }
        for (int j = lo; j < hi; ++j)
          if (hist[static_cast<size_t>(j)] > 0) q[static_cast<size_t>(j)] = sum / nonzero;
      }
      double ps = 0, qs = 0;
      for (int j = 0; j < i; ++j) {
        ps += p[static_cast<size_t>(j)];
        qs += q[static_cast<size_t>(j)];
      }
      if (ps <= 0 || qs <= 0) continue;
      double kl = 0;
      for (int j = 0; j < i; ++j) {
        double pj = p[static_cast<size_t>(j)] / ps, qj = q[static_cast<size_t>(j)] / qs;
        if (pj > 0) kl += pj * std::log(pj / std::max(qj, 1e-12));
      }
      if (kl < best_kl) {
        best_kl = kl;
        best_i = i;
      }
    }
    const double threshold = (best_i + 0.5) * amax / kBins;
    auto hi = at::full(shape, std::min(threshold, amax), at::kFloat);
    auto lo = nonneg ? at::zeros(shape) : -hi;
    return params_from_range(lo, hi, spec_);
  }
};

}  // namespace

std::unique_ptr<Observer> make_observer(const std::string& kind, const QuantSpec& spec, const ObserverOptions& opt) {
  spec.validate();
  if (kind == "minmax") return std::make_unique<MinMaxObserver>(spec);
  if (kind == "percentile") {
    if (!(opt.percentile > 50.0 && opt.percentile <= 100.0)) fail("percentile must be in (50, 100], got {}", opt.percentile);
    return std::make_unique<PercentileObserver>(spec, opt);
  }
  if (kind == "mse") return std::make_unique<MseObserver>(spec, opt);
  if (kind == "kl") return std::make_unique<KlObserver>(spec, opt);
  fail("unknown observer '{}' (minmax, percentile, mse, kl)", kind);
}

}  // namespace vitq
