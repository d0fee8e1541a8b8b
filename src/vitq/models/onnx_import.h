// ONNX front end: ModelProto -> Graph, then the shared normalisation (shape folding, Linear/GELU/LayerNorm
// fusion, roles). Supports the op set torch.onnx exports for ViTs at opsets 13–17.
#pragma once
#include <string>

#include "vitq/graph/graph.h"

namespace vitq {

// height, width: the image size used to fold shape subgraphs when the ONNX input has a symbolic spatial size.
Graph import_onnx(const std::string& path, int64_t height = 224, int64_t width = 224);

}  // namespace vitq
