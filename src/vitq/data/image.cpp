#include "vitq/data/image.h"

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>

// clang-format off
#include <jpeglib.h>
#include <jerror.h>
#include <png.h>
// clang-format on

#include "vitq/util/error.h"
#include "vitq/util/file_io.h"

namespace vitq {

namespace {

// PIL refuses images above 2 x 89,478,485 pixels as decompression bombs; so do we.
constexpr uint64_t kMaxPixels = 2ull * 89478485ull;

struct JpegError {
  jpeg_error_mgr mgr;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool truncated = false;
};

void jpeg_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  longjmp(err->jump, 1);
}

void jpeg_emit(j_common_ptr cinfo, int level) {
  // A premature end of data is a warning to libjpeg (it pads with grey); PIL refuses such files.
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) err->truncated = true;
}

// Decodes into `out` (sized here after the header is read).
bool decode_jpeg(const uint8_t* data, size_t size, Image& out, std::string& error) {
  jpeg_decompress_struct cinfo;
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_error_exit;
  err.mgr.emit_message = jpeg_emit;
  // Buffers modified after setjmp live on the heap behind a pointer that is not (longjmp leaves locals that
  // changed after setjmp indeterminate).
  const auto row_holder = std::make_unique<std::vector<uint8_t>>();
  std::vector<uint8_t>& row = *row_holder;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    error = err.message;
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&cinfo, TRUE);
  const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  cinfo.out_color_space = cmyk ? JCS_CMYK : (cinfo.num_components == 1 ? JCS_GRAYSCALE : JCS_RGB);
  cinfo.dct_method = JDCT_ISLOW;
  cinfo.do_fancy_upsampling = TRUE;
  if (static_cast<uint64_t>(cinfo.image_width) * cinfo.image_height > kMaxPixels) {
    jpeg_destroy_decompress(&cinfo);
    error = fmt::format("{}x{} pixels is more than vitq decodes (decompression bomb?)", cinfo.image_width, cinfo.image_height);
    return false;
  }
  jpeg_start_decompress(&cinfo);
  out.width = static_cast<int>(cinfo.output_width);
  out.height = static_cast<int>(cinfo.output_height);
  out.rgb.resize(static_cast<size_t>(out.width) * out.height * 3);
  const int comps = cinfo.output_components;
  row.resize(static_cast<size_t>(out.width) * comps);
  // Adobe CMYK JPEGs store inverted values; PIL reads them as "CMYK;I", i.e. C' = 255 - stored.
  const bool inverted = cmyk && cinfo.saw_Adobe_marker;
  while (cinfo.output_scanline < cinfo.output_height) {
    size_t y = cinfo.output_scanline;
    JSAMPROW ptr = row.data();
    jpeg_read_scanlines(&cinfo, &ptr, 1);
    uint8_t* dst = out.rgb.data() + y * out.width * 3;
    for (int x = 0; x < out.width; ++x) {
      if (comps == 1) {
        dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = row[x];
      } else if (comps == 3) {
        std::memcpy(dst + 3 * x, &row[3 * static_cast<size_t>(x)], 3);
      } else {  // CMYK -> RGB as PIL: R = (255 - C) * (255 - K) / 255 with its rounding
        const uint8_t* p = &row[4 * static_cast<size_t>(x)];
        auto inv = [&](uint8_t v) -> uint32_t { return inverted ? v : 255u - v; };  // 255 - C
        uint32_t k = inv(p[3]);
        for (int c = 0; c < 3; ++c) {
          uint32_t t = inv(p[c]) * k + 128;
          dst[3 * x + c] = static_cast<uint8_t>(((t >> 8) + t) >> 8);
        }
      }
    }
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  if (err.truncated) {
    error = "image file is truncated";
    return false;
  }
  return true;
}

struct PngReader {
  const uint8_t* data;
  size_t size, pos;
};

void png_read(png_structp png, png_bytep out, png_size_t n) {
  auto* r = static_cast<PngReader*>(png_get_io_ptr(png));
  if (r->pos + n > r->size) png_error(png, "image file is truncated");
  std::memcpy(out, r->data + r->pos, n);
  r->pos += n;
}

void png_fail(png_structp png, png_const_charp msg) {
  auto* message = static_cast<std::string*>(png_get_error_ptr(png));
  *message = msg;
  longjmp(png_jmpbuf(png), 1);
}

void png_warn(png_structp, png_const_charp) {}

bool decode_png(const uint8_t* data, size_t size, Image& out, std::string& error) {
  // IHDR is the first chunk: refuse huge images before libpng reads any further
  if (size >= 24 && std::memcmp(data + 12, "IHDR", 4) == 0) {
    auto be32 = [&](size_t at) {
      return (uint64_t{data[at]} << 24) | (uint64_t{data[at + 1]} << 16) | (uint64_t{data[at + 2]} << 8) | data[at + 3];
    };
    if (be32(16) * be32(20) > kMaxPixels) {
      error = fmt::format("{}x{} pixels is more than vitq decodes (decompression bomb?)", be32(16), be32(20));
      return false;
    }
  }
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &error, png_fail, png_warn);
  if (!png) return false;
  png_infop info = png_create_info_struct(png);
  PngReader reader{data, size, 0};
  const auto rows_holder = std::make_unique<std::vector<png_bytep>>();  // see decode_jpeg about setjmp
  std::vector<png_bytep>& rows = *rows_holder;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    return false;
  }
  png_set_read_fn(png, &reader, png_read);
  png_read_info(png, info);
  if (static_cast<uint64_t>(png_get_image_width(png, info)) * png_get_image_height(png, info) > kMaxPixels)
    png_error(png, "more pixels than vitq decodes (decompression bomb?)");
  png_set_strip_16(png);
  png_set_packing(png);
  png_set_palette_to_rgb(png);
  png_set_expand_gray_1_2_4_to_8(png);
  png_set_gray_to_rgb(png);
  png_set_strip_alpha(png);
  png_read_update_info(png, info);
  out.width = static_cast<int>(png_get_image_width(png, info));
  out.height = static_cast<int>(png_get_image_height(png, info));
  if (png_get_rowbytes(png, info) != static_cast<size_t>(out.width) * 3) png_error(png, "unexpected PNG layout");
  out.rgb.resize(static_cast<size_t>(out.width) * out.height * 3);
  rows.resize(static_cast<size_t>(out.height));
  for (int y = 0; y < out.height; ++y) rows[static_cast<size_t>(y)] = out.rgb.data() + static_cast<size_t>(y) * out.width * 3;
  png_read_image(png, rows.data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  return true;
}

}  // namespace

Image decode_image(const uint8_t* data, size_t size, const std::string& path) {
  Image img;
  std::string error = "unknown error";
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) {
    if (!decode_jpeg(data, size, img, error)) fail("{}: corrupt JPEG ({})", path, error);
  } else if (size >= 8 && std::memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0) {
    if (!decode_png(data, size, img, error)) fail("{}: corrupt PNG ({})", path, error);
  } else {
    fail("{}: not a JPEG or PNG image", path);
  }
  if (img.width <= 0 || img.height <= 0) fail("{}: image has no pixels", path);
  return img;
}

Image decode_image(const std::string& path) {
  const std::string bytes = read_file(path, "image", uint64_t{256} << 20);
  return decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), path);
}

}  // namespace vitq
