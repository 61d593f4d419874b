// Parallel GCS object reader: one I/O thread drives a libcurl multi handle with a bounded
// pool of keep-alive connections and a bounded number of transfers in flight.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fetch_status.h"
#include "latency_histogram.h"
#include "process_owner.h"

namespace hivedata {

struct EngineOptions {
  std::string endpoint;           // e.g. "https://storage.googleapis.com" or "http://127.0.0.1:4443"
  int max_in_flight = 256;        // GETs in flight at once (a cap: callers submit what they need)
  // Connection pool bound; -1: chosen per protocol (HTTP/2: max_in_flight / streams_per_connection
  // connections, HTTP/1.1: one per GET in flight). With HTTP/1.1, in flight never exceeds it.
  int max_connections = -1;
  int streams_per_connection = 32;  // HTTP/2: streams multiplexed on one connection before another opens
  int http_version = 2;             // 2: HTTP/2 where TLS offers it (ALPN), else 1.1; 1: HTTP/1.1 only
  std::string ca_bundle;            // PEM file of trusted CAs; empty: libcurl's default store
  int max_attempts = 8;           // per request, first try included
  double retry_budget_s = 60.0;   // per request: no retry starts after this much time
  double backoff_base_s = 0.05;   // first retry waits up to this (full jitter), doubling each time
  double backoff_max_s = 5.0;
  double connect_timeout_s = 10.0;
  double request_timeout_s = 120.0;  // one attempt, first byte to last
  double low_speed_time_s = 5.0;     // abort (and retry) an attempt that stalls (< 1 KB/s) this long
  double first_byte_timeout_s = 5.0; // abort (and retry) an attempt with no response headers after this
  // Hedging: a GET still running after clamp(hedge_multiple * running p90, hedge_min_s, hedge_max_s)
  // gets a second GET for the same bytes; the first to finish wins. At most hedge_budget of the requests
  // (plus a burst of max(4, in flight / 16)) are hedged, none before 32 GETs finished. 0 disables it.
  double hedge_budget = 0.02;
  double hedge_multiple = 3.0;
  double hedge_min_s = 0.25;
  double hedge_max_s = 1.0;
  double token_wait_s = 10.0;        // after a 401: how long to wait for a refreshed token (SetToken)
  bool verify_crc32c = true;         // whole-object reads only
  std::string user_agent = "hivedata";
};

struct FetchRequest {
  uint64_t tag = 0;
  std::string bucket;
  std::string object;
  int64_t offset = 0;    // first byte
  int64_t length = -1;   // -1: through the end of the object
  int64_t generation = 0;  // 0: latest
  uint8_t* dst = nullptr;  // caller's buffer; null: the engine allocates
  size_t capacity = 0;
};

struct FetchResult {
  uint64_t tag = 0;
  std::string bucket;
  std::string object;
  FetchStatus status;
  size_t nbytes = 0;
  int attempts = 0;
  double latency_s = 0.0;      // first attempt start to completion
  std::vector<uint8_t> owned;  // the bytes when the request had no dst
};

struct EngineStats {
  uint64_t submitted = 0, succeeded = 0, failed = 0, retries = 0, bytes = 0;
  uint64_t http_retryable = 0, network_errors = 0, checksum_failures = 0;
  uint64_t in_flight = 0, queued = 0;
  uint64_t hedges = 0, hedge_wins = 0;       // second GETs started; of them, those that finished first
  uint64_t connects = 0;                     // connections opened (TLS handshakes on https)
  uint64_t first_byte_timeouts = 0, token_refreshes = 0;
  uint64_t http2 = 0;                        // responses that came over HTTP/2
  double latency_p50_s = 0.0, latency_p99_s = 0.0;
};

class FetchEngine {
 public:
  explicit FetchEngine(EngineOptions options);
  ~FetchEngine();
  FetchEngine(const FetchEngine&) = delete;
  FetchEngine& operator=(const FetchEngine&) = delete;

  // Bearer token for new attempts; empty means anonymous. Never logged.
  void SetToken(std::string token);
  void Submit(std::vector<FetchRequest> requests);
  // Moves up to `max` finished results into `out`, waiting up to `timeout_s` for the first (or, with
  // wake_for_token, until a request waits for a fresh token: the caller then calls SetToken).
  size_t Poll(std::vector<FetchResult>* out, size_t max, double timeout_s, bool wake_for_token = false);
  // Asks the I/O thread to finish every request submitted so far with kCancelled and returns at once:
  // the cancelled results arrive through Poll (Outstanding() drops as they are taken).
  void RequestCancelAll();
  // Starts the I/O thread now (else the first Submit does). Throws std::runtime_error when the thread
  // cannot start (a thread limit: RLIMIT_NPROC, a pids cgroup), leaving nothing running; a later call retries.
  void Start();
  // Stops and joins the I/O thread for good and wakes every Poll; afterwards Poll returns at once and
  // Submit throws. Requests not finished are abandoned (no thread writes into their buffers any more).
  // Idempotent; must not run concurrently with Submit.
  void Shutdown();
  // True while a request waits for a new token after a 401: call SetToken with a refreshed one.
  bool TokenWanted() const;
  EngineStats Stats() const;
  // Requests submitted and not yet taken by Poll.
  size_t Outstanding() const;
  const EngineOptions& options() const { return options_; }

 private:
  struct State;
  State* state();  // restarts the engine in a forked child

  EngineOptions options_;
  State* state_ = nullptr;  // leaked, never freed, in a forked child: its locks may be held
  ProcessOwner owner_;
};

}  // namespace hivedata
