#include "vitq/util/json_check.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "vitq/util/error.h"

namespace vitq {

namespace {
void walk(const nlohmann::json& j, double max_abs, const std::string& where, const std::string& path) {
  if (j.is_object()) {
    for (const auto& [key, v] : j.items()) walk(v, max_abs, where, path + "." + key);
  } else if (j.is_array()) {
    for (size_t i = 0; i < j.size(); ++i) walk(j[i], max_abs, where, path + "[" + std::to_string(i) + "]");
  } else if (j.is_number_float()) {
    const double v = j.get<double>();
    if (!std::isfinite(v) || std::fabs(v) > max_abs)
      fail("{}: {} is {}, beyond the magnitude vitq accepts in this file ({:g})", where, path.empty() ? "the value" : path.substr(1), v, max_abs);
  }
}
}  // namespace

void check_json_numbers(const nlohmann::json& j, double max_abs, const std::string& where) { walk(j, max_abs, where, ""); }

}  // namespace vitq
