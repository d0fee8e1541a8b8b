// 8-bit RGB images and their decoding (JPEG through libjpeg-turbo, PNG through libpng), matching what
// PIL's Image.open(...).convert("RGB") gives: same JPEG decoder settings (islow DCT, fancy upsampling),
// greyscale replicated, CMYK converted as PIL does, alpha dropped.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace vitq {

struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // [height, width, 3], row-major
  uint8_t at(int y, int x, int c) const { return rgb[(static_cast<size_t>(y) * width + x) * 3 + c]; }
};

// Throws Error naming `path` when the file is missing, not an image, truncated or corrupt.
Image decode_image(const std::string& path);
Image decode_image(const uint8_t* data, size_t size, const std::string& path);

}  // namespace vitq
