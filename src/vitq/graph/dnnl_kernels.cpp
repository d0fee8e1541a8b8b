#include "vitq/graph/dnnl_kernels.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <map>
#include <mutex>
#include <unordered_map>

#include "vitq/util/error.h"

#if VITQ_WITH_DNNL
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace vitq {

#if VITQ_WITH_DNNL

namespace {
dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}
using dnnl::memory;
using DT = memory::data_type;
using Tag = memory::format_tag;
}  // namespace

struct DnnlLinear::Impl {
  std::mutex mu;
  at::Tensor weight;  // the weight the packing was made from (kept alive: its identity is the cache key)
  struct Prim {
    dnnl::matmul prim;
    memory::desc src, dst, wei;
  };
  std::map<std::pair<int64_t, bool>, Prim> prims;  // (rows, gelu)
  std::vector<std::pair<memory::desc, std::unique_ptr<memory>>> packed;
  bool with_bias = false;
};

DnnlLinear::DnnlLinear() : impl_(std::make_unique<Impl>()) {}
DnnlLinear::~DnnlLinear() = default;

bool DnnlLinear::usable(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b) {
  if (!x.device().is_cpu() || x.scalar_type() != at::kFloat || w.scalar_type() != at::kFloat || !w.device().is_cpu()) return false;
  if (w.dim() != 2 || x.dim() < 2 || x.size(-1) != w.size(1)) return false;
  if (b && (b->scalar_type() != at::kFloat || b->dim() != 1 || b->size(0) != w.size(0))) return false;
  if (at::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad() || (b && b->requires_grad()))) return false;
  return true;
}

at::Tensor DnnlLinear::run(const at::Tensor& x_in, const at::Tensor& w, const c10::optional<at::Tensor>& b, bool gelu) {
  auto& m = *impl_;
  const int64_t K = w.size(1), N = w.size(0);
  auto x = x_in.contiguous();
  const int64_t M = x.numel() / K;
  auto sizes = x.sizes().vec();
  sizes.back() = N;
  std::lock_guard<std::mutex> lock(m.mu);
  // Primitives depend on shapes only and are kept; the packed weight is redone when the weight tensor changes
  // (searches and fake-quant runs pass a different tensor each time).
  if (m.with_bias != b.has_value() || (m.weight.defined() && (m.weight.size(0) != N || m.weight.size(1) != K))) m.prims.clear();
  if (!m.weight.defined() || !m.weight.is_same(w)) m.packed.clear();
  m.weight = w;
  m.with_bias = b.has_value();
  auto key = std::make_pair(M, gelu);
  auto it = m.prims.find(key);
  if (it == m.prims.end()) {
    memory::desc src({M, K}, DT::f32, Tag::ab), dst({M, N}, DT::f32, Tag::ab), wany({K, N}, DT::f32, Tag::any);
    dnnl::primitive_attr attr;
    if (gelu) {
      dnnl::post_ops po;
      po.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_erf, 0.0f, 0.0f);
      attr.set_post_ops(po);
    }
    auto desc = b ? dnnl::matmul::desc(src, wany, memory::desc({1, N}, DT::f32, Tag::ab), dst) : dnnl::matmul::desc(src, wany, dst);
    dnnl::matmul::primitive_desc pd(desc, attr, engine());
    it = m.prims.emplace(key, Impl::Prim{dnnl::matmul(pd), src, dst, pd.weights_desc()}).first;
  }
  const auto& p = it->second;
  const memory* packed = nullptr;
  for (auto& [d, mem] : m.packed)
    if (d == p.wei) packed = mem.get();
  dnnl::stream st(engine());
  if (!packed) {
    auto wc = w.contiguous();  // [N, K] row-major = K x N with strides (1, K)
    memory user(memory::desc({K, N}, DT::f32, memory::dims{1, K}), engine(), wc.data_ptr());
    auto mem = std::make_unique<memory>(p.wei, engine());
    dnnl::reorder(user, *mem).execute(st, user, *mem);
    st.wait();
    m.packed.emplace_back(p.wei, std::move(mem));
    packed = m.packed.back().second.get();
  }
  auto y = at::empty({M, N}, x.options());
  at::Tensor bias = b ? b->contiguous() : at::Tensor();
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, memory(p.src, engine(), x.data_ptr())},
                                       {DNNL_ARG_WEIGHTS, *packed},
                                       {DNNL_ARG_DST, memory(p.dst, engine(), y.data_ptr())}};
  if (b) args.emplace(DNNL_ARG_BIAS, memory({{1, N}, DT::f32, Tag::ab}, engine(), bias.data_ptr()));
  try {
    p.prim.execute(st, args);
    st.wait();
  } catch (const dnnl::error& e) {
    fail("oneDNN Linear: {}", first_line(e.what()));
  }
  return y.view(sizes);
}

struct DnnlMatMul::Impl {
  std::mutex mu;
  std::map<std::vector<int64_t>, dnnl::matmul> prims;  // key: sizes and strides of both operands
};
DnnlMatMul::DnnlMatMul() : impl_(std::make_unique<Impl>()) {}
DnnlMatMul::~DnnlMatMul() = default;

bool DnnlMatMul::usable(const at::Tensor& a, const at::Tensor& b) {
  if (!a.device().is_cpu() || !b.device().is_cpu() || a.scalar_type() != at::kFloat || b.scalar_type() != at::kFloat) return false;
  if (a.dim() < 2 || a.dim() > 4 || b.dim() != a.dim() || a.size(-1) != b.size(-2)) return false;
  for (int64_t d = 0; d + 2 < a.dim(); ++d)
    if (a.size(d) != b.size(d)) return false;
  for (const auto* t : {&a, &b})
    for (int64_t d = 0; d < t->dim(); ++d)
      if (t->stride(d) < 0 || (t->size(d) > 1 && t->stride(d) == 0)) return false;  // no broadcast (stride 0) views
  if (at::GradMode::is_enabled() && (a.requires_grad() || b.requires_grad())) return false;
  return true;
}

at::Tensor DnnlMatMul::run(const at::Tensor& a, const at::Tensor& b) {
  auto out_sizes = a.sizes().vec();
  out_sizes.back() = b.size(-1);
  auto y = at::empty(out_sizes, a.options());
  std::vector<int64_t> key;
  for (const auto* t : {&a, &b}) {
    key.insert(key.end(), t->sizes().begin(), t->sizes().end());
    key.insert(key.end(), t->strides().begin(), t->strides().end());
  }
  auto desc = [](const at::Tensor& t) {
    return memory::desc(memory::dims(t.sizes().begin(), t.sizes().end()), DT::f32, memory::dims(t.strides().begin(), t.strides().end()));
  };
  auto& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  auto it = m.prims.find(key);
  if (it == m.prims.end()) {
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(desc(a), desc(b), desc(y)), engine());
    it = m.prims.emplace(key, dnnl::matmul(pd)).first;
  }
  dnnl::stream st(engine());
  try {
    it->second.execute(st, {{DNNL_ARG_SRC, memory(desc(a), engine(), a.data_ptr())},
                            {DNNL_ARG_WEIGHTS, memory(desc(b), engine(), b.data_ptr())},
                            {DNNL_ARG_DST, memory(desc(y), engine(), y.data_ptr())}});
    st.wait();
  } catch (const dnnl::error& e) {
    fail("oneDNN MatMul: {}", first_line(e.what()));
  }
  return y;
}

#else

struct DnnlMatMul::Impl {};
DnnlMatMul::DnnlMatMul() = default;
DnnlMatMul::~DnnlMatMul() = default;
bool DnnlMatMul::usable(const at::Tensor&, const at::Tensor&) { return false; }
at::Tensor DnnlMatMul::run(const at::Tensor&, const at::Tensor&) { fail("built without oneDNN"); }

struct DnnlLinear::Impl {};
DnnlLinear::DnnlLinear() = default;
DnnlLinear::~DnnlLinear() = default;
bool DnnlLinear::usable(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&) { return false; }
at::Tensor DnnlLinear::run(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&, bool) {
  fail("built without oneDNN");
}

#endif

}  // namespace vitq
