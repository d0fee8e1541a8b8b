// The architecture families vitq builds from timm weights (model.safetensors + config.json), chosen by
// config.json's "architecture": its family and size give the defaults, explicit hyper-parameters override
// them (each family's builder names the keys it reads). Every builder checks every tensor's shape against the
// config and that every tensor of the file is used; with no file (WeightSource(nullptr)) it describes the
// network of a config alone.
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "vitq/graph/graph.h"
#include "vitq/models/builder_util.h"

namespace vitq {

// Dispatches on the architecture name; an unknown family or size is a one-line error listing what is known.
Graph build_from_config(const nlohmann::json& config, const WeightSource& weights, const std::string& where);

// timm's default eval transform of the config's architecture (used where config.json has no pretrained_cfg):
// MobileViT 256 px, mean 0 / std 1, crop_pct 0.9 (v2: 0.888); EfficientFormer crop_pct 0.95; Swin 384 models
// crop_pct 1.0 (others 0.9); `img_size` sets the input size; else the generic defaults (224, 0.875).
PreprocessConfig family_preprocess(const nlohmann::json& config);

// vit_* / deit_* (and configs without an architecture that give embed_dim, depth, num_heads)
Graph build_vit_family(const nlohmann::json& config, const WeightSource& weights, const std::string& where);
// mobilevit_xxs/xs/s (timm's MobileViT v1, byobnet) and mobilevitv2_050 ... 200
Graph build_mobilevit(const nlohmann::json& config, const WeightSource& weights, const std::string& where);
// efficientformer_l1/l3/l7
Graph build_efficientformer(const nlohmann::json& config, const WeightSource& weights, const std::string& where);
// efficientformerv2_s0/s1/s2/l
Graph build_efficientformerv2(const nlohmann::json& config, const WeightSource& weights, const std::string& where);
// swin_{tiny,small,base,large}_patch4_window{7,12}_{224,384}
Graph build_swin(const nlohmann::json& config, const WeightSource& weights, const std::string& where);

}  // namespace vitq
