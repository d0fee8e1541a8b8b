// Swin Transformer v1 as timm 0.9.16 builds it (timm/models/swin_transformer.py, SwinTransformer), in its NHWC
// layout: patch embedding (conv, to NHWC, LayerNorm); four stages of (PatchMerging from the second stage on,
// then blocks alternating plain and shifted window attention with a relative position bias); final LayerNorm,
// mean over H and W, head.fc.
// Config keys read (they override the defaults of the architecture name swin_{size}_patch{P}_window{W}_{IMG}):
// img_size (or pretrained_cfg.input_size), patch_size, in_chans, num_classes, global_pool, embed_dim, depths,
// num_heads, head_dim, window_size, mlp_ratio, qkv_bias.
#include <ATen/ATen.h>

#include <array>
#include <cmath>
#include <nlohmann/json.hpp>
#include <regex>

#include "vitq/models/architectures.h"
#include "vitq/util/error.h"

namespace vitq {

namespace {

using Pair = std::array<int64_t, 2>;  // (height, width)

struct SwinConfig {
  std::string architecture;
  Pair img_size{224, 224};
  int64_t patch_size = 4, num_classes = 1000, embed_dim = 96;
  std::vector<int64_t> depths, num_heads, head_dim;  // head_dim 0: dim / num_heads
  std::vector<Pair> window_size;                     // per stage
  std::vector<double> mlp_ratio;                     // per stage
  bool qkv_bias = true;
};

// A number or a list of numbers as a (height, width) pair.
Pair pair_of(const nlohmann::json& v, const std::string& key, const std::string& where) {
  if (v.is_number_integer()) return {v.get<int64_t>(), v.get<int64_t>()};
  auto l = v.get<std::vector<int64_t>>();
  if (l.size() != 2) fail("{}: {} must be a number or [height, width]", where, key);
  return {l[0], l[1]};
}

SwinConfig parse_swin_config(const nlohmann::json& j, const std::string& where) {
  SwinConfig c;
  c.architecture = j.value("architecture", std::string());
  // defaults of timm's registrations: embed_dim, depths, num_heads by size
  static const std::regex name_re(R"(^swin_([a-z0-9]+)_patch(\d+)_window(\d+)_(\d+))");
  std::smatch m;
  if (!std::regex_search(c.architecture, m, name_re))
    fail("{}: unknown Swin architecture '{}' (expected swin_{{tiny,small,base,large}}_patch{{P}}_window{{W}}_{{IMG}})",
         where, c.architecture);
  struct Size { int64_t dim; std::vector<int64_t> depths, heads; };
  static const std::map<std::string, Size> sizes = {
      {"tiny", {96, {2, 2, 6, 2}, {3, 6, 12, 24}}},   {"small", {96, {2, 2, 18, 2}, {3, 6, 12, 24}}},
      {"base", {128, {2, 2, 18, 2}, {4, 8, 16, 32}}}, {"large", {192, {2, 2, 18, 2}, {6, 12, 24, 48}}}};
  auto size = sizes.find(m[1]);
  if (size == sizes.end())
    fail("{}: unknown Swin size '{}' in architecture '{}' (known: tiny, small, base, large)", where, m[1].str(),
         c.architecture);
  c.embed_dim = size->second.dim;
  c.depths = size->second.depths;
  c.num_heads = size->second.heads;
  c.patch_size = std::stoll(m[2]);
  Pair window{std::stoll(m[3]), std::stoll(m[3])};
  c.img_size = {std::stoll(m[4]), std::stoll(m[4])};
  try {
    c.num_classes = j.value("num_classes", c.num_classes);
    c.embed_dim = j.value("embed_dim", c.embed_dim);
    c.patch_size = j.value("patch_size", c.patch_size);
    c.qkv_bias = j.value("qkv_bias", c.qkv_bias);
    if (j.value("in_chans", int64_t{3}) != 3) fail("{}: in_chans must be 3 (RGB input)", where);
    if (j.value("global_pool", std::string("avg")) != "avg")
      fail("{}: global_pool '{}' is not supported (only avg)", where, j["global_pool"].get<std::string>());
    if (j.contains("depths")) c.depths = j["depths"].get<std::vector<int64_t>>();
    const size_t L = c.depths.size();
    if (j.contains("num_heads")) {
      const auto& h = j["num_heads"];
      c.num_heads = h.is_number_integer() ? std::vector<int64_t>(L, h.get<int64_t>()) : h.get<std::vector<int64_t>>();
    }
    if (c.num_heads.size() != L)
      fail("{}: depths has {} stages but num_heads has {} entries", where, L, c.num_heads.size());
    c.head_dim.assign(L, 0);
    if (j.contains("head_dim") && !j["head_dim"].is_null()) c.head_dim = int_list(j, "head_dim", {}, L, where);
    // window_size: a number, [height, width] for every stage (as timm reads a 2-list), or one number per stage
    c.window_size.assign(L, window);
    if (j.contains("window_size")) {
      const auto& w = j["window_size"];
      if (w.is_array() && w.size() != 2) {
        auto l = int_list(j, "window_size", {}, L, where);
        for (size_t i = 0; i < L; ++i) c.window_size[i] = {l[i], l[i]};
      } else {
        c.window_size.assign(L, pair_of(w, "window_size", where));
      }
    }
    c.mlp_ratio.assign(L, 4.0);
    if (j.contains("mlp_ratio")) {
      const auto& r = j["mlp_ratio"];
      c.mlp_ratio = r.is_number() ? std::vector<double>(L, r.get<double>()) : r.get<std::vector<double>>();
      if (c.mlp_ratio.size() != L) fail("{}: mlp_ratio needs {} entries, got {}", where, L, c.mlp_ratio.size());
    }
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed config field ({})", where, first_line(e.what()));
  }
  const auto input = config_input_size(j, where, c.img_size[0]);  // img_size, pretrained_cfg.input_size, the name's
  c.img_size = {input[0], input[1]};
  if (c.depths.empty() || c.depths.size() > 8) fail("{}: depths must name 1 to 8 stages", where);
  check_range(static_cast<double>(c.embed_dim), 1, static_cast<double>(kMaxWidth >> (c.depths.size() - 1)), "embed_dim", where);
  check_range(static_cast<double>(c.patch_size), 1, 64, "patch_size", where);
  if (c.num_classes <= 0) fail("{}: num_classes must be positive", where);
  if (c.embed_dim <= 0) fail("{}: embed_dim must be positive", where);
  if (c.patch_size <= 0 || c.img_size[0] <= 0 || c.img_size[1] <= 0 || c.img_size[0] % c.patch_size != 0 ||
      c.img_size[1] % c.patch_size != 0)
    fail("{}: img_size {}x{} is not divisible by patch_size {}", where, c.img_size[0], c.img_size[1], c.patch_size);
  for (size_t i = 0; i < c.depths.size(); ++i) {
    const int64_t dim = c.embed_dim << i;
    if (c.depths[i] <= 0 || c.depths[i] > kMaxDepth) fail("{}: depths[{}] must lie in [1, {}]", where, i, kMaxDepth);
    if (c.num_heads[i] <= 0) fail("{}: num_heads[{}] must be positive", where, i);
    if (c.head_dim[i] < 0 || c.head_dim[i] > 1024) fail("{}: head_dim[{}] must lie in [1, 1024]", where, i);
    if (c.head_dim[i] == 0 && dim % c.num_heads[i] != 0)
      fail("{}: non-divisible head count: stage {} has dim {} and num_heads {}", where, i, dim, c.num_heads[i]);
    if (c.window_size[i][0] <= 0 || c.window_size[i][1] <= 0 || c.window_size[i][0] > 64 || c.window_size[i][1] > 64)
      fail("{}: window_size of stage {} must lie in [1, 64]", where, i);
    if (!(c.mlp_ratio[i] > 0.0)) fail("{}: mlp_ratio must be positive", where);
    check_range(c.mlp_ratio[i], 0.0, kMaxRatio, "mlp_ratio", where);
    check_range(static_cast<double>(c.num_heads[i]), 1, 1024, "num_heads", where);
  }
  return c;
}

// timm's get_relative_position_index: [N, N] with N = wh*ww, index into the (2wh-1)(2ww-1) table.
at::Tensor relative_position_index(Pair w) {
  const int64_t n = w[0] * w[1];
  auto idx = at::empty({n, n}, at::kLong);
  auto a = idx.accessor<int64_t, 2>();
  for (int64_t p = 0; p < n; ++p)
    for (int64_t q = 0; q < n; ++q)
      a[p][q] = (p / w[1] - q / w[1] + w[0] - 1) * (2 * w[1] - 1) + (p % w[1] - q % w[1] + w[1] - 1);
  return idx;
}

// timm's shifted-window attention mask [nW, N, N] (0 / -100) for the padded resolution `res`: regions labelled
// by the same python slices, assigned in the same order (a zero shift makes slice(-0, None) cover everything).
at::Tensor shifted_window_mask(Pair res, Pair w, Pair s) {
  auto img = at::zeros({res[0], res[1]}, at::kFloat);
  auto ranges = [](int64_t len, int64_t win, int64_t shift) {
    const int64_t b = shift == 0 ? 0 : len - shift;  // python's -0 is 0
    return std::array<Pair, 3>{Pair{0, len - win}, Pair{len - win, std::max(len - win, b)}, Pair{b, len}};
  };
  int64_t cnt = 0;
  for (auto h : ranges(res[0], w[0], s[0]))
    for (auto v : ranges(res[1], w[1], s[1])) {
      img.slice(0, h[0], h[1]).slice(1, v[0], v[1]).fill_(static_cast<double>(cnt));
      ++cnt;
    }
  // window partition: [Hp, Wp] -> [Hp/wh, wh, Wp/ww, ww] -> [nW, N]
  auto win = img.view({res[0] / w[0], w[0], res[1] / w[1], w[1]}).permute({0, 2, 1, 3}).reshape({-1, w[0] * w[1]});
  auto diff = win.unsqueeze(1) - win.unsqueeze(2);  // [nW, N, N]
  return at::where(diff != 0, at::full({}, -100.0, at::kFloat), at::zeros({}, at::kFloat));
}

// One SwinTransformerBlock on x [B, H, W, C]; returns [B, H, W, C].
int swin_block(ModelBuilder& b, const std::string& p, int x, int64_t C, Pair res, int64_t heads, int64_t head_dim,
               Pair target_window, Pair target_shift, double mlp_ratio, bool qkv_bias) {
  const std::string a = p + ".attn";
  // timm's _calc_window_shift: a window no larger than the resolution, and no shift along a dim it covers
  Pair w{}, s{};
  for (size_t d = 0; d < 2; ++d) {
    w[d] = res[d] <= target_window[d] ? res[d] : target_window[d];
    s[d] = res[d] <= w[d] ? 0 : target_shift[d];
  }
  const bool shift = s[0] != 0 || s[1] != 0;
  const Pair pad{(w[0] - res[0] % w[0]) % w[0], (w[1] - res[1] % w[1]) % w[1]};
  const Pair rp{res[0] + pad[0], res[1] + pad[1]};  // padded resolution
  const Pair nw{rp[0] / w[0], rp[1] / w[1]};
  const int64_t N = w[0] * w[1], W = nw[0] * nw[1], D = head_dim, A = heads * D;

  int h = b.layer_norm(p + ".norm1", x, C, 1e-5);
  if (shift) h = b.node(OpKind::Roll, p + ".shift", {h}, {{"shifts", std::vector<int64_t>{-s[0], -s[1]}},
                                                          {"dims", std::vector<int64_t>{1, 2}}});
  if (pad[0] || pad[1])  // F.pad(x, (0, 0, 0, pad_w, 0, pad_h)): bottom and right of H, W
    h = b.node(OpKind::Pad, p + ".pad", {h}, {{"pads", std::vector<int64_t>{0, 0, 0, 0, 0, pad[0], pad[1], 0}},
                                               {"value", 0.0}});
  // window partition: [B,Hp,Wp,C] -> [B,Hp/wh,wh,Wp/ww,ww,C] -> [B,Hp/wh,Wp/ww,wh,ww,C] -> [B*nW,N,C]
  h = b.reshape(p + ".partition", h, {1, nw[0], w[0], nw[1], w[1], C});
  h = b.transpose(p + ".partition_permute", h, {0, 1, 3, 2, 4, 5});
  h = b.reshape(p + ".partition_flatten", h, {W, N, C});

  // window attention: qkv [B*nW,N,3A] -> [B*nW,N,3,heads,D] -> [3,B*nW,heads,N,D] -> q,k,v [B*nW,heads,N,D]
  h = b.linear(a + ".qkv", h, C, 3 * A, qkv_bias);
  auto qkv = b.split_heads(a, h, W, N, heads, D);
  // timm scales q (by head_dim ** -0.5) before q·kᵀ; we scale the product, as every vitq attention does (and the
  // ONNX importer arranges): q·kᵀ then reads q itself, the same up to float rounding (~1e-7 relative)
  int sc = b.attention_scores(a, qkv[0], qkv[1], std::pow(static_cast<double>(D), -0.5));  // [B*nW,heads,N,N]
  // relative position bias: table[(2wh-1)(2ww-1), heads] gathered by index [N,N] -> [N,N,heads] -> [heads,N,N]
  int table = b.param(a + ".relative_position_bias_table", {(2 * w[0] - 1) * (2 * w[1] - 1), heads});
  int index = b.computed_buffer(a + ".relative_position_index", relative_position_index(w));
  int bias = b.node(OpKind::Gather, a + ".rel_pos_gather", {table, index}, {{"axis", int64_t{0}}});
  bias = b.transpose(a + ".rel_pos_permute", bias, {2, 0, 1});
  sc = b.node(OpKind::Add, a + ".add_rel_pos", {sc, bias});
  if (shift) {  // [B*nW,heads,N,N] -> [B,nW,heads,N,N] + mask [nW,1,N,N] -> [B*nW,heads,N,N]
    int mask = b.computed_buffer(p + ".attn_mask", shifted_window_mask(rp, w, s));
    mask = b.node(OpKind::Unsqueeze, p + ".attn_mask_unsqueeze", {mask}, {{"axes", std::vector<int64_t>{1}}});
    sc = b.reshape(a + ".mask_view", sc, {1, W, heads, N, N});
    sc = b.node(OpKind::Add, a + ".add_mask", {sc, mask});
    sc = b.reshape(a + ".mask_unview", sc, {W, heads, N, N});
  }
  int o = b.attention_output(a, sc, qkv[2], W, N, A);  // [B*nW,N,A]
  o = b.linear(a + ".proj", o, A, C);

  // window reverse: [B*nW,N,C] -> [B,Hp/wh,Wp/ww,wh,ww,C] -> [B,Hp/wh,wh,Wp/ww,ww,C] -> [B,Hp,Wp,C]
  o = b.reshape(p + ".reverse", o, {1, nw[0], nw[1], w[0], w[1], C});
  o = b.transpose(p + ".reverse_permute", o, {0, 1, 3, 2, 4, 5});
  o = b.reshape(p + ".reverse_flatten", o, {1, rp[0], rp[1], C});
  if (pad[0] || pad[1])
    o = b.node(OpKind::Slice, p + ".crop", {o}, {{"starts", std::vector<int64_t>{0, 0}},
                                                 {"ends", std::vector<int64_t>{res[0], res[1]}},
                                                 {"axes", std::vector<int64_t>{1, 2}}});
  if (shift) o = b.node(OpKind::Roll, p + ".unshift", {o}, {{"shifts", std::vector<int64_t>{s[0], s[1]}},
                                                            {"dims", std::vector<int64_t>{1, 2}}});
  x = b.node(OpKind::Add, p + ".add_attn", {x, o});

  // MLP on [B,H*W,C]
  const auto hidden = static_cast<int64_t>(static_cast<double>(C) * mlp_ratio);  // python int(): truncates
  x = b.reshape(p + ".to_tokens", x, {1, res[0] * res[1], C});
  h = b.layer_norm(p + ".norm2", x, C, 1e-5);
  h = b.linear(p + ".mlp.fc1", h, C, hidden);
  h = b.act("gelu", p + ".mlp.act", h);
  h = b.linear(p + ".mlp.fc2", h, hidden, C);
  x = b.node(OpKind::Add, p + ".add_mlp", {x, h});
  return b.reshape(p + ".to_nhwc", x, {1, res[0], res[1], C});
}

}  // namespace

Graph build_swin(const nlohmann::json& config, const WeightSource& weights, const std::string& where) {
  const SwinConfig c = parse_swin_config(config, where);
  Graph g;
  ModelBuilder b(g, weights, c.architecture);
  const int64_t P = c.patch_size;
  Pair res{c.img_size[0] / P, c.img_size[1] / P};

  // patch embedding: conv PxP stride P [B,3,H,W] -> [B,C,H/P,W/P] -> NHWC [B,H/P,W/P,C] -> LayerNorm
  int64_t C = c.embed_dim;
  int x = b.node(OpKind::Conv2d, "patch_embed.proj",
                 {b.input(), b.param("patch_embed.proj.weight", {C, 3, P, P}), b.param("patch_embed.proj.bias", {C})},
                 {{"strides", std::vector<int64_t>{P, P}}, {"pads", std::vector<int64_t>{0, 0, 0, 0}}});
  x = b.transpose("patch_embed.to_nhwc", x, {0, 2, 3, 1});
  x = b.layer_norm("patch_embed.norm", x, C, 1e-5);

  for (size_t i = 0; i < c.depths.size(); ++i) {
    const std::string stage = fmt::format("layers.{}", i);
    if (i > 0) {
      // PatchMerging: [B,H,W,C] -> [B,H/2,2,W/2,2,C] -> [B,H/2,W/2,2(w),2(h),C] -> [B,H/2,W/2,4C] -> norm -> 2C
      const std::string d = stage + ".downsample";
      if (res[0] % 2 != 0 || res[1] % 2 != 0)
        fail("{}: {} merges patches of a {}x{} feature map, which needs an even height and width (img_size {}x{})",
             where, d, res[0], res[1], c.img_size[0], c.img_size[1]);
      res = {res[0] / 2, res[1] / 2};
      x = b.reshape(d + ".reshape", x, {1, res[0], 2, res[1], 2, C});
      x = b.transpose(d + ".permute", x, {0, 1, 3, 4, 2, 5});
      x = b.reshape(d + ".flatten", x, {1, res[0], res[1], 4 * C});
      x = b.layer_norm(d + ".norm", x, 4 * C, 1e-5);
      x = b.linear(d + ".reduction", x, 4 * C, 2 * C, false);
      C *= 2;
    }
    const int64_t heads = c.num_heads[i], head_dim = c.head_dim[i] ? c.head_dim[i] : C / heads;
    const Pair win = c.window_size[i], shift{win[0] / 2, win[1] / 2};
    for (int64_t k = 0; k < c.depths[i]; ++k)
      x = swin_block(b, fmt::format("{}.blocks.{}", stage, k), x, C, res, heads, head_dim, win,
                     k % 2 == 0 ? Pair{0, 0} : shift, c.mlp_ratio[i], c.qkv_bias);
  }
  // final norm, mean over H and W: [B,H,W,C] -> [B,C], head
  x = b.layer_norm("norm", x, C, 1e-5);
  x = b.node(OpKind::ReduceMean, "head.global_pool", {x},
             {{"axes", std::vector<int64_t>{1, 2}}, {"keepdims", int64_t{0}}});
  x = b.linear("head.fc", x, C, c.num_classes);
  b.finish(x, "swin", c.architecture, c.num_classes);
  return g;
}

}  // namespace vitq
