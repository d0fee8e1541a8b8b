// ONNX import of the hybrid networks, as torch.onnx (PyTorch 1.13, opset 17) exports timm's MobileViT v1/v2:
// golden logits, the fusions (SiLU, GroupNorm, folded BatchNorm), timm layer names, the ops added for the
// hybrid families on a small synthetic model, one-line errors for ops the importer lacks, and the same IR as
// the safetensors builder.
#ifdef VITQ_WITH_ONNX
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <map>
#include <set>
#include <tuple>

#include "model_test_util.h"
#include "vitq/models/onnx_import.h"

using namespace vitq;
using namespace vitq::test;

namespace {

fs::path hybrid_dir(const std::string& name) { return shared_dir() / "models" / name; }
at::Tensor npy(const fs::path& p) { return npy_tensor(p); }

std::map<std::string, int> census(const Graph& g) {
  std::map<std::string, int> c;
  for (const auto& n : g.nodes) ++c[op_name(n.op)];
  return c;
}

const Node& node_named(const Graph& g, const std::string& name) {
  const Node* n = g.find_node(name);
  if (!n) throw std::runtime_error("no node " + name);
  return *n;
}

void check_golden(const std::string& model) {
  expect_golden_logits(load_model((hybrid_dir(model) / "model.onnx").string()), hybrid_dir(model), model + " (ONNX)");
}

// --- building small ONNX models in tests ---
struct OnnxModel {
  onnx::ModelProto model;
  onnx::GraphProto* g;
  explicit OnnxModel(std::vector<int64_t> input_shape) {
    model.set_ir_version(8);
    model.add_opset_import()->set_version(17);
    g = model.mutable_graph();
    g->set_name("synthetic");
    auto* in = g->add_input();
    in->set_name("input");
    auto* tt = in->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(onnx::TensorProto::FLOAT);
    for (auto d : input_shape) tt->mutable_shape()->add_dim()->set_dim_value(d);
  }
  void init(const std::string& name, const at::Tensor& t) {
    auto* p = g->add_initializer();
    p->set_name(name);
    for (auto d : t.sizes()) p->add_dims(d);
    auto c = t.contiguous();
    p->set_data_type(c.scalar_type() == at::kLong ? onnx::TensorProto::INT64 : onnx::TensorProto::FLOAT);
    p->set_raw_data(std::string(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size()));
  }
  onnx::NodeProto* node(const std::string& op, std::vector<std::string> in, std::string out) {
    auto* n = g->add_node();
    n->set_op_type(op);
    n->set_name("/" + out + "/" + op);
    for (auto& i : in) n->add_input(i);
    n->add_output(out);
    return n;
  }
  std::string save(const TempDir& dir) {
    g->add_output()->set_name(g->node(g->node_size() - 1).output(0));
    auto path = (dir / "model.onnx").string();
    std::ofstream f(path, std::ios::binary);
    model.SerializeToOstream(&f);
    return path;
  }
};
void attr(onnx::NodeProto* n, const std::string& k, int64_t v) {
  auto* a = n->add_attribute(); a->set_name(k); a->set_type(onnx::AttributeProto::INT); a->set_i(v);
}
void attr(onnx::NodeProto* n, const std::string& k, float v) {
  auto* a = n->add_attribute(); a->set_name(k); a->set_type(onnx::AttributeProto::FLOAT); a->set_f(v);
}
void attr(onnx::NodeProto* n, const std::string& k, const std::string& v) {
  auto* a = n->add_attribute(); a->set_name(k); a->set_type(onnx::AttributeProto::STRING); a->set_s(v);
}
void attr(onnx::NodeProto* n, const std::string& k, std::vector<int64_t> v) {
  auto* a = n->add_attribute(); a->set_name(k); a->set_type(onnx::AttributeProto::INTS);
  for (auto x : v) a->add_ints(x);
}
at::Tensor longs(std::vector<int64_t> v) { return at::tensor(v, at::kLong); }

std::string import_error(const std::string& path) {
  try {
    import_onnx(path, 8, 8);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(OnnxHybrid, MobileVitV1GoldenLogits) { check_golden("mobilevit_xxs"); }
TEST(OnnxHybrid, MobileVitV2GoldenLogits) { check_golden("mobilevitv2_050"); }

TEST(OnnxHybrid, FusionsAndTimmNames) {
  Graph v1 = load_model((hybrid_dir("mobilevit_xxs") / "model.onnx").string());
  Graph v2 = load_model((hybrid_dir("mobilevitv2_050") / "model.onnx").string());
  for (const Graph* g : {&v1, &v2}) {
    auto c = census(*g);
    for (const char* gone : {"Sigmoid", "InstanceNorm", "BatchNorm", "Identity", "Shape", "Cast"})
      EXPECT_EQ(c[gone], 0) << gone << " left in " << g->meta.name;
    for (const auto& n : g->nodes) {
      if (!is_quantizable(*g, n)) continue;
      // timm module names, not ONNX node names or torch's constant names
      EXPECT_EQ(n.name.find("onnx::"), std::string::npos) << n.name;
      EXPECT_EQ(n.name.find("Conv"), std::string::npos) << n.name;
      EXPECT_EQ(n.name.find("MatMul"), std::string::npos) << n.name;
      EXPECT_EQ(n.name.find("Gemm"), std::string::npos) << n.name;
    }
  }
  // v1: 34 x*sigmoid(x) in the export, 9 attention blocks of 3 heads
  auto c1 = census(v1);
  EXPECT_EQ(c1["SiLU"], 34);
  EXPECT_EQ(c1["Conv2d"], 35);
  EXPECT_EQ(c1["Linear"], 37);  // 9 blocks x (qkv, proj, fc1, fc2) + head.fc
  EXPECT_EQ(c1["MatMul"], 18);
  EXPECT_EQ(c1["LayerNorm"], 21);
  EXPECT_EQ(node_named(v1, "stem.conv").gets("norm"), "batchnorm");
  EXPECT_EQ(node_named(v1, "stages.2.1.conv_kxk.conv").gets("norm"), "batchnorm");
  EXPECT_EQ(node_named(v1, "stages.2.1.conv_fusion.conv").gets("norm"), "batchnorm");
  EXPECT_FALSE(node_named(v1, "stages.2.1.conv_1x1").has("norm"));  // a plain conv, no BatchNorm
  EXPECT_EQ(node_named(v1, "stages.2.1.transformer.0.attn.qkv").op, OpKind::Linear);
  EXPECT_EQ(node_named(v1, "stages.4.1.transformer.2.mlp.fc2").op, OpKind::Linear);
  EXPECT_EQ(node_named(v1, "stages.3.1.transformer.3.attn.matmul_qk").roles & kAttnQK, kAttnQK);
  EXPECT_EQ(node_named(v1, "head.fc").op, OpKind::Linear);
  // v2: GroupNorm(1 group) x 21 (norm1, norm2 per block and the block's final norm), separable attention
  auto c2 = census(v2);
  EXPECT_EQ(c2["SiLU"], 25);
  EXPECT_EQ(c2["GroupNorm"], 21);
  EXPECT_EQ(c2["Conv2d"], 64);
  EXPECT_EQ(c2["ReduceSum"], 9);
  const Node& gn = node_named(v2, "stages.3.1.transformer.0.norm1");
  EXPECT_EQ(gn.op, OpKind::GroupNorm);
  EXPECT_EQ(gn.geti("num_groups", 0), 1);
  EXPECT_EQ(v2.const_tensor(gn.inputs[1]).sizes(), at::IntArrayRef({96}));
  EXPECT_EQ(node_named(v2, "stages.3.1.transformer.2.attn.qkv_proj").op, OpKind::Conv2d);
  EXPECT_EQ(node_named(v2, "stages.3.1.conv_kxk.conv").gets("norm"), "batchnorm");
  EXPECT_TRUE(node_named(v2, "stages.3.1.transformer.2.attn.ReduceSum").has("axes"));
}

// The ops added for the hybrid families, on a small model checked against the same computation in libtorch:
// Conv + BatchNormalization (folded), HardSwish, AveragePool, Pad (pads and value as inputs), HardSigmoid,
// Resize (nearest by scales; bilinear to a size computed from Shape, as F.interpolate(size=) exports it),
// torch's GroupNorm decomposition, x*sigmoid(x), ReduceSum (axes as input), GlobalAveragePool, Gemm.
TEST(OnnxHybrid, NewOpsMatchLibtorch) {
  at::manual_seed(0);
  auto W = at::randn({4, 3, 3, 3}), b = at::randn({4}), s = at::rand({4}) + 0.5, bb = at::randn({4});
  auto m = at::randn({4}), v = at::rand({4}) + 0.5, gamma = at::randn({4}), beta = at::randn({4});
  auto Wh = at::randn({5, 4}), bh = at::randn({5});
  OnnxModel om({-1, 3, 8, 8});
  om.g->mutable_input(0)->mutable_type()->mutable_tensor_type()->mutable_shape()->mutable_dim(0)->set_dim_param("batch");
  for (auto& [name, t] : std::vector<std::pair<std::string, at::Tensor>>{
           {"c1.weight", W}, {"c1.bias", b}, {"bn.weight", s}, {"bn.bias", bb}, {"bn.mean", m}, {"bn.var", v},
           {"pads", longs({0, 0, 1, 1, 0, 0, 1, 1})}, {"pad_value", at::scalar_tensor(0.5)},
           {"scales", at::tensor(std::vector<float>{1, 1, 2, 2})}, {"gn_shape", longs({0, 2, -1})},
           {"in_scale", at::ones({2})}, {"in_bias", at::zeros({2})}, {"gamma", gamma.view({4, 1, 1})},
           {"beta", beta.view({4, 1, 1})}, {"axes", longs({1})}, {"zero", longs({0})}, {"two", longs({2})},
           {"hw", longs({10, 10})}, {"head.weight", Wh}, {"head.bias", bh}})
    om.init(name, t);
  auto* n = om.node("Conv", {"input", "c1.weight", "c1.bias"}, "conv");
  attr(n, "pads", std::vector<int64_t>{1, 1, 1, 1});
  attr(n, "kernel_shape", std::vector<int64_t>{3, 3});
  attr(om.node("BatchNormalization", {"conv", "bn.weight", "bn.bias", "bn.mean", "bn.var"}, "bn"), "epsilon", 1e-3f);
  om.node("HardSwish", {"bn"}, "hswish");
  n = om.node("AveragePool", {"hswish"}, "pool");
  attr(n, "kernel_shape", std::vector<int64_t>{3, 3});
  attr(n, "strides", std::vector<int64_t>{1, 1});
  attr(n, "pads", std::vector<int64_t>{1, 1, 1, 1});
  attr(n, "count_include_pad", int64_t{0});
  om.node("Pad", {"pool", "pads", "pad_value"}, "pad");
  n = om.node("HardSigmoid", {"pad"}, "hsig");
  attr(n, "alpha", 1.0f / 6.0f);
  n = om.node("Resize", {"hsig", "", "scales"}, "up");
  attr(n, "mode", std::string("nearest"));
  attr(n, "coordinate_transformation_mode", std::string("asymmetric"));
  attr(n, "nearest_mode", std::string("floor"));
  om.node("Reshape", {"up", "gn_shape"}, "gn_r1");
  om.node("InstanceNormalization", {"gn_r1", "in_scale", "in_bias"}, "gn_in");
  om.node("Shape", {"up"}, "gn_shape_back");
  om.node("Reshape", {"gn_in", "gn_shape_back"}, "gn_r2");
  om.node("Mul", {"gn_r2", "gamma"}, "gn_mul");
  om.node("Add", {"gn_mul", "beta"}, "gn");
  om.node("Sigmoid", {"gn"}, "sig");
  om.node("Mul", {"gn", "sig"}, "silu");
  om.node("ReduceSum", {"silu", "axes"}, "rsum");
  om.node("Add", {"silu", "rsum"}, "sum");
  om.node("Shape", {"sum"}, "shape");
  om.node("Slice", {"shape", "zero", "two"}, "bc");
  attr(om.node("Concat", {"bc", "hw"}, "size"), "axis", int64_t{0});
  n = om.node("Resize", {"sum", "", "", "size"}, "down");
  attr(n, "mode", std::string("linear"));
  attr(n, "coordinate_transformation_mode", std::string("pytorch_half_pixel"));
  om.node("GlobalAveragePool", {"down"}, "gap");
  om.node("Flatten", {"gap"}, "flat");
  attr(om.node("Gemm", {"flat", "head.weight", "head.bias"}, "logits"), "transB", int64_t{1});
  TempDir dir;
  Graph g = import_onnx(om.save(dir), 8, 8);

  auto c = census(g);
  for (const char* gone : {"BatchNorm", "InstanceNorm", "Sigmoid", "Shape", "Slice", "Concat"}) EXPECT_EQ(c[gone], 0) << gone;
  EXPECT_EQ(c["GroupNorm"], 1);
  EXPECT_EQ(c["SiLU"], 1);
  EXPECT_EQ(node_named(g, "c1").gets("norm"), "batchnorm");
  for (const auto& node : g.nodes)
    if (node.op == OpKind::GroupNorm) EXPECT_EQ(node.geti("num_groups", 0), 2);
    else if (node.op == OpKind::Resize || node.op == OpKind::ReduceSum || node.op == OpKind::Pad)
      EXPECT_EQ(node.inputs.size(), 1u) << op_name(node.op) << ": constant inputs should be attributes";

  at::InferenceMode guard;
  auto x = at::randn({2, 3, 8, 8});
  auto y = at::batch_norm(at::conv2d(x, W, b, 1, 1), s, bb, m, v, false, 0.0, 1e-3, false);
  y = at::avg_pool2d(at::hardswish(y), {3, 3}, {1, 1}, {1, 1}, false, false);
  y = at::clamp(at::constant_pad_nd(y, {1, 1, 1, 1}, 0.5) / 6.0 + 0.5, 0.0, 1.0);
  y = at::silu(at::group_norm(at::upsample_nearest2d(y, {20, 20}), 2, gamma, beta, 1e-5));
  y = at::upsample_bilinear2d(y + y.sum(1, true), {10, 10}, false);
  auto want = at::linear(y.mean({2, 3}), Wh, bh);
  auto got = Executor(g).run(x);
  EXPECT_LE((got - want).abs().max().item<float>(), 1e-4f) << got << want;
}

TEST(OnnxHybrid, UnsupportedOpsAreNamed) {
  TempDir dir;
  {
    OnnxModel om({1, 3, 8, 8});
    om.node("Hardmax", {"input"}, "hm")->set_name("hm0");
    auto e = import_error(om.save(dir));
    EXPECT_NE(e.find("unsupported ONNX op Hardmax (node hm0)"), std::string::npos) << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  }
  {
    OnnxModel om({1, 3, 8, 8});
    om.node("FusedConv", {"input"}, "fc")->set_domain("com.microsoft");
    auto e = import_error(om.save(dir));
    EXPECT_NE(e.find("unsupported ONNX op com.microsoft.FusedConv"), std::string::npos) << e;
  }
  {  // a Gemm whose B is a missing optional input (""): refused, not read at index -1 (a fuzzer finding)
    OnnxModel om({1, 3, 8, 8});
    om.node("Gemm", {"input", ""}, "fc");
    auto e = import_error(om.save(dir));
    EXPECT_NE(e.find("only Gemm with alpha=beta=1, transA=0 and a constant B"), std::string::npos) << e;
  }
  {  // a supported op with a variant the executor lacks
    OnnxModel om({1, 3, 8, 8});
    om.init("scales", at::tensor(std::vector<float>{1, 1, 2, 2}));
    attr(om.node("Resize", {"input", "", "scales"}, "up"), "mode", std::string("cubic"));
    auto e = import_error(om.save(dir));
    EXPECT_NE(e.find("Resize mode cubic"), std::string::npos) << e;
  }
}

// A malformed graph whose shape folding would allocate far more than any network (the CI's fuzzer found one) is
// an error naming the node, before the allocation: a ConstantOfShape of [1e5, 1e5], a broadcast of [N,1] with [1,N],
// a MatMul of [N,1] by [1,N], a Pad by 1e6, an Expand to [1e5, 1e5]; and an initializer whose dims promise more
// than its data holds.
TEST(OnnxHybrid, GraphsThatWouldExhaustMemoryAreErrors) {
  TempDir dir;
  const auto big = at::tensor(std::vector<int64_t>{100000, 100000});
  auto expect_refused = [&](OnnxModel& om, const std::string& node) {
    auto e = import_error(om.save(dir));
    EXPECT_NE(e.find("node " + node), std::string::npos) << e;
    EXPECT_NE(e.find("the graph is malformed"), std::string::npos) << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  };
  {
    OnnxModel om({1, 3, 8, 8});
    om.init("shape", big);
    om.node("ConstantOfShape", {"shape"}, "huge");
    om.node("Add", {"input", "huge"}, "y");
    expect_refused(om, "huge.ConstantOfShape");
  }
  for (const std::string op : {"Add", "MatMul"}) {  // [N,1] with [1,N]: a broadcast sum, an outer product
    OnnxModel om({1, 3, 8, 8});
    om.init("col", at::zeros({60000, 1}));
    om.init("row", at::zeros({1, 60000}));
    om.node(op, {"col", "row"}, "square");
    om.node("Add", {"input", "square"}, "y");
    expect_refused(om, "square." + op);
  }
  {
    OnnxModel om({1, 3, 8, 8});
    om.init("pads", at::tensor(std::vector<int64_t>{0, 0, 1000000, 0, 0, 0, 1000000, 0}));
    om.node("Pad", {"input", "pads"}, "padded");
    expect_refused(om, "padded.Pad");
  }
  {  // an initializer whose dims claim 5.3e9 values but whose data holds 8: refused before allocating the 21 GB
    OnnxModel om({1, 3, 8, 8});
    om.init("w", at::zeros({2, 4}));
    om.g->mutable_initializer(0)->set_dims(0, 1325349873);
    om.node("Add", {"input", "w"}, "y");
    auto e = import_error(om.save(dir));
    EXPECT_NE(e.find("tensor w has 32 bytes of data, expected 21205597968"), std::string::npos) << e;
  }
  {
    OnnxModel om({1, 3, 8, 8});
    om.init("one", at::zeros({1, 1}));
    om.init("shape", big);
    om.node("Expand", {"one", "shape"}, "wide");
    om.node("Add", {"input", "wide"}, "y");
    expect_refused(om, "wide.Expand");
  }
}

// The ONNX export and the safetensors weights of the same network give the same IR: quantizable layers
// (name, op, weight shape, roles), op census, and logits.
TEST(OnnxHybrid, SameIrAsSafetensors) {
  at::set_num_threads(2);
  for (const std::string model : {"mobilevit_xxs", "mobilevitv2_050"}) {
    Graph st = load_model(hybrid_dir(model).string());
    Graph ox = load_model((hybrid_dir(model) / "model.onnx").string());
    using Layer = std::tuple<std::string, std::string, std::vector<int64_t>, std::string>;
    auto layers = [](const Graph& g) {
      std::vector<Layer> out;
      for (const auto& n : g.nodes)
        if (is_quantizable(g, n)) {
          std::vector<int64_t> shape;
          if (g.is_const(n.inputs[1])) shape = g.const_tensor(n.inputs[1]).sizes().vec();
          out.emplace_back(n.name, op_name(n.op), shape, roles_to_string(n.roles));
        }
      return out;
    };
    auto a = layers(st), b = layers(ox);
    EXPECT_EQ(a.size(), b.size()) << model;
    for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
      const auto& [an, ao, as, ar] = a[i];
      const auto& [bn, bo, bs, br] = b[i];
      EXPECT_EQ(an, bn) << model << " layer " << i;
      EXPECT_EQ(ao, bo) << model << " " << an;
      EXPECT_EQ(as, bs) << model << " " << an;
      EXPECT_EQ(ar, br) << model << " " << an << " roles";
      if (an != bn) break;  // one misalignment would repeat for every later layer
    }
    // op census: compute ops must agree; data movement may be spelled differently (printed)
    auto ca = census(st), cb = census(ox);
    std::set<std::string> ops;
    for (auto& [k, _] : ca) ops.insert(k);
    for (auto& [k, _] : cb) ops.insert(k);
    for (const auto& op : ops) {
      if (ca[op] == cb[op]) continue;
      auto kind = op_from_name(op);
      bool movement = kind && *kind >= OpKind::Reshape;
      std::printf("%s: %s: safetensors %d, onnx %d%s\n", model.c_str(), op.c_str(), ca[op], cb[op],
                  movement ? " (data movement)" : "");
      if (!movement) ADD_FAILURE() << model << ": op census differs for " << op;
    }
    // and in the same order (only names of non-quantizable nodes and a few Reshape spellings differ)
    for (size_t i = 0; i < std::min(st.nodes.size(), ox.nodes.size()); ++i)
      if (st.nodes[i].op != ox.nodes[i].op) {
        ADD_FAILURE() << model << ": node " << i << " is " << op_name(st.nodes[i].op) << " " << st.nodes[i].name
                      << " from safetensors, " << op_name(ox.nodes[i].op) << " " << ox.nodes[i].name << " from ONNX";
        break;
      }
    at::InferenceMode guard;
    auto x = npy(hybrid_dir(model) / "golden" / "val1000_first4_input.npy");
    float diff = (Executor(st).run(x) - Executor(ox).run(x)).abs().max().item<float>();
    std::printf("%s: ONNX vs safetensors logits: max abs diff %.3g\n", model.c_str(), diff);
    EXPECT_LE(diff, 1e-4f) << model;
  }
}
#endif
