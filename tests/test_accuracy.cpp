// Acceptance: FP32 top-1 on the shared image sets through both front ends equals the reference pipeline's
// (golden/fp32_accuracy.json: val1000 80.9, calib1000 79.6) within 0.2 points.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_util.h"
#include "vitq/eval/evaluate.h"
#include "vitq/models/model_loader.h"

using namespace vitq;
using namespace vitq::test;

class Accuracy : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(Accuracy, Top1MatchesReference) {
  const auto& [format, set] = GetParam();
  at::set_num_threads(2);
  auto reference = nlohmann::json::parse(read_file(golden("fp32_accuracy.json")));
  Graph g = load_model(format == "onnx" ? (model_dir() / "model.onnx").string() : model_dir().string());
  EvalOptions opt;
  opt.progress = false;
  EvalResult r = evaluate(g, open_dataset(imagenet(set).string()), opt);
  const double want = reference[set]["top1"].get<double>();
  std::printf("%s on %s: top-1 %.2f%% top-5 %.2f%% (reference %.1f%%), %zu images, %zu unreadable\n", format.c_str(),
              set.c_str(), r.top1_pct(), r.top5_pct(), want, r.images, r.failed);
  EXPECT_EQ(r.images, reference[set]["images"].get<size_t>());
  EXPECT_EQ(r.failed, 0u);
  EXPECT_NEAR(r.top1_pct(), want, 0.2);
  EXPECT_NEAR(r.top5_pct(), reference[set]["top5"].get<double>(), 0.2);
}

INSTANTIATE_TEST_SUITE_P(FP32, Accuracy,
                         ::testing::Combine(::testing::Values("safetensors", "onnx"),
                                            ::testing::Values("val1000", "calib1000")),
                         [](const auto& info) { return std::get<0>(info.param) + "_" + std::get<1>(info.param); });
