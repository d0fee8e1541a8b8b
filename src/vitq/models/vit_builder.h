// Builds the ViT / DeiT family (timm's VisionTransformer, pre-norm, class token, optional distillation token)
// as a Graph from safetensors weights in timm tensor names and a timm-style config.json.
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "vitq/graph/graph.h"

namespace vitq {

class WeightSource;

struct VitConfig {
  std::string architecture;
  int64_t num_classes = 1000, embed_dim = 0, depth = 0, num_heads = 0, patch_size = 16, img_size = 224;
  double mlp_ratio = 4.0, layer_norm_eps = 1e-6;
  bool qkv_bias = true, distilled = false;
};

// Hyper-parameters from config.json: explicit fields win; otherwise they are read off the architecture name
// (vit_|deit_ + tiny|small|base|large + [distilled_] + patchP + _S).
VitConfig parse_vit_config(const nlohmann::json& config, const std::string& where);

// Checks every tensor against the shape the config implies (one-line error naming the first mismatch).
Graph build_vit(const VitConfig& cfg, const WeightSource& weights);

}  // namespace vitq
