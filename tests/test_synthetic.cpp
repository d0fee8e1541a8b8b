// Data-free calibration (--calib synthetic[:N]): images synthesised from the model (quant/synthetic.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_util.h"
#include "vitq/graph/executor.h"
#include "vitq/data/dataset.h"
#include "vitq/models/model_loader.h"
#include "vitq/quant/calibration.h"
#include "vitq/quant/synthetic.h"
#include "vitq/util/error.h"

using namespace vitq::test;

namespace {

vitq::Graph& deit() {
  static vitq::Graph g = vitq::load_model(model_dir().string());
  return g;
}

double mean_max_probability(const vitq::Graph& g, const at::Tensor& x) {
  at::InferenceMode guard;
  return at::softmax(vitq::Executor(g).run(x), -1).amax(-1).mean().item<double>();
}

// Correlation of horizontally adjacent pixels, over every image and channel.
double neighbour_correlation(const at::Tensor& x) {
  using namespace at::indexing;
  const at::Tensor a = x.index({Slice(), Slice(), Slice(), Slice(None, -1)}).flatten();
  const at::Tensor b = x.index({Slice(), Slice(), Slice(), Slice(1, None)}).flatten();
  return at::corrcoef(at::stack({a, b}))[0][1].item<double>();
}

}  // namespace

TEST(Synthetic, AttentionOutputsAreFound) {
  const auto layers = vitq::attention_output_layers(deit());
  ASSERT_EQ(layers.size(), 12u);
  for (size_t i = 0; i < layers.size(); ++i) EXPECT_EQ(layers[i], "blocks." + std::to_string(i) + ".attn.proj");
  // Swin's window attention and MobileViT's transformer blocks too (random-weight reference models)
  for (const char* name : {"swin_tiny_patch4_window7_224-w32", "mobilevit_xxs"}) {
    vitq::Graph g = vitq::load_model((shared_dir() / "models" / name).string());
    EXPECT_FALSE(vitq::attention_output_layers(g).empty()) << name;
  }
}

TEST(Synthetic, ParsesTheCalibArgument) {
  int64_t n = -1;
  EXPECT_TRUE(vitq::parse_synthetic_calib("synthetic", &n));
  EXPECT_EQ(n, 0);
  EXPECT_TRUE(vitq::parse_synthetic_calib("synthetic:16", &n));
  EXPECT_EQ(n, 16);
  for (const char* folder : {"synthetic_images", "./synthetic", "../shared/data/imagenet/calib1000", ""})
    EXPECT_FALSE(vitq::parse_synthetic_calib(folder, &n)) << folder;
  for (const char* bad : {"synthetic:", "synthetic:0", "synthetic:abc", "synthetic:5000", "synthetic:-3"})
    EXPECT_THROW(vitq::parse_synthetic_calib(bad, &n), vitq::Error) << bad;
}

TEST(Synthetic, ImagesAreSeededBoundedAndLearnt) {
  at::set_num_threads(2);
  vitq::SyntheticOptions o;
  o.images = 2;
  o.iters = 6;
  o.progress = false;
  const at::Tensor a = vitq::synthesize_calibration(deit(), o);
  ASSERT_EQ(a.sizes(), (at::IntArrayRef{2, 3, 224, 224}));
  EXPECT_TRUE(at::isfinite(a).all().item<bool>());
  // within the pixel range [0, 1] once the normalisation is undone
  const auto& p = deit().meta.preprocess;
  for (int c = 0; c < 3; ++c) {
    const at::Tensor pixels = a.select(1, c) * p.std[c] + p.mean[c];
    EXPECT_GE(pixels.min().item<double>(), -1e-5) << c;
    EXPECT_LE(pixels.max().item<double>(), 1 + 1e-5) << c;
  }
  EXPECT_TRUE(at::equal(a, vitq::synthesize_calibration(deit(), o)));  // deterministic
  o.seed = 1;
  EXPECT_FALSE(at::equal(a, vitq::synthesize_calibration(deit(), o)));
  // the optimisation does something: the model is surer of the synthesised images than of the starting noise
  o.seed = 0;
  o.iters = 0;
  const at::Tensor noise = vitq::synthesize_calibration(deit(), o);
  EXPECT_GT(mean_max_probability(deit(), a), mean_max_probability(deit(), noise) + 0.1);
  // the natural start's steps move its octaves, not single pixels: the images stay smooth (a white start's steps
  // are per pixel)
  EXPECT_GT(neighbour_correlation(a), 0.8);
  o.images = 0;
  EXPECT_THROW(vitq::synthesize_calibration(deit(), o), vitq::Error);
}

TEST(Synthetic, TheNaturalStartIsSmoothAndTheWhiteOneIsNot) {
  vitq::SyntheticOptions o;
  o.images = 2;
  o.iters = 0;
  o.progress = false;
  EXPECT_EQ(o.init, vitq::SyntheticInit::Natural);  // the default
  const at::Tensor natural = vitq::synthesize_calibration(deit(), o);
  o.init = vitq::SyntheticInit::White;
  const at::Tensor white = vitq::synthesize_calibration(deit(), o);
  // white noise: neighbours independent; the natural start: mostly coarse octaves, so neighbours alike
  EXPECT_LT(std::abs(neighbour_correlation(white)), 0.05);
  EXPECT_GT(neighbour_correlation(natural), 0.8);
  // both spread over the pixel range (the natural start is not a near-constant image) and within it
  const auto& p = deit().meta.preprocess;
  for (const at::Tensor* x : {&natural, &white}) {
    const at::Tensor pixels = x->select(1, 0) * p.std[0] + p.mean[0];
    EXPECT_GT(pixels.std().item<double>(), 0.1);
    EXPECT_GE(pixels.min().item<double>(), -1e-5);
    EXPECT_LE(pixels.max().item<double>(), 1 + 1e-5);
  }
  EXPECT_EQ(vitq::parse_synthetic_init("natural"), vitq::SyntheticInit::Natural);
  EXPECT_EQ(vitq::parse_synthetic_init("white"), vitq::SyntheticInit::White);
  EXPECT_STREQ(vitq::synthetic_init_name(vitq::SyntheticInit::White), "white");
  EXPECT_THROW(vitq::parse_synthetic_init("pink"), vitq::Error);
}

TEST(Synthetic, BatchNormStatisticsAreMatched) {
  at::set_num_threads(2);
  // MobileViT's convolution stages: random weights, but BatchNorm running statistics measured on the first 64
  // calib1000 images (../shared/README.md), so real images sit close to them and noise does not
  vitq::Graph g = vitq::load_model((shared_dir() / "models" / "mobilevit_xxs").string());
  const auto targets = vitq::batchnorm_targets(g);
  ASSERT_GT(targets.size(), 10u);
  for (const auto& t : targets) {
    ASSERT_EQ(t.mean.numel(), t.std.numel()) << t.node;
    EXPECT_TRUE(at::isfinite(t.std).all().item<bool>()) << t.node;
  }
  EXPECT_TRUE(vitq::batchnorm_targets(deit()).empty());
  const at::Tensor real = vitq::load_calibration(g, vitq::open_dataset(imagenet("calib1000").string()), 8, 0, false);
  const double real_gap = vitq::batchnorm_statistics_gap(g, real);
  vitq::SyntheticOptions o;
  o.images = 2;
  o.iters = 0;
  o.progress = false;
  EXPECT_EQ(o.bn_weight, 100);  // the default
  const double start_gap = vitq::batchnorm_statistics_gap(g, vitq::synthesize_calibration(g, o));
  o.iters = 8;
  const double matched_gap = vitq::batchnorm_statistics_gap(g, vitq::synthesize_calibration(g, o));
  o.bn_weight = 0;
  const double unmatched_gap = vitq::batchnorm_statistics_gap(g, vitq::synthesize_calibration(g, o));
  std::printf("BatchNorm statistics gap: real images %.4f, starting noise %.4f, after 8 steps %.4f (without the term %.4f)\n",
              real_gap, start_gap, matched_gap, unmatched_gap);
  EXPECT_LT(real_gap, start_gap);
  EXPECT_LT(matched_gap, 0.75 * start_gap);
  EXPECT_LT(matched_gap, unmatched_gap);
  // a model without BatchNorm, one image: errors
  EXPECT_THROW(vitq::batchnorm_statistics_gap(deit(), real.narrow(0, 0, 2)), vitq::Error);
  EXPECT_THROW(vitq::batchnorm_statistics_gap(g, real.narrow(0, 0, 1)), vitq::Error);
}

TEST(Synthetic, QuantizeCalibratesOnSynthesisedImages) {
  TempDir dir;
  const fs::path plan = dir / "plan.json";
  auto r = run_vitq("quantize " + quoted(model_dir()) + " --method minmax --calib synthetic:2 --synthetic-iters 2 --threads 2 --out " +
                    quoted(plan));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("synthesising 2 calibration images (12 attention blocks)"), std::string::npos) << r.output;
  const auto j = nlohmann::json::parse(read_file(plan));
  EXPECT_EQ(j["settings"]["calib"], "synthetic:2");
  EXPECT_EQ(j["settings"]["synthetic_iters"], 2);
  EXPECT_EQ(j["settings"]["synthetic_init"], "natural");
  EXPECT_EQ(j["settings"]["synthetic_bn_weight"], 100.0);
  EXPECT_EQ(j["settings"]["calib_images"], 2);
  expect_cli_error(run_vitq("quantize " + quoted(model_dir()) + " --method minmax --calib synthetic:many --out " + quoted(dir / "p2.json")),
                   "--calib synthetic:many: expected 'synthetic' or 'synthetic:N'");
  EXPECT_FALSE(fs::exists(dir / "p2.json"));
  expect_cli_error(run_vitq("quantize " + quoted(model_dir()) + " --method minmax --calib synthetic:2 --synthetic-init pink --out " +
                            quoted(dir / "p3.json")),
                   "--synthetic-init");
  EXPECT_FALSE(fs::exists(dir / "p3.json"));
  expect_cli_error(run_vitq("quantize " + quoted(model_dir()) + " --method minmax --calib synthetic:2 --synthetic-bn-weight -1 --out " +
                            quoted(dir / "p4.json")),
                   "--synthetic-bn-weight");
  EXPECT_FALSE(fs::exists(dir / "p4.json"));
}
