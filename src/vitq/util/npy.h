// Minimal .npy (NumPy format v1/v2) reader and writer for float32 C-order arrays: golden tensors and dumps.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace vitq {

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;  // C order
  int64_t numel() const;
};

NpyArray load_npy(const std::string& path);  // throws Error on anything but little-endian float32, C order
void save_npy(const std::string& path, const NpyArray& array);

}  // namespace vitq
