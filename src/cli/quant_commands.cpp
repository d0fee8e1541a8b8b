// vitq quantize / vitq compare, and the plan side of vitq eval.
#include <ATen/ATen.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "cli/commands.h"
#include "vitq/data/dataset.h"
#include "vitq/eval/evaluate.h"
#include "vitq/methods/method.h"
#include "vitq/models/model_loader.h"
#include "vitq/quant/calibration.h"
#include "vitq/quant/fake_quant.h"
#include "vitq/util/error.h"
#include "vitq/util/file_io.h"

namespace vitq::cli {

namespace {
std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep))
    if (!item.empty()) out.push_back(item);
  return out;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

std::string apply_method_variant(const std::string& spec, MethodOptions& o) {
  auto parts = split(spec, '+');
  if (parts.empty()) fail("empty method name");
  for (size_t i = 1; i < parts.size(); ++i) {
    const auto& v = parts[i];
    if (v == "norank") o.ranking = false;
    else if (v == "nobc") o.bias_correction = false;
    else if (v == "cosine") o.similarity = "cosine";
    else if (v == "mp") {
      o.mixed_precision = true;
      if (o.avg_bits == 0) o.avg_bits = o.placement.wbits;
    } else if (v == "attn8") o.attn_bits = 8;
    else if (v == "recon") {
      if (o.reconstruct.empty() || o.reconstruct == "none") o.reconstruct = "block";
    } else fail("unknown method variant '+{}' in '{}' (norank, nobc, cosine, mp, attn8, recon)", v, spec);
  }
  find_method(parts[0]);
  return parts[0];
}

void fill_placement(PlacementOptions& p, const QuantArgs& a) {
  p.wbits = a.wbits;
  p.abits = a.abits;
  p.weight_granularity = parse_granularity(a.weight_granularity);
  if (p.weight_granularity == Granularity::PerGroup || p.weight_granularity == Granularity::PerHead)
    fail("--weight-granularity must be tensor or channel");
  for (const auto& name : split(a.keep_fp, ',')) p.keep_fp.insert(name);
  for (const auto& item : split(a.layer_bits, ',')) {
    auto eq = item.find('=');
    if (eq == std::string::npos) fail("--layer-bits expects NAME=BITS, got '{}'", item);
    int bits = 0;
    const std::string text = item.substr(eq + 1);
    try {
      size_t used = 0;
      bits = std::stoi(text, &used);
      if (used != text.size()) throw std::invalid_argument(text);  // "4x" is not 4
    } catch (const std::exception&) {
      fail("--layer-bits: '{}' is not a number of bits", text);
    }
    if (eq == 0) fail("--layer-bits: '{}' names no layer", item);
    if (bits < 2 || bits > 8) fail("--layer-bits: bits must be between 2 and 8, got {}", bits);
    p.layer_bits[item.substr(0, eq)] = bits;
  }
}

MethodOptions method_options(const QuantArgs& a) {
  if (a.wbits < 2 || a.wbits > 8) fail("--wbits must be between 2 and 8, got {}", a.wbits);
  if (a.abits < 2 || a.abits > 8) fail("--abits must be between 2 and 8, got {}", a.abits);
  MethodOptions o;
  fill_placement(o.placement, a);
  o.seed = a.seed;
  o.progress = !a.quiet;
  o.ranking = !a.no_ranking;
  o.bias_correction = !a.no_bias_correction;
  o.similarity = a.similarity;
  o.search_steps = a.search_steps;
  o.search_images = a.search_images;
  o.convention = a.convention;
  o.rounds = a.rounds;
  o.attn_bits = a.attn_bits;
  o.mixed_precision = a.mixed_precision;
  o.avg_bits = a.avg_bits;
  o.observer.percentile = a.percentile;
  if (o.mixed_precision && o.avg_bits == 0) fail("--mixed-precision needs --avg-bits");
  if (a.avg_bits != 0 && !(a.avg_bits >= 2 && a.avg_bits <= 8)) fail("--avg-bits must be between 2 and 8, got {}", a.avg_bits);
  if (!(a.percentile > 50 && a.percentile <= 100)) fail("--percentile must be in (50, 100], got {}", a.percentile);
  if (a.attn_bits < 2 || a.attn_bits > 8) fail("--attn-bits must be between 2 and 8, got {}", a.attn_bits);
  o.reconstruct = a.reconstruct;
  o.recon.iters = a.recon_iters;
  o.recon.batch = a.recon_batch;
  o.recon.images = a.recon_images;
  o.recon.lr_round = a.recon_lr_round;
  o.recon.lr_scale = a.recon_lr_scale;
  o.recon.loss = a.recon_loss;
  o.recon.qdrop = a.qdrop;
  o.recon.device = a.device;
  o.recon.seed = a.seed;
  o.recon.progress = !a.quiet;
  o.joint_bridges = !a.no_joint_bridges;
  if (!a.reconstruct.empty() && a.reconstruct != "none" && a.reconstruct != "layer" && a.reconstruct != "block")
    fail("--reconstruct must be none, layer or block, got '{}'", a.reconstruct);
  recon::ReconOptions check = o.recon;
  if (a.reconstruct == "layer") check.mode = "layer";
  check.validate();
  return o;
}

int run_quantize(const QuantArgs& a) {
  const int threads = set_threads(a.threads);
  MethodOptions o = method_options(a);
  const std::string method = a.start_plan.empty() ? apply_method_variant(a.method, o) : std::string();
  if (!a.start_plan.empty() && o.reconstruct != "layer" && o.reconstruct != "block")
    fail("--start-plan reconstructs a plan: give --reconstruct layer or block");
  std::vector<std::string> inputs = model_files(a.model);
  for (const auto& f : data_files(a.calib)) inputs.push_back(f);
  inputs.push_back(a.start_plan);
  check_output_path(a.out, inputs, "--out");
  Graph g = load_model(a.model);
  QuantPlan start;
  if (!a.start_plan.empty()) start = load_plan(a.start_plan, g);  // checked against this model before any work
  auto t0 = std::chrono::steady_clock::now();
  at::Tensor calib = load_calibration(g, open_dataset(a.calib), a.calib_size, a.seed, !a.quiet);
  const double load_s = seconds_since(t0);
  auto t1 = std::chrono::steady_clock::now();
  QuantPlan plan;
  if (a.start_plan.empty()) {
    plan = run_method(g, calib, method, o);
    plan.method = a.method;
  } else {
    plan = std::move(start);
    reconstruct_plan(g, calib, plan, o.reconstruct, o);
    plan.method += "+recon";
    plan.settings["start_plan"] = a.start_plan;
    check_plan(plan, g, "reconstructed plan");
  }
  const double search_s = seconds_since(t1);
  plan.settings["calib"] = a.calib;
  plan.settings["threads"] = threads;
  plan.settings["search_seconds"] = search_s;
  save_plan(plan, a.out);
  fmt::print("method    {} on {} ({} quantizers), W{}A{}\n", plan.method, g.meta.name, plan.points.size(),
             plan.settings.value("wbits", a.wbits), plan.settings.value("abits", a.abits));
  fmt::print("calib     {} images from {} (seed {}), loaded in {:.1f} s\n", calib.size(0), a.calib, a.seed, load_s);
  fmt::print("search    {:.1f} s ({} threads){}\n", search_s, threads,
             plan.settings.contains("reconstruction") ? ", reconstruction included" : "");
  if (plan.settings.contains("reconstruction")) {
    const auto& r = plan.settings["reconstruction"];
    double recon_s = 0;
    for (const auto& b : r["blocks"]) recon_s += b["seconds"].get<double>();
    fmt::print("recon     {} blocks ({} mode) in {:.1f} s: {} steps per block, batch {}, {} images, QDrop {}, {} loss, "
               "device {}; {} zero points clamped\n",
               r["blocks"].size(), r["mode"].get<std::string>(), recon_s, r["iters"].get<int>(), r["batch"].get<int>(),
               r["images"].get<int64_t>(), r["qdrop"].get<double>(), r["loss"].get<std::string>(),
               r["device"].get<std::string>(), r["zero_points_clamped"].get<int64_t>());
  }
  fmt::print("wrote     {}\n", a.out);
  return 0;
}

void print_quant_eval(const EvalResult& r) {
  fmt::print("top-1     {:.2f}% ({:+.2f} vs FP32 {:.2f}% on the same images)\n", r.top1_pct(), r.top1_pct() - r.fp_top1_pct(),
             r.fp_top1_pct());
  fmt::print("top-5     {:.2f}%\n", r.top5_pct());
  fmt::print("agreement {:.2f}% of top-1 predictions equal FP32's\n", r.agreement_pct());
  fmt::print("KL        {:.4f} mean KL(FP32 || quantized) of the softmax outputs\n", r.mean_kl());
}

nlohmann::json report_json(const std::vector<LayerReport>& rep) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& r : rep)
    j.push_back({{"layer", r.node}, {"op", r.op}, {"bits", r.quantizers}, {"sqnr_isolated_db", r.sqnr_isolated},
                 {"cosine_isolated", r.cosine_isolated}, {"sqnr_accumulated_db", r.sqnr_accumulated},
                 {"cosine_accumulated", r.cosine_accumulated}});
  return j;
}

int run_compare(const CompareArgs& c) {
  const int threads = set_threads(c.q.threads);
  Graph g = load_model(c.q.model);
  std::vector<std::pair<int, int>> bits;
  for (const auto& b : split(c.bits, ',')) {
    std::smatch m;
    if (!std::regex_match(b, m, std::regex(R"(w(\d)a(\d))"))) fail("--bits expects items like w8a8, got '{}'", b);
    int w = std::stoi(m[1]), a = std::stoi(m[2]);
    if (w < 2 || w > 8 || a < 2 || a > 8) fail("--bits: {} is outside 2-8 bits", b);
    bits.emplace_back(w, a);
  }
  auto methods = split(c.methods, ',');
  if (methods.empty() || bits.empty()) fail("--methods and --bits must name at least one each");
  for (const auto& m : methods) {  // fail early on a typo
    MethodOptions o;
    apply_method_variant(m, o);
  }
  {  // both outputs checked before the (long) work
    if (const auto dir = std::filesystem::path(c.out).parent_path(); !dir.empty()) make_output_dir(dir.string(), "--out");
    std::vector<std::string> inputs = model_files(c.q.model);
    for (const auto& dir : {c.q.calib, c.data})
      for (const auto& f : data_files(dir)) inputs.push_back(f);
    check_output_path(c.out + ".md", inputs, "--out");
    check_output_path(c.out + ".json", inputs, "--out");
  }
  Dataset data = open_dataset(c.data);
  at::Tensor calib = load_calibration(g, open_dataset(c.q.calib), c.q.calib_size, c.q.seed, !c.q.quiet);
  // FP32 once; every quantized run is compared with these logits.
  EvalOptions eo;
  eo.limit = c.limit;
  eo.progress = !c.q.quiet;
  eo.keep_logits = true;
  fmt::print(stderr, "FP32 reference\n");
  EvalResult fp = evaluate(g, data, eo);
  // FP activations of the calibration batch, captured once for every method that searches per layer
  fmt::print(stderr, "capturing FP activations of {} calibration images\n", calib.size(0));
  const LayerTensors fp_layers = capture_layers(g, calib);
  nlohmann::json rows = nlohmann::json::array();
  std::string md = fmt::format(
      "# {}: PTQ methods compared\n\nModel {} ({}), calibration: {} images drawn with seed {} from {}, evaluation: {} "
      "images of {}. FP32 top-1 {:.2f}%. Convention: {}.\n"
      "Reproduce: `{}`\n"
      "Quantizers: each point's label and count (A: activation input, W: weight; bits; t/c/h = per tensor / channel / "
      "head; s/a = symmetric / asymmetric; +ar = learned rounding; twin / log2 / ptf = non-uniform kinds).\n\n"
      "| method | bits | top-1 | Δ vs FP32 | agreement | KL(FP‖Q) | search s | quantizers |\n|---|---|---|---|---|---|---|---|\n",
      g.meta.name, g.meta.name, g.meta.source, calib.size(0), c.q.seed, c.q.calib, fp.images, c.data, fp.top1_pct(),
      c.q.convention == "paper"
          ? "each method's own (its paper's quantizers and placement; see the README, Conventions)"
          : fmt::format("common (weights symmetric per-{}, activations asymmetric per-tensor, image input 8-bit; the "
                        "methods' own quantizer kinds on those edges)", c.q.weight_granularity),
      c.command_line);
  for (const auto& [w, a] : bits) {
    for (const auto& m : methods) {
      QuantArgs qa = c.q;
      qa.wbits = w;
      qa.abits = a;
      MethodOptions o = method_options(qa);
      o.fp_layers = &fp_layers;
      const std::string base = apply_method_variant(m, o);
      fmt::print(stderr, "{} W{}A{}\n", m, w, a);
      auto t0 = std::chrono::steady_clock::now();
      QuantPlan plan = run_method(g, calib, base, o);
      const double search_s = seconds_since(t0);
      plan.method = m;
      EvalOptions qo = eo;
      qo.plan = &plan;
      qo.fp_logits = &fp.logits;
      qo.keep_logits = false;
      EvalResult r = evaluate(g, data, qo);
      const double delta = r.top1_pct() - fp.top1_pct();
      const std::string quantizers = plan_summary(plan);
      md += fmt::format("| {} | W{}A{} | {:.2f} | {:+.2f} | {:.2f}% | {:.4f} | {:.1f} | {} |\n", m, w, a, r.top1_pct(), delta,
                        r.agreement_pct(), r.mean_kl(), search_s, quantizers);
      rows.push_back({{"method", m}, {"convention", c.q.convention}, {"wbits", w}, {"abits", a}, {"top1", r.top1_pct()}, {"top5", r.top5_pct()},
                      {"delta_top1", delta}, {"agreement", r.agreement_pct()}, {"kl", r.mean_kl()},
                      {"search_seconds", search_s}, {"quantizers", quantizers}, {"settings", plan.settings}});
      fmt::print("{} W{}A{}: top-1 {:.2f}% ({:+.2f}), agreement {:.2f}%, KL {:.4f}, search {:.1f} s\n", m, w, a,
                 r.top1_pct(), delta, r.agreement_pct(), r.mean_kl(), search_s);
      write_file_atomic(c.out + ".md", md, true);  // written after every row: a long run keeps what it finished
      nlohmann::json j = {{"model", g.meta.name}, {"calib", c.q.calib}, {"calib_size", calib.size(0)}, {"seed", c.q.seed},
                          {"convention", c.q.convention}, {"data", c.data}, {"images", fp.images}, {"fp32_top1", fp.top1_pct()}, {"threads", threads},
                          {"rows", rows}};
      write_file_atomic(c.out + ".json", j.dump(2) + "\n", true);
    }
  }
  fmt::print("\n{}\nwrote {}.md and {}.json\n", md, c.out, c.out);
  return 0;
}

}  // namespace vitq::cli
