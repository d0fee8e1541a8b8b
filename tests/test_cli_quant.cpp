// Bad input to vitq quantize / eval --plan / compare through the real binary.
#include <gtest/gtest.h>
#include <png.h>

#include <nlohmann/json.hpp>

#include "test_util.h"

using namespace vitq::test;

namespace {
std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

void expect_error(const CliResult& r, const std::string& needle) {
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_LT(r.code, 128) << "crashed: " << r.output;
  EXPECT_NE(error_line(r.output).find(needle), std::string::npos) << "output: " << r.output;
}

void write_black_png(const fs::path& path, int w, int h) {
  FILE* f = std::fopen(path.c_str(), "wb");
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  png_init_io(png, f);
  png_set_IHDR(png, info, static_cast<png_uint_32>(w), static_cast<png_uint_32>(h), 8, PNG_COLOR_TYPE_RGB,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  std::vector<png_byte> row(static_cast<size_t>(w) * 3, 0);
  for (int y = 0; y < h; ++y) png_write_row(png, row.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  std::fclose(f);
}

std::string quantize_args(const std::string& extra) {
  return "quantize " + q(model_dir()) + " --calib " + q(imagenet("calib1000")) + " --calib-size 4 --quiet " + extra;
}
}  // namespace

TEST(CliQuant, BitsOutsideRange) {
  TempDir dir;
  expect_error(run_vitq(quantize_args("--method minmax --wbits 9 --abits 8 --out " + q(dir / "p.json"))),
               "--wbits must be between 2 and 8, got 9");
  expect_error(run_vitq(quantize_args("--method minmax --wbits 4 --abits 1 --out " + q(dir / "p.json"))),
               "--abits must be between 2 and 8, got 1");
  expect_error(run_vitq(quantize_args("--method minmax --layer-bits blocks.0.attn.qkv=12 --out " + q(dir / "p.json"))),
               "bits must be between 2 and 8");
}

TEST(CliQuant, UnknownMethod) {
  TempDir dir;
  expect_error(run_vitq(quantize_args("--method brecq --out " + q(dir / "p.json"))), "unknown method 'brecq'");
  expect_error(run_vitq(quantize_args("--method liu2021+fast --out " + q(dir / "p.json"))), "unknown method variant");
}

TEST(CliQuant, PlanFromAnotherModel) {
  TempDir dir;
  auto r = run_vitq(quantize_args("--method minmax --wbits 8 --abits 8 --out " + q(dir / "p.json")));
  ASSERT_EQ(r.code, 0) << r.output;
  auto j = nlohmann::json::parse(read_file(dir / "p.json"));
  j["model"] = "deit_small_patch16_224";
  write_file(dir / "other.json", j.dump());
  expect_error(run_vitq("eval " + q(model_dir()) + " --data " + q(imagenet("val1000")) + " --plan " + q(dir / "other.json")),
               "plan is for model 'deit_small_patch16_224', not 'deit_tiny_patch16_224'");
  write_file(dir / "broken.json", "{\"format\": \"vitq-quant-plan\", \"version\": 1}");
  expect_error(run_vitq("eval " + q(model_dir()) + " --data " + q(imagenet("val1000")) + " --plan " + q(dir / "broken.json")),
               "malformed plan");
  expect_error(run_vitq("eval " + q(model_dir()) + " --data " + q(imagenet("val1000")) + " --plan " + q(dir / "none.json")),
               "cannot open plan");
  // and the good plan evaluates, with the comparison against FP32
  r = run_vitq("eval " + q(model_dir()) + " --data " + q(imagenet("val1000")) + " --limit 32 --quiet --plan " +
               q(dir / "p.json") + " --report " + q(dir / "rep.json") + " --report-images 4");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("agreement"), std::string::npos);
  EXPECT_NE(r.output.find("blocks.11.mlp.fc2"), std::string::npos);
  auto rep = nlohmann::json::parse(read_file(dir / "rep.json"));
  EXPECT_EQ(rep["layers"].size(), 74u);
}

TEST(CliQuant, EmptyCalibrationSet) {
  TempDir dir, empty;
  expect_error(run_vitq("quantize " + q(model_dir()) + " --calib " + q(empty.path()) + " --method minmax --out " +
                        q(dir / "p.json")),
               "is empty");
  expect_error(run_vitq(quantize_args("--method minmax --calib-size 0 --out " + q(dir / "p.json"))), "calib-size");
}

TEST(CliQuant, AllBlackCalibrationImages) {
  TempDir data, out;
  std::string labels;
  for (int i = 0; i < 4; ++i) {
    write_black_png(data / ("black" + std::to_string(i) + ".png"), 64, 48);
    labels += "black" + std::to_string(i) + ".png 0\n";
  }
  write_file(data / "labels.txt", labels);
  for (const std::string method : {"minmax", "omse", "liu2021"}) {
    auto r = run_vitq("quantize " + q(model_dir()) + " --calib " + q(data.path()) + " --calib-size 4 --quiet --method " +
                      method + " --wbits 4 --abits 4 --search-steps 4 --out " + q(out / "p.json"));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("warning: the calibration images are constant"), std::string::npos) << r.output;
    auto j = nlohmann::json::parse(read_file(out / "p.json"));
    for (const auto& p : j["points"])
      for (double s : p["scale"]["data"]) {
        ASSERT_TRUE(std::isfinite(s)) << method << " " << p["node"];
        ASSERT_GT(s, 0.0) << method << " " << p["node"];
      }
  }
}

TEST(CliQuant, CompareRejectsNonsense) {
  TempDir dir;
  std::string base = "compare " + q(model_dir()) + " --calib " + q(imagenet("calib1000")) + " --data " +
                     q(imagenet("val1000")) + " --out " + q(dir / "t");
  expect_error(run_vitq(base + " --bits w9a8"), "outside 2-8 bits");
  expect_error(run_vitq(base + " --bits 8bit"), "--bits expects items like w8a8");
  expect_error(run_vitq(base + " --methods minmax,foo"), "unknown method 'foo'");
}
