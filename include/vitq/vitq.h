// vitq's C++ library: load a Vision Transformer, quantize it with a PTQ method, evaluate it, save and load the
// plan, export it to ONNX. This header needs only the standard library: libtorch and the other dependencies stay
// inside libvitq.so, out of your translation units.
//
//   find_package(vitq REQUIRED)
//   target_link_libraries(app PRIVATE vitq::vitq)
//
//   auto model = vitq::api::Model::load("deit_tiny_patch16_224");          // folder, .safetensors or .onnx
//   auto calib = vitq::api::ImageSet::open("calib1000");
//   vitq::api::Plan plan = vitq::api::quantize(model, calib, {.method = "minmax", .wbits = 8, .abits = 8});
//   vitq::api::EvalReport r = vitq::api::evaluate(model, vitq::api::ImageSet::open("val1000"), {.plan = &plan});
//   plan.save("plan.json");
//
// Every function reports bad input (missing or corrupt files, nonsense options) by throwing vitq::api::Error,
// whose message is one line naming the file, tensor, layer or option at fault.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace vitq::api {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The library's version, e.g. "0.1.0".
std::string version();

// A model: the graph and its weights, and the preprocessing its images need (timm's, from config.json).
class Model {
 public:
  // A folder holding model.safetensors + config.json (or model.onnx), a .safetensors file (config.json beside
  // it) or an .onnx file.
  static Model load(const std::string& path);
  std::string name() const;          // architecture, e.g. "deit_tiny_patch16_224"
  int64_t num_classes() const;
  int64_t parameters() const;
  std::vector<std::string> quantizable_layers() const;  // the layers a quantizer touches, in graph order
  struct Impl;
  const Impl& impl() const { return *impl_; }

 private:
  std::shared_ptr<const Impl> impl_;
};

// A labelled image folder: labels.txt ("FILE CLASS" lines) or one sub-folder per class.
class ImageSet {
 public:
  static ImageSet open(const std::string& dir);
  size_t size() const;
  struct Impl;
  const Impl& impl() const { return *impl_; }

 private:
  std::shared_ptr<const Impl> impl_;
};

struct QuantizeOptions {
  std::string method = "minmax";  // minmax, percentile, omse, liu2021, easyquant, fqvit, ptq4vit, qhyvit (+variants)
  int wbits = 8, abits = 8;       // 2..8
  size_t calib_size = 32;         // calibration images drawn from the set
  uint64_t seed = 0;              // of the draw
  std::string convention = "paper";  // "paper" (each method's own) or "common"
  bool progress = false;          // progress lines on stderr
};

// A quantization plan: where each quantizer sits and its parameters (what `vitq quantize` writes).
class Plan {
 public:
  static Plan load(const std::string& path, const Model& model);  // checked against the model
  void save(const std::string& path) const;                       // atomically: whole or not at all
  std::string method() const;
  size_t quantizers() const;
  std::string summary() const;  // the quantizers by kind, e.g. "A8ta×98 W8cs×50"
  struct Impl;
  const Impl& impl() const { return *impl_; }

 private:
  friend Plan quantize(const Model&, const ImageSet&, const QuantizeOptions&);
  std::shared_ptr<const Impl> impl_;
};

Plan quantize(const Model& model, const ImageSet& calib, const QuantizeOptions& options = {});

struct EvalOptions {
  const Plan* plan = nullptr;  // evaluate the quantized model (fake-quant) against FP32; null: FP32 alone
  size_t limit = 0;            // the first N images; 0 = all
  size_t batch = 32;
  bool progress = false;
};

struct EvalReport {
  size_t images = 0, unreadable = 0;
  double top1 = 0, top5 = 0;  // percent
  // with a plan: FP32 on the same images, and the paired measures
  double fp32_top1 = 0, agreement = 0, kl = 0;
  double images_per_second = 0;
};

EvalReport evaluate(const Model& model, const ImageSet& images, const EvalOptions& options = {});

// The model (quantized by `plan` as QuantizeLinear/DequantizeLinear pairs, or FP32 when null) as an ONNX file
// (opset 17). Refuses to replace an existing file unless `overwrite`.
void export_onnx(const Model& model, const Plan* plan, const std::string& path, bool overwrite = false);

}  // namespace vitq::api
