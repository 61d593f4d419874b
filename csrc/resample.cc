#include "resample.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace hivedata {
namespace {

constexpr int32_t kHalf = 1 << (kResampleBits - 1);

inline double Triangle(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

inline uint8_t Clip8(int32_t v) {
  v >>= kResampleBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

constexpr int kLoBits = 11;  // weights split as hi << 11 | lo, both below 2^15 (int16 for pmaddwd)

// Portable horizontal pass: S bytes per input pixel, the first C of them used.
template <int S, int C>
void ResampleRowT(const uint8_t* in, const AxisFilter& f, uint8_t* out) {
  const int32_t* w = f.weights.data();
  for (int i = 0; i < f.out_size; ++i, w += f.ksize) {
    const uint8_t* p = in + static_cast<size_t>(f.first[i]) * S;
    const int n = f.count[i];
    int32_t s[C];
    for (int c = 0; c < C; ++c) s[c] = kHalf;
    for (int t = 0; t < n; ++t) {
      for (int c = 0; c < C; ++c) s[c] += p[t * S + c] * w[t];
    }
    for (int c = 0; c < C; ++c) out[i * C + c] = Clip8(s[c]);
  }
}

#if defined(__SSE2__)
// RGBX in, RGB out, two taps per pmaddwd on the split weights: the same sums as ResampleRowT.
// kPairs > 0: a compile-time tap count (unrolled); 0: f.fixed_taps / 2 at run time.
template <int kPairs>
void ResampleRowRgbxSse2(const uint8_t* in, const AxisFilter& f, uint8_t* out) {
  const __m128i zero = _mm_setzero_si128();
  const __m128i half = _mm_set1_epi32(kHalf);
  const int npairs = kPairs > 0 ? kPairs : f.fixed_taps / 2;
  const int32_t* ph = f.pair_hi.data();
  const int32_t* pl = f.pair_lo.data();
  for (int i = 0; i < f.out_size; ++i, ph += npairs, pl += npairs) {
    const uint8_t* p = in + static_cast<size_t>(f.fixed_first[i]) * 4;
    __m128i ah = zero, al = zero;
    for (int j = 0; j < npairs; ++j) {
      const __m128i px = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * j));  // a0..a3 b0..b3
      const __m128i ab = _mm_unpacklo_epi8(px, _mm_srli_si128(px, 4));                  // a0 b0 a1 b1 ..
      const __m128i v = _mm_unpacklo_epi8(ab, zero);                                    // as int16
      ah = _mm_add_epi32(ah, _mm_madd_epi16(v, _mm_set1_epi32(ph[j])));
      al = _mm_add_epi32(al, _mm_madd_epi16(v, _mm_set1_epi32(pl[j])));
    }
    __m128i acc = _mm_add_epi32(_mm_add_epi32(_mm_slli_epi32(ah, kLoBits), al), half);
    acc = _mm_srai_epi32(acc, kResampleBits);
    acc = _mm_packus_epi16(_mm_packs_epi32(acc, acc), zero);  // clamp to 0..255 like Clip8
    const int32_t rgbx = _mm_cvtsi128_si32(acc);
    if (i + 1 < f.out_size) {
      std::memcpy(out + 3 * i, &rgbx, 4);  // the 4th byte is overwritten by the next pixel
    } else {
      std::memcpy(out + 3 * i, &rgbx, 3);
    }
  }
}
#endif

}  // namespace

void BuildAxisFilter(int in_size, double in0, double in1, int out_size, AxisFilter* f) {
  // Pillow takes the box as C floats; doing the same keeps results identical to Image.resize.
  const float fin0 = static_cast<float>(in0), fin1 = static_cast<float>(in1);
  const double scale = static_cast<double>(fin1 - fin0) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 1.0 * filterscale;  // the triangle filter's support is 1
  const int ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  const double ss = 1.0 / filterscale;

  f->out_size = out_size;
  f->ksize = ksize;
  f->first.assign(out_size, 0);
  f->count.assign(out_size, 0);
  f->weights.assign(static_cast<size_t>(out_size) * ksize, 0);
  f->fixed_taps = 0;
  f->lo = in_size;
  f->hi = 0;
  std::vector<double> k(ksize);
  for (int i = 0; i < out_size; ++i) {
    const double center = fin0 + (i + 0.5) * scale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    const int n = std::max(0, std::min(xmax - xmin, ksize));
    double ww = 0.0;
    for (int t = 0; t < n; ++t) {
      k[t] = Triangle((t + xmin - center + 0.5) * ss);
      ww += k[t];
    }
    int32_t* w = &f->weights[static_cast<size_t>(i) * ksize];
    for (int t = 0; t < n; ++t) {
      const double v = ww != 0.0 ? k[t] / ww : k[t];
      w[t] = static_cast<int32_t>(v < 0 ? -0.5 + v * (1 << kResampleBits) : 0.5 + v * (1 << kResampleBits));
    }
    f->first[i] = xmin;
    f->count[i] = n;
    if (n > 0) {
      f->lo = std::min(f->lo, xmin);
      f->hi = std::max(f->hi, xmin + n);
    }
  }
  if (f->hi < f->lo) f->lo = f->hi = 0;  // no taps at all (empty interval)
}

void ShiftAxisFilter(AxisFilter* f, int offset) {
  for (int& v : f->first) v -= offset;
  f->lo -= offset;
  f->hi -= offset;
  f->fixed_taps = 0;
}

void PrepareRowKernel(AxisFilter* f, int in_width) {
  int taps = 0;
  for (int n : f->count) taps = std::max(taps, n);
  taps += taps & 1;
  f->fixed_taps = 0;
  if (taps == 0 || taps > in_width || f->lo < 0 || f->hi > in_width) return;  // portable path
  const int npairs = taps / 2;
  f->fixed_first.assign(f->out_size, 0);
  f->pair_hi.assign(static_cast<size_t>(f->out_size) * npairs, 0);
  f->pair_lo.assign(static_cast<size_t>(f->out_size) * npairs, 0);
  for (int i = 0; i < f->out_size; ++i) {
    // start early enough that the window stays inside the row; real taps sit at offset d
    const int start = std::min(f->first[i], in_width - taps);
    const int d = f->first[i] - start;
    const int32_t* w = &f->weights[static_cast<size_t>(i) * f->ksize];
    for (int t = 0; t < f->count[i]; ++t) {
      // 0 <= w <= 2^22 (+ rounding), so hi <= 2^11 and lo < 2^11 fit int16 lanes
      const uint32_t hi = static_cast<uint32_t>(w[t] >> kLoBits) & 0xFFFF;
      const uint32_t lo = static_cast<uint32_t>(w[t] & ((1 << kLoBits) - 1));
      const size_t at = static_cast<size_t>(i) * npairs + (t + d) / 2;
      const int shift = ((t + d) % 2) * 16;
      f->pair_hi[at] = static_cast<int32_t>(static_cast<uint32_t>(f->pair_hi[at]) | (hi << shift));
      f->pair_lo[at] = static_cast<int32_t>(static_cast<uint32_t>(f->pair_lo[at]) | (lo << shift));
    }
    f->fixed_first[i] = start;
  }
  f->fixed_taps = taps;
}

void ResampleRow(const uint8_t* in, int in_stride, const AxisFilter& f, uint8_t* out) {
  switch (in_stride) {
    case 1:
      ResampleRowT<1, 1>(in, f, out);
      break;
    case 3:
      ResampleRowT<3, 3>(in, f, out);
      break;
    default:
#if defined(__SSE2__)
      switch (f.fixed_taps) {
        case 0:
          ResampleRowT<4, 3>(in, f, out);
          break;
        case 2:
          ResampleRowRgbxSse2<1>(in, f, out);
          break;
        case 4:
          ResampleRowRgbxSse2<2>(in, f, out);
          break;
        case 6:
          ResampleRowRgbxSse2<3>(in, f, out);
          break;
        case 8:
          ResampleRowRgbxSse2<4>(in, f, out);
          break;
        default:
          ResampleRowRgbxSse2<0>(in, f, out);
          break;
      }
#else
      ResampleRowT<4, 3>(in, f, out);
#endif
      break;
  }
}

void ResampleColumns(const uint8_t* rows, size_t row_stride, int channels, int width, const AxisFilter& f,
                     bool flip, int32_t* acc, uint8_t* out) {
  const int n = width * channels;
  for (int y = 0; y < f.out_size; ++y) {
    std::fill(acc, acc + n, kHalf);
    const int32_t* w = &f.weights[static_cast<size_t>(y) * f.ksize];
    const uint8_t* src = rows + static_cast<size_t>(f.first[y]) * row_stride;
    for (int t = 0; t < f.count[y]; ++t, src += row_stride) {
      const int32_t wt = w[t];
      for (int i = 0; i < n; ++i) acc[i] += src[i] * wt;
    }
    uint8_t* dst = out + static_cast<size_t>(y) * width * 3;
    if (channels == 3) {
      if (!flip) {
        for (int i = 0; i < n; ++i) dst[i] = Clip8(acc[i]);
      } else {
        for (int x = 0; x < width; ++x) {
          uint8_t* d = dst + static_cast<size_t>(width - 1 - x) * 3;
          d[0] = Clip8(acc[x * 3 + 0]);
          d[1] = Clip8(acc[x * 3 + 1]);
          d[2] = Clip8(acc[x * 3 + 2]);
        }
      }
    } else {
      for (int x = 0; x < width; ++x) {
        const uint8_t v = Clip8(acc[x]);
        uint8_t* d = dst + static_cast<size_t>(flip ? width - 1 - x : x) * 3;
        d[0] = d[1] = d[2] = v;
      }
    }
  }
}

}  // namespace hivedata
