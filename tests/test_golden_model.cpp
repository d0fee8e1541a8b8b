// Acceptance against the reference PyTorch forward (golden tensors in ../shared) through both front ends.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "test_util.h"
#include "vitq/data/dataset.h"
#include "vitq/eval/evaluate.h"
#include "vitq/graph/executor.h"
#include "vitq/models/model_loader.h"
#include "vitq/util/npy.h"

using namespace vitq;
using namespace vitq::test;

namespace {
at::Tensor to_tensor(const NpyArray& a) { return at::from_blob(const_cast<float*>(a.data.data()), a.shape, at::kFloat).clone(); }

std::string front_end_path(const std::string& which) {
  return which == "onnx" ? (model_dir() / "model.onnx").string() : model_dir().string();
}

// Golden logits of the first 4 images, recomputed by us from the golden *input*, must equal the reference
// logits of the same images (the first 4 rows of val1000_first100_logits).
void check_logits_from_golden_input(const std::string& which) {
  at::set_num_threads(2);
  Graph g = load_model(front_end_path(which));
  Executor ex(g);
  at::InferenceMode guard;
  auto input = to_tensor(load_npy(golden("val1000_first4_input.npy").string()));
  auto want = to_tensor(load_npy(golden("val1000_first100_logits.npy").string())).narrow(0, 0, 4);
  auto got = ex.run(input);
  float diff = (got - want).abs().max().item<float>();
  std::printf("%s: logits from golden input, max abs diff %.3g\n", which.c_str(), diff);
  EXPECT_LE(diff, 1e-3f);
}
}  // namespace

TEST(Golden, LogitsFromGoldenInputSafetensors) { check_logits_from_golden_input("safetensors"); }
TEST(Golden, LogitsFromGoldenInputOnnx) { check_logits_from_golden_input("onnx"); }

TEST(Golden, OnnxEqualsSafetensors) {
  at::set_num_threads(2);
  Graph a = load_model(front_end_path("safetensors"));
  Graph b = load_model(front_end_path("onnx"));
  at::InferenceMode guard;
  auto input = to_tensor(load_npy(golden("val1000_first4_input.npy").string()));
  auto noise = at::randn({4, 3, 224, 224}, at::TensorOptions().dtype(at::kFloat));
  for (const auto& x : {input, noise}) {
    float diff = (Executor(a).run(x) - Executor(b).run(x)).abs().max().item<float>();
    std::printf("ONNX vs safetensors logits: max abs diff %.3g\n", diff);
    EXPECT_LE(diff, 1e-4f);
  }
}

// The first 100 val1000 images decoded from the JPEGs, end to end.
TEST(Golden, First100LogitsFromJpegs) {
  at::set_num_threads(2);
  auto want = to_tensor(load_npy(golden("val1000_first100_logits.npy").string()));
  for (const std::string which : {"safetensors", "onnx"}) {
    Graph g = load_model(front_end_path(which));
    EvalOptions opt;
    opt.limit = 100;
    opt.progress = false;
    opt.keep_logits = true;
    EvalResult r = evaluate(g, open_dataset(imagenet("val1000").string()), opt);
    ASSERT_EQ(r.images, 100u);
    auto got = at::from_blob(r.logits.data(), {100, 1000}, at::kFloat);
    float diff = (got - want).abs().max().item<float>();
    int64_t same_top1 = (got.argmax(1) == want.argmax(1)).sum().item<int64_t>();
    std::printf("%s: first 100 images, logits max abs diff %.3g, same top-1 %lld/100\n", which.c_str(), diff,
                static_cast<long long>(same_top1));
    EXPECT_LE(diff, 0.05f);
    EXPECT_GE(same_top1, 99);
  }
}
