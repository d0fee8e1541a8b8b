#include "vitq/eval/model_stats.h"

#include <ATen/ATen.h>

#include "vitq/graph/executor.h"

namespace vitq {

ModelStats model_stats(const Graph& g) {
  ModelStats s;
  s.parameters = g.num_parameters();
  for (const auto& n : g.nodes) ++s.op_counts[op_name(n.op)];
  Executor exec(g);
  at::InferenceMode guard;
  ExecHooks hooks;
  std::vector<at::Tensor> first_inputs(g.nodes.size());
  hooks.transform_input = [&](const Node& n, size_t slot, const at::Tensor& t) {
    if (slot == 0) first_inputs[static_cast<size_t>(&n - g.nodes.data())] = t;
    return t;
  };
  hooks.on_output = [&](const Node& n, const std::vector<at::Tensor>& outs) {
    if (!is_quantizable(g, n)) return;
    const auto& x = first_inputs[static_cast<size_t>(&n - g.nodes.data())];
    LayerStats l{n.name, op_name(n.op), roles_to_string(n.roles), {}, 0};
    if (n.op == OpKind::Linear || n.op == OpKind::Conv2d) {
      const auto& w = g.const_tensor(n.inputs[1]);
      l.weight_shape.assign(w.sizes().begin(), w.sizes().end());
      l.macs = outs[0].numel() * (w.numel() / w.size(0));
    } else {
      l.macs = outs[0].numel() * x.size(-1);
    }
    s.macs += l.macs;
    s.quantizable.push_back(std::move(l));
  };
  const auto& p = g.meta.preprocess;
  exec.run(at::zeros({1, 3, p.input_height, p.input_width}), &hooks);
  return s;
}

}  // namespace vitq
