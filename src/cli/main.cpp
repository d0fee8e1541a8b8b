// vitq — post-training quantization of Vision Transformers. Command-line entry point.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fstream>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <optional>
#include <thread>

#include "cli/commands.h"
#include "vitq/data/dataset.h"
#include "vitq/deploy/int8_runtime.h"
#include "vitq/deploy/onnx_export.h"
#include "vitq/deploy/ort_runtime.h"
#include "vitq/eval/evaluate.h"
#include "vitq/graph/executor.h"
#include "vitq/eval/model_stats.h"
#include "vitq/models/model_loader.h"
#include "vitq/util/allocator.h"
#include "vitq/util/error.h"
#include "vitq/util/file_io.h"
#include "vitq/util/npy.h"
#include "vitq/quant/calibration.h"
#include "vitq/quant/fake_quant.h"
#include "vitq/quant/plan.h"
#include "vitq/util/blas.h"

namespace vitq::cli {

int set_threads(int threads) {
  if (threads < 0) fail("--threads must be positive, got {}", threads);
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // Far more threads than cores only slows every parallel region down (and each thread reserves a stack).
  const int most = std::max(16, 4 * cores);
  if (threads > most) fail("--threads {} is more than {} (4x this machine's {} cores)", threads, most, cores);
  if (threads == 0) threads = cores;
  at::set_num_threads(threads);
  static bool warned = false;  // once a process
  if (!warned) {
    warned = true;
    if (const std::string w = blas_warning(at::get_num_threads()); !w.empty()) fmt::print(stderr, "{}\n", w);
  }
  return at::get_num_threads();
}

namespace {

void write_json(const std::string& path, const nlohmann::json& j) { write_file_atomic(path, j.dump(2) + "\n", true); }

int run_info(const std::string& model_path, const std::string& json_path) {
  if (!json_path.empty()) check_output_path(json_path, model_files(model_path), "--json");
  Graph g = load_model(model_path, /*allow_config_only=*/true);
  ModelStats s = model_stats(g);
  const auto& p = g.meta.preprocess;
  fmt::print("model        {} ({} from {}{})\n", g.meta.name, g.meta.format, g.meta.source,
             g.meta.format == "config" ? "; no weights: placeholder zeros" : "");
  if (!g.meta.family.empty()) fmt::print("family       {}\n", g.meta.family);
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
  fmt::print("bridges      {} blocks (conv <-> transformer transitions){}\n", g.bridges.size(), g.bridges.empty() ? "" : ":");
  for (const auto& b : g.bridges)
    fmt::print("  {:<28} {:<18} {}\n", b.name, b.kind, fmt::join(b.layers, ", "));
  if (!json_path.empty()) {
    nlohmann::json bridges = nlohmann::json::array();
    for (const auto& b : g.bridges)
      bridges.push_back({{"name", b.name}, {"kind", b.kind}, {"transition", b.transition}, {"layers", b.layers}});
    nlohmann::json j = {{"model", g.meta.name}, {"family", g.meta.family}, {"format", g.meta.format}, {"source", g.meta.source},
                        {"bridges", bridges},
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
  std::string model, data, json, device = "cpu", dump_logits, plan, report;
  size_t report_images = 32;
  std::string runtime = "vitq", onnx;
  double perturb = 0;
  size_t limit = 0, batch = 32;
  int threads = 0, workers = 1;
  bool strict = false, quiet = false;
};

int run_eval(const EvalArgs& a) {
  const int threads = set_threads(a.threads);
  {  // outputs checked before any work: none may be an input, another output, or unwritable
    std::vector<std::string> inputs = model_files(a.model);
    for (const auto& f : data_files(a.data)) inputs.push_back(f);
    inputs.push_back(a.plan);
    inputs.push_back(a.onnx);
    for (const auto& [path, what] : {std::pair{a.json, "--json"}, {a.dump_logits, "--dump-logits"}, {a.report, "--report"}}) {
      if (path.empty()) continue;
      check_output_path(path, inputs, what);
      inputs.push_back(path);
    }
  }
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
  QuantPlan plan;
  if (!a.plan.empty()) {
    plan = load_plan(a.plan, g);
    opt.plan = &plan;
  } else if (!a.report.empty()) {
    fail("--report needs --plan");
  }
  std::string runtime = !a.onnx.empty() && a.runtime == "vitq" ? "ort" : a.runtime;
  std::optional<OrtModel> ort;
  std::optional<Int8Model> int8;
  std::string runtime_line;
  if (runtime == "ort") {
    if (a.device != "cpu") fail("--runtime ort runs on the CPU (drop --device {})", a.device);
    if (!a.onnx.empty()) {
      ort.emplace(OrtModel::from_file(a.onnx, threads));
      runtime_line = fmt::format("onnxruntime {} on {}", ort_available().version, a.onnx);
    } else {
#if VITQ_WITH_ONNX
      ExportResult ex = export_onnx(g, opt.plan);
      ort.emplace(OrtModel::from_bytes(ex.bytes, threads, opt.plan ? "the QDQ export" : "the FP32 export"));
      runtime_line = fmt::format("onnxruntime {} on vitq's {} export (opset {}, in memory)", ort_available().version,
                                 opt.plan ? "QDQ" : "FP32", ex.opset);
#else
      fail("--runtime ort needs the ONNX exporter: this vitq was built without libonnx");
#endif
    }
    opt.runtime = [&ort](const at::Tensor& x) { return ort->run(x); };
  } else if (runtime == "int8") {
    if (!opt.plan) fail("--runtime int8 needs --plan (the quantization to run in integers)");
    if (a.device != "cpu") fail("--runtime int8 runs on the CPU (drop --device {})", a.device);
    int8.emplace(g, plan);
    const auto& s = int8->stats();
    runtime_line = fmt::format("vitq int8 (oneDNN): {} Linear, {} MatMul and {} Conv2d layers in int8 ({} twin-uniform, {} log2/log√2, {} adalog, {} per-token inputs); "
                               "{} quantized layers simulated{}",
                               s.native_linear, s.native_matmul, s.native_conv, s.twin_inputs, s.log2_inputs, s.adalog_inputs, s.token_inputs,
                               s.fallbacks.size(),
                               s.fallbacks.empty() ? "" : " (" + s.fallbacks.front() + (s.fallbacks.size() > 1 ? ", …)" : ")"));
    opt.runtime = [&int8](const at::Tensor& x) { return int8->run(x); };
  } else if (runtime != "vitq") {
    fail("unknown --runtime '{}' (vitq, ort, int8)", runtime);
  }
  // The model against itself with every float constant perturbed by a relative EPS: how far float noise alone
  // moves this (quantized) model — the yardstick for the differences between two correct implementations.
  std::optional<Graph> perturbed;
  std::optional<QuantizedModel> perturbed_model;
  std::optional<Executor> perturbed_exec;
  if (a.perturb != 0) {
    if (!std::isfinite(a.perturb) || a.perturb < 0 || a.perturb > 0.1) fail("--perturb must be in (0, 0.1], got {}", a.perturb);
    if (opt.runtime) fail("--perturb compares vitq with itself: drop --runtime/--onnx");
    perturbed.emplace(g);
    at::manual_seed(0);
    for (auto& c : perturbed->consts)
      if (c.defined() && c.is_floating_point()) c = c * (1 + a.perturb * at::randn_like(c));
    const c10::Device device(a.device == "cuda" ? c10::kCUDA : c10::kCPU);
    if (opt.plan) {
      perturbed_model.emplace(*perturbed, plan, device);
      opt.runtime = [&perturbed_model](const at::Tensor& x) { return perturbed_model->run(x); };
    } else {
      perturbed_exec.emplace(*perturbed, device);
      opt.runtime = [&perturbed_exec](const at::Tensor& x) { return perturbed_exec->run(x); };
    }
    runtime_line = fmt::format("vitq with every float constant perturbed by {:g} (relative, seed 0)", a.perturb);
  }
  const bool compared = ort || int8 || perturbed;
  EvalResult r = evaluate(g, data, opt);
  fmt::print("model     {} ({})\n", g.meta.name, g.meta.source);
  if (compared) fmt::print("runtime   {}\n", runtime_line);
  fmt::print("data      {} ({} images evaluated{})\n", a.data, r.images,
             r.failed ? fmt::format(", {} unreadable and skipped", r.failed) : "");
  if (opt.plan) {
    fmt::print("plan      {} ({}, W{}A{})\n", a.plan, plan.method, plan.settings.value("wbits", 0), plan.settings.value("abits", 0));
    print_quant_eval(r);
  } else {
    fmt::print("top-1     {:.2f}%\n", r.top1_pct());
    fmt::print("top-5     {:.2f}%\n", r.top5_pct());
  }
  if (compared)
    fmt::print("vs vitq   top-1 agreement {:.2f}% with vitq's {} (its top-1 {:.2f}%), max |logit difference| {:.4g}\n",
               r.vitq_agreement_pct(), opt.plan ? "fake-quant model" : "FP32 model", r.vitq_top1_pct(), r.max_logit_diff);
  fmt::print("speed     {:.1f} images/s end to end, {:.1f} images/s model only (batch {}, {} threads, {})\n",
             r.images_per_second(), r.model_images_per_second(), a.batch, threads, ort ? "onnxruntime" : int8 ? "vitq int8" : a.device);
  if (!a.json.empty()) {
    nlohmann::json j = {{"model", g.meta.name}, {"source", g.meta.source}, {"data", a.data}, {"images", r.images},
                        {"failed", r.failed}, {"failures", r.failures}, {"top1", r.top1_pct()}, {"top5", r.top5_pct()},
                        {"images_per_second", r.images_per_second()},
                        {"model_images_per_second", r.model_images_per_second()}, {"batch", a.batch},
                        {"threads", threads}, {"device", a.device}};
    if (compared) {
      j["runtime"] = runtime_line;
      j["vitq_agreement"] = r.vitq_agreement_pct();
      j["vitq_top1"] = r.vitq_top1_pct();
      j["max_logit_diff"] = r.max_logit_diff;
    }
    if (opt.plan) {
      j["plan"] = a.plan;
      j["fp32_top1"] = r.fp_top1_pct();
      j["agreement"] = r.agreement_pct();
      j["kl"] = r.mean_kl();
    }
    write_json(a.json, j);
  }
  if (opt.plan && !a.report.empty()) {
    // per-layer diagnostics on the first images of the evaluation set
    Dataset head = data;
    head.samples.resize(std::min(head.samples.size(), a.report_images));
    at::Tensor images = load_calibration(g, head, head.samples.size(), 0, false);
    auto rep = layer_report(g, plan, images);
    fmt::print("\nper-layer report ({} images; isolated = this layer alone on FP input, accumulated = whole plan):\n{}",
               images.size(0), format_layer_report(rep));
    write_json(a.report, {{"plan", a.plan}, {"images", images.size(0)}, {"layers", report_json(rep)}});
  }
  if (!a.dump_logits.empty())
    save_npy(a.dump_logits, {{static_cast<int64_t>(r.images), g.meta.num_classes}, r.logits});
  return 0;
}

}  // namespace
}  // namespace vitq::cli

// A count option (size_t): "-5" must be an error, not a huge number or "everything".
const CLI::Validator kCount(
    [](std::string& s) -> std::string {
      if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos) return "must be 0 or a positive whole number, got '" + s + "'";
      return "";
    },
    "COUNT");

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
  vitq::keep_freed_memory();
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
  eval->add_option("--limit", ev.limit, "evaluate only the first N images")->check(kCount);
  eval->add_option("--batch", ev.batch, "batch size")->check(CLI::Range(1, 4096));
  eval->add_option("--threads", ev.threads, "libtorch threads (default: all cores)")->check(CLI::Range(0, 1024));
  eval->add_option("--workers", ev.workers, "image decoding threads")->check(CLI::Range(1, 64));
  eval->add_option("--device", ev.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  eval->add_option("--json", ev.json, "write results as JSON");
  eval->add_option("--dump-logits", ev.dump_logits, "write the logits as .npy");
  eval->add_flag("--strict", ev.strict, "stop at the first unreadable image");
  eval->add_flag("--quiet", ev.quiet, "no progress output");
  eval->add_option("--plan", ev.plan, "evaluate the model quantized by this plan (fake-quant), against FP32");
  eval->add_option("--report", ev.report, "with --plan: per-layer SQNR/cosine report as JSON (and a table)");
  eval->add_option("--runtime", ev.runtime, "vitq (its executor; fake-quant with --plan), ort (ONNX Runtime on vitq's ONNX export) or int8 (vitq's integer runtime, needs --plan); ort and int8 are compared with vitq's own model")
      ->check(CLI::IsMember({"vitq", "ort", "int8"}));
  eval->add_option("--perturb", ev.perturb, "compare the model with itself with every float constant perturbed by this relative amount (e.g. 1e-6): float noise's own effect");
  eval->add_option("--onnx", ev.onnx, "with --runtime ort: run this ONNX file (e.g. from vitq export) instead of exporting in memory");
  eval->add_option("--report-images", ev.report_images, "images for the per-layer report")->check(CLI::Range(1, 256));

  QuantArgs qa;
  auto add_quant_options = [](CLI::App* c, QuantArgs& q) {
    c->add_option("MODEL", q.model, "model directory, .safetensors or .onnx")->required();
    c->add_option("--calib", q.calib, "calibration images (labels.txt or class folders), or synthetic[:N]: N images (default --calib-size) synthesised from the model itself (data-free)")->required();
    c->add_option("--synthetic-iters", q.synthetic_iters, "--calib synthetic: optimisation steps")->check(CLI::Range(0, 100000));
    c->add_option("--synthetic-init", q.synthetic_init, "--calib synthetic: the noise the images start from: natural (a natural image's spectrum, default) or white (PSAQ-ViT's)")
        ->check(CLI::IsMember({"natural", "white"}));
    c->add_option("--synthetic-bn-weight", q.synthetic_bn_weight, "--calib synthetic: weight of matching the BatchNorm running statistics (models with BatchNorm; 0: off)")
        ->check(CLI::Range(0.0, 1e6));
    c->add_option("--calib-size", q.calib_size, "calibration images drawn from --calib (liu2021 holds every layer's input for all of them)")->check(CLI::Range(0, 1024));
    c->add_option("--seed", q.seed, "seed of the calibration draw and of sampled pairs");
    c->add_option("--weight-granularity", q.weight_granularity, "weight scales: channel or tensor");
    c->add_option("--keep-fp", q.keep_fp, "comma-separated layers left in floating point");
    c->add_option("--layer-bits", q.layer_bits, "comma-separated per-layer overrides: NAME=BITS (weights and inputs), NAME=wBITS, NAME=aBITS, NAME=wBITSaBITS");
    c->add_option("--similarity", q.similarity, "liu2021: pearson or cosine");
    c->add_flag("--no-ranking", q.no_ranking, "liu2021: no ranking loss on attention");
    c->add_flag("--no-bias-correction", q.no_bias_correction, "liu2021: no bias correction");
    c->add_flag("--mixed-precision", q.mixed_precision, "liu2021: mixed precision, one width per kind of layer chosen by the model's KL (liu2021+paper: the paper's nuclear norm per layer; needs --avg-bits)");
    c->add_option("--avg-bits", q.avg_bits, "mixed-precision budget: average weight and activation bits");
    c->add_option("--search-steps", q.search_steps, "liu2021/easyquant: grid points per step search (ptq4vit: + 1)")->check(CLI::Range(2, 10000));
    c->add_option("--search-images", q.search_images, "liu2021/easyquant/ptq4vit: calibration images the layer searches score on")->check(CLI::Range(1, 1024));
    c->add_option("--convention", q.convention, "paper: each method quantizes as its paper does; common: one shared convention")
        ->check(CLI::IsMember({"paper", "common"}));
    c->add_option("--rounds", q.rounds, "easyquant/ptq4vit: alternating rounds (default: the paper's, 2 / 3)")->check(CLI::Range(1, 10));
    c->add_option("--attn-bits", q.attn_bits, "fqvit: softmax output bits, 2-4 = log2 codes (default 4), 8 = uniform");
    c->add_option("--percentile", q.percentile, "percentile observer: the percentile kept");
    c->add_option("--threads", q.threads, "libtorch threads (default: all cores)")->check(CLI::Range(0, 1024));
    c->add_flag("--quiet", q.quiet, "no progress output");
    c->add_option("--reconstruct", q.reconstruct, "reconstruction after the method: none, layer or block (default: none; qhyvit: block; a '+recon' method: block)");
    c->add_option("--recon-iters", q.recon_iters, "reconstruction: Adam steps per block (default 300)");
    c->add_option("--recon-batch", q.recon_batch, "reconstruction: images per step (default 8)");
    c->add_option("--recon-images", q.recon_images, "reconstruction: images it optimises on (default 0: the calibration images; fewer: the first of them; more: the "
                                                    "same seeded draw continued, the calibration images first)");
    c->add_option("--recon-lr-round", q.recon_lr_round, "reconstruction: learning rate of AdaRound's rounding variables (default 0.02)");
    c->add_option("--recon-lr-scale", q.recon_lr_scale, "reconstruction: learning rate of the log activation steps (default 0.002)");
    c->add_flag("--recon-learn-log", q.recon_learn_log, "reconstruction: also learn the AdaLog activation quantizers' scale and base");
    c->add_option("--recon-augment", q.recon_augment,
                  "reconstruction: this many augmented views of each of its images join them (a random resized crop of 30-100% of the area, "
                  "aspect 3/4-4/3, flipped left-right half the time; seeded), the targets the FP model's outputs on them (default 0)");
    c->add_flag("--recon-token-scales", q.recon_token_scales,
                "reconstruction: one learned step per token for the per-tensor uniform inputs of Linear layers on [B, N, C] tensors (FIMA-Q); "
                "the integer runtime runs them in int8, the ONNX export in integer ops");
    c->add_option("--recon-lr-log", q.recon_lr_log, "reconstruction: learning rate of the log AdaLog scales and bases (--recon-learn-log; default 0.0002)");
    c->add_option("--recon-loss", q.recon_loss, "reconstruction loss: fisher (Fisher-weighted output error, default), fisher-dplr (experimental, do not use: that plus, per "
                                              "image, the squared error along the Fisher gradient; it collapsed DeiT-Tiny at W3A3, see docs/decisions.md) or mse");
    c->add_option("--recon-damping", q.recon_damping,
                  "reconstruction, Fisher loss: each block's Fisher weights (mean 1) become (w + D) / (1 + D), a share of plain squared "
                  "error in every output element (default 0: the Fisher weights alone)");
    c->add_option("--qdrop", q.qdrop, "reconstruction: probability of leaving an activation unquantized per element (QDrop; default 0.5, 0 = off)");
    c->add_flag("--no-joint-bridges", q.no_joint_bridges, "qhyvit: reconstruct bridge-block layers like the others, not jointly");
    c->add_option("--device", q.device, "reconstruction device: cpu or cuda[:N]");
  };
  auto* quantize = app.add_subcommand("quantize", "calibrate and search a quantization plan with a PTQ method");
  add_quant_options(quantize, qa);
  quantize->add_option("--method", qa.method, "minmax, percentile, omse, liu2021, easyquant, fqvit, ptq4vit, qhyvit, repqvit (variants: liu2021+paper, +norank, +nobc, +holdout, +cosine, +mp, +mpkl; fqvit+attn8; repqvit+noreparam, +nolog, +erq, +headwise, +wmse, +amse; any method +adalog, +osearch, +oslog, +osends, +recon)");
  quantize->add_option("--start-plan", qa.start_plan, "instead of a method: reconstruct this plan (needs --reconstruct layer or block)");
  quantize->add_option("--wbits", qa.wbits, "weight bits (2-8)");
  quantize->add_option("--abits", qa.abits, "activation bits (2-8)");
  quantize->add_option("--out", qa.out, "plan JSON to write")->required();

  CompareArgs ca;
  auto* compare = app.add_subcommand("compare", "run methods x bit widths on the same images; markdown + JSON table");
  add_quant_options(compare, ca.q);
  // a merge reads only partial results: MODEL, --calib and --data are checked in run_compare instead
  compare->get_option("MODEL")->required(false);
  compare->get_option("--calib")->required(false);
  compare->add_option("--methods", ca.methods, "comma-separated methods (and variants)");
  compare->add_option("--bits", ca.bits, "comma-separated bit widths, e.g. w8a8,w6a6,w4a4");
  compare->add_option("--data", ca.data, "evaluation images");
  compare->add_option("--shard", ca.shard, "I/N: run only shard I (0-based) of N of the (bits, method) cells and write a partial result (for a job array; see deploy/)");
  compare->add_option("--merge", ca.merge, "instead of running: merge these partial results (.json of every shard) into one table at --out")->expected(1, -1);
  compare->add_option("--limit", ca.limit, "evaluate only the first N images")->check(kCount);
  compare->add_flag("--exclude-calib", ca.exclude_calib, "evaluate without the images drawn for calibration (for --data = --calib: judge on images no search saw)");
  compare->add_option("--out", ca.out, "output path without extension (writes .md and .json)")->required();
  compare->add_option("--save-plans", ca.save_plans, "also write each method's plan into this folder as <method>_w<W>a<A>.plan.json (for eval --plan, --runtime int8/ort, export)");
  compare->add_option("--report", ca.report, "also write the HTML report (vitq report) here: the table's charts, and the per-layer "
                      "charts of the lowest bit width's best plan (by agreement) on the first --report-images of --data");
  compare->add_option("--report-images", ca.report_images, "images for the report's per-layer charts")->check(CLI::Range(1, 256));

  ReportArgs rp;
  auto* report = app.add_subcommand("report", "one self-contained HTML page with charts from a compare result and/or a plan");
  report->add_option("MODEL", rp.model, "with --plan: the model it quantizes (directory, .safetensors or .onnx)");
  report->add_option("--compare", rp.compare, "compare result (.json of vitq compare --out, or of --merge)");
  report->add_option("--plan", rp.plan, "quantization plan: per-layer SQNR, worst layers' activation histograms, bits per layer");
  report->add_option("--data", rp.data, "with --plan: labelled image folder; its first --images images are run");
  report->add_option("--images", rp.images, "images for the per-layer charts")->check(CLI::Range(1, 256));
  report->add_option("--worst", rp.worst, "worst layers (lowest SQNR alone) whose activations are drawn")->check(CLI::Range(1, 16));
  report->add_option("--threads", rp.threads, "threads (default: all cores)")->check(CLI::Range(0, 1024));
  report->add_flag("--quiet", rp.quiet, "no progress messages");
  report->add_option("--out", rp.out, "HTML file to write")->required();

  ExportArgs xa;
  auto* exp = app.add_subcommand("export", "write the model, quantized by a plan, as a standard ONNX file (QDQ)");
  exp->add_option("MODEL", xa.model, "model directory, .safetensors or .onnx")->required();
  exp->add_option("--plan", xa.plan, "quantization plan (from vitq quantize)");
  exp->add_option("--format", xa.format, "onnx-qdq (QuantizeLinear/DequantizeLinear, int8 weights; default with --plan) or onnx (FP32)");
  exp->add_option("--out", xa.out, "ONNX file to write")->required();
  exp->add_flag("--force", xa.force, "overwrite --out if it exists");

  RunArgs ra;
  auto* runc = app.add_subcommand("run", "classify images with the integer runtime (--plan), FP32, or ONNX Runtime: top classes per image");
  runc->add_option("MODEL", ra.model, "model directory, .safetensors or .onnx")->required();
  runc->add_option("IMAGES", ra.images, "image files (JPEG or PNG)")->required();
  runc->add_option("--plan", ra.plan, "quantization plan: run it in integers (default runtime int8)");
  runc->add_option("--runtime", ra.runtime, "int8 (default with --plan), vitq (FP32, or fake-quant with --plan), ort");
  runc->add_option("--top", ra.top, "classes shown per image")->check(CLI::Range(1, 1000));
  runc->add_option("--threads", ra.threads, "threads (default: all cores)")->check(CLI::Range(0, 1024));

  BenchOptions bo;
  bo.out_dir = std::string(VITQ_SOURCE_DIR) + "/bench/results";
  auto* bench = app.add_subcommand("bench", "throughput and latency of vitq and ONNX Runtime (FP32, QDQ with --plan) into bench/results/");
  bench->add_option("MODEL", bo.model, "model directory, .safetensors or .onnx")->required();
  bench->add_option("--data", bo.data, "image directory for the end-to-end run")->required();
  bench->add_option("--batch", bo.batch, "batch size")->check(CLI::Range(1, 4096));
  bench->add_option("--iters", bo.iters, "timed model-only iterations")->check(CLI::Range(1, 100000));
  bench->add_option("--limit", bo.limit, "images for the end-to-end run")->check(CLI::Range(1, 10000000));
  bench->add_option("--threads", bo.threads, "libtorch threads (default: all cores)")->check(CLI::Range(0, 1024));
  bench->add_option("--workers", bo.workers, "image decoding threads")->check(CLI::Range(1, 64));
  bench->add_option("--device", bo.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  bench->add_option("--out", bo.out_dir, "results directory");
  bench->add_option("--plan", bo.plan, "also time ONNX Runtime on vitq's QDQ export of this plan");
  bench->add_option("--onnx", bo.onnx, "FP32 ONNX model for the ONNX Runtime row (default: the model folder's model.onnx)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    fmt::print(stderr, "vitq: error: {} (see vitq --help)\n", vitq::first_line(e.what()));
    return 2;
  }
  try {
    if (*info) return run_info(info_model, info_json);
    if (*eval) return run_eval(ev);
    if (*bench) return run_bench(bo);
    if (*exp) return run_export(xa);
    if (*runc) return run_run(ra);
    if (*quantize) return run_quantize(qa);
    if (*report) return run_report(rp);
    if (*compare) {
      ca.command_line = "vitq";
      for (int i = 1; i < argc; ++i) ca.command_line += std::string(" ") + argv[i];
      return run_compare(ca);
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "vitq: error: {}\n", vitq::first_line(e.what()));
    return 1;
  }
  return 0;
}
