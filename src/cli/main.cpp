// vitq — post-training quantization of Vision Transformers. Command-line entry point.
#include <ATen/Parallel.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <malloc.h>

#include <cstdlib>
#include <thread>

#include "cli/commands.h"
#include "vitq/data/dataset.h"
#include "vitq/eval/evaluate.h"
#include "vitq/eval/model_stats.h"
#include "vitq/models/model_loader.h"
#include "vitq/util/error.h"
#include "vitq/util/npy.h"

namespace vitq::cli {

int set_threads(int threads) {
  if (threads < 0) fail("--threads must be positive, got {}", threads);
  if (threads == 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);
  return at::get_num_threads();
}

namespace {

void write_json(const std::string& path, const nlohmann::json& j) {
  std::ofstream out(path);
  if (!out) fail("cannot write {}", path);
  out << j.dump(2) << "\n";
}

int run_info(const std::string& model_path, const std::string& json_path) {
  Graph g = load_model(model_path);
  ModelStats s = model_stats(g);
  const auto& p = g.meta.preprocess;
  fmt::print("model        {} ({} from {})\n", g.meta.name, g.meta.format, g.meta.source);
  fmt::print("parameters   {:.3f} M ({})\n", static_cast<double>(s.parameters) / 1e6, s.parameters);
  fmt::print("compute      {:.3f} GFLOPs per image (multiply-accumulates, as the papers count)\n",
             static_cast<double>(s.macs) / 1e9);
  fmt::print("classes      {}\n", g.meta.num_classes);
  fmt::print("input        3x{}x{}, resize short side to floor({}/{}) {} , centre crop, mean [{:.3f}], std [{:.3f}]\n",
             p.input_height, p.input_width, p.input_height, p.crop_pct, p.interpolation, fmt::join(p.mean, ", "),
             fmt::join(p.std, ", "));
  std::string ops;
  for (auto& [op, n] : s.op_counts) ops += fmt::format("{}{} x{}", ops.empty() ? "" : ", ", op, n);
  fmt::print("graph        {} nodes: {}\n", g.nodes.size(), ops);
  fmt::print("quantizable  {} layers (weights and inputs of Linear/Conv, both inputs of attention matmuls)\n",
             s.quantizable.size());
  fmt::print("  {:<28} {:<8} {:<18} {:>10}  {}\n", "layer", "op", "weight", "MMAC/img", "roles");
  for (const auto& l : s.quantizable)
    fmt::print("  {:<28} {:<8} {:<18} {:>10.2f}  {}\n", l.name, l.op,
               l.weight_shape.empty() ? std::string("(activations)") : fmt::format("{}", fmt::join(l.weight_shape, "x")),
               static_cast<double>(l.macs) / 1e6, l.roles);
  if (!json_path.empty()) {
    nlohmann::json j = {{"model", g.meta.name}, {"format", g.meta.format}, {"source", g.meta.source},
                        {"parameters", s.parameters}, {"macs_per_image", s.macs}, {"num_classes", g.meta.num_classes},
                        {"op_counts", s.op_counts}};
    for (const auto& l : s.quantizable)
      j["quantizable"].push_back({{"name", l.name}, {"op", l.op}, {"weight_shape", l.weight_shape},
                                  {"macs", l.macs}, {"roles", l.roles}});
    write_json(json_path, j);
  }
  return 0;
}

struct EvalArgs {
  std::string model, data, json, device = "cpu", dump_logits;
  size_t limit = 0, batch = 32;
  int threads = 0, workers = 1;
  bool strict = false, quiet = false;
};

int run_eval(const EvalArgs& a) {
  const int threads = set_threads(a.threads);
  Graph g = load_model(a.model);
  Dataset data = open_dataset(a.data);
  EvalOptions opt;
  opt.batch = a.batch;
  opt.limit = a.limit;
  opt.strict = a.strict;
  opt.device = a.device;
  opt.workers = a.workers;
  opt.progress = !a.quiet;
  opt.keep_logits = !a.dump_logits.empty();
  EvalResult r = evaluate(g, data, opt);
  fmt::print("model     {} ({})\n", g.meta.name, g.meta.source);
  fmt::print("data      {} ({} images evaluated{})\n", a.data, r.images,
             r.failed ? fmt::format(", {} unreadable and skipped", r.failed) : "");
  fmt::print("top-1     {:.2f}%\n", r.top1_pct());
  fmt::print("top-5     {:.2f}%\n", r.top5_pct());
  fmt::print("speed     {:.1f} images/s end to end, {:.1f} images/s model only (batch {}, {} threads, {})\n",
             r.images_per_second(), r.model_images_per_second(), a.batch, threads, a.device);
  if (!a.json.empty())
    write_json(a.json, {{"model", g.meta.name}, {"source", g.meta.source}, {"data", a.data}, {"images", r.images},
                        {"failed", r.failed}, {"failures", r.failures}, {"top1", r.top1_pct()}, {"top5", r.top5_pct()},
                        {"images_per_second", r.images_per_second()},
                        {"model_images_per_second", r.model_images_per_second()}, {"batch", a.batch},
                        {"threads", threads}, {"device", a.device}});
  if (!a.dump_logits.empty())
    save_npy(a.dump_logits, {{static_cast<int64_t>(r.images), g.meta.num_classes}, r.logits});
  return 0;
}

}  // namespace
}  // namespace vitq::cli

int main(int argc, char** argv) {
  using namespace vitq::cli;
  // libtorch's ops and OpenBLAS share one OpenMP runtime; with its default spin-waiting the idle threads of one
  // parallel region starve the next (DeiT-Tiny, 2 cores: 29 images/s spinning vs 39 passive). The policy is
  // read when libgomp loads, before main, so set it and re-execute once. An explicit setting is respected.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr && std::getenv("VITQ_NO_REEXEC") == nullptr) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    setenv("VITQ_NO_REEXEC", "1", 1);
    execv("/proc/self/exe", argv);  // returns only on failure: then go on as we are
  }
  // Activations are large (a [32,197,768] float tensor is 19 MB): with glibc's defaults each one is a fresh
  // mmap and is returned to the system on free, so every op pays page faults (DeiT-Tiny batch 32: 1016 ms
  // vs 680 ms per batch). Keep freed memory in the heap for reuse instead.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  CLI::App app{"vitq: post-training quantization of Vision Transformers"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "vitq 0.1.0");

  std::string info_model, info_json;
  auto* info = app.add_subcommand("info", "architecture, parameters, FLOPs and the layers a quantizer touches");
  info->add_option("MODEL", info_model, "model directory, .safetensors or .onnx")->required();
  info->add_option("--json", info_json, "also write the report as JSON");

  EvalArgs ev;
  auto* eval = app.add_subcommand("eval", "top-1/top-5 and images/s on a labelled image set");
  eval->add_option("MODEL", ev.model, "model directory, .safetensors or .onnx")->required();
  eval->add_option("--data", ev.data, "image directory (labels.txt or class folders)")->required();
  eval->add_option("--limit", ev.limit, "evaluate only the first N images");
  eval->add_option("--batch", ev.batch, "batch size")->check(CLI::Range(1, 4096));
  eval->add_option("--threads", ev.threads, "libtorch threads (default: all cores)")->check(CLI::Range(0, 1024));
  eval->add_option("--workers", ev.workers, "image decoding threads")->check(CLI::Range(1, 64));
  eval->add_option("--device", ev.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  eval->add_option("--json", ev.json, "write results as JSON");
  eval->add_option("--dump-logits", ev.dump_logits, "write the logits as .npy");
  eval->add_flag("--strict", ev.strict, "stop at the first unreadable image");
  eval->add_flag("--quiet", ev.quiet, "no progress output");

  BenchOptions bo;
  bo.out_dir = std::string(VITQ_SOURCE_DIR) + "/bench/results";
  auto* bench = app.add_subcommand("bench", "FP32 throughput (model only and end to end) into bench/results/");
  bench->add_option("MODEL", bo.model, "model directory, .safetensors or .onnx")->required();
  bench->add_option("--data", bo.data, "image directory for the end-to-end run")->required();
  bench->add_option("--batch", bo.batch, "batch size")->check(CLI::Range(1, 4096));
  bench->add_option("--iters", bo.iters, "timed model-only iterations")->check(CLI::Range(1, 100000));
  bench->add_option("--limit", bo.limit, "images for the end-to-end run")->check(CLI::Range(1, 10000000));
  bench->add_option("--threads", bo.threads, "libtorch threads (default: all cores)")->check(CLI::Range(0, 1024));
  bench->add_option("--workers", bo.workers, "image decoding threads")->check(CLI::Range(1, 64));
  bench->add_option("--device", bo.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  bench->add_option("--out", bo.out_dir, "results directory");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (*info) return run_info(info_model, info_json);
    if (*eval) return run_eval(ev);
    if (*bench) return run_bench(bo);
  } catch (const std::exception& e) {
    fmt::print(stderr, "vitq: error: {}\n", vitq::first_line(e.what()));
    return 1;
  }
  return 0;
}
