#include "vitq/models/onnx_import.h"

#include <ATen/ATen.h>
#include <onnx/onnx_pb.h>

#include <cstring>
#include <fstream>
#include <map>

#include "vitq/graph/passes.h"
#include "vitq/models/onnx_fusions.h"
#include "vitq/util/error.h"
#include "vitq/util/file_io.h"

namespace vitq {

namespace {

at::Tensor to_tensor(const onnx::TensorProto& t, const std::string& where) {
  if (t.data_location() == onnx::TensorProto::EXTERNAL)
    fail("{}: tensor {} uses external data, which is not supported", where, t.name());
  std::vector<int64_t> shape(t.dims().begin(), t.dims().end());
  at::ScalarType st;
  switch (t.data_type()) {
    case onnx::TensorProto::FLOAT: st = at::kFloat; break;
    case onnx::TensorProto::DOUBLE: st = at::kDouble; break;
    case onnx::TensorProto::FLOAT16: st = at::kHalf; break;
    case onnx::TensorProto::BFLOAT16: st = at::kBFloat16; break;
    case onnx::TensorProto::INT64: st = at::kLong; break;
    case onnx::TensorProto::INT32: st = at::kInt; break;
    case onnx::TensorProto::BOOL: st = at::kBool; break;
    case onnx::TensorProto::INT8: st = at::kChar; break;
    case onnx::TensorProto::UINT8: st = at::kByte; break;
    default: fail("{}: tensor {} has unsupported data type {}", where, t.name(), t.data_type());
  }
  // The element count from the dims, checked against the data the file holds before anything is allocated:
  // a corrupt dims field must not become a request for gigabytes.
  const size_t element_size = c10::elementSize(st);
  size_t numel = 1;
  for (auto d : shape) {
    if (d < 0) fail("{}: tensor {} has a negative dimension {}", where, t.name(), d);
    if (d != 0 && numel > (SIZE_MAX / element_size) / static_cast<size_t>(d))
      fail("{}: tensor {} has dims whose product overflows", where, t.name());
    numel *= static_cast<size_t>(d);
  }
  const size_t bytes = numel * element_size;
  if (!t.raw_data().empty()) {
    if (t.raw_data().size() != bytes) fail("{}: tensor {} has {} bytes of data, expected {}", where, t.name(), t.raw_data().size(), bytes);
  } else {
    size_t values = 0;
    switch (st) {
      case at::kFloat: values = static_cast<size_t>(t.float_data_size()); break;
      case at::kDouble: values = static_cast<size_t>(t.double_data_size()); break;
      case at::kLong: values = static_cast<size_t>(t.int64_data_size()); break;
      case at::kInt: case at::kBool: values = static_cast<size_t>(t.int32_data_size()); break;
      default: fail("{}: tensor {}: typed data of this type is not supported (use raw_data)", where, t.name());
    }
    if (values != numel) fail("{}: tensor {} has {} values, expected {}", where, t.name(), values, numel);
  }
  auto out = at::empty(shape, at::TensorOptions().dtype(st));
  if (!t.raw_data().empty()) {
    std::memcpy(out.data_ptr(), t.raw_data().data(), bytes);
    return out;
  }
  switch (st) {
    case at::kFloat: std::copy(t.float_data().begin(), t.float_data().end(), out.data_ptr<float>()); break;
    case at::kDouble: std::copy(t.double_data().begin(), t.double_data().end(), out.data_ptr<double>()); break;
    case at::kLong: std::copy(t.int64_data().begin(), t.int64_data().end(), out.data_ptr<int64_t>()); break;
    case at::kInt: std::copy(t.int32_data().begin(), t.int32_data().end(), out.data_ptr<int32_t>()); break;
    case at::kBool: {
      auto* p = out.data_ptr<bool>();
      for (int i = 0; i < t.int32_data_size(); ++i) p[i] = t.int32_data(i) != 0;
      break;
    }
    default: fail("{}: tensor {}: typed data of this type is not supported (use raw_data)", where, t.name());
  }
  return out;
}

const std::map<std::string, OpKind>& op_table() {
  static const std::map<std::string, OpKind> table = {
      {"Conv", OpKind::Conv2d}, {"MatMul", OpKind::MatMul}, {"Add", OpKind::Add}, {"Sub", OpKind::Sub},
      {"Mul", OpKind::Mul}, {"Div", OpKind::Div}, {"Pow", OpKind::Pow}, {"Sqrt", OpKind::Sqrt},
      {"Erf", OpKind::Erf}, {"ReduceMean", OpKind::ReduceMean}, {"Softmax", OpKind::Softmax},
      {"LayerNormalization", OpKind::LayerNorm}, {"Gelu", OpKind::Gelu}, {"Relu", OpKind::Relu},
      {"Sigmoid", OpKind::Sigmoid}, {"Tanh", OpKind::Tanh}, {"Reshape", OpKind::Reshape},
      {"Flatten", OpKind::Flatten}, {"Transpose", OpKind::Transpose}, {"Concat", OpKind::Concat},
      {"Slice", OpKind::Slice}, {"Gather", OpKind::Gather}, {"Split", OpKind::Split},
      {"Squeeze", OpKind::Squeeze}, {"Unsqueeze", OpKind::Unsqueeze}, {"Expand", OpKind::Expand},
      {"Identity", OpKind::Identity}, {"Dropout", OpKind::Identity}, {"Shape", OpKind::Shape},
      {"Cast", OpKind::Cast}, {"ConstantOfShape", OpKind::ConstantOfShape}, {"Equal", OpKind::Equal},
      {"Where", OpKind::Where}, {"Gemm", OpKind::Linear},
      // hybrid networks (MobileViT, EfficientFormer, Swin)
      {"BatchNormalization", OpKind::BatchNorm}, {"InstanceNormalization", OpKind::InstanceNorm},
      {"HardSwish", OpKind::HardSwish}, {"HardSigmoid", OpKind::HardSigmoid}, {"AveragePool", OpKind::AvgPool},
      {"GlobalAveragePool", OpKind::GlobalAvgPool}, {"ReduceSum", OpKind::ReduceSum}, {"Pad", OpKind::Pad},
      {"Resize", OpKind::Resize}};
  return table;
}

// "/blocks/blocks.0/attn/Softmax" -> "blocks.0.attn.Softmax" (module path of torch.onnx node names).
std::string module_path(const std::string& onnx_name) {
  std::vector<std::string> parts;
  size_t pos = 0;
  while (pos <= onnx_name.size()) {
    size_t next = onnx_name.find('/', pos);
    if (next == std::string::npos) next = onnx_name.size();
    if (next > pos) parts.push_back(onnx_name.substr(pos, next - pos));
    pos = next + 1;
  }
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i + 1 < parts.size() && parts[i + 1].rfind(parts[i] + ".", 0) == 0) continue;  // "blocks" before "blocks.0"
    out += (out.empty() ? "" : ".") + parts[i];
  }
  return out;
}

std::string strip_suffix(const std::string& s, const std::string& suffix) {
  if (s.size() > suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0)
    return s.substr(0, s.size() - suffix.size());
  return "";
}

}  // namespace

Graph import_onnx(const std::string& path, int64_t image_height, int64_t image_width) {
  onnx::ModelProto model;
  {
    // protobuf reads at most 2 GB; larger models keep their weights in external data, which vitq does not read
    const std::string bytes = read_file(path, "ONNX file", (uint64_t{1} << 31) - 1);
    if (!model.ParseFromString(bytes)) fail("{}: corrupt ONNX file (protobuf parse failed)", path);
  }
  if (!model.has_graph()) fail("{}: ONNX file has no graph", path);
  for (const auto& op : model.opset_import())
    if ((op.domain().empty() || op.domain() == "ai.onnx") && (op.version() < 13 || op.version() > 17))
      fmt::print(stderr, "vitq: warning: {} uses opset {}; vitq is tested with opsets 13-17\n", path, op.version());
  const auto& gp = model.graph();
  Graph g;
  g.meta.source = path;
  g.meta.format = "onnx";
  std::map<std::string, int> ids;
  for (const auto& init : gp.initializer()) {
    at::Tensor t = to_tensor(init, path);
    // before anything runs the graph (shape folding below executes it)
    if (t.is_floating_point() && !at::isfinite(t).all().item<bool>())
      fail("{}: weight {} has NaN or infinite values", path, init.name());
    ids[init.name()] = g.add_const(init.name(), std::move(t));
  }
  std::vector<std::string> inputs;
  for (const auto& in : gp.input())
    if (!ids.count(in.name())) inputs.push_back(in.name());
  if (inputs.size() != 1) fail("{}: expected one image input, found {}", path, inputs.size());
  g.input = g.add_value(inputs[0]);
  ids[inputs[0]] = g.input;
  int64_t height = image_height, width = image_width;
  for (const auto& in : gp.input())
    if (in.name() == inputs[0] && in.type().tensor_type().shape().dim_size() == 4) {
      const auto& s = in.type().tensor_type().shape();
      if (s.dim(2).has_dim_value()) height = s.dim(2).dim_value();
      if (s.dim(3).has_dim_value()) width = s.dim(3).dim_value();
      if (s.dim(1).has_dim_value() && s.dim(1).dim_value() != 3)
        fail("{}: input {} has {} channels, expected 3", path, inputs[0], s.dim(1).dim_value());
    }

  for (int i = 0; i < gp.node_size(); ++i) {
    const auto& np = gp.node(i);
    if (np.output_size() == 0 || np.output(0).empty())
      fail("{}: node {} ({}) has no output", path, np.name().empty() ? std::to_string(i) : np.name(), np.op_type());
    const std::string where = fmt::format("{}: node {} ({})", path, np.name().empty() ? std::to_string(i) : np.name(), np.op_type());
    if (np.op_type() == "Constant") {
      at::Tensor t;
      for (const auto& a : np.attribute()) {
        if (a.name() == "value") t = to_tensor(a.t(), where);
        else if (a.name() == "value_float") t = at::scalar_tensor(a.f(), at::kFloat);
        else if (a.name() == "value_int") t = at::scalar_tensor(a.i(), at::kLong);
        else if (a.name() == "value_floats") t = at::tensor(std::vector<float>(a.floats().begin(), a.floats().end()));
        else if (a.name() == "value_ints") t = at::tensor(std::vector<int64_t>(a.ints().begin(), a.ints().end()));
      }
      if (!t.defined()) fail("{}: unsupported Constant attribute", where);
      ids[np.output(0)] = g.add_const(np.output(0), t);
      continue;
    }
    auto it = op_table().find(np.op_type());
    if (!np.domain().empty() && np.domain() != "ai.onnx") it = op_table().end();
    if (it == op_table().end())
      fail("{}: unsupported ONNX op {}{} (node {})", path, np.domain().empty() ? "" : np.domain() + ".",
           np.op_type(), np.name());
    std::map<std::string, AttrValue> attrs;
    for (const auto& a : np.attribute()) {
      switch (a.type()) {
        case onnx::AttributeProto::INT: attrs[a.name()] = static_cast<int64_t>(a.i()); break;
        case onnx::AttributeProto::FLOAT: attrs[a.name()] = static_cast<double>(a.f()); break;
        case onnx::AttributeProto::STRING: attrs[a.name()] = a.s(); break;
        case onnx::AttributeProto::INTS: attrs[a.name()] = std::vector<int64_t>(a.ints().begin(), a.ints().end()); break;
        case onnx::AttributeProto::FLOATS: attrs[a.name()] = std::vector<double>(a.floats().begin(), a.floats().end()); break;
        case onnx::AttributeProto::TENSOR: {  // ConstantOfShape's fill value
          auto t = to_tensor(a.t(), where);
          attrs[a.name()] = t.to(at::kDouble).item<double>();
          attrs["dtype"] = static_cast<int64_t>(a.t().data_type());
          break;
        }
        default: fail("{}: attribute {} has an unsupported type", where, a.name());
      }
    }
    std::vector<int> in;
    for (const auto& name : np.input()) {
      if (name.empty()) { in.push_back(-1); continue; }
      auto found = ids.find(name);
      if (found == ids.end()) fail("{}: input {} is not defined before use", where, name);
      in.push_back(found->second);
    }
    OpKind op = it->second;
    std::string name = module_path(np.name().empty() ? np.output(0) : np.name());
    // Layers with weights take the weight's timm name: "blocks.0.norm1.weight" -> "blocks.0.norm1". A conv
    // whose weight torch computed (a BatchNorm folded in: "onnx::Conv_123") takes its module path instead:
    // "/stages/stages.2/stages.2.1/conv_kxk/conv/Conv" -> "stages.2.1.conv_kxk.conv".
    if ((op == OpKind::Conv2d || op == OpKind::LayerNorm || op == OpKind::Linear) && in.size() > 1 && in[1] >= 0) {
      auto n = strip_suffix(g.values[static_cast<size_t>(in[1])].name, ".weight");
      if (!n.empty()) name = n;
      else if (op == OpKind::Conv2d && name.find('.') != std::string::npos) name = name.substr(0, name.rfind('.'));
    }
    if (op == OpKind::Conv2d) {
      if (in.size() < 2 || !g.is_const(in[1]) || g.const_tensor(in[1]).dim() != 4)
        fail("{}: only 2-D convolutions with constant weights are supported", where);
      if (!attrs.count("pads")) attrs["pads"] = std::vector<int64_t>{0, 0, 0, 0};
      if (attrs.count("auto_pad") && std::get<std::string>(attrs["auto_pad"]) != "NOTSET")
        fail("{}: auto_pad is not supported", where);
    }
    if (op == OpKind::Linear) {  // Gemm: Y = alpha * A' B' + beta * C
      Node tmp{op, name, in, {}, attrs};
      if (tmp.getf("alpha", 1.0) != 1.0 || tmp.getf("beta", 1.0) != 1.0 || tmp.geti("transA", 0) != 0 ||
          in.size() < 2 || !g.is_const(in[1]))
        fail("{}: only Gemm with alpha=beta=1, transA=0 and a constant B is supported", where);
      if (tmp.geti("transB", 0) == 0) in[1] = g.add_const(name + ".weight", g.const_tensor(in[1]).t().contiguous());
      if (in.size() > 2 && in[2] >= 0 && !(g.is_const(in[2]) && g.const_tensor(in[2]).dim() == 1))
        fail("{}: Gemm with a non-vector C is not supported", where);
      attrs.clear();
    }
    // the hybrid networks' ops: only the variants the executor computes
    const Node info{op, name, in, {}, attrs};
    if (op == OpKind::BatchNorm && (in.size() != 5 || info.geti("training_mode", 0) != 0))
      fail("{}: only inference-mode BatchNormalization (5 inputs, training_mode 0) is supported", where);
    if (op == OpKind::AvgPool && info.gets("auto_pad", "NOTSET") != "NOTSET") fail("{}: auto_pad is not supported", where);
    if (op == OpKind::AvgPool && info.getints("kernel_shape").size() != 2) fail("{}: only 2-D AveragePool is supported", where);
    if (op == OpKind::Pad && info.gets("mode", "constant") != "constant")
      fail("{}: Pad mode {} is not supported (only constant)", where, info.gets("mode"));
    if (op == OpKind::Pad && in.size() > 3 && in[3] >= 0) fail("{}: Pad with an axes input is not supported", where);
    if (op == OpKind::Resize) {  // bilinear, or nearest as torch exports it (asymmetric, floor)
      const auto mode = info.gets("mode", "nearest"), coord = info.gets("coordinate_transformation_mode", "half_pixel");
      bool ok = mode == "linear" ? coord == "half_pixel" || coord == "pytorch_half_pixel" || coord == "align_corners"
                                 : mode == "nearest" && coord == "asymmetric" && info.gets("nearest_mode", "round_prefer_floor") == "floor";
      if (!ok) fail("{}: Resize mode {} with coordinate_transformation_mode {} is not supported", where, mode, coord);
      attrs["mode"] = mode;  // ONNX's defaults differ from the executor's
      attrs["coordinate_transformation_mode"] = coord;
    }
    int outputs = 0;
    for (const auto& o : np.output())
      if (!o.empty()) ++outputs;
    // LN's mean/invstd, BN's running statistics and Dropout's mask
    if (op == OpKind::LayerNorm || op == OpKind::BatchNorm || op == OpKind::Identity) outputs = 1;
    if ((op == OpKind::LayerNorm || op == OpKind::BatchNorm) && np.output_size() > 1)
      for (int k = 1; k < np.output_size(); ++k)
        if (!np.output(k).empty())
          for (const auto& other : gp.node())
            for (const auto& input : other.input())
              if (input == np.output(k)) fail("{}: {}'s extra outputs are not supported", where, np.op_type());
    int idx = g.add_node(op, name, in, outputs, attrs);
    for (int k = 0; k < outputs; ++k) {
      int v = g.out(idx, k);
      g.values[static_cast<size_t>(v)].name = np.output(k);
      ids[np.output(k)] = v;
    }
  }
  if (gp.output_size() != 1) fail("{}: expected one output (logits), found {}", path, gp.output_size());
  auto out = ids.find(gp.output(0).name());
  if (out == ids.end()) fail("{}: output {} is never computed", path, gp.output(0).name());
  g.output = out->second;
  try {
    g.validate();
  } catch (const Error& e) {
    fail("{}: {}", path, e.what());
  }
  resize_sizes_to_attrs(g, height, width);
  fold_shape_subgraphs(g, height, width);
  inputs_to_attrs(g);
  onnx_inputs_to_attrs(g);
  fuse_linear(g);
  fuse_gelu(g);
  fuse_layer_norm(g);
  fuse_silu(g);
  fuse_group_norm(g);
  scale_after_qk(g);
  drop_broadcast_expand(g, height, width);
  fold_batch_norm(g);
  mark_exported_batch_norm(g);
  compact(g);
  // value names follow node names, as in the builder
  for (auto& n : g.nodes)
    for (size_t k = 0; k < n.outputs.size(); ++k)
      g.values[static_cast<size_t>(n.outputs[k])].name = k == 0 ? n.name : fmt::format("{}:{}", n.name, k);
  annotate_roles(g);
  g.validate();
  return g;
}

}  // namespace vitq
