#include "vitq/eval/evaluate.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <chrono>
#include <memory>
#include <cstring>

#include "vitq/data/loader.h"
#include "vitq/graph/executor.h"
#include "vitq/quant/fake_quant.h"
#include "vitq/util/error.h"
#include "vitq/util/progress.h"

namespace vitq {

namespace {
// The first node (in execution order) whose output holds an inf or NaN when vitq's own model runs `input`.
std::string first_nonfinite_layer(const Executor& exec, const QuantizedModel* quant, const at::Tensor& input) {
  std::string first;
  ExecHooks watch;
  watch.on_output = [&first](const Node& n, const std::vector<at::Tensor>& outs) {
    if (!first.empty()) return;
    for (const auto& t : outs)
      if (t.defined() && t.is_floating_point() && !at::isfinite(t).all().item<bool>()) {
        first = n.name;
        return;
      }
  };
  if (quant) quant->run(input, &watch);
  else exec.run(input, &watch);
  return first;
}
}  // namespace

void check_device(const std::string& device) {
  if (device == "cpu") return;
  if (device == "cuda") {
    if (!at::hasCUDA()) fail("--device cuda: this build of libtorch has no CUDA support or no GPU is visible");
    return;
  }
  fail("unknown device '{}' (cpu, cuda)", device);
}

EvalResult evaluate(const Graph& graph, const Dataset& full, const EvalOptions& opt) {
  check_device(opt.device);
  check_labels(full, graph.meta.num_classes);
  Dataset data = full;
  if (opt.limit > 0 && opt.limit < data.samples.size()) data.samples.resize(opt.limit);
  const c10::Device device(opt.device == "cuda" ? c10::kCUDA : c10::kCPU);
  Executor exec(graph, device);
  std::unique_ptr<QuantizedModel> quant;
  if (opt.plan) quant = std::make_unique<QuantizedModel>(graph, *opt.plan, device);
  at::InferenceMode guard;
  const auto& pre = graph.meta.preprocess;
  BatchLoader loader(data, pre, opt.batch, opt.workers);
  Progress bar("eval", data.samples.size(), opt.progress);
  EvalResult r;
  const auto t0 = std::chrono::steady_clock::now();
  size_t seen = 0;
  while (auto batch = loader.next()) {
    seen += batch->size() + batch->errors.size();
    for (const auto& e : batch->errors) {
      if (opt.strict) fail("{} (stopping: --strict)", e);
      fmt::print(stderr, "\nvitq: warning: skipped unreadable image {}\n", e);
      r.failures.push_back(e);
    }
    r.failed += batch->errors.size();
    if (batch->size() == 0) continue;
    const auto n = static_cast<int64_t>(batch->size());
    auto input = at::from_blob(batch->pixels.data(), {n, 3, pre.input_height, pre.input_width}, at::kFloat);
    const auto m0 = std::chrono::steady_clock::now();
    at::Tensor logits = (opt.runtime ? opt.runtime(input) : quant ? quant->run(input) : exec.run(input)).to(at::kCPU).contiguous();
    r.seconds_model += std::chrono::duration<double>(std::chrono::steady_clock::now() - m0).count();
    if (logits.dim() != 2 || logits.size(0) != n) fail("model output has shape [{}], expected [{}, classes]", fmt::join(logits.sizes(), ", "), n);
    if (!at::isfinite(logits).all().item<bool>()) {
      const std::string first = first_nonfinite_layer(exec, quant.get(), input);
      fail("the model produced non-finite logits (inf or NaN): {}",
           first.empty() ? std::string("vitq's own model stays finite on these images (the runtime's fault)")
                         : fmt::format("the first layer with a non-finite output is {}{}", first, opt.plan ? " (check the plan's scales and biases)" : ""));
    }
    at::Tensor own;  // vitq's own logits, when a runtime replaced it
    if (opt.runtime) {
      own = (quant ? quant->run(input) : exec.run(input)).to(at::kCPU);
      if (own.sizes() != logits.sizes()) fail("the runtime's logits have shape [{}], vitq's [{}]", fmt::join(logits.sizes(), ", "), fmt::join(own.sizes(), ", "));
      auto own_pred = own.argmax(1);
      auto labels = at::tensor(std::vector<int64_t>(batch->labels.begin(), batch->labels.end()));
      r.vitq_agree += static_cast<size_t>((own_pred == logits.argmax(1)).sum().item<int64_t>());
      r.vitq_top1 += static_cast<size_t>((own_pred == labels).sum().item<int64_t>());
      r.max_logit_diff = std::max(r.max_logit_diff, (own - logits).abs().max().item<double>());
    }
    if (quant || opt.runtime) {  // compare with FP on the same images
      at::Tensor fp;
      if (!quant) {
        fp = own;
      } else if (opt.fp_logits) {
        const size_t classes = static_cast<size_t>(logits.size(1)), offset = r.images * classes;
        if (opt.fp_logits->size() < offset + static_cast<size_t>(n) * classes) fail("FP logits do not cover the data set");
        fp = at::from_blob(const_cast<float*>(opt.fp_logits->data() + offset), {n, logits.size(1)}, at::kFloat);
      } else {
        fp = exec.run(input).to(at::kCPU);
      }
      auto fp_pred = fp.argmax(1);
      r.agree += static_cast<size_t>((fp_pred == logits.argmax(1)).sum().item<int64_t>());
      auto labels = at::tensor(std::vector<int64_t>(batch->labels.begin(), batch->labels.end()));
      r.fp_top1 += static_cast<size_t>((fp_pred == labels).sum().item<int64_t>());
      auto lp = at::log_softmax(fp.to(at::kDouble), 1), lq = at::log_softmax(logits.to(at::kDouble), 1);
      r.kl_sum += (lp.exp() * (lp - lq)).sum().item<double>();
    }
    const int64_t k = std::min<int64_t>(5, logits.size(1));
    auto top = std::get<1>(logits.topk(k, 1)).contiguous();
    const int64_t* t = top.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t label = batch->labels[static_cast<size_t>(i)];
      r.labels.push_back(label);
      r.predictions.push_back(t[i * k]);
      if (t[i * k] == label) ++r.top1;
      for (int64_t j = 0; j < k; ++j)
        if (t[i * k + j] == label) ++r.top5;
    }
    if (opt.keep_logits) r.logits.insert(r.logits.end(), logits.data_ptr<float>(), logits.data_ptr<float>() + logits.numel());
    r.images += batch->size();
    bar.update(seen, fmt::format("top-1 {:.2f}%", r.top1_pct()));
  }
  r.seconds_total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  bar.finish(fmt::format("top-1 {:.2f}%", r.top1_pct()));
  if (r.images == 0) fail("no image of {} could be read", data.root);
  return r;
}

}  // namespace vitq
