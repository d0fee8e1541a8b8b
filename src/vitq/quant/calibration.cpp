#include "vitq/quant/calibration.h"

#include <ATen/ATen.h>

#include <memory>

#include "vitq/data/loader.h"
#include "vitq/graph/executor.h"
#include "vitq/util/error.h"
#include "vitq/util/progress.h"

namespace vitq {

at::Tensor load_calibration(const Graph& g, const Dataset& data, size_t n, uint64_t seed, bool progress) {
  if (n == 0) fail("--calib-size must be at least 1");
  if (data.samples.empty()) fail("calibration set {} is empty", data.root);
  Dataset subset = sample_subset(data, std::min(n, data.samples.size()), seed);
  if (subset.samples.size() < n) fail("calibration set {} has {} images, {} asked", data.root, data.samples.size(), n);
  const auto& p = g.meta.preprocess;
  BatchLoader loader(subset, p, 16, 1);
  std::vector<at::Tensor> parts;
  Progress bar("calibration images", subset.samples.size(), progress);
  size_t done = 0;
  while (auto b = loader.next()) {
    for (const auto& e : b->errors) fmt::print(stderr, "vitq: warning: skipped unreadable calibration image {}\n", e);
    done += b->size() + b->errors.size();
    bar.update(done);
    if (b->size() == 0) continue;
    parts.push_back(at::from_blob(b->pixels.data(), {static_cast<int64_t>(b->size()), 3, p.input_height, p.input_width},
                                  at::kFloat).clone());
  }
  bar.finish();
  if (parts.empty()) fail("no calibration image of {} could be read", data.root);
  auto images = at::cat(parts, 0);
  if (static_cast<size_t>(images.size(0)) < n)
    fmt::print(stderr, "vitq: warning: calibrating on {} readable images instead of {}\n", images.size(0), n);
  // Degenerate data: every channel of every image (nearly) one value, e.g. all black.
  auto spread = (images.amax({2, 3}) - images.amin({2, 3})).max().item<float>();
  if (spread < 1e-3f)
    fmt::print(stderr, "vitq: warning: the calibration images are constant (all black?); scales will be finite but "
                       "not representative\n");
  return images;
}

LayerTensors capture_layers(const Graph& g, const at::Tensor& images) {
  return capture_layers(g, images, [&](const Node& n) { return is_quantizable(g, n); }, images.size(0));
}

LayerTensors capture_layers(const Graph& g, const at::Tensor& images, const std::function<bool(const Node&)>& which,
                            int64_t chunk) {
  at::InferenceMode guard;
  Executor ex(g);
  std::map<std::string, std::vector<std::vector<at::Tensor>>> ins;
  std::map<std::string, std::vector<at::Tensor>> outs;
  ExecHooks hooks;
  hooks.transform_input = [&](const Node& n, size_t slot, const at::Tensor& x) {
    if (which(n) && !g.is_const(n.inputs[slot])) {
      auto& v = ins[n.name];
      v.resize(n.inputs.size());
      v[slot].push_back(x);
    }
    return x;
  };
  hooks.on_output = [&](const Node& n, const std::vector<at::Tensor>& o) {
    if (which(n)) outs[n.name].push_back(o[0]);
  };
  chunk = std::max<int64_t>(chunk, 1);
  for (int64_t b = 0; b < images.size(0); b += chunk) ex.run(images.narrow(0, b, std::min(chunk, images.size(0) - b)), &hooks);
  LayerTensors t;
  for (const auto& [name, o] : outs) t.outputs[name] = o.size() == 1 ? o[0] : at::cat(o);
  for (const auto& [name, slots] : ins) {
    const Node* n = g.find_node(name);
    auto& v = t.inputs[name];
    v.resize(n->inputs.size());
    for (size_t s = 0; s < n->inputs.size(); ++s) {
      if (!slots[s].empty()) v[s] = slots[s].size() == 1 ? slots[s][0] : at::cat(slots[s]);
      else if (n->inputs[s] >= 0 && g.is_const(n->inputs[s])) v[s] = g.const_tensor(n->inputs[s]);
    }
  }
  return t;
}

void calibrate_with_observers(const Graph& g, const at::Tensor& images, std::vector<QuantPoint>& points,
                              const std::string& act_kind, const std::string& weight_kind, const ObserverOptions& opt,
                              int64_t chunk) {
  at::InferenceMode guard;
  std::map<std::pair<std::string, int>, std::unique_ptr<Observer>> observers;
  for (auto& p : points) {
    if (p.weight) {
      const Node* n = g.find_node(p.node);
      const auto& w = g.const_tensor(n->inputs[static_cast<size_t>(p.slot)]);
      ObserverOptions wopt = opt;
      wopt.max_samples = std::max<int64_t>(opt.max_samples, w.numel());  // a weight is seen whole
      auto obs = make_observer(weight_kind, p.spec, wopt);
      obs->collect(w);
      p.params = obs->compute();
    } else {
      observers[{p.node, p.slot}] = make_observer(act_kind, p.spec, opt);
    }
  }
  Executor ex(g);
  ExecHooks hooks;
  hooks.transform_input = [&](const Node& n, size_t slot, const at::Tensor& x) {
    auto it = observers.find({n.name, static_cast<int>(slot)});
    if (it != observers.end()) it->second->collect(x);
    return x;
  };
  for (int64_t b = 0; b < images.size(0); b += chunk) ex.run(images.narrow(0, b, std::min(chunk, images.size(0) - b)), &hooks);
  for (auto& p : points)
    if (!p.weight) p.params = observers.at({p.node, p.slot})->compute();
}

}  // namespace vitq
