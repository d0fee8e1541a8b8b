#include "vitq/data/resize.h"

#include <algorithm>
#include <cmath>

#include "vitq/util/error.h"

namespace vitq {

namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow's PRECISION_BITS

double filter_value(ResizeFilter f, double x) {
  if (x < 0) x = -x;
  if (f == ResizeFilter::Bilinear) return x < 1.0 ? 1.0 - x : 0.0;
  constexpr double a = -0.5;  // Pillow's bicubic
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double filter_support(ResizeFilter f) { return f == ResizeFilter::Bilinear ? 1.0 : 2.0; }

// Per output index: first input index, number of taps and normalised double weights (Pillow's
// precompute_coeffs with box [0, in_size]).
struct Coeffs {
  int ksize = 0;
  std::vector<int> start, count;
  std::vector<double> weights;  // [out_size, ksize]
};

Coeffs precompute(int in_size, int out_size, ResizeFilter f) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = filter_support(f) * filterscale;
  Coeffs c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.start.resize(static_cast<size_t>(out_size));
  c.count.resize(static_cast<size_t>(out_size));
  c.weights.assign(static_cast<size_t>(out_size) * c.ksize, 0.0);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = std::max(static_cast<int>(center - support + 0.5), 0);
    int xmax = std::min(static_cast<int>(center + support + 0.5), in_size) - xmin;
    double* k = &c.weights[static_cast<size_t>(xx) * c.ksize];
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      k[x] = filter_value(f, (x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    for (int x = 0; x < xmax; ++x)
      if (ww != 0.0) k[x] /= ww;
    c.start[static_cast<size_t>(xx)] = xmin;
    c.count[static_cast<size_t>(xx)] = xmax;
  }
  return c;
}

std::vector<int32_t> to_fixed(const std::vector<double>& w) {
  std::vector<int32_t> out(w.size());
  for (size_t i = 0; i < w.size(); ++i)
    out[i] = static_cast<int32_t>(w[i] < 0 ? -0.5 + w[i] * (1 << kPrecisionBits) : 0.5 + w[i] * (1 << kPrecisionBits));
  return out;
}

inline uint8_t clip8(int64_t v) {
  if (v >= (int64_t{255} << kPrecisionBits)) return 255;
  if (v <= 0) return 0;
  return static_cast<uint8_t>(v >> kPrecisionBits);
}

}  // namespace

ResizeFilter parse_filter(const std::string& name) {
  if (name == "bicubic") return ResizeFilter::Bicubic;
  if (name == "bilinear") return ResizeFilter::Bilinear;
  fail("unsupported interpolation '{}' (bicubic, bilinear)", name);
}

Image resize(const Image& in, int out_w, int out_h, ResizeFilter filter) {
  if (out_w <= 0 || out_h <= 0) fail("resize to {}x{}: size must be positive", out_w, out_h);
  const bool need_h = out_w != in.width, need_v = out_h != in.height;
  Coeffs ch = precompute(in.width, out_w, filter), cv = precompute(in.height, out_h, filter);
  auto kh = to_fixed(ch.weights), kv = to_fixed(cv.weights);
  // Horizontal pass over only the rows the vertical pass reads.
  const int y_first = need_v ? cv.start[0] : 0;
  const int y_last = need_v ? cv.start[static_cast<size_t>(out_h) - 1] + cv.count[static_cast<size_t>(out_h) - 1] : in.height;
  Image tmp;
  const Image* src = &in;
  if (need_h) {
    tmp.width = out_w;
    tmp.height = y_last - y_first;
    tmp.rgb.resize(static_cast<size_t>(tmp.width) * tmp.height * 3);
    for (int y = 0; y < tmp.height; ++y) {
      const uint8_t* row = in.rgb.data() + static_cast<size_t>(y + y_first) * in.width * 3;
      uint8_t* dst = tmp.rgb.data() + static_cast<size_t>(y) * out_w * 3;
      for (int xx = 0; xx < out_w; ++xx) {
        const int32_t* k = &kh[static_cast<size_t>(xx) * ch.ksize];
        const int xmin = ch.start[static_cast<size_t>(xx)], n = ch.count[static_cast<size_t>(xx)];
        int64_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
        for (int x = 0; x < n; ++x) {
          const uint8_t* p = row + static_cast<size_t>(x + xmin) * 3;
          s0 += p[0] * int64_t{k[x]};
          s1 += p[1] * int64_t{k[x]};
          s2 += p[2] * int64_t{k[x]};
        }
        dst[3 * xx] = clip8(s0);
        dst[3 * xx + 1] = clip8(s1);
        dst[3 * xx + 2] = clip8(s2);
      }
    }
    src = &tmp;
  }
  if (!need_v) {
    if (need_h) return tmp;
    return in;
  }
  Image out;
  out.width = out_w;
  out.height = out_h;
  out.rgb.resize(static_cast<size_t>(out_w) * out_h * 3);
  const int offset = need_h ? y_first : 0;  // rows of src start at input row `offset`
  const size_t stride = static_cast<size_t>(src->width) * 3;
  for (int yy = 0; yy < out_h; ++yy) {
    const int32_t* k = &kv[static_cast<size_t>(yy) * cv.ksize];
    const int ymin = cv.start[static_cast<size_t>(yy)] - offset, n = cv.count[static_cast<size_t>(yy)];
    uint8_t* dst = out.rgb.data() + static_cast<size_t>(yy) * stride;
    for (size_t i = 0; i < stride; ++i) {
      int64_t s = 1 << (kPrecisionBits - 1);
      for (int y = 0; y < n; ++y) s += src->rgb[static_cast<size_t>(y + ymin) * stride + i] * int64_t{k[y]};
      dst[i] = clip8(s);
    }
  }
  return out;
}

std::vector<double> resize_reference(const Image& in, int out_w, int out_h, ResizeFilter filter) {
  // weight of input index i for output index o, normalised over the taps that fall inside the image
  auto weights = [&](int in_size, int out_size, int o) {
    const double scale = static_cast<double>(in_size) / out_size, fs = std::max(scale, 1.0);
    const double center = (o + 0.5) * scale;
    std::vector<double> w(static_cast<size_t>(in_size));
    double sum = 0;
    for (int i = 0; i < in_size; ++i) sum += w[static_cast<size_t>(i)] = filter_value(filter, (i + 0.5 - center) / fs);
    for (auto& v : w) v /= sum;
    return w;
  };
  // horizontal pass, clipped to the 8-bit range as PIL stores it, then vertical pass
  std::vector<double> mid(static_cast<size_t>(in.height) * out_w * 3, 0.0);
  for (int xx = 0; xx < out_w; ++xx) {
    auto w = weights(in.width, out_w, xx);
    for (int y = 0; y < in.height; ++y)
      for (int c = 0; c < 3; ++c) {
        double acc = 0;
        for (int x = 0; x < in.width; ++x) acc += w[static_cast<size_t>(x)] * in.at(y, x, c);
        mid[(static_cast<size_t>(y) * out_w + xx) * 3 + c] = std::clamp(acc, 0.0, 255.0);
      }
  }
  std::vector<double> out(static_cast<size_t>(out_w) * out_h * 3, 0.0);
  for (int yy = 0; yy < out_h; ++yy) {
    auto w = weights(in.height, out_h, yy);
    for (int xx = 0; xx < out_w; ++xx)
      for (int c = 0; c < 3; ++c) {
        double acc = 0;
        for (int y = 0; y < in.height; ++y) acc += w[static_cast<size_t>(y)] * mid[(static_cast<size_t>(y) * out_w + xx) * 3 + c];
        out[(static_cast<size_t>(yy) * out_w + xx) * 3 + c] = std::clamp(acc, 0.0, 255.0);
      }
  }
  return out;
}

}  // namespace vitq
