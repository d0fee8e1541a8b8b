// Helpers shared by the architecture tests: golden tensors of the shared reference models, and builds of a
// config.json written to a temporary folder (alone, or beside a shared model's weights, linked not copied).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "test_util.h"
#include "vitq/graph/executor.h"
#include "vitq/models/model_loader.h"
#include "vitq/util/error.h"
#include "vitq/util/npy.h"

namespace vitq::test {

inline fs::path shared_model(const std::string& name) { return shared_dir() / "models" / name; }

inline at::Tensor npy_tensor(const fs::path& p) {
  auto a = load_npy(p.string());
  return at::from_blob(a.data.data(), a.shape, at::kFloat).clone();
}

// Logits of `g` on the golden input of shared model `dir` equal timm's golden logits (max abs <= 5e-4, same
// top-1); prints the difference.
inline void expect_golden_logits(const Graph& g, const fs::path& dir, const std::string& label) {
  at::set_num_threads(2);
  at::InferenceMode guard;
  auto got = Executor(g).run(npy_tensor(dir / "golden" / "val1000_first4_input.npy"));
  auto want = npy_tensor(dir / "golden" / "val1000_first4_logits.npy");
  ASSERT_EQ(got.sizes(), want.sizes()) << label;
  float diff = (got - want).abs().max().item<float>();
  std::printf("%s: logits from golden input, max abs diff %.3g\n", label.c_str(), diff);
  EXPECT_LE(diff, 5e-4f) << label;
  EXPECT_TRUE(at::equal(got.argmax(1), want.argmax(1))) << label;
}

// load_model of `json` written as config.json, alone (config only) or beside `weights` (a safetensors file).
inline Graph load_config_json(const std::string& json, const fs::path& weights = {}) {
  TempDir dir;
  write_file(dir / "config.json", json);
  if (weights.empty()) return load_model((dir / "config.json").string(), /*allow_config_only=*/true);
  fs::create_symlink(weights, dir / "model.safetensors");
  return load_model(dir.path().string());
}

// The one-line Error message of load_config_json, "" when it succeeds.
inline std::string build_error(const std::string& json, const fs::path& weights = {}) {
  try {
    load_config_json(json, weights);
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "error must be one line: " << msg;
    return msg;
  }
  return "";
}

}  // namespace vitq::test
