// libFuzzer target: the quantization-plan loader (plan.h load_plan) against DeiT-Tiny's graph, built once from
// ../shared/models/deit_tiny_patch16_224/config.json (placeholder weights). A plan that loads is also written back
// to JSON and read again, and its weight quantizers are applied to their weights.
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "fuzz_util.h"
#include "vitq/models/model_loader.h"
#include "vitq/quant/plan.h"

namespace {
std::unique_ptr<vitq::Graph> g_graph;
}

extern "C" void vitq_fuzz_setup() {
  const char* shared = std::getenv("VITQ_SHARED_DIR");
  const std::string dir = std::string(shared ? shared : VITQ_SHARED_DIR) + "/models/deit_tiny_patch16_224";
  try {
    g_graph = std::make_unique<vitq::Graph>(vitq::load_model(dir + "/config.json", /*allow_config_only=*/true));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_plan: cannot build the DeiT-Tiny graph from %s: %s\n", dir.c_str(), e.what());
    std::exit(1);
  }
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = vitq::fuzz::write_scratch("plan.json", data, size);
  const vitq::Graph& g = *g_graph;
  return vitq::fuzz::guarded([&] {
    vitq::QuantPlan plan = vitq::load_plan(path, g);
    (void)vitq::plan_from_json(vitq::plan_to_json(plan), "round trip");
    for (const auto& p : plan.points) {
      const vitq::Node* n = g.find_node(p.node);
      if (!p.weight || !n || p.slot < 0 || static_cast<size_t>(p.slot) >= n->inputs.size()) continue;
      const int w = n->inputs[static_cast<size_t>(p.slot)];
      if (g.is_const(w)) (void)vitq::quantize_point(p, g.const_tensor(w));
    }
  });
}
