// vitq quantize / vitq compare, and the plan side of vitq eval.
#include <ATen/ATen.h>

#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <map>
#include <optional>
#include <tuple>
#include <regex>
#include <set>
#include <sstream>

#include "cli/commands.h"
#include "vitq/data/dataset.h"
#include "vitq/eval/evaluate.h"
#include "vitq/methods/method.h"
#include "vitq/models/model_loader.h"
#include "vitq/quant/calibration.h"
#include "vitq/quant/fake_quant.h"
#include "vitq/quant/synthetic.h"
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
  // +paper: liu2021 as published, without vitq's fixes (the KL check of the searched steps, the kind-wise mixed
  // precision). Applied first, wherever it is written, so that a later +klcheck or +mpkl still adds to it.
  for (size_t i = 1; i < parts.size(); ++i)
    if (parts[i] == "paper") {
      if (parts[0] != "liu2021") fail("method variant '+paper' is liu2021's (the published method without vitq's fixes), not {}'s", parts[0]);
      o.kl_check = false;
      o.mp_sensitivity = "nuclear";
    }
  for (size_t i = 1; i < parts.size(); ++i) {
    const auto& v = parts[i];
    if (v == "paper") continue;
    if (v == "norank") o.ranking = false;
    else if (v == "nobc") o.bias_correction = false;
    else if ((v == "holdout" || v == "klcheck") && parts[0] != "liu2021")
      fail("method variant '+{}' is liu2021's (its searched steps checked), not {}'s", v, parts[0]);
    else if (v == "holdout") o.holdout = true;
    else if (v == "klcheck") o.kl_check = true;
    else if (v == "cosine") o.similarity = "cosine";
    else if (v == "mp" || v == "mpkl" || v == "mpkind") {
      o.mixed_precision = true;
      if (v == "mpkl") o.mp_sensitivity = "kl";
      if (v == "mpkind") o.mp_sensitivity = "kind";
      if (o.avg_bits == 0) o.avg_bits = o.placement.wbits;
    } else if (v == "attn8") o.attn_bits = 8;
    else if (v == "noreparam") o.reparam = false;
    else if (v == "nolog") o.log_softmax = false;
    else if (v == "erq") o.erq_lambda = 0.1;
    else if (v == "adalog") o.adalog = true;
    else if (v == "headwise") o.matmul_per_head = true;
    else if (v == "wmse") o.weight_mse = true;
    else if (v == "amse") o.activation_mse = true;
    else if (v == "osearch") o.output_search = true;
    else if (v == "oslog") o.output_search = o.output_search_log = true;
    else if (v == "osends") o.output_search = o.output_search_ends = true;
    else if (v == "recon") {
      if (o.reconstruct.empty() || o.reconstruct == "none") o.reconstruct = "block";
    } else fail("unknown method variant '+{}' in '{}' (paper, norank, nobc, holdout, klcheck, cosine, mp, mpkl, mpkind, attn8, noreparam, nolog, erq, headwise, wmse, amse, adalog, osearch, oslog, osends, recon)", v, spec);
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
  // NAME=B (weights and inputs), NAME=wB (weights alone), NAME=aB (inputs alone), NAME=wBaC (both, apart)
  for (const auto& item : split(a.layer_bits, ',')) {
    auto eq = item.find('=');
    if (eq == std::string::npos) fail("--layer-bits expects NAME=BITS, NAME=wBITS, NAME=aBITS or NAME=wBITSaBITS, got '{}'", item);
    if (eq == 0) fail("--layer-bits: '{}' names no layer", item);
    const std::string name = item.substr(0, eq), text = item.substr(eq + 1);
    auto number = [&](const std::string& digits) {
      int bits = 0;
      try {
        size_t used = 0;
        bits = std::stoi(digits, &used);
        if (used != digits.size() || digits.empty() || !std::isdigit(static_cast<unsigned char>(digits[0])))
          throw std::invalid_argument(digits);  // "4x" is not 4
      } catch (const std::exception&) {
        fail("--layer-bits: '{}' is not a number of bits (BITS, wBITS, aBITS or wBITSaBITS)", text);
      }
      if (bits < 2 || bits > 8) fail("--layer-bits: bits must be between 2 and 8, got {}", bits);
      return bits;
    };
    if (!text.empty() && (text[0] == 'w' || text[0] == 'a')) {
      const auto apos = text.find('a');
      if (text[0] == 'w' && apos != std::string::npos) {
        p.layer_wbits[name] = number(text.substr(1, apos - 1));
        p.layer_abits[name] = number(text.substr(apos + 1));
      } else if (text[0] == 'w') {
        p.layer_wbits[name] = number(text.substr(1));
      } else {
        p.layer_abits[name] = number(text.substr(1));
      }
    } else {
      p.layer_bits[name] = number(text);
    }
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
  o.recon.learn_log = a.recon_learn_log;
  o.recon.token_scales = a.recon_token_scales;
  o.recon.augment = a.recon_augment;
  o.recon.lr_log = a.recon_lr_log;
  o.recon.loss = a.recon_loss;
  o.recon.fisher_damping = a.recon_damping;
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

// --calib: a folder (--calib-size images drawn with --seed) or synthetic[:N] (synthesised from the model, seeded).
// With --recon-images above --calib-size, the draw is that long: `calib` is its first --calib-size images (the
// same images a draw of --calib-size gives, as the draw is a Fisher-Yates prefix), `recon` all of them.
struct CalibrationSets {
  at::Tensor calib, recon;  // recon: undefined unless the reconstruction gets more images than the calibration
};

at::Tensor calibration_images(const Graph& g, const QuantArgs& a, size_t count);

// Whether the reconstruction gets images beyond the calibration batch: --recon-images above the calibration
// count, and something reconstructs (else the option is ignored, with a warning).
bool more_recon_images(const QuantArgs& a, bool reconstructs) {
  // (every command that calibrates asks this once, so the flags only a reconstruction reads are checked here too)
  if (a.recon_token_scales && !reconstructs)
    fmt::print(stderr, "vitq: warning: --recon-token-scales: nothing here reconstructs; ignored\n");
  if (a.recon_augment > 0 && !reconstructs) fmt::print(stderr, "vitq: warning: --recon-augment: nothing here reconstructs; ignored\n");
  if (a.recon_damping > 0 && !reconstructs) fmt::print(stderr, "vitq: warning: --recon-damping: nothing here reconstructs; ignored\n");
  int64_t n = 0;
  const bool synthetic = parse_synthetic_calib(a.calib, &n);
  const int64_t calib_n = synthetic && n ? n : static_cast<int64_t>(a.calib_size);
  if (a.recon_images <= calib_n) return false;
  if (!reconstructs) {
    fmt::print(stderr, "vitq: warning: --recon-images {}: nothing here reconstructs; ignored\n", a.recon_images);
    return false;
  }
  if (synthetic)
    fail("--recon-images {} is more than the {} synthetic calibration images; synthesise that many (--calib synthetic:{})",
         a.recon_images, calib_n, a.recon_images);
  if (calib_n < 1) fail("--calib-size must be at least 1");
  return true;
}

// more: more_recon_images(a, …)
CalibrationSets calibration_sets(const Graph& g, const QuantArgs& a, bool more) {
  CalibrationSets s;
  if (!more) {
    s.calib = calibration_images(g, a, a.calib_size);
    return s;
  }
  s.recon = calibration_images(g, a, static_cast<size_t>(a.recon_images));
  const auto calib_n = static_cast<int64_t>(a.calib_size);
  // an unreadable image is skipped (with a warning) and the draw's next one moves up
  if (s.recon.size(0) < calib_n)
    fail("only {} of the {} images drawn from {} could be read, fewer than --calib-size {}", s.recon.size(0), a.recon_images, a.calib, calib_n);
  s.calib = s.recon.narrow(0, 0, calib_n);
  return s;
}

// Whether run_method reconstructs: the method does it itself (qhyvit) or is asked to (+recon, --reconstruct).
bool method_reconstructs(const std::string& base, const MethodOptions& o) {
  return o.reconstruct == "layer" || o.reconstruct == "block" || find_method(base).reconstructs;
}

// Whether any of these methods (with their variants) reconstructs, under the options of `a`.
bool any_reconstructs(const std::vector<std::string>& methods, const QuantArgs& a) {
  for (const auto& m : methods) {
    MethodOptions o = method_options(a);
    const std::string base = apply_method_variant(m, o);
    if (method_reconstructs(base, o)) return true;
  }
  return false;
}

at::Tensor calibration_images(const Graph& g, const QuantArgs& a, size_t count) {
  int64_t n = 0;
  if (parse_synthetic_calib(a.calib, &n)) {
    SyntheticOptions so;
    so.images = n ? n : static_cast<int64_t>(a.calib_size);
    so.seed = a.seed;
    so.iters = a.synthetic_iters;
    so.init = parse_synthetic_init(a.synthetic_init);
    so.bn_weight = a.synthetic_bn_weight;
    so.progress = !a.quiet;
    return synthesize_calibration(g, so);
  }
  return load_calibration(g, open_dataset(a.calib), count, a.seed, !a.quiet);
}

// --exclude-calib: the evaluation set without the images drawn for calibration or reconstruction (the same files, compared by their
// canonical paths), so that a method is judged on images none of its searches saw. Returns how many it dropped.
int64_t drop_calibration_images(Dataset& data, const QuantArgs& a, bool more_recon) {
  int64_t n = 0;
  if (parse_synthetic_calib(a.calib, &n))
    fail("--exclude-calib: the calibration images are synthetic ({}); none of them is in --data", a.calib);
  const Dataset all = open_dataset(a.calib);
  // the reconstruction's images too, where --recon-images draws more than --calib-size
  const size_t n_drawn = more_recon ? static_cast<size_t>(a.recon_images) : a.calib_size;
  const Dataset drawn = sample_subset(all, std::min(n_drawn, all.samples.size()), a.seed);
  auto key = [](const std::string& path) {
    std::error_code ec;
    const auto c = std::filesystem::weakly_canonical(path, ec);
    return ec ? path : c.string();
  };
  std::set<std::string> used;
  for (const auto& s : drawn.samples) used.insert(key(s.path));
  const size_t before = data.samples.size();
  data.samples.erase(std::remove_if(data.samples.begin(), data.samples.end(),
                                    [&](const Sample& s) { return used.count(key(s.path)) > 0; }),
                     data.samples.end());
  if (data.samples.empty()) fail("--exclude-calib: every image of {} was drawn for calibration; nothing is left to evaluate", data.root);
  return static_cast<int64_t>(before - data.samples.size());
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
  const bool reconstructs = !a.start_plan.empty() || method_reconstructs(method, o);
  const CalibrationSets sets = calibration_sets(g, a, more_recon_images(a, reconstructs));
  const at::Tensor& calib = sets.calib;
  if (sets.recon.defined()) o.recon_calib = &sets.recon;
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
  if (int64_t n = 0; parse_synthetic_calib(a.calib, &n)) {
    plan.settings["synthetic_iters"] = a.synthetic_iters;
    plan.settings["synthetic_init"] = a.synthetic_init;
    plan.settings["synthetic_bn_weight"] = a.synthetic_bn_weight;
  }
  plan.settings["threads"] = threads;
  plan.settings["search_seconds"] = search_s;
  save_plan(plan, a.out);
  fmt::print("method    {} on {} ({} quantizers), W{}A{}\n", plan.method, g.meta.name, plan.points.size(),
             plan.settings.value("wbits", a.wbits), plan.settings.value("abits", a.abits));
  fmt::print("calib     {} images from {} (seed {}{}), loaded in {:.1f} s\n", calib.size(0), a.calib, a.seed,
             sets.recon.defined() ? fmt::format("; the reconstruction's {}: these and the next of the draw", sets.recon.size(0)) : std::string(),
             load_s);
  fmt::print("search    {:.1f} s ({} threads){}\n", search_s, threads,
             plan.settings.contains("reconstruction") ? ", reconstruction included" : "");
  if (plan.settings.contains("reconstruction")) {
    const auto& r = plan.settings["reconstruction"];
    double recon_s = 0;
    for (const auto& b : r["blocks"]) recon_s += b["seconds"].get<double>();
    fmt::print("recon     {} blocks ({} mode) in {:.1f} s: {} steps per block, batch {}, {} images, QDrop {}, {} loss, "
               "device {}; {} zero points clamped\n",
               r["blocks"].size(), r["mode"].get<std::string>(), recon_s, r["iters"].get<int>(), r["batch"].get<int>(),
               r["images"].get<int64_t>(), r["qdrop"].get<double>(),
               r.value("fisher_damping", 0.0) > 0 ? fmt::format("{} (damping {:g})", r["loss"].get<std::string>(), r["fisher_damping"].get<double>())
                                                  : r["loss"].get<std::string>(),
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

namespace {
// The markdown table of a compare result (one run, or merged shards): everything comes from its JSON.
std::string compare_markdown(const nlohmann::json& j) {
  std::string md = fmt::format(
      "# {}: PTQ methods compared\n\nModel {} ({}), calibration: {} images drawn with seed {} from {}, evaluation: {} "
      "images of {}{}. FP32 top-1 {:.2f}%. Convention: {}.\n"
      "Reproduce: `{}`\n"
      "Quantizers: each point's label and count (A: activation input, W: weight; bits; t/c/h = per tensor / channel / "
      "head; s/a = symmetric / asymmetric; +ar = learned rounding; twin / log2 / log√2 / adalog / ptf = non-uniform kinds).\n\n"
      "| method | bits | top-1 | Δ vs FP32 | agreement | KL(FP‖Q) | search s | quantizers |\n|---|---|---|---|---|---|---|---|\n",
      j["model"].get<std::string>(), j["model"].get<std::string>(), j["source"].get<std::string>(), j["calib_size"].get<int64_t>(),
      j["seed"].get<uint64_t>(), j["calib"].get<std::string>(), j["images"].get<int64_t>(), j["data"].get<std::string>(),
      j.contains("calibration_images_excluded")
          ? fmt::format(" (without the {} calibration images in it)", j["calibration_images_excluded"].get<int64_t>())
          : std::string(),
      j["fp32_top1"].get<double>(),
      j["convention"] == "paper"
          ? std::string("each method's own (its paper's quantizers and placement; see the README, Conventions)")
          : fmt::format("common (weights symmetric per-{}, activations asymmetric per-tensor, image input 8-bit; the "
                        "methods' own quantizer kinds on those edges)", j["weight_granularity"].get<std::string>()),
      j["command_line"].get<std::string>());
  for (const auto& r : j["rows"])
    md += fmt::format("| {} | W{}A{} | {:.2f} | {:+.2f} | {:.2f}% | {:.4f} | {:.1f} | {} |\n", r["method"].get<std::string>(),
                      r["wbits"].get<int>(), r["abits"].get<int>(), r["top1"].get<double>(), r["delta_top1"].get<double>(),
                      r["agreement"].get<double>(), r["kl"].get<double>(), r["search_seconds"].get<double>(),
                      r["quantizers"].get<std::string>());
  return md;
}

// "I/N" -> (I, N), 0 <= I < N.
std::pair<int, int> parse_shard(const std::string& s) {
  std::smatch m;
  if (!std::regex_match(s, m, std::regex(R"((\d{1,6})/(\d{1,6}))"))) fail("--shard expects I/N (e.g. 0/4), got '{}'", s);
  const int i = std::stoi(m[1]), n = std::stoi(m[2]);
  if (n < 1 || i >= n) fail("--shard {}: the index must be in [0, {})", s, n);
  return {i, n};
}

// The command line without its --shard option: the merged table's "Reproduce" line, and part of the sweep's
// identity (shards of one sweep differ only there).
std::string without_option(const std::string& command_line, const std::string& option) {
  return std::regex_replace(command_line, std::regex(" " + option + R"([ =]\S+)"), "");
}
std::string without_shard(const std::string& command_line) { return without_option(command_line, "--shard"); }

}  // namespace

nlohmann::json parse_compare_json(const std::string& path) {
  try {
    return nlohmann::json::parse(read_file(path, "compare result", uint64_t{1} << 30));
  } catch (const Error&) {
    throw;
  } catch (const std::exception&) {
    fail("{}: not a compare result (invalid or truncated JSON)", path);
  }
}

namespace {
int merge_compare(const CompareArgs& c) {
  if (c.merge.size() < 1) fail("--merge needs the partial results (.json) of every shard");
  std::vector<std::string> inputs = c.merge;
  check_output_path(c.out + ".md", inputs, "--out");
  check_output_path(c.out + ".json", inputs, "--out");
  if (!c.report.empty()) {
    inputs.push_back(c.out + ".md");
    inputs.push_back(c.out + ".json");
    check_output_path(c.report, inputs, "--report");
  }
  nlohmann::json merged;
  std::map<int64_t, nlohmann::json> cells;
  std::map<int64_t, std::string> cell_source;
  int64_t total = -1, count = -1;
  std::set<int64_t> shards_seen;
  for (const auto& path : c.merge) {
    const nlohmann::json j = parse_compare_json(path);
    try {
      if (!j.is_object() || !j.contains("shard") || !j.contains("sweep") || !j.contains("rows"))
        fail("{}: not a partial compare result (written by vitq compare --shard I/N)", path);
      const auto& sh = j["shard"];
      const int64_t index = sh.at("index").get<int64_t>(), n = sh.at("count").get<int64_t>(), cells_total = sh.at("cells").get<int64_t>();
      if (merged.is_null()) {
        merged = j;
        total = cells_total;
        count = n;
      } else if (j["sweep"] != merged["sweep"]) {
        fail("{}: a shard of another sweep (its model, images, methods, bits or options differ from {}'s)", path, c.merge.front());
      } else if (n != count || cells_total != total) {
        fail("{}: shard {}/{} does not match {}'s split into {} shards", path, index, n, c.merge.front(), count);
      }
      if (!shards_seen.insert(index).second) fail("{}: shard {}/{} is given twice", path, index, n);
      for (const auto& r : j["rows"]) {
        const int64_t cell = r.at("cell").get<int64_t>();
        if (cell < 0 || cell >= total) fail("{}: cell {} outside the sweep's {} cells", path, cell, total);
        if (cells.count(cell)) fail("{}: cell {} ({} W{}A{}) is also in {} (overlapping shards)", path, cell, r["method"].get<std::string>(),
                                    r["wbits"].get<int>(), r["abits"].get<int>(), cell_source[cell]);
        cells[cell] = r;
        cell_source[cell] = path;
      }
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      fail("{}: malformed partial compare result ({})", path, first_line(e.what()));
    }
  }
  std::vector<int64_t> missing;
  for (int64_t k = 0; k < total; ++k)
    if (!cells.count(k)) missing.push_back(k);
  if (!missing.empty()) {
    std::vector<int64_t> absent;
    for (int64_t s = 0; s < count; ++s)
      if (!shards_seen.count(s)) absent.push_back(s);
    fail("{} of the sweep's {} cells are missing (shards not given: {})", missing.size(), total,
         absent.empty() ? std::string("none; a shard is incomplete") : fmt::format("{}", fmt::join(absent, ", ")));
  }
  merged.erase("shard");
  merged["command_line"] = merged["sweep"]["command"].get<std::string>() + " --out " + c.out;
  merged.erase("sweep");  // the merged result is what one run writes
  merged["rows"] = nlohmann::json::array();
  for (auto& [k, r] : cells) merged["rows"].push_back(r);
  write_file_atomic(c.out + ".json", merged.dump(2) + "\n", true);
  const std::string md = compare_markdown(merged);
  write_file_atomic(c.out + ".md", md, true);
  if (!c.report.empty()) {
    write_report(c.report, {{"compare", merged}, {"compare_file", c.out + ".json"}});
    fmt::print("wrote {}\n", c.report);
  }
  fmt::print("{}\nmerged {} shards ({} cells): wrote {}.md and {}.json\n", md, shards_seen.size(), total, c.out, c.out);
  return 0;
}
}  // namespace

namespace {
// Where compare --save-plans writes a cell's plan: <dir>/<method>_w<W>a<A>.plan.json (a method's '+' stays).
std::string compare_plan_path(const std::string& dir, const std::string& method, int w, int a) {
  return (std::filesystem::path(dir) / fmt::format("{}_w{}a{}.plan.json", method, w, a)).string();
}
}  // namespace

int run_compare(const CompareArgs& c) {
  if (!c.merge.empty()) return merge_compare(c);
  for (const auto& [value, name] : {std::pair{c.q.model, "MODEL"}, {c.q.calib, "--calib"}, {c.data, "--data"}})
    if (value.empty()) fail("compare needs {} (or --merge with the partial results of a sharded sweep)", name);
  const int threads = set_threads(c.q.threads);
  std::pair<int, int> shard{0, 1};
  if (!c.shard.empty()) shard = parse_shard(c.shard);
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
    if (!c.save_plans.empty()) {
      make_output_dir(c.save_plans, "--save-plans");
      for (const auto& [w, a] : bits)
        for (const auto& m : methods) check_output_path(compare_plan_path(c.save_plans, m, w, a), inputs, "--save-plans");
    }
    if (!c.report.empty()) {
      if (!c.shard.empty()) fail("--report with --shard: a shard has part of the table; write the report when merging (--merge ... --report F.html)");
      inputs.push_back(c.out + ".md");
      inputs.push_back(c.out + ".json");
      check_output_path(c.report, inputs, "--report");
    }
  }
  // The sweep's cells, bits-major; shard I of N runs cells k with k % N == I (round robin: each shard gets a
  // share of every bit width, so shards take similar times).
  const int64_t total = static_cast<int64_t>(bits.size() * methods.size());
  std::vector<int64_t> mine;
  for (int64_t k = 0; k < total; ++k)
    if (k % shard.second == shard.first) mine.push_back(k);
  Dataset data = open_dataset(c.data);
  const bool more_recon = more_recon_images(c.q, any_reconstructs(methods, c.q));
  const int64_t excluded = c.exclude_calib ? drop_calibration_images(data, c.q, more_recon) : 0;
  if (c.exclude_calib) fmt::print(stderr, "--exclude-calib: {} of the calibration images are in {}; evaluating the other {}\n", excluded, c.data, data.samples.size());
  const CalibrationSets sets = calibration_sets(g, c.q, more_recon);
  const at::Tensor& calib = sets.calib;
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
  const std::string reproduce = without_shard(c.command_line);
  nlohmann::json j = {{"model", g.meta.name}, {"source", g.meta.source}, {"calib", c.q.calib}, {"calib_size", calib.size(0)},
                      {"seed", c.q.seed}, {"convention", c.q.convention}, {"weight_granularity", c.q.weight_granularity},
                      {"data", c.data}, {"images", fp.images}, {"fp32_top1", fp.top1_pct()}, {"threads", threads},
                      {"command_line", reproduce}, {"rows", nlohmann::json::array()}};
  if (c.exclude_calib) j["calibration_images_excluded"] = excluded;
  if (!c.shard.empty()) {
    // what makes two partial results parts of one sweep: the command without --shard, and what it read
    j["sweep"] = {{"command", without_option(reproduce, "--out")}, {"model", g.meta.name}, {"images", fp.images}, {"fp32_top1", fp.top1_pct()},
                  {"calib_size", calib.size(0)}, {"methods", methods}, {"bits", c.bits}};
    j["shard"] = {{"index", shard.first}, {"count", shard.second}, {"cells", total}};
  }
  std::optional<QuantPlan> report_plan;
  std::tuple<int, int, double> report_rank;
  std::string report_label;
  for (int64_t k : mine) {
    const auto [w, a] = bits[static_cast<size_t>(k) / methods.size()];
    const std::string& m = methods[static_cast<size_t>(k) % methods.size()];
    QuantArgs qa = c.q;
    qa.wbits = w;
    qa.abits = a;
    MethodOptions o = method_options(qa);
    o.fp_layers = &fp_layers;
    if (sets.recon.defined()) o.recon_calib = &sets.recon;
    const std::string base = apply_method_variant(m, o);
    fmt::print(stderr, "{} W{}A{}\n", m, w, a);
    auto t0 = std::chrono::steady_clock::now();
    QuantPlan plan = run_method(g, calib, base, o);
    const double search_s = seconds_since(t0);
    plan.method = m;
    std::string plan_file;
    if (!c.save_plans.empty()) {  // before the evaluation: a long search is kept whatever follows
      plan_file = compare_plan_path(c.save_plans, m, w, a);
      save_plan(plan, plan_file);
      fmt::print(stderr, "wrote plan {}\n", plan_file);
    }
    EvalOptions qo = eo;
    qo.plan = &plan;
    qo.fp_logits = &fp.logits;
    qo.keep_logits = false;
    EvalResult r = evaluate(g, data, qo);
    const double delta = r.top1_pct() - fp.top1_pct();
    // the report's per-layer charts: the best plan (by agreement) of the lowest bit width
    const std::tuple<int, int, double> rank{w + a, w, -r.agreement_pct()};
    if (!c.report.empty() && (!report_plan || rank < report_rank)) {
      report_plan = plan;
      report_rank = rank;
      report_label = fmt::format("{} W{}A{} of this compare run (not saved)", m, w, a);
    }
    j["rows"].push_back({{"cell", k}, {"method", m}, {"convention", c.q.convention}, {"wbits", w}, {"abits", a},
                         {"top1", r.top1_pct()}, {"top5", r.top5_pct()}, {"delta_top1", delta}, {"agreement", r.agreement_pct()},
                         {"kl", r.mean_kl()}, {"search_seconds", search_s}, {"quantizers", plan_summary(plan)},
                         {"settings", plan.settings}});
    if (!plan_file.empty()) j["rows"].back()["plan_file"] = plan_file;
    fmt::print("{} W{}A{}: top-1 {:.2f}% ({:+.2f}), agreement {:.2f}%, KL {:.4f}, search {:.1f} s\n", m, w, a,
               r.top1_pct(), delta, r.agreement_pct(), r.mean_kl(), search_s);
    // written after every row: a long run keeps what it finished
    write_file_atomic(c.out + ".md", compare_markdown(j), true);
    write_file_atomic(c.out + ".json", j.dump(2) + "\n", true);
  }
  if (mine.empty()) {  // a shard with nothing to do (more shards than cells) still writes its (empty) part
    write_file_atomic(c.out + ".md", compare_markdown(j), true);
    write_file_atomic(c.out + ".json", j.dump(2) + "\n", true);
  }
  if (report_plan) {
    write_report(c.report, {{"compare", j},
                            {"compare_file", c.out + ".json"},
                            {"plan", plan_report_data(g, *report_plan, report_label, c.data, c.report_images, 4, !c.q.quiet)}});
    fmt::print("wrote {}\n", c.report);
  }
  fmt::print("\n{}\n{}wrote {}.md and {}.json\n", compare_markdown(j),
             c.shard.empty() ? "" : fmt::format("shard {} of {}: {} of {} cells; ", shard.first, shard.second, mine.size(), total),
             c.out, c.out);
  return 0;
}

}  // namespace vitq::cli
