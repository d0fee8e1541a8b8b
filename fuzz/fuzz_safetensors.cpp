// libFuzzer target: the safetensors reader (src/vitq/models/safetensors.h). The input is a whole .safetensors
// file; every tensor it declares is read.
#include "fuzz_util.h"
#include "vitq/models/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = vitq::fuzz::write_scratch("model.safetensors", data, size);
  return vitq::fuzz::guarded([&] {
    vitq::SafeTensorsFile file(path);
    for (const auto& name : file.names())
      vitq::fuzz::guarded([&] {  // one bad tensor: go on with the others
        at::Tensor t = file.get(name);
        if (t.numel() > 0) (void)t.sum().item<double>();
      });
  });
}
