// ONNX Runtime, loaded at run time (dlopen) through its C API: the independent check of exported models and the
// baseline of `vitq bench`. vitq builds and runs without it; `available()` says whether it can be used.
//
// The library is looked for in $VITQ_ORT_LIB, then where scripts/setup.sh installs it (npm package
// onnxruntime-node 1.30.0 under .deps/ort of the source tree), then the system's search path.
#pragma once
#include <ATen/core/Tensor.h>

#include <memory>
#include <string>

namespace vitq {

struct OrtAvailability {
  bool ok = false;
  std::string library;  // the library loaded (when ok)
  std::string version;  // its version string, e.g. "1.30.0"
  std::string why;      // why not (when !ok)
};
// Loads the library once; later calls return the same answer.
const OrtAvailability& ort_available();

class OrtModel {
 public:
  // From a file or from the serialized model in memory. threads: intra-op threads (0 = ONNX Runtime's default).
  // Error (one line) when ONNX Runtime is missing or rejects the model.
  static OrtModel from_file(const std::string& path, int threads);
  static OrtModel from_bytes(const std::string& bytes, int threads, const std::string& label);
  OrtModel(OrtModel&&) noexcept;
  OrtModel& operator=(OrtModel&&) noexcept;
  ~OrtModel();

  // input: float32 [B, 3, H, W] on the CPU. Returns the first output as a float32 tensor.
  at::Tensor run(const at::Tensor& input) const;
  const std::string& label() const;

  struct Impl;

 private:
  explicit OrtModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vitq
