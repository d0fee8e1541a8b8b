// libFuzzer target: the JPEG/PNG decoders (image.h), the PIL-exact resize (resize.h) and the eval transform
// (transform.h). The first 6 bytes choose the resize size, the filter and the crop; the rest is the image file.
#include <vector>

#include "fuzz_util.h"
#include "vitq/data/image.h"
#include "vitq/data/resize.h"
#include "vitq/data/transform.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 6) return 0;
  const int out_w = 1 + data[0] % 96, out_h = 1 + data[1] % 96;
  const auto filter = (data[2] & 1) ? vitq::ResizeFilter::Bicubic : vitq::ResizeFilter::Bilinear;
  vitq::PreprocessConfig cfg;
  cfg.input_width = 1 + data[3] % 64;
  cfg.input_height = 1 + data[4] % 64;
  cfg.crop_pct = (1 + data[5] % 100) / 100.0;  // (0, 1]
  cfg.interpolation = (data[2] & 2) ? "bicubic" : "bilinear";
  data += 6;
  size -= 6;
  return vitq::fuzz::guarded([&] {
    vitq::Image img = vitq::decode_image(data, size, "fuzz-input");
    // Decoding is the target; bound the resampling work of a legitimately huge image.
    if (static_cast<int64_t>(img.width) * img.height > (1 << 22)) return;
    (void)vitq::resize(img, out_w, out_h, filter);
    std::vector<float> out(static_cast<size_t>(3) * cfg.input_height * cfg.input_width);
    vitq::eval_transform(img, cfg, out.data());
  });
}
