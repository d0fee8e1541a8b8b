// `vitq bench`: FP32 throughput of a model, model only (random input, median of timed runs) and end to end
// (decode + preprocess + model over real images), next to a baseline measured in the same run: the sgemm rate
// of this machine's BLAS through libtorch, so a result reads as "fraction of what the hardware gives".
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "vitq/eval/evaluate.h"
#include "vitq/eval/model_stats.h"
#include "vitq/graph/executor.h"
#include "vitq/models/model_loader.h"
#include "vitq/util/error.h"

namespace vitq::cli {

namespace {
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

template <class F>
std::vector<double> time_runs(size_t warmup, size_t iters, F&& f) {
  for (size_t i = 0; i < warmup; ++i) f();
  std::vector<double> t;
  for (size_t i = 0; i < iters; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return t;
}
}  // namespace

int run_bench(const BenchOptions& o) {
  const int threads = set_threads(o.threads);
  check_device(o.device);
  Graph g = load_model(o.model);
  ModelStats stats = model_stats(g);
  const c10::Device device(o.device == "cuda" ? c10::kCUDA : c10::kCPU);
  const auto& p = g.meta.preprocess;
  const auto B = static_cast<int64_t>(o.batch);
  at::InferenceMode guard;
  auto sync = [&] {
    if (device.is_cuda()) at::zeros({1}, at::TensorOptions().device(device)).cpu();
  };

  // Baseline: sgemm at the shape of the model's largest layer as a GEMM: a Linear ([B*N, C] x [C, 4C] for a
  // ViT's fc1) or a convolution as im2col ([B*H*W, Cin/groups*k*k] x [.., Cout]).
  int64_t rows = B * 197, inner = 192, cols = 768;
  int64_t best = 0;
  for (const auto& l : stats.quantizable) {
    if ((l.op != "Linear" && l.op != "Conv2d") || l.weight_shape.size() < 2 || l.macs <= best) continue;
    int64_t k = 1;
    for (size_t d = 1; d < l.weight_shape.size(); ++d) k *= l.weight_shape[d];
    best = l.macs;
    inner = k;
    cols = l.weight_shape[0];
    rows = B * (l.macs / (inner * cols));
  }
  auto a = at::randn({rows, inner}, at::TensorOptions().device(device));
  auto w = at::randn({inner, cols}, at::TensorOptions().device(device));
  auto gemm_t = time_runs(2, 20, [&] { at::mm(a, w); sync(); });
  const double gemm_gflops = 2.0 * static_cast<double>(rows * inner * cols) / median(gemm_t) / 1e9;

  Executor exec(g, device);
  auto x = at::randn({B, 3, p.input_height, p.input_width}).to(device);
  auto model_t = time_runs(2, o.iters, [&] { exec.run(x); sync(); });
  const double model_ips = static_cast<double>(B) / median(model_t);
  const double model_gflops = 2.0 * static_cast<double>(stats.macs) * model_ips / 1e9;

  // Where the time goes: one profiled run, time per op kind (between consecutive node completions).
  std::map<std::string, double> op_seconds;
  {
    ExecHooks hooks;
    auto last = std::chrono::steady_clock::now();
    hooks.on_output = [&](const Node& n, const std::vector<at::Tensor>&) {
      sync();
      auto now = std::chrono::steady_clock::now();
      op_seconds[op_name(n.op)] += std::chrono::duration<double>(now - last).count();
      last = now;
    };
    exec.run(x, &hooks);
  }
  std::vector<std::pair<double, std::string>> by_time;
  for (auto& [op, t] : op_seconds) by_time.emplace_back(t, op);
  std::sort(by_time.rbegin(), by_time.rend());
  std::string profile;
  for (auto& [t, op] : by_time) profile += fmt::format("| {} | {:.1f} ms |\n", op, t * 1e3);

  EvalOptions eo;
  eo.batch = o.batch;
  eo.limit = o.limit;
  eo.device = o.device;
  eo.workers = o.workers;
  eo.progress = false;
  EvalResult r = evaluate(g, open_dataset(o.data), eo);

  char date[32];
  std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  nlohmann::json j = {
      {"date", date}, {"model", g.meta.name}, {"source", g.meta.source}, {"device", o.device},
      {"threads", threads}, {"batch", o.batch}, {"gmacs_per_image", static_cast<double>(stats.macs) / 1e9},
      {"baseline_sgemm", {{"shape", {rows, inner, cols}}, {"median_s", median(gemm_t)}, {"gflops", gemm_gflops}}},
      {"model_only", {{"iters", o.iters}, {"median_s", median(model_t)}, {"images_per_second", model_ips},
                      {"gflops", model_gflops}, {"fraction_of_sgemm", model_gflops / gemm_gflops}}},
      {"end_to_end", {{"data", o.data}, {"images", r.images}, {"seconds", r.seconds_total},
                      {"images_per_second", r.images_per_second()}, {"top1", r.top1_pct()}, {"workers", o.workers}}},
      {"op_seconds", op_seconds}};
  std::filesystem::create_directories(o.out_dir);
  // Named after the model's folder (the shared reference models share timm's architecture names with the real
  // networks but are narrower), else its architecture.
  const std::filesystem::path mp(o.model);
  std::string label = (std::filesystem::is_directory(mp) ? mp.filename() : mp.parent_path().filename()).string();
  if (label.empty() || label == "." || label == "..") label = g.meta.name.empty() ? "model" : g.meta.name;
  const std::string stem = fmt::format("{}/fp32_{}_{}_b{}_t{}", o.out_dir, label, o.device, o.batch, threads);
  std::ofstream(stem + ".json") << j.dump(2) << "\n";
  std::string md = fmt::format(
      "# FP32 throughput: {} ({}, {} threads, batch {})\n\n{}\n\n"
      "| measurement | median | rate |\n|---|---|---|\n"
      "| baseline sgemm {}x{}x{} (same run) | {:.2f} ms | {:.0f} GFLOP/s |\n"
      "| model only ({} iterations) | {:.1f} ms/batch | {:.1f} images/s ({:.0f} GFLOP/s, {:.0f}% of sgemm) |\n"
      "| end to end: decode + preprocess + model, {} images | {:.1f} s total | {:.1f} images/s |\n"
      "\nTime per op kind, one batch (profiled run):\n\n| op | time |\n|---|---|\n{}",
      label == g.meta.name ? label : fmt::format("{} ({})", label, g.meta.name), o.device, threads, o.batch, date, rows, inner, cols, median(gemm_t) * 1e3, gemm_gflops, o.iters,
      median(model_t) * 1e3, model_ips, model_gflops, 100.0 * model_gflops / gemm_gflops, r.images, r.seconds_total,
      r.images_per_second(), profile);
  std::ofstream(stem + ".md") << md;
  fmt::print("{}\nwrote {}.json and {}.md\n", md, stem, stem);
  return 0;
}

}  // namespace vitq::cli
