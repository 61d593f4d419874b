// Which region of a source image becomes the output: torchvision's RandomResizedCrop + flip for
// training, Resize + CenterCrop for evaluation. Mirrors hivedata.backends.base.Augment.
#pragma once

#include <cstdint>

namespace hivedata {

struct AugmentParams {
  int out_h = 224, out_w = 224;
  bool train = true;
  double scale_min = 0.08, scale_max = 1.0;
  double ratio_min = 3.0 / 4.0, ratio_max = 4.0 / 3.0;
  double flip_p = 0.5;
  double eval_crop_ratio = 0.875;
  // Pixel budget, checked from the header before anything is decoded (64 MP: 8192 x 8192). libjpeg's own
  // memory is capped at LibjpegMemoryLimit(max_pixels) per decode (jpeg_decoder.h).
  int64_t max_pixels = int64_t{1} << 26;
  // Warnings are errors: a JPEG for which libjpeg emits any warning (extraneous bytes, bad progression,
  // invalid SOS parameters, a bad ICC marker...) is refused. Off: such files decode and are counted
  // (DecodeInfo::warnings). Truncated or corrupt entropy-coded data is an error either way.
  bool strict = false;
};

// Largest output side accepted (keeps every size computation well inside int).
constexpr int kMaxOutputSide = 1 << 15;

// Source-pixel coordinates of the region that becomes the output; flip: mirror it horizontally.
struct CropBox {
  double x, y, w, h;
  bool flip;
};

// nullptr when `p` is usable, else a static message saying what is wrong (same rules as Augment).
const char* CheckAugmentParams(const AugmentParams& p);

// The region of a width x height image that becomes the output. Training: torchvision's
// RandomResizedCrop.get_params (10 attempts, then a centre crop with the ratio clamped) with all
// randomness from SampleRng(sample_seed), then flip when U() < flip_p. Evaluation: torchvision's
// Resize(round(out / eval_crop_ratio)) on the side that binds + CenterCrop(out_h, out_w), as a float
// box in source coordinates, never flipped. `p` must pass CheckAugmentParams; width, height >= 1.
CropBox ChooseCrop(int width, int height, const AugmentParams& p, uint64_t sample_seed);

}  // namespace hivedata
