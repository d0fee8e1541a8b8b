// Bad input for the hybrid / Swin builders through the CLI: one-line errors, nonzero exit, no crash.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "model_test_util.h"

using namespace vitq::test;

namespace {

// A model folder in `dir` with `config` and the given safetensors bytes (or no weights when empty).
fs::path make_model(const TempDir& dir, const nlohmann::json& config, const std::string& weights = "") {
  write_file(dir / "config.json", config.dump());
  if (!weights.empty()) write_file(dir / "model.safetensors", weights);
  return dir.path();
}

nlohmann::json shared_config(const std::string& name) {
  return nlohmann::json::parse(read_file(shared_model(name) / "config.json"));
}

}  // namespace

TEST(HybridBadInput, UnknownFamilyOrSize) {
  for (const std::string arch : {"resnet50", "mobilevit_xxxl", "mobilevitv2_033", "efficientformer_l2",
                                 "efficientformerv2_s9", "swin_gigantic_patch4_window7_224"}) {
    TempDir dir;
    auto path = make_model(dir, {{"architecture", arch}});
    auto r = run_vitq("info " + quoted(path / "config.json"));
    expect_cli_error(r, arch);
  }
}

TEST(HybridBadInput, ConfigContradictsTheWeights) {
  TempDir dir;
  auto config = shared_config("efficientformer_l1-w24");
  config.erase("embed_dims");  // the file holds the narrow model; the default widths need other shapes
  auto path = make_model(dir, config, read_file(shared_model("efficientformer_l1-w24") / "model.safetensors"));
  expect_cli_error(run_vitq("info " + quoted(path)), "but the config implies");
  TempDir other;
  config = shared_config("mobilevit_xxs");
  config["architecture"] = "mobilevit_xs";
  path = make_model(other, config, read_file(shared_model("mobilevit_xxs") / "model.safetensors"));
  expect_cli_error(run_vitq("info " + quoted(path)), "but the config implies");
}

TEST(HybridBadInput, MissingBatchNormStatistic) {
  TempDir dir;
  std::string bytes = read_file(shared_model("mobilevit_xxs") / "model.safetensors");
  // rename the tensor in the header (same length: offsets stay valid), so the statistic is missing
  const std::string name = "\"stages.0.0.conv1_1x1.bn.running_var\"";
  auto pos = bytes.find(name);
  ASSERT_NE(pos, std::string::npos);
  bytes.replace(pos, name.size(), "\"stages.0.0.conv1_1x1.bn.running_vaX\"");
  auto path = make_model(dir, shared_config("mobilevit_xxs"), bytes);
  expect_cli_error(run_vitq("info " + quoted(path)), "stages.0.0.conv1_1x1.bn.running_var is missing");
}

TEST(HybridBadInput, NonDivisibleHeadsOrWindow) {
  {
    TempDir dir;
    auto config = shared_config("swin_tiny_patch4_window7_224-w32");
    config["num_heads"] = {3, 2, 4, 8};  // 32 channels in 3 heads
    expect_cli_error(run_vitq("info " + quoted(make_model(dir, config) / "config.json")), "divisible");
  }
  {
    TempDir dir;
    auto config = shared_config("swin_tiny_patch4_window7_224-w32");
    config["window_size"] = 0;
    auto r = run_vitq("info " + quoted(make_model(dir, config) / "config.json"));
    expect_cli_error(r, "window_size");
  }
}

// Sizes that would make vitq allocate or compute without end are refused with a one-line error, before any
// large allocation (each case would otherwise take gigabytes or hang).
TEST(HybridBadInput, AbsurdSizesAreBounded) {
  const std::vector<std::pair<nlohmann::json, std::string>> cases = {
      {{{"architecture", "efficientformerv2_s0"}, {"depths", {2, 2, 100000000000LL, 4}}}, "depths"},
      {{{"architecture", "efficientformer_l1"}, {"pool_size", 999}}, "pool_size"},
      {{{"architecture", "mobilevit_xxs"}, {"patch_size", 4096}}, "patch_size"},
      {{{"architecture", "mobilevit_xxs"}, {"img_size", 100000}}, "input size"},
      {{{"architecture", "swin_tiny_patch4_window7_224"}, {"embed_dim", 1LL << 40}}, "embed_dim"},
      {{{"architecture", "swin_tiny_patch4_window7_224"}, {"mlp_ratio", 1e308}}, "mlp_ratio"},
      {{{"architecture", "mobilevit_xxs"}, {"num_classes", 1000000000000LL}}, "larger than vitq accepts"},
  };
  for (const auto& [config, needle] : cases) {
    TempDir dir;
    expect_cli_error(run_vitq("info " + quoted(make_model(dir, config) / "config.json")), needle);
  }
}

TEST(HybridBadInput, ConfigAloneCannotBeEvaluated) {
  TempDir dir;
  auto path = make_model(dir, {{"architecture", "mobilevit_xxs"}});
  auto info = run_vitq("info " + quoted(path / "config.json"));
  EXPECT_EQ(info.code, 0) << info.output;
  EXPECT_NE(info.output.find("1272024"), std::string::npos) << info.output;
  expect_cli_error(run_vitq("eval " + quoted(path / "config.json") + " --data " + quoted(imagenet("val1000")) + " --limit 1"),
                   "has no weights");
}
