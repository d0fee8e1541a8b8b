#include "vitq/models/model_loader.h"

#include <ATen/ATen.h>

#include <filesystem>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "vitq/models/safetensors.h"
#include "vitq/models/architectures.h"
#include "vitq/models/builder_util.h"
#include "vitq/util/error.h"
#include "vitq/util/file_io.h"
#include "vitq/util/json_check.h"
#ifdef VITQ_WITH_ONNX
#include "vitq/models/onnx_import.h"
#endif

namespace vitq {

namespace fs = std::filesystem;

namespace {
nlohmann::json read_json(const fs::path& p) {
  const std::string text = read_file(p.string(), "config", uint64_t{64} << 20);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception&) {
    fail("{}: invalid JSON", p.string());
  }
  check_json_numbers(j, 1e9, p.string());
  return j;
}
}  // namespace

PreprocessConfig parse_preprocess(const nlohmann::json& j, const std::string& where) {
  PreprocessConfig p = family_preprocess(j);
  if (!j.contains("pretrained_cfg")) return p;
  const auto& c = j["pretrained_cfg"];
  try {
    if (c.contains("input_size")) {
      auto s = c["input_size"].get<std::vector<int>>();
      if (s.size() != 3 || s[0] != 3) fail("{}: pretrained_cfg.input_size must be [3, H, W]", where);
      p.input_height = s[1];
      p.input_width = s[2];
    }
    p.crop_pct = c.value("crop_pct", p.crop_pct);
    p.interpolation = c.value("interpolation", p.interpolation);
    if (c.contains("mean")) {
      auto m = c["mean"].get<std::vector<float>>();
      if (m.size() != 3) fail("{}: pretrained_cfg.mean needs 3 values", where);
      std::copy(m.begin(), m.end(), p.mean.begin());
    }
    if (c.contains("std")) {
      auto s = c["std"].get<std::vector<float>>();
      if (s.size() != 3) fail("{}: pretrained_cfg.std needs 3 values", where);
      std::copy(s.begin(), s.end(), p.std.begin());
    }
    if (c.value("crop_mode", std::string("center")) != "center")
      fail("{}: crop_mode '{}' is not supported (only center)", where, c["crop_mode"].get<std::string>());
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed pretrained_cfg ({})", where, first_line(e.what()));
  }
  // Bounds on what the config lets the loader allocate: a resize target of input/crop_pct per side, a
  // [B, 3, H, W] batch. Real models use 32..1024 pixels and crop_pct 0.75..1.
  if (p.input_height > kMaxInputSide || p.input_width > kMaxInputSide)
    fail("{}: input size {}x{} is larger than vitq's limit of {} pixels per side", where, p.input_height, p.input_width, kMaxInputSide);
  if (!(p.crop_pct >= 0.1)) fail("{}: crop_pct {} is below 0.1 (it would resize images to {}x their crop)", where, p.crop_pct, 1 / p.crop_pct);
  for (int c = 0; c < 3; ++c) {
    const float m = p.mean[static_cast<size_t>(c)], s = p.std[static_cast<size_t>(c)];
    if (!std::isfinite(m) || std::fabs(m) > 10) fail("{}: pretrained_cfg.mean {} is not a plausible pixel mean (|mean| <= 10)", where, m);
    if (!std::isfinite(s) || s < 1e-3f || s > 100) fail("{}: pretrained_cfg.std {} is not a plausible pixel spread (1e-3 to 100)", where, s);
  }
  if (p.interpolation != "bicubic" && p.interpolation != "bilinear")
    fail("{}: interpolation '{}' is not supported (bicubic, bilinear)", where, p.interpolation);
  if (!(p.crop_pct > 0.0 && p.crop_pct <= 1.0)) fail("{}: crop_pct {} is outside (0, 1]", where, p.crop_pct);
  if (p.input_height <= 0 || p.input_width <= 0) fail("{}: input size must be positive", where);
  for (float s : p.std)
    if (!(s > 0.0f)) fail("{}: pretrained_cfg.std must be positive", where);
  return p;
}

Graph load_model(const std::string& path_str, bool allow_config_only) {
  fs::path path(path_str);
  if (!fs::exists(path)) fail("model not found: {}", path_str);
  fs::path weights;
  if (fs::is_directory(path)) {
    if (fs::exists(path / "model.safetensors")) weights = path / "model.safetensors";
    else if (fs::exists(path / "model.onnx")) weights = path / "model.onnx";
    else if (allow_config_only && fs::exists(path / "config.json")) weights = path / "config.json";
    else fail("{}: no model.safetensors or model.onnx in this directory", path_str);
  } else {
    weights = path;
  }
  if (weights.extension() == ".json") {
    if (!allow_config_only) fail("{}: a config alone has no weights (this command needs model.safetensors or model.onnx)", weights.string());
    auto config = read_json(weights);
    const PreprocessConfig pre = parse_preprocess(config, weights.string());  // bounds checked before building
    Graph g = build_from_config(config, WeightSource(nullptr), weights.string());
    g.meta.preprocess = pre;
    check_model_values(g, weights.string());
    g.meta.format = "config";
    g.meta.source = weights.string();
    return g;
  }
  const fs::path config_path = weights.parent_path() / "config.json";
  const std::string ext = weights.extension().string();
  Graph g;
  if (ext == ".safetensors") {
    if (!fs::exists(config_path)) fail("{}: no config.json beside the weights", weights.string());
    auto config = read_json(config_path);
    const PreprocessConfig pre = parse_preprocess(config, config_path.string());
    SafeTensorsFile file(weights.string());
    g = build_from_config(config, WeightSource(&file), config_path.string());
    g.meta.preprocess = pre;
    g.meta.format = "safetensors";
  } else if (ext == ".onnx") {
#ifdef VITQ_WITH_ONNX
    nlohmann::json config = nlohmann::json::object();
    if (fs::exists(config_path)) config = read_json(config_path);
    auto pre = parse_preprocess(config, config_path.string());
    g = import_onnx(weights.string(), pre.input_height, pre.input_width);
    g.meta.preprocess = pre;
    g.meta.name = config.value("architecture", weights.stem().string());
    // classes: rows of the final Linear's weight
    const Node* last = nullptr;
    for (const auto& n : g.nodes)
      if (n.op == OpKind::Linear) last = &n;
    if (!last) fail("{}: the graph has no classifier (Linear) layer", weights.string());
    g.meta.num_classes = g.const_tensor(last->inputs[1]).size(0);
    if (config.contains("num_classes") && config["num_classes"] != g.meta.num_classes)
      fail("{}: config.json says num_classes {} but the model computes {}", weights.string(),
           config["num_classes"].dump(), g.meta.num_classes);
#else
    fail("{}: this build of vitq has no ONNX support (libonnx-dev was missing)", weights.string());
#endif
  } else {
    fail("{}: unknown model format (expected .safetensors or .onnx)", weights.string());
  }
  g.meta.source = weights.string();
  check_model_values(g, weights.string());
  return g;
}

void check_model_values(const Graph& g, const std::string& where) {
  for (size_t v = 0; v < g.consts.size(); ++v) {
    const at::Tensor& t = g.consts[v];
    if (t.defined() && t.is_floating_point() && !at::isfinite(t).all().item<bool>())
      fail("{}: weight {} has NaN or infinite values", where, g.values[v].name);
  }
  for (const auto& n : g.nodes) {
    auto it = n.attrs.find("epsilon");
    if (it == n.attrs.end()) continue;
    const double eps = std::holds_alternative<double>(it->second) ? std::get<double>(it->second)
                                                                   : static_cast<double>(std::get<int64_t>(it->second));
    if (!(eps > 0 && eps < 1)) fail("{}: {} has epsilon {} (a normalisation's epsilon must be in (0, 1); check layer_norm_eps)", where, n.name, eps);
  }
}

}  // namespace vitq
