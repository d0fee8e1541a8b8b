// safetensors reader: 8-byte little-endian header length N, N bytes of JSON header, then raw tensor data.
// The file is memory-mapped; the header is validated against the file size before any tensor is read.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace vitq {

struct SafeTensorInfo {
  std::string dtype;  // "F32", "F16", "BF16", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets into the data section
};

class SafeTensorsFile {
 public:
  explicit SafeTensorsFile(const std::string& path);  // throws Error on a missing, truncated or corrupt file
  ~SafeTensorsFile();
  SafeTensorsFile(const SafeTensorsFile&) = delete;
  SafeTensorsFile& operator=(const SafeTensorsFile&) = delete;

  const std::string& path() const { return path_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  const SafeTensorInfo& info(const std::string& name) const;
  std::vector<std::string> names() const;
  // A float32 copy of tensor `name` (F32, F16 and BF16 are converted); I64 tensors (index buffers, BatchNorm's
  // num_batches_tracked) come back as int64.
  at::Tensor get(const std::string& name) const;

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  const uint8_t* data_ = nullptr;  // start of the data section
  std::map<std::string, SafeTensorInfo> tensors_;
};

}  // namespace vitq
