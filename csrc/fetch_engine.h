// Parallel GCS object reader: one I/O thread drives a libcurl multi handle with a bounded
// pool of keep-alive connections and a bounded number of transfers in flight.
#pragma once

#include <sys/types.h>

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

namespace hivedata {

struct EngineOptions {
  std::string endpoint;           // e.g. "https://storage.googleapis.com" or "http://127.0.0.1:4443"
  int max_in_flight = 64;         // transfers handed to libcurl at once
  int max_connections = 64;       // keep-alive connection pool size
  int max_attempts = 8;           // per request, first try included
  double retry_budget_s = 60.0;   // per request: no retry starts after this much time
  double backoff_base_s = 0.05;   // first retry waits up to this (full jitter), doubling each time
  double backoff_max_s = 5.0;
  double connect_timeout_s = 10.0;
  double request_timeout_s = 120.0;  // one attempt, first byte to last
  double low_speed_time_s = 30.0;    // abort an attempt that stalls (< 1 KB/s) this long
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
  // Moves up to `max` finished results into `out`, waiting up to `timeout_s` for the first.
  size_t Poll(std::vector<FetchResult>* out, size_t max, double timeout_s);
  // Finishes every queued and in-flight request with kCancelled.
  void CancelAll();
  EngineStats Stats() const;
  // Requests submitted and not yet taken by Poll.
  size_t Outstanding() const;
  const EngineOptions& options() const { return options_; }

 private:
  struct State;
  State* state();  // restarts the engine in a forked child

  EngineOptions options_;
  State* state_ = nullptr;  // leaked, never freed, in a forked child: its locks may be held
  pid_t owner_pid_ = 0;
};

}  // namespace hivedata
