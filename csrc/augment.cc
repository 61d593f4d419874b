#include "augment.h"

#include <algorithm>
#include <cmath>

#include "sample_rng.h"

namespace hivedata {
namespace {

// Python's round(): half to even, independent of the thread's floating-point rounding mode.
double RoundHalfEven(double v) {
  const double f = std::floor(v);
  const double d = v - f;
  if (d > 0.5) return f + 1.0;
  if (d < 0.5) return f;
  return std::fmod(f, 2.0) == 0.0 ? f : f + 1.0;
}

CropBox EvalCrop(int width, int height, const AugmentParams& p) {
  const double W = width, H = height;
  // Resize so that the side that binds (the shorter one for a square output) becomes
  // round(out / eval_crop_ratio); the other side is int(size * long / short), as torchvision does.
  double rw, rh;
  if (static_cast<double>(p.out_w) * H >= static_cast<double>(p.out_h) * W) {
    rw = RoundHalfEven(p.out_w / p.eval_crop_ratio);
    rh = std::floor(rw * H / W);
  } else {
    rh = RoundHalfEven(p.out_h / p.eval_crop_ratio);
    rw = std::floor(rh * W / H);
  }
  rw = std::max(rw, static_cast<double>(p.out_w));  // never crop more than the resized image
  rh = std::max(rh, static_cast<double>(p.out_h));
  const double left = RoundHalfEven((rw - p.out_w) / 2.0);  // CenterCrop: int(round((size - crop) / 2))
  const double top = RoundHalfEven((rh - p.out_h) / 2.0);
  const double sx = W / rw, sy = H / rh;
  return CropBox{left * sx, top * sy, p.out_w * sx, p.out_h * sy, false};
}

}  // namespace

const char* CheckAugmentParams(const AugmentParams& p) {
  if (p.out_h <= 0 || p.out_w <= 0) return "output size must be positive";
  if (p.out_h > kMaxOutputSide || p.out_w > kMaxOutputSide) return "output side must be at most 32768";
  if (!(0.0 < p.scale_min && p.scale_min <= p.scale_max && p.scale_max <= 1.0)) {
    return "scale must satisfy 0 < min <= max <= 1";
  }
  if (!(0.0 < p.ratio_min && p.ratio_min <= p.ratio_max && std::isfinite(p.ratio_max))) {
    return "ratio must satisfy 0 < min <= max (finite)";
  }
  if (!(0.0 <= p.flip_p && p.flip_p <= 1.0)) return "flip_p must be in [0, 1]";
  if (!(0.0 < p.eval_crop_ratio && p.eval_crop_ratio <= 1.0)) return "eval_crop_ratio must be in (0, 1]";
  if (p.max_pixels <= 0) return "max_pixels must be positive";
  return nullptr;
}

CropBox ChooseCrop(int width, int height, const AugmentParams& p, uint64_t sample_seed) {
  if (!p.train) return EvalCrop(width, height, p);

  SampleRng rng(sample_seed);
  const double W = width, H = height;
  const double area = W * H;
  const double log_r0 = std::log(p.ratio_min), log_r1 = std::log(p.ratio_max);
  CropBox box{0.0, 0.0, W, H, false};
  bool found = false;
  for (int attempt = 0; attempt < 10 && !found; ++attempt) {
    const double target_area = area * rng.Uniform(p.scale_min, p.scale_max);
    const double aspect = std::exp(rng.Uniform(log_r0, log_r1));
    const double w = RoundHalfEven(std::sqrt(target_area * aspect));
    const double h = RoundHalfEven(std::sqrt(target_area / aspect));
    if (0.0 < w && w <= W && 0.0 < h && h <= H) {
      // torchvision draws the row first: i = randint(0, H - h + 1), then j = randint(0, W - w + 1)
      const double y = static_cast<double>(rng.Below(static_cast<uint64_t>(H - h) + 1));
      const double x = static_cast<double>(rng.Below(static_cast<uint64_t>(W - w) + 1));
      box = CropBox{x, y, w, h, false};
      found = true;
    }
  }
  if (!found) {  // centre crop with the aspect ratio clamped into [ratio_min, ratio_max]
    const double in_ratio = W / H;
    double w = W, h = H;
    if (in_ratio < p.ratio_min) {
      h = std::clamp(RoundHalfEven(W / p.ratio_min), 1.0, H);
    } else if (in_ratio > p.ratio_max) {
      w = std::clamp(RoundHalfEven(H * p.ratio_max), 1.0, W);
    }
    box = CropBox{std::floor((W - w) / 2.0), std::floor((H - h) / 2.0), w, h, false};
  }
  box.flip = rng.Uniform() < p.flip_p;
  return box;
}

}  // namespace hivedata
