// EfficientFormer V2 (timm 0.9.16 efficientformerv2_s0/s1/s2/l): everything stays [B,C,H,W]. A conv stem
// (2x conv-BN-GELU), four stages of blocks (optional Attention2d token mixer + conv MLP with a depthwise mid conv,
// each scaled by a layer scale); the last `num_vit` blocks of stages 2 and 3 have attention (stage 2's runs on
// a stride-2 grid and is upsampled back), and stage 3 downsamples with a conv plus Attention2dDownsample.
// BatchNorm, global average pool, and the distillation head (head + head_dist averaged, as timm's eval forward).
//
// config.json keys read: architecture (efficientformerv2_s0/s1/s2/l: the size defaults), embed_dims [4],
// depths [4], num_vit, mlp_ratios (a number, or 4 entries each a number or a list of that stage's depth),
// downsamples [4 bools], norm_eps, act_layer, layer_scale_init_value (null: no layer scale), distillation,
// num_classes, global_pool ("avg" only), img_size or else pretrained_cfg.input_size (sets the attention grids).
#include <ATen/ATen.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <regex>

#include "vitq/models/architectures.h"
#include "vitq/util/error.h"

namespace vitq {

namespace {

struct Ef2Config {
  std::string architecture;
  std::vector<int64_t> embed_dims, depths;
  std::vector<std::vector<double>> mlp_ratios;  // per stage, per block
  std::vector<bool> downsamples = {false, true, true, true};
  int64_t num_vit = 0, num_classes = 1000, img_h = 224, img_w = 224;
  double norm_eps = 1e-5;
  std::string act = "gelu";
  bool layer_scale = true, distillation = true;
};

using Ratios = std::vector<std::vector<double>>;

Ef2Config parse(const nlohmann::json& j, const std::string& where) {
  struct Size {
    std::vector<int64_t> width, depth;
    int64_t num_vit;
    Ratios ratios;
  };
  static const std::map<std::string, Size> sizes = {
      {"l", {{40, 80, 192, 384}, {5, 5, 15, 10}, 6,
             {{4}, {4}, {4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4}, {4, 4, 4, 3, 3, 3, 3, 4, 4, 4}}}},
      {"s2", {{32, 64, 144, 288}, {4, 4, 12, 8}, 4,
              {{4}, {4}, {4, 4, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4}, {4, 4, 3, 3, 3, 3, 4, 4}}}},
      {"s1", {{32, 48, 120, 224}, {3, 3, 9, 6}, 2, {{4}, {4}, {4, 4, 3, 3, 3, 3, 4, 4, 4}, {4, 4, 3, 3, 4, 4}}}},
      {"s0", {{32, 48, 96, 176}, {2, 2, 6, 4}, 2, {{4}, {4}, {4, 3, 3, 3, 4, 4}, {4, 3, 3, 4}}}}};
  Ef2Config c;
  c.architecture = j.value("architecture", std::string());
  std::smatch m;
  static const std::regex name_re(R"(^efficientformerv2_([a-z0-9]+))");
  std::string size = std::regex_search(c.architecture, m, name_re) ? m[1].str() : std::string();
  if (!sizes.count(size))
    fail("{}: unknown EfficientFormer V2 size '{}' in architecture '{}' (known: efficientformerv2_s0, s1, s2, l)",
         where, size, c.architecture);
  const Size& s = sizes.at(size);
  c.embed_dims = int_list(j, "embed_dims", s.width, 4, where);
  c.depths = int_list(j, "depths", s.depth, 4, where);
  c.num_vit = s.num_vit;
  Ratios ratios = s.ratios;
  try {
    c.num_vit = j.value("num_vit", c.num_vit);
    c.num_classes = j.value("num_classes", c.num_classes);
    c.norm_eps = j.value("norm_eps", c.norm_eps);
    c.act = j.value("act_layer", c.act);
    c.distillation = j.value("distillation", c.distillation);
    if (j.contains("layer_scale_init_value")) c.layer_scale = !j["layer_scale_init_value"].is_null();
    if (j.contains("mlp_ratios")) {  // a number, or per stage a number or a per-block list
      const auto& r = j["mlp_ratios"];
      if (r.is_number()) {
        ratios.assign(4, {r.get<double>()});
      } else {
        if (!r.is_array() || r.size() != 4) fail("{}: mlp_ratios needs a number or 4 entries", where);
        ratios.clear();
        for (const auto& e : r)
          ratios.push_back(e.is_number() ? std::vector<double>{e.get<double>()} : e.get<std::vector<double>>());
      }
    }
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
  check_range(c.norm_eps, 1e-12, 1.0, "norm_eps", where);
  for (size_t i = 0; i < 4; ++i) {
    auto& r = ratios[i];
    if (r.size() == 1) r.assign(static_cast<size_t>(c.depths[i]), r[0]);
    if (r.size() != static_cast<size_t>(c.depths[i]))
      fail("{}: mlp_ratios of stage {} has {} entries but depths gives {} blocks", where, i, r.size(), c.depths[i]);
    for (double v : r) check_range(v, 1e-6, kMaxRatio, "mlp_ratios", where);
  }
  c.mlp_ratios = ratios;
  if (c.num_vit < 0) fail("{}: num_vit must not be negative", where);
  if (c.num_classes <= 0) fail("{}: num_classes must be positive", where);
  if (c.img_h <= 0 || c.img_w <= 0) fail("{}: bad input size {}x{}", where, c.img_h, c.img_w);
  return c;
}

// Output size of a 3x3 stride-2 pad-1 conv (and of timm's ceil(r / 2)).
int64_t half(int64_t r) { return (r + 1) / 2; }


struct Builder {
  ModelBuilder& b;
  const Ef2Config& c;
  const std::string& where;

  // ConvNorm / ConvNormAct: conv (bias) `name.conv` + BatchNorm `name.bn` (+ activation)
  int conv_norm(const std::string& name, int x, int64_t in, int64_t out, int64_t k, int64_t stride = 1,
                int64_t groups = 1, double eps = 1e-5, bool act = false) {
    x = b.conv(name + ".conv", x, in, out, k, stride, -1, groups);
    x = b.batch_norm(name + ".bn", x, out, eps);
    return act ? b.act(c.act, name + ".act", x) : x;
  }

  // x * gamma for [B,C,H,W]: the [C] parameter viewed as [C,1,1] (a batch-independent Reshape)
  int layer_scale(const std::string& name, int x, int64_t ch) {
    if (!c.layer_scale) return x;
    return b.layer_scale_2d(name, x, ch);
  }

  // [B,H*d,r0,r1] -> [B,H,d,N] (-> [B,H,N,d] when `transposed`)
  int heads(const std::string& name, int x, int64_t h, int64_t d, int64_t n, bool transposed) {
    x = b.reshape(name + ".heads", x, {1, h, d, n});
    return transposed ? b.transpose(name + ".heads_t", x, {0, 1, 3, 2}) : x;
  }

  // q [B,H,Nq,kd] · k [B,H,kd,Nk] * scale + attention_biases[:, idxs]
  int scores(const std::string& a, int q, int k, int64_t h, int64_t kd, int64_t nk, const at::Tensor& idxs) {
    int s = b.node(OpKind::MatMul, a + ".matmul_qk", {q, k});                          // [B,H,Nq,Nk]
    s = b.node(OpKind::Mul, a + ".scale", {s, b.scalar(a + ".scale_value", 1.0 / std::sqrt(double(kd)))});
    int bias = b.node(OpKind::Gather, a + ".bias_gather",
                      {b.param(a + ".attention_biases", {h, nk}), b.constant(a + ".attention_bias_idxs", idxs)},
                      {{"axis", int64_t{1}}});                                         // [H,Nq,Nk]
    return b.node(OpKind::Add, a + ".add_bias", {s, bias});
  }

  // Attention2d (key_dim 32, 8 heads, attn_ratio 4) on [B,C,r0,r1]; `stride`: on a stride-2 grid, upsampled back.
  int attention(const std::string& a, int x, int64_t dim, int64_t r0, int64_t r1, bool stride) {
    const int64_t H = 8, kd = 32, d = 4 * kd, dh = H * d;
    if (stride) {
      if (r0 % 2 || r1 % 2)
        fail("{}: {}: the strided attention needs an even grid, got {}x{} (input {}x{})", where, a,
             r0, r1, c.img_h, c.img_w);
      x = conv_norm(a + ".stride_conv", x, dim, dim, 3, 2, dim);
      r0 = half(r0);
      r1 = half(r1);
    }
    const int64_t N = r0 * r1;
    int q = heads(a + ".q", conv_norm(a + ".q", x, dim, H * kd, 1), H, kd, N, true);  // [B,H,N,kd]
    int k = heads(a + ".k", conv_norm(a + ".k", x, dim, H * kd, 1), H, kd, N, false); // [B,H,kd,N]
    int v = conv_norm(a + ".v", x, dim, dh, 1);                                         // [B,dh,r0,r1]
    int v_local = conv_norm(a + ".v_local", v, dh, dh, 3, 1, dh);
    v = heads(a + ".v", v, H, d, N, true);                                              // [B,H,N,d]
    int s = scores(a, q, k, H, kd, N, attention_bias_index(r0, r1, 1));                            // [B,H,N,N]
    s = b.conv(a + ".talking_head1", s, H, H, 1);
    s = b.node(OpKind::Softmax, a + ".softmax", {s}, {{"axis", int64_t{-1}}});
    s = b.conv(a + ".talking_head2", s, H, H, 1);
    int o = b.node(OpKind::MatMul, a + ".matmul_av", {s, v});                          // [B,H,N,d]
    o = b.transpose(a + ".merge_heads", o, {0, 1, 3, 2});                              // [B,H,d,N]
    o = b.reshape(a + ".reshape_out", o, {1, dh, r0, r1});
    o = b.node(OpKind::Add, a + ".add_v_local", {o, v_local});
    if (stride)
      o = b.node(OpKind::Resize, a + ".upsample", {o},
                 {{"mode", std::string("linear")}, {"coordinate_transformation_mode", std::string("half_pixel")},
                  {"sizes", std::vector<int64_t>{2 * r0, 2 * r1}}});
    o = b.act(c.act, a + ".act", o);
    return conv_norm(a + ".proj", o, dh, dim, 1);
  }

  // Attention2dDownsample (key_dim 16, 8 heads, attn_ratio 4): [B,C,r0,r1] -> [B,out,r0/2,r1/2]; queries from
  // a stride-2 depthwise conv plus a stride-2 subsampling (AvgPool 1x1 s2).
  int attention_downsample(const std::string& a, int x, int64_t dim, int64_t out, int64_t r0, int64_t r1) {
    const int64_t H = 8, kd = 16, d = 4 * kd, dh = H * d, h0 = half(r0), h1 = half(r1);
    const int64_t N = r0 * r1, N2 = h0 * h1;
    int local = b.conv(a + ".q.local", x, dim, dim, 3, 2, 1, dim);
    int pool = b.node(OpKind::AvgPool, a + ".q.pool", {x},
                      {{"kernel_shape", std::vector<int64_t>{1, 1}}, {"strides", std::vector<int64_t>{2, 2}},
                       {"pads", std::vector<int64_t>{0, 0, 0, 0}}, {"count_include_pad", int64_t{1}},
                       {"ceil_mode", int64_t{0}}});
    int q = b.node(OpKind::Add, a + ".q.add", {local, pool});
    q = heads(a + ".q", conv_norm(a + ".q.proj", q, dim, H * kd, 1), H, kd, N2, true);  // [B,H,N2,kd]
    int k = heads(a + ".k", conv_norm(a + ".k", x, dim, H * kd, 1), H, kd, N, false);    // [B,H,kd,N]
    int v = conv_norm(a + ".v", x, dim, dh, 1);                                            // [B,dh,r0,r1]
    int v_local = conv_norm(a + ".v_local", v, dh, dh, 3, 2, dh);                          // [B,dh,h0,h1]
    v = heads(a + ".v", v, H, d, N, true);                                                 // [B,H,N,d]
    int s = scores(a, q, k, H, kd, N, attention_bias_index(r0, r1, 2));                               // [B,H,N2,N]
    s = b.node(OpKind::Softmax, a + ".softmax", {s}, {{"axis", int64_t{-1}}});
    int o = b.node(OpKind::MatMul, a + ".matmul_av", {s, v});                             // [B,H,N2,d]
    o = b.transpose(a + ".merge_heads", o, {0, 1, 3, 2});
    o = b.reshape(a + ".reshape_out", o, {1, dh, h0, h1});
    o = b.node(OpKind::Add, a + ".add_v_local", {o, v_local});
    o = b.act(c.act, a + ".act", o);
    return conv_norm(a + ".proj", o, dh, out, 1);
  }
};

}  // namespace

Graph build_efficientformerv2(const nlohmann::json& config, const WeightSource& weights, const std::string& where) {
  const Ef2Config c = parse(config, where);
  Graph g;
  ModelBuilder mb(g, weights, c.architecture);
  Builder b{mb, c, where};
  const double eps = c.norm_eps;

  // stem: 2x (conv 3x3 s2, BN, act): [B,3,H,W] -> [B,C0,H/4,W/4]
  const int64_t c0 = c.embed_dims[0];
  int x = b.conv_norm("stem.conv1", mb.input(), 3, c0 / 2, 3, 2, 1, eps, true);
  x = b.conv_norm("stem.conv2", x, c0 / 2, c0, 3, 2, 1, eps, true);
  int64_t r0 = half(half(c.img_h)), r1 = half(half(c.img_w)), dim = c0;

  for (int64_t si = 0; si < 4; ++si) {
    const std::string sp = fmt::format("stages.{}", si);
    const auto i = static_cast<size_t>(si);
    if (c.downsamples[i]) {  // conv 3x3 s2 + BN (+ attention downsample from stage 3 on)
      const int64_t out = c.embed_dims[i];
      int y = b.conv_norm(sp + ".downsample.conv", x, dim, out, 3, 2, 1, eps);
      if (si >= 3) y = mb.node(OpKind::Add, sp + ".downsample.add",
                               {b.attention_downsample(sp + ".downsample.attn", x, dim, out, r0, r1), y});
      x = y;
      dim = out;
      r0 = half(r0);
      r1 = half(r1);
    }
    const int64_t depth = c.depths[i];
    for (int64_t bi = 0; bi < depth; ++bi) {
      const std::string p = fmt::format("{}.blocks.{}", sp, bi);
      if (si >= 2 && bi > depth - c.num_vit - 1) {  // attention token mixer
        int h = b.attention(p + ".token_mixer", x, dim, r0, r1, si == 2);
        x = mb.node(OpKind::Add, p + ".add_attn", {x, b.layer_scale(p + ".ls1", h, dim)});
      }
      // MLP: 1x1 conv-BN-act, depthwise 3x3 conv-BN-act, 1x1 conv-BN
      const auto hidden = static_cast<int64_t>(static_cast<double>(dim) * c.mlp_ratios[i][static_cast<size_t>(bi)]);
      int h = b.conv_norm(p + ".mlp.fc1", x, dim, hidden, 1, 1, 1, eps, true);
      h = b.conv_norm(p + ".mlp.mid", h, hidden, hidden, 3, 1, hidden, eps, true);
      h = b.conv_norm(p + ".mlp.fc2", h, hidden, dim, 1, 1, 1, eps);
      x = mb.node(OpKind::Add, p + ".add_mlp", {x, b.layer_scale(p + ".ls2", h, dim)});
    }
  }
  // head: BatchNorm, global average pool, (head + head_dist) / 2
  x = mb.batch_norm("norm", x, dim, eps);
  x = mb.node(OpKind::ReduceMean, "pool", {x},
              {{"axes", std::vector<int64_t>{2, 3}}, {"keepdims", int64_t{0}}});  // [B,C]
  const int logits = c.distillation ? mb.distilled_head(x, -1, dim, c.num_classes) : mb.linear("head", x, dim, c.num_classes);
  mb.finish(logits, "efficientformerv2", c.architecture, c.num_classes);
  return g;
}

}  // namespace vitq
