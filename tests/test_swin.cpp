// Swin Transformer v1 (timm 0.9.16) builder: golden logits of the shared reference model, timm's parameter
// counts from configs alone, and one-line errors for bad configs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <tuple>

#include "model_test_util.h"

using namespace vitq;
using namespace vitq::test;

namespace {
fs::path swin_dir() { return shared_dir() / "models" / "swin_tiny_patch4_window7_224-w32"; }


// load_model of a config.json alone (config-only) or beside the shared weights (linked, not copied).
Graph load_config(const std::string& json, bool with_weights = false) {
  TempDir dir;
  write_file(dir / "config.json", json);
  if (with_weights) fs::create_symlink(swin_dir() / "model.safetensors", dir / "model.safetensors");
  return load_model(dir.path().string(), /*allow_config_only=*/!with_weights);
}

// Expects load_config to fail with a one-line message containing `needle`.
void expect_error(const std::string& json, const std::string& needle, bool with_weights = false) {
  try {
    load_config(json, with_weights);
    ADD_FAILURE() << "no error for " << json;
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

// The shared model's config with the fields of `extra` replaced (a JSON object).
std::string shared_config(const std::string& extra = "{}") {
  nlohmann::json j = {{"architecture", "swin_tiny_patch4_window7_224"}, {"embed_dim", 32},
                      {"depths", {2, 2, 6, 2}}, {"num_heads", {1, 2, 4, 8}}};
  j.update(nlohmann::json::parse(extra));
  return j.dump();
}
}  // namespace

TEST(Swin, LogitsFromGoldenInput) {
  at::set_num_threads(2);
  Graph g = load_model(swin_dir().string());
  EXPECT_EQ(g.meta.family, "swin");
  EXPECT_EQ(g.meta.name, "swin_tiny_patch4_window7_224");
  EXPECT_EQ(g.num_parameters(), 3335270);
  expect_golden_logits(g, swin_dir(), "swin");
}

TEST(Swin, ParameterCountsFromConfigAlone) {
  const std::vector<std::pair<std::string, int64_t>> want = {
      {"swin_tiny_patch4_window7_224", 28288354},    {"swin_small_patch4_window7_224", 49606258},
      {"swin_base_patch4_window7_224", 87768224},    {"swin_base_patch4_window12_384", 87903584},
      {"swin_large_patch4_window7_224", 196532476},  {"swin_large_patch4_window12_384", 196735516}};
  for (const auto& [arch, params] : want) {
    Graph g = load_config(R"({"architecture": ")" + arch + R"("})");
    EXPECT_EQ(g.num_parameters(), params) << arch;
    EXPECT_EQ(g.meta.family, "swin");
  }
}

TEST(Swin, ForwardOnZerosTiny) {
  at::set_num_threads(2);
  Graph g = load_config(R"({"architecture": "swin_tiny_patch4_window7_224"})");
  at::InferenceMode guard;
  auto y = Executor(g).run(at::zeros({1, 3, 224, 224}));
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{1, 1000}));
  EXPECT_TRUE(at::isfinite(y).all().item<bool>());
}

// Resolutions the window does not divide are padded (timm's F.pad), windows larger than the map are clipped.
TEST(Swin, PaddedAndClippedWindows) {
  at::set_num_threads(2);
  for (const auto& [extra, h, w] : std::vector<std::tuple<std::string, int64_t, int64_t>>{
           {R"({"window_size": 5})", 224, 224}, {R"({"window_size": 9, "img_size": [96, 160]})", 96, 160}}) {
    Graph g = load_config(shared_config(extra));
    at::InferenceMode guard;
    auto y = Executor(g).run(at::randn({2, 3, h, w}));
    ASSERT_EQ(y.sizes(), (std::vector<int64_t>{2, 1000})) << extra;
    EXPECT_TRUE(at::isfinite(y).all().item<bool>());
  }
}

TEST(Swin, BadConfigs) {
  expect_error(R"({"architecture": "swin_huge_patch4_window7_224"})", "unknown Swin size 'huge'");
  expect_error(R"({"architecture": "swin_tiny"})", "unknown Swin architecture");
  expect_error(shared_config(R"({"num_heads": [1, 2, 5, 8]})"), "non-divisible head count");
  expect_error(shared_config(R"({"num_heads": [1, 2, 4]})"), "num_heads");
  expect_error(shared_config(R"({"window_size": 0})"), "window_size");
  expect_error(shared_config(R"({"img_size": 226})"), "not divisible by patch_size");
  expect_error(shared_config(R"({"img_size": 200})"), "even height and width");
  expect_error(shared_config(R"({"depths": "two"})"), "malformed config field");
  // configs that contradict the shared file's shapes
  expect_error(shared_config(R"({"window_size": 8})"), "relative_position_bias_table", true);
  expect_error(shared_config(R"({"embed_dim": 48})"), "patch_embed.proj.weight", true);
  expect_error(shared_config(R"({"qkv_bias": false})"), "qkv.bias", true);
  expect_error(shared_config(R"({"depths": [2, 2, 4, 2]})"), "is not used", true);
}
