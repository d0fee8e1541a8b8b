// MobileViT v1 (mobilevit_xxs/xs/s) and v2 (mobilevitv2_050 ... 200) as timm 0.9.16 builds them through its
// ByobNet: a 3x3 stride-2 conv stem, five stages of inverted-residual (bottleneck) blocks, the last three each
// followed by a MobileViT block, a 1x1 final conv (v1 only), global average pooling and the head.
//
//  v1 block: conv_kxk 3x3 -> conv_1x1 -> unfold into patches [B*P, N, D] -> pre-norm ViT blocks (multi-head
//            attention, SiLU MLP) -> LayerNorm -> fold -> conv_proj 1x1 -> conv_fusion 3x3 over concat(x, y).
//  v2 block: conv_kxk 3x3 depthwise -> conv_1x1 -> unfold [B, D, P, N] -> linear-attention blocks on 1x1 convs
//            (GroupNorm with 1 group) -> GroupNorm -> fold -> conv_proj 1x1 (no activation).
// A feature map whose size is not a multiple of the patch size is resized bilinearly as timm does (v1: to the
// next multiple and back, align_corners=False; v2: to the next multiple before the block, align_corners=True).
//
// config.json keys read (the architecture name gives the defaults):
//   architecture      mobilevit_{xxs,xs,s} | mobilevitv2_{050,075,100,125,150,175,200}
//   num_classes       classifier outputs (default 1000)
//   width_multiplier  v2 only: the base channel multiplier of _mobilevitv2_cfg (0.5 for mobilevitv2_050, ...)
//   width_factor      ByobNet's width factor on every stage's channels, the stem and num_features (default 1)
//   stem_chs          stem channels (before width_factor)
//   num_features      v1 only: channels of the final 1x1 conv (0: none)
//   act_layer         silu (default) | swish | relu | gelu | hardswish: every activation, as ByobNet's act_layer
//   num_heads, mlp_ratio, patch_size   vitq extensions: the same for every MobileViT block (timm: 4, 2.0, 2)
//   img_size / pretrained_cfg.input_size   the input resolution the graph is built for (default 256)
//   in_chans (3 only), global_pool ("avg" only), output_stride (32 only); drop rates are ignored (inference).
#include <array>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <tuple>

#include "vitq/models/architectures.h"
#include "vitq/util/error.h"

namespace vitq {

namespace {

// timm's make_divisible(v, 8): round to a multiple of 8, never more than 10% down.
int64_t make_divisible(double v, int64_t divisor = 8) {
  int64_t n = std::max(divisor, static_cast<int64_t>(v + static_cast<double>(divisor) / 2) / divisor * divisor);
  if (static_cast<double>(n) < 0.9 * v) n += divisor;
  return n;
}

struct StageCfg {
  int64_t depth;      // inverted-residual blocks
  int64_t channels;   // before width_factor
  int64_t stride;
  double bottle_ratio;
  int64_t tdim = 0;    // v1 transformer width (0: stage without a MobileViT block)
  int64_t tdepth = 0;  // transformer blocks
};

struct MvitCfg {
  std::string arch;
  bool v2 = false;
  std::vector<StageCfg> stages;
  int64_t stem_chs = 16, num_features = 0, num_classes = 1000, num_heads = 4, patch = 2;
  double mlp_ratio = 2.0, width_factor = 1.0, transformer_br = 0.5;
  std::string act = "silu";
  int64_t img_h = 256, img_w = 256;
};

// v2: _mobilevitv2_cfg(multiplier)
void v2_stages(MvitCfg& c, double m, const std::string& where) {
  if (!(m > 0.0)) fail("{}: width_multiplier must be positive", where);
  check_range(m, 0.0, kMaxRatio, "width_multiplier", where);
  auto ch = [&](int64_t base) { return m == 1.0 ? base : static_cast<int64_t>(static_cast<double>(base) * m); };
  c.stages = {{1, ch(64), 1, 2.0}, {2, ch(128), 2, 2.0}, {1, ch(256), 2, 2.0, 0, 2}, {1, ch(384), 2, 2.0, 0, 4},
              {1, ch(512), 2, 2.0, 0, 3}};
  c.stem_chs = static_cast<int64_t>(32.0 * m);
}

MvitCfg parse_config(const nlohmann::json& j, const std::string& where) {
  MvitCfg c;
  c.arch = j.value("architecture", std::string());
  const std::string& a = c.arch;
  if (a == "mobilevit_xxs") {
    c.stages = {{1, 16, 1, 2.0}, {3, 24, 2, 2.0}, {1, 48, 2, 2.0, 64, 2}, {1, 64, 2, 2.0, 80, 4},
                {1, 80, 2, 2.0, 96, 3}};
    c.num_features = 320;
  } else if (a == "mobilevit_xs") {
    c.stages = {{1, 32, 1, 4.0}, {3, 48, 2, 4.0}, {1, 64, 2, 4.0, 96, 2}, {1, 80, 2, 4.0, 120, 4},
                {1, 96, 2, 4.0, 144, 3}};
    c.num_features = 384;
  } else if (a == "mobilevit_s") {
    c.stages = {{1, 32, 1, 4.0}, {3, 64, 2, 4.0}, {1, 96, 2, 4.0, 144, 2}, {1, 128, 2, 4.0, 192, 4},
                {1, 160, 2, 4.0, 240, 3}};
    c.num_features = 640;
  } else {
    static const std::map<std::string, double> v2 = {{"050", 0.5}, {"075", 0.75}, {"100", 1.0}, {"125", 1.25},
                                                     {"150", 1.5}, {"175", 1.75}, {"200", 2.0}};
    const std::string prefix = "mobilevitv2_";
    auto it = a.rfind(prefix, 0) == 0 ? v2.find(a.substr(prefix.size())) : v2.end();
    if (it == v2.end())
      fail("{}: unknown MobileViT size '{}' (known: mobilevit_xxs, mobilevit_xs, mobilevit_s, mobilevitv2_050, 075, "
           "100, 125, 150, 175, 200)", where, a);
    c.v2 = true;
    v2_stages(c, it->second, where);
  }
  std::string key;  // the field being read: a malformed one is named in the error
  auto val = [&](const std::string& k, auto fallback) {
    key = k;
    return j.contains(k) ? j[k].get<decltype(fallback)>() : fallback;
  };
  try {
    if (j.contains("width_multiplier")) {
      if (!c.v2) fail("{}: width_multiplier applies to mobilevitv2 only (architecture '{}')", where, a);
      v2_stages(c, val("width_multiplier", 1.0), where);
    }
    c.num_classes = val("num_classes", c.num_classes);
    c.width_factor = val("width_factor", c.width_factor);
    c.stem_chs = val("stem_chs", c.stem_chs);
    c.num_features = val("num_features", c.num_features);
    if (c.v2 && c.num_features != 0) fail("{}: num_features applies to mobilevit v1 only", where);
    c.act = val("act_layer", c.act);
    c.num_heads = val("num_heads", c.num_heads);
    c.mlp_ratio = val("mlp_ratio", c.mlp_ratio);
    c.patch = val("patch_size", c.patch);
    if (val("in_chans", int64_t{3}) != 3) fail("{}: in_chans must be 3", where);
    if (val("global_pool", std::string("avg")) != "avg")
      fail("{}: global_pool '{}' is not supported (only avg)", where, j["global_pool"].get<std::string>());
    if (val("output_stride", int64_t{32}) != 32)
      fail("{}: output_stride must be 32 (dilated stages are not supported)", where);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed config field {} ({})", where, key, first_line(e.what()));
  }
  const auto input = config_input_size(j, where, 256);  // img_size or pretrained_cfg.input_size
  c.img_h = input[0];
  c.img_w = input[1];
  if (c.num_classes <= 0) fail("{}: num_classes must be positive", where);
  if (!(c.width_factor > 0.0)) fail("{}: width_factor must be positive", where);
  check_range(c.width_factor, 0.0, kMaxRatio, "width_factor", where);
  check_range(c.mlp_ratio, 0.0, kMaxRatio, "mlp_ratio", where);
  check_range(static_cast<double>(c.patch), 1, 32, "patch_size", where);
  check_range(static_cast<double>(c.num_heads), 1, 256, "num_heads", where);
  if (c.stem_chs <= 0 || c.num_features < 0) fail("{}: stem_chs must be positive and num_features non-negative", where);
  if (c.num_heads <= 0 || c.patch <= 0 || !(c.mlp_ratio > 0.0))
    fail("{}: num_heads, patch_size and mlp_ratio must be positive", where);
  if (c.img_h < 32 || c.img_w < 32) fail("{}: input size {}x{} is too small (at least 32)", where, c.img_h, c.img_w);
  if (c.act != "silu" && c.act != "swish" && c.act != "relu" && c.act != "gelu" && c.act != "hardswish")
    fail("{}: act_layer '{}' is not supported (silu, swish, relu, gelu, hardswish)", where, c.act);
  if (!c.v2)
    for (size_t i = 0; i < c.stages.size(); ++i)
      if (c.stages[i].tdim && c.stages[i].tdim % c.num_heads != 0)
        fail("{}: stage {}: transformer width {} is not divisible by num_heads {}", where, i, c.stages[i].tdim, c.num_heads);
  return c;
}

class MvitBuilder {
 public:
  MvitBuilder(ModelBuilder& b, const MvitCfg& c) : b_(b), c_(c) {}

  // conv (no bias) -> BatchNorm -> activation: timm's ConvNormAct, names <p>.conv / <p>.bn
  int conv_bn_act(const std::string& p, int x, int64_t in, int64_t out, int64_t k, int64_t stride = 1,
                  int64_t groups = 1, bool act = true) {
    x = b_.conv(p + ".conv", x, in, out, k, stride, -1, groups, false);
    size(k, stride);
    x = b_.batch_norm(p + ".bn", x, out);
    return act ? b_.act(c_.act, p + ".act", x) : x;
  }

  // ByobNet BottleneckBlock as an inverted residual (bottle_in, linear_out, depthwise kxk, no downsample path):
  // 1x1 expand -> 3x3 depthwise (stride) -> 1x1 project; identity shortcut only when shape is kept.
  int inverted_residual(const std::string& p, int x, int64_t in, int64_t out, int64_t stride, double br) {
    const int64_t mid = make_divisible(static_cast<double>(in) * br);
    int h = conv_bn_act(p + ".conv1_1x1", x, in, mid, 1);
    h = conv_bn_act(p + ".conv2_kxk", h, mid, mid, 3, stride, mid);
    h = conv_bn_act(p + ".conv3_1x1", h, mid, out, 1, 1, 1, false);
    return (in == out && stride == 1) ? b_.node(OpKind::Add, p + ".add", {x, h}) : h;
  }

  // bilinear resize of [B,C,H,W] to [B,C,h,w]
  int resize(const std::string& name, int x, int64_t h, int64_t w, bool align_corners) {
    return b_.node(OpKind::Resize, name, {x},
                   {{"mode", std::string("linear")},
                    {"coordinate_transformation_mode", std::string(align_corners ? "align_corners" : "half_pixel")},
                    {"sizes", std::vector<int64_t>{h, w}}});
  }

  // MobileViT v1 block (MobileVitBlock): in == out channels, D = transformer width.
  int mobilevit_v1(const std::string& p, int x, int64_t C, int64_t D, int64_t depth) {
    const int64_t H = h_, W = w_, ph = c_.patch, pw = c_.patch;
    const int64_t nh = (H + ph - 1) / ph, nw = (W + pw - 1) / pw, N = nh * nw, P = ph * pw;
    int shortcut = x;
    x = conv_bn_act(p + ".conv_kxk", x, C, C, 3);
    x = b_.conv(p + ".conv_1x1", x, C, D, 1, 1, 0, 1, false);                       // [B,D,H,W]
    if (nh * ph != H || nw * pw != W) x = resize(p + ".resize_in", x, nh * ph, nw * pw, false);
    // unfold: [B*D*nh, ph, nw, pw] -> [B*D*nh, nw, ph, pw] -> [B, D, N, P] -> [B, P, N, D] -> [B*P, N, D]
    x = b_.reshape(p + ".unfold.reshape1", x, {D * nh, ph, nw, pw});
    x = b_.transpose(p + ".unfold.transpose1", x, {0, 2, 1, 3});
    x = b_.reshape(p + ".unfold.reshape2", x, {1, D, N, P});
    x = b_.transpose(p + ".unfold.transpose2", x, {0, 3, 2, 1});
    x = b_.reshape(p + ".unfold.reshape3", x, {P, N, D});
    for (int64_t i = 0; i < depth; ++i) x = vit_block(fmt::format("{}.transformer.{}", p, i), x, P, N, D);
    x = b_.layer_norm(p + ".norm", x, D, 1e-5);
    // fold: [B, P, N, D] -> [B, D, N, P] -> [B*D*nh, nw, ph, pw] -> [B*D*nh, ph, nw, pw] -> [B, D, nh*ph, nw*pw]
    x = b_.reshape(p + ".fold.reshape1", x, {1, P, N, D});
    x = b_.transpose(p + ".fold.transpose1", x, {0, 3, 2, 1});
    x = b_.reshape(p + ".fold.reshape2", x, {D * nh, nw, ph, pw});
    x = b_.transpose(p + ".fold.transpose2", x, {0, 2, 1, 3});
    x = b_.reshape(p + ".fold.reshape3", x, {1, D, nh * ph, nw * pw});
    if (nh * ph != H || nw * pw != W) x = resize(p + ".resize_out", x, H, W, false);
    x = conv_bn_act(p + ".conv_proj", x, D, C, 1);
    x = b_.node(OpKind::Concat, p + ".concat", {shortcut, x}, {{"axis", int64_t{1}}});  // [B,2C,H,W]
    return conv_bn_act(p + ".conv_fusion", x, 2 * C, C, 3);
  }

  // timm vision_transformer.Block on tokens [B*P, N, D] (batch multiple P): pre-norm attention + SiLU MLP.
  int vit_block(const std::string& p, int x, int64_t P, int64_t N, int64_t D) {
    const std::string a = p + ".attn";
    const int64_t Hh = c_.num_heads, Dh = D / Hh;
    // [B*P,N,D] -> qkv [B*P,N,3D] -> [B*P,N,3,H,Dh] -> [3,B*P,H,N,Dh] -> q,k,v [B*P,H,N,Dh]
    int h = b_.layer_norm(p + ".norm1", x, D, 1e-5);
    h = b_.linear(a + ".qkv", h, D, 3 * D);
    auto qkv = b_.split_heads(a, h, P, N, Hh, Dh);
    int sc = b_.attention_scores(a, qkv[0], qkv[1], 1.0 / std::sqrt(static_cast<double>(Dh)));  // [B*P,H,N,N]
    int o = b_.attention_output(a, sc, qkv[2], P, N, D);                                           // [B*P,N,D]
    o = b_.linear(a + ".proj", o, D, D);
    x = b_.node(OpKind::Add, p + ".add_attn", {x, o});
    // MLP
    const auto hidden = static_cast<int64_t>(static_cast<double>(D) * c_.mlp_ratio);
    h = b_.layer_norm(p + ".norm2", x, D, 1e-5);
    h = b_.linear(p + ".mlp.fc1", h, D, hidden);
    h = b_.act(c_.act, p + ".mlp.act", h);
    h = b_.linear(p + ".mlp.fc2", h, hidden, D);
    return b_.node(OpKind::Add, p + ".add_mlp", {x, h});
  }

  // MobileViT v2 block (MobileVitV2Block): in == out channels C, transformer width D.
  int mobilevit_v2(const std::string& p, int x, int64_t C, int64_t D, int64_t depth) {
    const int64_t ph = c_.patch, pw = c_.patch;
    const int64_t nh = (h_ + ph - 1) / ph, nw = (w_ + pw - 1) / pw, N = nh * nw, P = ph * pw;
    if (nh * ph != h_ || nw * pw != w_) {
      x = resize(p + ".resize_in", x, nh * ph, nw * pw, true);
      h_ = nh * ph;
      w_ = nw * pw;
    }
    x = conv_bn_act(p + ".conv_kxk", x, C, C, 3, 1, C);
    x = b_.conv(p + ".conv_1x1", x, C, D, 1, 1, 0, 1, false);                       // [B,D,H,W]
    // unfold: [B, D, nh, ph, nw, pw] -> [B, D, ph, pw, nh, nw] -> [B, D, P, N]
    x = b_.reshape(p + ".unfold.reshape1", x, {1, D, nh, ph, nw, pw});
    x = b_.transpose(p + ".unfold.transpose", x, {0, 1, 3, 5, 2, 4});
    x = b_.reshape(p + ".unfold.reshape2", x, {1, D, P, N});
    for (int64_t i = 0; i < depth; ++i) x = linear_block(fmt::format("{}.transformer.{}", p, i), x, D);
    x = b_.group_norm(p + ".norm", x, 1, D, 1e-5);
    // fold: [B, D, ph, pw, nh, nw] -> [B, D, nh, ph, nw, pw] -> [B, D, H, W]
    x = b_.reshape(p + ".fold.reshape1", x, {1, D, ph, pw, nh, nw});
    x = b_.transpose(p + ".fold.transpose", x, {0, 1, 4, 2, 5, 3});
    x = b_.reshape(p + ".fold.reshape2", x, {1, D, nh * ph, nw * pw});
    return conv_bn_act(p + ".conv_proj", x, D, C, 1, 1, 1, false);
  }

  // LinearTransformerBlock on [B, D, P, N]: GroupNorm1 -> separable linear attention -> add; GroupNorm1 ->
  // 1x1-conv MLP -> add.
  int linear_block(const std::string& p, int x, int64_t D) {
    const std::string a = p + ".attn";
    int h = b_.group_norm(p + ".norm1", x, 1, D, 1e-5);
    h = b_.conv(a + ".qkv_proj", h, D, 1 + 2 * D, 1, 1, 0);                              // [B,1+2D,P,N]
    auto qkv = b_.multi(OpKind::Split, a + ".split_qkv", {h}, 3,
                        {{"axis", int64_t{1}}, {"split", std::vector<int64_t>{1, D, D}}});  // q [B,1,P,N]; k, v [B,D,P,N]
    int s = b_.node(OpKind::Softmax, a + ".softmax", {qkv[0]}, {{"axis", int64_t{-1}}});  // over the patches N
    int ctx = b_.node(OpKind::Mul, a + ".mul_kq", {qkv[1], s});                             // [B,D,P,N]
    ctx = b_.node(OpKind::ReduceSum, a + ".context", {ctx},
                  {{"axes", std::vector<int64_t>{-1}}, {"keepdims", int64_t{1}}});        // [B,D,P,1]
    int v = b_.node(OpKind::Relu, a + ".relu_v", {qkv[2]});
    int o = b_.node(OpKind::Mul, a + ".mul_context", {v, ctx});                             // [B,D,P,N]
    o = b_.conv(a + ".out_proj", o, D, D, 1, 1, 0);
    x = b_.node(OpKind::Add, p + ".add_attn", {x, o});
    const auto hidden = static_cast<int64_t>(static_cast<double>(D) * c_.mlp_ratio);
    h = b_.group_norm(p + ".norm2", x, 1, D, 1e-5);
    h = b_.conv(p + ".mlp.fc1", h, D, hidden, 1, 1, 0);
    h = b_.act(c_.act, p + ".mlp.act", h);
    h = b_.conv(p + ".mlp.fc2", h, hidden, D, 1, 1, 0);
    return b_.node(OpKind::Add, p + ".add_mlp", {x, h});
  }

  int build() {
    h_ = c_.img_h;
    w_ = c_.img_w;
    const double wf = c_.width_factor;
    int64_t chs = static_cast<int64_t>(std::nearbyint(static_cast<double>(c_.stem_chs) * wf));  // Python round
    int x = conv_bn_act("stem", b_.input(), 3, chs, 3, 2);                                    // [B,C,H/2,W/2]
    for (size_t s = 0; s < c_.stages.size(); ++s) {
      const auto& st = c_.stages[s];
      const int64_t out = make_divisible(static_cast<double>(st.channels) * wf);
      int64_t j = 0;
      for (; j < st.depth; ++j, chs = out)
        x = inverted_residual(fmt::format("stages.{}.{}", s, j), x, chs, out, j == 0 ? st.stride : 1, st.bottle_ratio);
      if (st.tdepth == 0) continue;
      const std::string p = fmt::format("stages.{}.{}", s, j);
      if (c_.v2) x = mobilevit_v2(p, x, out, make_divisible(c_.transformer_br * static_cast<double>(out)), st.tdepth);
      else x = mobilevit_v1(p, x, out, st.tdim, st.tdepth);
    }
    if (c_.num_features > 0) {
      const auto nf = static_cast<int64_t>(std::nearbyint(wf * static_cast<double>(c_.num_features)));
      x = conv_bn_act("final_conv", x, chs, nf, 1);
      chs = nf;
    }
    x = b_.node(OpKind::GlobalAvgPool, "head.global_pool", {x});                               // [B,C,1,1]
    x = b_.node(OpKind::Flatten, "head.flatten", {x}, {{"axis", int64_t{1}}});                 // [B,C]
    return b_.linear("head.fc", x, chs, c_.num_classes);
  }

 private:
  // spatial size after a conv with kernel k, stride s and same padding k/2
  void size(int64_t k, int64_t s) {
    h_ = (h_ + 2 * (k / 2) - k) / s + 1;
    w_ = (w_ + 2 * (k / 2) - k) / s + 1;
  }
  ModelBuilder& b_;
  const MvitCfg& c_;
  int64_t h_ = 0, w_ = 0;  // current feature-map size
};

}  // namespace

Graph build_mobilevit(const nlohmann::json& config, const WeightSource& weights, const std::string& where) {
  const MvitCfg c = parse_config(config, where);
  Graph g;
  ModelBuilder b(g, weights, c.arch);
  MvitBuilder mb(b, c);
  int logits = mb.build();
  b.finish(logits, c.v2 ? "mobilevitv2" : "mobilevit", c.arch, c.num_classes);
  return g;
}

}  // namespace vitq
