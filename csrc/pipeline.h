// Batch pipeline: fetch each sample of a batch (fetch engine) into a caller-owned arena, then decode,
// crop, resize and flip it (thread pool) straight into the caller-owned output slot. No Python on the
// per-image path. A batch is reported once every one of its samples has finished or failed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "augment.h"
#include "fetch_engine.h"
#include "fetch_status.h"
#include "process_owner.h"

namespace hivedata {

struct PipelineOptions {
  EngineOptions fetch;
  int threads = 0;      // decode threads; 0: one per core
  bool decode = true;   // false: fetch only (another backend decodes the arena)
  int checksum_rereads = 2;  // an item whose bytes fail their crc32c is read again at most this often
  AugmentParams augment;
};

// One sample of a batch: where its bytes are in the arena, the seed its crop is drawn from, and the
// CRC-32C its bytes must have when one is known (a packed shard's index records it per member).
struct PipelineItem {
  uint64_t sample_seed = 0;
  size_t offset = 0;  // where this sample's bytes start in the arena
  size_t size = 0;    // bytes reserved for it (the object's size, or the member's)
  bool has_crc = false;
  uint32_t crc32c = 0;  // expected CRC-32C of its bytes (has_crc)
};

// One GET that fills the bytes of one or more items: a whole object (one item), or a byte range of an
// object (a shard) holding several adjacent members (the gaps between them are read and ignored); or
// bytes already in the arena (present: a cache hit, an in-memory dataset), which are only decoded.
struct PipelineSpan {
  std::string object;
  int64_t generation = 0;  // 0: any
  int64_t start = -1;      // first byte in the object; -1: the whole object (exactly one item)
  size_t length = 0;       // bytes to read (for a whole object: the bytes reserved for it)
  size_t offset = 0;       // where they land in the arena
  bool present = false;
  std::vector<size_t> items;  // indices into the batch's items; item i lies at offset + (its range - start)
};

struct SampleResult {
  FetchStatus status;
  size_t nbytes = 0;  // encoded bytes
};

struct BatchResult {
  uint64_t batch_id = 0;
  std::string bucket;
  std::vector<std::string> objects;  // per sample: the object its bytes came from
  std::vector<SampleResult> samples;
  double decode_s = 0.0;  // summed over samples (thread time)
};

struct PipelineStats {
  uint64_t batches = 0, decoded = 0, decode_errors = 0;
  uint64_t gets = 0, present = 0;  // GETs submitted (a coalesced span counts once); spans already in the arena
  uint64_t splits = 0;             // failed coalesced GETs retried one member at a time
  uint64_t verified = 0;           // items whose bytes matched their expected crc32c
  uint64_t unverified = 0;         // items without an expected crc32c (decoded as received)
  uint64_t checksum_retries = 0;   // GETs issued again because an item's bytes failed their crc32c
  uint64_t checksum_errors = 0;    // items that still failed their crc32c (ErrorKind::kChecksum)
  uint64_t decode_warnings = 0;    // items decoded although libjpeg warned (AugmentParams::strict off)
  std::vector<std::string> warned;  // "<name>: <first warning>" of the first kMaxWarnedNames of them
  double decode_s = 0.0;
  uint64_t batches_in_flight = 0;
  EngineStats fetch;
};

// How many items with warnings PipelineStats::warned names (decode_warnings counts them all).
constexpr size_t kMaxWarnedNames = 1000;

class Pipeline {
 public:
  explicit Pipeline(PipelineOptions options);
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  void SetToken(std::string token);
  // Throws before taking the batch (std::invalid_argument, or std::runtime_error when a thread cannot
  // start: nothing is left running) or takes it for good: once taken, a batch always completes, a GET that
  // could not be submitted failing its samples. `arena` holds the encoded bytes; `out` (decode mode) receives items.size() images of
  // out_h*out_w*3 bytes each. Both must stay valid until the batch is polled. `spans` say which GET
  // fills which items; every item lies in exactly one span (std::invalid_argument otherwise). An item
  // with a crc32c is checked once its bytes are there, before it is decoded or reported done: a
  // mismatch reads it again (alone), up to options.checksum_rereads times, then fails with kChecksum.
  void Submit(uint64_t batch_id, const std::string& bucket, std::vector<PipelineItem> items,
              std::vector<PipelineSpan> spans, uint8_t* arena, size_t arena_size, uint8_t* out);
  // Takes one finished batch, waiting up to timeout_s; false when none finished in time (or after Shutdown).
  bool Poll(BatchResult* out, double timeout_s);
  // Asks every unfinished fetch and decode to stop and returns at once; the batches still complete (with
  // kCancelled samples) and arrive through Poll.
  void RequestCancelAll();
  // Stops and joins every thread for good (the fetch engine's first: nothing writes into an arena or output
  // slot afterwards) and wakes every Poll; Submit then throws. Idempotent; not concurrent with Submit.
  void Shutdown();
  size_t Outstanding() const;  // batches submitted and not yet polled
  bool TokenWanted() const;    // a GET refused with 401 waits for SetToken (a fresh token)
  PipelineStats Stats() const;
  const PipelineOptions& options() const { return options_; }

 private:
  struct State;
  State* state();

  PipelineOptions options_;
  State* state_ = nullptr;  // abandoned (never freed) in a forked child: its locks may be held
  ProcessOwner owner_;
};

}  // namespace hivedata
