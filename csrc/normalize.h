// uint8 HWC images -> normalised float32 (NCHW or channels-last), in one pass, without torch's
// OpenMP pool (which hangs in a child forked after the parent used it).
#pragma once

#include <cstddef>
#include <cstdint>

namespace hivedata {

// src: n images of h*w*3 uint8. dst: n*3*h*w floats, NCHW when !channels_last, else NHWC.
// dst = (src - mean[c]) * inv_std[c].
void NormalizeU8(const uint8_t* src, float* dst, size_t n, size_t h, size_t w, bool channels_last,
                 const float mean[3], const float inv_std[3]);

}  // namespace hivedata
