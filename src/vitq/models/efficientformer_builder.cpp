// TODO(issue 8): the efficientformer builder.
#include <nlohmann/json.hpp>

#include "vitq/models/architectures.h"
#include "vitq/util/error.h"

namespace vitq {

Graph build_efficientformer(const nlohmann::json& config, const WeightSource& weights, const std::string& where) {
  fail("{}: the efficientformer family is not implemented yet", where);
}

}  // namespace vitq
