// Hybrid ViTs and Swin against timm 0.9.16's golden tensors (../shared/models/*/golden: random weights, timm's
// exact architectures). For each reference model and each front end it has: timm's eval transform of the first
// four val1000 images equals golden/val1000_first4_input.npy, and `vitq eval --dump-logits` on those images
// gives golden/val1000_first4_logits.npy (max abs <= 5e-4; ONNX Runtime itself is within 7.4e-5) with the same
// top-1. Random weights: these prove the network is computed as timm computes it, nothing about accuracy.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "model_test_util.h"
#include "vitq/data/dataset.h"
#include "vitq/data/image.h"
#include "vitq/data/transform.h"

using namespace vitq;
using namespace vitq::test;

namespace {

struct Reference {
  const char* dir;
  bool onnx;
};

const Reference kReferences[] = {
    {"mobilevit_xxs", true},
    {"mobilevitv2_050", true},
    {"efficientformer_l1-w24", false},
    {"efficientformerv2_s0", false},
    {"swin_tiny_patch4_window7_224-w32", false},
};

fs::path ref_dir(const Reference& r) { return shared_model(r.dir); }

class HybridGolden : public ::testing::TestWithParam<Reference> {};

}  // namespace

TEST_P(HybridGolden, PreprocessingEqualsTimm) {
  const auto& r = GetParam();
  Graph g = load_model(ref_dir(r).string());
  auto want = npy_tensor(ref_dir(r) / "golden" / "val1000_first4_input.npy");
  const auto& p = g.meta.preprocess;
  ASSERT_EQ(want.sizes(), (std::vector<int64_t>{4, 3, p.input_height, p.input_width}));
  Dataset d = open_dataset(imagenet("val1000").string());
  auto got = at::empty_like(want);
  const size_t plane = static_cast<size_t>(3 * p.input_height * p.input_width);
  for (size_t i = 0; i < 4; ++i) eval_transform(decode_image(d.samples[i].path), p, got.data_ptr<float>() + i * plane);
  float diff = (got - want).abs().max().item<float>();
  std::printf("%s: preprocessing vs timm, max abs %.3g\n", r.dir, diff);
  EXPECT_LE(diff, 1e-6f);
}

TEST_P(HybridGolden, EvalDumpLogitsEqualsTimm) {
  const auto& r = GetParam();
  auto want = npy_tensor(ref_dir(r) / "golden" / "val1000_first4_logits.npy");
  std::vector<fs::path> models = {ref_dir(r)};
  if (r.onnx) models.push_back(ref_dir(r) / "model.onnx");
  for (const auto& model : models) {
    TempDir tmp;
    auto res = run_vitq("eval " + quoted(model) + " --data " + quoted(imagenet("val1000")) + " --limit 4 --batch 4 --quiet --dump-logits " +
                        quoted(tmp / "logits.npy"));
    ASSERT_EQ(res.code, 0) << res.output;
    auto got = npy_tensor(tmp / "logits.npy");
    ASSERT_EQ(got.sizes(), want.sizes());
    float diff = (got - want).abs().max().item<float>();
    int64_t same = (got.argmax(1) == want.argmax(1)).sum().item<int64_t>();
    std::printf("%s (%s): vitq eval logits vs timm, max abs %.3g, same top-1 %lld/4\n", r.dir,
                model.extension() == ".onnx" ? "onnx" : "safetensors", diff, static_cast<long long>(same));
    EXPECT_LE(diff, 5e-4f) << model;
    EXPECT_EQ(same, 4) << model;
  }
}

INSTANTIATE_TEST_SUITE_P(Shared, HybridGolden, ::testing::ValuesIn(kReferences),
                         [](const auto& info) {
                           std::string n = info.param.dir;
                           for (auto& c : n)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return n;
                         });
