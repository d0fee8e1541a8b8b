// safetensors reader: 8-byte little-endian header length N, N bytes of JSON header, then raw tensor data.
// The header is read and validated against the file size before any tensor is read; tensors are read with
// pread() (not memory-mapped: a file truncated by another process while it is read would raise SIGBUS through a
// map; a short read is an error naming the file and tensor).
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
  void parse_header();
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
  uint64_t data_offset_ = 0;  // file offset of the data section
  std::map<std::string, SafeTensorInfo> tensors_;
};

}  // namespace vitq
