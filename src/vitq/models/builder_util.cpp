#include "vitq/models/builder_util.h"

#include <ATen/ATen.h>

#include <cstdlib>
#include <nlohmann/json.hpp>
#include <optional>

#include "vitq/graph/passes.h"
#include "vitq/models/safetensors.h"
#include "vitq/util/error.h"

namespace vitq {

namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

std::string WeightSource::path() const { return file_ ? file_->path() : std::string("(config only)"); }

ModelBuilder::ModelBuilder(Graph& g, const WeightSource& w, std::string label)
    : g_(g), w_(w), label_(std::move(label)) {
  g_.input = g_.add_value("input");
}

int ModelBuilder::fetch(const std::string& name, const std::vector<int64_t>& shape, bool counted) {
  int64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0 || (d > 0 && numel > kMaxTensorElements / d))
      fail("{}: {} implies tensor {} of shape [{}], larger than vitq accepts", w_.path(), label_, name, fmt::join(shape, ", "));
    numel *= d;
  }
  total_ += numel;
  if (total_ > kMaxModelElements)
    fail("{}: {} implies more than {} weight elements (at {}): not a model vitq can hold", w_.path(), label_,
         kMaxModelElements, name);
  at::Tensor t;
  if (w_.has_file()) {
    const auto& f = *w_.file();
    if (!f.has(name)) fail("{}: tensor {} is missing (required by {})", f.path(), name, label_);
    const auto& have = f.info(name).shape;
    if (have != shape)
      fail("{}: tensor {} has shape [{}] but the config implies [{}] ({})", f.path(), name, fmt::join(have, ", "),
           fmt::join(shape, ", "), label_);
    t = f.get(name);
    if (!t.is_floating_point())
      fail("{}: tensor {} has dtype {}, expected a floating-point tensor", f.path(), name, f.info(name).dtype);
  } else {
    // placeholders of a config alone: one element seen through every index (stride 0), so that a config of a
    // large model costs no memory (fold_batch_norm keeps them so, one value a channel)
    t = at::scalar_tensor(ends_with(name, "running_var") ? 1.0 : 0.0, at::kFloat).expand(shape);
  }
  if (!used_.insert(name).second) fail("{}: tensor {} is used twice by the builder of {}", w_.path(), name, label_);
  if (counted) params_ += t.numel();
  return g_.add_const(name, t);
}

int ModelBuilder::param(const std::string& name, const std::vector<int64_t>& shape) { return fetch(name, shape, true); }
int ModelBuilder::buffer(const std::string& name, const std::vector<int64_t>& shape) { return fetch(name, shape, false); }

int ModelBuilder::computed_buffer(const std::string& name, const at::Tensor& value) {
  if (w_.has_file() && w_.file()->has(name)) {
    auto have = w_.file()->get(name);
    if (have.sizes() != value.sizes() || !at::equal(have.to(value.scalar_type()), value))
      fail("{}: buffer {} differs from the one {} implies", w_.path(), name, label_);
  }
  used_.insert(name);
  return g_.add_const(name, value);
}

int ModelBuilder::constant(const std::string& name, const at::Tensor& value) { return g_.add_const(name, value); }
int ModelBuilder::scalar(const std::string& name, double v) { return g_.add_const(name, at::scalar_tensor(v, at::kFloat)); }
int ModelBuilder::index(const std::string& name, int64_t v) { return g_.add_const(name, at::scalar_tensor(v, at::kLong)); }

int ModelBuilder::node(OpKind op, const std::string& name, std::vector<int> inputs, std::map<std::string, AttrValue> attrs) {
  return g_.out(g_.add_node(op, name, std::move(inputs), 1, std::move(attrs)));
}

std::vector<int> ModelBuilder::multi(OpKind op, const std::string& name, std::vector<int> inputs, int outputs,
                                     std::map<std::string, AttrValue> attrs) {
  int n = g_.add_node(op, name, std::move(inputs), outputs, std::move(attrs));
  return g_.nodes[static_cast<size_t>(n)].outputs;
}

int ModelBuilder::linear(const std::string& name, int x, int64_t in, int64_t out, bool bias) {
  std::vector<int> args = {x, param(name + ".weight", {out, in})};
  if (bias) args.push_back(param(name + ".bias", {out}));
  return node(OpKind::Linear, name, args);
}

int ModelBuilder::conv(const std::string& name, int x, int64_t in, int64_t out, int64_t k, int64_t stride,
                       int64_t pad, int64_t groups, bool bias) {
  if (groups <= 0 || in % groups != 0 || out % groups != 0)
    fail("{}: {}: {} input and {} output channels cannot form {} groups", w_.path(), name, in, out, groups);
  if (pad < 0) pad = k / 2;
  std::vector<int> args = {x, param(name + ".weight", {out, in / groups, k, k})};
  if (bias) args.push_back(param(name + ".bias", {out}));
  return node(OpKind::Conv2d, name, args,
              {{"strides", std::vector<int64_t>{stride, stride}}, {"pads", std::vector<int64_t>{pad, pad, pad, pad}},
               {"group", groups}});
}

int ModelBuilder::batch_norm(const std::string& name, int x, int64_t c, double eps) {
  bn_prefixes_.insert(name);
  int w = param(name + ".weight", {c}), b = param(name + ".bias", {c});
  int m = buffer(name + ".running_mean", {c}), v = buffer(name + ".running_var", {c});
  return node(OpKind::BatchNorm, name, {x, w, b, m, v}, {{"epsilon", eps}});
}

int ModelBuilder::layer_norm(const std::string& name, int x, int64_t dim, double eps) {
  return node(OpKind::LayerNorm, name, {x, param(name + ".weight", {dim}), param(name + ".bias", {dim})},
              {{"axis", int64_t{-1}}, {"epsilon", eps}});
}

int ModelBuilder::layer_norm_2d(const std::string& name, int x, int64_t c, double eps) {
  x = transpose(name + ".to_nhwc", x, {0, 2, 3, 1});
  x = layer_norm(name, x, c, eps);
  return transpose(name + ".to_nchw", x, {0, 3, 1, 2});
}

int ModelBuilder::group_norm(const std::string& name, int x, int64_t groups, int64_t c, double eps) {
  if (groups <= 0 || c % groups != 0) fail("{}: {}: {} channels cannot form {} groups", w_.path(), name, c, groups);
  return node(OpKind::GroupNorm, name, {x, param(name + ".weight", {c}), param(name + ".bias", {c})},
              {{"num_groups", groups}, {"epsilon", eps}});
}

int ModelBuilder::act(const std::string& kind, const std::string& name, int x) {
  if (kind == "gelu") return node(OpKind::Gelu, name, {x}, {{"approximate", std::string("none")}});
  if (kind == "gelu_tanh") return node(OpKind::Gelu, name, {x}, {{"approximate", std::string("tanh")}});
  if (kind == "silu" || kind == "swish") return node(OpKind::SiLU, name, {x});
  if (kind == "relu") return node(OpKind::Relu, name, {x});
  if (kind == "hardswish") return node(OpKind::HardSwish, name, {x});
  if (kind == "sigmoid") return node(OpKind::Sigmoid, name, {x});
  if (kind == "identity") return x;
  fail("{}: activation '{}' is not supported", label_, kind);
}

int ModelBuilder::reshape(const std::string& name, int x, std::vector<int64_t> dims) {
  std::vector<int64_t> mult(dims.size(), 0);
  mult[0] = dims[0];
  dims[0] = 1;
  return node(OpKind::Reshape, name, {x}, {{"shape", dims}, {"batch_mult", mult}});
}

int ModelBuilder::transpose(const std::string& name, int x, std::vector<int64_t> perm) {
  return node(OpKind::Transpose, name, {x}, {{"perm", perm}});
}

std::array<int, 3> ModelBuilder::split_heads(const std::string& a, int qkv, int64_t rows, int64_t tokens, int64_t heads,
                                             int64_t dim) {
  int h = reshape(a + ".reshape_qkv", qkv, {rows, tokens, 3, heads, dim});
  h = transpose(a + ".permute_qkv", h, {2, 0, 3, 1, 4});
  auto split = multi(OpKind::Split, a + ".split_qkv", {h}, 3, {{"axis", int64_t{0}}, {"split", std::vector<int64_t>{1, 1, 1}}});
  std::array<int, 3> out{};
  for (size_t k = 0; k < 3; ++k)
    out[k] = node(OpKind::Squeeze, fmt::format("{}.{}", a, "qkv"[k]), {split[k]}, {{"axes", std::vector<int64_t>{0}}});
  return out;
}

int ModelBuilder::attention_scores(const std::string& a, int q, int k, double scale) {
  int kt = transpose(a + ".k_transpose", k, {0, 1, 3, 2});
  int s = node(OpKind::MatMul, a + ".matmul_qk", {q, kt});
  return node(OpKind::Mul, a + ".scale", {s, this->scalar(a + ".scale_value", scale)});
}

int ModelBuilder::attention_output(const std::string& a, int scores, int v, int64_t rows, int64_t tokens, int64_t width) {
  int s = node(OpKind::Softmax, a + ".softmax", {scores}, {{"axis", int64_t{-1}}});
  int o = node(OpKind::MatMul, a + ".matmul_av", {s, v});
  o = transpose(a + ".merge_heads", o, {0, 2, 1, 3});
  return reshape(a + ".reshape_out", o, {rows, tokens, width});
}

int ModelBuilder::layer_scale_2d(const std::string& name, int x, int64_t channels) {
  int g = param(name + ".gamma", {channels});
  g = node(OpKind::Reshape, name + ".view", {g},
           {{"shape", std::vector<int64_t>{channels, 1, 1}}, {"batch_mult", std::vector<int64_t>{0, 0, 0}}});
  return node(OpKind::Mul, name, {x, g});
}

int ModelBuilder::distilled_head(int x, int x_dist, int64_t dim, int64_t num_classes) {
  int logits = linear("head", x, dim, num_classes);
  int dist = linear("head_dist", x_dist < 0 ? x : x_dist, dim, num_classes);
  logits = node(OpKind::Add, "head.add_dist", {logits, dist});
  return node(OpKind::Mul, "head.average", {logits, scalar("head.half", 0.5)});
}

void ModelBuilder::finish(int output, const std::string& family, const std::string& name, int64_t num_classes) {
  g_.output = output;
  if (w_.has_file())
    for (const auto& t : w_.file()->names()) {
      if (used_.count(t)) continue;
      const std::string suffix = ".num_batches_tracked";
      if (ends_with(t, suffix) && bn_prefixes_.count(t.substr(0, t.size() - suffix.size()))) continue;
      fail("{}: tensor {} is not used by {} (config and weights disagree)", w_.path(), t, label_);
    }
  g_.meta.name = name;
  g_.meta.family = family;
  g_.meta.num_classes = num_classes;
  g_.meta.declared_parameters = params_;
  fold_batch_norm(g_);
  annotate_roles(g_);
  g_.validate();
}

at::Tensor attention_bias_index(int64_t r0, int64_t r1, int64_t step) {
  const int64_t q0 = (r0 + step - 1) / step, q1 = (r1 + step - 1) / step, nq = q0 * q1, nk = r0 * r1;
  auto t = at::empty({nq, nk}, at::kLong);
  auto* p = t.data_ptr<int64_t>();
  for (int64_t i = 0; i < nq; ++i)
    for (int64_t k = 0; k < nk; ++k)
      p[i * nk + k] = std::abs(step * (i / q1) - k / r1) * r1 + std::abs(step * (i % q1) - k % r1);
  return t;
}

void check_range(double value, double lo, double hi, const std::string& key, const std::string& where) {
  if (!(value >= lo && value <= hi)) fail("{}: {} is {}, outside [{}, {}]", where, key, value, lo, hi);
}

std::array<int64_t, 2> config_input_size(const nlohmann::json& j, const std::string& where, int64_t fallback) {
  std::optional<std::array<int64_t, 2>> from_img, from_cfg;
  try {
    if (j.contains("img_size")) {
      const auto& v = j["img_size"];
      if (v.is_array()) {
        if (v.size() != 2) fail("{}: img_size must be a number or [H, W]", where);
        from_img = std::array<int64_t, 2>{v[0].get<int64_t>(), v[1].get<int64_t>()};
      } else {
        from_img = std::array<int64_t, 2>{v.get<int64_t>(), v.get<int64_t>()};
      }
    }
    if (j.contains("pretrained_cfg") && j["pretrained_cfg"].contains("input_size")) {
      auto v = j["pretrained_cfg"]["input_size"].get<std::vector<int64_t>>();
      if (v.size() != 3) fail("{}: pretrained_cfg.input_size must be [3, H, W]", where);
      from_cfg = std::array<int64_t, 2>{v[1], v[2]};
    }
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed config field img_size / pretrained_cfg.input_size ({})", where, first_line(e.what()));
  }
  if (from_img && from_cfg && *from_img != *from_cfg)
    fail("{}: img_size {}x{} contradicts pretrained_cfg.input_size {}x{}", where, (*from_img)[0], (*from_img)[1],
         (*from_cfg)[0], (*from_cfg)[1]);
  auto size = from_img ? *from_img : from_cfg ? *from_cfg : std::array<int64_t, 2>{fallback, fallback};
  if (size[0] <= 0 || size[1] <= 0 || size[0] > kMaxInputSide || size[1] > kMaxInputSide)
    fail("{}: input size {}x{} is outside [1, {}]", where, size[0], size[1], kMaxInputSide);
  return size;
}

void check_stages(const std::vector<int64_t>& embed_dims, const std::vector<int64_t>& depths,
                  const std::vector<bool>& downsamples, const std::string& where) {
  for (size_t i = 0; i < embed_dims.size() && i < depths.size(); ++i) {
    if (embed_dims[i] < 2 || embed_dims[i] > kMaxWidth || depths[i] <= 0 || depths[i] > kMaxDepth)
      fail("{}: embed_dims must lie in [2, {}] and depths in [1, {}] (stage {}: {}, {})", where, kMaxWidth, kMaxDepth, i,
           embed_dims[i], depths[i]);
    if (i > 0 && i < downsamples.size() && !downsamples[i] && embed_dims[i] != embed_dims[i - 1])
      fail("{}: stage {} does not downsample (downsamples) but changes embed_dims {} -> {}", where, i,
           embed_dims[i - 1], embed_dims[i]);
  }
}

std::vector<int64_t> int_list(const nlohmann::json& j, const std::string& key, std::vector<int64_t> fallback, size_t n,
                              const std::string& where) {
  if (!j.contains(key)) return fallback;
  const auto& v = j[key];
  try {
    if (v.is_number_integer()) return std::vector<int64_t>(n, v.get<int64_t>());
    auto out = v.get<std::vector<int64_t>>();
    if (n != 0 && out.size() != n) fail("{}: {} needs {} entries, got {}", where, key, n, out.size());
    return out;
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed config field {} ({})", where, key, first_line(e.what()));
  }
}

}  // namespace vitq
