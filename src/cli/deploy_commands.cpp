// vitq export: a plan (or the FP32 model) as a standard ONNX file.
#include <filesystem>

#include "cli/commands.h"
#include "vitq/deploy/onnx_export.h"
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

int run_export(const ExportArgs& a) {
#if VITQ_WITH_ONNX
  std::string format = a.format.empty() ? (a.plan.empty() ? "onnx" : "onnx-qdq") : a.format;
  if (format != "onnx" && format != "onnx-qdq") fail("unknown --format '{}' (onnx-qdq, onnx)", format);
  if (format == "onnx-qdq" && a.plan.empty()) fail("--format onnx-qdq needs --plan (the quantization to export)");
  if (format == "onnx" && !a.plan.empty()) fail("--format onnx writes the FP32 model: drop --plan, or use --format onnx-qdq");
  std::vector<std::string> inputs = model_files(a.model);
  if (!a.plan.empty()) inputs.push_back(a.plan);
  check_not_an_input(a.out, inputs, "--out");
  std::error_code ec;
  if (fs::is_directory(a.out, ec)) fail("{}: is a directory, not a file to write", a.out);
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
    fmt::print("quantized {} Q/DQ activation pairs, {} int8 weights{}; {:.1f}% of the FP32 export's size ({:.2f} MB)\n",
               r.qdq_activations, r.int8_weights,
               r.standard_op_quantizers ? fmt::format(", {} twin-uniform/log2 quantizers as standard ops", r.standard_op_quantizers) : "",
               100.0 * static_cast<double>(r.bytes.size()) / static_cast<double>(fp.bytes.size()), static_cast<double>(fp.bytes.size()) / 1e6);
  }
  return 0;
#else
  fail("this vitq was built without ONNX support (libonnx-dev)");
#endif
}

}  // namespace vitq::cli
