// What every architecture builder shares: where tensors come from (a safetensors file, or nothing when
// `vitq info` describes a config alone), and ModelBuilder, which adds timm-named layers to a Graph while
// checking every tensor's shape against the config, counting timm's parameters and, at the end, that every
// tensor of the file was used.
#pragma once
#include <ATen/core/Tensor.h>

#include <array>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <set>
#include <string>
#include <vector>

#include "vitq/graph/graph.h"

namespace vitq {

class SafeTensorsFile;

// Tensors by timm name. `file == nullptr`: no weights (config only): every tensor asked for is made with the
// shape the config implies (zeros; BatchNorm variances ones), so shapes, parameters and FLOPs can be measured.
class WeightSource {
 public:
  explicit WeightSource(const SafeTensorsFile* file) : file_(file) {}
  bool has_file() const { return file_ != nullptr; }
  std::string path() const;
  const SafeTensorsFile* file() const { return file_; }

 private:
  const SafeTensorsFile* file_;
};

class ModelBuilder {
 public:
  ModelBuilder(Graph& g, const WeightSource& w, std::string label);

  // A timm nn.Parameter (counted in the parameter total) / a buffer (BatchNorm running statistics: not
  // counted). Fails when the file lacks it or its shape differs from `shape`.
  int param(const std::string& name, const std::vector<int64_t>& shape);
  int buffer(const std::string& name, const std::vector<int64_t>& shape);
  // A buffer the builder computes itself (index tables): when the file has it, it must be equal.
  int computed_buffer(const std::string& name, const at::Tensor& value);
  // A constant that is not a timm tensor (a scale, an index, a mask): never looked up in the file.
  int constant(const std::string& name, const at::Tensor& value);
  int scalar(const std::string& name, double v);
  int index(const std::string& name, int64_t v);

  Graph& graph() { return g_; }
  int input() const { return g_.input; }

  int node(OpKind op, const std::string& name, std::vector<int> inputs, std::map<std::string, AttrValue> attrs = {});
  // A node with several outputs; returns their value ids.
  std::vector<int> multi(OpKind op, const std::string& name, std::vector<int> inputs, int outputs,
                         std::map<std::string, AttrValue> attrs = {});

  int linear(const std::string& name, int x, int64_t in, int64_t out, bool bias = true);
  // Square kernel k, stride s, symmetric padding `pad` (-1: k/2, as timm's same padding for odd k).
  int conv(const std::string& name, int x, int64_t in, int64_t out, int64_t k, int64_t stride = 1, int64_t pad = -1,
           int64_t groups = 1, bool bias = true);
  // BatchNorm2d `name` (weight, bias, running_mean, running_var; num_batches_tracked accepted and ignored).
  int batch_norm(const std::string& name, int x, int64_t channels, double eps = 1e-5);
  // LayerNorm over the last axis.
  int layer_norm(const std::string& name, int x, int64_t dim, double eps);
  // LayerNorm over the channels of a [B,C,H,W] tensor, as timm's LayerNorm2d (permute, norm, permute back).
  int layer_norm_2d(const std::string& name, int x, int64_t channels, double eps);
  int group_norm(const std::string& name, int x, int64_t groups, int64_t channels, double eps);
  // gelu (exact erf), gelu_tanh, silu (swish), relu, hardswish, sigmoid, identity
  int act(const std::string& kind, const std::string& name, int x);

  // Reshape to `dims`, whose first entry is a multiple of the batch (1: [B, ...]; P: [B*P, ...]).
  int reshape(const std::string& name, int x, std::vector<int64_t> dims);
  int transpose(const std::string& name, int x, std::vector<int64_t> perm);

  // Multi-head attention in the one form every builder uses, so that methods find q·kᵀ and attn·v by structure
  // (`<a>.matmul_qk`, `<a>.matmul_av`). `rows` is the batch multiple of the token tensors (1; Swin's windows or
  // MobileViT's patches per image), `tokens` N, `heads` H of `dim` D each.
  // qkv [B*rows,N,3HD] -> [B*rows,N,3,H,D] -> [3,B*rows,H,N,D] -> q, k, v [B*rows,H,N,D]
  std::array<int, 3> split_heads(const std::string& a, int qkv, int64_t rows, int64_t tokens, int64_t heads, int64_t dim);
  // q·kᵀ, then times `scale`: [B*rows,H,N,N]
  int attention_scores(const std::string& a, int q, int k, double scale);
  // softmax(scores)·v with the heads merged back: [B*rows,N,width]
  int attention_output(const std::string& a, int scores, int v, int64_t rows, int64_t tokens, int64_t width);

  // Layer scale on a [B,C,H,W] x: x * gamma, the [C] parameter `name`.gamma viewed as [C,1,1].
  int layer_scale_2d(const std::string& name, int x, int64_t channels);

  // timm's distillation head in eval mode: (head(x) + head_dist(x_dist)) / 2 (x_dist < 0: the same x).
  int distilled_head(int x, int x_dist, int64_t dim, int64_t num_classes);

  // Ends the build: the output value, every tensor of the file used (else an error naming the first unused
  // one), meta (name, family, timm's parameter count), BatchNorm folded into convolutions, roles annotated,
  // graph validated.
  void finish(int output, const std::string& family, const std::string& name, int64_t num_classes);

 private:
  int fetch(const std::string& name, const std::vector<int64_t>& shape, bool counted);
  Graph& g_;
  const WeightSource& w_;
  std::string label_;
  std::set<std::string> used_;
  std::set<std::string> bn_prefixes_;
  int64_t params_ = 0;
  int64_t total_ = 0;  // elements of every tensor fetched
};

// Bounds on what a config may ask for, so that a typo cannot make vitq allocate or compute without end:
// input sides, per-stage depths and widths, ratios, and the size of any one tensor and of all together.
constexpr int64_t kMaxInputSide = 2048, kMaxDepth = 64, kMaxWidth = 16384;
constexpr double kMaxRatio = 16.0;
constexpr int64_t kMaxTensorElements = int64_t{1} << 31, kMaxModelElements = int64_t{4} << 30;
// `value` must lie in [lo, hi]: else a one-line error naming `key`.
void check_range(double value, double lo, double hi, const std::string& key, const std::string& where);

// The input resolution a config asks for: `img_size` (a number or [H, W]) or pretrained_cfg.input_size
// ([3, H, W]); both given and different is an error; neither: fallback x fallback. Sides in [1, kMaxInputSide].
std::array<int64_t, 2> config_input_size(const nlohmann::json& j, const std::string& where, int64_t fallback);

// Four-stage hierarchies (EfficientFormer): widths in [2, kMaxWidth], depths in [1, kMaxDepth], and a stage
// that does not downsample keeps its predecessor's width.
void check_stages(const std::vector<int64_t>& embed_dims, const std::vector<int64_t>& depths,
                  const std::vector<bool>& downsamples, const std::string& where);

// LeViT-style attention-bias index (EfficientFormer V1/V2's attention_bias_idxs): queries on the grid
// (step*i, step*j) of an r0 x r1 key grid; int64 [Nq, Nk] with entries |dy| * r1 + |dx|.
at::Tensor attention_bias_index(int64_t r0, int64_t r1, int64_t step);

// Reads an integer list that may be given as one number (broadcast to `n` entries) or as a list of `n`.
std::vector<int64_t> int_list(const nlohmann::json& j, const std::string& key, std::vector<int64_t> fallback,
                              size_t n, const std::string& where);

}  // namespace vitq
