#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstring>

#include "test_util.h"
#include "vitq/models/safetensors.h"
#include "vitq/util/error.h"

using namespace vitq;
using namespace vitq::test;

namespace {
std::string make_safetensors(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out + header + data;
}

std::string bytes_of(const void* p, size_t n) { return std::string(static_cast<const char*>(p), n); }

void expect_error(const fs::path& p, const std::string& needle) {
  try {
    SafeTensorsFile f(p.string());
    FAIL() << "no error for " << p;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "error must be one line";
  }
}
}  // namespace

TEST(SafeTensors, ReadsF32F16BF16) {
  TempDir dir;
  const float f32[3] = {1.5f, -2.0f, 0.25f};
  const uint16_t f16[2] = {0x3C00, 0xC000};    // 1.0, -2.0
  const uint16_t bf16[2] = {0x3F80, 0x4040};   // 1.0, 3.0
  std::string data = bytes_of(f32, 12) + bytes_of(f16, 4) + bytes_of(bf16, 4);
  std::string header = R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
                       R"("b":{"dtype":"F16","shape":[1,2],"data_offsets":[12,16]},)"
                       R"("c":{"dtype":"BF16","shape":[2],"data_offsets":[16,20]}})";
  write_file(dir / "m.safetensors", make_safetensors(header, data));
  SafeTensorsFile f((dir / "m.safetensors").string());
  EXPECT_EQ(f.names().size(), 3u);
  auto a = f.get("a");
  EXPECT_TRUE(at::equal(a, at::tensor({1.5f, -2.0f, 0.25f})));
  auto b = f.get("b");
  EXPECT_EQ(b.sizes(), (std::vector<int64_t>{1, 2}));
  EXPECT_TRUE(at::equal(b, at::tensor({1.0f, -2.0f}).view({1, 2})));
  EXPECT_TRUE(at::equal(f.get("c"), at::tensor({1.0f, 3.0f})));
  EXPECT_THROW(f.get("missing"), Error);
}

TEST(SafeTensors, MissingFile) { expect_error("/nonexistent/x.safetensors", "cannot open"); }

TEST(SafeTensors, TooShort) {
  TempDir dir;
  write_file(dir / "m.safetensors", "abc");
  expect_error(dir / "m.safetensors", "truncated");
}

TEST(SafeTensors, HeaderLongerThanFile) {
  TempDir dir;
  std::string s = make_safetensors("{}", "");
  s[0] = 100;  // claims a 100-byte header
  write_file(dir / "m.safetensors", s);
  expect_error(dir / "m.safetensors", "header claims");
}

TEST(SafeTensors, InvalidJson) {
  TempDir dir;
  write_file(dir / "m.safetensors", make_safetensors("{\"a\": [", ""));
  expect_error(dir / "m.safetensors", "invalid JSON");
}

TEST(SafeTensors, TruncatedData) {
  TempDir dir;
  write_file(dir / "m.safetensors",
             make_safetensors(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::string(8, '\0')));
  expect_error(dir / "m.safetensors", "truncated");
}

TEST(SafeTensors, OffsetsDisagreeWithShape) {
  TempDir dir;
  write_file(dir / "m.safetensors",
             make_safetensors(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}})", std::string(16, '\0')));
  expect_error(dir / "m.safetensors", "do not match its shape");
}

TEST(SafeTensors, OverlappingTensors) {
  TempDir dir;
  write_file(dir / "m.safetensors",
             make_safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                              R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", std::string(12, '\0')));
  expect_error(dir / "m.safetensors", "overlapping");
}

TEST(SafeTensors, MalformedEntry) {
  TempDir dir;
  write_file(dir / "m.safetensors", make_safetensors(R"({"a":{"dtype":"F32","shape":"x"}})", ""));
  expect_error(dir / "m.safetensors", "corrupt safetensors header entry");
}

TEST(SafeTensors, RealModelHeader) {
  SafeTensorsFile f((model_dir() / "model.safetensors").string());
  EXPECT_EQ(f.info("blocks.0.attn.qkv.weight").shape, (std::vector<int64_t>{576, 192}));
  EXPECT_EQ(f.info("pos_embed").dtype, "F32");
}
