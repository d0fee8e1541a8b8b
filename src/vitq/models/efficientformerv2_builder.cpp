// TODO(issue 8): the efficientformerv2 builder.
#include <nlohmann/json.hpp>

#include "vitq/models/architectures.h"
#include "vitq/util/error.h"

namespace vitq {

Graph build_efficientformerv2(const nlohmann::json& config, const WeightSource& weights, const std::string& where) {
  fail("{}: the efficientformerv2 family is not implemented yet", where);
}

}  // namespace vitq
