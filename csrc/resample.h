// Separable antialiased bilinear (triangle) resampling with Pillow's arithmetic: the filter support
// grows with the reduction factor, weights are fixed point (22 bits), the horizontal pass rounds to
// uint8 before the vertical pass. For the same input and box the result equals
// Image.resize(size, Image.BILINEAR, box=box).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace hivedata {

constexpr int kResampleBits = 22;

// Filter taps along one axis: output sample i reads input samples [first[i], first[i] + count[i]).
struct AxisFilter {
  int out_size = 0;
  int ksize = 0;                 // taps reserved per output sample in `weights`
  std::vector<int> first;        // out_size entries
  std::vector<int> count;        // out_size entries
  std::vector<int32_t> weights;  // out_size * ksize, fixed point with kResampleBits
  int lo = 0;                    // first input sample any output reads
  int hi = 0;                    // one past the last input sample any output reads

  // Set by PrepareRowKernel for the SIMD horizontal pass (0 taps: not prepared / not possible):
  // every output reads exactly `fixed_taps` (even) samples from fixed_first[i], the extra taps with
  // weight 0, so the loop has no data-dependent trip count. The weights are split for 16-bit
  // multiplies (w = hi << 11 | lo, exact), two taps per int32: pair_hi[i * fixed_taps / 2 + j] =
  // hi(w[2j]) | hi(w[2j + 1]) << 16; likewise pair_lo.
  int fixed_taps = 0;
  std::vector<int> fixed_first;
  std::vector<int32_t> pair_hi, pair_lo;
};

// Maps the source interval [in0, in1) of an axis with in_size samples onto out_size samples.
// Taps are clipped to [0, in_size) and renormalized, as Pillow does at image borders.
// Requires in_size >= 1, out_size >= 1, in1 > in0.
void BuildAxisFilter(int in_size, double in0, double in1, int out_size, AxisFilter* f);

// Moves the filter's input origin: first[i] -= offset. Call before PrepareRowKernel.
void ShiftAxisFilter(AxisFilter* f, int offset);

// Lays the taps out for the SIMD horizontal pass over rows of `in_width` pixels (which must cover
// [f.lo, f.hi)). Optional: without it ResampleRow takes the portable path, with the same result.
void PrepareRowKernel(AxisFilter* f, int in_width);

// Horizontal pass over one row. `in_stride` bytes per input pixel: 1 (gray), 3 (RGB) or 4 (RGBX, the
// fourth byte ignored). Writes f.out_size pixels of `channels` bytes (1 for gray, else 3) to `out`.
void ResampleRow(const uint8_t* in, int in_stride, const AxisFilter& f, uint8_t* out);

// Vertical pass. `rows` holds horizontally resampled rows (`width` pixels of `channels` bytes,
// consecutive rows `row_stride` bytes apart) numbered as f.first counts them. Writes f.out_size rows
// of width RGB pixels to `out` (HWC, tightly packed), replicating a single channel to RGB and
// mirroring each row when `flip`. `acc` is scratch for width * channels int32 values.
void ResampleColumns(const uint8_t* rows, size_t row_stride, int channels, int width, const AxisFilter& f,
                     bool flip, int32_t* acc, uint8_t* out);

}  // namespace hivedata
