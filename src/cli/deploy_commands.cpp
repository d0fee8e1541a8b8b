// vitq export: a plan (or the FP32 model) as a standard ONNX file; vitq run: images through the integer runtime.
#include <ATen/ATen.h>

#include <filesystem>
#include <optional>

#include "cli/commands.h"
#include "vitq/data/image.h"
#include "vitq/data/transform.h"
#include "vitq/deploy/int8_runtime.h"
#include "vitq/deploy/onnx_export.h"
#include "vitq/deploy/ort_runtime.h"
#include "vitq/graph/executor.h"
#include "vitq/quant/fake_quant.h"
#include "vitq/models/model_loader.h"
#include "vitq/quant/plan.h"
#include "vitq/util/error.h"
#include "vitq/util/file_io.h"

namespace vitq::cli {

namespace fs = std::filesystem;

std::vector<std::string> model_files(const std::string& model) {
  std::vector<std::string> files = {model};
  std::error_code ec;
  if (fs::is_directory(model, ec))
    for (const char* f : {"model.onnx", "model.safetensors", "config.json"}) files.push_back((fs::path(model) / f).string());
  return files;
}

std::vector<std::string> data_files(const std::string& dir) {
  if (dir.empty()) return {};
  return {dir, (fs::path(dir) / "labels.txt").string()};
}

int run_export(const ExportArgs& a) {
#if VITQ_WITH_ONNX
  std::string format = a.format.empty() ? (a.plan.empty() ? "onnx" : "onnx-qdq") : a.format;
  if (format != "onnx" && format != "onnx-qdq") fail("unknown --format '{}' (onnx-qdq, onnx)", format);
  if (format == "onnx-qdq" && a.plan.empty()) fail("--format onnx-qdq needs --plan (the quantization to export)");
  if (format == "onnx" && !a.plan.empty()) fail("--format onnx writes the FP32 model: drop --plan, or use --format onnx-qdq");
  std::vector<std::string> inputs = model_files(a.model);
  if (!a.plan.empty()) inputs.push_back(a.plan);
  check_output_path(a.out, inputs, "--out");
  if (!a.force && fs::exists(fs::symlink_status(a.out))) fail("{}: exists (use --force to overwrite it)", a.out);
  Graph g = load_model(a.model);
  QuantPlan plan;
  if (!a.plan.empty()) plan = load_plan(a.plan, g);
  ExportResult r = export_onnx(g, a.plan.empty() ? nullptr : &plan);
  write_file_atomic(a.out, r.bytes, a.force);
  fmt::print("model     {} ({})\n", g.meta.name, g.meta.source);
  if (!a.plan.empty())
    fmt::print("plan      {} ({}, W{}A{})\n", a.plan, plan.method, plan.settings.value("wbits", 0), plan.settings.value("abits", 0));
  fmt::print("wrote     {} ({}, opset {}, {:.2f} MB)\n", a.out, format, r.opset, static_cast<double>(r.bytes.size()) / 1e6);
  if (!a.plan.empty()) {
    const ExportResult fp = export_onnx(g, nullptr);
    fmt::print("quantized {} Q/DQ activation pairs, {} int8 weights{}{}; {:.1f}% of the FP32 export's size ({:.2f} MB)\n",
               r.qdq_activations, r.int8_weights,
               r.integer_linears ? fmt::format(", {} Linears on per-token inputs as MatMulInteger", r.integer_linears) : "",
               r.standard_op_quantizers ? fmt::format(", {} quantizers as standard ops (twin-uniform, log, 8-bit with per-axis zero points)", r.standard_op_quantizers) : "",
               100.0 * static_cast<double>(r.bytes.size()) / static_cast<double>(fp.bytes.size()), static_cast<double>(fp.bytes.size()) / 1e6);
  }
  return 0;
#else
  fail("this vitq was built without ONNX support (libonnx-dev)");
#endif
}

}  // namespace vitq::cli

namespace vitq::cli {

// vitq run: classify images with the integer runtime (or FP32 / ONNX Runtime), printing the top classes.
int run_run(const RunArgs& a) {
  const int threads = set_threads(a.threads);
  if (a.images.empty()) fail("no images given");
  if (a.top < 1) fail("--top must be at least 1, got {}", a.top);
  std::string runtime = a.runtime.empty() ? (a.plan.empty() ? "vitq" : "int8") : a.runtime;
  if (runtime != "vitq" && runtime != "int8" && runtime != "ort") fail("unknown --runtime '{}' (int8, vitq, ort)", runtime);
  if (runtime == "int8" && a.plan.empty()) fail("--runtime int8 needs --plan");
  Graph g = load_model(a.model);
  QuantPlan plan;
  if (!a.plan.empty()) plan = load_plan(a.plan, g);
  const auto& pre = g.meta.preprocess;
  // decode everything first: a bad image stops the command before any work
  std::vector<float> pixels(a.images.size() * 3 * static_cast<size_t>(pre.input_height * pre.input_width));
  for (size_t i = 0; i < a.images.size(); ++i)
    eval_transform(decode_image(a.images[i]), pre, pixels.data() + i * 3 * static_cast<size_t>(pre.input_height * pre.input_width));
  auto x = at::from_blob(pixels.data(), {static_cast<int64_t>(a.images.size()), 3, pre.input_height, pre.input_width}, at::kFloat);
  at::Tensor logits;
  std::string engine;
  if (runtime == "int8") {
    Int8Model m(g, plan);
    logits = m.run(x);
    engine = fmt::format("vitq int8 ({} + {} + {} int8 layers, {} simulated)", m.stats().native_linear, m.stats().native_matmul,
                         m.stats().native_conv, m.stats().fallbacks.size());
  } else if (runtime == "ort") {
#if VITQ_WITH_ONNX
    auto ort = OrtModel::from_bytes(export_onnx(g, a.plan.empty() ? nullptr : &plan).bytes, threads, "vitq's export");
    logits = ort.run(x);
    engine = fmt::format("onnxruntime {} on vitq's {} export", ort_available().version, a.plan.empty() ? "FP32" : "QDQ");
#else
    fail("--runtime ort needs the ONNX exporter (built without libonnx)");
#endif
  } else {
    at::InferenceMode guard;
    if (a.plan.empty()) logits = Executor(g).run(x);
    else logits = QuantizedModel(g, plan).run(x);
    engine = a.plan.empty() ? "vitq FP32" : "vitq fake-quant";
  }
  if (!at::isfinite(logits).all().item<bool>()) fail("the model produced non-finite logits");
  auto probs = at::softmax(logits.to(at::kDouble), 1);
  const int64_t k = std::min<int64_t>(a.top, probs.size(1));
  auto [p, idx] = probs.topk(k, 1);
  fmt::print("model     {} ({}), {}\n", g.meta.name, g.meta.source, engine);
  for (size_t i = 0; i < a.images.size(); ++i) {
    std::string line;
    for (int64_t j = 0; j < k; ++j)
      line += fmt::format("{}{} ({:.1f}%)", j ? ", " : "", idx[static_cast<int64_t>(i)][j].item<int64_t>(),
                          100.0 * p[static_cast<int64_t>(i)][j].item<double>());
    fmt::print("{}: {}\n", a.images[i], line);
  }
  return 0;
}

}  // namespace vitq::cli
