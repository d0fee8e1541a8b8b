// The integer runtime against vitq's fake quantization (its reference): every input kind of a Linear and of an
// activation x activation MatMul on one-layer graphs (no upstream differences: they must agree to float
// precision), fallbacks, and whole DeiT-Tiny plans.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "test_util.h"
#include "tiny_graphs.h"
#include "vitq/data/dataset.h"
#include "vitq/deploy/int8_runtime.h"
#include "vitq/graph/executor.h"
#include "vitq/methods/method.h"
#include "vitq/models/model_loader.h"
#include "vitq/quant/calibration.h"
#include "vitq/quant/fake_quant.h"
#include "vitq/util/error.h"

using namespace vitq;
using namespace vitq::test;

#define REQUIRE_INT8()                                                                         \
  do {                                                                                         \
    if (!int8_runtime_available()) GTEST_SKIP() << "skipped: built without oneDNN (libdnnl)"; \
  } while (0)

namespace {

QuantSpec spec(int bits, bool symmetric, bool is_signed, Granularity g = Granularity::PerTensor, int axis = 0,
               QuantKind kind = QuantKind::Uniform) {
  QuantSpec s;
  s.bits = bits;
  s.symmetric = symmetric;
  s.is_signed = is_signed;
  s.granularity = g;
  s.axis = axis;
  s.kind = kind;
  return s;
}

QuantPoint point(const std::string& node, int slot, bool weight, const QuantSpec& s, const at::Tensor& data) {
  QuantPoint p;
  p.node = node;
  p.slot = slot;
  p.weight = weight;
  p.spec = s;
  if (s.kind == QuantKind::TwinUniform) {
    p.params = s.is_signed ? twin_gelu_params(s.bits, 0.05) : twin_softmax_params(s.bits, 3);
  } else if (is_log_kind(s.kind)) {
    p.params = log2_params();
    p.params.scale = p.params.scale * 2.0;
  } else if (s.kind == QuantKind::AdaLog) {  // 1.5 codes per octave; signed data: shifted by GELU's 0.17
    p.params = adalog_params(1.2, 1.5, s.is_signed ? 0.17 : 0.0);
    p.spec.is_signed = p.spec.symmetric = false;
  } else {
    p.params = params_from_range(reduce_amin(data, s), reduce_amax(data, s), s);
  }
  return p;
}

QuantPlan plan_of(const Graph& g, std::vector<QuantPoint> points) {
  QuantPlan plan;
  plan.model = g.meta.name;
  plan.method = "test";
  plan.points = std::move(points);
  check_plan(plan, g, "test plan");
  return plan;
}

double compare(const Graph& g, const QuantPlan& plan, const at::Tensor& x, const std::string& label, int expect_native = 1) {
  Int8Model m(g, plan);
  EXPECT_EQ(m.stats().native_linear + m.stats().native_matmul + m.stats().native_conv, expect_native)
      << label << (m.stats().fallbacks.empty() ? "" : ": " + m.stats().fallbacks[0]);
  at::InferenceMode guard;
  auto want = QuantizedModel(g, plan).run(x);
  auto got = m.run(x);
  EXPECT_EQ(got.sizes(), want.sizes()) << label;
  const double d = ((want - got).abs().max() / want.abs().max()).item<double>();
  std::printf("%-46s max |int8 - fake-quant| / max |y| %.3g\n", label.c_str(), d);
  return d;
}

}  // namespace

TEST(Int8Runtime, LinearEveryInputKindMatchesFakeQuant) {
  REQUIRE_INT8();
  Graph g = linear_graph();
  const auto& w = g.const_tensor(g.nodes[1].inputs[1]);
  at::manual_seed(0);
  const auto x = at::randn({6, 3, 4, 4}) * 1.5, pos = at::rand({6, 3, 4, 4});
  const auto flat = [](const at::Tensor& t) { return t.reshape({t.size(0), 48}); };
  const auto wc = point("fc", 1, true, spec(8, true, true, Granularity::PerChannel, 0), w);
  const auto wt = point("fc", 1, true, spec(8, true, true), w);
  struct Case {
    std::string label;
    QuantSpec act;
    at::Tensor data;
    const QuantPoint* weight;
  };
  std::vector<Case> cases = {
      {"A8 asym int8 / W8 per-channel", spec(8, false, true), x, &wc},
      {"A8 asym uint8 / W8 per-tensor", spec(8, false, false), x, &wt},
      {"A8 sym / W8 per-channel", spec(8, true, true), x, &wc},
      {"A4 asym / W8 per-channel", spec(4, false, true), x, &wc},
      {"A8 twin uniform unsigned", spec(8, true, false, Granularity::PerTensor, 0, QuantKind::TwinUniform), pos, &wc},
      {"A6 twin uniform signed", spec(6, true, true, Granularity::PerTensor, 0, QuantKind::TwinUniform), x * 0.1, &wc},
      {"A4 log2", spec(4, true, false, Granularity::PerTensor, 0, QuantKind::Log2), pos, &wc},
      {"A3 log2 (one grid)", spec(3, true, false, Granularity::PerTensor, 0, QuantKind::Log2), pos, &wc},
      {"A4 log-sqrt2 (even and odd codes)", spec(4, true, false, Granularity::PerTensor, 0, QuantKind::LogSqrt2), pos, &wc},
  };
  for (const auto& c : cases) {
    auto plan = plan_of(g, {point("fc", 0, false, c.act, flat(c.data)), *c.weight});
    EXPECT_LE(compare(g, plan, c.data, c.label), 1e-5) << c.label;
  }
  // AdaLog: 2^(−c/τ) as two 8-bit fixed-point digits (each value within 7.7e-6 of the scale), the shift in the bias
  for (const auto& [label, act, data] :
       {std::tuple{std::string("A4 adalog shifted (post-GELU)"), spec(4, true, true, Granularity::PerTensor, 0, QuantKind::AdaLog), pos - 0.15},
        {std::string("A8 adalog"), spec(8, true, false, Granularity::PerTensor, 0, QuantKind::AdaLog), pos}}) {
    auto plan = plan_of(g, {point("fc", 0, false, act, flat(data)), wc});
    EXPECT_LE(compare(g, plan, data, label), 3e-5) << label;
  }
  // asymmetric weights run as q − zp (within int8 up to 7 bits)
  for (int bits : {4, 7}) {
    const auto wa = point("fc", 1, true, spec(bits, false, true, Granularity::PerChannel, 0), w);
    auto plan = plan_of(g, {point("fc", 0, false, spec(8, false, true), flat(x)), wa});
    EXPECT_LE(compare(g, plan, x, "W" + std::to_string(bits) + " asymmetric per-channel"), 1e-5);
  }
  // learned weight codes (floor everywhere, W4): the runtime uses the plan's codes, not its own rounding
  QuantPoint w4 = point("fc", 1, true, spec(4, true, true, Granularity::PerChannel, 0), w);
  w4.codes = at::clamp(at::floor(w / full_scale(w4, w)), -7.0, 7.0);
  auto plan = plan_of(g, {point("fc", 0, false, spec(8, false, true), flat(x)), w4});
  EXPECT_LE(compare(g, plan, x, "W4 learned codes"), 1e-5);
}

TEST(Int8Runtime, MatMulEveryInputKindMatchesFakeQuant) {
  REQUIRE_INT8();
  Graph g = matmul_graph();
  at::manual_seed(1);
  const auto x = at::randn({5, 3, 4, 4}), pos = at::rand({5, 3, 4, 4});
  const auto xt = [](const at::Tensor& t) { return t.transpose(2, 3); };
  struct Case {
    std::string label;
    QuantSpec a, b;
    at::Tensor data;
  };
  std::vector<Case> cases = {
      {"asym int8 x asym int8", spec(8, false, true), spec(8, false, true), x},
      {"asym uint8 x asym uint8 (shifted to int8)", spec(8, false, false), spec(8, false, false), x},
      {"sym x sym, 6 bits", spec(6, true, true), spec(6, true, true), x},
      {"per-head sym x per-head sym", spec(8, true, true, Granularity::PerHead, 1), spec(8, true, true, Granularity::PerHead, 1), x},
      {"per-head sym x asym", spec(8, true, true, Granularity::PerHead, 1), spec(8, false, true), x},
      {"twin unsigned x asym", spec(8, true, false, Granularity::PerTensor, 0, QuantKind::TwinUniform), spec(8, false, true), pos},
      {"log2 x asym", spec(4, true, false, Granularity::PerTensor, 0, QuantKind::Log2), spec(8, false, true), pos},
      {"log-sqrt2 x asym", spec(4, true, false, Granularity::PerTensor, 0, QuantKind::LogSqrt2), spec(8, false, true), pos},
      {"adalog x asym", spec(4, true, false, Granularity::PerTensor, 0, QuantKind::AdaLog), spec(8, false, true), pos},
  };
  for (const auto& c : cases) {
    auto plan = plan_of(g, {point("mm", 0, false, c.a, c.data), point("mm", 1, false, c.b, xt(c.data))});
    EXPECT_LE(compare(g, plan, c.data, c.label), c.a.kind == QuantKind::AdaLog ? 3e-5 : 1e-5) << c.label;
  }
  // a shifted AdaLog left operand (δ·Σ_k b would be a per-column term) is simulated, and says so
  auto shifted = plan_of(g, {point("mm", 0, false, spec(4, true, true, Granularity::PerTensor, 0, QuantKind::AdaLog), x),
                             point("mm", 1, false, spec(8, false, true), xt(x))});
  EXPECT_LE(compare(g, shifted, x, "shifted adalog x asym (simulated)", 0), 1e-6);
  EXPECT_NE(Int8Model(g, shifted).stats().fallbacks.at(0).find("shifted adalog"), std::string::npos);
}

// --recon-token-scales' inputs: one step and zero point per token ([1, N, 1] on [B, N, C]) run natively, each output
// row scaled by its step after the GEMM (then the bias and a fused GELU): as centred codes q − zp_n up to 7 bits,
// and at 8 bits asymmetric as codes q with zp_n · Σ_k w subtracted after the GEMM.
TEST(Int8Runtime, PerTokenLinearInputMatchesFakeQuant) {
  REQUIRE_INT8();
  at::manual_seed(6);
  // tokens with very different ranges and offsets, as after a LayerNorm
  const auto x = at::randn({5, 3, 4, 4}) * (0.2 + 2 * at::rand({1, 3, 4, 1})) + at::randn({1, 3, 4, 1});
  const auto tokens = x.reshape({5, 6, 8});
  for (bool gelu : {false, true}) {
    Graph g = linear_graph({6, 8}, gelu);  // 6 "tokens" of 8 channels: a Linear on [B, N, C]
    const auto& w = g.const_tensor(g.find_node("fc")->inputs[1]);
    for (const auto& [label, bits, symmetric, is_signed, wsym] :
         {std::tuple{std::string("A3 asym per-token / W3 asym per-channel"), 3, false, false, false},
          {std::string("A4 asym signed per-token / W8 sym per-channel"), 4, false, true, true},
          {std::string("A7 asym per-token / W4 asym per-channel"), 7, false, false, false},
          {std::string("A8 sym signed per-token / W8 sym per-channel"), 8, true, true, true},
          // 8 bits asymmetric: q − zp_n would span ±255, so the codes keep zp_n, subtracted after the GEMM as zp_n·Σ_k w
          {std::string("A8 asym per-token / W8 sym per-channel"), 8, false, false, true},
          {std::string("A8 asym signed per-token / W4 asym per-channel"), 8, false, true, false}}) {
      QuantPoint in = point("fc", 0, false, spec(bits, symmetric, is_signed, Granularity::PerChannel, 1), tokens);
      ASSERT_EQ(in.params.scale.sizes(), (std::vector<int64_t>{1, 6, 1})) << label;
      if (bits == 8 && !symmetric) {  // these zero points leave centred codes outside int8: the other path is taken
        const double zmin = in.params.zero_point.min().item<double>(), zmax = in.params.zero_point.max().item<double>();
        EXPECT_TRUE(in.spec.qmin() - zmax < -128 || in.spec.qmax() - zmin > 127) << label;
      }
      const auto wp = point("fc", 1, true, spec(wsym ? 8 : bits > 4 ? 4 : bits, wsym, true, Granularity::PerChannel, 0), w);
      auto plan = plan_of(g, {in, wp});
      const std::string l = label + (gelu ? " + GELU" : "");
      EXPECT_LE(compare(g, plan, x, l), 1e-5) << l;
      Int8Model m(g, plan);
      EXPECT_EQ(m.stats().token_inputs, 1) << l;
    }
  }
}

// Convolutions: padded, strided, grouped (depthwise) and dilated, with asymmetric inputs (the zero point must
// leave the padding a real zero) and per-channel weights.
TEST(Int8Runtime, ConvMatchesFakeQuant) {
  REQUIRE_INT8();
  struct Case {
    std::string label;
    int64_t out, group, k, stride, pad, dil;
    bool asym;
  };
  std::vector<Case> cases = {{"3x3 pad 1, asym input", 8, 1, 3, 1, 1, 1, true},
                             {"depthwise 3x3 stride 2, asym input", 3, 3, 3, 2, 1, 1, true},
                             {"2x2 stride 2 (patchify), sym input", 6, 1, 2, 2, 0, 1, false},
                             {"3x3 dilation 2 pad 2", 4, 1, 3, 1, 2, 2, true}};
  for (const auto& c : cases) {
    Graph g;
    g.meta.name = "tiny_conv";
    g.meta.preprocess.input_height = g.meta.preprocess.input_width = 8;
    g.input = g.add_value("input");
    at::manual_seed(5);
    int w = g.add_const("conv.weight", at::randn({c.out, 3 / c.group, c.k, c.k}) * 0.3);
    int b = g.add_const("conv.bias", at::randn({c.out}) * 0.1);
    int y = g.out(g.add_node(OpKind::Conv2d, "conv", {g.input, w, b}, 1,
                             {{"pads", std::vector<int64_t>{c.pad, c.pad, c.pad, c.pad}}, {"strides", std::vector<int64_t>{c.stride, c.stride}},
                              {"dilations", std::vector<int64_t>{c.dil, c.dil}}, {"group", c.group}}));
    g.output = g.out(g.add_node(OpKind::Flatten, "flatten", {y}, 1, {{"axis", int64_t{1}}}));
    g.validate();
    auto x = at::randn({3, 3, 8, 8}) + 0.7;  // off-centre: the asymmetric zero point is far from 0
    g.meta.num_classes = Executor(g).run(x).size(1);
    auto plan = plan_of(g, {point("conv", 0, false, spec(8, !c.asym, true), x),
                            point("conv", 1, true, spec(8, true, true, Granularity::PerChannel, 0), g.const_tensor(w))});
    EXPECT_LE(compare(g, plan, x, c.label), 1e-5) << c.label;
  }
}

// A quantizer the GEMMs cannot take is simulated, named in the stats, and the numbers stay the simulation's.
TEST(Int8Runtime, UnsupportedLayersFallBackToTheSimulation) {
  REQUIRE_INT8();
  Graph g = linear_graph();
  const auto& w = g.const_tensor(g.nodes[1].inputs[1]);
  at::manual_seed(0);
  const auto x = at::randn({4, 3, 4, 4});
  QuantSpec grouped = spec(4, true, true, Granularity::PerGroup);
  grouped.group_size = 16;
  auto plan = plan_of(g, {point("fc", 0, false, spec(8, false, true), x.reshape({4, 48})), point("fc", 1, true, grouped, w)});
  Int8Model m(g, plan);
  ASSERT_EQ(m.stats().fallbacks.size(), 1u);
  EXPECT_NE(m.stats().fallbacks[0].find("fc: per-group weight"), std::string::npos) << m.stats().fallbacks[0];
  EXPECT_LE(compare(g, plan, x, "per-group weights (simulated)", 0), 1e-6);
}

// Whole DeiT-Tiny plans: uniform (minmax), PTQ4ViT's (twin uniform, per-head), FQ-ViT's with integer LayerNorm
// and softmax (log2 codes into attn·v) — every GEMM native; agreement with the simulation, and a deviation no
// larger than the simulation's own under 1e-6 float noise (see test_export.cpp).
TEST(Int8Runtime, DeitPlansAgreeWithFakeQuant) {
  REQUIRE_INT8();
  at::set_num_threads(2);
  Graph g = load_model(model_dir().string());
  auto data = open_dataset(imagenet("val1000").string());
  data.samples.resize(16);
  at::Tensor x = load_calibration(g, data, 16, 0, false);
  at::Tensor calib = load_calibration(g, open_dataset(imagenet("calib1000").string()), 4, 0, false);
  for (std::string method :
       {"minmax", "ptq4vit", "fqvit", "repqvit", "repqvit+adalog", "repqvit+headwise+wmse+adalog", "repqvit+headwise+wmse+adalog+tokens"}) {
    MethodOptions o;
    o.progress = false;
    o.search_steps = 5;
    o.search_images = 2;
    o.rounds = 1;
    if (method == "repqvit") {  // symmetric weights (the integer GEMMs' kind); reparameterised LayerNorms, log√2 at 4 bits
      o.convention = "common";
      o.placement.wbits = o.placement.abits = 4;
    }
    if (method == "repqvit+adalog") {  // the paper's convention: asymmetric per-channel weights (run as q − zp), AdaLog inputs
      o.placement.wbits = o.placement.abits = 4;
      o.adalog = true;
    }
    const bool tokens = method.find("+tokens") != std::string::npos;
    if (method.find("+headwise") != std::string::npos) {  // asymmetric per-head q, kᵀ, v (run as centred codes q − zp_h)
      o.placement.wbits = o.placement.abits = 4;
      o.adalog = o.matmul_per_head = o.weight_mse = true;
    }
    QuantPlan plan = run_method(g, calib, method.rfind("repqvit", 0) == 0 ? "repqvit" : method, o);
    if (tokens) {  // --recon-token-scales' plan: qkv, proj and fc1 inputs with a step and zero point per token, each moved apart
      at::manual_seed(12);
      int n = 0;
      for (auto& p : plan.points) {
        const bool reads_tokens = p.node.find(".attn.qkv") != std::string::npos || p.node.find(".attn.proj") != std::string::npos ||
                                  p.node.find(".mlp.fc1") != std::string::npos;
        if (p.weight || !reads_tokens || p.spec.kind != QuantKind::Uniform || p.spec.granularity != Granularity::PerTensor) continue;
        p.spec.granularity = Granularity::PerChannel;
        p.spec.axis = 1;
        p.params.scale = p.params.scale.reshape({1, 1, 1}) * (0.7 + 0.6 * at::rand({1, 197, 1}));
        p.params.zero_point = at::clamp(p.params.zero_point.reshape({1, 1, 1}) + at::randint(-2, 3, {1, 197, 1}).to(at::kFloat),
                                        static_cast<double>(p.spec.qmin()), static_cast<double>(p.spec.qmax()));
        ++n;
      }
      ASSERT_EQ(n, 36);
      check_plan(plan, g, "per-token plan");
    }
    Int8Model m(g, plan);
    if (method == "repqvit") EXPECT_EQ(m.stats().log2_inputs, 12);
    EXPECT_EQ(m.stats().token_inputs, tokens ? 36 : 0) << method;
    if (method.find("+headwise") != std::string::npos) {
      int per_head = 0;
      for (const auto& p : plan.points) per_head += !p.weight && p.spec.granularity == Granularity::PerHead && !p.spec.symmetric;
      EXPECT_EQ(per_head, 36);
    }
    if (method.rfind("repqvit+", 0) == 0) {
      EXPECT_GT(m.stats().adalog_inputs, 12);
      EXPECT_EQ(m.stats().adalog_inputs + m.stats().log2_inputs, 24);
      for (const auto& p : plan.points)
        if (p.weight) EXPECT_FALSE(p.spec.symmetric) << p.node;
    }
    EXPECT_EQ(m.stats().native_linear, 49) << method;
    EXPECT_EQ(m.stats().native_matmul, 24) << method;
    EXPECT_EQ(m.stats().native_conv, 1) << method;
    EXPECT_TRUE(m.stats().fallbacks.empty()) << method << ": " << m.stats().fallbacks[0];
    at::InferenceMode guard;
    auto want = QuantizedModel(g, plan).run(x);
    auto got = m.run(x);
    Graph perturbed = g;
    at::manual_seed(11);
    for (auto& c : perturbed.consts)
      if (c.defined() && c.is_floating_point()) c = c * (1 + 1e-6 * at::randn_like(c));
    const auto noisy = QuantizedModel(perturbed, plan).run(x);
    const double chaos = (want - noisy).abs().mean().item<double>();
    const double chaos_agree = (want.argmax(1) == noisy.argmax(1)).to(at::kDouble).mean().item<double>();
    const double agree = (want.argmax(1) == got.argmax(1)).to(at::kDouble).mean().item<double>();
    const double mean_abs = (want - got).abs().mean().item<double>();
    std::printf("DeiT-Tiny %-8s W%dA%d int8 runtime: agreement %.3f, mean |int8 - fake-quant| %.3g (max %.3g); simulation under 1e-6 noise %.3g, "
                "agreement %.3f\n",
                method.c_str(), o.placement.wbits, o.placement.abits, agree, mean_abs, (want - got).abs().max().item<double>(), chaos, chaos_agree);
    // the top-1 agrees as well as float noise alone lets it (a 4-bit model's top-1 flips under 1e-6 noise), less one image
    EXPECT_GE(agree, std::min(15.0, 16.0 * chaos_agree - 1.0) / 16.0) << method;
    EXPECT_LE(mean_abs, 2.0 * chaos + 1e-3) << method;
  }
  // at 8 bits the centred codes q − zp_h would not fit int8: those MatMuls are simulated, and the stats say why
  MethodOptions o;
  o.progress = false;
  o.matmul_per_head = true;
  Int8Model m(g, run_method(g, calib, "repqvit", o));
  EXPECT_EQ(m.stats().native_matmul, 0);
  int why = 0;
  for (const auto& f : m.stats().fallbacks) why += f.find("matmul_qk: 8-bit asymmetric per-head input") != std::string::npos;
  EXPECT_EQ(why, 12);
}

TEST(Int8Runtime, CliNeedsAPlan) {
  expect_cli_error(run_vitq("eval " + quoted(model_dir()) + " --runtime int8 --data " + quoted(imagenet("val1000")) + " --limit 2 --quiet"),
                   "--runtime int8 needs --plan");
}

// vitq run: the integer runtime on image files prints each image's top classes; the first is the label here.
TEST(Int8Runtime, CliRunClassifiesImages) {
  REQUIRE_INT8();
  TempDir dir;
  auto q = run_vitq("quantize " + quoted(model_dir()) + " --method minmax --calib " + quoted(imagenet("calib1000")) +
                    " --calib-size 2 --quiet --out " + quoted(dir / "plan.json"));
  ASSERT_EQ(q.code, 0) << q.output;
  const auto img = imagenet("val1000") / "ILSVRC2012_val_00000361.JPEG";  // labels.txt: class 300
  auto r = run_vitq("run " + quoted(model_dir()) + " --plan " + quoted(dir / "plan.json") + " " + quoted(img) + " --top 3");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("vitq int8"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("ILSVRC2012_val_00000361.JPEG: 300 ("), std::string::npos) << r.output;
  write_file(dir / "broken.jpg", "not an image");
  expect_cli_error(run_vitq("run " + quoted(model_dir()) + " --plan " + quoted(dir / "plan.json") + " " + quoted(dir / "broken.jpg")),
                   "broken.jpg");
  expect_cli_error(run_vitq("run " + quoted(model_dir()) + " --runtime int8 " + quoted(img)), "--runtime int8 needs --plan");
}
