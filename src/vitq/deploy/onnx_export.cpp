#include "vitq/deploy/onnx_export.h"

#include <ATen/ATen.h>
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>

#include <cmath>
#include <map>
#include <set>

#include "vitq/graph/executor.h"
#include "vitq/quant/plan.h"
#include "vitq/util/error.h"

namespace vitq {

namespace {

constexpr int kOpset = 17;

int onnx_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return onnx::TensorProto::FLOAT;
    case at::kByte: return onnx::TensorProto::UINT8;
    case at::kChar: return onnx::TensorProto::INT8;
    case at::kInt: return onnx::TensorProto::INT32;
    case at::kLong: return onnx::TensorProto::INT64;
    case at::kBool: return onnx::TensorProto::BOOL;
    case at::kDouble: return onnx::TensorProto::DOUBLE;
    default: fail("export: tensors of type {} are not supported", c10::toString(t));
  }
}

// Whether QuantizeLinear's own saturation (at the int8 or uint8 limits) is the grid of s: 8-bit codes that fill
// their type. Any other grid is clipped to its range first.
bool qdq_saturates_on_grid(const QuantSpec& s) {
  return s.bits == 8 && ((s.is_signed && s.qmin() == -128 && s.qmax() == 127) || (!s.is_signed && s.qmax() == 255));
}

class Exporter {
 public:
  Exporter(const Graph& g, const QuantPlan* plan) : g_(g), plan_(plan) {}

  ExportResult run() {
    model_.set_ir_version(8);
    model_.set_producer_name("vitq");
    model_.set_model_version(1);
    auto* op = model_.add_opset_import();
    op->set_domain("");
    op->set_version(kOpset);
    gp_ = model_.mutable_graph();
    gp_->set_name(g_.meta.name.empty() ? "vitq" : g_.meta.name);
    if (plan_) {
      for (const auto& p : plan_->points) points_[{p.node, p.slot}] = &p;
      for (const auto& io : plan_->int_ops)
        fail("export: layer {} is an integer {} (FQ-ViT); ONNX standard ops cannot reproduce it — quantize "
             "without integer ops (e.g. --convention common) to export",
             io.node, io.kind);
    }
    sample_values();
    // graph input [batch, 3, H, W]
    auto* in = gp_->add_input();
    in->set_name("input");
    set_type(in, onnx::TensorProto::FLOAT, {-1, 3, g_.meta.preprocess.input_height, g_.meta.preprocess.input_width});
    names_[g_.input] = "input";
    used_.insert("input");
    used_.insert("logits");  // the graph output's name: a value of the model called so gets another
    for (size_t i = 0; i < g_.nodes.size(); ++i) emit(i);
    auto* o = gp_->add_output();
    o->set_name("logits");
    set_type(o, onnx::TensorProto::FLOAT, {-1, g_.meta.num_classes > 0 ? g_.meta.num_classes : sample_[g_.output].size(-1)});
    add("Identity", {value(g_.output)}, {"logits"}, "output");
    try {
      onnx::checker::check_model(model_);
    } catch (const std::exception& e) {
      fail("export: the ONNX checker rejects the exported model: {}", first_line(e.what()));
    }
    for (const auto& t : gp_->initializer()) res_.weight_bytes += static_cast<int64_t>(t.raw_data().size());
    res_.opset = kOpset;
    if (!model_.SerializeToString(&res_.bytes)) fail("export: serialising the ONNX model failed");
    return std::move(res_);
  }

 private:
  // Every value's shape and type from one FP run on a batch of 1 (shapes the builder left implicit).
  void sample_values() {
    at::InferenceMode guard;
    Executor exec(g_);
    sample_ = exec.run_all(at::zeros({1, 3, g_.meta.preprocess.input_height, g_.meta.preprocess.input_width}));
  }

  static void set_type(onnx::ValueInfoProto* v, int elem, const std::vector<int64_t>& dims) {
    auto* tt = v->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(elem);
    auto* sh = tt->mutable_shape();
    for (auto d : dims) {
      auto* dim = sh->add_dim();
      if (d < 0) dim->set_dim_param("batch");
      else dim->set_dim_value(d);
    }
  }

  std::string fresh(const std::string& base) {
    std::string name = base.empty() ? "t" : base;
    if (used_.insert(name).second) return name;
    for (int k = 1;; ++k) {
      std::string n = fmt::format("{}#{}", name, k);
      if (used_.insert(n).second) return n;
    }
  }

  onnx::NodeProto* add(const std::string& op, const std::vector<std::string>& inputs, const std::vector<std::string>& outputs,
                       const std::string& name) {
    auto* n = gp_->add_node();
    n->set_op_type(op);
    n->set_name(fresh("node:" + name));
    for (const auto& i : inputs) n->add_input(i);
    for (const auto& o : outputs) n->add_output(o);
    return n;
  }
  // One-output node; returns its output name.
  std::string op1(const std::string& op, const std::vector<std::string>& inputs, const std::string& name) {
    std::string out = fresh(name);
    add(op, inputs, {out}, name);
    return out;
  }

  static void attr(onnx::NodeProto* n, const std::string& key, int64_t v) {
    auto* a = n->add_attribute();
    a->set_name(key);
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(v);
  }
  static void attr(onnx::NodeProto* n, const std::string& key, float v) {
    auto* a = n->add_attribute();
    a->set_name(key);
    a->set_type(onnx::AttributeProto::FLOAT);
    a->set_f(v);
  }
  static void attr(onnx::NodeProto* n, const std::string& key, const std::string& v) {
    auto* a = n->add_attribute();
    a->set_name(key);
    a->set_type(onnx::AttributeProto::STRING);
    a->set_s(v);
  }
  static void attr(onnx::NodeProto* n, const std::string& key, const std::vector<int64_t>& v) {
    auto* a = n->add_attribute();
    a->set_name(key);
    a->set_type(onnx::AttributeProto::INTS);
    for (auto x : v) a->add_ints(x);
  }

  std::string init(const at::Tensor& t_in, const std::string& base) {
    auto t = t_in.to(at::kCPU).contiguous();
    auto* tp = gp_->add_initializer();
    std::string name = fresh(base);
    tp->set_name(name);
    tp->set_data_type(onnx_type(t.scalar_type()));
    for (auto d : t.sizes()) tp->add_dims(d);
    tp->set_raw_data(std::string(static_cast<const char*>(t.data_ptr()), static_cast<size_t>(t.numel()) * t.element_size()));
    return name;
  }
  std::string ints(const std::vector<int64_t>& v, const std::string& base) {
    return init(at::tensor(v, at::kLong), base);
  }
  std::string scalar(float v, const std::string& base) { return init(at::scalar_tensor(v, at::kFloat), base); }

  // The ONNX name of value v (activations and the graph's constants).
  std::string value(int v) {
    auto it = names_.find(v);
    if (it != names_.end()) return it->second;
    if (!g_.is_const(v)) fail("export: value {} is read before it is produced", g_.values[static_cast<size_t>(v)].name);
    std::string n = init(g_.const_tensor(v), g_.values[static_cast<size_t>(v)].name);
    names_[v] = n;
    return n;
  }

  const at::Tensor& sample(int v) const { return sample_.at(static_cast<size_t>(v)); }
  int64_t rank(int v) const { return sample(v).dim(); }

  // The batch size as a 1-D int64 tensor [B], computed once from the graph input.
  std::string batch() {
    if (batch_.empty()) {
      auto shape = op1("Shape", {"input"}, "input_shape");
      batch_ = op1("Slice", {shape, ints({0}, "zero"), ints({1}, "one")}, "batch");
    }
    return batch_;
  }

  // A ShapeSpec as a tensor: static dims as constants, batch-relative dims as k·B.
  std::string shape_spec(const Node& n) {
    ShapeSpec spec{n.getints("shape"), n.getints("batch_mult")};
    bool dynamic = false;
    for (auto m : spec.batch_mult) dynamic |= m != 0;
    if (!dynamic) return ints(spec.dims, n.name + ".shape");
    std::vector<std::string> parts;
    for (size_t i = 0; i < spec.dims.size(); ++i) {
      const int64_t m = i < spec.batch_mult.size() ? spec.batch_mult[i] : 0;
      if (m == 0) parts.push_back(ints({spec.dims[i]}, n.name + ".dim"));
      else if (m == 1) parts.push_back(batch());
      else parts.push_back(op1("Mul", {batch(), ints({m}, n.name + ".mult")}, n.name + ".bdim"));
    }
    auto* c = add("Concat", parts, {fresh(n.name + ".shape")}, n.name + ".shape");
    attr(c, "axis", int64_t{0});
    return c->output(0);
  }

  // An integer list held as attribute `key` or as constant input `slot`, as an int64 initializer ("" if neither).
  std::string int_list(const Node& n, const std::string& key, size_t slot) {
    if (n.has(key)) return ints(n.getints(key), n.name + "." + key);
    if (slot < n.inputs.size() && n.inputs[slot] >= 0) {
      const int v = n.inputs[slot];
      if (!g_.is_const(v)) fail("export: node {}: {} must be a constant", n.name, key);
      return init(g_.const_tensor(v).to(at::kLong), n.name + "." + key);
    }
    return "";
  }
  std::vector<int64_t> int_values(const Node& n, const std::string& key, size_t slot) {
    if (n.has(key)) return n.getints(key);
    if (slot < n.inputs.size() && n.inputs[slot] >= 0 && g_.is_const(n.inputs[slot])) {
      auto t = g_.const_tensor(n.inputs[slot]).to(at::kLong).contiguous();
      return {t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()};
    }
    return {};
  }

  const QuantPoint* point(const Node& n, size_t slot) const {
    auto it = points_.find({n.name, static_cast<int>(slot)});
    return it == points_.end() ? nullptr : it->second;
  }

  // Scale / zero point of a per-tensor or per-axis quantizer as QDQ wants them: a scalar, or 1-D along `axis`.
  static at::Tensor qdq_param(const at::Tensor& p) { return p.numel() == 1 ? p.reshape({}) : p.reshape({-1}); }

  // The axis a per-axis quantizer's parameters vary along, for a tensor of rank r.
  static int64_t param_axis(const QuantPoint& p, int64_t r) {
    const auto& s = p.params.scale;
    if (s.numel() == 1) return 0;
    int64_t axis = -1;
    // parameters broadcast against the tensor: align their shape to its trailing dims
    const int64_t off = r - s.dim();
    for (int64_t d = 0; d < s.dim(); ++d)
      if (s.size(d) != 1) {
        if (axis >= 0) fail("export: quantizer on {} varies along more than one axis", p.node);
        axis = d + off;
      }
    return axis;
  }

  std::string describe(const QuantPoint& p) const { return fmt::format("{} input {} ({})", p.node, p.slot, p.spec.describe()); }

  // Activation x quantized by p: Q/DQ (uniform, PTF) or the standard-op formula (twin uniform, log2, 8-bit uniform with
  // zero points along an axis).
  std::string quant_activation(const QuantPoint& p, const std::string& x, int64_t r) {
    const std::string base = fmt::format("{}.in{}", p.node, p.slot);
    const auto& s = p.spec;
    if (s.granularity == Granularity::PerGroup) fail("export: {}: per-group activation quantizers cannot be exported", describe(p));
    // per-token steps on a Linear input are written by token_linear with the Linear; anywhere else the per-axis Q/DQ
    // below says the same
    if (s.kind == QuantKind::TwinUniform) return twin(p, x, base);
    if (is_any_log_kind(s.kind)) return log2q(p, x, base);
    // Uniform zero points along an axis (asymmetric per-head or per-channel inputs; PTF's one zero point for all
    // channels stays as it is): ONNX Runtime fuses such a Q/DQ pair before a MatMul into an integer MatMul that takes
    // one zero point for its input, and fails at run time (seen with repqvit+headwise's per-head q, k). The codes are
    // written centred instead, q − zp (int8, zero points 0): the input is clipped to (qmin − zp)·s … (qmax − zp)·s
    // first, so round(x / s) is q − zp, and (q − zp)·s is the same value. Where the centred codes leave int8 (8-bit
    // asymmetric), the standard ops of the formula.
    bool centred = false;
    if (s.kind == QuantKind::Uniform && p.params.zero_point.numel() > 1 && p.params.zero_point.abs().max().item<double>() > 0) {
      const auto z = p.params.zero_point.to(at::kDouble);
      centred = static_cast<double>(s.qmin()) - z.max().item<double>() >= -128 && static_cast<double>(s.qmax()) - z.min().item<double>() <= 127;
      if (!centred) return uniform_formula(p, x, base);
    }
    const std::string xin = !qdq_saturates_on_grid(s) || centred ? clip_to_grid(p, x, base) : x;
    const bool signed_codes = s.is_signed || centred;
    auto zp = (centred ? at::zeros_like(qdq_param(p.params.zero_point)) : qdq_param(p.params.zero_point)).to(signed_codes ? at::kChar : at::kByte);
    auto sc = init(qdq_param(p.params.scale).to(at::kFloat), base + ".scale");
    auto zpn = init(zp, base + ".zero_point");
    const int64_t axis = param_axis(p, r);
    auto q = fresh(base + ".q"), dq = fresh(base + ".dq");
    auto* qn = add("QuantizeLinear", {xin, sc, zpn}, {q}, base + ".quantize");
    auto* dn = add("DequantizeLinear", {q, sc, zpn}, {dq}, base + ".dequantize");
    if (p.params.scale.numel() > 1) {
      attr(qn, "axis", axis);
      attr(dn, "axis", axis);
    }
    ++res_.qdq_activations;
    return dq;
  }

  // x clipped to the values p's grid holds, (qmin − zp)·s … (qmax − zp)·s, with p's steps and zero points in
  // their broadcast shapes.
  std::string clip_to_grid(const QuantPoint& p, const std::string& x, const std::string& base) {
    const auto& s = p.spec;
    auto lo = ((static_cast<double>(s.qmin()) - p.params.zero_point) * p.params.scale).to(at::kFloat);
    auto hi = ((static_cast<double>(s.qmax()) - p.params.zero_point) * p.params.scale).to(at::kFloat);
    return op1("Max", {op1("Min", {x, init(hi, base + ".hi")}, base + ".clip_hi"), init(lo, base + ".lo")}, base + ".clip");
  }

  // A uniform quantizer as the standard ops of its formula, clamp(round(x / s) + zp, qmin, qmax) − zp) · s, written
  // as round(clip(x, (qmin − zp)·s, (qmax − zp)·s) / s) · s: the same numbers, in float.
  std::string uniform_formula(const QuantPoint& p, const std::string& x, const std::string& base) {
    auto clipped = clip_to_grid(p, x, base);
    auto sc = init(p.params.scale.to(at::kFloat), base + ".step");
    auto codes = op1("Round", {op1("Div", {clipped, sc}, base + ".x")}, base + ".codes");
    ++res_.standard_op_quantizers;
    return op1("Mul", {codes, sc}, base + ".uniform");
  }

  std::string twin(const QuantPoint& p, const std::string& x, const std::string& base) {
    if (!p.params.scale2.defined()) fail("export: {}: twin-uniform quantizer without its second step", describe(p));
    const float n = static_cast<float>((int64_t{1} << (p.spec.bits - 1)) - 1);
    auto d1 = init(p.params.scale.to(at::kFloat), base + ".step1"), d2 = init(p.params.scale2.to(at::kFloat), base + ".step2");
    auto zero = scalar(0.0f, base + ".zero"), top = scalar(n, base + ".n");
    auto coarse = op1("Mul", {op1("Clip", {op1("Round", {op1("Div", {x, d2}, base + ".x2")}, base + ".r2"), zero, top}, base + ".c2"), d2},
                      base + ".coarse");
    auto c1 = op1("Round", {op1("Div", {x, d1}, base + ".x1")}, base + ".r1");
    std::string out;
    if (p.spec.is_signed) {
      auto fine = op1("Mul", {op1("Clip", {c1, scalar(-n, base + ".neg_n"), zero}, base + ".c1"), d1}, base + ".fine");
      out = op1("Where", {op1("Less", {x, zero}, base + ".negative"), fine, coarse}, base + ".twin");
    } else {
      auto fine = op1("Mul", {op1("Clip", {c1, zero, top}, base + ".c1"), d1}, base + ".fine");
      out = op1("Where", {op1("LessOrEqual", {c1, top}, base + ".in_fine"), fine, coarse}, base + ".twin");
    }
    ++res_.standard_op_quantizers;
    return out;
  }

  std::string log2q(const QuantPoint& p, const std::string& x_in, const std::string& base) {
    const float top = static_cast<float>((int64_t{1} << p.spec.bits) - 1);
    auto d = init(p.params.scale.to(at::kFloat), base + ".scale");
    auto zero = scalar(0.0f, base + ".zero");
    if (p.spec.kind == QuantKind::AdaLog) check_adalog(p.params, describe(p));
    const auto shift = static_cast<float>(log_shift(p.spec, p.params));
    const std::string shift_name = shift != 0.0f ? scalar(shift, base + ".shift") : "";
    const std::string x = shift != 0.0f ? op1("Add", {x_in, shift_name}, base + ".shifted") : x_in;
    auto y = op1("Div", {x, d}, base + ".y");
    // c = max(round(-k·log2 y), 0); x̂ = d·2^(-c/k) when y > 0 and c <= top, else 0 (k = 1: log2, 2: log√2,
    // AdaLog: its τ; AdaLog then subtracts its shift again)
    const double k = log_codes_per_octave(p.spec, p.params);
    auto neg_log2 = op1("Mul", {op1("Log", {y}, base + ".ln"), scalar(static_cast<float>(-k / std::log(2.0)), base + ".inv_ln2")},
                        base + ".neg_log2");
    auto c = op1("Max", {op1("Round", {neg_log2}, base + ".round"), zero}, base + ".c");
    auto two = scalar(static_cast<float>(std::exp2(1.0 / k)), base + ".two");  // 2, √2 or 2^(1/τ)
    auto value = op1("Mul", {d, op1("Pow", {two, op1("Neg", {c}, base + ".neg_c")}, base + ".pow")}, base + ".value");
    auto keep = op1("And", {op1("Greater", {y, zero}, base + ".positive"), op1("LessOrEqual", {c, scalar(top, base + ".top")}, base + ".in_range")},
                    base + ".keep");
    ++res_.standard_op_quantizers;
    const std::string q = op1("Where", {keep, value, zero}, base + ".log2");
    return shift != 0.0f ? op1("Sub", {q, shift_name}, base + ".unshifted") : q;
  }

  // A Linear whose input has one step and zero point per token (the reconstruction's --recon-token-scales), in
  // integer ops: ONNX Runtime fuses a Q/DQ pair before a MatMul into an integer MatMul whose input takes one zero
  // point, so this writes the integer form itself. The input's codes q (QuantizeLinear along the token axis, clipped
  // to the grid first below 8 bits) and the weight's codes w (int8) go through MatMulInteger with the weight's zero
  // points; each token's zero point is taken out after it, exactly in int32, as zp_n · Σ_k (w_kc − zp_c); then
  // y = acc · s_n · s_c + b.
  std::string token_linear(const Node& n, const QuantPoint& in) {
    const QuantPoint* wp = point(n, 1);
    const std::string base = fmt::format("{}.in0", n.name);
    if (!wp || !wp->weight || (wp->spec.kind != QuantKind::Uniform && wp->spec.kind != QuantKind::PowerOfTwoFactor) ||
        wp->spec.granularity == Granularity::PerGroup)
      fail("export: {}: a per-token input (--recon-token-scales) is exported only with a uniform per-tensor or per-channel "
           "quantizer on the weight",
           describe(in));
    const int v = n.inputs.at(0);
    const int64_t tokens = in.params.scale.size(1);
    if (rank(v) != 3 || sample(v).size(1) != tokens)
      fail("export: {}: {} per-token steps for an input of shape [{}]", describe(in), tokens, fmt::join(sample(v).sizes(), ", "));
    const auto& s = in.spec;
    if (auto why = per_token_zero_point_problem(in); !why.empty()) fail("export: {}: {}", describe(in), why);
    const auto zpf = in.params.zero_point.to(at::kDouble).reshape({-1});
    const int64_t zlo = s.is_signed ? -128 : 0, zhi = s.is_signed ? 127 : 255;
    if (zpf.min().item<double>() < zlo || zpf.max().item<double>() > zhi)
      fail("export: {}: per-token zero points must be in {}..{} (the codes' type)", describe(in), zlo, zhi);
    // the input's codes
    const std::string xin = qdq_saturates_on_grid(s) ? value(v) : clip_to_grid(in, value(v), base);
    auto sc = init(in.params.scale.reshape({-1}).to(at::kFloat), base + ".scale");
    auto zpn = init(zpf.to(s.is_signed ? at::kChar : at::kByte), base + ".zero_point");
    auto q = fresh(base + ".q");
    attr(add("QuantizeLinear", {xin, sc, zpn}, {q}, base + ".quantize"), "axis", int64_t{1});
    ++res_.qdq_activations;
    // the weight's codes, int8 (unsigned codes and their zero points shifted down by 128: the differences stay)
    const at::Tensor w = plan_weight(*plan_, n.name, g_.const_tensor(n.inputs.at(1))).to(at::kFloat);
    if (w.dim() != 2) fail("export: {}: a Linear weight must be 2-D", describe(*wp));
    if (param_axis(*wp, 2) > 0) fail("export: {}: a Linear weight's steps must vary only along its output channels", describe(*wp));
    const at::Tensor codes = (wp->codes.defined() ? wp->codes : quantize_codes(w, wp->spec, wp->params)).to(at::kDouble);
    const at::Tensor wzp = full_zero_point(*wp, w).to(at::kDouble);
    const double wshift = wp->spec.is_signed ? 0.0 : 128.0;
    const std::string wbase = fmt::format("{}.weight", n.name);
    auto wcodes = init((codes - wshift).t().contiguous().to(at::kChar), wbase + ".codes");
    ++res_.int8_weights;
    const at::Tensor colzp = (wzp.select(1, 0) - wshift);  // one zero point a column of the [in, out] codes
    std::vector<std::string> mm_in = {q, wcodes};
    if (colzp.abs().max().item<double>() > 0) {
      mm_in.push_back("");
      mm_in.push_back(init(colzp.to(at::kChar), wbase + ".zero_point"));
    }
    std::string acc = op1("MatMulInteger", mm_in, n.name + ".matmul_integer");
    if (zpf.abs().max().item<double>() > 0) {
      const at::Tensor colsum = (codes - wzp).sum(1).to(at::kInt);  // Σ_k (w_kc − zp_c), [out]
      auto corr = op1("Mul", {init(zpf.reshape({1, tokens, 1}).to(at::kInt), base + ".zero_point_int"), init(colsum, wbase + ".code_sums")},
                      n.name + ".zero_point_terms");
      acc = op1("Sub", {acc, corr}, n.name + ".acc");
    }
    auto* c = add("Cast", {acc}, {fresh(n.name + ".acc_float")}, n.name + ".cast");
    attr(c, "to", int64_t{onnx::TensorProto::FLOAT});
    auto y = op1("Mul", {c->output(0), init(in.params.scale.reshape({1, tokens, 1}).to(at::kFloat), base + ".row_scale")}, n.name + ".rows");
    const at::Tensor wscale = wp->params.scale.to(at::kFloat);
    y = op1("Mul", {y, init(wscale.numel() == 1 ? wscale.reshape({}) : wscale.reshape({-1}), wbase + ".scale")}, n.name + ".scaled");
    if (n.inputs.size() > 2 && n.inputs[2] >= 0) y = op1("Add", {y, input(n, 2)}, g_.values[static_cast<size_t>(n.outputs[0])].name);
    ++res_.integer_linears;
    return y;
  }

  // Weight w (a constant) quantized by p, as integer codes + DequantizeLinear. transpose: store [in, out].
  std::string quant_weight(const QuantPoint& p, const at::Tensor& w, bool transpose) {
    const auto& s = p.spec;
    const std::string base = fmt::format("{}.weight", p.node);
    if (s.kind != QuantKind::Uniform && s.kind != QuantKind::PowerOfTwoFactor)
      fail("export: {}: {} weight quantizers cannot be exported", describe(p), quant_kind_name(s.kind));
    at::Tensor codes = p.codes.defined() ? p.codes : quantize_codes(w.to(at::kFloat), s, p.params);
    const bool signed_codes = s.is_signed;
    codes = codes.to(signed_codes ? at::kChar : at::kByte);
    ++res_.int8_weights;
    if (s.granularity == Granularity::PerGroup) {
      // [out, in] codes -> float -> (c - zp)·s per (row, group) -> transposed if asked
      const int64_t out = w.size(0), in = w.size(1), gs = s.group_size;
      auto cn = init(codes, base + ".codes");
      auto unit = init(at::scalar_tensor(1.0f), base + ".unit");
      auto z0 = init(at::scalar_tensor(0, signed_codes ? at::kChar : at::kByte), base + ".unit_zp");
      auto f = op1("DequantizeLinear", {cn, unit, z0}, base + ".float_codes");
      auto g3 = op1("Reshape", {f, ints({out, in / gs, gs}, base + ".groups")}, base + ".grouped");
      auto d = op1("Mul", {op1("Sub", {g3, init(p.params.zero_point.unsqueeze(-1).to(at::kFloat), base + ".zero_point")}, base + ".centred"),
                           init(p.params.scale.unsqueeze(-1).to(at::kFloat), base + ".scale")},
                   base + ".scaled");
      auto flat = op1("Reshape", {d, ints({out, in}, base + ".shape")}, base + ".dequantized");
      if (!transpose) return flat;
      auto* t = add("Transpose", {flat}, {fresh(base + ".t")}, base + ".transpose");
      attr(t, "perm", std::vector<int64_t>{1, 0});
      return t->output(0);
    }
    int64_t axis = param_axis(p, w.dim());
    if (transpose) {
      if (w.dim() != 2) fail("export: {}: a Linear weight must be 2-D", describe(p));
      codes = codes.t().contiguous();
      axis = 1 - axis;
    }
    auto cn = init(codes, base + ".codes");
    auto sc = init(qdq_param(p.params.scale).to(at::kFloat), base + ".scale");
    auto zp = init(qdq_param(p.params.zero_point).to(signed_codes ? at::kChar : at::kByte), base + ".zero_point");
    auto out = fresh(base + ".dq");
    auto* dn = add("DequantizeLinear", {cn, sc, zp}, {out}, base + ".dequantize");
    if (p.params.scale.numel() > 1) attr(dn, "axis", axis);
    return out;
  }

  // The name node n reads at `slot`: a quantized weight, a quantized activation, or the plain value.
  std::string input(const Node& n, size_t slot, bool transpose_weight = false) {
    const int v = n.inputs.at(slot);
    if (v < 0) return "";
    const QuantPoint* p = point(n, slot);
    if (p && p->weight) {
      if (!g_.is_const(v)) fail("export: {} is a weight point on a non-constant input", describe(*p));
      return quant_weight(*p, slot == 1 ? plan_weight(*plan_, n.name, g_.const_tensor(v)) : g_.const_tensor(v), transpose_weight);
    }
    if (slot == 2 && plan_) {  // bias correction replaces the bias
      auto it = plan_->bias.find(n.name);
      if (it != plan_->bias.end()) return init(it->second.to(at::kFloat), n.name + ".corrected_bias");
    }
    if (transpose_weight) {
      if (!g_.is_const(v)) fail("export: node {}: its weight is not a constant", n.name);
      return init(g_.const_tensor(v).t().contiguous(), g_.values[static_cast<size_t>(v)].name + "_t");
    }
    std::string x = value(v);
    if (p && sample(v).is_floating_point()) return quant_activation(*p, x, rank(v));
    return x;
  }

  void bind(const Node& n, size_t k, const std::string& name) { names_[n.outputs.at(k)] = name; }
  std::string out_name(const Node& n, size_t k = 0) { return fresh(g_.values[static_cast<size_t>(n.outputs.at(k))].name); }

  // Emits node n with the ONNX op of the same meaning.
  void emit(size_t i) {
    const Node& n = g_.nodes[i];
    auto in = [&](size_t s) { return input(n, s); };
    auto has_in = [&](size_t s) { return s < n.inputs.size() && n.inputs[s] >= 0; };
    auto simple = [&](const std::string& op) -> onnx::NodeProto* {
      std::vector<std::string> ins;
      for (size_t s = 0; s < n.inputs.size(); ++s) ins.push_back(in(s));
      auto* node = add(op, ins, {out_name(n)}, n.name);
      bind(n, 0, node->output(0));
      return node;
    };
    switch (n.op) {
      case OpKind::Conv2d: {
        std::vector<std::string> ins = {in(0), in(1)};
        if (has_in(2)) ins.push_back(in(2));
        auto* c = add("Conv", ins, {out_name(n)}, n.name);
        const auto& w = g_.const_tensor(n.inputs[1]);
        attr(c, "kernel_shape", std::vector<int64_t>{w.size(2), w.size(3)});
        attr(c, "pads", n.getints("pads", {0, 0, 0, 0}));
        attr(c, "strides", n.getints("strides", {1, 1}));
        attr(c, "dilations", n.getints("dilations", {1, 1}));
        attr(c, "group", n.geti("group", 1));
        bind(n, 0, c->output(0));
        return;
      }
      case OpKind::Linear: {
        if (const QuantPoint* p = point(n, 0); p && is_per_token_input(*p)) {
          bind(n, 0, token_linear(n, *p));
          return;
        }
        auto y = op1("MatMul", {in(0), input(n, 1, /*transpose_weight=*/true)}, n.name + ".matmul");
        if (has_in(2)) y = op1("Add", {y, in(2)}, g_.values[static_cast<size_t>(n.outputs[0])].name);
        bind(n, 0, y);
        return;
      }
      case OpKind::MatMul: simple("MatMul"); return;
      case OpKind::Add: simple("Add"); return;
      case OpKind::Sub: simple("Sub"); return;
      case OpKind::Mul: simple("Mul"); return;
      case OpKind::Div: simple("Div"); return;
      case OpKind::Pow: simple("Pow"); return;
      case OpKind::Sqrt: simple("Sqrt"); return;
      case OpKind::Erf: simple("Erf"); return;
      case OpKind::Relu: simple("Relu"); return;
      case OpKind::Sigmoid: simple("Sigmoid"); return;
      case OpKind::Tanh: simple("Tanh"); return;
      case OpKind::HardSwish: simple("HardSwish"); return;
      case OpKind::Identity: simple("Identity"); return;
      case OpKind::Equal: simple("Equal"); return;
      case OpKind::Where: simple("Where"); return;
      case OpKind::HardSigmoid: {
        auto* h = add("HardSigmoid", {in(0)}, {out_name(n)}, n.name);
        attr(h, "alpha", static_cast<float>(n.getf("alpha", 0.2)));
        attr(h, "beta", static_cast<float>(n.getf("beta", 0.5)));
        bind(n, 0, h->output(0));
        return;
      }
      case OpKind::Cast: {
        auto* c = add("Cast", {in(0)}, {out_name(n)}, n.name);
        attr(c, "to", n.geti("to", 1));
        bind(n, 0, c->output(0));
        return;
      }
      case OpKind::ReduceMean: {
        auto* r = add("ReduceMean", {in(0)}, {out_name(n)}, n.name);
        auto axes = int_values(n, "axes", 1);
        if (!axes.empty()) attr(r, "axes", axes);
        attr(r, "keepdims", n.geti("keepdims", 1));
        bind(n, 0, r->output(0));
        return;
      }
      case OpKind::ReduceSum: {
        std::vector<std::string> ins = {in(0)};
        auto axes = int_list(n, "axes", 1);
        if (!axes.empty()) ins.push_back(axes);
        auto* r = add("ReduceSum", ins, {out_name(n)}, n.name);
        attr(r, "keepdims", n.geti("keepdims", 1));
        bind(n, 0, r->output(0));
        return;
      }
      case OpKind::Softmax: {
        auto* s = add("Softmax", {in(0)}, {out_name(n)}, n.name);
        attr(s, "axis", n.geti("axis", -1));
        bind(n, 0, s->output(0));
        return;
      }
      case OpKind::LayerNorm: {
        const int64_t r = rank(n.inputs[0]);
        int64_t axis = n.geti("axis", -1);
        if (axis < 0) axis += r;
        std::vector<int64_t> shape(sample(n.inputs[0]).sizes().begin() + axis, sample(n.inputs[0]).sizes().end());
        std::string scale = has_in(1) ? in(1) : init(at::ones(shape), n.name + ".ones");
        std::vector<std::string> ins = {in(0), scale};
        if (has_in(2)) ins.push_back(in(2));
        auto* l = add("LayerNormalization", ins, {out_name(n)}, n.name);
        attr(l, "axis", axis);
        attr(l, "epsilon", static_cast<float>(n.getf("epsilon", 1e-5)));
        bind(n, 0, l->output(0));
        return;
      }
      case OpKind::Gelu: {
        auto x = in(0);
        if (n.gets("approximate", "none") == "tanh") {
          // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
          auto x3 = op1("Mul", {op1("Mul", {x, x}, n.name + ".x2"), x}, n.name + ".x3");
          auto inner = op1("Add", {x, op1("Mul", {x3, scalar(0.044715f, n.name + ".c")}, n.name + ".cx3")}, n.name + ".inner");
          auto t = op1("Tanh", {op1("Mul", {inner, scalar(0.7978845608f, n.name + ".k")}, n.name + ".arg")}, n.name + ".tanh");
          auto y = op1("Mul", {op1("Mul", {x, op1("Add", {t, scalar(1.0f, n.name + ".one")}, n.name + ".t1")}, n.name + ".xt"),
                               scalar(0.5f, n.name + ".half")},
                       g_.values[static_cast<size_t>(n.outputs[0])].name);
          bind(n, 0, y);
        } else {
          // 0.5 x (1 + erf(x / sqrt 2)) — the pattern ONNX Runtime fuses into its Gelu kernel
          auto e = op1("Erf", {op1("Div", {x, scalar(1.4142135381698608f, n.name + ".sqrt2")}, n.name + ".scaled")}, n.name + ".erf");
          auto y = op1("Mul", {op1("Mul", {x, op1("Add", {e, scalar(1.0f, n.name + ".one")}, n.name + ".erf1")}, n.name + ".xe"),
                               scalar(0.5f, n.name + ".half")},
                       g_.values[static_cast<size_t>(n.outputs[0])].name);
          bind(n, 0, y);
        }
        return;
      }
      case OpKind::SiLU: {
        auto x = in(0);
        bind(n, 0, op1("Mul", {x, op1("Sigmoid", {x}, n.name + ".sigmoid")}, g_.values[static_cast<size_t>(n.outputs[0])].name));
        return;
      }
      case OpKind::BatchNorm: {
        auto* b = simple("BatchNormalization");
        attr(b, "epsilon", static_cast<float>(n.getf("epsilon", 1e-5)));
        return;
      }
      case OpKind::InstanceNorm: {
        auto* b = simple("InstanceNormalization");
        attr(b, "epsilon", static_cast<float>(n.getf("epsilon", 1e-5)));
        return;
      }
      case OpKind::GroupNorm: {
        // [B, C, ...] -> [B, G, -1] -> InstanceNormalization (unit scale) -> back -> · gamma + beta per channel
        const auto& xs = sample(n.inputs[0]);
        const int64_t groups = n.geti("num_groups", 1), r = xs.dim();
        auto x = in(0);
        auto grouped = op1("Reshape", {x, ints({0, groups, -1}, n.name + ".groups")}, n.name + ".grouped");
        auto* inorm = add("InstanceNormalization",
                          {grouped, init(at::ones({groups}), n.name + ".unit_scale"), init(at::zeros({groups}), n.name + ".zero_bias")},
                          {fresh(n.name + ".normalised")}, n.name + ".instance_norm");
        attr(inorm, "epsilon", static_cast<float>(n.getf("epsilon", 1e-5)));
        auto back = op1("Reshape", {inorm->output(0), op1("Shape", {x}, n.name + ".shape")}, n.name + ".ungrouped");
        std::vector<int64_t> pshape(static_cast<size_t>(r - 1), 1);
        pshape[0] = xs.size(1);
        std::string y = back;
        if (has_in(1)) y = op1("Mul", {y, init(g_.const_tensor(n.inputs[1]).reshape(pshape), n.name + ".gamma")}, n.name + ".scaled");
        if (has_in(2)) y = op1("Add", {y, init(g_.const_tensor(n.inputs[2]).reshape(pshape), n.name + ".beta")}, n.name + ".shifted");
        bind(n, 0, y);
        return;
      }
      case OpKind::AvgPool: {
        auto* a = add("AveragePool", {in(0)}, {out_name(n)}, n.name);
        attr(a, "kernel_shape", n.getints("kernel_shape"));
        attr(a, "strides", n.getints("strides", {1, 1}));
        attr(a, "pads", n.getints("pads", {0, 0, 0, 0}));
        attr(a, "count_include_pad", n.geti("count_include_pad", 0));
        attr(a, "ceil_mode", n.geti("ceil_mode", 0));
        bind(n, 0, a->output(0));
        return;
      }
      case OpKind::GlobalAvgPool: simple("GlobalAveragePool"); return;
      case OpKind::Roll: {
        // cyclic shift by s along d = Concat(x[L - s:], x[:L - s]) per axis
        auto shifts = n.getints("shifts"), dims = n.getints("dims");
        if (shifts.size() != dims.size()) fail("export: node {}: Roll shifts and dims differ in length", n.name);
        const auto& xs = sample(n.inputs[0]);
        std::string x = in(0);
        for (size_t k = 0; k < shifts.size(); ++k) {
          const int64_t d = dims[k] < 0 ? dims[k] + xs.dim() : dims[k], L = xs.size(d);
          const int64_t s = ((shifts[k] % L) + L) % L;
          if (s == 0) continue;
          auto tail = op1("Slice", {x, ints({L - s}, n.name + ".s"), ints({L}, n.name + ".e"), ints({d}, n.name + ".a")}, n.name + ".tail");
          auto head = op1("Slice", {x, ints({0}, n.name + ".s"), ints({L - s}, n.name + ".e"), ints({d}, n.name + ".a")}, n.name + ".head");
          auto* c = add("Concat", {tail, head}, {fresh(n.name + ".rolled")}, n.name + ".concat");
          attr(c, "axis", d);
          x = c->output(0);
        }
        if (x == value(n.inputs[0])) x = op1("Identity", {x}, n.name);
        bind(n, 0, x);
        return;
      }
      case OpKind::Pad: {
        if (n.gets("mode", "constant") != "constant") fail("export: node {}: only constant Pad is supported", n.name);
        auto pads = int_list(n, "pads", 1);
        auto* p = add("Pad", {in(0), pads, scalar(static_cast<float>(n.getf("value", 0.0)), n.name + ".value")}, {out_name(n)}, n.name);
        attr(p, "mode", std::string("constant"));
        bind(n, 0, p->output(0));
        return;
      }
      case OpKind::Resize: {
        const auto& ys = sample(n.outputs[0]);
        auto x = in(0);
        auto lead = op1("Slice", {op1("Shape", {x}, n.name + ".in_shape"), ints({0}, n.name + ".s"), ints({2}, n.name + ".e")}, n.name + ".lead");
        auto* cs = add("Concat", {lead, ints({ys.size(2), ys.size(3)}, n.name + ".hw")}, {fresh(n.name + ".sizes")}, n.name + ".sizes");
        attr(cs, "axis", int64_t{0});
        auto* r = add("Resize", {x, "", "", cs->output(0)}, {out_name(n)}, n.name);
        const std::string mode = n.gets("mode", "linear");
        if (mode == "nearest") {
          attr(r, "mode", std::string("nearest"));
          attr(r, "coordinate_transformation_mode", std::string("asymmetric"));
          attr(r, "nearest_mode", std::string("floor"));
        } else {
          attr(r, "mode", std::string("linear"));
          const std::string coord = n.gets("coordinate_transformation_mode", "half_pixel");
          attr(r, "coordinate_transformation_mode", coord == "align_corners" ? coord : std::string("pytorch_half_pixel"));
        }
        bind(n, 0, r->output(0));
        return;
      }
      case OpKind::Reshape: {
        std::string shape = n.has("shape") ? shape_spec(n) : int_list(n, "shape", 1);
        auto* r = add("Reshape", {in(0), shape}, {out_name(n)}, n.name);
        if (n.geti("allowzero", 0) != 0) attr(r, "allowzero", int64_t{1});
        bind(n, 0, r->output(0));
        return;
      }
      case OpKind::Expand: {
        std::string shape = n.has("shape") ? shape_spec(n) : int_list(n, "shape", 1);
        bind(n, 0, op1("Expand", {in(0), shape}, g_.values[static_cast<size_t>(n.outputs[0])].name));
        return;
      }
      case OpKind::Flatten: {
        auto* f = add("Flatten", {in(0)}, {out_name(n)}, n.name);
        attr(f, "axis", n.geti("axis", 1));
        bind(n, 0, f->output(0));
        return;
      }
      case OpKind::Transpose: {
        auto* t = add("Transpose", {in(0)}, {out_name(n)}, n.name);
        auto perm = n.getints("perm");
        if (!perm.empty()) attr(t, "perm", perm);
        bind(n, 0, t->output(0));
        return;
      }
      case OpKind::Concat: {
        auto* c = simple("Concat");
        attr(c, "axis", n.geti("axis", 0));
        return;
      }
      case OpKind::Slice: {
        std::vector<std::string> ins = {in(0), int_list(n, "starts", 1), int_list(n, "ends", 2)};
        auto axes = int_list(n, "axes", 3), steps = int_list(n, "steps", 4);
        if (!axes.empty() || !steps.empty()) ins.push_back(axes);
        if (!steps.empty()) ins.push_back(steps);
        bind(n, 0, op1("Slice", ins, g_.values[static_cast<size_t>(n.outputs[0])].name));
        return;
      }
      case OpKind::Gather: {
        auto idx = g_.is_const(n.inputs[1]) ? init(g_.const_tensor(n.inputs[1]).to(at::kLong), n.name + ".indices") : in(1);
        auto* ga = add("Gather", {in(0), idx}, {out_name(n)}, n.name);
        attr(ga, "axis", n.geti("axis", 0));
        bind(n, 0, ga->output(0));
        return;
      }
      case OpKind::Split: {
        std::vector<std::string> ins = {in(0)};
        auto split = int_list(n, "split", 1);
        if (!split.empty()) ins.push_back(split);
        std::vector<std::string> outs;
        for (size_t k = 0; k < n.outputs.size(); ++k) outs.push_back(out_name(n, k));
        auto* s = add("Split", ins, outs, n.name);
        attr(s, "axis", n.geti("axis", 0));
        for (size_t k = 0; k < outs.size(); ++k) bind(n, k, outs[k]);
        return;
      }
      case OpKind::Squeeze:
      case OpKind::Unsqueeze: {
        std::vector<std::string> ins = {in(0)};
        auto axes = int_list(n, "axes", 1);
        if (!axes.empty()) ins.push_back(axes);
        bind(n, 0, op1(n.op == OpKind::Squeeze ? "Squeeze" : "Unsqueeze", ins, g_.values[static_cast<size_t>(n.outputs[0])].name));
        return;
      }
      case OpKind::Shape: simple("Shape"); return;
      case OpKind::ConstantOfShape: break;
    }
    fail("export: node {}: op {} cannot be exported", n.name, op_name(n.op));
  }

  const Graph& g_;
  const QuantPlan* plan_;
  onnx::ModelProto model_;
  onnx::GraphProto* gp_ = nullptr;
  std::vector<at::Tensor> sample_;
  std::map<int, std::string> names_;
  std::set<std::string> used_;
  std::map<std::pair<std::string, int>, const QuantPoint*> points_;
  std::string batch_;
  ExportResult res_;
};

}  // namespace

ExportResult export_onnx(const Graph& graph, const QuantPlan* plan) {
  if (!plan) return Exporter(graph, plan).run();
  check_plan(*plan, graph, "export");
  const Graph reparameterised = with_reparams(graph, *plan);  // RepQ-ViT's folded LayerNorms and weights
  return Exporter(reparameterised, plan).run();
}

}  // namespace vitq
