#include "vitq/models/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "vitq/util/error.h"

namespace vitq {

namespace {
size_t dtype_size(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2") return 1;
  return 0;
}
}  // namespace

SafeTensorsFile::SafeTensorsFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail("cannot open safetensors file {}: {}", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{}: not a regular file", path);
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ < 8) {
    ::close(fd);
    fail("{}: truncated safetensors file ({} bytes, no header)", path, size_);
  }
  map_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    fail("{}: mmap failed: {}", path, std::strerror(errno));
  }
  const auto* bytes = static_cast<const uint8_t*>(map_);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > size_ - 8)
    fail("{}: corrupt or truncated safetensors file (header claims {} bytes, file has {})", path, header_len,
         size_ - 8);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes + 8, bytes + 8 + header_len);
  } catch (const std::exception& e) {
    fail("{}: corrupt safetensors header (invalid JSON)", path);
  }
  if (!header.is_object()) fail("{}: corrupt safetensors header (not a JSON object)", path);
  data_ = bytes + 8 + header_len;
  const uint64_t data_size = size_ - 8 - header_len;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    try {
      SafeTensorInfo info;
      info.dtype = entry.at("dtype").get<std::string>();
      info.shape = entry.at("shape").get<std::vector<int64_t>>();
      auto offsets = entry.at("data_offsets").get<std::vector<uint64_t>>();
      if (offsets.size() != 2) throw std::runtime_error("data_offsets");
      info.begin = offsets[0];
      info.end = offsets[1];
      size_t esize = dtype_size(info.dtype);
      if (esize == 0) fail("{}: tensor {} has unknown dtype {}", path, name, info.dtype);
      uint64_t numel = 1;
      for (auto d : info.shape) {
        if (d < 0) fail("{}: tensor {} has a negative dimension", path, name);
        numel *= static_cast<uint64_t>(d);
      }
      if (info.end < info.begin || info.end - info.begin != numel * esize)
        fail("{}: tensor {} has data_offsets [{}, {}] that do not match its shape and dtype", path, name, info.begin,
             info.end);
      if (info.end > data_size)
        fail("{}: truncated safetensors file (tensor {} ends at byte {}, data section has {})", path, name, info.end,
             data_size);
      tensors_.emplace(name, std::move(info));
    } catch (const Error&) {
      throw;
    } catch (const std::exception&) {
      fail("{}: corrupt safetensors header entry for tensor {}", path, name);
    }
  }
  // Tensors must not overlap (the format also forbids holes; we only need disjointness to be safe).
  std::vector<const SafeTensorInfo*> order;
  for (auto& [n, i] : tensors_) order.push_back(&i);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < order.size(); ++i)
    if (order[i]->begin < order[i - 1]->end) fail("{}: corrupt safetensors header (overlapping tensors)", path);
}

SafeTensorsFile::~SafeTensorsFile() {
  if (map_) ::munmap(map_, size_);
}

const SafeTensorInfo& SafeTensorsFile::info(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail("{}: tensor {} not found", path_, name);
  return it->second;
}

std::vector<std::string> SafeTensorsFile::names() const {
  std::vector<std::string> out;
  for (auto& [n, i] : tensors_) out.push_back(n);
  return out;
}

at::Tensor SafeTensorsFile::get(const std::string& name) const {
  const auto& i = info(name);
  at::ScalarType st;
  if (i.dtype == "F32") st = at::kFloat;
  else if (i.dtype == "F16") st = at::kHalf;
  else if (i.dtype == "BF16") st = at::kBFloat16;
  else if (i.dtype == "I64") st = at::kLong;
  else fail("{}: tensor {} has dtype {}; only F32, F16 and BF16 weights (and I64 index buffers) are supported", path_, name, i.dtype);
  // from_blob on the read-only map, then copy (the map may be unaligned for the dtype; clone copies safely)
  auto raw = at::empty({static_cast<int64_t>(i.end - i.begin)}, at::kByte);
  std::memcpy(raw.data_ptr(), data_ + i.begin, i.end - i.begin);
  if (st == at::kLong) return raw.view(st).reshape(i.shape).clone();
  return raw.view(st).reshape(i.shape).to(at::kFloat).contiguous();
}

}  // namespace vitq
