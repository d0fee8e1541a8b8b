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
#include "vitq/util/json_check.h"

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

namespace {
// Reads exactly `n` bytes at `offset`; false when the file ends first (it shrank) or the read fails.
bool read_at(int fd, void* dst, uint64_t n, uint64_t offset) {
  auto* p = static_cast<char*>(dst);
  while (n > 0) {
    const ssize_t got = ::pread(fd, p, n, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    p += got;
    n -= static_cast<uint64_t>(got);
    offset += static_cast<uint64_t>(got);
  }
  return true;
}
}  // namespace

SafeTensorsFile::SafeTensorsFile(const std::string& path) : path_(path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail("cannot open safetensors file {}: {}", path, std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail("{}: not a regular file (a FIFO, device or folder cannot be a safetensors file)", path);
  fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);  // O_NONBLOCK: never wait on a FIFO
  if (fd_ < 0) fail("cannot open safetensors file {}: {}", path, std::strerror(errno));
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    fail("{}: not a regular file", path);
  }
  try {
    parse_header();
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

void SafeTensorsFile::parse_header() {
  const std::string& path = path_;
  struct stat st {};
  ::fstat(fd_, &st);
  size_ = static_cast<uint64_t>(st.st_size);
  if (size_ < 8) fail("{}: truncated safetensors file ({} bytes, no header)", path, size_);
  uint8_t len_bytes[8];
  if (!read_at(fd_, len_bytes, 8, 0)) fail("{}: truncated safetensors file (no header)", path);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  if (header_len > size_ - 8)
    fail("{}: corrupt or truncated safetensors file (header claims {} bytes, file has {})", path, header_len,
         size_ - 8);
  if (header_len > (uint64_t{100} << 20)) fail("{}: safetensors header of {} bytes (more than 100 MB: corrupt?)", path, header_len);
  std::string header_text(header_len, '\0');
  if (!read_at(fd_, header_text.data(), header_len, 8)) fail("{}: truncated safetensors file (the header ends early)", path);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(header_text);
  } catch (const std::exception& e) {
    fail("{}: corrupt safetensors header (invalid JSON)", path);
  }
  if (!header.is_object()) fail("{}: corrupt safetensors header (not a JSON object)", path);
  check_json_numbers(header, 1e9, path + " (header)");
  data_offset_ = 8 + header_len;
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
        // no real tensor is larger than the file: bound the product before it can overflow
        if (d != 0 && numel > data_size / static_cast<uint64_t>(d))
          fail("{}: tensor {} has shape [{}], larger than the file", path, name, fmt::join(info.shape, ", "));
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
  if (fd_ >= 0) ::close(fd_);
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
  auto raw = at::empty({static_cast<int64_t>(i.end - i.begin)}, at::kByte);
  if (!read_at(fd_, raw.data_ptr(), i.end - i.begin, data_offset_ + i.begin))
    fail("{}: tensor {} could not be read (the file was truncated or changed while vitq read it)", path_, name);
  if (st == at::kLong) return raw.view(st).reshape(i.shape).clone();
  at::Tensor t = raw.view(st).reshape(i.shape).to(at::kFloat).contiguous();
  if (!at::isfinite(t).all().item<bool>())
    fail("{}: tensor {} has NaN or infinite values", path_, name);
  return t;
}

}  // namespace vitq
