// TODO(issue 8): the mobilevit builder.
#include <nlohmann/json.hpp>

#include "vitq/models/architectures.h"
#include "vitq/util/error.h"

namespace vitq {

Graph build_mobilevit(const nlohmann::json& config, const WeightSource& weights, const std::string& where) {
  fail("{}: the mobilevit family is not implemented yet", where);
}

}  // namespace vitq
