// ONNX export checked by ONNX Runtime, an independent implementation: the FP32 export of every architecture
// against vitq's executor, every quantizer kind on a one-layer graph against vitq's fake quantization (no
// upstream differences to amplify there, so they must agree to float precision), weights of every
// architecture, whole quantized DeiT-Tiny plans, and the command's bad input.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include "test_util.h"
#include "tiny_graphs.h"
#include "vitq/data/dataset.h"
#include "vitq/deploy/onnx_export.h"
#include "vitq/deploy/ort_runtime.h"
#include "vitq/graph/executor.h"
#include "vitq/methods/method.h"
#include "vitq/models/model_loader.h"
#include "vitq/quant/calibration.h"
#include "vitq/quant/fake_quant.h"
#include "vitq/util/error.h"
#include "vitq/util/file_io.h"

using namespace vitq;
using namespace vitq::test;

#define REQUIRE_ORT()                                                                                   \
  do {                                                                                                  \
    if (!ort_available().ok) GTEST_SKIP() << "skipped: ONNX Runtime is absent: " << ort_available().why; \
  } while (0)

namespace {

const char* kModels[] = {"deit_tiny_patch16_224", "mobilevit_xxs", "mobilevitv2_050", "efficientformer_l1-w24",
                         "efficientformerv2_s0", "swin_tiny_patch4_window7_224-w32"};

struct Loaded {
  Graph graph;
  at::Tensor images;  // 2 calibration images
};

const Loaded& loaded(const std::string& name) {
  static std::map<std::string, Loaded> cache;
  if (!cache.count(name)) {
    Loaded l{load_model((shared_dir() / "models" / name).string()), {}};
    l.images = load_calibration(l.graph, open_dataset(imagenet("calib1000").string()), 2, 0, false);
    cache.emplace(name, std::move(l));
  }
  return cache.at(name);
}

// Runs a shell command line as given (for resource limits and signals around the binary).
at::Tensor run_ort(const ExportResult& r, const at::Tensor& x) { return OrtModel::from_bytes(r.bytes, 2, "test export").run(x); }

// The same at one of ONNX Runtime's optimisation levels (VITQ_ORT_OPT_LEVEL; "" = its default), the variable unset
// again however the run ends.
at::Tensor run_ort_at(const ExportResult& r, const at::Tensor& x, const char* level) {
  struct Unset {
    ~Unset() { unsetenv("VITQ_ORT_OPT_LEVEL"); }
  } unset;
  if (*level) setenv("VITQ_ORT_OPT_LEVEL", level, 1);
  return run_ort(r, x);
}

double rel_diff(const at::Tensor& want, const at::Tensor& got) {
  return ((want - got).abs().max() / want.abs().max().clamp_min(1e-6)).item<double>();
}

QuantPoint make_point(bool weight, QuantSpec spec, const at::Tensor& data) {
  QuantPoint p;
  p.node = "fc";
  p.slot = weight ? 1 : 0;
  p.weight = weight;
  p.spec = spec;
  if (spec.kind == QuantKind::TwinUniform) {
    p.params = spec.is_signed ? twin_gelu_params(spec.bits, 0.05) : twin_softmax_params(spec.bits, 3);
  } else if (spec.kind == QuantKind::PowerOfTwoFactor) {  // s·2^α per channel, one zero point
    const int64_t c = data.size(spec.axis);
    std::vector<int64_t> shape(static_cast<size_t>(data.dim()), 1);
    shape[static_cast<size_t>(spec.axis)] = c;
    p.params.scale = (0.01 * at::pow(2.0, at::randint(0, 4, {c}).to(at::kFloat))).reshape(shape);
    p.params.zero_point = at::full(shape, -5.0);
  } else if (is_log_kind(spec.kind)) {
    p.params = log2_params();
    p.params.scale = p.params.scale * 2.0;
  } else if (spec.kind == QuantKind::AdaLog) {  // 1.5 codes per octave, shifted by 0.17 (as after GELU)
    p.params = adalog_params(1.2, 1.5, 0.17);
  } else {
    p.params = params_from_range(reduce_amin(data, spec), reduce_amax(data, spec), spec);
  }
  return p;
}

// The tiny graph with `act` on the fc input and `wt` on its weight, exported and run by ONNX Runtime on x,
// against vitq's fake quantization.
void expect_tiny_match(const QuantSpec& act, const QuantSpec& wt, const at::Tensor& x, const std::string& label,
                       bool learned_codes = false) {
  Graph g = linear_graph();
  QuantPlan plan;
  plan.model = "tiny";
  plan.method = "test";
  auto flat = x.reshape({x.size(0), 48});
  plan.points.push_back(make_point(false, act, flat));
  plan.points.push_back(make_point(true, wt, g.const_tensor(g.nodes[1].inputs[1])));
  if (learned_codes) {  // floor everywhere: valid codes that plain rounding would not give
    auto& p = plan.points.back();
    const auto& w = g.const_tensor(g.nodes[1].inputs[1]);
    p.codes = at::clamp(at::floor(w / full_scale(p, w)) + full_zero_point(p, w), static_cast<double>(p.spec.qmin()),
                        static_cast<double>(p.spec.qmax()));
  }
  at::InferenceMode guard;
  auto want = QuantizedModel(g, plan).run(x);
  // ONNX Runtime's extended optimisations run a MatMul whose weight is dequantized but whose input is not Q/DQ
  // (a twin-uniform or log2 input, or none) on a dynamically quantized input, which moves the numbers: this test
  // checks what the exported model says, so it runs with the basic optimisations. Inputs written as Q/DQ (uniform,
  // PTF) run at the default level too, where ONNX Runtime fuses the pair into an integer MatMul.
  const ExportResult r = export_onnx(g, &plan);
  const bool qdq_input = act.kind == QuantKind::Uniform || act.kind == QuantKind::PowerOfTwoFactor;
  for (const char* level : {"1", ""}) {
    if (!*level && !qdq_input) continue;
    auto got = run_ort_at(r, x, level);
    ASSERT_EQ(got.sizes(), want.sizes()) << label;
    const double d = (want - got).abs().max().item<double>();
    std::printf("%-44s ORT opt %-7s max |ORT - fake-quant| %.3g\n", label.c_str(), *level ? level : "default", d);
    EXPECT_LE(d, 1e-4) << label << " at ORT optimisation level " << (*level ? level : "default");
  }
}

QuantSpec spec(int bits, bool symmetric, bool is_signed, Granularity g = Granularity::PerTensor, int axis = 0,
               QuantKind kind = QuantKind::Uniform, int group = 0) {
  QuantSpec s;
  s.bits = bits;
  s.symmetric = symmetric;
  s.is_signed = is_signed;
  s.granularity = g;
  s.axis = axis;
  s.kind = kind;
  s.group_size = group;
  return s;
}

}  // namespace

// Every quantizer kind the plans use, one at a time, agrees with vitq's simulation to float precision.
TEST(Export, EveryQuantizerKindMatchesFakeQuant) {
  REQUIRE_ORT();
  at::manual_seed(0);
  const auto x = at::randn({6, 3, 4, 4}) * 1.5;
  const auto pos = at::rand({6, 3, 4, 4});  // non-negative data, for the unsigned kinds
  const auto w8 = spec(8, true, true, Granularity::PerChannel, 0);
  expect_tiny_match(spec(8, false, true), w8, x, "A8 asym int8 / W8 per-channel");
  expect_tiny_match(spec(8, true, true), spec(8, true, true), x, "A8 sym / W8 per-tensor");
  expect_tiny_match(spec(8, false, false), w8, x, "A8 asym uint8");
  expect_tiny_match(spec(8, true, false), w8, pos, "A8 sym unsigned (non-negative data)");
  expect_tiny_match(spec(4, false, true), spec(4, true, true, Granularity::PerChannel, 0), x, "A4 asym (clipped) / W4 per-channel");
  expect_tiny_match(spec(3, true, true), spec(3, true, true), x, "A3 sym (clipped) / W3 per-tensor");
  expect_tiny_match(spec(6, false, true, Granularity::PerChannel, 1), w8, x, "A6 per-channel activation (axis 1)");
  expect_tiny_match(spec(8, false, true, Granularity::PerChannel, 1, QuantKind::PowerOfTwoFactor), w8, x, "A8 PTF (s·2^α per channel)");
  expect_tiny_match(spec(4, true, true), spec(4, true, true, Granularity::PerGroup, 0, QuantKind::Uniform, 16), x, "W4 per-group (16)");
  expect_tiny_match(spec(8, false, true), spec(4, true, true, Granularity::PerChannel, 0), x, "W4 learned codes (floor)", true);
  expect_tiny_match(spec(8, true, false, Granularity::PerTensor, 0, QuantKind::TwinUniform), w8, pos, "A8 twin uniform unsigned");
  expect_tiny_match(spec(6, true, true, Granularity::PerTensor, 0, QuantKind::TwinUniform), w8, x * 0.1, "A6 twin uniform signed");
  expect_tiny_match(spec(4, true, false, Granularity::PerTensor, 0, QuantKind::Log2), w8, pos, "A4 log2");
  expect_tiny_match(spec(4, true, false, Granularity::PerTensor, 0, QuantKind::LogSqrt2), w8, pos, "A4 log-sqrt2");
  expect_tiny_match(spec(4, false, false, Granularity::PerTensor, 0, QuantKind::AdaLog), w8, pos - 0.2, "A4 adalog (tau 1.5, shift 0.17)");
  expect_tiny_match(spec(3, false, false, Granularity::PerTensor, 0, QuantKind::AdaLog), w8, pos - 0.2, "A3 adalog (tau 1.5, shift 0.17)");
  expect_tiny_match(spec(8, false, true), spec(4, false, true, Granularity::PerChannel, 0), x, "W4 asymmetric per-channel");
}

// The FP32 export of every architecture computes what vitq's executor computes, at batch 1 and 2.
TEST(Export, Fp32EveryArchitectureMatchesExecutor) {
  REQUIRE_ORT();
  at::set_num_threads(2);
  for (const char* model : kModels) {
    const Loaded& l = loaded(model);
    at::InferenceMode guard;
    auto want = Executor(l.graph).run(l.images);
    ExportResult r = export_onnx(l.graph, nullptr);
    auto ort = OrtModel::from_bytes(r.bytes, 2, model);
    auto got = ort.run(l.images);
    ASSERT_EQ(got.sizes(), want.sizes()) << model;
    const double d = rel_diff(want, got);
    std::printf("%-34s FP32 export: max |ORT - vitq| / max |logit| = %.3g\n", model, d);
    EXPECT_LE(d, 1e-4) << model;
    EXPECT_TRUE(at::equal(got.argmax(1), want.argmax(1))) << model;
    auto one = ort.run(l.images.slice(0, 0, 1));
    EXPECT_LE(rel_diff(want.slice(0, 0, 1), one), 1e-4) << model << " at batch 1";
  }
}

// The DeiT-Tiny ONNX front end exports too (its graph comes from the ONNX importer's fusions).
TEST(Export, OnnxImportedDeitExports) {
  REQUIRE_ORT();
  Graph g = load_model((model_dir() / "model.onnx").string());
  const at::Tensor x = loaded("deit_tiny_patch16_224").images;
  at::InferenceMode guard;
  auto want = Executor(g).run(x);
  auto got = run_ort(export_onnx(g, nullptr), x);
  EXPECT_LE(rel_diff(want, got), 1e-4);
}

// Quantized weights of every architecture (codes, per-channel axes, the transposed Linear weights, grouped and
// depthwise convs): a weight-only plan has no activation rounding, so ONNX Runtime must agree closely.
TEST(Export, QuantizedWeightsEveryArchitecture) {
  REQUIRE_ORT();
  at::set_num_threads(2);
  for (const char* model : kModels) {
    const Loaded& l = loaded(model);
    PlacementOptions po;
    po.wbits = 4;
    QuantPlan plan;
    plan.model = l.graph.meta.name;
    plan.method = "weights-only";
    for (auto& p : default_placement(l.graph, po)) {
      if (!p.weight) continue;
      const auto& w = l.graph.const_tensor(l.graph.find_node(p.node)->inputs[static_cast<size_t>(p.slot)]);
      p.params = params_from_range(reduce_amin(w, p.spec), reduce_amax(w, p.spec), p.spec);
      plan.points.push_back(std::move(p));
    }
    ASSERT_FALSE(plan.points.empty()) << model;
    at::InferenceMode guard;
    auto want = QuantizedModel(l.graph, plan).run(l.images);
    ExportResult r = export_onnx(l.graph, &plan);
    EXPECT_EQ(r.int8_weights, static_cast<int>(plan.points.size())) << model;
    // ONNX Runtime's extended optimisations turn a MatMul on a dequantized weight with a float input into an
    // integer MatMul on a dynamically quantized input (measured: 0.5-1% of the logits' range here), which is
    // not what the model says: compare with its basic optimisations.
    auto got = run_ort_at(r, l.images, "1");
    const double d = rel_diff(want, got);
    std::printf("%-34s W4 weights: max |ORT - fake-quant| / max |logit| = %.3g\n", model, d);
    EXPECT_LE(d, 1e-4) << model;
  }
}

// Whole plans on the real DeiT-Tiny: uniform (minmax), PTQ4ViT's (twin uniform, per-head inputs, per-tensor
// weights) and FQ-ViT's common-convention plan (log2 softmax codes). Activation rounding makes tiny float
// differences flip single codes, so the check is agreement and a bounded logit difference.
TEST(Export, DeitPlansAgreeWithFakeQuant) {
  REQUIRE_ORT();
  at::set_num_threads(2);
  const Graph& g = loaded("deit_tiny_patch16_224").graph;
  auto data = open_dataset(imagenet("val1000").string());
  data.samples.resize(16);
  at::Tensor x = load_calibration(g, data, 16, 0, false);
  at::Tensor calib = load_calibration(g, open_dataset(imagenet("calib1000").string()), 4, 0, false);
  for (std::string label : {"minmax", "ptq4vit", "fqvit", "repqvit", "repqvit+headwise"}) {
    const std::string method = label.substr(0, label.find('+'));
    MethodOptions o;
    o.progress = false;
    o.search_steps = 5;
    o.search_images = 2;
    o.rounds = 1;
    if (method == "fqvit") o.convention = "common";
    // RepQ-ViT's reparameterisation and log√2 at W4A4; +headwise: asymmetric per-head q, k, v (centred codes)
    if (method == "repqvit") o.placement.wbits = o.placement.abits = 4;
    o.matmul_per_head = label == "repqvit+headwise";
    QuantPlan plan = run_method(g, calib, method, o);
    at::InferenceMode guard;
    auto want = QuantizedModel(g, plan).run(x);
    ExportResult r = export_onnx(g, &plan);
    auto got = run_ort(r, x);
    auto fp = Executor(g).run(x);
    const double agree = (want.argmax(1) == got.argmax(1)).to(at::kDouble).mean().item<double>();
    const double d = rel_diff(want, got), mean_abs = (want - got).abs().mean().item<double>();
    const double quant_effect = (want - fp).abs().mean().item<double>();  // what quantization itself moves
    // A quantized network is chaotic under rounding: float differences of 1e-6 flip codes, and flipped codes move
    // the logits (a 1e-6 relative change of the input moves minmax W8A8's by 0.059 on average). ONNX Runtime's
    // float ops differ from libtorch's by that much, so its deviation is judged against the same model's
    // deviation when every float constant of the graph is perturbed by 1e-6 (relative).
    at::manual_seed(11);
    Graph perturbed = g;
    for (auto& c : perturbed.consts)
      if (c.defined() && c.is_floating_point()) c = c * (1 + 1e-6 * at::randn_like(c));
    const auto noisy = QuantizedModel(perturbed, plan).run(x);
    const double chaos = (want - noisy).abs().mean().item<double>();
    const double chaos_agree = (want.argmax(1) == noisy.argmax(1)).to(at::kDouble).mean().item<double>();
    std::printf("DeiT-Tiny %-8s W%dA%d: %d Q/DQ, %d int8 weights, %d standard-op quantizers; agreement %.3f, max rel %.3g, "
                "mean |ORT - fake-quant| %.3g; fake-quant with constants perturbed by 1e-6 %.3g (agreement %.3f); mean |fake-quant - FP| %.3g\n",
                label.c_str(), o.placement.wbits, o.placement.abits, r.qdq_activations, r.int8_weights, r.standard_op_quantizers, agree, d, mean_abs, chaos,
                chaos_agree, quant_effect);
    // top-1 agreement: 15 of 16 images, or (where 1e-6 noise flips more, W4A4) at most one image below the noise's own
    EXPECT_GE(agree, std::min(15.0 / 16.0, chaos_agree - 1.0 / 16.0) - 1e-9) << label;
    EXPECT_LE(mean_abs, 2.0 * chaos + 1e-3) << label;
    EXPECT_GT(r.qdq_activations + r.standard_op_quantizers, 0) << label;
  }
}

namespace {
// A W8A8 plan of the shared DeiT-Tiny calibrated on 2 images.
QuantPlan deit_plan(const Graph& g, const std::string& method) {
  at::Tensor calib = load_calibration(g, open_dataset(imagenet("calib1000").string()), 2, 0, false);
  MethodOptions o;
  o.progress = false;
  return run_method(g, calib, method, o);
}
}  // namespace

// Integer LayerNorm / Softmax have no standard-op form: refused, naming the layer.
TEST(Export, IntegerOpsRefused) {
  const Graph& g = loaded("deit_tiny_patch16_224").graph;
  QuantPlan plan = deit_plan(g, "fqvit");
  ASSERT_FALSE(plan.int_ops.empty());
  try {
    export_onnx(g, &plan);
    FAIL() << "exported an integer-op plan";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(plan.int_ops[0].node), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("integer"), std::string::npos) << e.what();
  }
}

namespace {
// Point p (a per-tensor uniform activation input of a [B, N, C] tensor) made per token, as --recon-token-scales
// leaves it after training: each token's step moved by up to ±30% and its zero point by up to ±2 codes (on the grid).
void make_per_token(QuantPoint& p, int64_t tokens, uint64_t seed) {
  at::manual_seed(seed);
  p.spec.granularity = Granularity::PerChannel;
  p.spec.axis = 1;
  p.params.scale = (p.params.scale.reshape({1, 1, 1}) * (0.7 + 0.6 * at::rand({1, tokens, 1}))).contiguous();
  auto zp = p.params.zero_point.reshape({1, 1, 1}).expand({1, tokens, 1});
  if (!p.spec.symmetric) zp = at::clamp(zp + at::randint(-2, 3, {1, tokens, 1}), static_cast<double>(p.spec.qmin()), static_cast<double>(p.spec.qmax()));
  p.params.zero_point = zp.to(at::kFloat).contiguous();
}

}  // namespace

// A per-token Linear input (--recon-token-scales) is written in integer ops (QuantizeLinear along the tokens,
// MatMulInteger, the zero points taken out in int32) and matches vitq's fake quantization to float precision, with
// ONNX Runtime's default optimisations (which fused the plain Q/DQ form into an integer MatMul that failed) and its
// basic ones; every width, signed and unsigned, symmetric and asymmetric inputs and weights, learned weight codes.
TEST(Export, PerTokenLinearInputMatchesFakeQuant) {
  REQUIRE_ORT();
  at::manual_seed(0);
  const auto x = at::randn({5, 3, 4, 4}) * 1.5;
  const auto pos = at::rand({5, 3, 4, 4}) * 2;
  struct Case {
    QuantSpec act, wt;
    bool positive, learned;
    const char* label;
  };
  const Case cases[] = {
      {spec(4, false, true), spec(4, true, true, Granularity::PerChannel, 0), false, false, "A4 asym tokens / W4 per-channel"},
      {spec(3, true, true), spec(3, true, true), false, false, "A3 sym tokens / W3 per-tensor"},
      {spec(7, false, false), spec(8, false, true, Granularity::PerChannel, 0), true, false, "A7 asym unsigned tokens / W8 asym"},
      {spec(8, false, false), spec(8, false, true, Granularity::PerChannel, 0), true, false, "A8 asym uint8 tokens / W8 asym"},
      {spec(8, false, true), spec(4, false, false, Granularity::PerChannel, 0), false, false, "A8 asym int8 tokens / W4 unsigned"},
      {spec(8, true, true), spec(8, true, true, Granularity::PerChannel, 0), false, false, "A8 sym tokens / W8 per-channel"},
      {spec(4, false, true), spec(4, true, true, Granularity::PerChannel, 0), false, true, "A4 tokens / W4 learned codes (floor)"},
  };
  uint64_t seed = 1;
  for (const auto& c : cases) {
    Graph g = linear_graph({3, 16});  // 3 tokens of 16 channels
    const auto& data = c.positive ? pos : x;
    const auto& w = g.const_tensor(g.nodes[1].inputs[1]);
    QuantPlan plan;
    plan.model = "tiny";
    plan.method = "test";
    plan.points.push_back(make_point(false, c.act, data.reshape({data.size(0), 3, 16})));
    plan.points.back().node = "fc";
    make_per_token(plan.points.back(), 3, seed++);
    plan.points.push_back(make_point(true, c.wt, w));
    if (c.learned) {
      auto& p = plan.points.back();
      p.codes = at::clamp(at::floor(w / full_scale(p, w)) + full_zero_point(p, w), static_cast<double>(p.spec.qmin()),
                          static_cast<double>(p.spec.qmax()));
    }
    ASSERT_TRUE(is_per_token_input(plan.points[0])) << c.label;
    check_plan(plan, g, c.label);
    at::InferenceMode guard;
    auto want = QuantizedModel(g, plan).run(data);
    ExportResult r = export_onnx(g, &plan);
    EXPECT_NE(r.bytes.find("MatMulInteger"), std::string::npos) << c.label;
    EXPECT_EQ(r.int8_weights, 1) << c.label;
    EXPECT_EQ(r.integer_linears, 1) << c.label;
    for (const char* level : {"", "1"}) {
      auto got = run_ort_at(r, data, level);
      ASSERT_EQ(got.sizes(), want.sizes()) << c.label;
      const double d = (want - got).abs().max().item<double>();
      std::printf("%-44s ORT opt %s: max |ORT - fake-quant| %.3g\n", c.label, *level ? level : "default", d);
      EXPECT_LE(d, 1e-4) << c.label << " at ORT optimisation level " << (*level ? level : "default");
    }
  }
}

// Asymmetric per-head operands of an activation MatMul (repqvit+headwise's q and k): the plain Q/DQ form with uint8
// zero points per head was fused by ONNX Runtime's default optimisations into an integer MatMul that refused them at
// run time. Up to 7 bits the export writes centred codes (int8, zero points 0), at 8 bits the formula's standard
// ops; both match fake quantization to float precision at the default and the basic optimisation levels.
TEST(Export, PerHeadAsymmetricMatMulOperandsMatchFakeQuant) {
  REQUIRE_ORT();
  at::manual_seed(2);
  const auto x = at::randn({5, 3, 4, 4}) + 0.5;
  for (int bits : {3, 4, 7, 8}) {
    Graph g = matmul_graph();  // x · xᵀ per head
    QuantPlan plan;
    plan.model = "tiny_mm";
    plan.method = "test";
    for (int slot : {0, 1}) {
      QuantPoint p = make_point(false, spec(bits, false, false, Granularity::PerHead, 1), slot == 0 ? x : x.transpose(2, 3));
      p.node = "mm";
      p.slot = slot;
      plan.points.push_back(p);
    }
    ASSERT_GT(plan.points[0].params.zero_point.max().item<double>(), 0);
    ASSERT_GT(plan.points[0].params.zero_point.numel(), 1);
    check_plan(plan, g, "per-head");
    at::InferenceMode guard;
    auto want = QuantizedModel(g, plan).run(x);
    ExportResult r = export_onnx(g, &plan);
    EXPECT_EQ(r.standard_op_quantizers, bits == 8 ? 2 : 0) << bits;
    for (const char* level : {"", "1"}) {
      auto got = run_ort_at(r, x, level);
      const double d = (want - got).abs().max().item<double>();
      std::printf("A%d asym per-head MatMul operands, ORT opt %s: max |ORT - fake-quant| %.3g\n", bits, *level ? level : "default", d);
      EXPECT_LE(d, 1e-4) << bits << " bits at ORT optimisation level " << (*level ? level : "default");
    }
  }
}

// The DeiT-Tiny W8A8 minmax plan with every per-tensor Linear input on [B, 197, C] made per token (48: qkv, proj,
// fc1, fc2) exports and runs in ONNX Runtime with its default optimisations, agreeing with fake quantization as
// closely as the model agrees with itself under 1e-6 float noise. Without a weight quantizer such an input is refused,
// and so are zero points that are not one integer a token.
TEST(Export, PerTokenDeitPlanRunsInOrt) {
  REQUIRE_ORT();
  at::set_num_threads(2);
  const Graph& g = loaded("deit_tiny_patch16_224").graph;
  QuantPlan plan = deit_plan(g, "minmax");
  int made = 0;
  uint64_t seed = 100;
  for (auto& p : plan.points)
    if (!p.weight && p.spec.granularity == Granularity::PerTensor && p.spec.kind == QuantKind::Uniform && p.node.rfind("blocks.", 0) == 0)
      if (const Node* n = g.find_node(p.node); n && n->op == OpKind::Linear) {
        make_per_token(p, 197, seed++);
        ++made;
      }
  ASSERT_EQ(made, 48);
  check_plan(plan, g, "per-token");
  const at::Tensor x = loaded("deit_tiny_patch16_224").images;
  at::InferenceMode guard;
  auto want = QuantizedModel(g, plan).run(x);
  ExportResult r = export_onnx(g, &plan);
  EXPECT_EQ(r.integer_linears, 48);
  auto got = run_ort(r, x);
  at::manual_seed(11);
  Graph perturbed = g;
  for (auto& c : perturbed.consts)
    if (c.defined() && c.is_floating_point()) c = c * (1 + 1e-6 * at::randn_like(c));
  const double chaos = (want - QuantizedModel(perturbed, plan).run(x)).abs().mean().item<double>();
  const double mean_abs = (want - got).abs().mean().item<double>();
  std::printf("DeiT-Tiny W8A8, 48 per-token inputs: mean |ORT - fake-quant| %.3g; under 1e-6 noise %.3g\n", mean_abs, chaos);
  EXPECT_TRUE(at::equal(want.argmax(1), got.argmax(1)));
  EXPECT_LE(mean_abs, 2.0 * chaos + 1e-3);
  // without a weight quantizer the integer form has no weight codes: refused, naming the layer
  QuantPlan bare = plan;
  bare.points.erase(std::remove_if(bare.points.begin(), bare.points.end(), [](const QuantPoint& p) { return p.weight && p.node == "blocks.3.attn.proj"; }),
                    bare.points.end());
  try {
    export_onnx(g, &bare);
    FAIL() << "exported a per-token Linear input without weight codes";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blocks.3.attn.proj"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("per-token"), std::string::npos) << e.what();
  }
  // zero points that cannot be integer offsets (a plan built in memory; a loaded plan is checked when it is read):
  // refused with the reason, not exported as rounded numbers
  auto token_point = [](QuantPlan& p) -> QuantPoint& {
    for (auto& q : p.points)
      if (is_per_token_input(q)) return q;
    throw std::runtime_error("no per-token input");
  };
  QuantPlan fractional = plan;
  token_point(fractional).params.zero_point = token_point(fractional).params.zero_point + 0.5;
  expect_throw_mentioning([&] { export_onnx(g, &fractional); }, "off the integer grid", "a per-token zero point of x.5");
  QuantPlan shared_zp = plan;
  token_point(shared_zp).params.zero_point = at::zeros({1, 1, 1});
  expect_throw_mentioning([&] { export_onnx(g, &shared_zp); }, "one zero point for several steps", "one zero point for 197 steps");
}

TEST(FileIo, AtomicWriteRefusesExistingAndLeavesNoTemp) {
  TempDir dir;
  const auto out = (dir / "a.bin").string();
  write_file_atomic(out, "first", false);
  EXPECT_EQ(read_file(out), "first");
  EXPECT_THROW(write_file_atomic(out, "second", false), Error);
  EXPECT_EQ(read_file(out), "first");
  write_file_atomic(out, "second", true);
  EXPECT_EQ(read_file(out), "second");
  EXPECT_THROW(write_file_atomic((dir / "missing" / "a.bin").string(), "x", true), Error);
  EXPECT_THROW(write_file_atomic(dir.path().string(), "x", true), Error);
  int files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.path())) ++files;
  EXPECT_EQ(files, 1);  // no temporary left behind
}

// --- the command -----------------------------------------------------------------------------------------

namespace {
std::string minmax_plan(const TempDir& dir) {
  const auto plan = (dir / "plan.json").string();
  auto q = run_vitq("quantize " + quoted(model_dir()) + " --method minmax --calib " + quoted(imagenet("calib1000")) +
                    " --calib-size 2 --quiet --out '" + plan + "'");
  EXPECT_EQ(q.code, 0) << q.output;
  return plan;
}
}  // namespace

// The user's path: quantize, export, then ONNX Runtime evaluates the file against vitq's fake quantization.
TEST(ExportCli, ExportThenEvaluateInOnnxRuntime) {
  REQUIRE_ORT();
  TempDir dir;
  const auto plan = minmax_plan(dir);
  const auto out = dir / "model.int8.onnx";
  auto e = run_vitq("export " + quoted(model_dir()) + " --plan '" + plan + "' --out " + quoted(out));
  ASSERT_EQ(e.code, 0) << e.output;
  EXPECT_NE(e.output.find("onnx-qdq, opset 17"), std::string::npos) << e.output;
  // int8 weights: at most 27% of the FP32 ONNX file
  const double ratio = static_cast<double>(fs::file_size(out)) / static_cast<double>(fs::file_size(model_dir() / "model.onnx"));
  std::printf("QDQ export: %.1f%% of model.onnx\n", 100 * ratio);
  EXPECT_LE(ratio, 0.27);
  auto r = run_vitq("eval " + quoted(model_dir()) + " --plan '" + plan + "' --runtime ort --onnx " + quoted(out) +
                    " --data " + quoted(imagenet("val1000")) + " --limit 16 --batch 8 --quiet");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("runtime   onnxruntime"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("vs vitq   top-1 agreement"), std::string::npos) << r.output;
}

TEST(ExportCli, BadInput) {
  TempDir dir;
  const auto plan = minmax_plan(dir);
  const std::string m = quoted(model_dir());
  // a plan for another model
  expect_cli_error(run_vitq("export " + quoted(shared_dir() / "models" / "mobilevit_xxs") + " --plan '" + plan + "' --out " +
                            quoted(dir / "x.onnx")),
                   "deit_tiny_patch16_224");
  EXPECT_FALSE(fs::exists(dir / "x.onnx"));
  // nonsense options
  expect_cli_error(run_vitq("export " + m + " --format onnx-qdq --out " + quoted(dir / "x.onnx")), "--format onnx-qdq needs --plan");
  expect_cli_error(run_vitq("export " + m + " --plan '" + plan + "' --format tflite --out " + quoted(dir / "x.onnx")), "unknown --format");
  // unwritable output paths
  expect_cli_error(run_vitq("export " + m + " --out " + quoted(dir / "no" / "such" / "x.onnx")), "does not exist");
  expect_cli_error(run_vitq("export " + m + " --out " + quoted(dir.path())), "is a folder");
  // the output is an input
  const std::string before = read_file(plan);
  expect_cli_error(run_vitq("export " + m + " --plan '" + plan + "' --out '" + plan + "' --force"), "is also an input");
  EXPECT_EQ(read_file(plan), before);
  // an existing output is kept unless --force
  write_file(dir / "old.onnx", "keep me");
  expect_cli_error(run_vitq("export " + m + " --out " + quoted(dir / "old.onnx")), "exists (use --force");
  EXPECT_EQ(read_file(dir / "old.onnx"), "keep me");
  auto forced = run_vitq("export " + m + " --out " + quoted(dir / "old.onnx") + " --force");
  EXPECT_EQ(forced.code, 0) << forced.output;
  EXPECT_GT(fs::file_size(dir / "old.onnx"), 1000000u);
  // a write cut short (file size limit: the write fails with EFBIG) leaves no file and no temporary
  auto limited = run_bash("trap '' XFSZ; ulimit -f 1024; " + std::string(VITQ_BINARY) + " export " + m + " --out " +
                                quoted(dir / "cut2.onnx"));
  EXPECT_NE(limited.code, 0) << limited.output;
  EXPECT_NE(error_line(limited.output).find("write failed"), std::string::npos) << limited.output;
  EXPECT_FALSE(fs::exists(dir / "cut2.onnx"));
  for (const auto& e : fs::directory_iterator(dir.path()))
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
}

TEST(ExportCli, CorruptOnnxForOnnxRuntime) {
  REQUIRE_ORT();
  TempDir dir;
  write_file(dir / "bad.onnx", "not a model at all");
  expect_cli_error(run_vitq("eval " + quoted(model_dir()) + " --runtime ort --onnx " + quoted(dir / "bad.onnx") + " --data " +
                            quoted(imagenet("val1000")) + " --limit 2 --quiet"),
                   "onnxruntime: loading");
}
