// The reconstruction engine (recon/): the trainable quantizers' gradients against finite differences, AdaRound's
// codes, the engine on a tiny model (loss lowered, deterministic, errors), the blocks it cuts DeiT-Tiny into,
// and learned codes in plans; and, on the same tiny model, how the output search (+osearch) groups a per-channel input.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <iostream>

#include "test_util.h"
#include "vitq/graph/executor.h"
#include "vitq/graph/passes.h"
#include "vitq/methods/method.h"
#include "vitq/models/model_loader.h"
#include "vitq/quant/fake_quant.h"
#include "vitq/quant/quantizer.h"
#include "vitq/recon/learnable.h"
#include "vitq/recon/recon.h"
#include "vitq/util/error.h"

using namespace vitq;
using namespace vitq::test;

namespace {

at::Tensor randn(std::vector<int64_t> shape, uint64_t seed, double scale = 1.0) {
  at::manual_seed(seed);
  return at::randn(shape) * scale;
}

// image [B, 3, 4, 4] -> conv 1x1 (3->8) -> tokens [B, 16, 8] -> LN -> fc1 (8->16) -> GELU -> fc2 (16->8) -> add
// -> LN -> mean over tokens -> head (8->5)
Graph tiny_vit() {
  Graph g;
  g.meta.name = "tiny_vit";
  g.input = g.add_value("input");
  auto c = [&](const std::string& n, at::Tensor t) { return g.add_const(n, std::move(t)); };
  int x = g.out(g.add_node(OpKind::Conv2d, "patch_embed.proj",
                           {g.input, c("patch_embed.proj.weight", randn({8, 3, 1, 1}, 1, 0.5)), c("patch_embed.proj.bias", randn({8}, 2, 0.1))}));
  x = g.out(g.add_node(OpKind::Reshape, "tokens", {x}, 1, {{"shape", std::vector<int64_t>{1, 8, 16}}, {"batch_mult", std::vector<int64_t>{1, 0, 0}}}));
  x = g.out(g.add_node(OpKind::Transpose, "tokens_t", {x}, 1, {{"perm", std::vector<int64_t>{0, 2, 1}}}));
  int h = g.out(g.add_node(OpKind::LayerNorm, "blocks.0.norm", {x, c("blocks.0.norm.weight", at::ones({8})), c("blocks.0.norm.bias", at::zeros({8}))}, 1,
                           {{"axis", int64_t{-1}}, {"epsilon", 1e-5}}));
  h = g.out(g.add_node(OpKind::Linear, "blocks.0.mlp.fc1", {h, c("blocks.0.mlp.fc1.weight", randn({16, 8}, 3, 0.4)), c("blocks.0.mlp.fc1.bias", randn({16}, 4, 0.1))}));
  h = g.out(g.add_node(OpKind::Gelu, "blocks.0.mlp.act", {h}));
  h = g.out(g.add_node(OpKind::Linear, "blocks.0.mlp.fc2", {h, c("blocks.0.mlp.fc2.weight", randn({8, 16}, 5, 0.3)), c("blocks.0.mlp.fc2.bias", randn({8}, 6, 0.1))}));
  x = g.out(g.add_node(OpKind::Add, "blocks.0.add", {x, h}));
  x = g.out(g.add_node(OpKind::LayerNorm, "norm", {x, c("norm.weight", at::ones({8})), c("norm.bias", at::zeros({8}))}, 1,
                       {{"axis", int64_t{-1}}, {"epsilon", 1e-5}}));
  x = g.out(g.add_node(OpKind::ReduceMean, "pool", {x}, 1, {{"axes", std::vector<int64_t>{1}}, {"keepdims", int64_t{0}}}));
  g.output = g.out(g.add_node(OpKind::Linear, "head", {x, c("head.weight", randn({5, 8}, 7, 0.5)), c("head.bias", at::zeros({5}))}));
  g.meta.preprocess.input_height = g.meta.preprocess.input_width = 4;
  annotate_roles(g);
  return g;
}

at::Tensor tiny_images(int64_t n = 16) { return randn({n, 3, 4, 4}, 11); }

MethodOptions quiet_options(int bits) {
  MethodOptions o;
  o.progress = false;
  o.placement.wbits = o.placement.abits = bits;
  return o;
}

QuantPlan minmax_plan(const Graph& g, const at::Tensor& images, int bits) { return run_method(g, images, "minmax", quiet_options(bits)); }

// The tiny model, its images, a 4-bit min/max plan and the plan's blocks: where the block-mode tests below start.
struct BlockStart {
  Graph g = tiny_vit();
  at::Tensor images = tiny_images();
  QuantPlan plan = minmax_plan(g, images, 4);
  std::vector<recon::Block> blocks = recon::plan_blocks(g, plan, "block");
};

recon::ReconOptions quick_recon(const std::string& mode = "layer") {
  recon::ReconOptions o;
  o.mode = mode;
  o.iters = 60;
  o.batch = 4;
  o.loss = "mse";
  o.progress = false;
  o.lr_round = 5e-2;
  o.lr_scale = 1e-2;
  return o;
}

// Central difference of f at x along every element (double precision).
at::Tensor numeric_grad(const std::function<at::Tensor(const at::Tensor&)>& f, const at::Tensor& x, double eps = 1e-6) {
  auto g = at::zeros_like(x);
  auto flat = x.reshape({-1});
  auto gf = g.reshape({-1});
  for (int64_t i = 0; i < flat.numel(); ++i) {
    auto xp = flat.clone(), xm = flat.clone();
    xp[i] += eps;
    xm[i] -= eps;
    gf[i] = (f(xp.reshape(x.sizes())).sum() - f(xm.reshape(x.sizes())).sum()).item<double>() / (2 * eps);
  }
  return g;
}

}  // namespace

// LSQ: the gradient autograd gives through the straight-through round equals the derivative of the same map with
// the rounding residual held fixed (round(v) = v + r0), checked by finite differences — for the step, the zero
// point and the input, with elements inside the grid and clamped at both ends.
TEST(ReconGradients, LsqStepZeroPointAndInputMatchFiniteDifferences) {
  QuantSpec s;
  s.bits = 4;
  s.symmetric = false;
  s.is_signed = false;
  const double s0 = 0.13, z0 = 5.0;
  auto x = (randn({60}, 21, 1.5)).to(at::kDouble);
  {  // no code exactly on the grid's ends, where the clamp has its kink and finite differences are one-sided
    auto code = at::round(x / s0) + z0;
    x = x.masked_select((code != 0.0) & (code != 15.0)).narrow(0, 0, 40).contiguous();
  }
  auto r0 = (at::round(x / s0) - x / s0);  // frozen residual
  auto surrogate = [&](const at::Tensor& xx, double sc, double zp) {
    return (at::clamp(xx / sc + r0 + zp, 0.0, 15.0) - zp) * sc;
  };
  auto weights = randn({40}, 22).to(at::kDouble);  // a random linear read-out of the output
  auto xs = x.clone().set_requires_grad(true);
  auto sc = at::full({1}, s0, at::kDouble).set_requires_grad(true);
  auto zp = at::full({1}, z0, at::kDouble).set_requires_grad(true);
  (recon::lsq_fake_quant(xs, s, sc, zp) * weights).sum().backward();
  const double eps = 1e-7;
  const double ds = ((surrogate(x, s0 + eps, z0) - surrogate(x, s0 - eps, z0)) * weights).sum().item<double>() / (2 * eps);
  EXPECT_NEAR(sc.grad().item<double>(), ds, 1e-6 * std::max(1.0, std::abs(ds)));
  // the zero point is rounded straight-through too: d/dzp of the surrogate with zp continuous
  const double dz = ((surrogate(x, s0, z0 + eps) - surrogate(x, s0, z0 - eps)) * weights).sum().item<double>() / (2 * eps);
  EXPECT_NEAR(zp.grad().item<double>(), dz, 1e-6 * std::max(1.0, std::abs(dz)));
  auto dx = numeric_grad([&](const at::Tensor& xx) { return surrogate(xx, s0, z0) * weights; }, x, 1e-7);
  EXPECT_LE((xs.grad() - dx).abs().max().item<double>(), 1e-6);
  // and the LSQ formula itself: round(v) - v inside, the clamped code minus zp outside
  auto v = x / s0 + z0;
  auto inside = (at::round(x / s0) + z0 >= 0) & (at::round(x / s0) + z0 <= 15);
  ASSERT_TRUE(inside.any().item<bool>());
  ASSERT_FALSE(inside.all().item<bool>());
  auto per_elem = at::where(inside, at::round(x / s0) - x / s0, at::clamp(at::round(v), 0.0, 15.0) - z0);
  EXPECT_NEAR(sc.grad().item<double>(), (per_elem * weights).sum().item<double>(), 1e-9);
  // straight-through: 1 inside the grid, 0 where clamped
  EXPECT_TRUE(at::equal(xs.grad(), at::where(inside, weights, at::zeros_like(weights))));
}

// AdaLog with a trainable scale and base: the forward pass is fake_quant's with those parameters, and autograd's
// gradients (scale, τ, input) equal finite differences of the same map with the rounding residual and the
// flushed / clipped masks held fixed — on inputs below the smallest level (flushed to 0 − δ), inside the grid,
// and above the scale (c = 0). Inside the grid the scale gets no gradient (in log terms it moves every level
// with the input) and τ gets LSQ's rounding error, (c − u)·ln 2·x̂'/τ², which is not zero.
TEST(ReconGradients, AdaLogScaleAndBaseMatchFiniteDifferences) {
  QuantSpec s;
  s.kind = QuantKind::AdaLog;
  s.bits = 3;
  s.symmetric = false;
  s.is_signed = false;
  const double s0 = 0.9, t0 = 1.7, delta = 0.05;
  auto x = at::cat({(randn({200}, 25, 0.3).abs() - delta).to(at::kDouble), at::full({3}, 1.4, at::kDouble),
                    at::full({2}, -delta - 0.01, at::kDouble)});
  const double top = 7.0;
  auto u0 = -t0 * at::log2(at::clamp_min((x + delta) / s0, 1e-30));
  {  // nothing within 1e-4 of a rounding boundary, where finite differences would cross it
    auto frac = u0 - at::floor(u0);
    x = x.masked_select((frac - 0.5).abs() > 1e-4).contiguous();
    u0 = -t0 * at::log2(at::clamp_min((x + delta) / s0, 1e-30));
  }
  const auto r0 = at::round(u0) - u0;
  const auto above = at::round(u0) < 0, keep = ((x + delta) > 0) & (at::round(u0) <= top);
  ASSERT_TRUE(above.any().item<bool>());
  ASSERT_TRUE((~keep).any().item<bool>());
  ASSERT_TRUE((keep & ~above).any().item<bool>());
  auto surrogate = [&](const at::Tensor& xx, double sc, double tau) {
    auto u = -tau * at::log2(at::clamp_min((xx + delta) / sc, 1e-30));
    auto c = at::where(above, at::zeros_like(u), u + r0);
    return at::where(keep, sc * at::exp2(-c / tau), at::zeros_like(u)) - delta;
  };
  QuantParams qp = adalog_params(s0, t0, delta);
  auto xs = x.clone().set_requires_grad(true);
  auto sc = at::full({1}, s0, at::kDouble).set_requires_grad(true);
  auto tau = at::full({1}, t0, at::kDouble).set_requires_grad(true);
  auto q = recon::adalog_fake_quant(xs, s, sc, tau, delta);
  EXPECT_LE((q.detach().to(at::kFloat) - fake_quant(x.to(at::kFloat), s, qp)).abs().max().item<double>(), 1e-6);
  EXPECT_LE((q.detach() - surrogate(x, s0, t0)).abs().max().item<double>(), 1e-12);
  auto weights = randn({x.size(0)}, 26).to(at::kDouble);
  (q * weights).sum().backward();
  const double eps = 1e-7;
  const double ds = ((surrogate(x, s0 + eps, t0) - surrogate(x, s0 - eps, t0)) * weights).sum().item<double>() / (2 * eps);
  const double dt = ((surrogate(x, s0, t0 + eps) - surrogate(x, s0, t0 - eps)) * weights).sum().item<double>() / (2 * eps);
  EXPECT_NEAR(sc.grad().item<double>(), ds, 1e-6 * std::max(1.0, std::abs(ds)));
  EXPECT_NEAR(tau.grad().item<double>(), dt, 1e-6 * std::max(1.0, std::abs(dt)));
  EXPECT_GT(std::abs(dt), 1e-3);
  // the scale's gradient comes from the clipped elements alone: 1 each (x̂ = s there)
  EXPECT_NEAR(sc.grad().item<double>(), (weights * above.to(at::kDouble) * keep.to(at::kDouble)).sum().item<double>(), 1e-9);
  auto dx = numeric_grad([&](const at::Tensor& xx) { return surrogate(xx, s0, t0) * weights; }, x, 1e-8);
  EXPECT_LE((xs.grad() - dx).abs().max().item<double>(), 1e-5);
  EXPECT_TRUE(at::isfinite(xs.grad()).all().item<bool>());
}

// AdaRound: the soft weight and the regulariser are smooth in V; their autograd gradients match finite
// differences (V inside the rectified sigmoid's unclamped range).
TEST(ReconGradients, AdaRoundWeightAndRegulariserMatchFiniteDifferences) {
  QuantSpec s;
  s.bits = 4;
  auto w = randn({6, 5}, 31, 0.4).to(at::kDouble);
  auto scale = at::full({6, 1}, 0.05, at::kDouble);
  auto zp = at::zeros({6, 1}, at::kDouble);
  auto w_floor = at::floor(w / scale);
  at::manual_seed(32);
  auto v0 = (at::rand({6, 5}) * 4.0 - 2.0).to(at::kDouble);
  auto r = randn({6, 5}, 33).to(at::kDouble);
  auto v = v0.clone().set_requires_grad(true);
  (recon::adaround_weight(w_floor, v, scale, zp, s, false) * r).sum().backward();
  auto num = numeric_grad([&](const at::Tensor& vv) { return recon::adaround_weight(w_floor, vv, scale, zp, s, false) * r; }, v0);
  EXPECT_LE((v.grad() - num).abs().max().item<double>(), 1e-6);
  for (double beta : {20.0, 6.0, 2.0}) {
    auto v2 = v0.clone().set_requires_grad(true);
    recon::rounding_regularizer(v2, beta).backward();
    auto num2 = numeric_grad([&](const at::Tensor& vv) { return recon::rounding_regularizer(vv, beta); }, v0);
    EXPECT_LE((v2.grad() - num2).abs().max().item<double>(), 1e-5 * std::max(1.0, num2.abs().max().item<double>())) << beta;
  }
  // h(V) inverts: the start is the weight itself (soft), and the hard weight rounds to nearest
  auto frac = w / scale - w_floor;
  auto vi = recon::rect_sigmoid_inverse(frac);
  EXPECT_LE((recon::adaround_weight(w_floor, vi, scale, zp, s, false) - at::clamp(w, -7 * 0.05, 7 * 0.05)).abs().max().item<double>(), 1e-6);
  auto hard = recon::adaround_weight(w_floor, vi, scale, zp, s, true);
  auto nearest = at::clamp(at::round(w / scale), -7.0, 7.0) * scale;
  EXPECT_LE((hard - nearest).abs().max().item<double>(), 1e-9);
}

// The engine on a tiny model at W4A4: every block's loss falls (or the start is kept), the learned codes are
// the floor or the ceiling of w / s and within one step of round-to-nearest, the plan reloads with them and
// runs them, and the same seed gives the same plan.
TEST(Recon, LowersTheLossAndWritesFloorOrCeilCodes) {
  at::set_num_threads(2);
  const Graph g = tiny_vit();
  const auto images = tiny_images();
  QuantPlan start = minmax_plan(g, images, 4);
  auto blocks = recon::plan_blocks(g, start, "layer");
  ASSERT_EQ(blocks.size(), 4u);  // patch_embed.proj, fc1, fc2, head
  std::vector<double> mse_before;
  for (const auto& b : blocks) mse_before.push_back(recon::block_output_mse(g, images, start, b));
  QuantPlan plan = start;
  auto results = recon::reconstruct(g, images, plan, blocks, quick_recon());
  ASSERT_EQ(results.size(), 4u);
  int lowered = 0;
  for (const auto& r : results) {
    EXPECT_LE(r.loss_end, r.loss_start) << r.name;
    EXPECT_FALSE(r.stopped_nonfinite);
    lowered += r.loss_end < r.loss_start;
  }
  EXPECT_GE(lowered, 2);
  // the first block sees the same inputs before and after: its MSE must be lower or equal
  EXPECT_LE(recon::block_output_mse(g, images, plan, blocks[0]), mse_before[0]);
  int with_codes = 0, moved = 0;
  for (const auto& p : plan.points) {
    if (!p.weight || !p.codes.defined()) continue;
    ++with_codes;
    const auto& w = g.const_tensor(g.find_node(p.node)->inputs[1]);
    auto v = w / full_scale(p, w);
    auto lo = at::clamp(at::floor(v), p.spec.qmin(), p.spec.qmax()), hi = at::clamp(at::ceil(v), p.spec.qmin(), p.spec.qmax());
    EXPECT_TRUE(((p.codes == lo) | (p.codes == hi)).all().item<bool>()) << p.node;
    auto nearest = at::clamp(at::round(v), p.spec.qmin(), p.spec.qmax());
    EXPECT_LE((p.codes - nearest).abs().max().item<float>(), 1.0f) << p.node;
    moved += (p.codes != nearest).sum().item<int64_t>();
  }
  EXPECT_GE(with_codes, 1);
  EXPECT_GT(moved, 0);  // rounding was learned, not just round-to-nearest
  EXPECT_TRUE(plan.settings.contains("reconstruction"));
  TempDir tmp;
  save_plan(plan, (tmp / "p.json").string());
  QuantPlan back = load_plan((tmp / "p.json").string(), g);
  at::InferenceMode guard;
  auto a = QuantizedModel(g, plan).run(images), b = QuantizedModel(g, back).run(images);
  EXPECT_LE((a - b).abs().max().item<float>(), 1e-6f);
  // determinism: the same seed, the same plan
  QuantPlan again = start;
  recon::reconstruct(g, images, again, blocks, quick_recon());
  for (size_t k = 0; k < plan.points.size(); ++k) {
    EXPECT_TRUE(at::equal(plan.points[k].params.scale, again.points[k].params.scale)) << plan.points[k].node;
    if (plan.points[k].codes.defined()) EXPECT_TRUE(at::equal(plan.points[k].codes, again.points[k].codes));
  }
}

// QDrop and the Fisher loss run; block mode makes one block of the MLP (from the LayerNorm to the add).
TEST(Recon, BlockModeQDropAndFisherLoss) {
  at::set_num_threads(2);
  const Graph g = tiny_vit();
  const auto images = tiny_images();
  QuantPlan plan = minmax_plan(g, images, 4);
  auto blocks = recon::plan_blocks(g, plan, "block");
  ASSERT_EQ(blocks.size(), 3u);
  EXPECT_EQ(blocks[1].name, "blocks.0");
  EXPECT_EQ(g.nodes[blocks[1].begin].name, "blocks.0.norm");
  EXPECT_EQ(g.nodes[blocks[1].end - 1].name, "blocks.0.add");
  auto o = quick_recon("block");
  o.qdrop = 0.5;
  o.loss = "fisher";
  auto results = recon::reconstruct(g, images, plan, blocks, o);
  for (const auto& r : results) EXPECT_LE(r.loss_end, r.loss_start) << r.name;
  EXPECT_EQ(plan.settings["reconstruction"]["qdrop"].get<double>(), 0.5);
}

// block_loss against a naive double loop: the weighted squared error plus, per image, the squared sum of
// direction · error over every output (two outputs of different shapes, 3 rows per image in the first).
TEST(Recon, BlockLossRankOneTermMatchesNaiveSum) {
  const int64_t n = 4;
  std::vector<at::Tensor> outs = {randn({n * 3, 5}, 21), randn({n, 2, 2}, 22)};
  std::vector<at::Tensor> targets = {randn({n * 3, 5}, 23), randn({n, 2, 2}, 24)};
  std::vector<at::Tensor> weights = {randn({n * 3, 5}, 25).abs(), randn({n, 2, 2}, 26).abs()};
  std::vector<at::Tensor> dirs = {randn({n * 3, 5}, 27), randn({n, 2, 2}, 28)};
  double diag = 0, rank = 0;
  for (int64_t i = 0; i < n; ++i) {
    double along = 0;
    for (size_t k = 0; k < outs.size(); ++k) {
      auto o = outs[k].to(at::kDouble).reshape({n, -1}), t = targets[k].to(at::kDouble).reshape({n, -1});
      auto w = weights[k].to(at::kDouble).reshape({n, -1}), u = dirs[k].to(at::kDouble).reshape({n, -1});
      for (int64_t j = 0; j < o.size(1); ++j) {
        const double e = o[i][j].item<double>() - t[i][j].item<double>();
        diag += w[i][j].item<double>() * e * e;
        along += u[i][j].item<double>() * e;
      }
    }
    rank += along * along;
  }
  EXPECT_NEAR(recon::block_loss(outs, targets, weights, {}, n).item<double>(), diag, 1e-4 * diag);
  EXPECT_NEAR(recon::block_loss(outs, targets, weights, dirs, n).item<double>(), diag + rank, 1e-4 * (diag + rank));
  // the rank-one term is per image, not over the batch: one image's error cannot cancel another's
  EXPECT_GT(rank, 0.0);
  EXPECT_THROW(recon::block_loss(outs, targets, weights, {dirs[0]}, n), Error);
  EXPECT_THROW(recon::block_loss({randn({7, 5}, 29)}, {randn({7, 5}, 30)}, {}, {randn({7, 5}, 31)}, n), Error);  // 7 rows, 4 images
}

// The fisher-dplr loss reconstructs (each block's loss lowered), and on the first block, which both runs feed the
// same image, it starts above the diagonal Fisher loss by its non-negative rank-one term.
TEST(Recon, FisherDplrLossAddsToTheDiagonal) {
  at::set_num_threads(2);
  const BlockStart s;
  const Graph& g = s.g;
  const auto& images = s.images;
  const QuantPlan& start = s.plan;
  const auto& blocks = s.blocks;
  auto o = quick_recon("block");
  o.loss = "fisher";
  QuantPlan diag_plan = start;
  auto diag = recon::reconstruct(g, images, diag_plan, blocks, o);
  o.loss = "fisher-dplr";
  QuantPlan dplr_plan = start;
  auto dplr = recon::reconstruct(g, images, dplr_plan, blocks, o);
  ASSERT_EQ(diag.size(), dplr.size());
  ASSERT_FALSE(dplr.empty());
  EXPECT_GT(dplr[0].loss_start, diag[0].loss_start);
  for (const auto& r : dplr) {
    EXPECT_LE(r.loss_end, r.loss_start) << r.name;
    EXPECT_TRUE(std::isfinite(r.loss_end)) << r.name;
  }
  EXPECT_EQ(dplr_plan.settings["reconstruction"]["loss"].get<std::string>(), "fisher-dplr");
  check_plan(dplr_plan, g, "fisher-dplr");
  auto bad = o;
  bad.loss = "fisher-lr";
  EXPECT_THROW(bad.validate(), Error);
}

// --recon-damping: the Fisher weights (mean 1) become (w + D) / (1 + D). Recorded per block: how evenly the weights
// spread over the outputs, lower for the Fisher weights than for the damped ones, 1 for the mse loss; on the first
// block (the same image in every run) a large D gives mse's starting loss, and no damping a different one.
TEST(Recon, FisherDampingMixesInPlainSquaredError) {
  at::set_num_threads(2);
  const BlockStart s;
  auto run = [&](const std::string& loss, double damping) {
    auto o = quick_recon("block");
    o.loss = loss;
    o.fisher_damping = damping;
    QuantPlan p = s.plan;
    auto r = recon::reconstruct(s.g, s.images, p, s.blocks, o);
    EXPECT_FALSE(r.empty());
    for (const auto& b : r) EXPECT_LE(b.loss_end, b.loss_start) << loss << " " << damping << " " << b.name;
    check_plan(p, s.g, "damped");
    return std::pair{r, p.settings["reconstruction"]};
  };
  auto [fisher, fj] = run("fisher", 0);
  auto [damped, dj] = run("fisher", 1);
  auto [flat, flj] = run("fisher", 1e6);
  auto [mse, mj] = run("mse", 0);
  EXPECT_EQ(dj["fisher_damping"].get<double>(), 1.0);
  EXPECT_EQ(fj["fisher_damping"].get<double>(), 0.0);
  const double s0 = fj["blocks"][0]["weight_spread"].get<double>(), s1 = dj["blocks"][0]["weight_spread"].get<double>();
  EXPECT_GT(s0, 0.0);
  EXPECT_LT(s0, 0.9);  // the one-label Fisher weights are uneven
  EXPECT_GT(s1, s0);
  EXPECT_NEAR(flj["blocks"][0]["weight_spread"].get<double>(), 1.0, 1e-3);
  EXPECT_EQ(mj["blocks"][0]["weight_spread"].get<double>(), 1.0);
  EXPECT_NEAR(flat[0].loss_start, mse[0].loss_start, 1e-3 * mse[0].loss_start);
  EXPECT_GT(std::abs(fisher[0].loss_start - mse[0].loss_start), 0.01 * mse[0].loss_start);
  auto bad = quick_recon("block");
  for (double d : {-1.0, std::nan(""), 1e300}) {
    bad.fisher_damping = d;
    EXPECT_THROW(bad.validate(), Error) << d;
  }
  bad.fisher_damping = 1;
  bad.loss = "mse";
  try {
    bad.validate();
    ADD_FAILURE() << "damping with the mse loss accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--recon-damping"), std::string::npos) << e.what();
  }
}

// DeiT-Tiny cut into blocks: patch embedding, the 12 transformer blocks (from norm1 to the second residual add),
// the head; layer mode: one per quantized layer.
TEST(Recon, DeitBlocksAreTransformerBlocks) {
  Graph g = load_model(model_dir().string());
  MethodOptions o;
  QuantPlan plan;
  plan.points = default_placement(g, o.placement);
  auto blocks = recon::plan_blocks(g, plan, "block");
  ASSERT_EQ(blocks.size(), 14u);
  EXPECT_EQ(blocks[0].name, "patch_embed.proj");
  EXPECT_EQ(blocks[13].name, "head");
  for (int k = 1; k <= 12; ++k) {
    const auto& b = blocks[static_cast<size_t>(k)];
    EXPECT_EQ(b.name, fmt::format("blocks.{}", k - 1));
    EXPECT_EQ(g.nodes[b.begin].op, OpKind::LayerNorm) << b.name;
    EXPECT_EQ(g.nodes[b.end - 1].op, OpKind::Add) << b.name;
    EXPECT_EQ(b.inputs.size(), 1u) << b.name;   // the residual stream in
    EXPECT_EQ(b.outputs.size(), 1u) << b.name;  // and out
  }
  EXPECT_EQ(recon::plan_blocks(g, plan, "layer").size(), 74u);
}

// A loss that turns NaN mid-way stops the block with the last finite parameters; NaN in the inputs is an
// error naming the block; a block without quantization points and nonsense options are errors.
TEST(Recon, NonFiniteLossAndBadInput) {
  at::set_num_threads(2);
  const Graph g = tiny_vit();
  const auto images = tiny_images();
  QuantPlan plan = minmax_plan(g, images, 4);
  auto blocks = recon::plan_blocks(g, plan, "layer");
  auto o = quick_recon();
  o.on_step = [](const std::string& block, int step, std::vector<at::Tensor>& params) {
    if (block == "blocks.0.mlp.fc1" && step == 5) {
      at::NoGradGuard no_grad;
      params[0].fill_(std::nan(""));
    }
  };
  QuantPlan p = plan;
  auto results = recon::reconstruct(g, images, p, blocks, o);
  bool stopped = false;
  for (const auto& r : results)
    if (r.name == "blocks.0.mlp.fc1") {
      stopped = r.stopped_nonfinite;
      EXPECT_EQ(r.steps, 6);
    }
  EXPECT_TRUE(stopped);
  for (const auto& q : p.points) {
    EXPECT_TRUE(at::isfinite(q.params.scale).all().item<bool>()) << q.node;
    if (q.codes.defined()) EXPECT_TRUE(at::isfinite(q.codes).all().item<bool>()) << q.node;
  }
  check_plan(p, g, "after a NaN");

  Executor ex(g);
  const auto& b = blocks[1];
  std::vector<at::Tensor> x = {at::full({16, 16, 8}, std::nan(""))};  // fc1's input on 16 images, NaN
  std::vector<at::Tensor> y = {at::zeros({16, 16, 16})};
  try {
    recon::reconstruct_block(ex, plan, b, x, y, {}, 16, quick_recon());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blocks.0.mlp.fc1"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("not finite"), std::string::npos) << e.what();
  }
  QuantPlan none = plan;
  none.points.clear();
  x[0] = at::zeros({16, 16, 8});
  try {
    recon::reconstruct_block(ex, none, b, x, y, {}, 16, quick_recon());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no quantization points"), std::string::npos) << e.what();
  }
  EXPECT_THROW(recon::reconstruct(g, images, none, recon::plan_blocks(g, none, "layer"), quick_recon()), Error);
  auto bad = quick_recon();
  bad.iters = 0;
  EXPECT_THROW(bad.validate(), Error);
  bad = quick_recon();
  bad.qdrop = 1.0;
  EXPECT_THROW(bad.validate(), Error);
  bad = quick_recon();
  bad.loss = "l1";
  EXPECT_THROW(bad.validate(), Error);
  bad = quick_recon();
  bad.lr_round = std::nan("");
  EXPECT_THROW(bad.validate(), Error);
  bad = quick_recon();
  bad.lr_log = -1e-3;
  expect_throw_mentioning([&] { bad.validate(); }, "--recon-lr-log", "a negative --recon-lr-log");
  // learn_log with the steps fixed would learn nothing more: refused, not silently ignored
  bad = quick_recon();
  bad.learn_log = true;
  bad.learn_steps = false;
  expect_throw_mentioning([&] { bad.validate(); }, "learn_log) needs learn_steps", "learn_log without learn_steps");
  bad.learn_steps = true;
  EXPECT_NO_THROW(bad.validate());
  if (!at::hasCUDA()) {
    bad = quick_recon();
    bad.device = "cuda";
    EXPECT_THROW(bad.validate(), Error);
  }
}

// Learned codes in a plan are checked at load: each must be the floor or the ceiling of w / s.
TEST(Recon, TamperedCodesAreRejected) {
  const Graph g = tiny_vit();
  const auto images = tiny_images();
  QuantPlan plan = minmax_plan(g, images, 4);
  auto blocks = recon::plan_blocks(g, plan, "layer");
  recon::reconstruct(g, images, plan, blocks, quick_recon());
  QuantPoint* w = nullptr;
  for (auto& p : plan.points)
    if (p.codes.defined()) w = &p;
  ASSERT_NE(w, nullptr);
  check_plan(plan, g, "ok");
  auto saved = w->codes.clone();
  w->codes[0][0] = w->codes[0][0].item<float>() > 0 ? -7.0 : 7.0;  // far from w / s
  EXPECT_THROW(check_plan(plan, g, "tampered"), Error);
  w->codes = saved.narrow(0, 0, 1);
  EXPECT_THROW(check_plan(plan, g, "wrong shape"), Error);
  w->codes = saved + 0.5;
  EXPECT_THROW(check_plan(plan, g, "not integers"), Error);
}

// Any method's plan goes through the engine (`+recon`): FQ-ViT's fully quantized plan, with its integer
// LayerNorms (run straight-through during training) and PTF quantizers (kept as they are), reconstructs block
// by block into a valid plan; its integer ops and non-uniform points are unchanged.
TEST(Recon, FullyQuantizedPlanWithIntegerOps) {
  at::set_num_threads(2);
  const Graph g = tiny_vit();
  const auto images = tiny_images();
  MethodOptions o = quiet_options(4);
  o.reconstruct = "block";
  o.recon = quick_recon("block");
  QuantPlan plan = run_method(g, images, "fqvit", o);
  ASSERT_FALSE(plan.int_ops.empty());
  ASSERT_TRUE(plan.settings.contains("reconstruction"));
  for (const auto& b : plan.settings["reconstruction"]["blocks"]) EXPECT_LE(b["loss_end"].get<double>(), b["loss_start"].get<double>());
  MethodOptions plain = o;
  plain.reconstruct = "none";
  const QuantPlan before = run_method(g, images, "fqvit", plain);
  ASSERT_EQ(before.points.size(), plan.points.size());
  for (size_t k = 0; k < plan.points.size(); ++k)
    if (plan.points[k].spec.kind == QuantKind::PowerOfTwoFactor)
      EXPECT_TRUE(at::equal(plan.points[k].params.scale, before.points[k].params.scale)) << plan.points[k].node;
  check_plan(plan, g, "fqvit+recon");
  at::InferenceMode guard;
  EXPECT_TRUE(at::isfinite(QuantizedModel(g, plan).run(images)).all().item<bool>());
}

// learn_log: a plan with AdaLog activation quantizers (minmax +adalog: the fc2 input after GELU) gets their scale
// and base learned, within the range plans accept, and the plan reloads and runs them; without it they stay.
TEST(Recon, LearnLogTrainsAdaLogScaleAndBase) {
  at::set_num_threads(2);
  const Graph g = tiny_vit();
  const auto images = tiny_images();
  MethodOptions mo = quiet_options(3);
  mo.adalog = true;
  const QuantPlan start = run_method(g, images, "minmax", mo);
  size_t k = start.points.size();
  for (size_t i = 0; i < start.points.size(); ++i)
    if (start.points[i].spec.kind == QuantKind::AdaLog) k = i;
  ASSERT_LT(k, start.points.size());
  auto blocks = recon::plan_blocks(g, start, "block");
  auto o = quick_recon("block");
  QuantPlan fixed = start;
  recon::reconstruct(g, images, fixed, blocks, o);
  EXPECT_TRUE(at::equal(fixed.points[k].params.scale, start.points[k].params.scale));
  EXPECT_TRUE(at::equal(fixed.points[k].params.base, start.points[k].params.base));
  o.learn_log = true;
  QuantPlan learned = start;
  auto results = recon::reconstruct(g, images, learned, blocks, o);
  for (const auto& r : results) EXPECT_LE(r.loss_end, r.loss_start) << r.name;
  const auto& p = learned.points[k];
  EXPECT_FALSE(at::equal(p.params.base, start.points[k].params.base) && at::equal(p.params.scale, start.points[k].params.scale));
  const double tau = p.params.base.item<double>();
  EXPECT_TRUE(tau >= 0.25 && tau <= 8.0) << tau;
  EXPECT_TRUE(at::equal(p.params.shift, start.points[k].params.shift));
  EXPECT_TRUE(learned.settings["reconstruction"]["learn_log"].get<bool>());
  TempDir tmp;
  save_plan(learned, (tmp / "p.json").string());
  QuantPlan back = load_plan((tmp / "p.json").string(), g);
  at::InferenceMode guard;
  auto a = QuantizedModel(g, learned).run(images), b = QuantizedModel(g, back).run(images);
  EXPECT_LE((a - b).abs().max().item<float>(), 1e-6f);
}

// learn_log on a plan without AdaLog quantizers says so (it would learn nothing more).
TEST(Recon, LearnLogWithoutAdaLogWarns) {
  const Graph g = tiny_vit();
  const auto images = tiny_images();
  QuantPlan plan = minmax_plan(g, images, 4);
  auto o = quick_recon();
  o.iters = 2;
  o.learn_log = true;
  testing::internal::CaptureStderr();
  recon::reconstruct(g, images, plan, recon::plan_blocks(g, plan, "layer"), o);
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("--recon-learn-log: the plan has no AdaLog activation quantizer"), std::string::npos) << err;
}

// token_scales (FIMA-Q's token-wise steps): every per-tensor uniform input of a Linear on [B, N, C] tensors gets one
// step and zero point per token, learned; the head's [B, C] input and the patch embedding's (a Conv2d) keep one.
// The plan reloads and runs them; reconstructing it again finds nothing more to expand and says so.
TEST(Recon, TokenScalesLearnOneStepPerToken) {
  at::set_num_threads(2);
  const BlockStart s;
  const Graph& g = s.g;
  const auto& images = s.images;
  const QuantPlan& start = s.plan;
  const auto& blocks = s.blocks;
  auto o = quick_recon("block");
  o.token_scales = true;
  QuantPlan plan = start;
  auto results = recon::reconstruct(g, images, plan, blocks, o);
  for (const auto& r : results) EXPECT_LE(r.loss_end, r.loss_start) << r.name;
  EXPECT_EQ(plan.settings["reconstruction"]["token_scales"].get<int64_t>(), 2);  // fc1 and fc2
  int token_wise = 0;
  for (const auto& p : plan.points) {
    if (p.weight) continue;
    if (p.node == "blocks.0.mlp.fc1" || p.node == "blocks.0.mlp.fc2") {
      ++token_wise;
      EXPECT_EQ(p.spec.granularity, Granularity::PerChannel) << p.node;
      EXPECT_EQ(p.spec.axis, 1) << p.node;
      ASSERT_EQ(p.params.scale.sizes().vec(), (std::vector<int64_t>{1, 16, 1})) << p.node;  // 16 tokens
      EXPECT_EQ(p.params.zero_point.sizes().vec(), p.params.scale.sizes().vec()) << p.node;
      // learned apart: the tokens no longer share the step they started from
      EXPECT_GT((p.params.scale.max() - p.params.scale.min()).item<float>(), 0.0f) << p.node;
    } else {
      EXPECT_EQ(p.spec.granularity, Granularity::PerTensor) << p.node;
      EXPECT_EQ(p.params.scale.numel(), 1) << p.node;
    }
  }
  EXPECT_EQ(token_wise, 2);
  check_plan(plan, g, "token-wise");
  TempDir tmp;
  save_plan(plan, (tmp / "p.json").string());
  QuantPlan back = load_plan((tmp / "p.json").string(), g);
  {
    at::InferenceMode guard;
    auto a = QuantizedModel(g, plan).run(images), b = QuantizedModel(g, back).run(images);
    EXPECT_TRUE(at::isfinite(a).all().item<bool>());
    EXPECT_LE((a - b).abs().max().item<float>(), 1e-6f);
  }
  // again: the Linear inputs are token-wise already, the head's is 2-d
  o.iters = 2;
  testing::internal::CaptureStderr();
  recon::reconstruct(g, images, back, blocks, o);
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("--recon-token-scales: no per-tensor uniform input"), std::string::npos) << err;
  EXPECT_EQ(back.settings["reconstruction"]["token_scales"].get<int64_t>(), 0);
  // with the steps fixed the tokens would keep one step: refused
  o.learn_steps = false;
  expect_throw_mentioning([&] { o.validate(); }, "--recon-token-scales", "token_scales without learn_steps");
}

// augment_views: views·N images shaped as the input, each a bilinear resize of a crop of its own image (so within
// that image's range of values), the same for a seed and not for another; the pipeline reconstructs on the images
// and their views (each block's loss lowered), records both counts, and learns other steps than without them.
TEST(Recon, AugmentedViewsJoinTheImages) {
  at::set_num_threads(2);
  const auto images = randn({3, 3, 8, 8}, 41);
  const auto views = recon::augment_views(images, 4, 7);
  ASSERT_EQ(views.sizes().vec(), (std::vector<int64_t>{12, 3, 8, 8}));
  EXPECT_TRUE(at::equal(views, recon::augment_views(images, 4, 7)));
  EXPECT_FALSE(at::equal(views, recon::augment_views(images, 4, 8)));
  for (int64_t i = 0; i < 3; ++i) {
    const auto img = images[i];
    int differ = 0;
    for (int64_t k = 0; k < 4; ++k) {
      const auto v = views[i * 4 + k];
      EXPECT_LE(v.max().item<float>(), img.max().item<float>() + 1e-5f) << i << " " << k;
      EXPECT_GE(v.min().item<float>(), img.min().item<float>() - 1e-5f) << i << " " << k;
      differ += !at::allclose(v, img);
    }
    EXPECT_GE(differ, 3) << "image " << i;
  }
  expect_throw_mentioning([&] { recon::augment_views(images, 0, 7); }, "at least one view", "no views");
  expect_throw_mentioning([&] { recon::augment_views(at::zeros({3, 8, 8}), 1, 7); }, "[N, C, H, W]", "a 3-d batch");

  const BlockStart s;
  auto o = quick_recon("block");
  o.augment = 2;
  QuantPlan plan = s.plan;
  auto results = recon::reconstruct(s.g, s.images, plan, s.blocks, o);
  ASSERT_FALSE(results.empty());
  for (const auto& r : results) EXPECT_LT(r.loss_end, r.loss_start) << r.name;
  EXPECT_EQ(plan.settings["reconstruction"]["images"].get<int64_t>(), 16);
  EXPECT_EQ(plan.settings["reconstruction"]["images_with_views"].get<int64_t>(), 48);
  EXPECT_EQ(plan.settings["reconstruction"]["augment"].get<int>(), 2);
  check_plan(plan, s.g, "augmented");
  QuantPlan plain = s.plan;
  recon::reconstruct(s.g, s.images, plain, s.blocks, quick_recon("block"));
  EXPECT_FALSE(plain.settings["reconstruction"].contains("images_with_views"));
  const auto* a = plan.find("blocks.0.mlp.fc2", 0);
  const auto* b = plain.find("blocks.0.mlp.fc2", 0);
  ASSERT_TRUE(a && b);
  EXPECT_FALSE(at::equal(a->params.scale, b->params.scale));
  for (int bad : {-1, 65}) {
    o.augment = bad;
    expect_throw_mentioning([&] { o.validate(); }, "--recon-augment", "a nonsense view count");
  }
}

// fisher_gradients on 6 images (a chunk of 4, then one of 2): at the logits each image's row is its softmax minus
// the one-hot of a label (the gradient of −log p(y)), in the images' order; a block's output ([B, 16, 8]) gets
// every image's gradients; the same seed gives the same gradients.
TEST(Recon, FisherGradientsRowsFollowTheImages) {
  const Graph g = tiny_vit();
  const auto images = tiny_images(6);
  const Node* add = g.find_node("blocks.0.add");
  ASSERT_NE(add, nullptr);
  const int logits = g.output, mid = add->outputs[0];
  auto grads = recon::fisher_gradients(g, images, 5, {logits, mid});
  ASSERT_EQ(grads.at(logits).sizes().vec(), (std::vector<int64_t>{6, 5}));
  ASSERT_EQ(grads.at(mid).sizes().vec(), (std::vector<int64_t>{6, 16, 8}));
  at::Tensor p;
  {
    at::InferenceMode guard;
    p = at::softmax(Executor(g).run(images), -1);
  }
  for (int64_t i = 0; i < 6; ++i) {
    const auto row = grads.at(logits)[i];
    const int64_t y = row.argmin().item<int64_t>();
    auto expected = p[i].clone();
    expected[y] -= 1.0;
    EXPECT_TRUE(at::allclose(row, expected, 1e-5, 1e-6)) << "image " << i;
    EXPECT_GT(grads.at(mid)[i].abs().sum().item<float>(), 0.0f) << "image " << i;
  }
  EXPECT_TRUE(at::equal(grads.at(mid), recon::fisher_gradients(g, images, 5, {mid}).at(mid)));
}

// The streams run 32 images at a time: on 40 images (a chunk of 32, then 8) a block's output error is the images'
// weighted mean of the two parts' errors, each run alone (one chunk each), for every block of the plan.
TEST(Recon, StreamsInChunksGiveEveryImageItsOwnValues) {
  const Graph g = tiny_vit();
  const auto images = tiny_images(40);
  const QuantPlan plan = minmax_plan(g, images, 4);
  const auto blocks = recon::plan_blocks(g, plan, "block");
  ASSERT_GE(blocks.size(), 2u);
  for (const auto& b : blocks) {
    const double all = recon::block_output_mse(g, images, plan, b);
    const double head = recon::block_output_mse(g, images.narrow(0, 0, 32), plan, b);
    const double tail = recon::block_output_mse(g, images.narrow(0, 32, 8), plan, b);
    EXPECT_GT(all, 0.0) << b.name;
    EXPECT_NEAR(all, (32 * head + 8 * tail) / 40, 1e-5 * all) << b.name;
  }
}

// reconstruction_bytes grows by the same amount for every image (views count as images), is more than the images
// themselves, and more with Fisher weights (their gradients and weights) than with the plain MSE; reconstruct()
// refuses, leaving the plan as it was, a run that needs more than the memory available, naming what to lower.
TEST(Recon, MemoryEstimateRefusesOversizeRuns) {
  const BlockStart s;
  const auto image = s.images.narrow(0, 0, 1);
  auto o = quick_recon("block");
  const double b0 = recon::reconstruction_bytes(s.g, image, 0, s.blocks, o);
  const double b10 = recon::reconstruction_bytes(s.g, image, 10, s.blocks, o);
  const double b20 = recon::reconstruction_bytes(s.g, image, 20, s.blocks, o);
  EXPECT_GT(b0, 0.0);  // a chunk's values inside the streams
  EXPECT_NEAR(b20 - b10, b10 - b0, 1e-6 * b20);
  EXPECT_GT(b10 - b0, 10.0 * static_cast<double>(image.nbytes()));
  o.loss = "fisher";
  EXPECT_GT(recon::reconstruction_bytes(s.g, image, 10, s.blocks, o), b10);
  expect_throw_mentioning([&] { recon::reconstruction_bytes(s.g, s.images, 10, s.blocks, o); }, "[1, C, H, W]", "a batch of 16");

  o = quick_recon("block");
  o.memory_available = b20;  // 16 images fit, 48 (two views each) do not
  QuantPlan plan = s.plan;
  EXPECT_NO_THROW(recon::reconstruct(s.g, s.images, plan, s.blocks, o));
  o.augment = 2;
  plan = s.plan;
  expect_throw_mentioning([&] { recon::reconstruct(s.g, s.images, plan, s.blocks, o); }, "48 images (16 and 2 views of each) needs about",
                          "48 images");
  expect_throw_mentioning([&] { recon::reconstruct(s.g, s.images, plan, s.blocks, o); }, "or --recon-augment", "48 images");
  EXPECT_FALSE(plan.settings.contains("reconstruction"));
  o.augment = 0;
  o.memory_available = 1;
  expect_throw_mentioning([&] { recon::reconstruct(s.g, s.images, plan, s.blocks, o); }, "lower --recon-images", "16 images in 1 byte");
  o.memory_available = -1;
  expect_throw_mentioning([&] { o.validate(); }, "memory_available", "negative memory");
  expect_throw_mentioning([&] { recon::reconstruct(s.g, at::zeros({0, 3, 4, 4}), plan, s.blocks, quick_recon("block")); },
                          "N >= 1", "no calibration images");
}

// Codes need plan format 3: a version-2 plan that carries them is refused.
TEST(Recon, CodesNeedFormatThree) {
  const Graph g = tiny_vit();
  const auto images = tiny_images();
  QuantPlan plan = minmax_plan(g, images, 4);
  recon::reconstruct(g, images, plan, recon::plan_blocks(g, plan, "layer"), quick_recon());
  auto j = plan_to_json(plan);
  EXPECT_EQ(j["version"], QuantPlan::kVersion);
  j["version"] = 3;
  plan_from_json(j, "v3");
  j["version"] = 2;
  EXPECT_THROW(plan_from_json(j, "v2"), Error);
}

// The output search (+osearch) on a per-channel activation input (no method of vitq makes one yet; a plan edited
// through the library can): a Linear sums over its input channels, so no channel owns a slice of the output and
// the channels share one α, chosen on the whole output; the layer's output error does not grow. (Grouped like a
// per-head input, the tiny model's 8 channels fell on its 16 tokens, two a group, and each took its own α.)
TEST(OutputSearch, PerChannelInputSharesOneClippingScoredOnTheWholeOutput) {
  at::set_num_threads(2);
  const Graph g = tiny_vit();
  const auto images = tiny_images();
  // fc1's input (the LayerNorm's output) as `plan`'s quantized model feeds it
  auto fc1_input = [&](const QuantPlan& plan) {
    at::Tensor x;
    ExecHooks capture;
    capture.on_output = [&](const Node& n, const std::vector<at::Tensor>& outs) {
      if (n.name == "blocks.0.norm") x = outs[0];
    };
    at::InferenceMode guard;
    QuantizedModel(g, plan).run(images, &capture);
    return x;
  };
  QuantPlan plan = minmax_plan(g, images, 3);
  QuantPoint* in = plan.find("blocks.0.mlp.fc1", 0);
  ASSERT_TRUE(in && !in->weight);
  in->spec.granularity = Granularity::PerChannel;
  in->spec.axis = -1;
  const auto x0 = fc1_input(plan);
  ASSERT_TRUE(x0.defined());
  in->params = params_from_range(at::amin(x0, {0, 1}), at::amax(x0, {0, 1}), in->spec);
  ASSERT_EQ(in->params.scale.numel(), 8);
  const QuantPlan before = plan;
  MethodOptions o = quiet_options(3);
  o.output_search = true;
  const auto rec = output_search(g, images, plan, o);
  EXPECT_EQ(rec.at("layers").get<int>(), 4);  // patch_embed.proj, fc1, fc2, head
  // the input the search saw (the patch embedding's quantizers searched before it): each channel's step is one
  // common fraction α of its min/max step there
  const auto x = fc1_input(plan);
  const QuantPoint* after = plan.find("blocks.0.mlp.fc1", 0);
  const auto minmax = params_from_range(at::amin(x, {0, 1}), at::amax(x, {0, 1}), after->spec);
  const auto alpha = (after->params.scale / minmax.scale).to(at::kDouble).flatten();
  std::cout << "fc1 input's steps / min/max steps: " << alpha << "\n";
  EXPECT_LT(alpha[0].item<double>(), 0.99) << "at 3 bits the search clips";
  EXPECT_LE((alpha - alpha[0]).abs().max().item<double>(), 1e-4 * alpha[0].item<double>()) << "one α for all channels";
  // fc1's output error on that input, against its output from the same input and weight unquantized: not larger
  // with the searched quantizers than with the ones it started from
  const Node& fc1 = *g.find_node("blocks.0.mlp.fc1");
  std::vector<at::Tensor> args = {x, g.const_tensor(fc1.inputs[1]), g.const_tensor(fc1.inputs[2])};
  at::InferenceMode guard;
  const auto out = run_node(fc1, args, images.size(0))[0];
  auto error = [&](const QuantPlan& p) {
    auto q = args;
    q[0] = quantize_point(*p.find(fc1.name, 0), args[0]);
    q[1] = quantize_point(*p.find(fc1.name, 1), args[1]);
    return (run_node(fc1, q, images.size(0))[0] - out).pow(2).sum().item<double>();
  };
  const double e0 = error(before), e1 = error(plan);
  std::cout << "fc1 output error: start " << e0 << ", searched " << e1 << "\n";
  EXPECT_LE(e1, e0 * (1 + 1e-4));
}
