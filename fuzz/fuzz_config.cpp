// libFuzzer target: the model config parser. The input is a config.json, loaded as `vitq info` does
// (load_model(folder, allow_config_only=true): the architecture's graph with placeholder weights).
#include "fuzz_util.h"
#include "vitq/models/model_loader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vitq::fuzz::write_scratch("config.json", data, size);
  return vitq::fuzz::guarded([&] {
    vitq::Graph g = vitq::load_model(vitq::fuzz::scratch_dir(), /*allow_config_only=*/true);
    g.validate();
    (void)g.num_parameters();
  });
}
