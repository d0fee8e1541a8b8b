// EfficientFormer V1 (timm 0.9.16 efficientformer_l1/l3/l7): a conv stem, four stages of MetaBlock2d (pooling
// token mixer + conv MLP, [B,C,H,W]) and, in the last stage, a Flat switch to tokens followed by `num_vit`
// MetaBlock1d (attention with learned relative biases + linear MLP, [B,N,C]); LayerNorm, token mean, and the
// distillation head (head + head_dist averaged, as timm's eval forward).
//
// config.json keys read: architecture (efficientformer_l1/l3/l7: the size defaults), embed_dims [4],
// depths [4], num_vit, mlp_ratios (one number), downsamples [4 bools], pool_size, num_classes,
// global_pool ("avg" only), pretrained_cfg.input_size (the attention needs a 7x7 grid at the last stage).
#include <ATen/ATen.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <regex>

#include "vitq/models/architectures.h"
#include "vitq/util/error.h"

namespace vitq {

namespace {

struct EfConfig {
  std::string architecture;
  std::vector<int64_t> embed_dims, depths;
  std::vector<bool> downsamples = {false, true, true, true};
  int64_t num_vit = 0, pool_size = 3, num_classes = 1000, img_h = 224, img_w = 224;
  double mlp_ratio = 4.0;
};

EfConfig parse(const nlohmann::json& j, const std::string& where) {
  EfConfig c;
  c.architecture = j.value("architecture", std::string());
  static const std::map<std::string, std::array<std::vector<int64_t>, 2>> sizes = {
      {"l1", {{{48, 96, 224, 448}, {3, 2, 6, 4}}}},
      {"l3", {{{64, 128, 320, 512}, {4, 4, 12, 6}}}},
      {"l7", {{{96, 192, 384, 768}, {6, 6, 18, 8}}}}};
  static const std::map<std::string, int64_t> num_vit = {{"l1", 1}, {"l3", 4}, {"l7", 8}};
  std::smatch m;
  static const std::regex name_re(R"(^efficientformer_([a-z0-9]+))");
  std::string size = std::regex_search(c.architecture, m, name_re) ? m[1].str() : std::string();
  if (!sizes.count(size))
    fail("{}: unknown EfficientFormer size '{}' in architecture '{}' (known: efficientformer_l1, l3, l7)", where,
         size, c.architecture);
  c.embed_dims = int_list(j, "embed_dims", sizes.at(size)[0], 4, where);
  c.depths = int_list(j, "depths", sizes.at(size)[1], 4, where);
  c.num_vit = num_vit.at(size);
  try {
    c.num_vit = j.value("num_vit", c.num_vit);
    c.num_classes = j.value("num_classes", c.num_classes);
    c.pool_size = j.value("pool_size", c.pool_size);
    if (j.contains("mlp_ratios")) c.mlp_ratio = j["mlp_ratios"].get<double>();
    if (j.contains("downsamples")) {
      c.downsamples = j["downsamples"].get<std::vector<bool>>();
      if (c.downsamples.size() != 4) fail("{}: downsamples needs 4 entries, got {}", where, c.downsamples.size());
    }
    if (j.value("global_pool", std::string("avg")) != "avg")
      fail("{}: global_pool '{}' is not supported (only 'avg')", where, j["global_pool"].get<std::string>());
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed config field ({})", where, first_line(e.what()));
  }
  const auto input = config_input_size(j, where, 224);
  c.img_h = input[0];
  c.img_w = input[1];
  check_stages(c.embed_dims, c.depths, c.downsamples, where);
  if (c.num_vit < 1 || c.num_vit > c.depths[3])
    fail("{}: num_vit {} must be between 1 and the last stage's depth {}", where, c.num_vit, c.depths[3]);
  check_range(c.mlp_ratio, 0.0, kMaxRatio, "mlp_ratios", where);
  check_range(static_cast<double>(c.pool_size), 1, 15, "pool_size", where);
  if (!(c.mlp_ratio > 0) || c.pool_size <= 0 || c.pool_size % 2 == 0)
    fail("{}: mlp_ratios must be positive and pool_size odd (got {}, {})", where, c.mlp_ratio, c.pool_size);
  if (c.num_classes <= 0) fail("{}: num_classes must be positive", where);
  return c;
}

// Conv 3x3 stride 2 pad 1 output size.
int64_t half(int64_t r) { return (r + 1) / 2; }

// timm's Attention (key_dim 32, 8 heads, attn_ratio 4, resolution 7) on [B,N,C] tokens.
int attention(ModelBuilder& b, const std::string& a, int x, int64_t dim, int64_t r0, int64_t r1) {
  const int64_t H = 8, kd = 32, vd = 4 * kd, N = r0 * r1;
  int h = b.linear(a + ".qkv", x, dim, H * (2 * kd + vd));                         // [B,N,H*(2kd+vd)]
  h = b.reshape(a + ".reshape_qkv", h, {1, N, H, 2 * kd + vd});
  h = b.transpose(a + ".permute_qkv", h, {0, 2, 1, 3});                          // [B,H,N,2kd+vd]
  auto qkv = b.multi(OpKind::Split, a + ".split_qkv", {h}, 3,
                     {{"axis", int64_t{3}}, {"split", std::vector<int64_t>{kd, kd, vd}}});
  int kt = b.transpose(a + ".k_transpose", qkv[1], {0, 1, 3, 2});                // [B,H,kd,N]
  int s = b.node(OpKind::MatMul, a + ".matmul_qk", {qkv[0], kt});                 // [B,H,N,N]
  s = b.node(OpKind::Mul, a + ".scale", {s, b.scalar(a + ".scale_value", 1.0 / std::sqrt(double(kd)))});
  int ab = b.param(a + ".attention_biases", {H, N});
  int idx = b.computed_buffer(a + ".attention_bias_idxs", attention_bias_index(r0, r1, 1));
  int bias = b.node(OpKind::Gather, a + ".bias_gather", {ab, idx}, {{"axis", int64_t{1}}});  // [H,N,N]
  s = b.node(OpKind::Add, a + ".add_bias", {s, bias});
  s = b.node(OpKind::Softmax, a + ".softmax", {s}, {{"axis", int64_t{-1}}});
  int o = b.node(OpKind::MatMul, a + ".matmul_av", {s, qkv[2]});                  // [B,H,N,vd]
  o = b.transpose(a + ".merge_heads", o, {0, 2, 1, 3});                          // [B,N,H,vd]
  o = b.reshape(a + ".reshape_out", o, {1, N, H * vd});
  return b.linear(a + ".proj", o, H * vd, dim);                                  // [B,N,C]
}

}  // namespace

Graph build_efficientformer(const nlohmann::json& config, const WeightSource& weights, const std::string& where) {
  const EfConfig c = parse(config, where);
  Graph g;
  ModelBuilder b(g, weights, c.architecture);

  // stem: 2x (conv 3x3 s2, BN, ReLU): [B,3,H,W] -> [B,C0,H/4,W/4]
  const int64_t c0 = c.embed_dims[0];
  int x = b.conv("stem.conv1", b.input(), 3, c0 / 2, 3, 2);
  x = b.act("relu", "stem.act1", b.batch_norm("stem.norm1", x, c0 / 2));
  x = b.conv("stem.conv2", x, c0 / 2, c0, 3, 2);
  x = b.act("relu", "stem.act2", b.batch_norm("stem.norm2", x, c0));
  int64_t rh = half(half(c.img_h)), rw = half(half(c.img_w)), dim = c0;

  for (int64_t si = 0; si < 4; ++si) {
    const std::string sp = fmt::format("stages.{}", si);
    if (c.downsamples[static_cast<size_t>(si)]) {  // conv 3x3 s2 + BN
      const int64_t out = c.embed_dims[static_cast<size_t>(si)];
      x = b.conv(sp + ".downsample.conv", x, dim, out, 3, 2);
      x = b.batch_norm(sp + ".downsample.norm", x, out);
      dim = out;
      rh = half(rh);
      rw = half(rw);
    }
    const int64_t depth = c.depths[static_cast<size_t>(si)], nv = si == 3 ? c.num_vit : 0;
    const auto hidden = static_cast<int64_t>(static_cast<double>(dim) * c.mlp_ratio);
    if (nv > 0 && (rh != 7 || rw != 7))
      fail("{}: input {}x{} gives a {}x{} grid at the last stage; EfficientFormer's attention needs 7x7", where,
           c.img_h, c.img_w, rh, rw);
    int64_t seq = 0;  // index in timm's blocks Sequential (Flat takes one)
    auto flat = [&]() {  // [B,C,H,W] -> [B,C,HW] -> [B,HW,C]
      const std::string f = fmt::format("{}.blocks.{}", sp, seq++);
      x = b.reshape(f + ".flatten", x, {1, dim, rh * rw});
      x = b.transpose(f + ".transpose", x, {0, 2, 1});
    };
    if (nv >= depth) flat();
    for (int64_t bi = 0; bi < depth; ++bi) {
      const int64_t remain = depth - bi - 1;
      const std::string p = fmt::format("{}.blocks.{}", sp, seq++);
      if (nv > remain) {  // MetaBlock1d on [B,N,C]
        int h = b.layer_norm(p + ".norm1", x, dim, 1e-5);
        h = attention(b, p + ".token_mixer", h, dim, rh, rw);
        h = b.node(OpKind::Mul, p + ".ls1", {h, b.param(p + ".ls1.gamma", {dim})});
        x = b.node(OpKind::Add, p + ".add_attn", {x, h});
        h = b.layer_norm(p + ".norm2", x, dim, 1e-5);
        h = b.linear(p + ".mlp.fc1", h, dim, hidden);
        h = b.act("gelu", p + ".mlp.act", h);
        h = b.linear(p + ".mlp.fc2", h, hidden, dim);
        h = b.node(OpKind::Mul, p + ".ls2", {h, b.param(p + ".ls2.gamma", {dim})});
        x = b.node(OpKind::Add, p + ".add_mlp", {x, h});
      } else {  // MetaBlock2d on [B,C,H,W]: pooling mixer (avgpool(x) - x), conv MLP with BN
        const int64_t ps = c.pool_size, pp = ps / 2;
        int h = b.node(OpKind::AvgPool, p + ".token_mixer.pool", {x},
                       {{"kernel_shape", std::vector<int64_t>{ps, ps}}, {"strides", std::vector<int64_t>{1, 1}},
                        {"pads", std::vector<int64_t>{pp, pp, pp, pp}}, {"count_include_pad", int64_t{0}},
                        {"ceil_mode", int64_t{0}}});
        h = b.node(OpKind::Sub, p + ".token_mixer", {h, x});
        x = b.node(OpKind::Add, p + ".add_mixer", {x, b.layer_scale_2d(p + ".ls1", h, dim)});
        h = b.conv(p + ".mlp.fc1", x, dim, hidden, 1);
        h = b.act("gelu", p + ".mlp.act", b.batch_norm(p + ".mlp.norm1", h, hidden));
        h = b.conv(p + ".mlp.fc2", h, hidden, dim, 1);
        h = b.batch_norm(p + ".mlp.norm2", h, dim);
        x = b.node(OpKind::Add, p + ".add_mlp", {x, b.layer_scale_2d(p + ".ls2", h, dim)});
        if (nv > 0 && nv == remain) flat();
      }
    }
  }
  // head: LayerNorm, mean over tokens, (head + head_dist) / 2
  x = b.layer_norm("norm", x, dim, 1e-5);                                                            // [B,N,C]
  x = b.node(OpKind::ReduceMean, "pool", {x}, {{"axes", std::vector<int64_t>{1}}, {"keepdims", int64_t{0}}});  // [B,C]
  int logits = b.distilled_head(x, -1, dim, c.num_classes);
  b.finish(logits, "efficientformer", c.architecture, c.num_classes);
  return g;
}

}  // namespace vitq
