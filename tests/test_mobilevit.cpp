// MobileViT v1 / v2 (timm 0.9.16, byobnet): golden logits of the shared random-weight models, timm's parameter
// counts for every size from a config alone, and one-line errors for bad configs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "model_test_util.h"

using namespace vitq;
using namespace vitq::test;

namespace {
fs::path mvit_dir(const std::string& name) { return shared_model(name); }

void check_golden(const std::string& name) {
  Graph g = load_model(mvit_dir(name).string());
  EXPECT_EQ(g.meta.name, name);
  expect_golden_logits(g, mvit_dir(name), name);
}

// load_model on a config.json holding `json` (no weights).
Graph from_config(const TempDir& dir, const std::string& json) {
  write_file(dir / "config.json", json);
  return load_model((dir / "config.json").string(), /*allow_config_only=*/true);
}

// The Error message of building `json` against the weights of shared model `weights_of` ("" when no error).
std::string error_of(const std::string& json, const std::string& weights_of = "") {
  return build_error(json, weights_of.empty() ? fs::path() : mvit_dir(weights_of) / "model.safetensors");
}
}  // namespace

TEST(MobileViT, GoldenLogitsV1Xxs) { check_golden("mobilevit_xxs"); }
TEST(MobileViT, GoldenLogitsV2_050) { check_golden("mobilevitv2_050"); }

TEST(MobileViT, ParameterCountsAndForwardFromConfig) {
  at::set_num_threads(2);
  // timm 0.9.16's counts (sum of numel over model.parameters())
  const std::vector<std::pair<std::string, int64_t>> sizes = {
      {"mobilevit_xxs", 1272024},   {"mobilevit_xs", 2317848},    {"mobilevit_s", 5578632},
      {"mobilevitv2_050", 1370593}, {"mobilevitv2_075", 2866009}, {"mobilevitv2_100", 4901841},
      {"mobilevitv2_125", 7478089}, {"mobilevitv2_150", 10594753}, {"mobilevitv2_175", 14251833},
      {"mobilevitv2_200", 18449329}};
  for (const auto& [arch, count] : sizes) {
    TempDir dir;
    Graph g = from_config(dir, "{\"architecture\": \"" + arch + "\"}");
    std::printf("%s: %lld parameters\n", arch.c_str(), static_cast<long long>(g.num_parameters()));
    EXPECT_EQ(g.num_parameters(), count) << arch;
    EXPECT_EQ(g.meta.family, arch.rfind("mobilevitv2", 0) == 0 ? "mobilevitv2" : "mobilevit");
    at::InferenceMode guard;
    auto y = Executor(g).run(at::zeros({1, 3, 256, 256}));
    EXPECT_EQ(y.sizes(), (at::IntArrayRef{1, 1000})) << arch;
    EXPECT_TRUE(at::isfinite(y).all().item<bool>()) << arch;
  }
}

TEST(MobileViT, ConfigOverrides) {
  at::set_num_threads(2);
  TempDir dir;
  // num_classes and a v2 width multiplier; 224 input: 7x7 in the last stage is resized to the patch grid
  Graph g = from_config(dir, R"({"architecture": "mobilevitv2_050", "num_classes": 10, "width_multiplier": 0.75,
                                 "pretrained_cfg": {"input_size": [3, 224, 224]}})");
  TempDir dir2;
  Graph g075 = from_config(dir2, R"({"architecture": "mobilevitv2_075"})");
  EXPECT_EQ(g.num_parameters(), g075.num_parameters() - 1000 * 384 - 1000 + 10 * 384 + 10);
  TempDir dir3;
  Graph v1 = from_config(dir3, R"({"architecture": "mobilevit_xxs", "img_size": 224})");
  at::InferenceMode guard;
  EXPECT_EQ(Executor(g).run(at::zeros({2, 3, 224, 224})).sizes(), (at::IntArrayRef{2, 10}));
  EXPECT_EQ(Executor(v1).run(at::zeros({2, 3, 224, 224})).sizes(), (at::IntArrayRef{2, 1000}));
}

TEST(MobileViT, BadConfigs) {
  std::string e = error_of(R"({"architecture": "mobilevit_xxxl"})");
  EXPECT_NE(e.find("unknown MobileViT size 'mobilevit_xxxl'"), std::string::npos) << e;
  e = error_of(R"({"architecture": "mobilevitv2_300"})");
  EXPECT_NE(e.find("unknown MobileViT size"), std::string::npos) << e;
  // a size that contradicts the file's shapes
  e = error_of(R"({"architecture": "mobilevit_xs"})", "mobilevit_xxs");
  EXPECT_NE(e.find("stages.0.0.conv1_1x1.conv.weight has shape [32, 16, 1, 1]"), std::string::npos) << e;
  e = error_of(R"({"architecture": "mobilevitv2_050", "num_classes": 100})", "mobilevitv2_050");
  EXPECT_NE(e.find("head.fc.weight"), std::string::npos) << e;
  e = error_of(R"({"architecture": "mobilevit_xxs", "num_heads": 3})");
  EXPECT_NE(e.find("not divisible by num_heads 3"), std::string::npos) << e;
  e = error_of(R"({"architecture": "mobilevit_s", "width_multiplier": 2})");
  EXPECT_NE(e.find("width_multiplier applies to mobilevitv2 only"), std::string::npos) << e;
  e = error_of(R"({"architecture": "mobilevitv2_100", "num_classes": "ten"})");
  EXPECT_NE(e.find("malformed config field num_classes"), std::string::npos) << e;
  e = error_of(R"({"architecture": "mobilevit_xxs", "img_size": 224, "pretrained_cfg": {"input_size": [3, 256, 256]}})");
  EXPECT_NE(e.find("contradicts"), std::string::npos) << e;
  e = error_of(R"({"architecture": "mobilevitv2_100", "width_multiplier": 0})");
  EXPECT_NE(e.find("width_multiplier must be positive"), std::string::npos) << e;
}
