// The graph IR every front end produces and every method works on.
//
// A Graph is a list of nodes in topological order over values. A value is either an activation (produced by a
// node, or the graph input) or a constant (a weight, bias or small parameter tensor, held in `consts`).
// Quantization points are edges: (node, input slot). E.g. a Linear node has inputs [x, W, b?] with W [out, in]
// and b [out] constants; a Conv2d node [x, W, b?] with W [out, in/groups, kh, kw].
// Layouts: the graph input is an image batch [B, 3, H, W] (normalised float32); token tensors are [B, N, C].
// Reshape/Expand targets may depend on the batch size B: see ShapeSpec.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "vitq/data/preprocess_config.h"

namespace vitq {

enum class OpKind {
  // compute
  Conv2d, Linear, MatMul, Add, Sub, Mul, Div, Pow, Sqrt, Erf, ReduceMean, Softmax, LayerNorm, Gelu, Relu,
  Sigmoid, Tanh, SiLU,
  // hybrid / Swin networks
  BatchNorm,     // [x, scale, bias, mean, var], attr epsilon; inference form (running statistics)
  GroupNorm,     // [x, gamma, beta], attrs num_groups, epsilon; gamma/beta per channel (dim 1)
  InstanceNorm,  // [x, scale, bias], attr epsilon (ONNX InstanceNormalization; import fuses it into GroupNorm)
  HardSwish, HardSigmoid,  // HardSigmoid: clamp(alpha x + beta, 0, 1), attrs alpha, beta (ONNX defaults 0.2, 0.5)
  AvgPool,        // attrs kernel_shape, strides, pads (t, l, b, r), count_include_pad, ceil_mode
  GlobalAvgPool,  // mean over H, W, keeping them as 1
  ReduceSum,      // attrs axes, keepdims (or axes as input 1)
  Roll,           // attrs shifts, dims (torch.roll: cyclic shift)
  Pad,            // attrs pads (ONNX order: begins then ends, per axis), value; constant mode only
  Resize,         // attrs mode (linear|nearest), coordinate_transformation_mode, sizes ([H, W]) or scales
  // data movement
  Reshape, Flatten, Transpose, Concat, Slice, Gather, Split, Squeeze, Unsqueeze, Expand, Identity,
  // raw ONNX shape arithmetic: only before import folds it away
  Shape, Cast, ConstantOfShape, Equal, Where,
};
const char* op_name(OpKind op);
std::optional<OpKind> op_from_name(std::string_view name);

// Roles the methods need, tagged by annotate_roles() on values and nodes (a bit set).
enum Role : uint32_t {
  kRoleNone = 0,
  kPostSoftmax = 1u << 0,    // value: softmax output (attention probabilities)
  kPostGelu = 1u << 1,       // value: GELU output (fc2 input)
  kPostLayerNorm = 1u << 2,  // value: LayerNorm output (qkv / fc1 input)
  kResidual = 1u << 3,       // value: the residual stream
  kAttnQK = 1u << 4,         // node: q·kᵀ matmul
  kAttnV = 1u << 5,          // node: softmax·v matmul
  kResidualAdd = 1u << 6,    // node: residual add
  // normalisation kind of a quantizable layer (node): a BatchNorm follows it (folded into its weights at load),
  // or its input comes from a LayerNorm / GroupNorm (through data movement only)
  kNormBatch = 1u << 7,
  kNormLayer = 1u << 8,
  kNormGroup = 1u << 9,
  kBridge = 1u << 10,        // node: a quantizable layer of a bridge block (Graph::bridges)
};
std::string roles_to_string(uint32_t roles);

using AttrValue = std::variant<int64_t, double, std::string, std::vector<int64_t>, std::vector<double>>;

struct Node {
  OpKind op;
  std::string name;          // layer name, timm-style where known ("blocks.0.attn.qkv")
  std::vector<int> inputs;   // value ids
  std::vector<int> outputs;  // value ids
  std::map<std::string, AttrValue> attrs;
  uint32_t roles = kRoleNone;

  bool has(const std::string& key) const { return attrs.count(key) != 0; }
  int64_t geti(const std::string& key, int64_t fallback) const;
  double getf(const std::string& key, double fallback) const;
  std::vector<int64_t> getints(const std::string& key, std::vector<int64_t> fallback = {}) const;
  std::string gets(const std::string& key, std::string fallback = "") const;
};

struct Value {
  std::string name;
  int producer = -1;  // node index, -1 for constants and the graph input
  uint32_t roles = kRoleNone;
};

// A shape that may scale with the batch: dim i = batch_mult[i] != 0 ? batch_mult[i] * B : dims[i].
// Stored on Reshape/Expand nodes as attrs "shape" and "batch_mult".
struct ShapeSpec {
  std::vector<int64_t> dims;
  std::vector<int64_t> batch_mult;
  std::vector<int64_t> resolve(int64_t batch) const;
};

struct ModelMeta {
  std::string name;         // architecture, e.g. deit_tiny_patch16_224
  std::string family;       // vit | mobilevit | mobilevitv2 | efficientformer | efficientformerv2 | swin; "" for ONNX
  // Parameters as the source model counts them (timm's nn.Parameters, before BatchNorm folding); 0 = unknown
  // (ONNX), then Graph::num_parameters() counts the graph's float constants (after torch folded BatchNorm).
  int64_t declared_parameters = 0;
  std::string source;       // file it was loaded from
  std::string format;       // "safetensors" | "onnx"
  int64_t num_classes = 0;
  PreprocessConfig preprocess;
};

// A bridge block (Q-HyViT): where a network switches between the convolution (4-D [B,C,H,W]) and the
// transformer (token) layout. `transition` is the data-movement node where the layout changes; `layers` are the
// quantizable layers of the block in graph order: the chain of layers that produces the transition's input
// (walking back while a layer's output has one reader) and the first quantizable layer(s) after it.
struct BridgeBlock {
  std::string name;        // the transition's module, e.g. "stages.2.1.unfold"
  std::string kind;        // "conv->transformer" | "transformer->conv"
  std::string transition;  // node name
  std::vector<std::string> layers;
};

class Graph {
 public:
  std::vector<BridgeBlock> bridges;  // filled by find_bridges()
  ModelMeta meta;
  std::vector<Value> values;
  std::vector<at::Tensor> consts;  // indexed by value id; defined only for constants
  std::vector<Node> nodes;
  // LayerNorms whose outputs a plan's reparameterisation already changed (QuantPlan::reparams, with_reparams)
  std::vector<std::string> reparameterised;
  int input = -1;   // value id of the image batch
  int output = -1;  // value id of the logits [B, num_classes]

  int add_value(const std::string& name);
  int add_const(const std::string& name, at::Tensor tensor);
  // Appends a node; creates its outputs as new values named after `name` (suffix ":k" beyond the first).
  int add_node(OpKind op, const std::string& name, std::vector<int> inputs, int num_outputs = 1,
               std::map<std::string, AttrValue> attrs = {});
  int out(int node, int k = 0) const { return nodes[static_cast<size_t>(node)].outputs[static_cast<size_t>(k)]; }

  bool is_const(int value) const;
  const at::Tensor& const_tensor(int value) const;
  std::optional<int> find_value(const std::string& name) const;
  // The first node called `name`, or nullptr. (Quantizable layers have unique names: annotate_roles.)
  const Node* find_node(const std::string& name) const;
  // consumers[v] = indices of nodes that read value v
  std::vector<std::vector<int>> consumers() const;
  // Throws Error if ids are out of range, nodes are not topologically ordered, or an input is undefined.
  void validate() const;
  // Parameters: total elements of the constants referenced by nodes.
  int64_t num_parameters() const;
};

// Quantizable layers: Linear, Conv2d, and MatMul nodes whose both inputs are activations.
bool is_quantizable(const Graph& g, const Node& n);

}  // namespace vitq
