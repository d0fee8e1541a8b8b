// What `vitq info` prints: parameters, multiply-accumulates per image, and the layers a quantizer touches.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "vitq/graph/graph.h"

namespace vitq {

struct LayerStats {
  std::string name, op, roles;
  std::vector<int64_t> weight_shape;  // empty for activation x activation matmuls
  int64_t macs = 0;                   // per image
};

struct ModelStats {
  int64_t parameters = 0;
  int64_t macs = 0;  // per image; papers report this as "FLOPs"
  std::map<std::string, int> op_counts;
  std::vector<LayerStats> quantizable;
};

// Runs the graph once on a zero image (batch 1) to measure shapes.
ModelStats model_stats(const Graph& graph);

}  // namespace vitq
