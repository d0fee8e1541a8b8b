// Graph passes keep the function unchanged; roles are tagged the same through both front ends.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "test_util.h"
#include "vitq/graph/executor.h"
#include "vitq/graph/passes.h"
#include "vitq/models/model_loader.h"
#include "vitq/util/error.h"

using namespace vitq;

namespace {
int scalar(Graph& g, const std::string& name, double v) { return g.add_const(name, at::scalar_tensor(v, at::kFloat)); }

// input [B,3,4,4] -> Reshape [B, 6, 8] (token layout) -> decomposed LayerNorm -> decomposed GELU -> MatMul W + b
Graph decomposed_graph() {
  Graph g;
  g.input = g.add_value("input");
  int x = g.out(g.add_node(OpKind::Reshape, "tokens", {g.input}, 1,
                           {{"shape", std::vector<int64_t>{1, 6, 8}}, {"batch_mult", std::vector<int64_t>{1, 0, 0}}}));
  auto axes = std::vector<int64_t>{-1};
  int mean = g.out(g.add_node(OpKind::ReduceMean, "ln.mean", {x}, 1, {{"axes", axes}}));
  int d = g.out(g.add_node(OpKind::Sub, "ln.sub", {x, mean}));
  int sq = g.out(g.add_node(OpKind::Pow, "ln.pow", {d, scalar(g, "two", 2.0)}));
  int var = g.out(g.add_node(OpKind::ReduceMean, "ln.var", {sq}, 1, {{"axes", axes}}));
  int ve = g.out(g.add_node(OpKind::Add, "ln.eps", {var, scalar(g, "eps", 1e-6)}));
  int sd = g.out(g.add_node(OpKind::Sqrt, "ln.sqrt", {ve}));
  int n = g.out(g.add_node(OpKind::Div, "ln.div", {d, sd}));
  int m = g.out(g.add_node(OpKind::Mul, "ln.mul", {n, g.add_const("norm.weight", at::randn({8}))}));
  int ln = g.out(g.add_node(OpKind::Add, "ln.add", {m, g.add_const("norm.bias", at::randn({8}))}));
  int div = g.out(g.add_node(OpKind::Div, "act.div", {ln, scalar(g, "sqrt2", std::sqrt(2.0))}));
  int erf = g.out(g.add_node(OpKind::Erf, "act.erf", {div}));
  int one = g.out(g.add_node(OpKind::Add, "act.add", {erf, scalar(g, "one", 1.0)}));
  int mul = g.out(g.add_node(OpKind::Mul, "act.mul", {ln, one}));
  int gelu = g.out(g.add_node(OpKind::Mul, "act.half", {mul, scalar(g, "half", 0.5)}));
  int mm = g.out(g.add_node(OpKind::MatMul, "fc.MatMul", {gelu, g.add_const("w", at::randn({8, 5}))}));
  g.output = g.out(g.add_node(OpKind::Add, "fc.Add", {g.add_const("fc.bias", at::randn({5})), mm}));
  return g;
}

size_t count(const Graph& g, OpKind op) {
  return static_cast<size_t>(std::count_if(g.nodes.begin(), g.nodes.end(), [&](const Node& n) { return n.op == op; }));
}
}  // namespace

TEST(Passes, FusionsKeepTheFunction) {
  Graph g = decomposed_graph();
  auto x = at::randn({2, 3, 4, 4});
  auto before = Executor(g).run(x);
  fuse_linear(g);
  fuse_gelu(g);
  fuse_layer_norm(g);
  compact(g);
  EXPECT_EQ(count(g, OpKind::LayerNorm), 1u);
  EXPECT_EQ(count(g, OpKind::Gelu), 1u);
  EXPECT_EQ(count(g, OpKind::Linear), 1u);
  EXPECT_EQ(g.nodes.size(), 4u);  // Reshape, LayerNorm, Gelu, Linear
  EXPECT_EQ(g.nodes[1].name, "norm");
  EXPECT_EQ(g.nodes[3].name, "fc");
  auto after = Executor(g).run(x);
  EXPECT_LE((before - after).abs().max().item<float>(), 1e-5f);
}

TEST(Passes, QuantizableLayerNamesAreUnique) {
  // exporters without module paths name every attention matmul alike
  Graph g;
  g.input = g.add_value("input");
  int x = g.out(g.add_node(OpKind::Reshape, "r", {g.input}, 1,
                           {{"shape", std::vector<int64_t>{1, 3, 4, 4}}, {"batch_mult", std::vector<int64_t>{1, 0, 0, 0}}}));
  int a = g.out(g.add_node(OpKind::MatMul, "MatMul", {x, x}));
  int b = g.out(g.add_node(OpKind::MatMul, "MatMul", {a, x}));
  g.output = b;
  annotate_roles(g);
  EXPECT_EQ(g.nodes[1].name, "matmul_qk");
  EXPECT_EQ(g.nodes[2].name, "matmul_qk_1");
}

TEST(Passes, ValidateRejectsBrokenGraphs) {
  Graph g;
  g.input = g.add_value("input");
  int later = g.add_value("later");
  g.output = g.out(g.add_node(OpKind::Relu, "r", {later}));
  EXPECT_THROW(g.validate(), Error);
}

TEST(Passes, BothFrontEndsGiveTheSameIr) {
  Graph a = load_model(test::model_dir().string());
  Graph b = load_model((test::model_dir() / "model.onnx").string());
  ASSERT_EQ(a.nodes.size(), b.nodes.size());
  size_t qk = 0, av = 0, residual_adds = 0;
  for (size_t i = 0; i < a.nodes.size(); ++i) {
    EXPECT_EQ(a.nodes[i].op, b.nodes[i].op) << i;
    EXPECT_EQ(a.nodes[i].roles, b.nodes[i].roles) << a.nodes[i].name;
    if (is_quantizable(a, a.nodes[i])) EXPECT_EQ(a.nodes[i].name, b.nodes[i].name);
    qk += (a.nodes[i].roles & kAttnQK) != 0;
    av += (a.nodes[i].roles & kAttnV) != 0;
    residual_adds += (a.nodes[i].roles & kResidualAdd) != 0;
  }
  EXPECT_EQ(qk, 12u);
  EXPECT_EQ(av, 12u);
  EXPECT_EQ(residual_adds, 24u);
  EXPECT_EQ(a.num_parameters(), 5717416);
  EXPECT_EQ(b.num_parameters(), 5717416);
  size_t post_ln = 0, post_gelu = 0, post_softmax = 0;
  for (const auto& v : b.values) {
    post_ln += (v.roles & kPostLayerNorm) != 0;
    post_gelu += (v.roles & kPostGelu) != 0;
    post_softmax += (v.roles & kPostSoftmax) != 0;
  }
  EXPECT_EQ(post_ln, 25u);
  EXPECT_EQ(post_gelu, 12u);
  EXPECT_EQ(post_softmax, 12u);
}

TEST(Executor, BatchSizesAgree) {
  Graph g = load_model((test::model_dir() / "model.onnx").string());
  Executor ex(g);
  at::InferenceMode guard;
  auto x = at::randn({3, 3, 224, 224});
  auto all = ex.run(x);
  auto one = ex.run(x.narrow(0, 1, 1));
  EXPECT_LE((all.narrow(0, 1, 1) - one).abs().max().item<float>(), 1e-4f);
  EXPECT_THROW(ex.run(at::randn({2, 4, 224, 224})), Error);
}
