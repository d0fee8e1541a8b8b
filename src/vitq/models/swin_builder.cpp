// TODO(issue 8): the swin builder.
#include <nlohmann/json.hpp>

#include "vitq/models/architectures.h"
#include "vitq/util/error.h"

namespace vitq {

Graph build_swin(const nlohmann::json& config, const WeightSource& weights, const std::string& where) {
  fail("{}: the swin family is not implemented yet", where);
}

}  // namespace vitq
