// Antialiased resampling that reproduces PIL's Image.resize (Pillow's ImagingResample) bit for bit on 8-bit
// RGB: separable convolution with the filter widened by the scale factor when downsampling, coefficients
// normalised in double then rounded to 22-bit fixed point, horizontal pass first, each pass rounding and
// clipping to 8 bits.
#pragma once
#include <string>
#include <vector>

#include "vitq/data/image.h"

namespace vitq {

enum class ResizeFilter { Bilinear, Bicubic };
ResizeFilter parse_filter(const std::string& name);  // "bilinear" | "bicubic"

// The fast, PIL-exact path.
Image resize(const Image& in, int out_width, int out_height, ResizeFilter filter);

// Naive reference: the same separable filter in double precision, weights computed per output pixel over the
// whole input row/column, no fixed point and no intermediate rounding (only the clip to [0, 255] between the
// passes that PIL's 8-bit storage implies). HWC values in 0..255. Tests compare the two.
std::vector<double> resize_reference(const Image& in, int out_width, int out_height, ResizeFilter filter);

}  // namespace vitq
