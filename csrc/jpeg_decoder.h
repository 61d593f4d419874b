// JPEG bytes -> augmented uint8 RGB with libjpeg-turbo: decodes only the rows and iMCU columns the
// crop needs, at the smallest DCT scale (1/8, 2/8, 4/8 or 8/8: the SIMD ones) that keeps the crop at
// least as large as the output, then
// resamples (antialiased bilinear, Pillow's arithmetic) and flips straight into the caller's buffer.
//
// Thread-safe and re-entrant: no global mutable state, every call owns its libjpeg state, nothing is
// printed, the process is never aborted. Statuses (http_status 0):
//   kNotJpeg          empty input or bytes that do not start with FF D8 (the message says what they look like)
//   kCorruptImage     libjpeg could not decode it, or the data ends early / a data segment is cut short
//                     ("premature end of data segment"): a truncated JPEG is an error, never a grey-filled image;
//                     with p.strict, also any libjpeg warning
//   kImageTooLarge    width * height > max_pixels (checked from the header, before any large allocation),
//                     or libjpeg needed more than LibjpegMemoryLimit(max_pixels) (a progressive JPEG keeps
//                     every coefficient of the image: 2 bytes per sample), or ran out of memory
//
// One verdict per file: whatever the crop, the whole entropy-coded data is decoded through EOI (the rows
// outside the crop are Huffman-decoded and discarded, not transformed), so damage anywhere in the file
// fails (or warns) the same way in every epoch.
//   kUnsupportedImage a colour space other than grayscale, YCbCr, RGB, CMYK, YCCK
//   kBadRequest       AugmentParams that CheckAugmentParams rejects, or a null output pointer
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "augment.h"
#include "fetch_status.h"

namespace hivedata {

struct DecodeInfo {
  int src_w = 0, src_h = 0;
  int scale_num = 8;  // DCT scale used: scale_num / 8 (1, 2, 4 or 8)
  CropBox box{};      // the crop in source pixels (and whether it was flipped)
  int warnings = 0;     // libjpeg warnings the file raised that did not refuse it (see AugmentParams::strict)
  std::string warning;  // the first of them, as libjpeg words it
};

// libjpeg's memory limit per decode (cinfo.mem->max_memory_to_use): 3 bytes per pixel of the pixel budget
// (a 4:2:0 progressive JPEG's whole-image coefficients at the limit) plus 16 MiB for everything else.
int64_t LibjpegMemoryLimit(int64_t max_pixels);

// Decodes JPEG bytes, crops, resizes to p.out_h x p.out_w, flips; writes uint8 RGB HWC
// (out_h * out_w * 3 bytes) to `out`. `info` may be null. On failure `out` may be partly written.
// Colour: YCbCr/RGB as libjpeg converts them; grayscale replicated to RGB; CMYK/YCCK converted
// the way Pillow's convert("RGB") does (Adobe polarity, i.e. inverted, as Pillow always assumes).
FetchStatus DecodeCropResize(const uint8_t* data, size_t size, const AugmentParams& p, uint64_t sample_seed,
                             uint8_t* out, DecodeInfo* info);

// Reads only the header.
FetchStatus ReadJpegHeader(const uint8_t* data, size_t size, int* width, int* height, int* components,
                           bool* progressive);

// At most this many scans are accepted in a progressive JPEG (a cheap guard against scan bombs:
// real images have about 10).
constexpr int kMaxProgressiveScans = 500;

}  // namespace hivedata
