#include "normalize.h"

namespace hivedata {

void NormalizeU8(const uint8_t* src, float* dst, size_t n, size_t h, size_t w, bool channels_last,
                 const float mean[3], const float inv_std[3]) {
  const size_t plane = h * w;
  // per-channel lookup tables: one load per pixel value instead of a subtract and a multiply
  float lut[3][256];
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) lut[c][v] = (static_cast<float>(v) - mean[c]) * inv_std[c];
  }
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* s = src + i * plane * 3;
    float* d = dst + i * plane * 3;
    if (channels_last) {
      for (size_t p = 0; p < plane; ++p) {
        d[3 * p] = lut[0][s[3 * p]];
        d[3 * p + 1] = lut[1][s[3 * p + 1]];
        d[3 * p + 2] = lut[2][s[3 * p + 2]];
      }
    } else {
      float* r = d;
      float* g = d + plane;
      float* b = d + 2 * plane;
      for (size_t p = 0; p < plane; ++p) {
        r[p] = lut[0][s[3 * p]];
        g[p] = lut[1][s[3 * p + 1]];
        b[p] = lut[2][s[3 * p + 2]];
      }
    }
  }
}

}  // namespace hivedata
