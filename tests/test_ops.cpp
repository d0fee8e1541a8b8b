// The operators of the hybrid and Swin families, each against a plain-loop reference (forward), with a
// gradient check through libtorch autograd, plus the graph passes that belong to them: BatchNorm folding,
// normalisation roles, residual adds and bridge blocks on small hand-built graphs.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "vitq/graph/executor.h"
#include "vitq/graph/passes.h"
#include "vitq/util/error.h"

using namespace vitq;

namespace {

at::Tensor run_op(OpKind op, std::vector<at::Tensor> in, std::map<std::string, AttrValue> attrs = {}) {
  Node n{op, "op", {}, {0}, std::move(attrs), kRoleNone};
  return run_node(n, in, in[0].size(0))[0];
}

at::Tensor randn(std::vector<int64_t> shape, int seed) {
  at::manual_seed(seed);
  return at::randn(shape, at::kFloat);
}

// Max abs difference between the op and a reference filled element by element by `ref(index)`.
float max_diff(const at::Tensor& got, const std::function<double(std::vector<int64_t>)>& ref) {
  auto g = got.contiguous().to(at::kDouble);
  const auto sizes = g.sizes().vec();
  std::vector<int64_t> idx(sizes.size(), 0);
  double worst = 0;
  for (int64_t flat = 0; flat < g.numel(); ++flat) {
    int64_t r = flat;
    for (size_t d = sizes.size(); d-- > 0;) {
      idx[d] = r % sizes[d];
      r /= sizes[d];
    }
    worst = std::max(worst, std::abs(g.data_ptr<double>()[flat] - ref(idx)));
  }
  return static_cast<float>(worst);
}

// Gradient of sum(op(x) * w) by autograd against central differences on a few elements.
void check_gradient(OpKind op, at::Tensor x, std::vector<at::Tensor> rest, std::map<std::string, AttrValue> attrs) {
  x = x.to(at::kDouble).requires_grad_(true);
  for (auto& t : rest)
    if (t.defined() && t.is_floating_point()) t = t.to(at::kDouble);
  auto f = [&](const at::Tensor& in) {
    std::vector<at::Tensor> args = {in};
    args.insert(args.end(), rest.begin(), rest.end());
    auto y = run_op(op, args, attrs);
    return (y * at::cos(at::arange(y.numel(), at::kDouble).view(y.sizes()))).sum();
  };
  f(x).backward();
  auto grad = x.grad().flatten();
  at::NoGradGuard ng;
  for (int64_t i = 0; i < x.numel(); i += std::max<int64_t>(1, x.numel() / 7)) {
    auto xp = x.detach().clone(), xm = x.detach().clone();
    xp.view(-1)[i] += 1e-6;
    xm.view(-1)[i] -= 1e-6;
    double numeric = (f(xp).item<double>() - f(xm).item<double>()) / 2e-6;
    EXPECT_NEAR(grad[i].item<double>(), numeric, 1e-5 * std::max(1.0, std::abs(numeric))) << op_name(op) << " element " << i;
  }
}

}  // namespace

TEST(Ops, BatchNormMatchesLoop) {
  auto x = randn({2, 3, 4, 5}, 1), w = randn({3}, 2), b = randn({3}, 3), m = randn({3}, 4), v = randn({3}, 5).abs() + 0.1;
  auto y = run_op(OpKind::BatchNorm, {x, w, b, m, v}, {{"epsilon", 1e-5}});
  float d = max_diff(y, [&](std::vector<int64_t> i) {
    double xi = x[i[0]][i[1]][i[2]][i[3]].item<double>();
    int64_t c = i[1];
    return (xi - m[c].item<double>()) / std::sqrt(v[c].item<double>() + 1e-5) * w[c].item<double>() + b[c].item<double>();
  });
  EXPECT_LE(d, 1e-5f);
  check_gradient(OpKind::BatchNorm, x, {w, b, m, v}, {{"epsilon", 1e-5}});
}

TEST(Ops, GroupNormAndInstanceNormMatchLoop) {
  auto x = randn({2, 6, 3, 4}, 6), w = randn({6}, 7), b = randn({6}, 8);
  for (int64_t groups : {1, 2, 6}) {
    auto y = run_op(OpKind::GroupNorm, {x, w, b}, {{"num_groups", groups}, {"epsilon", 1e-5}});
    const int64_t per = 6 / groups;
    float d = max_diff(y, [&](std::vector<int64_t> i) {
      auto grp = x[i[0]].narrow(0, i[1] / per * per, per).to(at::kDouble);
      double mean = grp.mean().item<double>(), var = (grp - mean).pow(2).mean().item<double>();
      return (x[i[0]][i[1]][i[2]][i[3]].item<double>() - mean) / std::sqrt(var + 1e-5) * w[i[1]].item<double>() +
             b[i[1]].item<double>();
    });
    EXPECT_LE(d, 1e-5f) << groups << " groups";
    if (groups == 6) {
      auto inst = run_op(OpKind::InstanceNorm, {x, w, b}, {{"epsilon", 1e-5}});
      EXPECT_LE((inst - y).abs().max().item<float>(), 1e-5f);
    }
  }
  check_gradient(OpKind::GroupNorm, x, {w, b}, {{"num_groups", int64_t{2}}, {"epsilon", 1e-5}});
  EXPECT_THROW(run_op(OpKind::GroupNorm, {x, w, b}, {{"num_groups", int64_t{4}}}), Error);
}

TEST(Ops, HardSwishAndHardSigmoidMatchLoop) {
  auto x = at::linspace(-5, 5, 101, at::kFloat).view({1, 101});
  auto hs = run_op(OpKind::HardSwish, {x});
  EXPECT_LE(max_diff(hs, [&](std::vector<int64_t> i) {
              double v = x[0][i[1]].item<double>();
              return v * std::min(std::max(v + 3, 0.0), 6.0) / 6;
            }), 1e-6f);
  auto sig = run_op(OpKind::HardSigmoid, {x}, {{"alpha", 1.0 / 6}, {"beta", 0.5}});
  EXPECT_LE(max_diff(sig, [&](std::vector<int64_t> i) {
              return std::min(std::max(x[0][i[1]].item<double>() / 6 + 0.5, 0.0), 1.0);
            }), 1e-6f);
}

TEST(Ops, AvgPoolMatchesLoop) {
  auto x = randn({2, 3, 5, 6}, 9);
  for (int64_t include : {0, 1}) {
    std::map<std::string, AttrValue> a = {{"kernel_shape", std::vector<int64_t>{3, 3}}, {"strides", std::vector<int64_t>{1, 1}},
                                          {"pads", std::vector<int64_t>{1, 1, 1, 1}}, {"count_include_pad", include}};
    auto y = run_op(OpKind::AvgPool, {x}, a);
    ASSERT_EQ(y.sizes(), x.sizes());
    float d = max_diff(y, [&](std::vector<int64_t> i) {
      double sum = 0;
      int count = 0;
      for (int64_t dy = -1; dy <= 1; ++dy)
        for (int64_t dx = -1; dx <= 1; ++dx) {
          int64_t r = i[2] + dy, c = i[3] + dx;
          if (r < 0 || r >= 5 || c < 0 || c >= 6) continue;
          sum += x[i[0]][i[1]][r][c].item<double>();
          ++count;
        }
      return sum / (include ? 9 : count);
    });
    EXPECT_LE(d, 1e-6f) << "count_include_pad " << include;
    check_gradient(OpKind::AvgPool, x, {}, a);
  }
  auto g = run_op(OpKind::GlobalAvgPool, {x});
  ASSERT_EQ(g.sizes(), (std::vector<int64_t>{2, 3, 1, 1}));
  EXPECT_LE(max_diff(g, [&](std::vector<int64_t> i) { return x[i[0]][i[1]].to(at::kDouble).mean().item<double>(); }), 1e-6f);
}

TEST(Ops, ReduceSumRollPadMatchLoop) {
  auto x = randn({2, 3, 4}, 10);
  auto s = run_op(OpKind::ReduceSum, {x}, {{"axes", std::vector<int64_t>{-1}}, {"keepdims", int64_t{1}}});
  ASSERT_EQ(s.sizes(), (std::vector<int64_t>{2, 3, 1}));
  EXPECT_LE(max_diff(s, [&](std::vector<int64_t> i) { return x[i[0]][i[1]].to(at::kDouble).sum().item<double>(); }), 1e-5f);
  auto r = run_op(OpKind::Roll, {x}, {{"shifts", std::vector<int64_t>{-1, 2}}, {"dims", std::vector<int64_t>{1, 2}}});
  EXPECT_EQ(max_diff(r, [&](std::vector<int64_t> i) {
              return x[i[0]][(i[1] + 1) % 3][(i[2] + 4 - 2) % 4].item<double>();  // y[i] = x[i - shift]
            }), 0.0f);
  // pads: begins (axis 0, 1, 2) then ends
  auto p = run_op(OpKind::Pad, {x}, {{"pads", std::vector<int64_t>{0, 1, 0, 0, 0, 2}}, {"value", 0.5}});
  ASSERT_EQ(p.sizes(), (std::vector<int64_t>{2, 4, 6}));
  EXPECT_EQ(max_diff(p, [&](std::vector<int64_t> i) {
              if (i[1] == 0 || i[2] >= 4) return 0.5;
              return x[i[0]][i[1] - 1][i[2]].item<double>();
            }), 0.0f);
  check_gradient(OpKind::Roll, x, {}, {{"shifts", std::vector<int64_t>{1}}, {"dims", std::vector<int64_t>{2}}});
}

// Bilinear resize: half-pixel (PyTorch align_corners=False) and align-corners coordinates, nearest.
TEST(Ops, ResizeMatchesLoop) {
  auto x = randn({1, 2, 4, 5}, 11);
  for (std::string coord : {"half_pixel", "align_corners"}) {
    auto y = run_op(OpKind::Resize, {x}, {{"mode", std::string("linear")}, {"coordinate_transformation_mode", coord},
                                         {"sizes", std::vector<int64_t>{7, 9}}});
    ASSERT_EQ(y.sizes(), (std::vector<int64_t>{1, 2, 7, 9}));
    auto src = [&](int64_t o, int64_t in, int64_t out) {
      if (coord == "align_corners") return out > 1 ? o * double(in - 1) / double(out - 1) : 0.0;
      return std::max((o + 0.5) * double(in) / double(out) - 0.5, 0.0);
    };
    float d = max_diff(y, [&](std::vector<int64_t> i) {
      double sy = src(i[2], 4, 7), sx = src(i[3], 5, 9);
      int64_t y0 = std::min<int64_t>(static_cast<int64_t>(sy), 3), x0 = std::min<int64_t>(static_cast<int64_t>(sx), 4);
      int64_t y1 = std::min<int64_t>(y0 + 1, 3), x1 = std::min<int64_t>(x0 + 1, 4);
      double fy = sy - y0, fx = sx - x0;
      auto at_ = [&](int64_t r, int64_t c) { return x[0][i[1]][r][c].item<double>(); };
      return (1 - fy) * ((1 - fx) * at_(y0, x0) + fx * at_(y0, x1)) + fy * ((1 - fx) * at_(y1, x0) + fx * at_(y1, x1));
    });
    EXPECT_LE(d, 1e-5f) << coord;
  }
  auto n = run_op(OpKind::Resize, {x}, {{"mode", std::string("nearest")}, {"sizes", std::vector<int64_t>{8, 10}}});
  EXPECT_EQ(max_diff(n, [&](std::vector<int64_t> i) { return x[0][i[1]][i[2] / 2][i[3] / 2].item<double>(); }), 0.0f);
  EXPECT_THROW(run_op(OpKind::Resize, {x}, {{"mode", std::string("cubic")}, {"sizes", std::vector<int64_t>{8, 10}}}), Error);
}

namespace {
// input -> conv(3->8, 3x3) -> BatchNorm -> SiLU -> [skip] conv 1x1 -> BN -> add(skip) -> (B,8,H,W) ->
// reshape/transpose to tokens -> LayerNorm -> Linear -> mean -> Linear head
Graph tiny_hybrid() {
  Graph g;
  g.input = g.add_value("input");
  auto c = [&](const std::string& n, at::Tensor t) { return g.add_const(n, std::move(t)); };
  auto bn = [&](const std::string& n, int x, int64_t ch, int seed) {
    return g.out(g.add_node(OpKind::BatchNorm, n, {x, c(n + ".weight", randn({ch}, seed)), c(n + ".bias", randn({ch}, seed + 1)),
                                                   c(n + ".running_mean", randn({ch}, seed + 2)),
                                                   c(n + ".running_var", randn({ch}, seed + 3).abs() + 0.5)},
                            1, {{"epsilon", 1e-5}}));
  };
  std::map<std::string, AttrValue> same = {{"pads", std::vector<int64_t>{1, 1, 1, 1}}};
  int x = g.out(g.add_node(OpKind::Conv2d, "stem.conv", {g.input, c("stem.conv.weight", randn({8, 3, 3, 3}, 20))}, 1, same));
  x = bn("stem.bn", x, 8, 30);
  x = g.out(g.add_node(OpKind::SiLU, "stem.act", {x}));
  int y = g.out(g.add_node(OpKind::Conv2d, "block.conv_kxk", {x, c("block.conv_kxk.weight", randn({8, 8, 3, 3}, 40))}, 1, same));
  y = bn("block.bn1", y, 8, 50);
  y = g.out(g.add_node(OpKind::Conv2d, "block.conv_1x1", {y, c("block.conv_1x1.weight", randn({8, 8, 1, 1}, 41))}));
  y = bn("block.bn2", y, 8, 60);
  x = g.out(g.add_node(OpKind::Add, "block.add", {x, y}));
  int t = g.out(g.add_node(OpKind::Reshape, "block.unfold", {x}, 1,
                           {{"shape", std::vector<int64_t>{1, 8, 16}}, {"batch_mult", std::vector<int64_t>{1, 0, 0}}}));
  t = g.out(g.add_node(OpKind::Transpose, "block.to_tokens", {t}, 1, {{"perm", std::vector<int64_t>{0, 2, 1}}}));
  int h = g.out(g.add_node(OpKind::LayerNorm, "block.norm", {t, c("block.norm.weight", at::ones({8})), c("block.norm.bias", at::zeros({8}))}, 1,
                           {{"axis", int64_t{-1}}, {"epsilon", 1e-5}}));
  h = g.out(g.add_node(OpKind::Linear, "block.fc", {h, c("block.fc.weight", randn({8, 8}, 70))}));
  t = g.out(g.add_node(OpKind::Add, "block.add2", {t, h}));
  t = g.out(g.add_node(OpKind::ReduceMean, "pool", {t}, 1, {{"axes", std::vector<int64_t>{1}}, {"keepdims", int64_t{0}}}));
  g.output = g.out(g.add_node(OpKind::Linear, "head", {t, c("head.weight", randn({5, 8}, 80))}));
  g.meta.preprocess.input_height = g.meta.preprocess.input_width = 4;
  return g;
}
}  // namespace

TEST(Passes, FoldBatchNormKeepsOutputsAndMarksConvs) {
  Graph g = tiny_hybrid();
  auto x = randn({2, 3, 4, 4}, 90);
  at::Tensor before;
  {
    Executor ex(g);
    before = ex.run(x);
  }
  fold_batch_norm(g);
  annotate_roles(g);
  for (const auto& n : g.nodes) EXPECT_NE(n.op, OpKind::BatchNorm) << n.name;
  Executor ex(g);
  EXPECT_LE((ex.run(x) - before).abs().max().item<float>(), 1e-4f * std::max(1.0f, before.abs().max().item<float>()));
  for (const std::string name : {"stem.conv", "block.conv_kxk", "block.conv_1x1"}) {
    const Node* n = g.find_node(name);
    ASSERT_NE(n, nullptr);
    EXPECT_EQ(n->gets("norm"), "batchnorm");
    EXPECT_TRUE(n->roles & kNormBatch) << name << ": " << roles_to_string(n->roles);
  }
  EXPECT_TRUE(g.find_node("block.fc")->roles & kNormLayer);
  EXPECT_FALSE(g.find_node("head")->roles & (kNormLayer | kNormBatch | kNormGroup));
  // both adds are residual: the skip input is read elsewhere and is an ancestor of the other input
  EXPECT_TRUE(g.find_node("block.add")->roles & kResidualAdd);
  EXPECT_TRUE(g.find_node("block.add2")->roles & kResidualAdd);
}

TEST(Passes, BridgeBlockFoundAtTheConvToTokenSwitch) {
  Graph g = tiny_hybrid();
  fold_batch_norm(g);
  annotate_roles(g);
  ASSERT_EQ(g.bridges.size(), 1u);
  const auto& b = g.bridges[0];
  EXPECT_EQ(b.kind, "conv->transformer");
  EXPECT_EQ(b.transition, "block.unfold");
  // the conv chain next to the switch (the residual branch, at most two layers), then the first layer after it
  EXPECT_EQ(b.layers, (std::vector<std::string>{"block.conv_kxk", "block.conv_1x1", "block.fc"}));
  EXPECT_TRUE(g.find_node("block.fc")->roles & kBridge);
  EXPECT_FALSE(g.find_node("stem.conv")->roles & kBridge);
}
