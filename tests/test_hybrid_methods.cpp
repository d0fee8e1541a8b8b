// Every PTQ method on every shared hybrid / Swin reference model (random weights: this checks that the methods
// run and produce valid, reloadable plans on these graphs — never an accuracy). Short searches, 2-4 images.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "test_util.h"
#include "vitq/data/dataset.h"
#include "vitq/graph/executor.h"
#include "vitq/methods/method.h"
#include "vitq/models/model_loader.h"
#include "vitq/quant/calibration.h"
#include "vitq/quant/fake_quant.h"

using namespace vitq;
using namespace vitq::test;

namespace {

const char* kModels[] = {"mobilevit_xxs", "mobilevitv2_050", "efficientformer_l1-w24", "efficientformerv2_s0",
                         "swin_tiny_patch4_window7_224-w32"};
const char* kMethods[] = {"minmax", "percentile", "omse", "liu2021", "easyquant", "ptq4vit", "fqvit"};

fs::path model_path(const std::string& name) { return shared_dir() / "models" / name; }

struct Loaded {
  Graph graph;
  at::Tensor calib;
};

const Loaded& loaded(const std::string& name) {
  static std::map<std::string, Loaded> cache;
  if (!cache.count(name)) {
    Loaded l{load_model(model_path(name).string()), {}};
    l.calib = load_calibration(l.graph, open_dataset(imagenet("calib1000").string()), 2, 0, false);
    cache.emplace(name, std::move(l));
  }
  return cache.at(name);
}

MethodOptions quick(int bits) {
  MethodOptions o;
  o.progress = false;
  o.placement.wbits = o.placement.abits = bits;
  o.search_steps = 3;
  o.search_images = 1;
  o.rounds = 1;
  return o;
}

std::string param_name(const ::testing::TestParamInfo<std::tuple<const char*, const char*>>& info) {
  std::string n = std::string(std::get<0>(info.param)) + "_" + std::get<1>(info.param);
  for (auto& c : n)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return n;
}

class HybridMethods : public ::testing::TestWithParam<std::tuple<const char*, const char*>> {};

}  // namespace

// The method's plan is valid for the graph, survives a save / load round trip unchanged in effect, and the
// fake-quantized model gives finite logits that still depend on the image.
TEST_P(HybridMethods, PlanRunsAndReloads) {
  at::set_num_threads(2);
  const auto [model, method] = GetParam();
  const Loaded& l = loaded(model);
  QuantPlan plan = run_method(l.graph, l.calib, method, quick(8));
  ASSERT_FALSE(plan.points.empty());
  TempDir tmp;
  save_plan(plan, (tmp / "plan.json").string());
  QuantPlan back = load_plan((tmp / "plan.json").string(), l.graph);
  at::InferenceMode guard;
  auto a = QuantizedModel(l.graph, plan).run(l.calib);
  auto b = QuantizedModel(l.graph, back).run(l.calib);
  ASSERT_TRUE(at::isfinite(a).all().item<bool>());
  EXPECT_LE((a - b).abs().max().item<float>(), 1e-5f);
  EXPECT_GT((a[0] - a[1]).abs().max().item<float>(), 0.0f);
  // every quantizable layer has its weight / inputs quantized
  std::set<std::string> covered;
  for (const auto& p : plan.points) covered.insert(p.node);
  for (const auto& n : l.graph.nodes)
    if (is_quantizable(l.graph, n)) EXPECT_TRUE(covered.count(n.name)) << n.name;
  // For information only: random weights make these networks chaotic (errors grow layer after layer), so
  // closeness to FP says nothing here; accuracy is measured on the real DeiT-Tiny.
  auto fp = Executor(l.graph).run(l.calib);
  std::printf("%s %s W8A8: %zu points, relative logit error %.4f\n", model, method, plan.points.size(),
              ((a - fp).norm() / fp.norm()).item<double>());
}

INSTANTIATE_TEST_SUITE_P(Shared, HybridMethods,
                         ::testing::Combine(::testing::ValuesIn(kModels), ::testing::ValuesIn(kMethods)), param_name);

// The attention matmuls are found in every family: q·kᵀ and attn·v pairs with their canonical names, also where
// EfficientFormerV2 mixes the heads with a conv between the softmax and attn·v (its input is then not
// post-softmax, so no method may treat it as a [0, 1] probability).
TEST(HybridRoles, AttentionMatmulsPaired) {
  for (const char* model : kModels) {
    const Graph& g = loaded(model).graph;
    int qk = 0, av = 0;
    for (const auto& n : g.nodes) {
      if (n.op != OpKind::MatMul || !is_quantizable(g, n)) continue;
      const bool is_av = n.roles & kAttnV;
      EXPECT_NE(n.roles & (kAttnQK | kAttnV), 0u) << n.name;
      EXPECT_NE(n.name.find(is_av ? "matmul_av" : "matmul_qk"), std::string::npos) << n.name;
      EXPECT_EQ(n.name.find("matmul_qk_"), std::string::npos) << "renamed duplicate: " << n.name;
      (is_av ? av : qk) += 1;
    }
    EXPECT_EQ(qk, av) << model;
    std::printf("%s: %d q·kᵀ / attn·v pairs\n", model, qk);
  }
  const Graph& ef2 = loaded("efficientformerv2_s0").graph;
  const Node* av = ef2.find_node("stages.2.blocks.4.token_mixer.matmul_av");
  ASSERT_NE(av, nullptr);
  EXPECT_FALSE(ef2.values[static_cast<size_t>(av->inputs[0])].roles & kPostSoftmax);
}

// The user's path through the CLI on each family: quantize -> eval --plan --report.
TEST(HybridCli, QuantizeEvalReport) {
  for (const char* model : kModels) {
    TempDir tmp;
    auto q = run_vitq("quantize " + quoted(model_path(model)) + " --method minmax --wbits 8 --abits 8 --calib " +
                      quoted(imagenet("calib1000")) + " --calib-size 2 --out " + quoted(tmp / "plan.json"));
    ASSERT_EQ(q.code, 0) << q.output;
    auto e = run_vitq("eval " + quoted(model_path(model)) + " --plan " + quoted(tmp / "plan.json") + " --data " +
                      quoted(imagenet("val1000")) + " --limit 4 --batch 4 --quiet --report-images 2 --report " +
                      quoted(tmp / "layers.json"));
    ASSERT_EQ(e.code, 0) << e.output;
    EXPECT_NE(e.output.find("agreement"), std::string::npos) << e.output;
    EXPECT_TRUE(fs::exists(tmp / "layers.json")) << model;
  }
}

TEST(HybridCli, CompareRuns) {
  TempDir tmp;
  auto r = run_vitq("compare " + quoted(model_path("mobilevit_xxs")) + " --methods minmax,ptq4vit --bits w8a8 --calib " +
                    quoted(imagenet("calib1000")) + " --calib-size 2 --search-images 1 --search-steps 3 --rounds 1 --data " +
                    quoted(imagenet("val1000")) + " --limit 4 --out " + quoted(tmp / "cmp"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(fs::exists(tmp / "cmp.md"));
  EXPECT_TRUE(fs::exists(tmp / "cmp.json"));
}
