#include "vitq/deploy/int8_runtime.h"

#include <ATen/ATen.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <unordered_map>
#include <map>
#include <mutex>
#include <optional>

#include "vitq/graph/executor.h"
#include "vitq/graph/kernels.h"
#include "vitq/quant/fake_quant.h"
#include "vitq/quant/plan.h"
#include "vitq/util/error.h"

#if VITQ_WITH_DNNL
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace vitq {

#if VITQ_WITH_DNNL

bool int8_runtime_available() { return true; }

namespace {

using dnnl::memory;
using Tag = memory::format_tag;
using DT = memory::data_type;

dnnl::engine& cpu_engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

bool per_tensor(const QuantPoint& p) { return p.params.scale.numel() == 1; }

// Elementwise quantization of a contiguous float span: codes = clamp(rint(x / s) + zp, lo, hi).
template <class T>
[[gnu::always_inline]] inline void quantize_span(const float* __restrict__ x, T* __restrict__ q, int64_t n, float s, float zp,
                                                  float lo, float hi) {
  for (int64_t i = 0; i < n; ++i) {
    float v = __builtin_rintf(x[i] / s) + zp;
    v = v < lo ? lo : v;
    v = v > hi ? hi : v;
    q[i] = static_cast<T>(v);
  }
}
template <class T>
[[gnu::target("avx512f,avx512bw,avx512vl,avx512dq")]] void quantize_avx512(const float* x, T* q, int64_t n, float s, float zp,
                                                                             float lo, float hi) {
  quantize_span(x, q, n, s, zp, lo, hi);
}
template <class T>
void quantize_generic(const float* x, T* q, int64_t n, float s, float zp, float lo, float hi) {
  quantize_span(x, q, n, s, zp, lo, hi);
}

bool has_avx512() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq");
  }();
  return yes;
}

// Codes of x (float, any strides whose last one is 1, else copied) into a new contiguous tensor of x's shape:
// clamp(rint(x / s) + zp, lo, hi), with s, zp, lo and hi each taken per index of dim 1 where it has more than one
// entry (per-head quantizers of [B, H, N, D], per-token ones of [B, N, C]). Rows of the last dim are quantized in
// place from x's memory: no float copy.
template <class T>
void quantize_into(const at::Tensor& x_in, T* out, const std::vector<float>& scales, const std::vector<float>& zp, const std::vector<float>& lo,
                   const std::vector<float>& hi) {
  at::Tensor x = x_in.stride(-1) == 1 ? x_in : x_in.contiguous();
  auto kernel = has_avx512() ? quantize_avx512<T> : quantize_generic<T>;
  const float* base = x.data_ptr<float>();
  if (x.is_contiguous() && scales.size() == 1 && zp.size() == 1) {
    at::parallel_for(0, x.numel(), 65536, [&](int64_t b, int64_t e) { kernel(base + b, out + b, e - b, scales[0], zp[0], lo[0], hi[0]); });
    return;
  }
  const int64_t r = x.dim(), inner = x.size(-1), rows = x.numel() / std::max<int64_t>(inner, 1);
  const auto sizes = x.sizes().vec(), strides = x.strides().vec();
  at::parallel_for(0, rows, 16, [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      int64_t rem = row, off = 0, head = 0;
      for (int64_t d = r - 2; d >= 0; --d) {
        const int64_t i = rem % sizes[static_cast<size_t>(d)];
        rem /= sizes[static_cast<size_t>(d)];
        off += i * strides[static_cast<size_t>(d)];
        if (d == 1) head = i;
      }
      const size_t h = static_cast<size_t>(head);
      kernel(base + off, out + row * inner, inner, scales.size() == 1 ? scales[0] : scales[h], zp.size() == 1 ? zp[0] : zp[h],
             lo.size() == 1 ? lo[0] : lo[h],
             hi.size() == 1 ? hi[0] : hi[h]);
    }
  });
}

std::vector<float> scale_list(const QuantPoint& p) {
  auto sc = p.params.scale.to(at::kFloat).reshape({-1}).contiguous();
  return {sc.data_ptr<float>(), sc.data_ptr<float>() + sc.numel()};
}

// An asymmetric per-head quantizer (one zero point a head) runs as centred codes q − zp_h, which fit int8 up to 7
// bits: the GEMM then needs no zero point, and the per-head steps are applied after it, as for symmetric ones.
bool centred_per_head(const QuantPoint& p) {
  return p.spec.kind == QuantKind::Uniform && p.spec.granularity == Granularity::PerHead && !p.spec.symmetric && p.spec.bits <= 7;
}

// Uniform codes of a per-tensor or per-head (dim 1) quantizer. as_signed: unsigned codes shifted down by 128
// (with the zero point), for oneDNN's signed weights operand; the differences q − zp are unchanged.
IntGrid uniform_grid(const at::Tensor& x, const QuantPoint& p, bool as_signed = false) {
  const auto scales = scale_list(p);
  if (scales.size() > 1 && (x.dim() < 3 || x.size(1) != static_cast<int64_t>(scales.size())))
    fail("int8 runtime: {} has {} steps for a tensor of shape [{}]", p.node, scales.size(), fmt::join(x.sizes(), ", "));
  IntGrid g;
  g.step = scales.size() == 1 ? scales[0] : 1.0f;  // per-head steps are applied after the GEMM
  if (centred_per_head(p)) {
    // clamp(rint(x/s) + zp, qmin, qmax) − zp = clamp(rint(x/s), qmin − zp, qmax − zp)
    auto zps = p.params.zero_point.to(at::kFloat).reshape({-1}).contiguous();
    if (zps.numel() != static_cast<int64_t>(scales.size()))
      fail("int8 runtime: {} has {} zero points for {} steps", p.node, zps.numel(), scales.size());
    std::vector<float> lo, hi;
    for (int64_t h = 0; h < zps.numel(); ++h) {
      const float z = std::nearbyint(zps[h].item<float>());
      lo.push_back(static_cast<float>(p.spec.qmin()) - z);
      hi.push_back(static_cast<float>(p.spec.qmax()) - z);
    }
    g.zero_point = 0;
    g.codes = at::empty(x.sizes(), at::kChar);
    quantize_into(x, g.codes.data_ptr<int8_t>(), scales, {0.0f}, lo, hi);
    return g;
  }
  const float shift = as_signed && !p.spec.is_signed ? -128.0f : 0.0f;
  const float zp = p.params.zero_point.reshape({-1})[0].item<float>() + shift;
  const float lo = static_cast<float>(p.spec.qmin()) + shift, hi = static_cast<float>(p.spec.qmax()) + shift;
  g.zero_point = static_cast<int32_t>(zp);
  if (lo >= 0) {
    g.codes = at::empty(x.sizes(), at::kByte);
    quantize_into(x, g.codes.data_ptr<uint8_t>(), scales, {zp}, {lo}, {hi});
  } else {
    g.codes = at::empty(x.sizes(), at::kChar);
    quantize_into(x, g.codes.data_ptr<int8_t>(), scales, {zp}, {lo}, {hi});
  }
  return g;
}

// Whether a per-token input's centred codes q − zp_n fit int8 (up to 7 bits; else the codes q keep their zero points).
bool token_centred(const QuantPoint& p) {
  const auto z = p.params.zero_point.to(at::kDouble);
  return static_cast<double>(p.spec.qmin()) - z.max().item<double>() >= -128 && static_cast<double>(p.spec.qmax()) - z.min().item<double>() <= 127;
}

// Why a per-token input cannot run natively ("" if it can).
std::string token_problem(const QuantPoint& p) {
  if (auto why = per_token_zero_point_problem(p); !why.empty()) return why;
  if (!token_centred(p) && (p.spec.qmin() < (p.spec.is_signed ? -128 : 0) || p.spec.qmax() > (p.spec.is_signed ? 127 : 255)))
    return fmt::format("{}-bit per-token input", p.spec.bits);
  return "";
}

// Codes of a per-token input, its steps (and zero points, where the codes are not centred) applied to the GEMM's
// output rows: centred codes q − zp_n up to 7 bits, else the codes q in int8 or uint8 and zp_n kept apart.
IntGrid token_grid(const at::Tensor& x, const QuantPoint& p) {
  const auto scales = scale_list(p);
  if (x.dim() != 3 || x.size(1) != static_cast<int64_t>(scales.size()))
    fail("int8 runtime: {} has {} per-token steps for a tensor of shape [{}]", p.node, scales.size(), fmt::join(x.sizes(), ", "));
  auto zps = p.params.zero_point.to(at::kFloat).reshape({-1}).contiguous();
  const float qmin = static_cast<float>(p.spec.qmin()), qmax = static_cast<float>(p.spec.qmax());
  IntGrid g;
  g.row_step = at::tensor(scales, at::kFloat);
  if (token_centred(p)) {
    std::vector<float> lo, hi;
    for (int64_t n = 0; n < zps.numel(); ++n) {
      const float z = zps.data_ptr<float>()[n];
      lo.push_back(qmin - z);
      hi.push_back(qmax - z);
    }
    g.codes = at::empty(x.sizes(), at::kChar);
    quantize_into(x, g.codes.data_ptr<int8_t>(), scales, {0.0f}, lo, hi);  // clamp(rint(x/s_n), qmin − zp_n, qmax − zp_n)
    return g;
  }
  // clamp(rint(x/s_n) + zp_n, qmin, qmax), each zero point subtracted after the GEMM (zp_n · Σ_k w)
  g.row_zero_point = zps;
  const std::vector<float> zp(zps.data_ptr<float>(), zps.data_ptr<float>() + zps.numel());
  g.codes = at::empty(x.sizes(), qmin >= 0 ? at::kByte : at::kChar);
  if (qmin >= 0) quantize_into(x, g.codes.data_ptr<uint8_t>(), scales, zp, {qmin}, {qmax});
  else quantize_into(x, g.codes.data_ptr<int8_t>(), scales, zp, {qmin}, {qmax});
  return g;
}

// What the int8 runtime needs of a log kind's input quantizer, made once per layer: the code of x is
// c = clamp(round(−τ · log2((x + shift) / scale)), 0, top + 1) (top + 1: below the grid), and code c is the value
// t0[c]·step0 + t1[c]·step1 − shift. `two_grids` is false where the second grid is all zeros (log2 up to 3 bits).
struct LogTables {
  int top = 0;
  std::vector<uint8_t> t0, t1;
  float step0 = 0, step1 = 0;
  double shift = 0;   // AdaLog's δ (0 for the other kinds)
  float scale = 0;    // the code's scale s
  double tau = 0;     // codes per octave
  bool two_grids = true;
  std::vector<float> bound;  // up to 5 bits: bound[k], y = (x + shift) / s below it has a code above k
};

LogTables log_tables(const QuantPoint& p) {
  LogTables t;
  const double s = p.params.scale.item<double>(), tau = log_codes_per_octave(p.spec, p.params);
  t.top = static_cast<int>(log2_max_code(p.spec));
  t.scale = p.params.scale.item<float>();
  t.tau = tau;
  t.shift = log_shift(p.spec, p.params);
  t.two_grids = p.spec.kind != QuantKind::Log2 || t.top > 7;
  if (t.top < 32)
    for (int k = 0; k <= t.top; ++k) t.bound.push_back(static_cast<float>(std::exp2(-(k + 0.5) / tau)));
  t.t0.assign(static_cast<size_t>(t.top) + 2, 0);
  t.t1.assign(static_cast<size_t>(t.top) + 2, 0);
  switch (p.spec.kind) {
    case QuantKind::LogSqrt2:
      // c = 2k: s·2^-k; c = 2k + 1: (s/√2)·2^-k — a power-of-two grid each (k <= 7 at 4 bits)
      for (int c = 0; c <= t.top; ++c) (c % 2 == 0 ? t.t0 : t.t1)[static_cast<size_t>(c)] = static_cast<uint8_t>(std::exp2(7 - c / 2));
      t.step0 = static_cast<float>(s / 128.0);
      t.step1 = static_cast<float>(s / std::sqrt(2.0) / 128.0);
      break;
    case QuantKind::AdaLog:
      // x̂ = s·2^(−c/τ) − δ. 2^(−c/τ) in (0, 1] is written as two 8-bit fixed-point digits, hi/255 + lo/255², so
      // each value is within s/(2·255²) ≈ 7.7e-6·s of the simulation's (far inside the grid's spacing, whose finest
      // step at 8 codes per octave is 8% of the value); δ is the grids' shift.
      for (int c = 0; c <= t.top; ++c) {
        const double v = std::exp2(-c / tau) * 255.0, hi = std::floor(v);
        t.t0[static_cast<size_t>(c)] = static_cast<uint8_t>(hi);
        t.t1[static_cast<size_t>(c)] = static_cast<uint8_t>(std::nearbyint((v - hi) * 255.0));
      }
      t.step0 = static_cast<float>(s / 255.0);
      t.step1 = static_cast<float>(s / (255.0 * 255.0));
      break;
    case QuantKind::Log2:  // split at c = 7
      for (int c = 0; c <= t.top; ++c)
        (c <= 7 ? t.t0 : t.t1)[static_cast<size_t>(c)] = static_cast<uint8_t>(std::exp2(c <= 7 ? 7 - c : 15 - c));
      t.step0 = static_cast<float>(s / 128.0);
      t.step1 = static_cast<float>(s / 32768.0);
      break;
    default: fail("int8 runtime: {}: {} is not a log kind", p.node, quant_kind_name(p.spec.kind));
  }
  return t;
}

// One pass over a log kind's input x (contiguous float): each element's code c as the simulation's log2_codes
// makes it — y = (x + δ) / s, c = clamp(round(−τ · log2 y), 0, top + 1), y <= 0 or NaN giving top + 1 — and its two
// grid values t0[c], t1[c]. Up to 5 bits c is counted against the rounding boundaries, c = #{k <= top : y < 2^(−(k +
// ½)/τ)} (a few vector compares an element instead of a log); above, with the C library's log2. Either way a code
// can differ from the simulation's where −τ · log2 y is within a float rounding of a boundary (libtorch's log2 is
// another implementation), as float noise can flip it there.
void log_grid_pair(const at::Tensor& x, const LogTables& t, const std::string& node, uint8_t* g0, uint8_t* g1) {
  if (x.scalar_type() != at::kFloat || !x.is_contiguous()) fail("int8 runtime: {}: a log input must be contiguous float", node);
  const float* in = x.data_ptr<float>();
  const float scale = t.scale;
  const float shift = static_cast<float>(t.shift);
  const float ntau = static_cast<float>(-t.tau);
  const int top = t.top;
  const float below = static_cast<float>(top + 1);
  const bool shifted = shift != 0.0f;
  const std::vector<float>& bound = t.bound;
  const std::vector<uint8_t>&t0 = t.t0, &t1 = t.t1;
  at::parallel_for(0, x.numel(), 16384, [&](int64_t b, int64_t e) {
    constexpr int64_t kChunk = 1024;
    float y[kChunk];
    uint16_t c[kChunk];  // 0..top + 1 (256 at 8 bits)
    for (int64_t i0 = b; i0 < e; i0 += kChunk) {
      const int64_t n = std::min(kChunk, e - i0);
      for (int64_t i = 0; i < n; ++i) y[i] = (shifted ? in[i0 + i] + shift : in[i0 + i]) / scale;
      if (!bound.empty()) {
        // NaN starts at top + 1 and passes no compare
        for (int64_t i = 0; i < n; ++i) c[i] = std::isnan(y[i]) ? static_cast<uint16_t>(top + 1) : 0;
        for (float edge : bound)
          for (int64_t i = 0; i < n; ++i) c[i] = static_cast<uint16_t>(c[i] + (y[i] < edge ? 1 : 0));
      } else {
        for (int64_t i = 0; i < n; ++i) {
          float v = std::nearbyint(ntau * std::log2(y[i]));
          v = std::isnan(v) ? below : v < 0.0f ? 0.0f : v > below ? below : v;
          c[i] = static_cast<uint16_t>(v);
        }
      }
      for (int64_t i = 0; i < n; ++i) {
        g0[i0 + i] = t0[c[i]];
        g1[i0 + i] = t1[c[i]];
      }
    }
  });
}

// The grids of a twin-uniform, log2, log√2 or AdaLog input (x̂ = Σ step · codes − shift, no zero points); a log
// kind's from `tables`, its layer's log_tables(p).
std::vector<IntGrid> split_grids(const at::Tensor& x_in, const QuantPoint& p, const LogTables* tables) {
  auto x = x_in.contiguous();
  std::vector<IntGrid> out;
  if (p.spec.kind == QuantKind::TwinUniform) {
    const float d1 = p.params.scale.item<float>(), d2 = p.params.scale2.item<float>();
    const double n = static_cast<double>((int64_t{1} << (p.spec.bits - 1)) - 1);
    auto c1 = at::round(x / d1);
    auto coarse = at::clamp(at::round(x / d2), 0.0, n);
    at::Tensor fine_mask = p.spec.is_signed ? (x < 0) : (c1 <= n);
    at::Tensor fine = at::where(fine_mask, p.spec.is_signed ? at::clamp(c1, -n, 0.0) : at::clamp(c1, 0.0, n), at::zeros_like(x));
    coarse = at::where(fine_mask, at::zeros_like(x), coarse);
    const auto fine_type = p.spec.is_signed ? at::kChar : at::kByte;
    out.push_back({fine.to(fine_type), d1, 0});
    out.push_back({coarse.to(at::kByte), d2, 0});
  } else {
    // The log kinds: each code c (0..top, top + 1 for "below the grid") is one pair of grid values, from a table;
    // the codes are made in one pass (log_grid_pair), not a chain of whole-tensor ops.
    if (!tables) fail("int8 runtime: {}: a log input without its tables", p.node);
    const LogTables& t = *tables;
    auto g0 = at::empty(x.sizes(), at::kByte), g1 = at::empty(x.sizes(), at::kByte);
    log_grid_pair(x, t, p.node, g0.data_ptr<uint8_t>(), g1.data_ptr<uint8_t>());
    out.push_back({g0, t.step0, 0, t.shift});
    if (t.two_grids) out.push_back({g1, t.step1, 0, 0.0});
  }
  return out;
}

// `tables`: log_tables(p) for a log kind (made once per layer), else unused.
std::vector<IntGrid> input_grids(const at::Tensor& x, const QuantPoint& p, const LogTables* tables) {
  if (p.spec.kind == QuantKind::TwinUniform || is_any_log_kind(p.spec.kind)) return split_grids(x, p, tables);
  if (is_per_token_input(p)) return {token_grid(x, p)};
  return {uniform_grid(x, p)};
}

// Why an input quantizer cannot feed a GEMM as its left operand ("" if it can).
std::string left_problem(const QuantPoint& p, bool allow_per_head) {
  if (p.spec.kind == QuantKind::TwinUniform || is_any_log_kind(p.spec.kind)) {
    if (!per_tensor(p)) return fmt::format("{} input with more than one step", quant_kind_name(p.spec.kind));
    if (is_log_kind(p.spec.kind) && p.spec.bits > 4) return fmt::format("{} input above 4 bits", quant_kind_name(p.spec.kind));
    return "";
  }
  if (p.spec.kind != QuantKind::Uniform) return fmt::format("{} input", quant_kind_name(p.spec.kind));
  if (per_tensor(p)) return "";
  if (allow_per_head && p.spec.granularity == Granularity::PerHead && p.spec.symmetric && p.spec.is_signed) return "";
  if (allow_per_head && centred_per_head(p)) return "";
  if (allow_per_head && p.spec.granularity == Granularity::PerHead && !p.spec.symmetric)
    return fmt::format("{}-bit asymmetric per-head input (centred codes fit int8 up to 7 bits)", p.spec.bits);
  return fmt::format("per-{} input quantizer", granularity_name(p.spec.granularity));
}
// The right operand is oneDNN's (signed) weights operand.
std::string right_problem(const QuantPoint& p) {
  if (p.spec.kind != QuantKind::Uniform) return fmt::format("{} right operand", quant_kind_name(p.spec.kind));
  if (per_tensor(p)) return "";  // unsigned codes are shifted to int8
  if (centred_per_head(p)) return "";
  if (!p.spec.is_signed) return "unsigned per-head right operand";
  if (p.spec.granularity == Granularity::PerHead && p.spec.symmetric) return "";
  return fmt::format("per-{} right operand", granularity_name(p.spec.granularity));
}

memory::desc plain_desc(const std::vector<int64_t>& dims, DT dt) {
  memory::dims d(dims.begin(), dims.end());
  return memory::desc(d, dt, dims.size() == 2 ? Tag::ab : dims.size() == 3 ? Tag::abc : Tag::abcd);
}

DT code_type(const at::Tensor& codes) { return codes.scalar_type() == at::kByte ? DT::u8 : DT::s8; }

struct Scalars {  // runtime attribute arguments
  float scale = 1;
  int32_t src_zp = 0, wei_zp = 0;
};

// A Linear as int8 GEMMs: y = Σ_g step_g · s_w[n] · ((A_g − zp_g) · Wᵀ) + b.
class NativeLinear {
 public:
  NativeLinear(const at::Tensor& codes, std::vector<float> w_scale, at::Tensor bias)
      : codes_(codes.to(at::kChar).contiguous()), w_scale_(std::move(w_scale)), bias_(std::move(bias)) {
    N_ = codes_.size(0);
    K_ = codes_.size(1);
  }

  // The input's zero point and shift are folded into the bias: s_w[n]·Σ_k (s·(q − zp) − δ)·w
  // = s·s_w[n]·(Σ_k q·w − (zp + δ/s)·Σ_k w).
  const at::Tensor& folded_bias(const IntGrid& g) {
    std::lock_guard<std::mutex> lock(mu_);
    auto key = std::make_tuple(g.step, g.zero_point, g.shift);
    auto it = bias_by_zp_.find(key);
    if (it != bias_by_zp_.end()) return it->second;
    // oneDNN 2.x adds the bias to the accumulator before the output scale: dst = scale[n]·(acc + bias'[n]), so
    // bias' = bias / scale − (zp + δ/s)·Σ_k w (in double, then float).
    auto b = bias_.defined() ? bias_.to(at::kDouble) : at::zeros({N_}, at::kDouble);
    auto sc = static_cast<double>(g.step) *
              at::tensor(std::vector<double>(w_scale_.begin(), w_scale_.end()), at::kDouble).expand({N_});
    b = b / sc;
    const double offset = static_cast<double>(g.zero_point) + g.shift / static_cast<double>(g.step);
    if (offset != 0) b = b - offset * codes_.to(at::kDouble).sum(1);
    return bias_by_zp_.emplace(key, b.to(at::kFloat).contiguous()).first->second;
  }

  // s_w[c] · Σ_k w[c, k]: the output of a row of ones (a per-token input's zero point)
  const at::Tensor& weight_sums() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!weight_sums_.defined())
      weight_sums_ = (codes_.to(at::kDouble).sum(1) * at::tensor(std::vector<double>(w_scale_.begin(), w_scale_.end()), at::kDouble))
                         .to(at::kFloat)
                         .contiguous();
    return weight_sums_;
  }

  // gelu: GELU (erf) in the epilogue of the last GEMM
  at::Tensor run(const at::Tensor& x, const std::vector<IntGrid>& grids, bool gelu = false) {
    if (x.size(-1) != K_) fail("int8 runtime: Linear input has {} features, its weight {}", x.size(-1), K_);
    const int64_t M = x.numel() / K_;
    auto sizes = x.sizes().vec();
    sizes.back() = N_;
    auto y = at::empty({M, N_}, at::kFloat);
    dnnl::stream st(cpu_engine());
    if (grids.size() == 1 && grids[0].row_step.defined()) {
      // per-token steps: y = s_n · (s_w[c] · Σ_k q·w − zp_n · s_w[c] · Σ_k w) + b, with the zero point, the row scale,
      // the bias and the GELU after the GEMM (zp_n = 0 for centred codes)
      const auto& g = grids[0];
      if (x.dim() != 3 || g.row_step.numel() != x.size(1)) fail("int8 runtime: per-token steps for a Linear input of rank {}", x.dim());
      auto& prim = primitive(M, code_type(g.codes), 1.0f, false, false, false);
      memory src(prim.src, cpu_engine(), g.codes.data_ptr());
      memory dst(prim.dst, cpu_engine(), y.data_ptr());
      prim.prim.execute(st, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, *prim.weights}, {DNNL_ARG_DST, dst}});
      st.wait();
      auto rows = y.view({x.size(0), x.size(1), N_});
      if (g.row_zero_point.defined()) rows.sub_(g.row_zero_point.view({1, -1, 1}) * weight_sums().view({1, 1, -1}));
      rows.mul_(g.row_step.view({1, -1, 1}));
      if (bias_.defined()) rows.add_(bias_);
      if (gelu) y = at::gelu(y);
      return y.view(sizes);
    }
    for (size_t gi = 0; gi < grids.size(); ++gi) {
      const auto& g = grids[gi];
      const bool with_bias = gi == 0 && (bias_.defined() || g.zero_point != 0 || g.shift != 0);
      if (gi > 0 && (g.zero_point != 0 || g.shift != 0)) fail("int8 runtime: a second grid with a zero point or shift");
      auto& prim = primitive(M, code_type(g.codes), g.step, gi > 0, with_bias, gelu && gi + 1 == grids.size());
      memory src(prim.src, cpu_engine(), g.codes.data_ptr());
      memory dst(prim.dst, cpu_engine(), y.data_ptr());
      std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, *prim.weights}, {DNNL_ARG_DST, dst}};
      if (with_bias) args.emplace(DNNL_ARG_BIAS, memory({{1, N_}, DT::f32, Tag::ab}, cpu_engine(), folded_bias(g).data_ptr()));
      prim.prim.execute(st, args);
    }
    st.wait();
    return y.view(sizes);
  }

 private:
  struct Prim {
    dnnl::matmul prim;
    memory::desc src, dst;
    const memory* weights = nullptr;
  };

  Prim& primitive(int64_t M, DT dt, float step, bool accumulate, bool with_bias, bool gelu) {
    std::lock_guard<std::mutex> lock(mu_);
    auto key = std::make_tuple(M, static_cast<int>(dt), step, accumulate, with_bias, gelu);
    auto it = prims_.find(key);
    if (it != prims_.end()) return it->second;
    memory::desc src({M, K_}, dt, Tag::ab), dst({M, N_}, DT::f32, Tag::ab);
    memory::desc wany({K_, N_}, DT::s8, Tag::any), bias({1, N_}, DT::f32, Tag::ab);
    dnnl::primitive_attr attr;
    std::vector<float> scales(w_scale_.size());
    for (size_t n = 0; n < scales.size(); ++n) scales[n] = step * w_scale_[n];
    attr.set_output_scales(scales.size() == 1 ? 0 : 2, scales);
    dnnl::post_ops po;
    if (accumulate) po.append_sum(1.0f);
    if (gelu) po.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_erf, 0.0f, 0.0f);
    attr.set_post_ops(po);
    auto desc = with_bias ? dnnl::matmul::desc(src, wany, bias, dst) : dnnl::matmul::desc(src, wany, dst);
    dnnl::matmul::primitive_desc pd(desc, attr, cpu_engine());
    Prim p{dnnl::matmul(pd), src, dst, &packed(pd.weights_desc())};
    return prims_.emplace(key, std::move(p)).first->second;
  }

  // The weight codes in the layout a primitive wants, reordered once per layout.
  const memory& packed(const memory::desc& want) {
    for (auto& [d, m] : packed_)
      if (d == want) return *m;
    // codes_ is [N, K] row-major: as a K x N matrix its strides are (1, K)
    memory::desc user({K_, N_}, DT::s8, memory::dims{1, K_});
    memory src(user, cpu_engine(), codes_.data_ptr());
    auto m = std::make_unique<memory>(want, cpu_engine());
    dnnl::stream st(cpu_engine());
    dnnl::reorder(src, *m).execute(st, src, *m);
    st.wait();
    packed_.emplace_back(want, std::move(m));
    return *packed_.back().second;
  }

  at::Tensor codes_;
  std::vector<float> w_scale_;
  at::Tensor bias_, weight_sums_;
  int64_t N_ = 0, K_ = 0;
  std::mutex mu_;
  std::map<std::tuple<int64_t, int, float, bool, bool, bool>, Prim> prims_;
  std::map<std::tuple<float, int32_t, double>, at::Tensor> bias_by_zp_;
  std::vector<std::pair<memory::desc, std::unique_ptr<memory>>> packed_;
};

// A Conv2d as an int8 convolution: y = s·s_w[oc]·conv(codes − zp, W_codes) + b, the input's zero point handled by
// oneDNN (so padding stays a real zero), weights packed once.
class NativeConv {
 public:
  NativeConv(const Node& n, const at::Tensor& codes, std::vector<float> w_scale, at::Tensor bias)
      : codes_(codes.to(at::kChar).contiguous()), w_scale_(std::move(w_scale)), bias_(std::move(bias)) {
    groups_ = n.geti("group", 1);
    pads_ = n.getints("pads", {0, 0, 0, 0});
    strides_ = n.getints("strides", {1, 1});
    dil_ = n.getints("dilations", {1, 1});
  }

  at::Tensor run(const at::Tensor& x, const IntGrid& g) {
    if (x.dim() != 4) fail("int8 runtime: Conv2d input of rank {}", x.dim());
    const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    const int64_t OC = codes_.size(0), KH = codes_.size(2), KW = codes_.size(3);
    const int64_t OH = (H + pads_[0] + pads_[2] - dil_[0] * (KH - 1) - 1) / strides_[0] + 1;
    const int64_t OW = (W + pads_[1] + pads_[3] - dil_[1] * (KW - 1) - 1) / strides_[1] + 1;
    const DT dt = code_type(g.codes);
    auto& prim = primitive({B, C, H, W}, {B, OC, OH, OW}, dt, g.step);
    auto y = at::empty({B, OC, OH, OW}, at::kFloat);
    dnnl::stream st(cpu_engine());
    // the codes (NCHW) and the output (NCHW) are reordered to and from the layouts the fast kernels use
    memory user_src(memory::desc({B, C, H, W}, dt, Tag::nchw), cpu_engine(), g.codes.data_ptr());
    memory user_dst(memory::desc({B, OC, OH, OW}, DT::f32, Tag::nchw), cpu_engine(), y.data_ptr());
    memory src = user_src, dst = user_dst;
    if (prim.src != user_src.get_desc()) {
      src = memory(prim.src, cpu_engine());
      dnnl::reorder(user_src, src).execute(st, user_src, src);
    }
    if (prim.dst != user_dst.get_desc()) dst = memory(prim.dst, cpu_engine());
    int32_t zp = g.zero_point;
    memory zpm({{1}, DT::s32, Tag::a}, cpu_engine(), &zp);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, *prim.weights}, {DNNL_ARG_DST, dst},
                                         {DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC, zpm}};
    if (prim.bias.defined()) args.emplace(DNNL_ARG_BIAS, memory({{OC}, DT::f32, Tag::a}, cpu_engine(), prim.bias.data_ptr()));
    prim.prim.execute(st, args);
    if (dst.get_desc() != user_dst.get_desc()) dnnl::reorder(dst, user_dst).execute(st, dst, user_dst);
    st.wait();
    return y;
  }

 private:
  struct Prim {
    dnnl::convolution_forward prim;
    memory::desc src, dst;
    const memory* weights = nullptr;
    at::Tensor bias;  // divided by the output scale (oneDNN adds the bias before scaling)
  };

  Prim& primitive(const memory::dims& in, const memory::dims& out, DT dt, float step) {
    std::lock_guard<std::mutex> lock(mu_);
    auto key = std::make_tuple(std::vector<int64_t>(in.begin(), in.end()), static_cast<int>(dt), step);
    auto it = prims_.find(key);
    if (it != prims_.end()) return it->second;
    const int64_t OC = codes_.size(0), ICg = codes_.size(1), KH = codes_.size(2), KW = codes_.size(3);
    memory::desc src(in, dt, Tag::any), dst(out, DT::f32, Tag::any);
    memory::dims wdims = groups_ > 1 ? memory::dims{groups_, OC / groups_, ICg, KH, KW} : memory::dims{OC, ICg, KH, KW};
    memory::desc wany(wdims, DT::s8, Tag::any), bias_md({OC}, DT::f32, Tag::a);
    dnnl::primitive_attr attr;
    std::vector<float> scales(w_scale_.size());
    for (size_t i = 0; i < scales.size(); ++i) scales[i] = step * w_scale_[i];
    attr.set_output_scales(scales.size() == 1 ? 0 : 2, scales);
    attr.set_zero_points(DNNL_ARG_SRC, 0, {DNNL_RUNTIME_S32_VAL});
    const memory::dims strides{strides_[0], strides_[1]}, dil{dil_[0] - 1, dil_[1] - 1}, pl{pads_[0], pads_[1]}, pr{pads_[2], pads_[3]};
    auto desc = bias_.defined()
                    ? dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, src, wany,
                                                      bias_md, dst, strides, dil, pl, pr)
                    : dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, src, wany,
                                                      dst, strides, dil, pl, pr);
    dnnl::convolution_forward::primitive_desc pd(desc, attr, cpu_engine());
    Prim p{dnnl::convolution_forward(pd), pd.src_desc(), pd.dst_desc(), nullptr, {}};
    // weights: user layout oihw / goihw -> the primitive's
    memory user(memory::desc(wdims, DT::s8, groups_ > 1 ? Tag::goihw : Tag::oihw), cpu_engine(), codes_.data_ptr());
    packed_.push_back(std::make_unique<memory>(pd.weights_desc(), cpu_engine()));
    dnnl::stream st(cpu_engine());
    dnnl::reorder(user, *packed_.back()).execute(st, user, *packed_.back());
    st.wait();
    p.weights = packed_.back().get();
    if (bias_.defined()) {
      auto sc = at::tensor(std::vector<double>(scales.begin(), scales.end()), at::kDouble).expand({OC});
      p.bias = (bias_.to(at::kDouble) / sc).to(at::kFloat).contiguous();
    }
    return prims_.emplace(key, std::move(p)).first->second;
  }

  at::Tensor codes_;
  std::vector<float> w_scale_;
  at::Tensor bias_;
  int64_t groups_ = 1;
  std::vector<int64_t> pads_, strides_, dil_;
  std::mutex mu_;
  std::map<std::tuple<std::vector<int64_t>, int, float>, Prim> prims_;
  std::vector<std::unique_ptr<memory>> packed_;
};

// A MatMul of two quantized activations, batched over the leading dims.
class NativeMatMul {
 public:
  // post_scale: a constant the output is multiplied by (a Mul after the GEMM, folded into its scale)
  NativeMatMul(const QuantPoint& a, const QuantPoint& b, float post_scale = 1.0f) : a_(a), b_(b), post_scale_(post_scale) {
    if (is_any_log_kind(a.spec.kind)) a_tables_ = log_tables(a);
  }

  // x0 may already be uint8 codes of a_ (a softmax that quantized its own output).
  at::Tensor run(const at::Tensor& x0, const at::Tensor& x1) {
    if (x0.dim() < 2 || x0.dim() > 4 || x1.dim() != x0.dim()) fail("int8 runtime: MatMul of ranks {} and {}", x0.dim(), x1.dim());
    for (int64_t d = 0; d + 2 < x0.dim(); ++d)
      if (x0.size(d) != x1.size(d)) fail("int8 runtime: MatMul with broadcast batch dims");
    const bool a_head = !per_tensor(a_), b_head = !per_tensor(b_);
    std::vector<IntGrid> ga;
    if (x0.scalar_type() == at::kByte)
      ga.push_back({x0, a_.params.scale.item<float>(), static_cast<int32_t>(a_.params.zero_point.item<float>())});
    else
      ga = input_grids(x0, a_, a_tables_ ? &*a_tables_ : nullptr);
    // A transposed right operand (kᵀ) is quantized in its untransposed layout, and oneDNN reads it with strides.
    const bool b_transposed = x1.stride(-2) == 1 && x1.stride(-1) != 1;
    IntGrid gb = uniform_grid(b_transposed ? x1.transpose(-2, -1) : x1, b_, /*as_signed=*/true);
    const auto b_strides = b_transposed ? gb.codes.transpose(-2, -1).strides().vec() : gb.codes.strides().vec();
    auto out_sizes = x0.sizes().vec();
    out_sizes.back() = x1.size(-1);
    auto y = at::empty(out_sizes, at::kFloat);
    dnnl::stream st(cpu_engine());
    const auto a_dims = x0.sizes().vec(), b_dims = x1.sizes().vec();
    for (size_t gi = 0; gi < ga.size(); ++gi) {
      const auto& g = ga[gi];
      // the scale is fixed per node and grid: baked into the primitive (a runtime scale makes oneDNN 2.6 leave
      // its AMX/VNNI brgemm kernels for a 3x slower GEMM; measured on the attention shapes)
      auto& prim = primitive(a_dims, b_dims, b_strides, code_type(g.codes), gi > 0, g.step * gb.step * post_scale_);
      memory src(prim.src, cpu_engine(), g.codes.data_ptr()), wei(prim.wei, cpu_engine(), gb.codes.data_ptr()),
          dst(prim.dst, cpu_engine(), y.data_ptr());
      int32_t zs = g.zero_point, zw = gb.zero_point;
      memory zsm({{1}, DT::s32, Tag::a}, cpu_engine(), &zs), zwm({{1}, DT::s32, Tag::a}, cpu_engine(), &zw);
      prim.prim.execute(st, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst},
                             {DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC, zsm}, {DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_WEIGHTS, zwm}});
    }
    st.wait();
    if (a_head) y.mul_(a_.params.scale);
    if (b_head) y.mul_(b_.params.scale);
    return y;
  }

 private:
  struct Prim {
    dnnl::matmul prim;
    memory::desc src, wei, dst;
  };
  Prim& primitive(const std::vector<int64_t>& a, const std::vector<int64_t>& b, const std::vector<int64_t>& b_strides, DT dt,
                  bool accumulate, float scale) {
    std::lock_guard<std::mutex> lock(mu_);
    auto key = std::make_tuple(a, b, b_strides, static_cast<int>(dt), accumulate, scale);
    auto it = prims_.find(key);
    if (it != prims_.end()) return it->second;
    auto c = a;
    c.back() = b.back();
    memory::desc src = plain_desc(a, dt), dst = plain_desc(c, DT::f32);
    memory::desc wei(memory::dims(b.begin(), b.end()), DT::s8, memory::dims(b_strides.begin(), b_strides.end()));
    dnnl::primitive_attr attr;
    attr.set_output_scales(0, {scale});
    attr.set_zero_points(DNNL_ARG_SRC, 0, {DNNL_RUNTIME_S32_VAL});
    attr.set_zero_points(DNNL_ARG_WEIGHTS, 0, {DNNL_RUNTIME_S32_VAL});
    if (accumulate) {
      dnnl::post_ops po;
      po.append_sum(1.0f);
      attr.set_post_ops(po);
    }
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, wei, dst), attr, cpu_engine());
    return prims_.emplace(key, Prim{dnnl::matmul(pd), src, wei, dst}).first->second;
  }

  const QuantPoint& a_;
  const QuantPoint& b_;
  std::optional<LogTables> a_tables_;  // a_'s, when it is a log kind
  float post_scale_ = 1.0f;
  std::mutex mu_;
  std::map<std::tuple<std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>, int, bool, float>, Prim> prims_;
};

}  // namespace

struct Int8Model::Impl {
  Graph owned;  // the model with the plan's reparameterisations applied (RepQ-ViT)
  const Graph& graph;
  const QuantPlan& plan;
  QuantizedModel sim;
  Executor exec;
  ExecHooks hooks;
  Int8Stats stats;
  std::vector<std::unique_ptr<NativeLinear>> linear;  // per node
  std::vector<std::unique_ptr<NativeMatMul>> matmul;
  std::vector<std::unique_ptr<NativeConv>> conv;
  std::vector<const QuantPoint*> input_point;          // per node: the slot-0 quantizer of a native node
  std::vector<std::optional<LogTables>> input_tables;  // per node: its log_tables, when that quantizer is a log kind
  std::vector<char> gelu_fused, gelu_done;              // Linear i applies the GELU of node i + 1, which then passes through
  std::vector<char> mul_done;                           // a Mul by a constant folded into the MatMul before it
  std::vector<const QuantPoint*> softmax_codes;         // a Softmax whose only reader quantizes it per tensor: emits codes

  Impl(const Graph& model, const QuantPlan& p) : owned(with_reparams(model, p)), graph(owned), plan(p), sim(owned, p), exec(owned) {
    const Graph& g = owned;
    linear.resize(g.nodes.size());
    matmul.resize(g.nodes.size());
    conv.resize(g.nodes.size());
    input_point.assign(g.nodes.size(), nullptr);
    input_tables.assign(g.nodes.size(), std::nullopt);
    for (size_t i = 0; i < g.nodes.size(); ++i) {
      const Node& n = g.nodes[i];
      if (n.op != OpKind::Linear && n.op != OpKind::Conv2d && !(n.op == OpKind::MatMul && is_quantizable(g, n))) continue;
      const QuantPoint* p0 = p.find(n.name, 0);
      const QuantPoint* p1 = p.find(n.name, 1);
      if (!p0 && !p1) continue;  // left in floating point by the plan
      std::string why;
      if (!p0) why = "its input is not quantized";
      else if (!p1) why = "its second input is not quantized";
      else if (n.op == OpKind::Linear || n.op == OpKind::Conv2d) why = setup_linear(i, *p0, *p1);
      else why = setup_matmul(i, *p0, *p1);
      if (!why.empty()) {
        stats.fallbacks.push_back(fmt::format("{}: {}", n.name, why));
        continue;
      }
      input_point[i] = p0;
      if (is_any_log_kind(p0->spec.kind)) input_tables[i] = log_tables(*p0);
      if (p0->spec.kind == QuantKind::TwinUniform) ++stats.twin_inputs;
      if (is_log_kind(p0->spec.kind)) ++stats.log2_inputs;
      if (p0->spec.kind == QuantKind::AdaLog) ++stats.adalog_inputs;
    }
    gelu_fused.assign(g.nodes.size(), 0);
    gelu_done.assign(g.nodes.size(), 0);
    auto readers = g.consumers();
    for (size_t i = 0; i + 1 < g.nodes.size(); ++i) {
      const Node& n = g.nodes[i];
      const Node& next = g.nodes[i + 1];
      if (!linear[i] || next.op != OpKind::Gelu || next.gets("approximate", "none") != "none") continue;
      const int out = n.outputs[0];
      if (next.inputs.size() != 1 || next.inputs[0] != out || readers[static_cast<size_t>(out)].size() != 1 || out == g.output) continue;
      if (p.find(next.name, 0)) continue;  // the GELU's input is quantized (fully quantized plans): keep it apart
      gelu_fused[i] = gelu_done[i + 1] = 1;
    }
    mul_done.assign(g.nodes.size(), 0);
    softmax_codes.assign(g.nodes.size(), nullptr);
    for (size_t i = 0; i + 1 < g.nodes.size(); ++i) {
      const Node& n = g.nodes[i];
      const Node& next = g.nodes[i + 1];
      const int out = n.outputs[0];
      const bool only_next = readers[static_cast<size_t>(out)].size() == 1 && readers[static_cast<size_t>(out)][0] == static_cast<int>(i + 1) &&
                             out != g.output;
      // MatMul -> Mul(scalar constant): the constant joins the GEMM's output scale
      if (matmul[i] && only_next && next.op == OpKind::Mul && next.inputs.size() == 2 && next.inputs[0] == out &&
          g.is_const(next.inputs[1]) && g.const_tensor(next.inputs[1]).numel() == 1 && !p.find(next.name, 0) && !p.find(next.name, 1)) {
        const float c = g.const_tensor(next.inputs[1]).to(at::kFloat).item<float>();
        matmul[i] = std::make_unique<NativeMatMul>(*p.find(n.name, 0), *p.find(n.name, 1), c);
        mul_done[i + 1] = 1;
      }
    }
    for (size_t i = 0; i < g.nodes.size(); ++i) {  // Softmax -> native MatMul slot 0, uniform per-tensor unsigned 8-bit codes
      const Node& n = g.nodes[i];
      if (n.op != OpKind::Softmax || (n.geti("axis", -1) != -1) || p.find(n.name, 0)) continue;
      const auto& rd = readers[static_cast<size_t>(n.outputs[0])];
      if (rd.size() != 1 || n.outputs[0] == g.output) continue;
      const Node& r = g.nodes[static_cast<size_t>(rd[0])];
      const QuantPoint* q = p.find(r.name, 0);
      if (!matmul[static_cast<size_t>(rd[0])] || r.inputs[0] != n.outputs[0] || !q || q->spec.kind != QuantKind::Uniform || !per_tensor(*q) ||
          q->spec.qmin() < 0 || q->spec.qmax() > 255)
        continue;
      bool int_op = false;
      for (const auto& io : p.int_ops) int_op |= io.node == n.name;
      if (!int_op) softmax_codes[i] = q;
    }
    const ExecHooks& sh = sim.hooks();
    hooks.transform_input = [this, &sh](const Node& n, size_t slot, const at::Tensor& t) -> at::Tensor {
      const size_t i = static_cast<size_t>(&n - graph.nodes.data());
      if (input_point[i] || gelu_done[i] || mul_done[i]) return t;  // native: quantized by the GEMM's own input step
      return sh.transform_input(n, slot, t);
    };
    hooks.replace = [this, &sh](const Node& n, const std::vector<at::Tensor>& args) -> std::vector<at::Tensor> {
      const size_t i = static_cast<size_t>(&n - graph.nodes.data());
      if (linear[i]) {
        const LogTables* t = input_tables[i] ? &*input_tables[i] : nullptr;
        return {linear[i]->run(args[0].to(at::kFloat), input_grids(args[0].to(at::kFloat), *input_point[i], t), gelu_fused[i] != 0)};
      }
      if (gelu_done[i] || mul_done[i]) return {args[0]};  // applied by the node before it
      if (softmax_codes[i]) {
        const QuantPoint& q = *softmax_codes[i];
        auto codes = softmax_lastdim_codes(args[0], q.params.scale.item<float>(), q.params.zero_point.item<float>(),
                                           static_cast<float>(q.spec.qmin()), static_cast<float>(q.spec.qmax()));
        if (codes.defined()) return {codes};
      }
      if (conv[i]) return {conv[i]->run(args[0].to(at::kFloat), uniform_grid(args[0].to(at::kFloat), *input_point[i]))};
      if (matmul[i])  // (a uint8 left operand: codes from a fused softmax)
        return {matmul[i]->run(args[0].scalar_type() == at::kByte ? args[0] : args[0].to(at::kFloat), args[1].to(at::kFloat))};
      return sh.replace(n, args);
    };
  }

  std::string setup_linear(size_t i, const QuantPoint& in, const QuantPoint& w) {
    const Node& n = graph.nodes[i];
    if (!w.weight) return "its weight is not a constant";
    const bool token = n.op == OpKind::Linear && is_per_token_input(in);
    if (auto why = token ? token_problem(in) : left_problem(in, false); !why.empty()) return why;
    if (w.spec.kind != QuantKind::Uniform) return "non-uniform weight quantizer";
    if (w.spec.granularity != Granularity::PerTensor && !(w.spec.granularity == Granularity::PerChannel && w.spec.axis == 0))
      return fmt::format("per-{} weight quantizer", granularity_name(w.spec.granularity));
    const auto& weight = plan_weight(plan, n.name, graph.const_tensor(n.inputs[1]));
    const bool is_conv = n.op == OpKind::Conv2d;
    if (is_conv && (in.spec.kind != QuantKind::Uniform || !per_tensor(in))) return "non-uniform or per-axis input of a convolution";
    if (weight.dim() != (is_conv ? 4 : 2)) return fmt::format("weight of rank {}", weight.dim());
    auto codes = w.codes.defined() ? w.codes : quantize_codes(weight.to(at::kFloat), w.spec, w.params);
    if (!w.spec.symmetric) {
      // asymmetric weights: the GEMM reads q − zp[n] (the dequantized weight is s_w[n]·(q − zp[n]) either way),
      // which fits int8 up to 7 bits (checked below)
      std::vector<int64_t> zshape(static_cast<size_t>(codes.dim()), 1);
      zshape[0] = w.params.zero_point.numel() == 1 ? 1 : codes.size(0);
      const auto zp = w.params.zero_point.to(at::kFloat).reshape(zshape);
      if (!at::equal(zp, at::round(zp))) return "weight zero point off the integer grid";
      codes = codes.to(at::kFloat) - zp;
    }
    if (codes.min().item<double>() < -128 || codes.max().item<double>() > 127) return "weight codes outside int8";
    auto sc = w.params.scale.to(at::kFloat).reshape({-1}).contiguous();
    std::vector<float> scales(sc.data_ptr<float>(), sc.data_ptr<float>() + sc.numel());
    at::Tensor bias;
    if (auto it = plan.bias.find(n.name); it != plan.bias.end()) bias = it->second;
    else if (n.inputs.size() > 2 && n.inputs[2] >= 0) bias = graph.const_tensor(n.inputs[2]);
    if (bias.defined()) bias = bias.to(at::kFloat).contiguous();
    if (is_conv) {
      conv[i] = std::make_unique<NativeConv>(n, codes, std::move(scales), bias);
      ++stats.native_conv;
      return "";
    }
    linear[i] = std::make_unique<NativeLinear>(codes, std::move(scales), bias);
    ++stats.native_linear;
    stats.token_inputs += token;
    return "";
  }

  std::string setup_matmul(size_t i, const QuantPoint& a, const QuantPoint& b) {
    if (auto why = left_problem(a, true); !why.empty()) return why;
    if (log_shift(a.spec, a.params) != 0) return "shifted adalog left operand";  // (δ·Σ_k b would be a per-column term)
    if (auto why = right_problem(b); !why.empty()) return why;
    matmul[i] = std::make_unique<NativeMatMul>(a, b);
    ++stats.native_matmul;
    return "";
  }
};

Int8Model::Int8Model(const Graph& graph, const QuantPlan& plan) : impl_(std::make_unique<Impl>(graph, plan)) {}
Int8Model::~Int8Model() = default;
const Int8Stats& Int8Model::stats() const { return impl_->stats; }

at::Tensor Int8Model::run(const at::Tensor& input) const { return run(input, nullptr); }

at::Tensor Int8Model::run(const at::Tensor& input, const std::function<void(const Node&)>& after_node) const {
  at::InferenceMode guard;
  ExecHooks hooks = impl_->hooks;
  if (after_node) hooks.on_output = [&](const Node& n, const std::vector<at::Tensor>&) { after_node(n); };
  try {
    return impl_->exec.run(input.to(at::kCPU, at::kFloat), &hooks);
  } catch (const dnnl::error& e) {
    fail("int8 runtime: oneDNN: {}", first_line(e.what()));
  }
}
#else

bool int8_runtime_available() { return false; }
struct Int8Model::Impl {
  Int8Stats stats;
};
Int8Model::Int8Model(const Graph&, const QuantPlan&) { fail("this vitq was built without oneDNN (libdnnl-dev): no int8 runtime"); }
Int8Model::~Int8Model() = default;
const Int8Stats& Int8Model::stats() const { return impl_->stats; }
at::Tensor Int8Model::run(const at::Tensor&) const { fail("this vitq was built without oneDNN: no int8 runtime"); }
at::Tensor Int8Model::run(const at::Tensor&, const std::function<void(const Node&)>&) const {
  fail("this vitq was built without oneDNN: no int8 runtime");
}

#endif

}  // namespace vitq
