#include "vitq/models/architectures.h"

#include <nlohmann/json.hpp>

#include "vitq/models/vit_builder.h"
#include "vitq/util/error.h"

namespace vitq {

namespace {
bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }
}  // namespace

PreprocessConfig family_preprocess(const nlohmann::json& config) {
  PreprocessConfig p;
  std::string arch;
  if (config.is_object() && config.contains("architecture") && config["architecture"].is_string())
    arch = config["architecture"].get<std::string>();
  if (starts_with(arch, "mobilevit")) {
    p.input_height = p.input_width = 256;
    p.mean = {0.f, 0.f, 0.f};
    p.std = {1.f, 1.f, 1.f};
    p.crop_pct = starts_with(arch, "mobilevitv2") ? 0.888 : 0.9;
  } else if (starts_with(arch, "efficientformer")) {
    p.crop_pct = 0.95;
  } else if (starts_with(arch, "swin")) {
    p.crop_pct = 0.9;
    if (arch.find("_384") != std::string::npos) {
      p.input_height = p.input_width = 384;
      p.crop_pct = 1.0;
    }
  }
  if (config.is_object() && config.contains("img_size")) {
    const auto& s = config["img_size"];
    auto side = [](const nlohmann::json& v) {
      return v.is_number_integer() && v.get<int64_t>() > 0 && v.get<int64_t>() <= kMaxInputSide ? static_cast<int>(v.get<int64_t>()) : 0;
    };
    // out-of-range or malformed sizes are left to the builders, which name them in their errors
    if (s.is_number_integer() && side(s) > 0) p.input_height = p.input_width = side(s);
    if (s.is_array() && s.size() == 2 && side(s[0]) > 0 && side(s[1]) > 0) {
      p.input_height = side(s[0]);
      p.input_width = side(s[1]);
    }
  }
  return p;
}

Graph build_vit_family(const nlohmann::json& config, const WeightSource& weights, const std::string& where) {
  return build_vit(parse_vit_config(config, where), weights);
}

Graph build_from_config(const nlohmann::json& config, const WeightSource& weights, const std::string& where) {
  std::string arch;
  try {
    arch = config.value("architecture", std::string());
  } catch (const nlohmann::json::exception&) {
    fail("{}: architecture must be a string", where);
  }
  if (starts_with(arch, "mobilevit")) return build_mobilevit(config, weights, where);
  if (starts_with(arch, "efficientformerv2")) return build_efficientformerv2(config, weights, where);
  if (starts_with(arch, "efficientformer")) return build_efficientformer(config, weights, where);
  if (starts_with(arch, "swin")) return build_swin(config, weights, where);
  if (arch.empty() || starts_with(arch, "vit_") || starts_with(arch, "deit")) return build_vit_family(config, weights, where);
  fail("{}: unknown architecture '{}' (known families: vit_*, deit_*, mobilevit_xxs/xs/s, mobilevitv2_050..200, "
       "efficientformer_l1/l3/l7, efficientformerv2_s0/s1/s2/l, swin_*_patch4_window7_224 / window12_384)", where, arch);
}

}  // namespace vitq
