// EfficientFormer V1 / V2 (timm 0.9.16): golden logits of the shared random-weight models, timm's parameter
// counts for every size from a config alone (plus a forward pass on zeros), and one-line errors for bad input.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "test_util.h"
#include "vitq/graph/executor.h"
#include "vitq/models/model_loader.h"
#include "vitq/util/error.h"
#include "vitq/util/npy.h"

using namespace vitq;
using namespace vitq::test;

namespace {
at::Tensor to_tensor(const NpyArray& a) { return at::from_blob(const_cast<float*>(a.data.data()), a.shape, at::kFloat).clone(); }

fs::path ef_dir(const std::string& name) { return shared_dir() / "models" / name; }

// Logits recomputed from the golden input must match timm's golden logits.
void check_golden(const std::string& name, const std::string& arch) {
  at::set_num_threads(2);
  const fs::path dir = ef_dir(name);
  Graph g = load_model(dir.string());
  EXPECT_EQ(g.meta.name, arch);
  Executor ex(g);
  at::InferenceMode guard;
  auto input = to_tensor(load_npy((dir / "golden" / "val1000_first4_input.npy").string()));
  auto want = to_tensor(load_npy((dir / "golden" / "val1000_first4_logits.npy").string()));
  auto got = ex.run(input);
  ASSERT_EQ(got.sizes(), want.sizes());
  float diff = (got - want).abs().max().item<float>();
  std::printf("%s: logits from golden input, max abs diff %.3g\n", name.c_str(), diff);
  EXPECT_LE(diff, 5e-4f);
  EXPECT_TRUE(at::equal(got.argmax(1), want.argmax(1)));
}

// The Error message of building `json` (against the weights of shared model `weights_of`); "" when no error.
std::string build_error(const std::string& json, const std::string& weights_of = "") {
  TempDir dir;
  write_file(dir / "config.json", json);
  try {
    if (weights_of.empty()) {
      load_model((dir / "config.json").string(), /*allow_config_only=*/true);
    } else {
      fs::create_symlink(ef_dir(weights_of) / "model.safetensors", dir / "model.safetensors");
      load_model(dir.path().string());
    }
  } catch (const Error& e) {
    return e.what();
  }
  return "";
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
  has(build_error(R"({"architecture": "efficientformer_l9"})"), "unknown EfficientFormer size");
  has(build_error(R"({"architecture": "efficientformerv2_m3"})"), "unknown EfficientFormer V2 size");
  has(build_error(R"({"architecture": "efficientformer_l1", "depths": [3, 2, 6]})"), "depths");
  has(build_error(R"({"architecture": "efficientformerv2_s0", "depths": [2, 2, 6, 4, 1]})"), "depths");
  has(build_error(R"({"architecture": "efficientformerv2_s0", "mlp_ratios": [4, 4, [4, 3], 4]})"), "mlp_ratios");
  // the w24 weights under l1's default widths (no embed_dims override), and under other widths
  has(build_error(R"({"architecture": "efficientformer_l1"})", "efficientformer_l1-w24"), "shape");
  has(build_error(R"({"architecture": "efficientformer_l1", "embed_dims": [24, 48, 112, 256]})",
                  "efficientformer_l1-w24"), "shape");
  has(build_error(R"({"architecture": "efficientformerv2_s0", "embed_dims": [32, 48, 96, 192]})",
                  "efficientformerv2_s0"), "shape");
  // the V1 attention needs a 7x7 grid
  has(build_error(R"({"architecture": "efficientformer_l1", "pretrained_cfg": {"input_size": [3, 256, 256]}})"),
      "7x7");
}
