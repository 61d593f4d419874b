// libFuzzer harness for the pipeline's decode entry point: hivedata::DecodeCropResize (jpeg_decoder.cc:
// libjpeg-turbo decode of only the rows/columns the crop needs at a reduced DCT scale, then resample.cc's
// antialiased resize and the flip), plus ReadJpegHeader. Built by scripts/fuzz.sh with
// -fsanitize=fuzzer,address,undefined from the csrc/*.cc files directly (not the pybind module).
//
// Input layout (kept in sync with tests/unit/test_fuzz_replay.py, which replays the corpus through
// hivedata._native.decode_image):
//   byte 0      out_h = 1 + b0 % 97
//   byte 1      out_w = 1 + b1 % 97
//   byte 2      bit 0: train (else eval); bit 1: flip_p = 1 (else 0.5); bit 2: wide scale/ratio ranges
//               (scale 0.001..1, ratio 0.05..20); bit 3: eval_crop_ratio = 1 (else 0.875)
//   bytes 3..10 sample seed (little endian)
//   byte 11     max_pixels = (1 + b11 % 16) << 20   (1..16 MP: keeps one execution well under a second)
//   bytes 12..  the JPEG
// Checks beyond the sanitizers: a successful decode reports a source size within max_pixels, a DCT scale
// of 1, 2, 4 or 8 (/8) and a crop box inside the image; every status has a message.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "augment.h"
#include "jpeg_decoder.h"

namespace {

constexpr size_t kPrefix = 12;

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "decode_fuzzer: contract violated: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < kPrefix) return 0;
  hivedata::AugmentParams p;
  p.out_h = 1 + data[0] % 97;
  p.out_w = 1 + data[1] % 97;
  p.train = (data[2] & 1) != 0;
  p.flip_p = (data[2] & 2) ? 1.0 : 0.5;
  if (data[2] & 4) {
    p.scale_min = 0.001;
    p.scale_max = 1.0;
    p.ratio_min = 0.05;
    p.ratio_max = 20.0;
  }
  if (data[2] & 8) p.eval_crop_ratio = 1.0;
  uint64_t seed = 0;
  for (int i = 0; i < 8; ++i) seed |= static_cast<uint64_t>(data[3 + i]) << (8 * i);
  p.max_pixels = static_cast<int64_t>(1 + data[11] % 16) << 20;
  if (hivedata::CheckAugmentParams(p) != nullptr) Fail("harness built invalid AugmentParams");

  const uint8_t* jpeg = data + kPrefix;
  const size_t n = size - kPrefix;

  int w = 0, h = 0, c = 0;
  bool progressive = false;
  const hivedata::FetchStatus hs = hivedata::ReadJpegHeader(jpeg, n, &w, &h, &c, &progressive);
  if (hs.ok()) {
    if (w <= 0 || h <= 0 || c <= 0) Fail("header ok with a non-positive size or component count");
  } else if (hs.message.empty()) {
    Fail("header error without a message");
  }

  std::vector<uint8_t> out(static_cast<size_t>(p.out_h) * p.out_w * 3);
  hivedata::DecodeInfo info;
  const hivedata::FetchStatus st = hivedata::DecodeCropResize(jpeg, n, p, seed, out.data(), &info);
  if (!st.ok()) {
    if (st.message.empty()) Fail("decode error without a message");
    return 0;
  }
  if (!hs.ok()) Fail("decode succeeded where the header read failed");
  if (info.src_w != w || info.src_h != h) Fail("decode and header disagree on the size");
  if (static_cast<int64_t>(info.src_w) * info.src_h > p.max_pixels) Fail("decoded more than max_pixels");
  if (info.scale_num != 1 && info.scale_num != 2 && info.scale_num != 4 && info.scale_num != 8) Fail("bad scale");
  const auto& b = info.box;
  const double eps = 1e-6 * (info.src_w + info.src_h);
  if (!(b.w > 0 && b.h > 0 && b.x >= -eps && b.y >= -eps && b.x + b.w <= info.src_w + eps &&
        b.y + b.h <= info.src_h + eps)) {
    Fail("crop box outside the image");
  }
  // Read every output byte so ASan notices an output buffer that was never sized right.
  unsigned sum = 0;
  for (uint8_t v : out) sum += v;
  volatile unsigned sink = sum;
  (void)sink;
  return 0;
}
