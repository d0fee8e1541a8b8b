// Tiny graphs for the deployment tests (the integer runtime, the ONNX export): one Linear, one per-head MatMul.
#pragma once
#include <ATen/ATen.h>

#include <vector>

#include "vitq/graph/graph.h"

namespace vitq::test {

// input [B, 3, 4, 4] -> reshaped to [B, rows...] (default [B, 48]) -> fc (rows.back() -> 10) [-> GELU]; on more than
// one row dimension ([B, N, C]: N "tokens") the output is flattened to [B, N·10], as a model's logits are 2-D.
inline Graph linear_graph(const std::vector<int64_t>& rows = {48}, bool gelu = false) {
  Graph g;
  g.meta.name = "tiny";
  g.meta.num_classes = 10;
  g.meta.preprocess.input_height = g.meta.preprocess.input_width = 4;
  g.input = g.add_value("input");
  std::vector<int64_t> shape{1}, batch_mult{1};
  for (int64_t r : rows) {
    shape.push_back(r);
    batch_mult.push_back(0);
  }
  int flat = g.out(g.add_node(OpKind::Reshape, "flatten", {g.input}, 1, {{"shape", shape}, {"batch_mult", batch_mult}}));
  at::manual_seed(3);
  int w = g.add_const("fc.weight", at::randn({10, rows.back()}) * 0.2);
  int b = g.add_const("fc.bias", at::randn({10}) * 0.1);
  g.output = g.out(g.add_node(OpKind::Linear, "fc", {flat, w, b}));
  if (gelu) g.output = g.out(g.add_node(OpKind::Gelu, "act", {g.output}));
  if (rows.size() > 1) {
    int64_t n = 10;
    for (size_t i = 0; i + 1 < rows.size(); ++i) n *= rows[i];
    g.meta.num_classes = n;
    g.output = g.out(g.add_node(OpKind::Reshape, "logits", {g.output}, 1,
                                {{"shape", std::vector<int64_t>{1, n}}, {"batch_mult", std::vector<int64_t>{1, 0}}}));
  }
  g.validate();
  return g;
}

// input [B, 3, 4, 4] ("3 heads") -> x · xᵀ [B, 3, 4, 4] -> [B, 48]
inline Graph matmul_graph() {
  Graph g;
  g.meta.name = "tiny_mm";
  g.meta.num_classes = 48;
  g.meta.preprocess.input_height = g.meta.preprocess.input_width = 4;
  g.input = g.add_value("input");
  int t = g.out(g.add_node(OpKind::Transpose, "t", {g.input}, 1, {{"perm", std::vector<int64_t>{0, 1, 3, 2}}}));
  int mm = g.out(g.add_node(OpKind::MatMul, "mm", {g.input, t}));
  g.output = g.out(g.add_node(OpKind::Reshape, "flatten", {mm}, 1,
                              {{"shape", std::vector<int64_t>{1, 48}}, {"batch_mult", std::vector<int64_t>{1, 0}}}));
  g.validate();
  return g;
}

}  // namespace vitq::test
