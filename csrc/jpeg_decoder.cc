// libjpeg is C and reports fatal errors through error_exit, which here longjmps back to the
// setjmp in RunDecode / RunHeader. Rules that keep that well defined:
//  - everything that outlives a longjmp (libjpeg state, buffers, messages) lives in a Job owned by
//    the caller of the function that calls setjmp, never in that function's automatic variables;
//  - between setjmp and the last libjpeg call no automatic object with a non-trivial destructor is
//    alive (C++ helpers called in between finish before the next libjpeg call);
//  - after a longjmp the function only returns false; the caller destroys the libjpeg state.
#include "jpeg_decoder.h"

#include <algorithm>
#include <climits>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <new>
#include <vector>

// clang-format off
#include <jpeglib.h>  // needs <cstdio> first
#include <jerror.h>
// clang-format on

#include "resample.h"

namespace hivedata {
namespace {

constexpr int kRowsPerRead = 4;
// libjpeg-turbo's SIMD colour conversion writes 16/32-byte aligned output rows with non-temporal
// stores (movntdq), which bypass the cache: reading such a row right back for the horizontal pass
// then costs a trip to memory (measured: the horizontal pass 2.5x slower). Rows that start 4 bytes
// past a 64-byte boundary take the cached, unaligned store path instead.
constexpr size_t kRowMisalign = 4;

struct ErrorState {
  jpeg_error_mgr pub;  // first: libjpeg hands back cinfo->err, cast to ErrorState
  jmp_buf jump;
  ErrorKind kind;
  char message[JMSG_LENGTH_MAX + 96];
  bool strict;                       // any warning is an error
  int warnings;                      // warnings that did not refuse the file
  char warning[JMSG_LENGTH_MAX];     // the first of them
  long memory_limit;                 // cinfo.mem->max_memory_to_use
};

const char* KindLabel(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kImageTooLarge:
      return "JPEG too large to decode";
    case ErrorKind::kUnsupportedImage:
      return "unsupported JPEG";
    default:
      return "corrupt JPEG";
  }
}

[[noreturn]] void FailFromLibjpeg(j_common_ptr cinfo, ErrorKind kind, const char* how = "") {
  auto* e = reinterpret_cast<ErrorState*>(cinfo->err);
  char text[JMSG_LENGTH_MAX];
  text[0] = '\0';
  (*cinfo->err->format_message)(cinfo, text);
  e->kind = kind;
  std::snprintf(e->message, sizeof(e->message), "%s%s: %s", KindLabel(kind), how, text);
  longjmp(e->jump, 1);
}

void OnErrorExit(j_common_ptr cinfo) {
  switch (cinfo->err->msg_code) {
    case JERR_NO_BACKING_STORE: {  // libjpeg wanted more memory than max_memory_to_use
      auto* e = reinterpret_cast<ErrorState*>(cinfo->err);
      e->kind = ErrorKind::kImageTooLarge;
      std::snprintf(e->message, sizeof(e->message),
                    "JPEG too large to decode: libjpeg needs more than its limit of %ld MiB for this %ux%u %s JPEG",
                    e->memory_limit >> 20, reinterpret_cast<j_decompress_ptr>(cinfo)->image_width,
                    reinterpret_cast<j_decompress_ptr>(cinfo)->image_height,
                    reinterpret_cast<j_decompress_ptr>(cinfo)->progressive_mode ? "progressive" : "multi-scan");
      longjmp(e->jump, 1);
    }
    case JERR_OUT_OF_MEMORY:
    case JERR_IMAGE_TOO_BIG:     // a side over 65500 pixels
    case JERR_WIDTH_OVERFLOW:
      FailFromLibjpeg(cinfo, ErrorKind::kImageTooLarge);
    case JERR_SOF_UNSUPPORTED:   // lossless or hierarchical JPEG
    case JERR_BAD_PRECISION:     // 12- or 16-bit samples
    case JERR_ARITH_NOTIMPL:
    case JERR_NOT_COMPILED:
    case JERR_CONVERSION_NOTIMPL:
      FailFromLibjpeg(cinfo, ErrorKind::kUnsupportedImage);
    default:
      FailFromLibjpeg(cinfo, ErrorKind::kCorruptImage);
  }
}

// Warnings that mean pixels are missing or garbage: libjpeg-turbo would go on and fill the rest of
// the image with grey (or noise). Training must never see such an image, so they are errors.
bool IsFatalWarning(int code) {
  switch (code) {
    case JWRN_JPEG_EOF:       // Premature end of JPEG file
    case JWRN_HIT_MARKER:     // Corrupt JPEG data: premature end of data segment
    case JWRN_HUFF_BAD_CODE:  // Corrupt JPEG data: bad Huffman code
    case JWRN_ARITH_BAD_CODE:
    case JWRN_MUST_RESYNC:    // Corrupt JPEG data: found marker instead of RST (data lost)
      return true;
    default:
      return false;  // e.g. extraneous bytes before a marker, unknown JFIF revision: harmless
  }
}

// Any other warning (extraneous bytes before a marker, an inconsistent progression, invalid SOS parameters
// for a sequential JPEG, a bad ICC marker, an unknown JFIF revision...) refuses the file only in strict
// mode; otherwise it is counted and the first one kept, for stats and `hivedata verify`.
void OnEmitMessage(j_common_ptr cinfo, int msg_level) {
  if (msg_level >= 0) return;  // trace messages
  auto* e = reinterpret_cast<ErrorState*>(cinfo->err);
  cinfo->err->num_warnings++;
  if (IsFatalWarning(cinfo->err->msg_code)) FailFromLibjpeg(cinfo, ErrorKind::kCorruptImage);
  if (e->strict) FailFromLibjpeg(cinfo, ErrorKind::kCorruptImage, " (strict: a warning is an error)");
  if (e->warnings++ == 0) (*cinfo->err->format_message)(cinfo, e->warning);
}

void OnOutputMessage(j_common_ptr) {}  // never print

void OnProgress(j_common_ptr cinfo) {
  if (!cinfo->is_decompressor) return;
  auto* d = reinterpret_cast<j_decompress_ptr>(cinfo);
  if (d->input_scan_number > kMaxProgressiveScans) {
    auto* e = reinterpret_cast<ErrorState*>(cinfo->err);
    e->kind = ErrorKind::kCorruptImage;
    std::snprintf(e->message, sizeof(e->message), "corrupt JPEG: more than %d progressive scans",
                  kMaxProgressiveScans);
    longjmp(e->jump, 1);
  }
}

FetchStatus MakeStatus(ErrorKind kind, const char* message) {
  FetchStatus s;
  s.kind = kind;
  s.message = message;
  return s;
}

bool StartsWith(const uint8_t* d, size_t n, const char* magic, size_t len) {
  return n >= len && std::memcmp(d, magic, len) == 0;
}

// kNotJpeg for bytes that cannot be a JPEG, naming what they look like; ok otherwise.
FetchStatus CheckJpegSignature(const uint8_t* d, size_t n) {
  if (n >= 2 && d[0] == 0xFF && d[1] == 0xD8) return FetchStatus{};
  char buf[160];
  if (n == 0 || d == nullptr) return MakeStatus(ErrorKind::kNotJpeg, "not a JPEG: empty (0 bytes)");
  const char* what = nullptr;
  if (StartsWith(d, n, "\x89PNG\r\n\x1a\n", 8)) {
    what = "a PNG image";
  } else if (StartsWith(d, n, "GIF87a", 6) || StartsWith(d, n, "GIF89a", 6)) {
    what = "a GIF image";
  } else if (n >= 12 && StartsWith(d, n, "RIFF", 4) && std::memcmp(d + 8, "WEBP", 4) == 0) {
    what = "a WebP image";
  } else if (StartsWith(d, n, "BM", 2)) {
    what = "a BMP image";
  } else if (StartsWith(d, n, "II*\0", 4) || StartsWith(d, n, "MM\0*", 4)) {
    what = "a TIFF image";
  } else if (n >= 12 && std::memcmp(d + 4, "ftyp", 4) == 0) {
    what = "an ISO media file (HEIF/AVIF/MP4)";
  } else if (StartsWith(d, n, "\0\0\0\x0cjP  ", 8) || StartsWith(d, n, "\xFF\x4F\xFF\x51", 4)) {
    what = "a JPEG 2000 image";
  } else if (StartsWith(d, n, "\x1f\x8b", 2)) {
    what = "gzip data";
  } else if (StartsWith(d, n, "PK\x03\x04", 4)) {
    what = "a zip archive";
  } else if (StartsWith(d, n, "%PDF", 4)) {
    what = "a PDF document";
  } else {
    size_t i = 0;
    while (i < n && i < 16 && (d[i] == ' ' || d[i] == '\t' || d[i] == '\r' || d[i] == '\n')) ++i;
    if (i < n && d[i] == '<') what = "HTML/XML text";
  }
  if (what != nullptr) {
    std::snprintf(buf, sizeof(buf), "not a JPEG: looks like %s (%zu bytes)", what, n);
  } else if (n == 1) {
    std::snprintf(buf, sizeof(buf), "not a JPEG: 1 byte (0x%02x)", d[0]);
  } else {
    int len = std::snprintf(buf, sizeof(buf), "not a JPEG: starts with");
    for (size_t i = 0; i < n && i < 4; ++i) {
      len += std::snprintf(buf + len, sizeof(buf) - len, " 0x%02x", d[i]);
    }
    std::snprintf(buf + len, sizeof(buf) - len, " (%zu bytes)", n);
  }
  return MakeStatus(ErrorKind::kNotJpeg, buf);
}

// Everything one decode needs, owned outside the function that calls setjmp.
struct Job {
  jpeg_decompress_struct cinfo;
  ErrorState err;
  jpeg_progress_mgr progress;
  bool created = false;

  const uint8_t* data = nullptr;
  size_t size = 0;

  DecodeInfo info;
  std::vector<uint8_t> scan;  // kRowsPerRead decoded scanlines
  std::vector<uint8_t> rows;  // horizontally resampled rows of the crop
  std::vector<int32_t> acc;   // vertical-pass accumulators
  AxisFilter fx, fy;

  Job(const uint8_t* d, size_t n, int64_t max_pixels, bool strict) : data(d), size(n) {
    std::memset(&cinfo, 0, sizeof(cinfo));
    std::memset(&err, 0, sizeof(err));
    std::memset(&progress, 0, sizeof(progress));
    err.kind = ErrorKind::kOk;
    err.strict = strict;
    err.memory_limit = static_cast<long>(std::min<int64_t>(LibjpegMemoryLimit(max_pixels), LONG_MAX));
  }
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;
  ~Job() {
    if (created) jpeg_destroy_decompress(&cinfo);  // also valid after a failure half-way through
  }

  void Fail(ErrorKind kind, const char* message) {
    err.kind = kind;
    std::snprintf(err.message, sizeof(err.message), "%s", message);
  }

  FetchStatus Status() const {
    return err.kind == ErrorKind::kOk ? FetchStatus{} : MakeStatus(err.kind, err.message);
  }
};

// Error manager, libjpeg object and memory source. Call right after setjmp.
void Begin(Job* j) {
  j->cinfo.err = jpeg_std_error(&j->err.pub);
  j->err.pub.error_exit = OnErrorExit;
  j->err.pub.emit_message = OnEmitMessage;
  j->err.pub.output_message = OnOutputMessage;
  j->created = true;  // jpeg_destroy_decompress copes with a create that failed half-way
  jpeg_create_decompress(&j->cinfo);
  j->cinfo.mem->max_memory_to_use = j->err.memory_limit;  // honoured by realize_virt_arrays (jmemnobs)
  j->progress.progress_monitor = OnProgress;
  j->cinfo.progress = &j->progress;
  jpeg_mem_src(&j->cinfo, j->data, static_cast<unsigned long>(j->size));
}

bool RunHeader(Job* j) {
  if (setjmp(j->err.jump)) return false;
  Begin(j);
  jpeg_read_header(&j->cinfo, TRUE);
  return true;
}

// Pillow's cmyk2rgb applied to Adobe-polarity (inverted) CMYK, in place: CMYK -> RGB plus an unused
// fourth byte, so the row has the same layout as libjpeg's RGBX output.
void InvertedCmykToRgbx(uint8_t* row, int width) {
  for (int i = 0; i < width; ++i) {
    uint8_t* px = row + 4 * i;
    const int nk = px[3];
    for (int c = 0; c < 3; ++c) {
      const int t = (255 - px[c]) * nk + 128;                // MULDIV255(255 - raw, nk)
      px[c] = static_cast<uint8_t>(std::clamp(nk - (((t >> 8) + t) >> 8), 0, 255));
    }
  }
}

// The DCT scale: the smallest scale_num / 8 at which the crop still covers the output in both axes,
// among the scales libjpeg-turbo has SIMD IDCTs for (1/8, 2/8, 4/8, 8/8). The other eighths (3/8,
// 5/8, 6/8, 7/8, which also decode chroma at 6x6 .. 14x14) run plain-C IDCTs and were measured slower
// than decoding at the next power of two and resampling more: 500x375 eval 1.41 vs 1.32 ms,
// 1000x750 eval 3.32 vs 3.23 ms (and the larger intermediate is closer to a full decode).
int ChooseScaleNum(const CropBox& box, const AugmentParams& p) {
  for (int n : {1, 2, 4}) {
    if (box.w * n >= 8.0 * p.out_w && box.h * n >= 8.0 * p.out_h) return n;
  }
  return 8;
}

bool RunDecode(Job* j, const AugmentParams& p, uint64_t sample_seed, uint8_t* out) {
  j_decompress_ptr ci = &j->cinfo;
  if (setjmp(j->err.jump)) return false;
  Begin(j);
  jpeg_read_header(ci, TRUE);

  const int W = static_cast<int>(ci->image_width), H = static_cast<int>(ci->image_height);
  j->info.src_w = W;
  j->info.src_h = H;
  if (static_cast<int64_t>(W) * H > p.max_pixels) {
    std::snprintf(j->err.message, sizeof(j->err.message), "JPEG is %dx%d = %lld pixels, more than the limit of %lld",
                  W, H, static_cast<long long>(W) * H, static_cast<long long>(p.max_pixels));
    j->err.kind = ErrorKind::kImageTooLarge;
    return false;
  }

  int channels;   // per pixel after the horizontal pass: 1 (gray) or 3
  int in_stride;  // bytes per pixel in libjpeg's rows: 1 (gray) or 4 (RGBX, 4-byte pixels for SIMD)
  switch (ci->jpeg_color_space) {
    case JCS_GRAYSCALE:
      ci->out_color_space = JCS_GRAYSCALE;  // resampled as one channel, replicated to RGB on output
      channels = 1;
      in_stride = 1;
      break;
    case JCS_YCbCr:
    case JCS_RGB:
      ci->out_color_space = JCS_EXT_RGBX;
      channels = 3;
      in_stride = 4;
      break;
    case JCS_CMYK:
    case JCS_YCCK:
      ci->out_color_space = JCS_CMYK;  // libjpeg turns YCCK into CMYK; we turn CMYK into RGB per row
      channels = 3;
      in_stride = 4;
      break;
    default:
      std::snprintf(j->err.message, sizeof(j->err.message),
                    "unsupported JPEG: colour space %d with %d components", static_cast<int>(ci->jpeg_color_space),
                    ci->num_components);
      j->err.kind = ErrorKind::kUnsupportedImage;
      return false;
  }
  const bool cmyk = ci->out_color_space == JCS_CMYK;

  const CropBox box = ChooseCrop(W, H, p, sample_seed);
  const int scale_num = ChooseScaleNum(box, p);
  j->info.box = box;
  j->info.scale_num = scale_num;
  ci->scale_num = static_cast<unsigned int>(scale_num);
  ci->scale_denom = 8;
  ci->dct_method = JDCT_ISLOW;
  ci->do_fancy_upsampling = TRUE;
  jpeg_start_decompress(ci);

  // Filters in the scaled image's coordinates: scaled = source * scale_num / 8.
  const double f = scale_num / 8.0;
  const int sw = static_cast<int>(ci->output_width), sh = static_cast<int>(ci->output_height);
  BuildAxisFilter(sw, box.x * f, (box.x + box.w) * f, p.out_w, &j->fx);
  BuildAxisFilter(sh, box.y * f, (box.y + box.h) * f, p.out_h, &j->fy);
  if (j->fx.hi <= j->fx.lo || j->fy.hi <= j->fy.lo) {
    j->Fail(ErrorKind::kBadRequest, "empty crop");
    return false;
  }

  // Columns: one spare on each side keeps libjpeg's edge handling of a cropped region (chroma
  // upsampling) away from the columns the filter reads. jpeg_crop_scanline widens to an iMCU.
  const int x0 = std::max(0, j->fx.lo - 1), x1 = std::min(sw, j->fx.hi + 1);
  JDIMENSION xoff = 0, cw = static_cast<JDIMENSION>(sw);
  if (x0 > 0 || x1 < sw) {
    xoff = static_cast<JDIMENSION>(x0);
    cw = static_cast<JDIMENSION>(x1 - x0);
    jpeg_crop_scanline(ci, &xoff, &cw);
    if (static_cast<int>(xoff) > x0 || static_cast<int>(xoff + cw) < x1) {
      j->Fail(ErrorKind::kCorruptImage, "corrupt JPEG: libjpeg cropped a region that misses the crop");
      return false;
    }
  }
  ShiftAxisFilter(&j->fx, static_cast<int>(xoff));
  PrepareRowKernel(&j->fx, static_cast<int>(cw));

  // Rows: skip those above the crop, read through the last one the filter needs, then stop.
  const int y0 = j->fy.lo, y1 = j->fy.hi;
  if (y0 > 0 && jpeg_skip_scanlines(ci, static_cast<JDIMENSION>(y0)) != static_cast<JDIMENSION>(y0)) {
    j->Fail(ErrorKind::kCorruptImage, "corrupt JPEG: could not skip to the crop");
    return false;
  }
  ShiftAxisFilter(&j->fy, y0);

  const size_t scan_stride = (static_cast<size_t>(cw) * ci->output_components + 63) / 64 * 64;
  const size_t row_stride = static_cast<size_t>(p.out_w) * channels;
  j->scan.resize(scan_stride * kRowsPerRead + 128);  // room to align the first row
  j->rows.resize(row_stride * (y1 - y0));
  j->acc.resize(row_stride);
  JSAMPROW lines[kRowsPerRead];
  // vector storage comes from operator new: at least 16-byte aligned; rows then start 4 bytes past
  uint8_t* base = j->scan.data() + ((64 - reinterpret_cast<uintptr_t>(j->scan.data()) % 64) % 64) + kRowMisalign;
  for (int i = 0; i < kRowsPerRead; ++i) lines[i] = base + scan_stride * i;
  while (static_cast<int>(ci->output_scanline) < y1) {
    const int first = static_cast<int>(ci->output_scanline);
    const JDIMENSION want = static_cast<JDIMENSION>(std::min(kRowsPerRead, y1 - first));
    const JDIMENSION got = jpeg_read_scanlines(ci, lines, want);
    if (got == 0) {
      j->Fail(ErrorKind::kCorruptImage, "corrupt JPEG: no more scanlines");
      return false;
    }
    for (JDIMENSION r = 0; r < got; ++r) {
      uint8_t* line = lines[r];
      if (cmyk) InvertedCmykToRgbx(line, static_cast<int>(cw));
      ResampleRow(line, in_stride, j->fx, j->rows.data() + row_stride * (first + r - y0));
    }
  }
  // The rest of the file, so that the verdict does not depend on the crop: the rows below the crop are
  // entropy-decoded and dropped (jpeg_skip_scanlines runs no IDCT for whole iMCU rows), the last one read
  // (skipping to the very end would skip the decoding too), then jpeg_finish_decompress reads the markers
  // through EOI. A progressive JPEG was read to EOI by jpeg_start_decompress already.
  const int rest = sh - static_cast<int>(ci->output_scanline);
  if (rest > 1 && jpeg_skip_scanlines(ci, static_cast<JDIMENSION>(rest - 1)) != static_cast<JDIMENSION>(rest - 1)) {
    j->Fail(ErrorKind::kCorruptImage, "corrupt JPEG: could not skip past the crop");
    return false;
  }
  if (rest > 0 && jpeg_read_scanlines(ci, lines, 1) != 1) {
    j->Fail(ErrorKind::kCorruptImage, "corrupt JPEG: no last scanline");
    return false;
  }
  jpeg_finish_decompress(ci);

  ResampleColumns(j->rows.data(), row_stride, channels, p.out_w, j->fy, box.flip, j->acc.data(), out);
  return true;
}

}  // namespace

int64_t LibjpegMemoryLimit(int64_t max_pixels) {
  constexpr int64_t kSlack = int64_t{16} << 20;
  constexpr int64_t kMaxPixels = (INT64_MAX - kSlack) / 3;
  return 3 * std::clamp<int64_t>(max_pixels, 0, kMaxPixels) + kSlack;
}

FetchStatus DecodeCropResize(const uint8_t* data, size_t size, const AugmentParams& p, uint64_t sample_seed,
                             uint8_t* out, DecodeInfo* info) {
  if (const char* bad = CheckAugmentParams(p)) return MakeStatus(ErrorKind::kBadRequest, bad);
  if (out == nullptr) return MakeStatus(ErrorKind::kBadRequest, "no output buffer");
  FetchStatus sig = CheckJpegSignature(data, size);
  if (!sig.ok()) return sig;
  Job job(data, size, p.max_pixels, p.strict);
  bool ok;
  try {
    ok = RunDecode(&job, p, sample_seed, out);
  } catch (const std::bad_alloc&) {
    job.Fail(ErrorKind::kImageTooLarge, "JPEG too large to decode: out of memory");
    ok = false;
  }
  if (info != nullptr) {
    *info = job.info;
    info->warnings = job.err.warnings;
    if (job.err.warnings > 0) info->warning = job.err.warning;
  }
  if (ok) return FetchStatus{};
  if (job.err.kind == ErrorKind::kOk) job.Fail(ErrorKind::kCorruptImage, "corrupt JPEG");
  return job.Status();
}

FetchStatus ReadJpegHeader(const uint8_t* data, size_t size, int* width, int* height, int* components,
                           bool* progressive) {
  FetchStatus sig = CheckJpegSignature(data, size);
  if (!sig.ok()) return sig;
  Job job(data, size, AugmentParams{}.max_pixels, false);
  if (!RunHeader(&job)) {
    if (job.err.kind == ErrorKind::kOk) job.Fail(ErrorKind::kCorruptImage, "corrupt JPEG");
    return job.Status();
  }
  if (width) *width = static_cast<int>(job.cinfo.image_width);
  if (height) *height = static_cast<int>(job.cinfo.image_height);
  if (components) *components = job.cinfo.num_components;
  if (progressive) *progressive = job.cinfo.progressive_mode != 0;
  return FetchStatus{};
}

}  // namespace hivedata
