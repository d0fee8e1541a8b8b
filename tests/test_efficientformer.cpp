// EfficientFormer V1 / V2 (timm 0.9.16): golden logits of the shared random-weight models, timm's parameter
// counts for every size from a config alone (plus a forward pass on zeros), and one-line errors for bad input.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "model_test_util.h"

using namespace vitq;
using namespace vitq::test;

namespace {
fs::path ef_dir(const std::string& name) { return shared_model(name); }

void check_golden(const std::string& name, const std::string& arch) {
  Graph g = load_model(ef_dir(name).string());
  EXPECT_EQ(g.meta.name, arch);
  expect_golden_logits(g, ef_dir(name), name);
}

// The Error message of building `json` (against the weights of shared model `weights_of`); "" when no error.
std::string error_of(const std::string& json, const std::string& weights_of = "") {
  return build_error(json, weights_of.empty() ? fs::path() : ef_dir(weights_of) / "model.safetensors");
}
}  // namespace

TEST(EfficientFormer, GoldenLogitsV1) { check_golden("efficientformer_l1-w24", "efficientformer_l1"); }
TEST(EfficientFormer, GoldenLogitsV2) { check_golden("efficientformerv2_s0", "efficientformerv2_s0"); }

// timm's parameter counts (num_parameters() of the config alone), and one forward pass on zeros per size.
TEST(EfficientFormer, ParameterCountsAndForward) {
  at::set_num_threads(2);
  const std::vector<std::pair<std::string, int64_t>> sizes = {
      {"efficientformer_l1", 12289928},  {"efficientformer_l3", 31406000},   {"efficientformer_l7", 82229328},
      {"efficientformerv2_s0", 3600256}, {"efficientformerv2_s1", 6185560}, {"efficientformerv2_s2", 12710112},
      {"efficientformerv2_l", 26322288}};
  for (const auto& [arch, want] : sizes) {
    TempDir dir;
    write_file(dir / "config.json", "{\"architecture\": \"" + arch + "\"}");
    Graph g = load_model((dir / "config.json").string(), /*allow_config_only=*/true);
    EXPECT_EQ(g.num_parameters(), want) << arch;
    EXPECT_EQ(g.meta.declared_parameters, want) << arch;
    EXPECT_EQ(g.meta.family, arch.rfind("efficientformerv2", 0) == 0 ? "efficientformerv2" : "efficientformer");
    at::InferenceMode guard;
    auto y = Executor(g).run(at::zeros({1, 3, 224, 224}));
    EXPECT_EQ(y.sizes(), (std::vector<int64_t>{1, 1000})) << arch;
  }
  // the shared narrow l1 (embed_dims override) from its config alone
  TempDir dir;
  write_file(dir / "config.json", read_file(ef_dir("efficientformer_l1-w24") / "config.json"));
  EXPECT_EQ(load_model((dir / "config.json").string(), true).num_parameters(), 3601360);
}

TEST(EfficientFormer, BadInput) {
  auto has = [](const std::string& msg, const std::string& needle) {
    EXPECT_NE(msg.find(needle), std::string::npos) << "message: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
  };
  has(error_of(R"({"architecture": "efficientformer_l9"})"), "unknown EfficientFormer size");
  has(error_of(R"({"architecture": "efficientformerv2_m3"})"), "unknown EfficientFormer V2 size");
  has(error_of(R"({"architecture": "efficientformer_l1", "depths": [3, 2, 6]})"), "depths");
  has(error_of(R"({"architecture": "efficientformerv2_s0", "depths": [2, 2, 6, 4, 1]})"), "depths");
  has(error_of(R"({"architecture": "efficientformerv2_s0", "mlp_ratios": [4, 4, [4, 3], 4]})"), "mlp_ratios");
  // the w24 weights under l1's default widths (no embed_dims override), and under other widths
  has(error_of(R"({"architecture": "efficientformer_l1"})", "efficientformer_l1-w24"), "shape");
  has(error_of(R"({"architecture": "efficientformer_l1", "embed_dims": [24, 48, 112, 256]})",
                  "efficientformer_l1-w24"), "shape");
  has(error_of(R"({"architecture": "efficientformerv2_s0", "embed_dims": [32, 48, 96, 192]})",
                  "efficientformerv2_s0"), "shape");
  // the V1 attention needs a 7x7 grid
  has(error_of(R"({"architecture": "efficientformer_l1", "pretrained_cfg": {"input_size": [3, 256, 256]}})"),
      "7x7");
}
