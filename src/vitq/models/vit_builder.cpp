#include "vitq/models/vit_builder.h"

#include <ATen/ATen.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <regex>

#include "vitq/graph/passes.h"
#include "vitq/models/builder_util.h"
#include "vitq/util/error.h"

namespace vitq {

VitConfig parse_vit_config(const nlohmann::json& j, const std::string& where) {
  VitConfig c;
  c.architecture = j.value("architecture", std::string());
  std::smatch m;
  static const std::regex name_re(R"((vit|deit3?)_(tiny|small|base|large|huge)_(distilled_)?patch(\d+)_(\d+))");
  if (std::regex_search(c.architecture, m, name_re)) {
    static const std::map<std::string, std::array<int64_t, 3>> sizes = {
        {"tiny", {192, 12, 3}}, {"small", {384, 12, 6}}, {"base", {768, 12, 12}},
        {"large", {1024, 24, 16}}, {"huge", {1280, 32, 16}}};
    auto s = sizes.at(m[2]);
    c.embed_dim = s[0];
    c.depth = s[1];
    c.num_heads = s[2];
    c.distilled = m[3].matched;
    c.patch_size = std::stoll(m[4]);
    c.img_size = std::stoll(m[5]);
  }
  try {
    c.num_classes = j.value("num_classes", c.num_classes);
    c.embed_dim = j.value("embed_dim", c.embed_dim);
    c.depth = j.value("depth", c.depth);
    c.num_heads = j.value("num_heads", c.num_heads);
    c.mlp_ratio = j.value("mlp_ratio", c.mlp_ratio);
    c.patch_size = j.value("patch_size", c.patch_size);
    if (j.contains("img_size")) {
      const auto& s = j["img_size"];
      c.img_size = s.is_array() ? s.at(0).get<int64_t>() : s.get<int64_t>();
    }
    c.layer_norm_eps = j.value("layer_norm_eps", c.layer_norm_eps);
    c.qkv_bias = j.value("qkv_bias", c.qkv_bias);
    c.distilled = j.value("distilled", c.distilled);
    if (j.value("global_pool", std::string("token")) != "token")
      fail("{}: global_pool '{}' is not supported (only class-token models)", where, j["global_pool"].dump());
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed config field ({})", where, first_line(e.what()));
  }
  if (c.embed_dim <= 0 || c.depth <= 0 || c.num_heads <= 0)
    fail("{}: cannot tell the architecture: set embed_dim, depth and num_heads, or a known architecture name "
         "(got '{}')", where, c.architecture);
  if (c.embed_dim % c.num_heads != 0) fail("{}: embed_dim {} is not divisible by num_heads {}", where, c.embed_dim, c.num_heads);
  if (c.patch_size <= 0 || c.img_size <= 0 || c.img_size % c.patch_size != 0)
    fail("{}: img_size {} is not a multiple of patch_size {}", where, c.img_size, c.patch_size);
  if (c.num_classes <= 0) fail("{}: num_classes must be positive", where);
  return c;
}

namespace {
// Expand target [B, ...] (dims[0] ignored: the batch).
std::map<std::string, AttrValue> batch_shape(std::vector<int64_t> dims) {
  std::vector<int64_t> mult(dims.size(), 0);
  mult[0] = 1;
  dims[0] = 1;
  return {{"shape", dims}, {"batch_mult", mult}};
}
}  // namespace

Graph build_vit(const VitConfig& c, const WeightSource& w) {
  Graph g;
  ModelBuilder b(g, w, c.architecture.empty() ? "the configured ViT" : c.architecture);
  const int64_t C = c.embed_dim, H = c.num_heads, D = C / H, P = c.patch_size;
  const int64_t grid = c.img_size / P, tokens = grid * grid + 1 + (c.distilled ? 1 : 0);
  const auto hidden = static_cast<int64_t>(std::llround(static_cast<double>(C) * c.mlp_ratio));

  // patch embedding: conv PxP stride P, [B,C,g,g] -> [B,C,g*g] -> [B,g*g,C]
  int x = b.node(OpKind::Conv2d, "patch_embed.proj",
                 {b.input(), b.param("patch_embed.proj.weight", {C, 3, P, P}), b.param("patch_embed.proj.bias", {C})},
                 {{"strides", std::vector<int64_t>{P, P}}, {"pads", std::vector<int64_t>{0, 0, 0, 0}}});
  x = b.reshape("patch_embed.flatten", x, {1, C, grid * grid});
  x = b.node(OpKind::Transpose, "patch_embed.transpose", {x}, {{"perm", std::vector<int64_t>{0, 2, 1}}});
  std::vector<int> parts = {b.node(OpKind::Expand, "cls_token.expand", {b.param("cls_token", {1, 1, C})},
                                   batch_shape({0, 1, 1}))};
  if (c.distilled)
    parts.push_back(b.node(OpKind::Expand, "dist_token.expand", {b.param("dist_token", {1, 1, C})},
                           batch_shape({0, 1, 1})));
  parts.push_back(x);
  x = b.node(OpKind::Concat, "tokens", parts, {{"axis", int64_t{1}}});
  x = b.node(OpKind::Add, "pos_embed.add", {x, b.param("pos_embed", {1, tokens, C})});

  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (int64_t i = 0; i < c.depth; ++i) {
    const std::string p = fmt::format("blocks.{}", i), a = p + ".attn";
    // attention: [B,N,C] -> qkv [B,N,3C] -> [B,N,3,H,D] -> [3,B,H,N,D] -> q,k,v [B,H,N,D]
    int h = b.layer_norm(p + ".norm1", x, C, c.layer_norm_eps);
    h = b.linear(a + ".qkv", h, C, 3 * C, c.qkv_bias);
    auto qkv = b.split_heads(a, h, 1, tokens, H, D);
    int sc = b.attention_scores(a, qkv[0], qkv[1], scale);                             // [B,H,N,N]
    int o = b.attention_output(a, sc, qkv[2], 1, tokens, C);                          // [B,N,C]
    o = b.linear(a + ".proj", o, C, C);
    x = b.node(OpKind::Add, p + ".add_attn", {x, o});
    // MLP
    h = b.layer_norm(p + ".norm2", x, C, c.layer_norm_eps);
    h = b.linear(p + ".mlp.fc1", h, C, hidden);
    h = b.node(OpKind::Gelu, p + ".mlp.act", {h}, {{"approximate", std::string("none")}});
    h = b.linear(p + ".mlp.fc2", h, hidden, C);
    x = b.node(OpKind::Add, p + ".add_mlp", {x, h});
  }
  x = b.layer_norm("norm", x, C, c.layer_norm_eps);
  int cls = b.node(OpKind::Gather, "pool.cls", {x, b.index("pool.cls_index", 0)}, {{"axis", int64_t{1}}});
  int logits;
  if (c.distilled) {
    int dist = b.node(OpKind::Gather, "pool.dist", {x, b.index("pool.dist_index", 1)}, {{"axis", int64_t{1}}});
    logits = b.distilled_head(cls, dist, C, c.num_classes);
  } else {
    logits = b.linear("head", cls, C, c.num_classes);
  }
  b.finish(logits, "vit", c.architecture, c.num_classes);
  return g;
}

}  // namespace vitq
