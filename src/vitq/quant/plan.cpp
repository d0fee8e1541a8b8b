#include "vitq/quant/plan.h"

#include <ATen/ATen.h>

#include <fstream>
#include <limits>
#include <set>

#include "vitq/quant/integer_ops.h"
#include "vitq/util/error.h"
#include "vitq/util/file_io.h"

namespace vitq {

QuantPoint* QuantPlan::find(const std::string& node, int slot) {
  for (auto& p : points)
    if (p.node == node && p.slot == slot) return &p;
  return nullptr;
}
const QuantPoint* QuantPlan::find(const std::string& node, int slot) const {
  return const_cast<QuantPlan*>(this)->find(node, slot);
}

at::Tensor full_scale(const QuantPoint& p, const at::Tensor& x) {
  if (p.spec.granularity == Granularity::PerGroup) return p.params.scale.repeat_interleave(p.spec.group_size, 1).expand(x.sizes());
  return p.params.scale.expand(x.sizes());
}
at::Tensor full_zero_point(const QuantPoint& p, const at::Tensor& x) {
  if (p.spec.granularity == Granularity::PerGroup)
    return p.params.zero_point.repeat_interleave(p.spec.group_size, 1).expand(x.sizes());
  return p.params.zero_point.expand(x.sizes());
}

bool is_per_token_input(const QuantPoint& p) {
  const auto& s = p.params.scale;
  return !p.weight && p.spec.kind == QuantKind::Uniform && p.spec.granularity == Granularity::PerChannel && p.spec.axis == 1 &&
         s.defined() && s.dim() == 3 && s.size(0) == 1 && s.size(2) == 1;
}

std::string per_token_zero_point_problem(const QuantPoint& p) {
  if (p.params.zero_point.numel() != p.params.scale.numel()) return "per-token input with one zero point for several steps";
  const auto z = p.params.zero_point.to(at::kDouble);
  if (!at::equal(z, at::round(z))) return "per-token zero point off the integer grid";
  return "";
}

at::Tensor quantize_point(const QuantPoint& p, const at::Tensor& x) {
  if (!p.codes.defined()) return fake_quant(x, p.spec, p.params);
  const auto dev = x.device();
  return ((p.codes.to(dev) - full_zero_point(p, x).to(dev)) * full_scale(p, x).to(dev)).to(x.scalar_type());
}

std::vector<QuantPoint> default_placement(const Graph& g, const PlacementOptions& o) {
  std::vector<QuantPoint> points;
  for (const auto& n : g.nodes) {
    if (!is_quantizable(g, n) || o.keep_fp.count(n.name)) continue;
    auto bits_of = [&](const std::map<std::string, int>& one, int fallback) {
      if (auto it = one.find(n.name); it != one.end()) return it->second;
      if (auto it = o.layer_bits.find(n.name); it != o.layer_bits.end()) return it->second;
      return fallback;
    };
    const int wbits = bits_of(o.layer_wbits, o.wbits), abits = bits_of(o.layer_abits, o.abits);
    QuantSpec act;
    act.bits = abits;
    act.symmetric = o.act_symmetric;
    act.is_signed = o.act_symmetric;
    if (n.op == OpKind::MatMul) {
      for (int slot = 0; slot < 2; ++slot) points.push_back({n.name, slot, false, act, {}, {}});
      continue;
    }
    QuantSpec in = act;
    if (n.inputs[0] == g.input) in.bits = 8;  // the image: 8 bits in every paper's convention
    points.push_back({n.name, 0, false, in, {}, {}});
    QuantSpec w;
    w.bits = wbits;
    w.symmetric = true;
    w.is_signed = true;
    w.granularity = o.weight_granularity;
    w.axis = 0;
    points.push_back({n.name, 1, true, w, {}, {}});
  }
  for (auto& p : points) p.spec.validate();
  auto is_layer = [&](const std::string& name) {
    const Node* n = g.find_node(name);
    return n && is_quantizable(g, *n);
  };
  for (const auto& name : o.keep_fp)
    if (!is_layer(name)) fail("--keep-fp: {} is not a quantizable layer of {}", name, g.meta.name);
  for (const auto* m : {&o.layer_bits, &o.layer_wbits, &o.layer_abits})
    for (const auto& [name, bits] : *m)
      if (!is_layer(name)) fail("--layer-bits: {} is not a quantizable layer of {}", name, g.meta.name);
  // a width that would change nothing is refused, not ignored
  for (const auto& [name, bits] : o.layer_wbits)
    if (g.find_node(name)->op == OpKind::MatMul) fail("--layer-bits: {} is a matmul of two activations and has no weight (use {}=a{})", name, name, bits);
  for (const auto& [name, bits] : o.layer_abits)
    if (g.find_node(name)->inputs[0] == g.input)
      fail("--layer-bits: the input of {} is the image, quantized at 8 bits in every convention", name);
  return points;
}

bool is_quant_point(const Graph& g, const Node& n, int slot) {
  if (slot < 0 || slot >= static_cast<int>(n.inputs.size()) || n.inputs[static_cast<size_t>(slot)] < 0) return false;
  if (is_quantizable(g, n)) return slot <= 1;
  if (g.is_const(n.inputs[static_cast<size_t>(slot)])) return false;
  switch (n.op) {
    case OpKind::LayerNorm:
    case OpKind::Softmax:
    case OpKind::Gelu: return slot == 0;
    case OpKind::Add: return (n.roles & kResidualAdd) && slot <= 1;
    default: return false;
  }
}

namespace {
// An integer field, strictly: 8.7 or 2^40 is an error, not 8 or 0.
int strict_int(const nlohmann::json& v, const std::string& key, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) throw std::runtime_error(fmt::format("'{}' must be an integer, got {}", key, v.dump()));
  const int64_t x = v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX) ? INT64_MAX : v.get<int64_t>();
  if (x < lo || x > hi) throw std::runtime_error(fmt::format("'{}' is {}, outside [{}, {}]", key, x, lo, hi));
  return static_cast<int>(x);
}
int strict_int(const nlohmann::json& j, const std::string& key, int64_t lo, int64_t hi, int fallback) {
  return j.contains(key) ? strict_int(j.at(key), key, lo, hi) : fallback;
}

nlohmann::json tensor_to_json(const at::Tensor& t) {
  auto c = t.detach().to(at::kCPU).to(at::kFloat).contiguous();
  return {{"shape", c.sizes().vec()}, {"data", std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel())}};
}
// A shape: a list of integers, each read strictly (a float 1e30 is an error, not undefined behaviour).
std::vector<int64_t> shape_from_json(const nlohmann::json& j) {
  if (!j.is_array() || j.size() > 8) throw std::runtime_error("a tensor shape must be a list of at most 8 integers");
  std::vector<int64_t> shape;
  for (const auto& d : j) shape.push_back(strict_int(d, "shape", 0, (int64_t{1} << 31) - 1));
  return shape;
}

at::Tensor tensor_from_json(const nlohmann::json& j) {
  auto shape = shape_from_json(j.at("shape"));
  auto data = j.at("data").get<std::vector<float>>();
  int64_t n = 1;
  for (auto d : shape) {
    if (d < 0 || d > (int64_t{1} << 31)) throw std::runtime_error("bad tensor shape");
    n *= d;
    if (n > (int64_t{1} << 40)) throw std::runtime_error("bad tensor shape");
  }
  if (n != static_cast<int64_t>(data.size())) throw std::runtime_error("tensor data does not match its shape");
  for (float v : data)
    if (!std::isfinite(v)) throw std::runtime_error("non-finite value");
  return at::tensor(data).reshape(shape);
}

const char* kBase64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
std::string base64_encode(const std::vector<uint8_t>& in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  for (size_t i = 0; i < in.size(); i += 3) {
    uint32_t v = static_cast<uint32_t>(in[i]) << 16;
    if (i + 1 < in.size()) v |= static_cast<uint32_t>(in[i + 1]) << 8;
    if (i + 2 < in.size()) v |= in[i + 2];
    out += kBase64[(v >> 18) & 63];
    out += kBase64[(v >> 12) & 63];
    out += i + 1 < in.size() ? kBase64[(v >> 6) & 63] : '=';
    out += i + 2 < in.size() ? kBase64[v & 63] : '=';
  }
  return out;
}
std::vector<uint8_t> base64_decode(const std::string& in) {
  int8_t map[256];
  std::fill(std::begin(map), std::end(map), int8_t{-1});
  for (int i = 0; i < 64; ++i) map[static_cast<unsigned char>(kBase64[i])] = static_cast<int8_t>(i);
  if (in.size() % 4 != 0) throw std::runtime_error("base64 text of a length that is not a multiple of 4");
  std::vector<uint8_t> out;
  out.reserve(in.size() / 4 * 3);
  for (size_t i = 0; i < in.size(); i += 4) {
    uint32_t v = 0;
    int pad = 0;
    for (size_t k = 0; k < 4; ++k) {
      const char c = in[i + k];
      if (c == '=' && i + 4 == in.size() && k >= 2) {
        ++pad;
        v <<= 6;
        continue;
      }
      if (pad || map[static_cast<unsigned char>(c)] < 0) throw std::runtime_error("invalid base64 text");
      v = (v << 6) | static_cast<uint32_t>(map[static_cast<unsigned char>(c)]);
    }
    out.push_back(static_cast<uint8_t>(v >> 16));
    if (pad < 2) out.push_back(static_cast<uint8_t>(v >> 8));
    if (pad < 1) out.push_back(static_cast<uint8_t>(v));
  }
  return out;
}
// Integer codes (2..8 bits: they fit a signed or an unsigned byte) as base64 bytes.
nlohmann::json codes_to_json(const at::Tensor& codes, const QuantSpec& spec) {
  auto c = codes.detach().to(at::kCPU).to(at::kFloat).contiguous();
  std::vector<uint8_t> bytes(static_cast<size_t>(c.numel()));
  const float* d = c.data_ptr<float>();
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(static_cast<int>(d[i]) & 0xff);
  return {{"shape", c.sizes().vec()}, {"encoding", spec.is_signed ? "int8-base64" : "uint8-base64"}, {"data", base64_encode(bytes)}};
}
at::Tensor codes_from_json(const nlohmann::json& j) {
  auto shape = shape_from_json(j.at("shape"));
  const auto enc = j.at("encoding").get<std::string>();
  if (enc != "int8-base64" && enc != "uint8-base64") throw std::runtime_error("unknown code encoding '" + enc + "'");
  auto bytes = base64_decode(j.at("data").get<std::string>());
  int64_t n = 1;
  for (auto d : shape) {
    if (d < 0 || d > (int64_t{1} << 31)) throw std::runtime_error("bad code tensor shape");
    n *= d;
  }
  if (n != static_cast<int64_t>(bytes.size())) throw std::runtime_error("weight codes do not match their shape");
  std::vector<float> v(bytes.size());
  for (size_t i = 0; i < v.size(); ++i)
    v[i] = enc == "int8-base64" ? static_cast<float>(static_cast<int8_t>(bytes[i])) : static_cast<float>(bytes[i]);
  return at::tensor(v).reshape(shape);
}

nlohmann::json spec_to_json(const QuantSpec& s) {
  return {{"bits", s.bits}, {"symmetric", s.symmetric}, {"signed", s.is_signed}, {"granularity", granularity_name(s.granularity)},
          {"axis", s.axis}, {"group_size", s.group_size}, {"kind", quant_kind_name(s.kind)}};
}
QuantSpec spec_from_json(const nlohmann::json& j) {
  QuantSpec s;
  s.bits = strict_int(j.at("bits"), "bits", 2, 8);
  s.symmetric = j.at("symmetric").get<bool>();
  s.is_signed = j.at("signed").get<bool>();
  s.granularity = parse_granularity(j.at("granularity").get<std::string>());
  s.axis = strict_int(j, "axis", -8, 8, 0);
  s.group_size = strict_int(j, "group_size", 0, 1 << 24, 0);
  s.kind = parse_quant_kind(j.value("kind", std::string("uniform")));
  s.validate();
  return s;
}
void params_to_json(const QuantParams& p, nlohmann::json& e) {
  if (!p.scale.defined()) return;
  e["scale"] = tensor_to_json(p.scale);
  e["zero_point"] = tensor_to_json(p.zero_point);
  if (p.scale2.defined()) e["scale2"] = tensor_to_json(p.scale2);
  if (p.base.defined()) e["base"] = tensor_to_json(p.base);
  if (p.shift.defined()) e["shift"] = tensor_to_json(p.shift);
}
// Reads and checks parameters: positive scales, integer zero points inside the grid.
QuantParams params_from_json(const nlohmann::json& e, const QuantSpec& spec, const std::string& what) {
  QuantParams p;
  if (!e.contains("scale")) return p;
  p.scale = tensor_from_json(e["scale"]);
  p.zero_point = tensor_from_json(e.at("zero_point"));
  if (e.contains("scale2")) p.scale2 = tensor_from_json(e["scale2"]);
  if (e.contains("base")) p.base = tensor_from_json(e["base"]);
  if (e.contains("shift")) p.shift = tensor_from_json(e["shift"]);
  if (spec.kind == QuantKind::AdaLog) check_adalog(p, what);
  else if (p.base.defined() || p.shift.defined()) fail("{} has a base or shift, which only an adalog quantizer has", what);
  // Normal positive floats: a subnormal step (1e-45) overflows 1/step to inf and turns codes into NaN.
  const float smallest = std::numeric_limits<float>::min();
  if (!(p.scale >= smallest).all().item<bool>() || (p.scale2.defined() && !(p.scale2 >= smallest).all().item<bool>()))
    fail("{} has a scale that is not a normal positive float (zero, negative or below {:g})", what, smallest);
  const auto& zp = p.zero_point;
  if (zp.sizes() != p.scale.sizes() || !at::equal(zp, at::round(zp)) ||
      zp.min().item<double>() < static_cast<double>(spec.qmin()) || zp.max().item<double>() > static_cast<double>(spec.qmax()))
    fail("{} has zero points that are not integers in [{}, {}] of the scale's shape", what, spec.qmin(), spec.qmax());
  return p;
}
}  // namespace

nlohmann::json plan_to_json(const QuantPlan& p) {
  nlohmann::json j = {{"format", "vitq-quant-plan"}, {"version", QuantPlan::kVersion}, {"model", p.model},
                      {"method", p.method}, {"settings", p.settings}};
  j["points"] = nlohmann::json::array();
  for (const auto& q : p.points) {
    nlohmann::json e = {{"node", q.node}, {"slot", q.slot}, {"weight", q.weight}, {"spec", spec_to_json(q.spec)}};
    params_to_json(q.params, e);
    if (q.codes.defined()) e["codes"] = codes_to_json(q.codes, q.spec);
    j["points"].push_back(e);
  }
  j["integer_ops"] = nlohmann::json::array();
  for (const auto& op : p.int_ops) {
    nlohmann::json e = {{"node", op.node}, {"kind", op.kind}, {"spec", spec_to_json(op.out_spec)}};
    params_to_json(op.out_params, e);
    j["integer_ops"].push_back(e);
  }
  j["bias"] = nlohmann::json::object();
  for (const auto& [node, b] : p.bias) j["bias"][node] = tensor_to_json(b);
  if (!p.weights.empty()) {
    j["weights"] = nlohmann::json::object();
    for (const auto& [node, w] : p.weights) j["weights"][node] = tensor_to_json(w);
  }
  if (!p.reparams.empty()) {
    j["reparams"] = nlohmann::json::array();
    for (const auto& r : p.reparams)
      j["reparams"].push_back({{"layernorm", r.layernorm}, {"scale", tensor_to_json(r.scale)}, {"shift", tensor_to_json(r.shift)}});
  }
  return j;
}

QuantPlan plan_from_json(const nlohmann::json& j, const std::string& where) {
  QuantPlan p;
  try {
    if (j.value("format", std::string()) != "vitq-quant-plan") fail("{}: not a vitq quantization plan", where);
    const int version = strict_int(j.at("version"), "version", 1, 1 << 20);
    if (version < 1 || version > QuantPlan::kVersion)
      fail("{}: plan format version {} is not supported (this vitq reads versions 1 to {})", where, version,
           QuantPlan::kVersion);
    p.model = j.at("model").get<std::string>();
    p.method = j.value("method", std::string());
    p.settings = j.value("settings", nlohmann::json::object());
    if (!p.settings.is_object()) fail("{}: plan settings must be a JSON object, got {}", where, p.settings.type_name());
    for (const char* key : {"wbits", "abits"})
      if (p.settings.contains(key)) strict_int(p.settings[key], std::string("settings.") + key, 2, 32);
    if (!j.at("points").is_array()) fail("{}: plan points must be a JSON array", where);
    for (const auto& e : j.at("points")) {
      QuantPoint q;
      q.node = e.at("node").get<std::string>();
      q.slot = strict_int(e.at("slot"), "slot", 0, 15);
      q.weight = e.at("weight").get<bool>();
      q.spec = spec_from_json(e.at("spec"));
      if (q.spec.kind == QuantKind::AdaLog && version < 5)
        fail("{}: {} slot {}: adalog quantizers need plan format version 5", where, q.node, q.slot);
      q.params = params_from_json(e, q.spec, fmt::format("{}: {} slot {}", where, q.node, q.slot));
      if (e.contains("codes")) {
        if (version < 3) fail("{}: {} slot {}: weight codes need plan format version 3", where, q.node, q.slot);
        q.codes = codes_from_json(e["codes"]);
      }
      p.points.push_back(std::move(q));
    }
    for (const auto& e : j.value("integer_ops", nlohmann::json::array())) {
      IntOp op;
      op.node = e.at("node").get<std::string>();
      op.kind = e.at("kind").get<std::string>();
      op.out_spec = spec_from_json(e.at("spec"));
      op.out_params = params_from_json(e, op.out_spec, fmt::format("{}: integer {} {}", where, op.kind, op.node));
      p.int_ops.push_back(std::move(op));
    }
    // corrected biases and updated weights: finite is not enough, a value of 3e38 overflows the next layer, and
    // both are weight-sized
    const auto read_tensors = [&](const char* key, const char* what, std::map<std::string, at::Tensor>& into) {
      for (const auto& [node, v] : j[key].items()) {
        at::Tensor t = tensor_from_json(v);
        if (t.numel() && t.abs().max().item<double>() > 1e6)
          fail("{}: {} of {} has values beyond ±1e6 (a corrupt plan?)", where, what, node);
        into[node] = std::move(t);
      }
    };
    if (j.contains("bias")) read_tensors("bias", "corrected bias", p.bias);
    if (j.contains("weights")) {
      if (version < 4) fail("{}: weight updates need plan format version 4", where);
      read_tensors("weights", "updated weight", p.weights);
    }
    if (j.contains("reparams")) {
      if (version < 4) fail("{}: reparameterisations need plan format version 4", where);
      if (!j["reparams"].is_array()) fail("{}: plan reparams must be a JSON array", where);
      for (const auto& e : j["reparams"]) {
        Reparam r;
        r.layernorm = e.at("layernorm").get<std::string>();
        r.scale = tensor_from_json(e.at("scale"));
        r.shift = tensor_from_json(e.at("shift"));
        p.reparams.push_back(std::move(r));
      }
    }
  } catch (const Error& e) {
    throw Error(e.what());
  } catch (const std::exception& e) {
    fail("{}: malformed plan ({})", where, first_line(e.what()));
  }
  return p;
}

void save_plan(const QuantPlan& plan, const std::string& path) {
  write_file_atomic(path, plan_to_json(plan).dump(1) + "\n", /*overwrite=*/true);
}

namespace {
// Learned codes: integers on the grid, shaped like the weight, each the floor or the ceiling of w / s + zp.
void check_codes(const QuantPoint& q, const at::Tensor& w, const std::string& what) {
  if (q.spec.kind != QuantKind::Uniform) fail("{}: weight codes need a uniform quantizer, not {}", what, q.spec.describe());
  if (q.codes.sizes() != w.sizes())
    fail("{}: weight codes of shape [{}] for a weight of shape [{}]", what, fmt::join(q.codes.sizes(), ", "), fmt::join(w.sizes(), ", "));
  const double lo = static_cast<double>(q.spec.qmin()), hi = static_cast<double>(q.spec.qmax());
  auto c = q.codes.to(at::kDouble);
  if (!at::equal(c, at::round(c)) || c.min().item<double>() < lo || c.max().item<double>() > hi)
    fail("{}: weight codes must be integers in [{}, {}]", what, q.spec.qmin(), q.spec.qmax());
  auto v = w.to(at::kDouble) / full_scale(q, w).to(at::kDouble) + full_zero_point(q, w).to(at::kDouble);
  auto floor_v = at::clamp(at::floor(v - 1e-3), lo, hi), ceil_v = at::clamp(at::ceil(v + 1e-3), lo, hi);
  auto off = (c < floor_v) | (c > ceil_v);
  if (off.any().item<bool>())
    fail("{}: {} weight codes are neither the floor nor the ceiling of weight / scale (codes from another model or "
         "scale?)", what, off.sum().item<int64_t>());
}
}  // namespace

void check_plan(const QuantPlan& p, const Graph& g, const std::string& where) {
  if (p.model != g.meta.name)
    fail("{}: plan is for model '{}', not '{}'", where, p.model, g.meta.name);
  std::map<int, at::Tensor> changed;
  try {
    changed = reparam_constants(g, p);
  } catch (const Error& e) {
    fail("{}: {}", where, e.what());
  }
  auto constant = [&](int v) -> const at::Tensor& {
    auto it = changed.find(v);
    return it != changed.end() ? it->second : g.const_tensor(v);
  };
  std::set<std::pair<std::string, int>> points;
  for (const auto& q : p.points) {
    if (!points.emplace(q.node, q.slot).second) fail("{}: {} slot {} is listed twice in the plan", where, q.node, q.slot);
    const Node* n = g.find_node(q.node);
    if (!n) fail("{}: plan quantizes {}, which {} does not have", where, q.node, g.meta.name);
    if (!is_quant_point(g, *n, q.slot))
      fail("{}: plan quantizes input {} of {}, which is not a quantization point", where, q.slot, q.node);
    const bool is_weight = g.is_const(n->inputs[static_cast<size_t>(q.slot)]);
    if (is_weight != q.weight) fail("{}: {} slot {} is {} in the model but {} in the plan", where, q.node, q.slot,
                                    is_weight ? "a weight" : "an activation", q.weight ? "a weight" : "an activation");
    if (!q.params.scale.defined()) fail("{}: {} slot {} has no parameters (plan not calibrated)", where, q.node, q.slot);
    if (!q.weight && q.spec.granularity == Granularity::PerTensor && q.params.scale.numel() != 1)
      fail("{}: {} slot {} is per-tensor but has {} scales", where, q.node, q.slot, q.params.scale.numel());
    if (q.spec.kind == QuantKind::TwinUniform) {
      const auto& s2 = q.params.scale2;
      if (!s2.defined() || s2.sizes() != q.params.scale.sizes())
        fail("{}: twin-uniform {} slot {} needs a second step shaped like its first", where, q.node, q.slot);
      auto ratio = at::log2(s2.to(at::kDouble) / q.params.scale.to(at::kDouble));
      if (!at::allclose(ratio, at::round(ratio), 0, 1e-4) || ratio.min().item<double>() < -1e-4)
        fail("{}: twin-uniform {} slot {}: the coarse step must be the fine step times a power of two", where, q.node, q.slot);
    }
    if (q.spec.kind == QuantKind::PowerOfTwoFactor) {
      try {
        ptf_factors(q.params.scale);
      } catch (const Error& e) {
        fail("{}: {} slot {}: {}", where, q.node, q.slot, e.what());
      }
      if (!at::equal(q.params.zero_point, at::full_like(q.params.zero_point, q.params.zero_point.reshape({-1})[0].item<float>())))
        fail("{}: {} slot {}: a power-of-two-factor quantizer has one zero point for all channels", where, q.node, q.slot);
    }
    if (q.weight) {
      const auto& w = q.slot == 1 ? plan_weight(p, q.node, constant(n->inputs[1])) : constant(n->inputs[static_cast<size_t>(q.slot)]);
      const auto expected = reduce_amax(w, q.spec).sizes().vec();
      if (q.params.scale.sizes().vec() != expected || q.params.zero_point.sizes().vec() != expected)
        fail("{}: the scales of {} have shape [{}], its weight [{}] needs [{}]", where, q.node,
             fmt::join(q.params.scale.sizes(), ", "), fmt::join(w.sizes(), ", "), fmt::join(expected, ", "));
      if (q.codes.defined()) check_codes(q, w, fmt::format("{}: {} slot {}", where, q.node, q.slot));
    } else if (q.codes.defined()) {
      fail("{}: {} slot {} has weight codes but is an activation", where, q.node, q.slot);
    }
  }
  std::set<std::string> seen;
  for (const auto& op : p.int_ops) {
    if (!seen.insert(op.node).second) fail("{}: {} is listed twice as an integer op", where, op.node);
    const Node* n = g.find_node(op.node);
    const OpKind want = op.kind == "layernorm" ? OpKind::LayerNorm : OpKind::Softmax;
    if (op.kind != "layernorm" && op.kind != "softmax") fail("{}: unknown integer op '{}' (layernorm, softmax)", where, op.kind);
    if (!n || n->op != want) fail("{}: integer {} on {}, which is not a {} node", where, op.kind, op.node, op.kind);
    const QuantPoint* in = p.find(op.node, 0);
    const QuantKind in_kind = want == OpKind::LayerNorm ? QuantKind::PowerOfTwoFactor : QuantKind::Uniform;
    if (!in || in->spec.kind != in_kind || (want == OpKind::Softmax && in->params.scale.numel() != 1))
      fail("{}: integer {} {} needs a {} quantizer on its input", where, op.kind, op.node,
           want == OpKind::LayerNorm ? "power-of-two-factor" : "per-tensor uniform");
    if (!op.out_params.scale.defined() || op.out_params.scale.numel() != 1)
      fail("{}: integer {} {} has no per-tensor output quantizer", where, op.kind, op.node);
    if (want == OpKind::Softmax && op.out_spec.kind != QuantKind::Log2 && (op.out_spec.kind != QuantKind::Uniform || op.out_spec.is_signed))
      fail("{}: integer softmax {} outputs log2 or unsigned uniform codes", where, op.node);
    if (want == OpKind::LayerNorm && op.out_spec.kind != QuantKind::Uniform)
      fail("{}: integer LayerNorm {} outputs uniform codes, not {}", where, op.node, op.out_spec.describe());
    if (want == OpKind::Softmax) {
      try {
        int_exp_constants(in->params.scale.item<double>());
      } catch (const Error& e) {
        fail("{}: integer softmax {}: {}", where, op.node, e.what());
      }
    }
  }
  for (const auto& [node, w] : p.weights) {
    const Node* n = g.find_node(node);
    if (!n || (n->op != OpKind::Linear && n->op != OpKind::Conv2d) || !g.is_const(n->inputs[1]))
      fail("{}: plan updates the weight of {}, which is not a Linear or Conv2d layer with a constant weight", where, node);
    if (w.sizes() != g.const_tensor(n->inputs[1]).sizes()) fail("{}: updated weight of {} has the wrong shape", where, node);
    if (!p.find(node, 1)) fail("{}: plan updates the weight of {} but does not quantize it", where, node);
  }
  for (const auto& [node, b] : p.bias) {
    const Node* n = g.find_node(node);
    if (!n || (n->op != OpKind::Linear && n->op != OpKind::Conv2d) || n->inputs.size() < 3)
      fail("{}: plan corrects the bias of {}, which is not a Linear or Conv2d layer with a bias", where, node);
    if (b.numel() != g.const_tensor(n->inputs[1]).size(0)) fail("{}: corrected bias of {} has the wrong size", where, node);
  }
}

const at::Tensor& plan_weight(const QuantPlan& p, const std::string& node, const at::Tensor& model_weight) {
  auto it = p.weights.find(node);
  return it != p.weights.end() ? it->second : model_weight;
}

std::map<int, at::Tensor> reparam_constants(const Graph& g, const QuantPlan& p) {
  std::map<int, at::Tensor> out;
  if (p.reparams.empty()) return out;
  std::vector<std::string> names;
  for (const auto& r : p.reparams) names.push_back(r.layernorm);
  if (!g.reparameterised.empty()) {
    if (g.reparameterised != names) fail("the model is already reparameterised by another plan");
    return out;
  }
  const auto readers = g.consumers();
  std::set<std::string> seen;
  for (const auto& r : p.reparams) {
    if (!seen.insert(r.layernorm).second) fail("LayerNorm {} is reparameterised twice", r.layernorm);
    const Node* ln = g.find_node(r.layernorm);
    if (!ln || ln->op != OpKind::LayerNorm) fail("reparameterisation of {}, which is not a LayerNorm of the model", r.layernorm);
    if (ln->inputs.size() < 3 || !g.is_const(ln->inputs[1]) || !g.is_const(ln->inputs[2]))
      fail("reparameterisation of {}: the LayerNorm has no constant weight and bias", r.layernorm);
    const auto& gamma = g.const_tensor(ln->inputs[1]);
    const auto& beta = g.const_tensor(ln->inputs[2]);
    const int64_t c = gamma.numel();
    if (gamma.dim() != 1 || r.scale.dim() != 1 || r.shift.dim() != 1 || r.scale.numel() != c || r.shift.numel() != c)
      fail("reparameterisation of {}: scale and shift must have the LayerNorm's {} channels", r.layernorm, c);
    if (!(r.scale > 0).all().item<bool>() || !at::isfinite(r.scale).all().item<bool>() || !at::isfinite(r.shift).all().item<bool>())
      fail("reparameterisation of {}: scales must be positive and finite, shifts finite", r.layernorm);
    auto scale = r.scale.to(at::kDouble), shift = r.shift.to(at::kDouble);
    out[ln->inputs[1]] = (gamma.to(at::kDouble) / scale).to(gamma.scalar_type());
    out[ln->inputs[2]] = ((beta.to(at::kDouble) + shift) / scale).to(beta.scalar_type());
    const auto& rd = readers[static_cast<size_t>(ln->outputs[0])];
    if (rd.empty() || ln->outputs[0] == g.output) fail("reparameterisation of {}: its output is not read by a layer", r.layernorm);
    for (int k : rd) {
      const Node& n = g.nodes[static_cast<size_t>(k)];
      if (n.op != OpKind::Linear || n.inputs[0] != ln->outputs[0] || n.inputs.size() < 3 || n.inputs[2] < 0 ||
          !g.is_const(n.inputs[1]) || !g.is_const(n.inputs[2]))
        fail("reparameterisation of {}: its output is read by {}, which is not a Linear layer with a constant weight and bias",
             r.layernorm, n.name);
      const auto& w = g.const_tensor(n.inputs[1]);
      const auto& b = g.const_tensor(n.inputs[2]);
      if (w.dim() != 2 || w.size(1) != c || out.count(n.inputs[1]) || out.count(n.inputs[2]))
        fail("reparameterisation of {}: {} does not take its {} channels, or shares its weights", r.layernorm, n.name, c);
      auto wd = w.to(at::kDouble);
      out[n.inputs[1]] = (wd * scale.unsqueeze(0)).to(w.scalar_type());
      out[n.inputs[2]] = (b.to(at::kDouble) - at::mv(wd, shift)).to(b.scalar_type());
    }
  }
  return out;
}

Graph with_reparams(const Graph& g, const QuantPlan& p) {
  Graph out = g;
  for (auto& [v, t] : reparam_constants(g, p)) out.consts[static_cast<size_t>(v)] = t;
  if (out.reparameterised.empty())
    for (const auto& r : p.reparams) out.reparameterised.push_back(r.layernorm);
  return out;
}

QuantPlan load_plan(const std::string& path, const Graph& g) {
  const std::string text = read_file(path, "plan", uint64_t{4} << 30);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception&) {
    fail("{}: invalid JSON", path);
  }
  QuantPlan p = plan_from_json(j, path);
  if (p.points.empty() && p.int_ops.empty()) fail("{}: the plan quantizes nothing (no points)", path);
  check_plan(p, g, path);
  return p;
}

}  // namespace vitq
