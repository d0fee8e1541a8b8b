// `vitq bench`: FP32 throughput of a model, model only (random input, median of timed runs) and end to end
// (decode + preprocess + model over real images), next to a baseline measured in the same run: the sgemm rate
// of this machine's BLAS through libtorch, so a result reads as "fraction of what the hardware gives".
// Then every engine that can run the model, in the same run: batch-1 latency and batch-B throughput (medians)
// of vitq's executor, ONNX Runtime on the FP32 ONNX model (the model folder's model.onnx, else vitq's export),
// and with --plan ONNX Runtime on vitq's QDQ export of the plan.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "vitq/deploy/int8_runtime.h"
#include "vitq/deploy/onnx_export.h"
#include "vitq/deploy/ort_runtime.h"
#include "vitq/eval/evaluate.h"
#include "vitq/eval/model_stats.h"
#include "vitq/graph/executor.h"
#include "vitq/models/model_loader.h"
#include "vitq/quant/plan.h"
#include "vitq/util/blas.h"
#include "vitq/util/file_io.h"
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
  make_output_dir(o.out_dir, "--out");  // before the measurements, not after
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

  // Engines side by side: batch-1 latency and batch-B throughput, each engine timed in its own block.
  struct EngineResult {
    std::string name, detail;
    double latency_ms = 0, images_per_second = 0;
  };
  std::vector<EngineResult> engines;
  auto measure = [&](const std::string& name, const std::string& detail, const std::function<void(const at::Tensor&)>& run) {
    auto x1 = x.slice(0, 0, 1).contiguous();
    auto thr = time_runs(2, o.iters, [&] { run(x); sync(); });
    auto lat = time_runs(3, std::max<size_t>(3 * o.iters, 10), [&] { run(x1); sync(); });
    engines.push_back({name, detail, median(lat) * 1e3, static_cast<double>(B) / median(thr)});
    fmt::print(stderr, "bench: {}: {:.2f} ms at batch 1, {:.1f} images/s at batch {}\n", name, engines.back().latency_ms,
               engines.back().images_per_second, B);
  };
  measure("vitq FP32", device.is_cuda() ? "vitq executor (libtorch ops on CUDA)" : "vitq executor (oneDNN GEMMs, libtorch ops)", [&](const at::Tensor& in) { exec.run(in); });
  std::optional<QuantPlan> plan;
  std::map<std::string, double> int8_op_seconds;
  if (!o.plan.empty()) {
    plan = load_plan(o.plan, g);
    if (o.device == "cpu" && int8_runtime_available()) {
      Int8Model m(g, *plan);
      const auto& st = m.stats();
      measure("vitq int8", fmt::format("{} W{}A{}: {} Linear + {} MatMul + {} Conv2d in int8, {} simulated", plan->method,
                                       plan->settings.value("wbits", 0), plan->settings.value("abits", 0), st.native_linear,
                                       st.native_matmul, st.native_conv, st.fallbacks.size()),
              [&](const at::Tensor& in) { m.run(in); });
      auto t0 = std::chrono::steady_clock::now();
      m.run(x, [&](const Node& n) {
        auto now = std::chrono::steady_clock::now();
        int8_op_seconds[op_name(n.op)] += std::chrono::duration<double>(now - t0).count();
        t0 = now;
      });
    }
  }
  std::string ort_note;
  if (o.device == "cpu" && ort_available().ok) {
    std::string fp_onnx = o.onnx;
    if (fp_onnx.empty()) {
      const std::filesystem::path src(g.meta.source);
      if (src.extension() == ".onnx") fp_onnx = src.string();
      else if (std::filesystem::exists(src.parent_path() / "model.onnx")) fp_onnx = (src.parent_path() / "model.onnx").string();
    }
#if VITQ_WITH_ONNX
    std::optional<OrtModel> fp_model;
    if (fp_onnx.empty()) fp_model.emplace(OrtModel::from_bytes(export_onnx(g, nullptr).bytes, threads, "vitq's FP32 export"));
    else fp_model.emplace(OrtModel::from_file(fp_onnx, threads));
    measure(fmt::format("ONNX Runtime {} FP32", ort_available().version), fp_onnx.empty() ? "vitq's FP32 export" : fp_onnx,
            [&](const at::Tensor& in) { fp_model->run(in); });
    if (!o.plan.empty()) {
      ExportResult qdq = export_onnx(g, &*plan);
      OrtModel q_model = OrtModel::from_bytes(qdq.bytes, threads, "vitq's QDQ export");
      measure(fmt::format("ONNX Runtime {} on vitq's QDQ export", ort_available().version),
              fmt::format("{} W{}A{}", plan->method, plan->settings.value("wbits", 0), plan->settings.value("abits", 0)),
              [&](const at::Tensor& in) { q_model.run(in); });
    }
#else
    ort_note = "ONNX Runtime rows need the ONNX exporter (this vitq was built without libonnx)";
#endif
  } else {
    ort_note = o.device != "cpu" ? "ONNX Runtime runs on the CPU only" : ort_available().why;
  }
  if (!ort_note.empty()) fmt::print(stderr, "bench: no ONNX Runtime rows: {}\n", ort_note);

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
  const std::string blas = blas_info().summary();
  nlohmann::json j = {
      {"date", date}, {"model", g.meta.name}, {"source", g.meta.source}, {"device", o.device},
      {"threads", threads}, {"blas", blas}, {"batch", o.batch}, {"gmacs_per_image", static_cast<double>(stats.macs) / 1e9},
      {"baseline_sgemm", {{"shape", {rows, inner, cols}}, {"median_s", median(gemm_t)}, {"gflops", gemm_gflops}}},
      {"model_only", {{"iters", o.iters}, {"median_s", median(model_t)}, {"images_per_second", model_ips},
                      {"gflops", model_gflops}, {"fraction_of_sgemm", model_gflops / gemm_gflops}}},
      {"end_to_end", {{"data", o.data}, {"images", r.images}, {"seconds", r.seconds_total},
                      {"images_per_second", r.images_per_second()}, {"top1", r.top1_pct()}, {"workers", o.workers}}},
      {"op_seconds", op_seconds}};
  for (const auto& e : engines)
    j["engines"].push_back({{"name", e.name}, {"detail", e.detail}, {"latency_batch1_ms", e.latency_ms},
                            {"images_per_second", e.images_per_second}, {"batch", o.batch}});
  if (!o.plan.empty()) j["plan"] = o.plan;
  // Named after the model's folder (the shared reference models share timm's architecture names with the real
  // networks but are narrower), else its architecture.
  const std::filesystem::path mp(o.model);
  std::string label = (std::filesystem::is_directory(mp) ? mp.filename() : mp.parent_path().filename()).string();
  if (label.empty() || label == "." || label == "..") label = g.meta.name.empty() ? "model" : g.meta.name;
  std::string plan_tag;
  if (!o.plan.empty()) plan_tag = "_" + std::filesystem::path(o.plan).stem().string();
  const std::string stem = fmt::format("{}/{}_{}{}_{}_b{}_t{}", o.out_dir, o.plan.empty() ? "fp32" : "engines", label, plan_tag,
                                       o.device, o.batch, threads);
  std::string md = fmt::format(
      "# FP32 throughput: {} ({}, {} threads, batch {})\n\n{}; BLAS: {}\n\n"
      "| measurement | median | rate |\n|---|---|---|\n"
      "| baseline sgemm {}x{}x{} (same run) | {:.2f} ms | {:.0f} GFLOP/s |\n"
      "| model only ({} iterations) | {:.1f} ms/batch | {:.1f} images/s ({:.0f} GFLOP/s, {:.0f}% of sgemm) |\n"
      "| end to end: decode + preprocess + model, {} images | {:.1f} s total | {:.1f} images/s |\n"
      "\nTime per op kind, one batch of vitq FP32 (profiled run):\n\n| op | time |\n|---|---|\n{}",
      label == g.meta.name ? label : fmt::format("{} ({})", label, g.meta.name), o.device, threads, o.batch, date, blas, rows, inner, cols, median(gemm_t) * 1e3, gemm_gflops, o.iters,
      median(model_t) * 1e3, model_ips, model_gflops, 100.0 * model_gflops / gemm_gflops, r.images, r.seconds_total,
      r.images_per_second(), profile);
  md += fmt::format("\nEngines, same run, same threads ({}); each timed in its own block after warm-up, medians:\n\n"
                    "| engine | model | latency, batch 1 | throughput, batch {} |\n|---|---|---|---|\n", threads, o.batch);
  for (const auto& e : engines)
    md += fmt::format("| {} | {} | {:.2f} ms | {:.1f} images/s |\n", e.name, e.detail, e.latency_ms, e.images_per_second);
  if (!ort_note.empty()) md += fmt::format("\nNo ONNX Runtime rows: {}.\n", ort_note);
  if (!int8_op_seconds.empty()) {
    std::vector<std::pair<double, std::string>> t8;
    for (auto& [op, t] : int8_op_seconds) t8.emplace_back(t, op);
    std::sort(t8.rbegin(), t8.rend());
    md += "\nTime per op kind, one batch of vitq int8 (profiled run):\n\n| op | time |\n|---|---|\n";
    for (auto& [t, op] : t8) md += fmt::format("| {} | {:.1f} ms |\n", op, t * 1e3);
    j["int8_op_seconds"] = int8_op_seconds;
  }
  write_file_atomic(stem + ".json", j.dump(2) + "\n", true);
  write_file_atomic(stem + ".md", md, true);
  fmt::print("{}\nwrote {}.json and {}.md\n", md, stem, stem);
  return 0;
}

}  // namespace vitq::cli
