#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <zlib.h>

#include <random>

#include "test_util.h"
#include "vitq/data/dataset.h"
#include "vitq/data/image.h"
#include "vitq/data/resize.h"
#include "vitq/data/transform.h"
#include "vitq/util/error.h"
#include "vitq/util/npy.h"

using namespace vitq;
using namespace vitq::test;

namespace {
Image random_image(int w, int h, uint32_t seed) {
  std::mt19937 rng(seed);
  Image img;
  img.width = w;
  img.height = h;
  img.rgb.resize(static_cast<size_t>(w) * h * 3);
  // smooth gradients plus noise, so both flat and busy regions are covered
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c)
        img.rgb[(static_cast<size_t>(y) * w + x) * 3 + c] =
            static_cast<uint8_t>(std::clamp<int>((x * 255 / w + y * 97 / h + c * 40) % 256 + static_cast<int>(rng() % 41) - 20, 0, 255));
  return img;
}
}  // namespace

// The fixed-point path against the double-precision reference. The fast path (like PIL) rounds to 8 bits after
// the horizontal pass (error <= 0.5) and the vertical pass carries that error with gain sum|w| <= 1.25 (bicubic,
// a = -0.5), then rounds again: |fast - reference| <= 0.5 * 1.25 + 0.5 = 1.125 (plus 22-bit coefficient noise).
TEST(Resize, MatchesReferenceWithinOneLevel) {
  for (auto filter : {ResizeFilter::Bicubic, ResizeFilter::Bilinear}) {
    for (auto [w, h, ow, oh] : std::vector<std::array<int, 4>>{{37, 29, 16, 12}, {20, 30, 41, 55}, {64, 48, 64, 20}, {33, 33, 33, 33}}) {
      Image img = random_image(w, h, static_cast<uint32_t>(w * 131 + h));
      Image fast = resize(img, ow, oh, filter);
      auto ref = resize_reference(img, ow, oh, filter);
      ASSERT_EQ(fast.rgb.size(), ref.size());
      double max_diff = 0;
      for (size_t i = 0; i < ref.size(); ++i) max_diff = std::max(max_diff, std::abs(fast.rgb[i] - ref[i]));
      EXPECT_LE(max_diff, 1.13) << w << "x" << h << " -> " << ow << "x" << oh;
    }
  }
}

TEST(Resize, SameSizeIsIdentity) {
  Image img = random_image(17, 9, 3);
  EXPECT_EQ(resize(img, 17, 9, ResizeFilter::Bicubic).rgb, img.rgb);
}

TEST(Resize, RejectsBadSizeAndFilter) {
  Image img = random_image(8, 8, 1);
  EXPECT_THROW(resize(img, 0, 4, ResizeFilter::Bicubic), Error);
  EXPECT_THROW(parse_filter("lanczos"), Error);
}

TEST(Transform, CenterCropRoundsHalfToEven) {
  // 249 wide after resize: (249-224)/2 = 12.5 -> Python's round gives 12 (half to even).
  PreprocessConfig p;
  p.crop_pct = 1.0;
  p.mean = {0, 0, 0};
  p.std = {1, 1, 1};
  Image img;
  img.width = 249;
  img.height = 224;
  img.rgb.resize(static_cast<size_t>(249) * 224 * 3);
  for (int x = 0; x < 249; ++x)
    for (int y = 0; y < 224; ++y) img.rgb[(static_cast<size_t>(y) * 249 + x) * 3] = static_cast<uint8_t>(x);
  std::vector<float> out(3 * 224 * 224);
  eval_transform(img, p, out.data());  // short side already 224: no resize, crop only
  EXPECT_FLOAT_EQ(out[0] * 255.0f, 12.0f);
}

// Acceptance: timm's preprocessing of the first 4 val1000 images, decoded from the JPEGs.
TEST(Golden, PreprocessingMatchesTimm) {
  auto want = load_npy(golden("val1000_first4_input.npy").string());
  ASSERT_EQ(want.shape, (std::vector<int64_t>{4, 3, 224, 224}));
  Dataset d = open_dataset(imagenet("val1000").string());
  PreprocessConfig p;
  p.crop_pct = 0.9;
  p.mean = {0.48500001430511475f, 0.4560000002384186f, 0.4059999883174896f};
  p.std = {0.2290000021457672f, 0.2240000069141388f, 0.22499999403953552f};
  const size_t plane = 3 * 224 * 224;
  std::vector<float> got(4 * plane);
  for (size_t i = 0; i < 4; ++i) eval_transform(decode_image(d.samples[i].path), p, got.data() + i * plane);
  double max_diff = 0, sum = 0;
  size_t exact = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    double diff = std::abs(got[i] - want.data[i]);
    max_diff = std::max(max_diff, diff);
    sum += diff;
    exact += diff < 1e-6;
  }
  const double mean_diff = sum / static_cast<double>(got.size());
  std::printf("preprocessing vs golden: max abs %.6f, mean abs %.8f, identical values %.4f%%\n", max_diff, mean_diff,
              100.0 * static_cast<double>(exact) / static_cast<double>(got.size()));
  EXPECT_LE(max_diff, 0.02);
  EXPECT_LE(mean_diff, 0.001);
}

TEST(Image, DecodesJpegAndRejectsGarbage) {
  Dataset d = open_dataset(imagenet("val1000").string());
  Image img = decode_image(d.samples[0].path);
  EXPECT_GT(img.width, 0);
  EXPECT_EQ(img.rgb.size(), static_cast<size_t>(img.width) * img.height * 3);
  TempDir dir;
  write_file(dir / "a.jpg", "this is not an image");
  EXPECT_THROW(decode_image((dir / "a.jpg").string()), Error);
  // a real JPEG cut in half is reported as truncated/corrupt, not decoded into grey
  std::string jpeg = read_file(d.samples[0].path);
  write_file(dir / "half.jpg", jpeg.substr(0, jpeg.size() / 2));
  try {
    decode_image((dir / "half.jpg").string());
    FAIL() << "truncated JPEG accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("half.jpg"), std::string::npos);
  }
  EXPECT_THROW(decode_image((dir / "missing.jpg").string()), Error);
}

TEST(Image, RefusesDecompressionBombs) {
  // a PNG header claiming 20000 x 20000 pixels, and nothing else
  std::string png = "\x89PNG\r\n\x1a\n";
  std::string ihdr = std::string("IHDR", 4);
  for (uint32_t v : {20000u, 20000u}) for (int s = 24; s >= 0; s -= 8) ihdr += static_cast<char>((v >> s) & 0xFF);
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);
  uint32_t crc = static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(ihdr.data()), static_cast<uInt>(ihdr.size())));
  png += std::string("\x00\x00\x00\x0d", 4) + ihdr;
  for (int s = 24; s >= 0; s -= 8) png += static_cast<char>((crc >> s) & 0xFF);
  TempDir dir;
  write_file(dir / "bomb.png", png);
  try {
    decode_image((dir / "bomb.png").string());
    FAIL() << "decoded a 400-megapixel header";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("decompression bomb"), std::string::npos) << e.what();
  }
}

TEST(Dataset, LabelsFileAndClassFolders) {
  TempDir dir;
  write_file(dir / "labels.txt", "a.jpg 3\nsub dir/b c.png 7\n\n");
  Dataset d = open_dataset(dir.path().string());
  ASSERT_EQ(d.samples.size(), 2u);
  EXPECT_EQ(d.samples[1].label, 7);
  EXPECT_EQ(fs::path(d.samples[1].path).filename(), "b c.png");
  EXPECT_THROW(check_labels(d, 5), Error);

  TempDir tree;
  fs::create_directories(tree / "n02");
  fs::create_directories(tree / "n01");
  write_file(tree / "n02" / "x.JPEG", "");
  write_file(tree / "n01" / "y.png", "");
  write_file(tree / "n01" / "notes.txt", "");
  Dataset t = open_dataset(tree.path().string());
  ASSERT_EQ(t.samples.size(), 2u);
  EXPECT_EQ(fs::path(t.samples[0].path).filename(), "y.png");
  EXPECT_EQ(t.samples[0].label, 0);
  EXPECT_EQ(t.samples[1].label, 1);

  TempDir empty;
  EXPECT_THROW(open_dataset(empty.path().string()), Error);
  write_file(empty / "labels.txt", "a.jpg notanumber\n");
  EXPECT_THROW(open_dataset(empty.path().string()), Error);
}

TEST(Dataset, SeededSubsetIsDeterministic) {
  Dataset d = open_dataset(imagenet("calib1000").string());
  auto a = sample_subset(d, 32, 0), b = sample_subset(d, 32, 0), c = sample_subset(d, 32, 1);
  ASSERT_EQ(a.samples.size(), 32u);
  for (size_t i = 0; i < 32; ++i) EXPECT_EQ(a.samples[i].path, b.samples[i].path);
  bool differs = false;
  for (size_t i = 0; i < 32; ++i) differs |= a.samples[i].path != c.samples[i].path;
  EXPECT_TRUE(differs);
  EXPECT_THROW(sample_subset(d, 5000, 0), Error);
}
