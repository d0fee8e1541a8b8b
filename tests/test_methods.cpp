// EasyQuant, PTQ4ViT and FQ-ViT on the shared DeiT-Tiny with short searches: valid plans under both
// conventions, the quantizers each paper places, determinism, integer ops that run, and plans with broken
// non-uniform parameters rejected on load.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "test_util.h"
#include "vitq/data/dataset.h"
#include "vitq/graph/executor.h"
#include "vitq/methods/method.h"
#include "vitq/models/model_loader.h"
#include "vitq/quant/calibration.h"
#include "vitq/quant/fake_quant.h"
#include "vitq/util/error.h"

using namespace vitq;
using namespace vitq::test;

namespace {
const Graph& model() {
  static Graph g = load_model(model_dir().string());
  return g;
}
const at::Tensor& images() {
  static at::Tensor t = load_calibration(model(), open_dataset(imagenet("calib1000").string()), 4, 0, false);
  return t;
}
MethodOptions quick(int bits, const std::string& convention = "paper") {
  MethodOptions o;
  o.progress = false;
  o.placement.wbits = o.placement.abits = bits;
  o.search_steps = 6;
  o.search_images = 2;
  o.rounds = 1;
  o.convention = convention;
  return o;
}
const QuantPlan& plan_of(const std::string& method, int bits, const std::string& convention = "paper") {
  static std::map<std::string, QuantPlan> cache;
  const std::string key = method + std::to_string(bits) + convention;
  if (!cache.count(key)) cache[key] = run_method(model(), images(), method, quick(bits, convention));
  return cache[key];
}
int count_kind(const QuantPlan& p, QuantKind k) {
  int n = 0;
  for (const auto& q : p.points) n += q.spec.kind == k;
  return n;
}
// Top-1 agreement of the quantized model with FP on the 4 calibration images.
double agreement(const QuantPlan& plan) {
  at::InferenceMode guard;
  auto fp = Executor(model()).run(images()).argmax(-1);
  auto q = QuantizedModel(model(), plan).run(images());
  EXPECT_TRUE(at::isfinite(q).all().item<bool>());
  return (q.argmax(-1) == fp).to(at::kDouble).mean().item<double>();
}
// The message of the Error f throws ("" when it does not throw).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
std::set<std::pair<std::string, int>> edges(const std::vector<QuantPoint>& points) {
  std::set<std::pair<std::string, int>> s;
  for (const auto& p : points) s.insert({p.node, p.slot});
  return s;
}
}  // namespace

TEST(EasyQuant, PaperConventionAndSearch) {
  const QuantPlan& p = plan_of("easyquant", 8);
  for (const auto& q : p.points) {
    EXPECT_TRUE(q.spec.symmetric) << q.node;
    if (q.weight) EXPECT_EQ(q.spec.granularity, Granularity::PerChannel);
  }
  // the softmax output is non-negative: unsigned grid
  const QuantPoint* av = p.find("blocks.0.attn.matmul_av", 0);
  ASSERT_NE(av, nullptr);
  EXPECT_FALSE(av->spec.is_signed);
  EXPECT_GE(agreement(p), 0.75);
}

TEST(Ptq4vit, TwinUniformAndPerHeadWhereThePaperPutsThem) {
  const QuantPlan& p = plan_of("ptq4vit", 6);
  EXPECT_EQ(count_kind(p, QuantKind::TwinUniform), 24);  // 12 post-softmax + 12 post-GELU
  const QuantPoint* soft = p.find("blocks.3.attn.matmul_av", 0);
  const QuantPoint* gelu = p.find("blocks.3.mlp.fc2", 0);
  ASSERT_TRUE(soft && gelu);
  EXPECT_EQ(soft->spec.kind, QuantKind::TwinUniform);
  EXPECT_FALSE(soft->spec.is_signed);
  EXPECT_EQ(gelu->spec.kind, QuantKind::TwinUniform);
  EXPECT_TRUE(gelu->spec.is_signed);
  EXPECT_EQ(p.find("blocks.3.attn.matmul_qk", 0)->spec.granularity, Granularity::PerHead);
  EXPECT_EQ(p.find("blocks.3.attn.matmul_qk", 0)->params.scale.numel(), 3);  // DeiT-Tiny: 3 heads
  // qkv weight: three steps (q, k, v rows); other weights one; the patch embedding per channel
  auto qkv = p.find("blocks.3.attn.qkv", 1)->params.scale.reshape({3, -1});
  EXPECT_TRUE(at::equal(qkv, qkv.select(1, 0).unsqueeze(1).expand_as(qkv)));
  EXPECT_EQ(p.find("blocks.3.mlp.fc1", 1)->params.scale.numel(), 1);
  EXPECT_EQ(p.find("patch_embed.proj", 1)->params.scale.numel(), 192);
  EXPECT_GE(agreement(p), 0.75);
}

TEST(Ptq4vit, PostSoftmaxStepIsOneOfTheCandidates) {
  // The searched twin-uniform post-softmax step is one of the 20 candidates 2^-i·Δ2.
  const QuantPlan& p = plan_of("ptq4vit", 6);
  const QuantPoint* soft = p.find("blocks.0.attn.matmul_av", 0);
  auto ratio = std::log2(soft->params.scale2.item<double>() / soft->params.scale.item<double>());
  EXPECT_NEAR(ratio, std::round(ratio), 1e-6);
  EXPECT_GE(ratio, 0);
  EXPECT_LE(ratio, 19);
}

TEST(Fqvit, FullyQuantizedWithIntegerOps) {
  const QuantPlan& p = plan_of("fqvit", 8);
  EXPECT_EQ(count_kind(p, QuantKind::PowerOfTwoFactor), 25 + 24);  // 25 LayerNorm inputs + the residual adds' stream
  EXPECT_EQ(count_kind(p, QuantKind::Log2), 12);
  int ln = 0, sm = 0;
  for (const auto& op : p.int_ops) (op.kind == "layernorm" ? ln : sm)++;
  EXPECT_EQ(ln, 25);
  EXPECT_EQ(sm, 12);
  // the residual add reads the stream with the LayerNorm's quantizer
  const QuantPoint* add = p.find("blocks.2.add_attn", 0);
  const QuantPoint* norm = p.find("blocks.2.norm1", 0);
  ASSERT_TRUE(add && norm);
  EXPECT_TRUE(at::equal(add->params.scale, norm->params.scale));
  EXPECT_GE(agreement(p), 0.75);
  // JSON round trip keeps the integer ops and the kinds
  TempDir dir;
  const std::string path = (dir / "fq.json").string();
  save_plan(p, path);
  QuantPlan back = load_plan(path, model());
  EXPECT_EQ(plan_to_json(back).dump(), plan_to_json(p).dump());
}

TEST(Conventions, CommonSharesTheEdgesOfTheDefaultPlacement) {
  MethodOptions o = quick(6, "common");
  const auto expected = edges(default_placement(model(), o.placement));
  for (const std::string m : {"easyquant", "ptq4vit", "fqvit"}) {
    const QuantPlan& p = plan_of(m, 6, "common");
    EXPECT_EQ(edges(p.points), expected) << m;
    EXPECT_TRUE(p.int_ops.empty()) << m;
    EXPECT_EQ(p.settings.at("convention"), "common");
  }
  EXPECT_NE(edges(plan_of("fqvit", 6).points), expected);  // paper: fully quantized
}

TEST(Methods, NewMethodsAreDeterministic) {
  for (const std::string m : {"easyquant", "ptq4vit", "fqvit"}) {
    auto a = plan_to_json(run_method(model(), images(), m, quick(4))).dump();
    EXPECT_EQ(a, plan_to_json(plan_of(m, 4)).dump()) << m;
  }
  MethodOptions o = quick(8);
  o.convention = "mine";
  EXPECT_THROW(run_method(model(), images(), "fqvit", o), Error);
  o = quick(8);
  o.attn_bits = 6;
  EXPECT_THROW(run_method(model(), images(), "fqvit", o), Error);
}

TEST(Plan, BrokenNonUniformParametersAreRejected) {
  TempDir dir;
  auto j = plan_to_json(plan_of("ptq4vit", 6));
  auto edit_and_load = [&](const std::function<void(nlohmann::json&)>& edit) {
    auto copy = j;
    edit(copy);
    const std::string path = (dir / "p.json").string();
    std::ofstream(path) << copy.dump();
    return error_of([&] { load_plan(path, model()); });
  };
  auto twin_index = [&](const nlohmann::json& plan) {
    for (size_t i = 0; i < plan["points"].size(); ++i)
      if (plan["points"][i]["spec"]["kind"] == "twin_uniform") return i;
    return size_t{0};
  };
  EXPECT_NE(edit_and_load([&](nlohmann::json& c) { c["points"][twin_index(c)].erase("scale2"); }).find("second step"),
            std::string::npos);
  EXPECT_NE(edit_and_load([&](nlohmann::json& c) { c["points"][twin_index(c)]["scale2"]["data"][0] = 0.3; })
                .find("power of two"),
            std::string::npos);
  j = plan_to_json(plan_of("fqvit", 8));
  EXPECT_NE(edit_and_load([&](nlohmann::json& c) {
              for (auto& p : c["points"])
                if (p["spec"]["kind"] == "ptf") {
                  p["scale"]["data"][0] = p["scale"]["data"][0].get<double>() * 3;
                  break;
                }
            }).find("power-of-two"),
            std::string::npos);
  EXPECT_NE(edit_and_load([&](nlohmann::json& c) { c["integer_ops"][0]["node"] = "blocks.0.attn.qkv"; }).find("integer"),
            std::string::npos);
  EXPECT_NE(edit_and_load([&](nlohmann::json& c) { c["points"][0]["spec"]["kind"] = "cubic"; }).find("kind"),
            std::string::npos);
  EXPECT_NE(edit_and_load([&](nlohmann::json& c) { c["integer_ops"].push_back(c["integer_ops"][0]); }).find("twice"),
            std::string::npos);
  // a version-1 plan (uniform quantizers, no kinds, no integer ops) still loads
  j = plan_to_json(run_method(model(), images(), "minmax", quick(8)));
  EXPECT_EQ(edit_and_load([&](nlohmann::json& c) {
              c["version"] = 1;
              c.erase("integer_ops");
              for (auto& p : c["points"]) p["spec"].erase("kind");
            }),
            "");
}
