#include "vitq/models/architectures.h"

#include <nlohmann/json.hpp>

#include "vitq/models/vit_builder.h"
#include "vitq/util/error.h"

namespace vitq {

namespace {
bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }
}  // namespace

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
