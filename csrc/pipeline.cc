#include "pipeline.h"


#include <atomic>
#include <chrono>
#include <cstdio>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <unordered_map>

#include "crc32c.h"
#include "gcs_url.h"
#include "jpeg_decoder.h"
#include "thread_pool.h"

namespace hivedata {
namespace {

constexpr int kIndexBits = 24;  // samples per batch < 16 M
constexpr uint64_t kIndexMask = (uint64_t{1} << kIndexBits) - 1;

}  // namespace

struct Batch {
  uint64_t id = 0;  // internal, unique
  uint64_t batch_id = 0;
  std::string bucket;
  std::vector<PipelineItem> items;
  std::vector<PipelineSpan> spans;
  std::vector<size_t> span_of;  // per item: the span that holds it (the last one, after a split)
  std::vector<uint8_t> rereads;  // per span (room for every split span): checksum re-reads done so far
  std::vector<SampleResult> results;
  uint8_t* arena = nullptr;
  size_t arena_size = 0;
  uint8_t* out = nullptr;
  std::atomic<size_t> remaining{0};
  std::atomic<bool> cancelled{false};
  std::atomic<uint64_t> decode_ns{0};
};

struct Pipeline::State {
  explicit State(const PipelineOptions& o) : opt(o), engine(o.fetch) {
    threads = opt.threads > 0 ? opt.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }

  ~State() {
    Stop();
    for (auto& kv : live) delete kv.second;
    for (Batch* b : done) delete b;
  }

  // Starts the decode pool, the fetch engine's I/O thread and the dispatcher once. A thread that cannot
  // start is an exception; the pool then is gone again and nothing is marked started, so a later call
  // tries again (an engine whose I/O thread did start keeps it, idle, until Stop).
  void EnsureStarted() {
    std::lock_guard<std::mutex> lock(mu);
    if (stop) throw std::runtime_error("the pipeline is closed");
    if (started) return;
    if (opt.decode) pool = std::make_unique<ThreadPool>(threads);  // throws with none of its threads left
    try {
      engine.Start();
      dispatcher = std::thread([this] { Dispatch(); });
    } catch (const std::system_error& e) {
      pool.reset();
      throw std::runtime_error(std::string("could not start the pipeline's dispatcher thread (") + e.what() +
                               "): too many threads for this process or user (RLIMIT_NPROC, pids cgroup)?");
    } catch (...) {
      pool.reset();
      throw;
    }
    started = true;
  }

  // Stops every thread for good: the engine first (no GET writes into an arena any more, and the dispatcher's
  // Poll returns), then the dispatcher, then the pool (its queued decodes run to completion). Wakes every Poll.
  void Stop() {
    engine.Shutdown();
    {
      std::lock_guard<std::mutex> lock(mu);
      stop = true;
    }
    {
      std::lock_guard<std::mutex> join_lock(join_mu);
      if (dispatcher.joinable()) dispatcher.join();
      pool.reset();
    }
    done_cv.notify_all();
  }

  void Dispatch() {
    std::vector<FetchResult> results;
    while (true) {
      {
        std::lock_guard<std::mutex> lock(mu);
        if (stop) return;
      }
      results.clear();
      engine.Poll(&results, 1024, 0.05);
      for (FetchResult& r : results) {
        Batch* b;
        {
          std::lock_guard<std::mutex> lock(mu);
          auto it = live.find(r.tag >> kIndexBits);
          if (it == live.end()) continue;
          b = it->second;
        }
        FinishSpan(b, static_cast<size_t>(r.tag & kIndexMask), std::move(r));
      }
    }
  }

  // The GET that fills span k of batch b.
  static FetchRequest Request(const Batch* b, size_t k) {
    const PipelineSpan& sp = b->spans[k];
    FetchRequest r;
    r.tag = (b->id << kIndexBits) | k;
    r.bucket = b->bucket;
    r.object = sp.object;
    r.generation = sp.generation;
    r.dst = b->arena + sp.offset;
    r.capacity = sp.length;
    if (sp.start >= 0) {
      r.offset = sp.start;
      r.length = static_cast<int64_t>(sp.length);
    }
    return r;
  }

  // A coalesced GET that failed for a reason that may not hold for each member alone (a short or
  // unsatisfiable range, a server or network error after its retries) is retried as one GET per member.
  static bool WorthSplitting(const FetchStatus& st) {
    return st.kind == ErrorKind::kBadRange || st.kind == ErrorKind::kHttp || st.kind == ErrorKind::kNetwork ||
           st.kind == ErrorKind::kChecksum;
  }

  // Starts spans [first, end) of b: a GET for each missing span, decode for the present (and empty) ones.
  // Present spans finish before the GETs are submitted, so no dispatcher work on b runs alongside; b may
  // be freed once the last of them finishes, so the requests are built first.
  void Launch(Batch* b, size_t first) {
    std::vector<FetchRequest> reqs;
    std::vector<std::pair<size_t, size_t>> ready;  // (span, bytes)
    for (size_t k = first; k < b->spans.size(); ++k) {
      PipelineSpan& sp = b->spans[k];
      if (sp.start >= 0 && sp.length == 0) sp.present = true;  // an empty member: nothing to GET
      if (sp.present) {
        ready.emplace_back(k, sp.length);
      } else {
        reqs.push_back(Request(b, k));
      }
    }
    gets.fetch_add(reqs.size(), std::memory_order_relaxed);
    present.fetch_add(ready.size(), std::memory_order_relaxed);
    for (const auto& [k, nbytes] : ready) {
      FetchResult r;
      r.nbytes = nbytes;
      FinishSpan(b, k, std::move(r));
    }
    SubmitOrFail(b, std::move(reqs));
  }

  // Submits the GETs of b; when the engine refuses them (closed, out of memory), their spans fail instead,
  // so that the batch still completes. b may be freed once the last of them finishes.
  void SubmitOrFail(Batch* b, std::vector<FetchRequest> reqs) {
    if (reqs.empty()) return;
    std::vector<size_t> spans;
    spans.reserve(reqs.size());
    for (const FetchRequest& r : reqs) spans.push_back(static_cast<size_t>(r.tag & kIndexMask));
    std::string why;
    try {
      engine.Submit(std::move(reqs));
      return;
    } catch (const std::exception& e) {
      why = e.what();
    }
    for (size_t k : spans) {
      FetchResult r;  // attempts == 0: a GET that never ran is not split (each member would be refused alike)
      r.status = FetchStatus{ErrorKind::kNetwork, 0, 0,
                             "could not submit the GET of " + GcsUri(b->bucket, b->spans[k].object) + ": " + why};
      FinishSpan(b, k, std::move(r));
    }
  }

  // Moves `members` of span `span_no` into spans of their own (one GET each) and starts them; `rereads` is
  // what each new span starts counting checksum re-reads from. Only the dispatcher thread calls this once
  // the batch's GETs are submitted, so growing b->spans is safe.
  void SplitSpan(Batch* b, size_t span_no, const std::vector<size_t>& members, uint8_t rereads) {
    const size_t first = b->spans.size();
    const PipelineSpan whole = b->spans[span_no];  // copied: push_back below may move it
    for (size_t i : members) {
      const PipelineItem& it = b->items[i];
      PipelineSpan one;
      one.object = whole.object;
      one.generation = whole.generation;
      one.start = whole.start + static_cast<int64_t>(it.offset - whole.offset);
      one.length = it.size;
      one.offset = it.offset;
      one.items = {i};
      b->span_of[i] = b->spans.size();
      b->rereads[b->spans.size()] = rereads;
      b->spans.push_back(std::move(one));
    }
    Launch(b, first);
  }

  // Whether item i's `nbytes` bytes in the arena have its expected crc32c (true when it has none).
  bool CrcMatches(const Batch* b, size_t i, size_t nbytes, uint32_t* got) const {
    const PipelineItem& it = b->items[i];
    if (!it.has_crc) return true;
    *got = Crc32c(b->arena + it.offset, nbytes);
    return *got == it.crc32c;
  }

  FetchStatus ChecksumFailure(const Batch* b, size_t span_no, size_t i, size_t nbytes, uint32_t got) const {
    const PipelineSpan& sp = b->spans[span_no];
    const PipelineItem& it = b->items[i];
    char crcs[64];
    std::snprintf(crcs, sizeof crcs, "expected %08x, got %08x", it.crc32c, got);
    std::string where = Describe(b, i);
    if (sp.start >= 0) {
      const size_t at = static_cast<size_t>(sp.start) + (it.offset - sp.offset);
      where += " bytes " + std::to_string(at) + ".." + std::to_string(at + nbytes);
    }
    const std::string how = sp.present ? "bytes already present: a cache hit or memory"
                                       : "read " + std::to_string(b->rereads[span_no] + 1u) + " times";
    return FetchStatus{ErrorKind::kChecksum, 0, 0, "crc32c mismatch in " + where + " (" + crcs + "; " + how + ")"};
  }

  // A span's GET ended (or its bytes were present): every item it holds fails with its status, is read
  // again (its bytes failed their crc32c and re-reads are left), or goes on to decode.
  // The batch may be completed (and freed by Poll) as soon as its last item finishes, so the span's item
  // list is copied first, items to read again are started before any other item finishes, and `b` is
  // touched only for items not yet finished.
  void FinishSpan(Batch* b, size_t span_no, FetchResult r) {
    const std::vector<size_t> items = b->spans[span_no].items;
    const bool whole = b->spans[span_no].start < 0;
    const bool cancelled = b->cancelled.load(std::memory_order_relaxed);
    if (!r.status.ok() && items.size() > 1 && !whole && WorthSplitting(r.status) && !cancelled && r.attempts > 0) {
      splits.fetch_add(1, std::memory_order_relaxed);
      SplitSpan(b, span_no, items, b->rereads[span_no]);
      return;
    }
    std::vector<size_t> go, again;  // items that finish now; items read again
    go.reserve(items.size());
    for (size_t i : items) {
      if (!r.status.ok()) {
        b->results[i].status = r.status;
        go.push_back(i);
        continue;
      }
      const size_t nbytes = whole ? r.nbytes : b->items[i].size;
      b->results[i].nbytes = nbytes;
      uint32_t got = 0;
      if (!b->items[i].has_crc) {
        unverified.fetch_add(1, std::memory_order_relaxed);
      } else if (CrcMatches(b, i, nbytes, &got)) {
        verified.fetch_add(1, std::memory_order_relaxed);
      } else if (!b->spans[span_no].present && !cancelled && b->rereads[span_no] < opt.checksum_rereads) {
        again.push_back(i);
        continue;
      } else {
        checksum_errors.fetch_add(1, std::memory_order_relaxed);
        b->results[i].status = ChecksumFailure(b, span_no, i, nbytes, got);
      }
      go.push_back(i);
    }
    if (!again.empty()) {  // unfinished until their new GETs end: b stays alive below
      checksum_retries.fetch_add(again.size(), std::memory_order_relaxed);
      if (items.size() == 1) {  // the same span once more
        ++b->rereads[span_no];
        gets.fetch_add(1, std::memory_order_relaxed);
        SubmitOrFail(b, {Request(b, span_no)});
      } else {  // only the members that failed, one GET each
        SplitSpan(b, span_no, again, static_cast<uint8_t>(b->rereads[span_no] + 1));
      }
    }
    for (size_t i : go) {
      if (!b->results[i].status.ok() || !opt.decode) {
        FinishSample(b);
      } else {
        pool->Post([this, b, i] { DecodeOne(b, i); });
      }
    }
  }

  void DecodeOne(Batch* b, size_t i) {
    SampleResult& res = b->results[i];
    if (b->cancelled.load(std::memory_order_relaxed)) {
      res.status = FetchStatus{ErrorKind::kCancelled, 0, 0, "cancelled: " + Describe(b, i)};
      FinishSample(b);
      return;
    }
    const PipelineItem& it = b->items[i];
    const size_t image_bytes = static_cast<size_t>(opt.augment.out_h) * opt.augment.out_w * 3;
    auto t0 = std::chrono::steady_clock::now();
    DecodeInfo info;
    FetchStatus st = DecodeCropResize(b->arena + it.offset, res.nbytes, opt.augment, it.sample_seed,
                                      b->out + i * image_bytes, &info);
    uint64_t ns = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count());
    b->decode_ns.fetch_add(ns, std::memory_order_relaxed);
    decode_ns.fetch_add(ns, std::memory_order_relaxed);
    if (st.ok()) {
      decoded.fetch_add(1, std::memory_order_relaxed);
      if (info.warnings > 0) NoteWarning(Describe(b, i) + ": " + info.warning);
    } else {
      decode_errors.fetch_add(1, std::memory_order_relaxed);
      st.message = Describe(b, i) + ": " + st.message;
      res.status = std::move(st);
    }
    FinishSample(b);
  }

  void NoteWarning(std::string what) {
    decode_warnings.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(warned_mu);
    if (warned.size() < kMaxWarnedNames) warned.push_back(std::move(what));
  }

  static const std::string& ObjectOf(const Batch* b, size_t i) { return b->spans[b->span_of[i]].object; }
  // gs://bucket/object, or the object's name alone when the batch has no bucket (bytes from memory)
  static std::string Describe(const Batch* b, size_t i) {
    return b->bucket.empty() ? ObjectOf(b, i) : GcsUri(b->bucket, ObjectOf(b, i));
  }

  void FinishSample(Batch* b) {
    if (b->remaining.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    {
      std::lock_guard<std::mutex> lock(mu);
      live.erase(b->id);
      done.push_back(b);
    }
    done_cv.notify_all();
  }

  PipelineOptions opt;
  FetchEngine engine;
  int threads = 1;
  std::unique_ptr<ThreadPool> pool;
  std::thread dispatcher;
  std::mutex join_mu;  // one Stop() joins at a time

  mutable std::mutex mu;  // guards the members below
  std::condition_variable done_cv;
  std::unordered_map<uint64_t, Batch*> live;  // internal id -> batch
  std::deque<Batch*> done;
  uint64_t next_id = 1;
  bool stop = false;
  bool started = false;

  std::atomic<uint64_t> outstanding{0}, batches{0}, decoded{0}, decode_errors{0}, decode_ns{0};
  std::atomic<uint64_t> gets{0}, present{0}, splits{0};
  std::atomic<uint64_t> verified{0}, unverified{0}, checksum_retries{0}, checksum_errors{0};
  std::atomic<uint64_t> decode_warnings{0};
  mutable std::mutex warned_mu;  // guards warned
  std::vector<std::string> warned;
};

Pipeline::Pipeline(PipelineOptions options) : options_(std::move(options)) {
  const AugmentParams& a = options_.augment;
  if (options_.decode && (a.out_h <= 0 || a.out_w <= 0)) throw std::invalid_argument("output size must be positive");
  if (options_.checksum_rereads < 0 || options_.checksum_rereads > 16) {
    throw std::invalid_argument("checksum_rereads must be within 0..16");
  }
  state_ = new State(options_);
}

Pipeline::~Pipeline() {
  if (owner_.Current()) delete state_;
}

Pipeline::State* Pipeline::state() {
  if (owner_.AdoptIfForked()) state_ = new State(options_);  // forked child: never touch the parent's state
  return state_;
}

void Pipeline::Shutdown() {
  if (owner_.Current()) state_->Stop();  // in a forked child nothing of ours runs
}

void Pipeline::SetToken(std::string token) { state()->engine.SetToken(std::move(token)); }

namespace {

// Every span inside the arena and non-empty, every item in exactly one span and inside it (a whole-object
// span holds one item, exactly); returns the span of each item.
std::vector<size_t> CheckSpans(const std::string& bucket, const std::vector<PipelineItem>& items,
                               const std::vector<PipelineSpan>& spans, size_t arena_size) {
  constexpr size_t kNone = static_cast<size_t>(-1);
  std::vector<size_t> span_of(items.size(), kNone);
  for (size_t k = 0; k < spans.size(); ++k) {
    const PipelineSpan& sp = spans[k];
    const std::string what = GcsUri(bucket, sp.object);
    if (sp.items.empty()) throw std::invalid_argument("a span of " + what + " holds no item");
    if (sp.offset + sp.length > arena_size || sp.offset + sp.length < sp.offset) {
      throw std::invalid_argument("arena too small for a span of " + what);
    }
    if (sp.start < 0 && sp.items.size() != 1) throw std::invalid_argument("a whole-object span holds one item");
    for (size_t i : sp.items) {
      if (i >= items.size() || span_of[i] != kNone) throw std::invalid_argument("span items must name each item once");
      span_of[i] = k;
      const PipelineItem& it = items[i];
      bool fits = sp.start < 0 ? (it.offset == sp.offset && it.size == sp.length)
                               : (it.offset >= sp.offset && it.offset - sp.offset <= sp.length &&
                                  it.size <= sp.length - (it.offset - sp.offset));
      if (!fits) throw std::invalid_argument("item " + std::to_string(i) + " of " + what + " lies outside its span");
    }
  }
  for (size_t i = 0; i < items.size(); ++i) {
    if (span_of[i] == kNone) throw std::invalid_argument("item " + std::to_string(i) + " is in no span");
  }
  return span_of;
}

}  // namespace

void Pipeline::Submit(uint64_t batch_id, const std::string& bucket, std::vector<PipelineItem> items,
                      std::vector<PipelineSpan> spans, uint8_t* arena, size_t arena_size, uint8_t* out) {
  State* s = state();
  if (items.size() > kIndexMask / 2) throw std::invalid_argument("batch too large");  // split spans need tags too
  std::vector<size_t> span_of = CheckSpans(bucket, items, spans, arena_size);
  if (s->opt.decode && out == nullptr && !items.empty()) throw std::invalid_argument("decode mode needs an output slot");
  s->EnsureStarted();
  auto* b = new Batch;
  b->batch_id = batch_id;
  b->bucket = bucket;
  b->items = std::move(items);
  b->spans = std::move(spans);
  // a split adds one span per item of the failed span, at most once per item: reserving that much keeps
  // b->spans from moving while decode threads read it (ObjectOf)
  b->spans.reserve(b->spans.size() + b->items.size());
  b->span_of = std::move(span_of);
  b->rereads.assign(b->spans.capacity(), 0);
  b->results.resize(b->items.size());
  b->arena = arena;
  b->arena_size = arena_size;
  b->out = out;
  b->remaining.store(b->items.size());
  s->outstanding.fetch_add(1);
  s->batches.fetch_add(1);
  uint64_t id;
  {
    std::lock_guard<std::mutex> lock(s->mu);
    id = s->next_id++;
    b->id = id;
    if (b->items.empty()) {
      s->done.push_back(b);
      s->done_cv.notify_all();
      return;
    }
    s->live.emplace(id, b);
  }
  s->Launch(b, 0);
}

bool Pipeline::Poll(BatchResult* out, double timeout_s) {
  State* s = state();
  Batch* b = nullptr;
  {
    std::unique_lock<std::mutex> lock(s->mu);
    if (s->done.empty() && timeout_s > 0) {
      s->done_cv.wait_for(lock, std::chrono::duration<double>(timeout_s), [s] { return s->stop || !s->done.empty(); });
    }
    if (s->done.empty()) return false;
    b = s->done.front();
    s->done.pop_front();
  }
  s->outstanding.fetch_sub(1);
  out->batch_id = b->batch_id;
  out->bucket = b->bucket;
  out->objects.clear();
  for (size_t i = 0; i < b->items.size(); ++i) out->objects.push_back(State::ObjectOf(b, i));
  out->samples = std::move(b->results);
  out->decode_s = static_cast<double>(b->decode_ns.load()) * 1e-9;
  delete b;
  return true;
}

void Pipeline::RequestCancelAll() {
  State* s = state();
  {
    std::lock_guard<std::mutex> lock(s->mu);
    for (auto& kv : s->live) kv.second->cancelled.store(true);
  }
  s->engine.RequestCancelAll();
}

size_t Pipeline::Outstanding() const {
  if (!owner_.Current()) return 0;
  return state_->outstanding.load();
}

bool Pipeline::TokenWanted() const {
  if (!owner_.Current()) return false;
  return state_->engine.TokenWanted();
}

PipelineStats Pipeline::Stats() const {
  PipelineStats st;
  if (!owner_.Current()) return st;
  st.batches = state_->batches.load();
  st.decoded = state_->decoded.load();
  st.decode_errors = state_->decode_errors.load();
  st.decode_s = static_cast<double>(state_->decode_ns.load()) * 1e-9;
  st.gets = state_->gets.load();
  st.present = state_->present.load();
  st.splits = state_->splits.load();
  st.verified = state_->verified.load();
  st.unverified = state_->unverified.load();
  st.checksum_retries = state_->checksum_retries.load();
  st.checksum_errors = state_->checksum_errors.load();
  st.decode_warnings = state_->decode_warnings.load();
  {
    std::lock_guard<std::mutex> lock(state_->warned_mu);
    st.warned = state_->warned;
  }
  st.batches_in_flight = state_->outstanding.load();
  st.fetch = state_->engine.Stats();
  return st;
}

}  // namespace hivedata
