#include "vitq/util/npy.h"

#include <cstring>
#include <fstream>
#include <regex>

#include "vitq/util/error.h"
#include "vitq/util/file_io.h"

namespace vitq {

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

NpyArray load_npy(const std::string& path) {
  check_regular_file(path, ".npy file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {}", path);
  char magic[8];
  if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) fail("{}: not a .npy file", path);
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    uint16_t len16 = 0;
    in.read(reinterpret_cast<char*>(&len16), 2);
    header_len = len16;
  } else {
    in.read(reinterpret_cast<char*>(&header_len), 4);
  }
  std::string header(header_len, '\0');
  if (!in.read(header.data(), header_len)) fail("{}: truncated .npy header", path);
  if (header.find("'descr': '<f4'") == std::string::npos) fail("{}: only little-endian float32 .npy is supported", path);
  if (header.find("'fortran_order': False") == std::string::npos) fail("{}: Fortran-order .npy is not supported", path);
  std::smatch m;
  if (!std::regex_search(header, m, std::regex(R"('shape': \(([0-9, ]*)\))"))) fail("{}: no shape in .npy header", path);
  NpyArray a;
  std::string dims = m[1];
  static const std::regex number("[0-9]+");
  for (std::sregex_iterator it(dims.begin(), dims.end(), number), end; it != end; ++it)
    a.shape.push_back(std::stoll(it->str()));
  a.data.resize(static_cast<size_t>(a.numel()));
  if (!in.read(reinterpret_cast<char*>(a.data.data()), static_cast<std::streamsize>(a.data.size() * 4)))
    fail("{}: truncated .npy data", path);
  return a;
}

void save_npy(const std::string& path, const NpyArray& a) {
  std::string shape;
  for (auto d : a.shape) shape += std::to_string(d) + ", ";
  if (a.shape.size() > 1) shape.resize(shape.size() - 1);
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + shape + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string bytes("\x93NUMPY\x01\x00", 8);
  const uint16_t len = static_cast<uint16_t>(header.size());
  bytes.push_back(static_cast<char>(len & 0xff));
  bytes.push_back(static_cast<char>(len >> 8));
  bytes += header;
  bytes.append(reinterpret_cast<const char*>(a.data.data()), a.data.size() * 4);
  write_file_atomic(path, bytes, /*overwrite=*/true);
}

}  // namespace vitq
