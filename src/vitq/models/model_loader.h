// Opens a model from a path: a directory holding model.safetensors + config.json (or model.onnx), a
// .safetensors file (config.json beside it), or an .onnx file (config.json beside it is optional and gives
// the preprocessing and name).
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "vitq/graph/graph.h"

namespace vitq {

Graph load_model(const std::string& path);
// timm's pretrained_cfg (input_size, crop_pct, interpolation, mean, std) from a config.json object.
PreprocessConfig parse_preprocess(const nlohmann::json& config, const std::string& where);

}  // namespace vitq
