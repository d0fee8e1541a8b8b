// RepQ-ViT on the shared DeiT-Tiny: the reparameterisation keeps the FP function, its per-tensor quantizer gives
// exactly the per-channel quantization it stands for (checked against a plain per-channel reference), plans carry it
// through save / load and reject broken ones, and the log√2 quantizer matches its definition.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "test_util.h"
#include "vitq/data/dataset.h"
#include "vitq/deploy/int8_runtime.h"
#include "vitq/graph/executor.h"
#include "vitq/methods/method.h"
#include "vitq/methods/search.h"
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
// repqvit at `bits` (weights and activations) on images(), with `set` changing its options first
QuantPlan repqvit_plan(int bits, const std::function<void(MethodOptions&)>& set = {}) {
  MethodOptions o;
  o.progress = false;
  o.placement.wbits = o.placement.abits = bits;
  if (set) set(o);
  return run_method(model(), images(), "repqvit", o);
}
const QuantPlan& plan4() {
  static QuantPlan p = repqvit_plan(4);
  return p;
}
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
double max_rel_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>() / std::max(1e-12, b.abs().max().item<double>());
}
}  // namespace

TEST(RepQvit, ReparameterisationKeepsTheFpFunction) {
  const QuantPlan& plan = plan4();
  // DeiT: norm1 and norm2 of every block (the final norm reaches the head through the class-token slice)
  EXPECT_EQ(plan.reparams.size(), 24u);
  EXPECT_EQ(plan.settings.at("reparameterised_layernorms").get<int>(), 24);
  bool some_channel_moved = false;
  for (const auto& r : plan.reparams) {
    EXPECT_TRUE((r.scale > 0).all().item<bool>()) << r.layernorm;
    some_channel_moved |= (r.scale - 1).abs().max().item<double>() > 0.1 && r.shift.abs().max().item<double>() > 0;
  }
  EXPECT_TRUE(some_channel_moved);
  // constant channels (LayerNorm γ = 0 in this model: blocks.0.norm2, blocks.1.norm1) get an ordinary step, so the
  // per-tensor zero point (the mean of the channels') stays inside the grid rather than pinned to its end
  for (const auto& r : plan.reparams) EXPECT_GT(r.scale.min().item<double>(), 1e-3) << r.layernorm;
  for (const auto& p : plan.points)
    if (!p.weight && p.slot == 0 && (p.node.find("qkv") != std::string::npos || p.node.find("fc1") != std::string::npos)) {
      EXPECT_GT(p.params.zero_point.item<double>(), 0) << p.node;
      EXPECT_LT(p.params.zero_point.item<double>(), 15) << p.node;
    }
  at::InferenceMode guard;
  const auto fp = Executor(model()).run(images());
  const Graph rg = with_reparams(model(), plan);
  EXPECT_EQ(rg.reparameterised.size(), 24u);
  const auto* gamma = &rg.const_tensor(rg.find_node("blocks.0.norm1")->inputs[1]);
  EXPECT_FALSE(at::equal(*gamma, model().const_tensor(model().find_node("blocks.0.norm1")->inputs[1])));
  EXPECT_LT(max_rel_diff(Executor(rg).run(images()), fp), 1e-4);
  // applying it to the reparameterised graph again changes nothing
  EXPECT_TRUE(reparam_constants(rg, plan).empty());
  // the simulation applies it too: a plan with only the reparameterisations is the FP model
  QuantPlan only = plan;
  only.points.clear();
  EXPECT_LT(max_rel_diff(QuantizedModel(model(), only).run(images()), fp), 1e-4);
  // and the quantized model runs and mostly agrees with FP on these images at W4A4
  auto q = QuantizedModel(model(), plan).run(images());
  EXPECT_TRUE(at::isfinite(q).all().item<bool>());
}

TEST(RepQvit, PerTensorQuantizerOfTheReparameterisedInputIsThePerChannelOne) {
  const QuantPlan& plan = plan4();
  const std::string layer = "blocks.3.mlp.fc1", ln = "blocks.3.norm2";
  const Reparam* r = nullptr;
  for (const auto& x : plan.reparams)
    if (x.layernorm == ln) r = &x;
  ASSERT_NE(r, nullptr);
  const QuantPoint* in = plan.find(layer, 0);
  ASSERT_NE(in, nullptr);
  EXPECT_EQ(in->params.scale.numel(), 1);
  // only this input quantized (weights FP), on the reparameterised model
  QuantPlan one = plan;
  one.points = {*in};
  at::InferenceMode guard;
  at::Tensor out_q;
  ExecHooks h;
  h.on_output = [&](const Node& n, const std::vector<at::Tensor>& o) {
    if (n.name == layer) out_q = o[0];
  };
  QuantizedModel(model(), one).run(images(), &h);
  // reference: the original model's FP input of the layer, quantized per channel with step s̃·r1_c and zero point
  // z̃ + shift_c / step_c, through the original weight and bias
  auto fp = capture_layers(model(), images());
  const auto x = fp.inputs.at(layer)[0].to(at::kDouble);
  const double s = in->params.scale.item<double>(), z = in->params.zero_point.item<double>();
  const auto step = s * r->scale.to(at::kDouble);
  const auto zc = z + at::round(r->shift.to(at::kDouble) / step);
  EXPECT_TRUE(at::allclose(r->shift.to(at::kDouble) / step, at::round(r->shift.to(at::kDouble) / step), 0, 1e-3));
  const double top = std::pow(2.0, in->spec.bits) - 1;
  const auto codes = at::clamp(at::round(x / step) + zc, 0.0, top);
  const auto xq = (codes - zc) * step;
  const Node* n = model().find_node(layer);
  const auto w = model().const_tensor(n->inputs[1]).to(at::kDouble), b = model().const_tensor(n->inputs[2]).to(at::kDouble);
  const auto ref = at::matmul(xq, w.t()) + b;
  // equal but for the rare element whose x / s_c lies on a rounding boundary, where x' / s̃ (computed in float from
  // reparameterised constants) may round the other way: one code step on one channel of one token
  const auto diff = (out_q.to(at::kDouble) - ref).abs().amax(-1);  // per token
  const double tol = 1e-4 * ref.abs().max().item<double>();
  const double tokens_off = (diff > tol).to(at::kDouble).mean().item<double>();
  std::cout << "tokens off " << tokens_off << ", max rel diff " << max_rel_diff(out_q.to(at::kDouble), ref) << "\n";
  EXPECT_LT(tokens_off, 0.01);
  EXPECT_LT(max_rel_diff(out_q.to(at::kDouble), ref), 0.05);
  // and it is not what a per-tensor quantizer of the original input would give
  const auto plain = at::matmul((at::clamp(at::round(x / s) + z, 0.0, top) - z) * s, w.t()) + b;
  EXPECT_GT(max_rel_diff(plain, ref), 1e-2);
}

TEST(RepQvit, PlansCarryTheReparameterisationAndBrokenOnesAreRejected) {
  TempDir dir;
  const std::string path = (dir / "repq.json").string();
  save_plan(plan4(), path);
  QuantPlan loaded = load_plan(path, model());
  ASSERT_EQ(loaded.reparams.size(), plan4().reparams.size());
  at::InferenceMode guard;
  EXPECT_TRUE(at::equal(QuantizedModel(model(), loaded).run(images()), QuantizedModel(model(), plan4()).run(images())));
  int log_sqrt2 = 0;
  for (const auto& p : loaded.points) log_sqrt2 += p.spec.kind == QuantKind::LogSqrt2;
  EXPECT_EQ(log_sqrt2, 12);  // softmax · v of every block
  const auto j = plan_to_json(plan4());
  auto edit_and_load = [&](const std::function<void(nlohmann::json&)>& edit) {
    auto copy = j;
    edit(copy);
    const std::string p = (dir / "broken.json").string();
    std::ofstream(p) << copy.dump();
    return error_of([&] { load_plan(p, model()); });
  };
  EXPECT_NE(edit_and_load([](nlohmann::json& c) { c["reparams"][0]["scale"]["data"][3] = -1.0; }).find("positive"),
            std::string::npos);
  EXPECT_NE(edit_and_load([](nlohmann::json& c) { c["reparams"][0]["layernorm"] = "blocks.0.attn.qkv"; }).find("not a LayerNorm"),
            std::string::npos);
  EXPECT_NE(edit_and_load([](nlohmann::json& c) { c["reparams"][1] = c["reparams"][0]; }).find("twice"), std::string::npos);
  EXPECT_NE(edit_and_load([](nlohmann::json& c) {
              c["reparams"][0]["scale"]["data"].erase(0);
              c["reparams"][0]["scale"]["shape"][0] = 191;
            }).find("channels"),
            std::string::npos);
  EXPECT_NE(edit_and_load([](nlohmann::json& c) { c["version"] = 3; }).find("version 4"), std::string::npos);
  EXPECT_NE(edit_and_load([](nlohmann::json& c) { c["reparams"][0]["layernorm"] = "norm"; }).find("not a Linear"),
            std::string::npos);
}

// An unsigned per-tensor quantizer of kind k (the log kinds).
QuantSpec unsigned_spec(int bits, QuantKind k) {
  QuantSpec s;
  s.bits = bits;
  s.symmetric = false;
  s.is_signed = false;
  s.kind = k;
  s.validate();
  return s;
}

TEST(RepQvit, LogSqrt2QuantizerFollowsItsDefinition) {
  QuantSpec s = unsigned_spec(4, QuantKind::LogSqrt2);
  EXPECT_EQ(parse_quant_kind("log_sqrt2"), QuantKind::LogSqrt2);
  QuantParams p{at::full({1}, 0.5f), at::zeros({1}), {}};
  // x / 0.5 = 1 -> c 0; 0.7 -> c = round(1.03) = 1 -> 0.5·2^-0.5; 2.0 (above the scale) -> c 0; 2^-7.5 -> c 15;
  // 2^-8 -> c 16 > 15 -> 0; 0 and negatives -> 0
  auto x = at::tensor({0.5f, 0.35f, 1.0f, 0.5f * std::pow(2.0f, -7.5f), 0.5f * std::pow(2.0f, -8.0f), 0.0f, -0.2f});
  auto want = at::tensor({0.5f, 0.5f * std::pow(2.0f, -0.5f), 0.5f, 0.5f * std::pow(2.0f, -7.5f), 0.0f, 0.0f, 0.0f});
  EXPECT_TRUE(at::allclose(fake_quant(x, s, p), want, 1e-6, 1e-9)) << fake_quant(x, s, p);
  auto codes = quantize_codes(x, s, p);
  EXPECT_EQ(codes[1].item<float>(), 1.0f);
  EXPECT_EQ(codes[3].item<float>(), 15.0f);
  EXPECT_EQ(codes[4].item<float>(), 16.0f);  // 2^b: quantizes to 0
  auto r = at::rand({4096}, at::TensorOptions().dtype(at::kFloat));
  EXPECT_TRUE(at::allclose(fake_quant(r, s, p), fake_quant_reference(r, s, p), 1e-5, 1e-7));
  s.is_signed = true;
  EXPECT_THROW(s.validate(), Error);
}

// AdaLog: x̂ = s·2^(-c/τ) − δ with c = round(-τ·log2((x + δ)/s)); τ = 1 and 2 are log2 and log√2; its fast path
// agrees with the plain-loop reference; broken parameters are refused.
TEST(AdaLog, QuantizerFollowsItsDefinition) {
  QuantSpec s = unsigned_spec(3, QuantKind::AdaLog);
  EXPECT_EQ(parse_quant_kind("adalog"), QuantKind::AdaLog);
  const auto r = at::rand({4096}) * 1.3 - 0.2;  // beyond the scale, below −δ, and everything between
  for (double tau : {1.0, 2.0}) {               // the fixed-base kinds, with no shift
    QuantSpec fixed = s;
    fixed.kind = tau == 1.0 ? QuantKind::Log2 : QuantKind::LogSqrt2;
    const QuantParams p = adalog_params(0.9, tau), f{at::full({1}, 0.9f), at::zeros({1}), {}};
    EXPECT_TRUE(at::equal(fake_quant(r, s, p), fake_quant(r, fixed, f))) << tau;
    EXPECT_TRUE(at::equal(quantize_codes(r, s, p), quantize_codes(r, fixed, f))) << tau;
  }
  // τ = 0.5 (base 4), δ = 0.25, s = 1: x = 0.75 -> y = 1 -> c 0 -> 0.75; x = 0 -> y = 0.25 -> c = round(1) -> 0.25 − δ = 0;
  // x = 1/64 − δ -> y = 2^-6 -> c 3 -> 1/64 − δ; 2^-14 − δ -> c 7 = 2^3 − 1 -> kept; 2^-16 − δ -> c 8 -> −δ; −1 -> −δ
  const QuantParams p = adalog_params(1.0, 0.5, 0.25);
  auto x = at::tensor({0.75f, 0.0f, 1.0f / 64 - 0.25f, std::pow(2.0f, -14.0f) - 0.25f, std::pow(2.0f, -16.0f) - 0.25f, -1.0f});
  auto want = at::tensor({0.75f, 0.0f, 1.0f / 64 - 0.25f, std::pow(2.0f, -14.0f) - 0.25f, -0.25f, -0.25f});
  EXPECT_TRUE(at::allclose(fake_quant(x, s, p), want, 1e-6, 1e-8)) << fake_quant(x, s, p);
  EXPECT_TRUE(at::equal(quantize_codes(x, s, p), at::tensor({0.0f, 1.0f, 3.0f, 7.0f, 8.0f, 8.0f})));
  for (double tau : {0.5, 1.5, 3.7}) {
    const QuantParams q = adalog_params(0.8, tau, 0.17);
    EXPECT_TRUE(at::allclose(fake_quant(r, s, q), fake_quant_reference(r, s, q), 1e-5, 1e-6)) << tau;
  }
  EXPECT_THROW(adalog_params(1.0, 0.1), Error);
  EXPECT_THROW(adalog_params(1.0, 9.0), Error);
  EXPECT_THROW(adalog_params(1.0, NAN), Error);
  EXPECT_THROW(adalog_params(1.0, 2.0, -0.1), Error);
  EXPECT_THROW(adalog_params(0.0, 2.0), Error);
  EXPECT_THROW(fake_quant(r, s, QuantParams{at::ones({1}), at::zeros({1}), {}}), Error);  // no base
  s.granularity = Granularity::PerChannel;
  EXPECT_THROW(s.validate(), Error);
}

// The search: at 3 bits on attention probabilities the searched base quantizes with less error than log√2 and log2
// (both on its grid); +adalog on a repqvit plan replaces the post-softmax and post-GELU quantizers where it wins,
// the plan round-trips through JSON (version 5) and refuses broken AdaLog parameters, and the integer runtime runs it
// (its AdaLog inputs in float) as the simulation does.
TEST(AdaLog, SearchedBasePlansRoundTripAndRun) {
  at::Tensor probs;
  {
    ExecHooks h;
    h.on_output = [&](const Node& n, const std::vector<at::Tensor>& outs) {
      if (n.op == OpKind::Softmax && !probs.defined()) probs = outs[0].clone();
    };
    at::InferenceMode guard;
    Executor(model()).run(images().narrow(0, 0, 2), &h);
  }
  ASSERT_TRUE(probs.defined());
  const AdaLogFit fit = fit_adalog(probs, 3, false);
  QuantSpec s = fit.spec;
  auto err = [&](QuantKind k) {
    s.kind = k;
    const double scale = fit.params.scale.item<double>();
    return (fake_quant(probs, s, QuantParams{at::full({1}, scale), at::zeros({1}), {}}) - probs).pow(2).mean().item<double>();
  };
  const double e_sqrt2 = err(QuantKind::LogSqrt2), e_log2 = err(QuantKind::Log2);
  std::printf("3-bit attention probabilities of block 0: adalog tau %.2f MSE %.3g; at its scale log-sqrt2 %.3g, log2 %.3g\n",
              fit.params.base.item<double>(), fit.error, e_sqrt2, e_log2);
  EXPECT_LT(fit.error, e_sqrt2);
  EXPECT_LE(fit.error, e_log2);

  MethodOptions o;
  o.progress = false;
  o.convention = "common";
  o.placement.wbits = o.placement.abits = 4;
  o.adalog = true;
  const QuantPlan plan = run_method(model(), images(), "repqvit", o);
  const int replaced = plan.settings.at("adalog").at("replaced").get<int>();
  int adalog_points = 0, gelu_shifted = 0;
  for (const auto& p : plan.points)
    if (p.spec.kind == QuantKind::AdaLog) {
      ++adalog_points;
      gelu_shifted += p.params.shift.item<double>() > 0;
    }
  std::printf("repqvit+adalog W4A4: %d quantizers replaced (%d post-GELU), %d kept\n", replaced, gelu_shifted,
              plan.settings.at("adalog").at("kept").get<int>());
  EXPECT_EQ(adalog_points, replaced);
  EXPECT_GT(replaced, 0);
  EXPECT_LE(replaced, 24);  // 12 post-softmax + 12 post-GELU inputs

  TempDir dir;
  save_plan(plan, (dir / "p.json").string());
  const QuantPlan back = load_plan((dir / "p.json").string(), model());
  at::InferenceMode guard;
  const auto x = images().narrow(0, 0, 2);
  const auto want = QuantizedModel(model(), plan).run(x);
  EXPECT_TRUE(at::equal(QuantizedModel(model(), back).run(x), want));
  const auto j = nlohmann::json::parse(read_file(dir / "p.json"));
  size_t first = 0;
  while (j["points"][first]["spec"]["kind"] != "adalog") ++first;
  auto broken = [&](const std::function<void(nlohmann::json&)>& edit) {
    auto c = j;
    edit(c["points"][first]);
    write_file(dir / "b.json", c.dump());
    return error_of([&] { load_plan((dir / "b.json").string(), model()); });
  };
  EXPECT_NE(broken([](nlohmann::json& p) { p["base"]["data"][0] = 20.0; }).find("0.25..8"), std::string::npos);
  EXPECT_NE(broken([](nlohmann::json& p) { p.erase("base"); }).find("base"), std::string::npos);
  EXPECT_NE(broken([](nlohmann::json& p) { p["shift"]["data"][0] = -1.0; }).find("shift"), std::string::npos);
  EXPECT_NE(broken([](nlohmann::json& p) { p["spec"]["kind"] = "uniform"; }).find("only an adalog"), std::string::npos);
  auto old = j;
  old["version"] = 4;
  write_file(dir / "old.json", old.dump());
  EXPECT_NE(error_of([&] { load_plan((dir / "old.json").string(), model()); }).find("version 5"), std::string::npos);

  if (int8_runtime_available()) {
    Int8Model m(model(), plan);
    // every GEMM native: the AdaLog inputs as two fixed-point grids, the post-GELU shift folded into fc2's bias
    EXPECT_TRUE(m.stats().fallbacks.empty()) << m.stats().fallbacks[0];
    EXPECT_EQ(m.stats().adalog_inputs, adalog_points);
    EXPECT_EQ(m.stats().log2_inputs, 24 - adalog_points);  // the log√2 quantizers AdaLog did not replace
    const auto got = m.run(x);
    // judged against the simulation's own deviation under 1e-6 noise on every constant (test_int8_runtime.cpp)
    Graph perturbed = model();
    at::manual_seed(11);
    for (auto& c : perturbed.consts)
      if (c.defined() && c.is_floating_point()) c = c * (1 + 1e-6 * at::randn_like(c));
    const double chaos = (want - QuantizedModel(perturbed, plan).run(x)).abs().mean().item<double>();
    const double d = (got - want).abs().mean().item<double>();
    std::printf("repqvit+adalog W4A4: mean |int8 - simulation| %.3g, simulation under 1e-6 noise %.3g\n", d, chaos);
    EXPECT_LE(d, 2 * chaos + 1e-3);
  }
}

// repqvit+erq: every Linear's weight updated (ridge regression on its quantized input), carried by the plan, used by
// the simulation and the integer runtime, refused when it does not fit.
TEST(RepQvit, ErqWeightUpdatesAreCarriedAndUsed) {
  MethodOptions o;
  o.progress = false;
  o.convention = "common";  // symmetric weights: the integer runtime's GEMMs
  o.erq_lambda = 0.1;
  const QuantPlan plan = run_method(model(), images(), "repqvit", o);
  EXPECT_EQ(plan.weights.size(), 49u);  // 12 blocks x (qkv, proj, fc1, fc2) + head
  EXPECT_EQ(plan.settings.at("erq_updated_weights").get<int>(), 49);
  const auto changed = reparam_constants(model(), plan);
  for (const auto& [node, w] : plan.weights) {
    const int v = model().find_node(node)->inputs[1];
    const auto& before = changed.count(v) ? changed.at(v) : model().const_tensor(v);
    const double rel = ((w - before).norm() / before.norm()).item<double>();
    EXPECT_TRUE(at::isfinite(w).all().item<bool>()) << node;
    EXPECT_GT(rel, 1e-6) << node;  // updated
    EXPECT_LT(rel, 0.5) << node;   // but near the model's weight (the ridge term)
  }
  at::InferenceMode guard;
  const auto sim = QuantizedModel(model(), plan).run(images());
  QuantPlan without = plan;
  without.weights.clear();
  EXPECT_FALSE(at::equal(sim, QuantizedModel(model(), without).run(images())));
  // saved and loaded: the same model
  TempDir dir;
  const std::string path = (dir / "erq.json").string();
  save_plan(plan, path);
  EXPECT_TRUE(at::equal(QuantizedModel(model(), load_plan(path, model())).run(images()), sim));
  auto j = plan_to_json(plan);
  auto broken = [&](const std::function<void(nlohmann::json&)>& edit) {
    auto c = j;
    edit(c);
    std::ofstream(path) << c.dump();
    return error_of([&] { load_plan(path, model()); });
  };
  EXPECT_NE(broken([](nlohmann::json& c) {
              auto& w = c["weights"]["head"];
              w["shape"][1] = 96;
              w["data"].erase(w["data"].begin() + 96000, w["data"].end());
            }).find("wrong shape"),
            std::string::npos);
  EXPECT_NE(broken([](nlohmann::json& c) { c["weights"]["blocks.0.norm1"] = c["weights"]["head"]; }).find("not a Linear"),
            std::string::npos);
  EXPECT_NE(broken([](nlohmann::json& c) { c["weights"]["head"]["data"][5] = 1e9; }).find("1e6"), std::string::npos);
  // the integer runtime quantizes the updated weights: it agrees with the simulation
  if (int8_runtime_available()) {
    Int8Model m(model(), plan);
    auto got = m.run(images());
    EXPECT_TRUE(at::equal(got.argmax(1), sim.argmax(1)));
    // judged against the simulation's own deviation under 1e-6 noise on every constant (test_int8_runtime.cpp)
    Graph perturbed = model();
    at::manual_seed(11);
    for (auto& c : perturbed.consts)
      if (c.defined() && c.is_floating_point()) c = c * (1 + 1e-6 * at::randn_like(c));
    const double chaos = (sim - QuantizedModel(perturbed, plan).run(images())).abs().mean().item<double>();
    const double d = (got - sim).abs().mean().item<double>();
    std::cout << "repqvit+erq W8A8: mean |int8 - simulation| " << d << ", simulation under 1e-6 noise " << chaos << "\n";
    EXPECT_LE(d, 2 * chaos + 1e-3);
  }
}

TEST(RepQvit, HeadwiseMatMulInputsGetOneStepPerHead) {
  const QuantPlan plan = repqvit_plan(4, [](MethodOptions& o) { o.matmul_per_head = true; });
  EXPECT_EQ(plan.settings.at("matmul_inputs").get<std::string>(), "per head");
  int per_head = 0, log_inputs = 0, spread = 0;
  for (const auto& p : plan.points) {
    if (p.weight || model().find_node(p.node)->op != OpKind::MatMul) continue;
    if (p.spec.kind != QuantKind::Uniform) {
      ++log_inputs;  // the post-softmax input keeps log√2
      EXPECT_EQ(p.spec.granularity, Granularity::PerTensor) << p.node;
      continue;
    }
    ++per_head;
    EXPECT_EQ(p.spec.granularity, Granularity::PerHead) << p.node;
    ASSERT_EQ(p.params.scale.numel(), 3) << p.node;  // DeiT-Tiny: 3 heads
    ASSERT_EQ(p.params.zero_point.numel(), 3) << p.node;
    EXPECT_TRUE((p.params.scale > 0).all().item<bool>()) << p.node;
    spread += p.params.scale.max().item<double>() > 1.05 * p.params.scale.min().item<double>();
  }
  EXPECT_EQ(per_head, 36);  // q, kᵀ and v of 12 blocks
  EXPECT_EQ(log_inputs, 12);
  EXPECT_GT(spread, 18);    // the heads' ranges differ: most inputs get distinct steps
  at::InferenceMode guard;
  const auto sim = QuantizedModel(model(), plan).run(images());
  EXPECT_TRUE(at::isfinite(sim).all().item<bool>());
  EXPECT_FALSE(at::equal(sim, QuantizedModel(model(), plan4()).run(images())));  // the per-tensor plan differs
  TempDir dir;
  const std::string path = (dir / "headwise.json").string();
  save_plan(plan, path);
  EXPECT_TRUE(at::equal(QuantizedModel(model(), load_plan(path, model())).run(images()), sim));
}

TEST(RepQvit, WeightMseClippingBeatsMinMaxOnEveryChannel) {
  const QuantPlan plan = repqvit_plan(3, [](MethodOptions& o) { o.weight_mse = true; });
  EXPECT_EQ(plan.settings.at("weight_clipping").get<std::string>(), "least squared error, 81 ratios");
  const auto changed = reparam_constants(model(), plan);  // the reparameterised weights the points quantize
  double err_mse = 0, err_minmax = 0;
  int points = 0;
  for (const auto& p : plan.points) {
    if (!p.weight) continue;
    const int v = model().find_node(p.node)->inputs[static_cast<size_t>(p.slot)];
    const at::Tensor w = (changed.count(v) ? changed.at(v) : model().const_tensor(v)).to(at::kFloat);
    ASSERT_EQ(p.spec.granularity, Granularity::PerChannel) << p.node;
    const QuantParams minmax = params_from_range(reduce_amin(w, p.spec), reduce_amax(w, p.spec), p.spec);
    auto row_err = [&](const QuantParams& q) { return (fake_quant(w, p.spec, q) - w).pow(2).reshape({w.size(0), -1}).mean(1); };
    const auto e = row_err(p.params), e0 = row_err(minmax);
    EXPECT_TRUE((e <= e0 * (1 + 1e-5) + 1e-12).all().item<bool>()) << p.node;  // α = 1 is a candidate
    err_mse += e.sum().item<double>();
    err_minmax += e0.sum().item<double>();
    ++points;
  }
  EXPECT_EQ(points, 50);
  std::cout << "3-bit weights, squared error: least-squares clipping " << err_mse << ", min/max " << err_minmax << "\n";
  EXPECT_LT(err_mse, 0.8 * err_minmax);  // at 3 bits the optimum clips well inside the extremes
}

TEST(RepQvit, ActivationMseClippingCutsLongTailsOnly) {
  QuantSpec s;
  s.bits = 3;
  s.symmetric = false;
  s.is_signed = false;
  s.validate();
  at::manual_seed(3);
  auto x = at::randn({2, 64, 64});
  x.view({-1}).narrow(0, 0, 8).mul_(30);  // a few outliers: a long tail
  const auto err = [&](const at::Tensor& t, const QuantParams& p) { return (fake_quant(t, s, p) - t).pow(2).mean().item<double>(); };
  const QuantParams minmax = params_from_range(reduce_amin(x, s), reduce_amax(x, s), s);
  const QuantParams p = search_activation_mse(x, s);
  EXPECT_LT(err(x, p), 0.75 * err(x, minmax));  // 0.66 against 1.03 here
  const double clipped_top = ((s.qmax() - p.zero_point) * p.scale).item<double>();
  EXPECT_LT(clipped_top, 0.3 * x.max().item<double>());  // the outliers are clipped
  // a short-tailed input at 8 bits keeps (nearly) its whole range
  s.bits = 8;
  s.validate();
  const auto u = at::rand({2, 64, 64});
  const QuantParams q = search_activation_mse(u, s);
  EXPECT_GE(((s.qmax() - q.zero_point) * q.scale).item<double>(), 0.95 * u.max().item<double>());
  EXPECT_LE(err(u, q), err(u, params_from_range(reduce_amin(u, s), reduce_amax(u, s), s)) * (1 + 1e-6));
}

// The quantiles of the searches (RepQ-ViT's percentiles, AdaLog's top quantiles) come from the ordered ends of each
// row; they equal, bit for bit, the same interpolation on the fully sorted rows, with ties, for rows too short to
// have separate ends and for long ones; a rank between the kept ends is refused, not guessed.
TEST(Search, RowTailsEqualAFullSort) {
  at::manual_seed(3);
  // n - 1 a multiple of 1000 (1001, 10001, 100001) leaves the bottom end no spare rank: a k one too small fails there
  for (int64_t n : {1, 2, 5, 1000, 1001, 10001, 100001, 100003}) {
    const auto rows = at::round(at::randn({3, n}, at::kDouble).pow(3) * 100) / 100;  // long tails and ties
    const auto sorted = std::get<0>(rows.sort(1));
    const search::RowTails tails(rows, 0.999);
    // the complements as the searches compute them (1.0 - 0.999 is not 1e-3 in floating point)
    for (double q : {0.0, 1e-5, 1e-4, 1e-3, 1.0 - 0.999, 1.0 - 0.9999, 1.0 - 0.99999, 0.999, 0.9999, 0.99999, 1.0}) {
      const double pos = q * static_cast<double>(n - 1);
      const int64_t lo = static_cast<int64_t>(std::floor(pos)), hi = std::min(lo + 1, n - 1);
      const auto expect = sorted.select(1, lo) * (1.0 - (pos - static_cast<double>(lo))) + sorted.select(1, hi) * (pos - static_cast<double>(lo));
      EXPECT_TRUE(at::equal(tails.quantile(q), expect)) << "n " << n << " q " << q;
    }
    EXPECT_TRUE(at::equal(tails.min(), std::get<0>(rows.min(1))));
    EXPECT_TRUE(at::equal(tails.max(), std::get<0>(rows.max(1))));
    if (n >= 100001) EXPECT_THROW(tails.rank(n / 2), Error);
  }
  EXPECT_THROW(search::RowTails(at::zeros({4}), 0.999), Error);
  EXPECT_THROW(search::RowTails(at::zeros({2, 3}), 0.2), Error);
}


// Each two-input layer's output error, recomputed here from the inputs the searched plan b's model feeds it (its
// unquantized inputs, captured in a run of that model), with b's quantizers and with the ones the method left (a):
// never larger with b's, layer by layer; quantizer kinds unchanged; the stage's record agrees. Returns how many
// uniform and how many log quantizers b moved.
static std::pair<int, int> check_output_search(const QuantPlan& a, const QuantPlan& b) {
  const auto& rec = b.settings.at("output_search");
  EXPECT_EQ(rec.at("layers").get<int>(), 74);  // patch embedding, 6 a block, head
  EXPECT_LT(rec.at("output_error_searched").get<double>(), 0.9 * rec.at("output_error_method").get<double>());
  EXPECT_EQ(a.reparams.size(), b.reparams.size());
  for (size_t k = 0; k < a.reparams.size() && k < b.reparams.size(); ++k)
    EXPECT_TRUE(at::equal(a.reparams[k].scale, b.reparams[k].scale));

  const Graph g = with_reparams(model(), b);
  std::map<int, at::Tensor> vals;
  ExecHooks capture;
  capture.on_output = [&](const Node& n, const std::vector<at::Tensor>& outs) {
    for (size_t k = 0; k < outs.size(); ++k) vals[n.outputs[k]] = outs[k];
  };
  at::InferenceMode guard;
  QuantizedModel(model(), b).run(images(), &capture);
  vals[g.input] = images();
  int layers = 0, moved = 0, logs_moved = 0;
  double sum_a = 0, sum_b = 0;
  for (const auto& n : g.nodes) {
    const QuantPoint *pa0 = a.find(n.name, 0), *pa1 = a.find(n.name, 1), *pb0 = b.find(n.name, 0), *pb1 = b.find(n.name, 1);
    if (!pb0 || !pb1) continue;
    EXPECT_TRUE(pa0 && pa1) << n.name;
    if (!pa0 || !pa1) continue;
    std::vector<at::Tensor> args;
    for (int v : n.inputs) args.push_back(v < 0 ? at::Tensor() : g.is_const(v) ? g.const_tensor(v) : vals.at(v));
    const auto out = run_node(n, args, images().size(0))[0].to(at::kDouble);
    auto error = [&](const QuantPoint* p0, const QuantPoint* p1) {
      auto q = args;
      q[0] = quantize_point(*p0, args[0]);
      q[1] = quantize_point(*p1, args[1]);
      return (run_node(n, q, images().size(0))[0].to(at::kDouble) - out).pow(2).sum().item<double>();
    };
    const double ea = error(pa0, pa1), eb = error(pb0, pb1);
    EXPECT_LE(eb, ea * (1 + 1e-4) + 1e-9) << n.name;
    sum_a += ea;
    sum_b += eb;
    ++layers;
    for (auto [pa, pb] : {std::pair{pa0, pb0}, std::pair{pa1, pb1}}) {
      EXPECT_EQ(pa->spec.kind, pb->spec.kind) << n.name;
      bool same = at::equal(pa->params.scale, pb->params.scale) && at::equal(pa->params.zero_point, pb->params.zero_point);
      if (pa->params.base.defined() || pb->params.base.defined())
        same = same && pa->params.base.defined() && pb->params.base.defined() && at::equal(pa->params.base, pb->params.base);
      if (pa->spec.kind == QuantKind::Uniform) moved += !same;
      else logs_moved += !same;
    }
  }
  EXPECT_EQ(layers, 74);
  std::cout << "3-bit layer output error, summed: method " << sum_a << ", output search " << sum_b << " (stage's record: "
            << rec.at("output_error_method").get<double>() << " -> " << rec.at("output_error_searched").get<double>() << ")\n";
  // the record measures what was kept, on the inputs the searched model produces (not run_node's ATen kernels but
  // QuantizedModel's oneDNN ones here: float rounding apart, which at 3 bits flips a few codes upstream and moves
  // the sums by up to ~0.1%; the method's and the searched sums differ by >30%)
  EXPECT_NEAR(sum_b, rec.at("output_error_searched").get<double>(), 5e-3 * sum_b);
  EXPECT_NEAR(sum_a, rec.at("output_error_method").get<double>(), 5e-3 * sum_a);
  return {moved, logs_moved};
}

static void adalog_start(MethodOptions& o) {
  o.adalog = true;
  o.matmul_per_head = true;
  o.weight_mse = true;
}

// The output search's three stages, each against the method's plan (a) and computed from the same start. One test, so
// that a and +osearch's plan are computed once: each test runs in its own process, and as three tests they were
// computed three and two times (about 1.5 minutes of CI).
TEST(RepQvit, OutputSearchesNeverRaiseALayersOutputError) {
  const QuantPlan a = repqvit_plan(3, adalog_start);
  const QuantPlan b = repqvit_plan(3, [&](MethodOptions& o) {
    adalog_start(o);
    o.output_search = true;
  });
  {
    // +osearch: only uniform quantizers move, most of them at 3 bits, and no layer's output error grows; plans whose
    // LayerNorm or softmax run in integers, and plans already reconstructed, are refused.
    SCOPED_TRACE("+osearch");
    EXPECT_FALSE(b.settings.at("output_search").contains("adalog"));
    EXPECT_FALSE(b.settings.at("output_search").contains("ends"));
    const auto [moved, logs_moved] = check_output_search(a, b);
    EXPECT_GT(moved, 74);  // most of the 124 uniform quantizers move at 3 bits (148 points, 24 AdaLog)
    EXPECT_EQ(logs_moved, 0) << "a log quantizer moved without +oslog";

    MethodOptions f;
    f.progress = false;
    f.output_search = true;
    const std::string why = error_of([&] { run_method(model(), images(), "fqvit", f); });
    EXPECT_NE(why.find("+osearch"), std::string::npos) << why;
    EXPECT_NE(why.find("integers"), std::string::npos) << why;
    // a plan already reconstructed (learned rounding) is refused too
    QuantPlan coded = b;
    for (auto& p : coded.points)
      if (p.weight) {
        p.codes = at::zeros({1});  // only its presence matters to the refusal
        break;
      }
    const std::string why2 = error_of([&] { output_search(model(), images(), coded, f); });
    EXPECT_NE(why2.find("already reconstructed"), std::string::npos) << why2;
  }
  {
    // +osends: each end of the asymmetric uniform quantizers searched apart after the common α; no layer's output
    // error grows against the method's, the record counts the points, and the summed error ends below +osearch's own.
    SCOPED_TRACE("+osends");
    const QuantPlan e = repqvit_plan(3, [&](MethodOptions& o) {
      adalog_start(o);
      o.output_search = o.output_search_ends = true;
    });
    const auto [moved, logs_moved] = check_output_search(a, e);
    EXPECT_GT(moved, 74);
    EXPECT_EQ(logs_moved, 0);
    const auto& rec = e.settings.at("output_search").at("ends");
    int asymmetric = 0;  // uniform, asymmetric points of the 74 two-input layers (all of repqvit's activations, its weights)
    for (const auto& p : e.points)
      if (p.spec.kind == QuantKind::Uniform && !p.spec.symmetric && e.find(p.node, 0) && e.find(p.node, 1)) ++asymmetric;
    EXPECT_GT(asymmetric, 0);
    EXPECT_EQ(rec.at("searched").get<int>(), asymmetric);
    EXPECT_GT(rec.at("moved").get<int>(), asymmetric / 4) << "at 3 bits the ends should move off the common α often";
    EXPECT_LE(rec.at("moved").get<int>(), rec.at("searched").get<int>());
    // in each round the ends start where the common α put them, but a layer's inputs differ as the layers before it
    // differ, so only the sums are compared
    const double with_alpha = b.settings.at("output_search").at("output_error_searched").get<double>();
    const double with_ends = e.settings.at("output_search").at("output_error_searched").get<double>();
    std::cout << "3-bit layer output error, summed: +osearch " << with_alpha << ", +osends " << with_ends << "\n";
    EXPECT_LT(with_ends, with_alpha);
  }
  {
    // +oslog: the AdaLog quantizers are searched in the same pass (each layer's output error still never grows,
    // against the method's quantizers), the chosen ones are grid candidates, and the record lists them; the uniform
    // ones move too.
    SCOPED_TRACE("+oslog");
    const QuantPlan c = repqvit_plan(3, [&](MethodOptions& o) {
      adalog_start(o);
      o.output_search = o.output_search_log = true;
    });
    const auto [moved, logs_moved] = check_output_search(a, c);
    EXPECT_GT(moved, 74);
    const auto& rec = c.settings.at("output_search").at("adalog");
    EXPECT_EQ(rec.at("searched").get<int>(), 24);  // 12 post-softmax, 12 post-GELU
    EXPECT_EQ(rec.at("moved").get<int>(), logs_moved);
    EXPECT_GT(logs_moved, 12) << "at 3 bits the output error should move most AdaLog quantizers off their input fit";
    const auto taus = rec.at("taus").get<std::vector<double>>();
    for (const auto& p : c.points) {
      if (p.spec.kind != QuantKind::AdaLog) continue;
      const auto& chosen = rec.at("chosen").at(p.node);
      EXPECT_DOUBLE_EQ(chosen.at("tau").get<double>(), p.params.base.item<double>()) << p.node;
      EXPECT_DOUBLE_EQ(chosen.at("scale").get<double>(), p.params.scale.item<double>()) << p.node;
      const double tau = p.params.base.item<double>();  // stored in float
      if (chosen.at("moved").get<bool>())
        EXPECT_TRUE(std::any_of(taus.begin(), taus.end(), [&](double t) { return std::abs(t - tau) < 1e-6; })) << p.node << ": τ " << tau << " off the grid";
    }
  }
}
