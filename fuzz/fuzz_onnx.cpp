// libFuzzer target: the ONNX importer (onnx_import.h): protobuf parse, graph construction, shape folding (which
// runs the graph) and the fusions. The input is a whole .onnx file.
#include "fuzz_util.h"
#include "vitq/models/onnx_import.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = vitq::fuzz::write_scratch("model.onnx", data, size);
  return vitq::fuzz::guarded([&] { vitq::import_onnx(path, 32, 32).validate(); });
}
