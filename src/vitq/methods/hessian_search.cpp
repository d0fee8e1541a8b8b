#include "vitq/methods/hessian_search.h"

#include <ATen/ATen.h>

#include <functional>

#include "vitq/graph/executor.h"
#include "vitq/methods/search.h"
#include "vitq/recon/recon.h"
#include "vitq/util/error.h"

namespace vitq::hessian {

bool post_gelu(const Graph& g, const Node& n) {
  return n.op == OpKind::Linear && (g.values[static_cast<size_t>(n.inputs[0])].roles & kPostGelu);
}
// attn·v's first input when it is the softmax output itself (in [0, 1]; EfficientFormerV2 mixes heads in between)
bool post_softmax(const Graph& g, const Node& n, int slot) {
  return n.op == OpKind::MatMul && (n.roles & kAttnV) && slot == 0 &&
         (g.values[static_cast<size_t>(n.inputs[0])].roles & kPostSoftmax);
}
// A Linear whose output is split into q, k and v: weight [3C, C], and its output reaches a Split (or a node
// with three readers, as ONNX's Gathers) through reshapes / transposes.
bool is_qkv(const Graph& g, const std::vector<std::vector<int>>& readers, const Node& n) {
  if (n.op != OpKind::Linear) return false;
  const auto& w = g.const_tensor(n.inputs[1]);
  if (w.dim() != 2 || w.size(0) != 3 * w.size(1)) return false;
  int v = n.outputs[0];
  for (int hop = 0; hop < 4; ++hop) {
    const auto& rs = readers[static_cast<size_t>(v)];
    if (rs.size() >= 3) return true;
    if (rs.size() != 1) return false;
    const Node& r = g.nodes[static_cast<size_t>(rs[0])];
    if (r.op == OpKind::Split) return true;
    if ((r.op != OpKind::Reshape && r.op != OpKind::Transpose) || r.outputs.size() != 1) return false;
    v = r.outputs[0];
  }
  return false;
}

void set_twin_kinds(const Graph& g, std::vector<QuantPoint>& points) {
  for (auto& p : points) {
    const Node& n = *g.find_node(p.node);
    if (post_softmax(g, n, p.slot) || (p.slot == 0 && post_gelu(g, n))) {
      p.spec.kind = QuantKind::TwinUniform;
      p.spec.symmetric = true;
      p.spec.is_signed = !post_softmax(g, n, p.slot);
      p.spec.granularity = Granularity::PerTensor;
    }
  }
}

void paper_placement(const Graph& g, const std::vector<std::vector<int>>& readers, std::vector<QuantPoint>& points) {
  for (auto& p : points) {
    const Node& n = *g.find_node(p.node);
    p.spec.symmetric = true;
    if (p.weight) {
      p.spec.is_signed = true;
      p.spec.granularity = (n.op == OpKind::Conv2d || is_qkv(g, readers, n)) ? Granularity::PerChannel : Granularity::PerTensor;
      p.spec.axis = 0;
    } else {
      p.spec.is_signed = true;
      if (n.op == OpKind::MatMul) {
        p.spec.granularity = Granularity::PerHead;
        p.spec.axis = 1;
      }
    }
  }
}

std::map<std::string, at::Tensor> layer_gradients(const Graph& g, const at::Tensor& images, uint64_t seed) {
  std::vector<int> values;
  std::vector<std::string> names;
  for (const auto& n : g.nodes)
    if (is_quantizable(g, n)) {
      values.push_back(n.outputs[0]);
      names.push_back(n.name);
    }
  auto by_value = recon::fisher_gradients(g, images, seed, values);
  std::map<std::string, at::Tensor> out;
  for (size_t k = 0; k < values.size(); ++k) out[names[k]] = by_value.at(values[k]);
  return out;
}

double search_layer(const Graph& g, const std::vector<std::vector<int>>& readers, const Node& n, QuantPoint* pts[2],
                    const std::vector<at::Tensor>& all, const std::vector<at::Tensor>& args, const at::Tensor& out,
                    const at::Tensor& grad, int64_t sub, const SearchConfig& cfg) {
  const auto& alphas = cfg.alphas;
  const int64_t candidates = static_cast<int64_t>(alphas.size());
  const auto alpha_t = at::tensor(alphas, at::kDouble);
  const int rounds = cfg.rounds;
  // Start: max |x| (symmetric) per scale group over the whole calibration batch. make[s](k): the parameters
  // of candidate k for slot s; current[s]: the parameters chosen so far.
  search::Range ranges[2];
  QuantParams current[2];
  std::function<QuantParams(int64_t)> make[2];
  for (int s = 0; s < 2; ++s) {
    QuantPoint& p = *pts[s];
    const at::Tensor& x = all[static_cast<size_t>(s)];
    if (p.spec.kind == QuantKind::TwinUniform && !p.spec.is_signed) {
      make[s] = [&p](int64_t k) { return twin_softmax_params(p.spec.bits, static_cast<int>(k)); };
    } else if (p.spec.kind == QuantKind::TwinUniform) {
      const double top = x.max().item<double>() / static_cast<double>((1 << (p.spec.bits - 1)) - 1);
      make[s] = [&p, top, &alphas](int64_t k) { return twin_gelu_params(p.spec.bits, std::max(top, 1e-8) * alphas[static_cast<size_t>(k)]); };
    } else {
      QuantSpec range_spec = p.spec;
      if (p.spec.granularity == Granularity::PerChannel && cfg.qkv_thirds && p.weight && is_qkv(g, readers, n)) {
        // q, k, v: one range per third of the rows
        auto amax = x.abs().reshape({3, -1}).amax(1);
        ranges[s] = {-amax.repeat_interleave(x.size(0) / 3).reshape({-1, 1}), amax.repeat_interleave(x.size(0) / 3).reshape({-1, 1})};
      } else {
        ranges[s] = search::range_of(x, range_spec);
      }
      make[s] = [&p, &ranges, s, &alphas](int64_t k) { return search::scaled(ranges[s], p.spec, alphas[static_cast<size_t>(k)]); };
    }
    if (p.spec.kind != QuantKind::TwinUniform) current[s] = search::scaled(ranges[s], p.spec, 1.0);
    else current[s] = p.spec.is_signed ? make[s](candidates * 5 / 6) : make[s](0);  // α ≈ 1 / one range
  }
  auto hessian_score = [&](const search::Groups& gr) {
    return [&, gr](const at::Tensor& q) { return -search::reduce_to_groups(((out - q) * grad).to(at::kDouble).pow(2), gr); };
  };
  for (int r = 0; r < rounds; ++r) {
    for (int slot : {1, 0}) {
      const int other = 1 - slot;
      QuantPoint& p = *pts[slot];
      std::vector<at::Tensor> qargs = args;
      qargs[static_cast<size_t>(other)] = fake_quant(args[static_cast<size_t>(other)], pts[other]->spec, current[other]);
      const bool twin = p.spec.kind == QuantKind::TwinUniform;
      search::Groups gr;
      if (!twin && p.spec.granularity != Granularity::PerTensor)
        gr = search::output_groups(n, p, cfg.qkv_thirds && p.weight && is_qkv(g, readers, n) ? 3 : ranges[slot].lo.numel());
      const int64_t count = twin && !p.spec.is_signed ? 20 : candidates;
      auto best = search::grid_search(n, qargs, slot, p.spec, count, make[slot], hessian_score(gr), sub);
      if (twin || gr.count == 1) {
        current[slot] = make[slot](best.item<int64_t>());
      } else {
        auto a = search::expand_groups(alpha_t.index_select(0, best), ranges[slot].lo);
        current[slot] = search::scaled(ranges[slot], p.spec, a);
      }
    }
  }
  for (int s = 0; s < 2; ++s) pts[s]->params = current[s];
  std::vector<at::Tensor> qargs = args;
  for (int s = 0; s < 2; ++s) qargs[static_cast<size_t>(s)] = fake_quant(args[static_cast<size_t>(s)], pts[s]->spec, current[s]);
  auto q = run_node(n, qargs, sub)[0];
  return ((out - q) * grad).to(at::kDouble).pow(2).sum().item<double>();
}

}  // namespace vitq::hessian
