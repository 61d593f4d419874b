// Lock-free log-scale latency histogram (about 9% bucket width) for p50/p99 figures.
#pragma once

#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>

namespace hivedata {

class LatencyHistogram {
 public:
  static constexpr int kBuckets = 256;  // 8 buckets per doubling from 1 us: covers ~4.3 hours

  void Record(double seconds) {
    double us = seconds * 1e6;
    int b = us <= 1.0 ? 0 : static_cast<int>(std::log2(us) * 8.0);
    if (b >= kBuckets) b = kBuckets - 1;
    counts_[b].fetch_add(1, std::memory_order_relaxed);
  }

  // Upper edge of the bucket holding quantile q (0..1), in seconds; 0 when empty.
  double Quantile(double q) const {
    uint64_t total = 0;
    std::array<uint64_t, kBuckets> snap;
    for (int i = 0; i < kBuckets; ++i) total += (snap[i] = counts_[i].load(std::memory_order_relaxed));
    if (total == 0) return 0.0;
    uint64_t rank = static_cast<uint64_t>(std::ceil(q * static_cast<double>(total)));
    if (rank == 0) rank = 1;
    uint64_t seen = 0;
    for (int i = 0; i < kBuckets; ++i) {
      seen += snap[i];
      if (seen >= rank) return std::exp2((i + 1) / 8.0) * 1e-6;
    }
    return std::exp2(kBuckets / 8.0) * 1e-6;
  }

 private:
  std::array<std::atomic<uint64_t>, kBuckets> counts_{};
};

}  // namespace hivedata
