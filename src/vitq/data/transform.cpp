#include "vitq/data/transform.h"

#include <cfenv>
#include <cmath>

#include "vitq/data/resize.h"
#include "vitq/util/error.h"

namespace vitq {

void eval_transform(const Image& img, const PreprocessConfig& p, float* out) {
  const int H = p.input_height, W = p.input_width;
  if (H <= 0 || W <= 0 || !(p.crop_pct >= 0.1 && p.crop_pct <= 1.0))
    fail("preprocessing {}x{} with crop_pct {} is outside vitq's limits", H, W, p.crop_pct);
  int64_t new_w, new_h;
  if (H == W) {
    const int64_t size = static_cast<int64_t>(std::floor(H / p.crop_pct));
    const int64_t short_side = std::min(img.width, img.height), long_side = std::max(img.width, img.height);
    if (short_side <= 0) fail("image {}x{} has no pixels", img.width, img.height);
    const int64_t new_long = static_cast<int64_t>(static_cast<double>(size * long_side) / static_cast<double>(short_side));
    new_w = img.width <= img.height ? size : new_long;
    new_h = img.width <= img.height ? new_long : size;
  } else {  // timm passes a (h, w) tuple: both sides scaled exactly
    new_h = static_cast<int64_t>(std::floor(H / p.crop_pct));
    new_w = static_cast<int64_t>(std::floor(W / p.crop_pct));
  }
  // A thin image (20000x1) would resize to a huge strip of which only the centre crop is used: refuse it.
  constexpr int64_t kMaxResizedPixels = int64_t{1} << 26;  // 64 Mpixel, 192 MB of RGB
  if (new_w * new_h > kMaxResizedPixels)
    fail("image {}x{}: its aspect ratio is too extreme (the resize for the {}x{} crop would be {}x{} pixels)", img.width,
         img.height, W, H, new_w, new_h);
  Image r = resize(img, static_cast<int>(new_w), static_cast<int>(new_h), parse_filter(p.interpolation));
  if (r.width < W || r.height < H) fail("image {}x{} is smaller than the crop {}x{}", r.width, r.height, W, H);
  // std::nearbyint rounds half to even under the default rounding mode, like Python's round().
  const int top = static_cast<int>(std::nearbyint((r.height - H) / 2.0));
  const int left = static_cast<int>(std::nearbyint((r.width - W) / 2.0));
  for (int c = 0; c < 3; ++c) {
    const float mean = p.mean[static_cast<size_t>(c)], stdv = p.std[static_cast<size_t>(c)];
    float* plane = out + static_cast<size_t>(c) * H * W;
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) {
        const float v = static_cast<float>(r.at(y + top, x + left, c)) / 255.0f;
        plane[static_cast<size_t>(y) * W + x] = (v - mean) / stdv;
      }
  }
}

}  // namespace vitq
