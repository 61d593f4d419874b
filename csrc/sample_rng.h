// Per-sample random numbers: a seed derived from (seed, epoch, index) and a small splitmix64 stream.
// Every random choice for one sample (crop, flip) comes from SampleRng(SampleSeed(...)), so results
// do not depend on which thread decodes the sample or in what order.
#pragma once

#include <cstdint>

namespace hivedata {

// splitmix64's output function applied to z + golden gamma: a bijection on 64-bit values.
inline uint64_t SplitMix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// The seed of one sample in one epoch.
inline uint64_t SampleSeed(uint64_t seed, uint64_t epoch, uint64_t index) {
  return SplitMix64(SplitMix64(SplitMix64(seed) + epoch) + index);
}

// splitmix64 stream; cheap to construct, one per sample.
class SampleRng {
 public:
  explicit SampleRng(uint64_t s) : state_(s) {}

  uint64_t Next() {
    state_ += 0x9E3779B97F4A7C15ULL;
    uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }

  // Uniform in [0, 1) with 53 random bits.
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

  // Uniform in [a, b) (a when a == b).
  double Uniform(double a, double b) { return a + (b - a) * Uniform(); }

  // Uniform integer in [0, n), unbiased; 0 when n <= 1. Always draws (like torch.randint), so the
  // rest of the stream does not depend on n.
  uint64_t Below(uint64_t n) {
    if (n <= 1) {
      Next();
      return 0;
    }
    const uint64_t threshold = (0 - n) % n;  // 2^64 mod n: values below it would bias the modulo
    for (;;) {
      const uint64_t r = Next();
      if (r >= threshold) return r % n;
    }
  }

 private:
  uint64_t state_;
};

}  // namespace hivedata
