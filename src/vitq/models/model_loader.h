// Opens a model from a path: a directory holding model.safetensors + config.json (or model.onnx), a
// .safetensors file (config.json beside it), or an .onnx file (config.json beside it is optional and gives
// the preprocessing and name).
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "vitq/graph/graph.h"

namespace vitq {

// allow_config_only: a config.json alone (or a directory holding only one) gives the network with placeholder
// weights (zeros), for `vitq info`.
Graph load_model(const std::string& path, bool allow_config_only = false);
// timm's pretrained_cfg (input_size, crop_pct, interpolation, mean, std) from a config.json object; what it
// leaves out comes from the family's timm defaults (family_preprocess).
PreprocessConfig parse_preprocess(const nlohmann::json& config, const std::string& where);
// Every float constant finite (naming the first weight that is not) and every normalisation epsilon in (0, 1).
void check_model_values(const Graph& g, const std::string& where);

}  // namespace vitq
