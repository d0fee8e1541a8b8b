// The model's eval-time preprocessing, as timm's pretrained_cfg describes it.
#pragma once
#include <array>
#include <string>

namespace vitq {

struct PreprocessConfig {
  int input_height = 224, input_width = 224;
  double crop_pct = 0.875;                  // resize the short side to floor(size / crop_pct)
  std::string interpolation = "bicubic";    // "bicubic" | "bilinear"
  std::array<float, 3> mean = {0.485f, 0.456f, 0.406f};
  std::array<float, 3> std = {0.229f, 0.224f, 0.225f};
};

}  // namespace vitq
