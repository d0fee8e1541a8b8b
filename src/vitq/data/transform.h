// timm's eval transform, reproduced exactly: Resize(floor(size / crop_pct)) of the short side with PIL's
// antialiased filter (long side = int(short_new * long / short), as torchvision computes it), CenterCrop
// (offsets int(round((h - H) / 2)), Python's round half to even), ToTensor (/255), Normalize(mean, std).
#pragma once
#include "vitq/data/image.h"
#include "vitq/data/preprocess_config.h"

namespace vitq {

// Writes [3, input_height, input_width] float32 (CHW, normalised) to `out`.
void eval_transform(const Image& image, const PreprocessConfig& config, float* out);

}  // namespace vitq
