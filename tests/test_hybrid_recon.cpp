// qhyvit and the reconstruction engine on every shared hybrid / Swin reference model (random weights: functional
// checks only, never an accuracy): the full pipeline runs and gives a valid plan; no zero point leaves the
// integer grid; reconstructing each bridge block jointly lowers the bridge block's output error below
// reconstructing its layers one by one. And the CLI's reconstruction options fail early on bad input.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "test_util.h"
#include "vitq/data/dataset.h"
#include "vitq/deploy/int8_runtime.h"
#include "vitq/methods/method.h"
#include "vitq/models/model_loader.h"
#include "vitq/quant/calibration.h"
#include "vitq/quant/fake_quant.h"
#include "vitq/recon/recon.h"

using namespace vitq;
using namespace vitq::test;

namespace {

const char* kModels[] = {"mobilevit_xxs", "mobilevitv2_050", "efficientformer_l1-w24", "efficientformerv2_s0",
                         "swin_tiny_patch4_window7_224-w32"};

struct Loaded {
  Graph graph;
  at::Tensor calib;
};

const Loaded& loaded(const std::string& name) {
  static std::map<std::string, Loaded> cache;
  if (!cache.count(name)) {
    Loaded l{load_model((shared_dir() / "models" / name).string()), {}};
    l.calib = load_calibration(l.graph, open_dataset(imagenet("calib1000").string()), 2, 0, false);
    cache.emplace(name, std::move(l));
  }
  return cache.at(name);
}

MethodOptions quick(int bits, const std::string& reconstruct) {
  MethodOptions o;
  o.progress = false;
  o.placement.wbits = o.placement.abits = bits;
  o.convention = "common";
  o.search_steps = 4;
  o.search_images = 1;
  o.rounds = 1;
  o.reconstruct = reconstruct;
  o.recon.iters = 40;
  o.recon.batch = 2;
  o.recon.loss = "mse";
  o.recon.lr_round = 5e-2;
  o.recon.lr_scale = 1e-2;
  return o;
}

void expect_zero_points_on_grid(const QuantPlan& plan) {
  for (const auto& p : plan.points) {
    const auto& z = p.params.zero_point;
    ASSERT_TRUE(z.defined()) << p.node;
    EXPECT_GE(z.min().item<double>(), static_cast<double>(p.spec.qmin())) << p.node << " slot " << p.slot;
    EXPECT_LE(z.max().item<double>(), static_cast<double>(p.spec.qmax())) << p.node << " slot " << p.slot;
    EXPECT_TRUE(at::equal(z, at::round(z))) << p.node;
  }
  for (const auto& op : plan.int_ops) {
    const auto& z = op.out_params.zero_point;
    EXPECT_GE(z.min().item<double>(), static_cast<double>(op.out_spec.qmin())) << op.node;
    EXPECT_LE(z.max().item<double>(), static_cast<double>(op.out_spec.qmax())) << op.node;
  }
}

class HybridRecon : public ::testing::TestWithParam<const char*> {};

}  // namespace

// qhyvit end to end (search with per-layer choices, bridge blocks joint, the rest block by block) at W4A4: a
// valid plan that reloads and runs, learned codes, every zero point on the grid.
TEST_P(HybridRecon, QhyvitPipelineRuns) {
  at::set_num_threads(2);
  const Loaded& l = loaded(GetParam());
  QuantPlan plan = run_method(l.graph, l.calib, "qhyvit", quick(4, "block"));
  ASSERT_FALSE(plan.points.empty());
  expect_zero_points_on_grid(plan);
  ASSERT_TRUE(plan.settings.contains("reconstruction"));
  ASSERT_TRUE(plan.settings.contains("choices"));
  size_t two_input = 0;
  for (const auto& n : l.graph.nodes) two_input += plan.find(n.name, 0) && plan.find(n.name, 1);
  EXPECT_EQ(plan.settings["choices"].size(), two_input);
  int codes = 0;
  for (const auto& p : plan.points) codes += p.codes.defined();
  EXPECT_GT(codes, 0);
  const auto& blocks = plan.settings["reconstruction"]["blocks"];
  EXPECT_GT(blocks.size(), 0u);
  bool bridge_seen = false;
  for (const auto& b : blocks) {
    EXPECT_LE(b["loss_end"].get<double>(), b["loss_start"].get<double>()) << b["block"];
    bridge_seen = bridge_seen || b["block"].get<std::string>().rfind("bridge ", 0) == 0;
  }
  EXPECT_EQ(bridge_seen, !l.graph.bridges.empty());
  TempDir tmp;
  save_plan(plan, (tmp / "plan.json").string());
  QuantPlan back = load_plan((tmp / "plan.json").string(), l.graph);
  at::InferenceMode guard;
  auto a = QuantizedModel(l.graph, plan).run(l.calib), b = QuantizedModel(l.graph, back).run(l.calib);
  ASSERT_TRUE(at::isfinite(a).all().item<bool>());
  EXPECT_LE((a - b).abs().max().item<float>(), 1e-5f);
}

// Q-HyViT's claim on every model with bridge blocks: after the same search, reconstructing each bridge block
// jointly leaves a smaller error at the bridge blocks' outputs than reconstructing their layers one by one
// (same engine, same steps, same images), and no larger than the search alone.
TEST_P(HybridRecon, JointBridgeReconstructionBeatsLayerByLayer) {
  at::set_num_threads(2);
  const Loaded& l = loaded(GetParam());
  if (l.graph.bridges.empty()) GTEST_SKIP() << GetParam() << " has no bridge blocks";
  MethodOptions o = quick(4, "none");
  const QuantPlan searched = run_method(l.graph, l.calib, "qhyvit", o);
  expect_zero_points_on_grid(searched);
  recon::ReconOptions ro = o.recon;
  ro.progress = false;
  ro.mode = "layer";
  QuantPlan layerwise = searched, joint = searched;
  recon::reconstruct(l.graph, l.calib, layerwise, recon::plan_blocks(l.graph, layerwise, "layer"), ro);
  recon::reconstruct(l.graph, l.calib, joint, recon::plan_blocks(l.graph, joint, "layer", l.graph.bridges), ro);
  expect_zero_points_on_grid(joint);
  double e_search = 0, e_layer = 0, e_joint = 0;
  for (const auto& br : l.graph.bridges) {
    auto b = recon::bridge_block(l.graph, br);
    e_search += recon::block_output_mse(l.graph, l.calib, searched, b);
    e_layer += recon::block_output_mse(l.graph, l.calib, layerwise, b);
    e_joint += recon::block_output_mse(l.graph, l.calib, joint, b);
  }
  RecordProperty("bridge_mse_search", std::to_string(e_search));
  RecordProperty("bridge_mse_layerwise", std::to_string(e_layer));
  RecordProperty("bridge_mse_joint", std::to_string(e_joint));
  EXPECT_LT(e_joint, e_layer) << "search " << e_search << ", layer by layer " << e_layer << ", joint " << e_joint;
  EXPECT_LE(e_joint, e_search);
}

INSTANTIATE_TEST_SUITE_P(Shared, HybridRecon, ::testing::ValuesIn(kModels), [](const auto& info) {
  std::string n = info.param;
  for (auto& c : n)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return n;
});

// Reconstruction options and a start plan are checked before any work: one-line errors, nonzero exit.
TEST(ReconCli, BadInputFailsEarly) {
  TempDir tmp;
  const std::string deit = model_dir().string();
  const std::string base = deit + " --calib " + imagenet("calib1000").string() + " --calib-size 2 --quiet --out " + (tmp / "p.json").string();
  struct Case {
    std::string args, expect;
  };
  std::vector<Case> cases = {
      {"--method ptq4vit+recon --recon-iters 0", "--recon-iters"},
      {"--method minmax --reconstruct blocks", "--reconstruct"},
      {"--method minmax+recon --qdrop 1.5", "--qdrop"},
      {"--method minmax+recon --recon-loss l1", "--recon-loss"},
      {"--method minmax+recon --recon-batch 0", "--recon-batch"},
      {"--method minmax+recon --device tpu", "--device"},
      {"--start-plan " + (tmp / "none.json").string(), "--reconstruct"},
      {"--start-plan " + (tmp / "none.json").string() + " --reconstruct block", "none.json"},
      {"--method minmax+rekon", "rekon"},
      {"--method minmax+recon --recon-images 1001", "1001 asked"},
      {"--method minmax+recon --recon-augment 65", "--recon-augment"},
      {"--method minmax+recon --recon-augment -1", "--recon-augment"},
  };
  if (!at::hasCUDA()) cases.push_back({"--method minmax+recon --device cuda", "CUDA"});
  for (const auto& c : cases) {
    auto r = run_vitq("quantize " + base + " " + c.args);
    EXPECT_NE(r.code, 0) << c.args;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << c.args << ":\n" << r.output;
    EXPECT_LE(std::count(r.output.begin(), r.output.end(), '\n'), 2) << c.args << ":\n" << r.output;
    EXPECT_FALSE(fs::exists(tmp / "p.json")) << c.args;
  }
  // more reconstruction images than the synthetic calibration images: refused before synthesising any
  auto r = run_vitq("quantize " + deit + " --calib synthetic:2 --quiet --method minmax+recon --recon-images 4 --out " + (tmp / "p.json").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--recon-images 4 is more than the 2 synthetic"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(tmp / "p.json"));
}

// --recon-images above --calib-size: the method calibrates on the --calib-size images and the reconstruction
// optimises on more of the same seeded draw, the calibration images first. One command gives exactly what two
// give: calibrating on 2 images, then reconstructing that plan (--start-plan) on the 4 that --calib-size 4 draws.
TEST(ReconCli, ReconstructsOnMoreImagesThanItCalibratesOn) {
  TempDir tmp;
  const std::string deit = model_dir().string(), calib = " --calib " + imagenet("calib1000").string() + " --seed 3 --threads 1 --quiet";
  const std::string recon = " --recon-iters 2 --recon-batch 2";
  auto r = run_vitq("quantize " + deit + calib + " --method minmax+recon --calib-size 2 --recon-images 4" + recon + " --out " +
                    (tmp / "one.json").string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("the reconstruction's 4"), std::string::npos) << r.output;
  r = run_vitq("quantize " + deit + calib + " --method minmax --calib-size 2 --out " + (tmp / "start.json").string());
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_vitq("quantize " + deit + calib + " --calib-size 4 --start-plan " + (tmp / "start.json").string() + " --reconstruct block" +
               recon + " --out " + (tmp / "two.json").string());
  ASSERT_EQ(r.code, 0) << r.output;
  const Graph g = load_model(deit);
  const QuantPlan one = load_plan((tmp / "one.json").string(), g), two = load_plan((tmp / "two.json").string(), g);
  EXPECT_EQ(one.settings["calib_images"], 2);
  EXPECT_EQ(one.settings["reconstruction"]["images"], 4);
  EXPECT_EQ(two.settings["reconstruction"]["images"], 4);
  ASSERT_EQ(one.points.size(), two.points.size());
  int learned = 0;
  for (size_t k = 0; k < one.points.size(); ++k) {
    const auto &a = one.points[k], &b = two.points[k];
    ASSERT_EQ(a.node, b.node);
    ASSERT_EQ(a.codes.defined(), b.codes.defined()) << a.node;
    if (a.codes.defined()) {
      ++learned;
      EXPECT_TRUE(at::equal(a.codes, b.codes)) << a.node << " slot " << a.slot;
    }
    EXPECT_TRUE(at::allclose(a.params.scale, b.params.scale, 0, 0)) << a.node << " slot " << a.slot;
  }
  EXPECT_GT(learned, 40);  // every weight's rounding was learned
  // fewer reconstruction images than calibration images: the first of them
  r = run_vitq("quantize " + deit + calib + " --method minmax+recon --calib-size 4 --recon-images 2" + recon + " --out " +
               (tmp / "fewer.json").string());
  ASSERT_EQ(r.code, 0) << r.output;
  const QuantPlan fewer = load_plan((tmp / "fewer.json").string(), g);
  EXPECT_EQ(fewer.settings["calib_images"], 4);
  EXPECT_EQ(fewer.settings["reconstruction"]["images"], 2);
  // nothing reconstructs: the option is ignored, said so, and no more images are loaded
  r = run_vitq("quantize " + deit + calib + " --method minmax --calib-size 2 --recon-images 4 --out " + (tmp / "none.json").string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("--recon-images 4: nothing here reconstructs; ignored"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("the reconstruction's"), std::string::npos) << r.output;
  // token-wise steps are the reconstruction's: said so when nothing reconstructs; asked for, the plan records them
  r = run_vitq("quantize " + deit + calib + " --method minmax --calib-size 2 --recon-token-scales --out " + (tmp / "none2.json").string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("--recon-token-scales: nothing here reconstructs; ignored"), std::string::npos) << r.output;
  r = run_vitq("quantize " + deit + calib + " --method minmax+recon --calib-size 2 --recon-token-scales" + recon + " --out " +
               (tmp / "tokens.json").string());
  ASSERT_EQ(r.code, 0) << r.output;
  const QuantPlan tokens = load_plan((tmp / "tokens.json").string(), g);
  EXPECT_EQ(tokens.settings["reconstruction"]["token_scales"], 48);  // qkv, proj, fc1 and fc2 inputs of 12 blocks
  EXPECT_EQ(tokens.find("blocks.0.mlp.fc2", 0)->params.scale.sizes().vec(), (std::vector<int64_t>{1, 197, 1}));
  if (int8_runtime_available()) {  // the integer runtime runs every layer of that plan, the 48 per-token inputs included
    r = run_vitq("eval " + deit + " --plan " + (tmp / "tokens.json").string() + " --data " + imagenet("val1000").string() +
                 " --limit 4 --runtime int8 --quiet");
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("adalog, 48 per-token inputs); 0 quantized layers simulated"), std::string::npos) << r.output;
  }
}

// A plan made for another model is refused before calibration; a plan of this model is reconstructed from the
// command line (--start-plan) into a valid plan that records what was done.
TEST(ReconCli, StartPlanOfAnotherModelIsRefused) {
  TempDir tmp;
  const Loaded& l = loaded("mobilevit_xxs");
  MethodOptions o = quick(8, "none");
  save_plan(run_method(l.graph, l.calib, "minmax", o), (tmp / "mvit.json").string());
  auto r = run_vitq("quantize " + model_dir().string() + " --calib " + imagenet("calib1000").string() +
                    " --calib-size 2 --quiet --start-plan " + (tmp / "mvit.json").string() + " --reconstruct block --out " +
                    (tmp / "out.json").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("plan is for model"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(tmp / "out.json"));
  r = run_vitq("quantize " + (shared_dir() / "models" / "mobilevit_xxs").string() + " --calib " + imagenet("calib1000").string() +
               " --calib-size 2 --quiet --start-plan " + (tmp / "mvit.json").string() +
               " --reconstruct layer --recon-iters 3 --recon-batch 2 --out " + (tmp / "out.json").string());
  ASSERT_EQ(r.code, 0) << r.output;
  QuantPlan back = load_plan((tmp / "out.json").string(), l.graph);
  EXPECT_EQ(back.method, "minmax+recon");
  EXPECT_EQ(back.settings["reconstruction"]["mode"], "layer");
  EXPECT_EQ(back.settings["reconstruction"]["iters"], 3);
}
