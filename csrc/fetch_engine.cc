#include "fetch_engine.h"

#include <curl/curl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <system_error>
#include <unordered_map>

#include "crc32c.h"
#include "gcs_url.h"

namespace hivedata {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

void GlobalInitOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) throw std::runtime_error("curl_global_init failed");
  });
}

bool IsRetryableCurl(CURLcode rc) {
  switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_WEIRD_SERVER_REPLY:
      return true;
    default:
      return false;
  }
}

// The server's certificate (or our CA bundle) is the problem: retrying cannot help.
bool IsCertificateError(CURLcode rc) {
  switch (rc) {
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
      return true;
    default:
      return false;
  }
}

// Bytes of RAM on this machine (an object read without a buffer must fit in it); SIZE_MAX when unknown.
uint64_t PhysicalMemory() {
  static const uint64_t bytes = [] {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : UINT64_MAX;
  }();
  return bytes;
}

bool IsRetryableHttp(long status) { return status == 408 || status == 429 || (status >= 500 && status <= 599); }

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string Trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

// Printable, single-line excerpt of an error body.
std::string Excerpt(const std::string& body) {
  std::string out;
  for (char c : body) {
    if (out.size() >= 200) break;
    out.push_back((c >= 32 && c < 127) ? c : ' ');
  }
  return Trim(out);
}

}  // namespace

struct Transfer {
  FetchRequest req;
  std::vector<uint8_t> owned;
  curl_slist* headers = nullptr;
  CURL* easy = nullptr;  // while an attempt runs
  int attempts = 0;
  uint64_t seq = 0;  // the Submit() call it came from: RequestCancelAll() only reaches earlier submissions
  Clock::time_point first_start{};
  Clock::time_point attempt_start{};
  Clock::time_point ready_at{};  // delayed: when to retry; waiting for a token: when to give up
  FetchStatus last_error;
  Transfer* hedge = nullptr;     // a primary's running hedge (owned by the active map)
  Transfer* hedge_of = nullptr;  // a hedge's primary
  bool hedged = false;           // this attempt already got its hedge
  bool sent_token = false;
  bool token_retried = false;  // a 401 already led to one retry with a refreshed token
  uint64_t token_version = 0;
  // Per attempt.
  size_t written = 0;
  long http_status = 0;
  bool responded = false;  // a status line arrived
  bool has_crc = false;
  uint32_t header_crc = 0;
  int64_t content_length = -1;
  int64_t range_first = -1, range_last = -1;  // Content-Range of a 206
  bool gzip = false;                          // stored or served with Content-Encoding: gzip
  double retry_after_s = -1.0;
  std::string error_body;
  FetchStatus abort_status;
  bool abort_retryable = false;
  char errbuf[CURL_ERROR_SIZE] = {0};

  bool ranged() const { return req.offset != 0 || req.length >= 0; }
  std::string Describe() const {
    std::string d = GcsUri(req.bucket, req.object);
    if (ranged()) d += " (" + RangeHeaderValue(req.offset, req.length) + ")";
    return d;
  }
  void NewResponse() {
    http_status = 0;
    has_crc = false;
    content_length = -1;
    range_first = range_last = -1;
    gzip = false;
    retry_after_s = -1.0;
  }
  void ResetAttempt() {
    NewResponse();
    written = 0;
    responded = false;
    hedged = false;
    error_body.clear();
    abort_status = FetchStatus{};
    abort_retryable = false;
    errbuf[0] = 0;
    owned.clear();
  }
  // Stops the transfer from the next callback on (the I/O thread then judges it by this status).
  size_t Abort(FetchStatus st, bool retryable) {
    abort_status = std::move(st);
    abort_retryable = retryable;
    return 0;
  }
};

struct FetchEngine::State {
  explicit State(const EngineOptions& o) : opt(o) {
    GlobalInitOnce();
    https = opt.endpoint.rfind("https://", 0) == 0;
    h2 = https && opt.http_version == 2;
    int cap = opt.max_in_flight;
    if (opt.max_connections > 0) {
      conns_h2 = conns_h1 = opt.max_connections;
      streams = (cap + opt.max_connections - 1) / opt.max_connections;
    } else {
      streams = std::max(1, opt.streams_per_connection);
      conns_h2 = (cap + streams - 1) / streams;
      conns_h1 = cap;
    }
    multi = curl_multi_init();
    share = curl_share_init();
    if (!multi || !share) throw std::runtime_error("curl_multi_init / curl_share_init failed");
    // One thread drives every handle, so the share needs no locks: TLS sessions resume, DNS is looked up once.
    curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_multi_setopt(multi, CURLMOPT_PIPELINING, static_cast<long>(CURLPIPE_MULTIPLEX));
    curl_multi_setopt(multi, CURLMOPT_MAX_CONCURRENT_STREAMS, static_cast<long>(streams));
    SetConnectionLimits();
    ca_file = opt.ca_bundle;
    if (ca_file.empty() && https) {
      // libcurl's built-in bundle, named explicitly: with a CA directory also set, libcurl re-reads the
      // store for every handshake (~27 ms of CPU each); with a file only, it parses it once and caches it.
      CURL* probe = curl_easy_init();
      char* def = nullptr;
      if (probe && curl_easy_getinfo(probe, CURLINFO_CAINFO, &def) == CURLE_OK && def) ca_file = def;
      if (probe) curl_easy_cleanup(probe);
    }
    rng = static_cast<uint64_t>(Clock::now().time_since_epoch().count()) | 1u;
  }

  ~State() {
    Stop();
    for (auto& kv : active) {
      curl_multi_remove_handle(multi, kv.first);
      curl_slist_free_all(kv.second->headers);
      curl_easy_cleanup(kv.first);
    }
    for (CURL* e : free_easy) curl_easy_cleanup(e);
    curl_multi_cleanup(multi);
    curl_share_cleanup(share);
  }

  void SetConnectionLimits() {
    long conns = h2 ? conns_h2 : conns_h1 + kHedgeBurst;  // HTTP/1.1: room for hedges beside the GETs
    curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, conns);
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, conns);
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, conns);
    inflight_limit = h2 ? opt.max_in_flight : std::min(opt.max_in_flight, conns_h1);
  }

  // Starts the I/O thread once; a thread that cannot start is an exception that leaves nothing running and
  // nothing marked started, so a later call tries again.
  void EnsureStarted() {
    std::lock_guard<std::mutex> lock(mu);
    if (stop) throw std::runtime_error("the fetch engine is closed");
    if (started) return;
    try {
      io = std::thread([this] { Run(); });
    } catch (const std::system_error& e) {
      throw std::runtime_error(std::string("could not start the fetch engine's I/O thread (") + e.what() +
                               "): too many threads for this process or user (RLIMIT_NPROC, pids cgroup)?");
    }
    started = true;
  }

  // Stops and joins the I/O thread for good and wakes every Poll.
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stop = true;
    }
    results_cv.notify_all();
    curl_multi_wakeup(multi);
    std::lock_guard<std::mutex> join_lock(join_mu);
    if (io.joinable()) io.join();
  }

  void Run();
  void StartAttempt(std::unique_ptr<Transfer> t);
  void Detach(CURL* easy, Transfer* t);
  void FinishAttempt(CURL* easy, CURLcode rc);
  void FinishHedge(std::unique_ptr<Transfer> h, CURLcode rc);
  void DropHedge(Transfer* primary);
  void Watch(Clock::time_point now);
  double HedgeAfter(Clock::time_point now);
  FetchStatus Judge(Transfer* t, CURLcode rc, bool* retryable);
  void Complete(std::unique_ptr<Transfer> t, FetchStatus status);
  void CancelUpTo(uint64_t seq);
  void ResendWithToken(Clock::time_point now);
  double Backoff(const Transfer& t);
  void CountActive() { n_active.store(active.size(), std::memory_order_relaxed); }

  static size_t OnHeader(char* buf, size_t size, size_t n, void* userp);
  static size_t AbortFromCallback(Transfer* t, ErrorKind kind, const char* doing, const char* why) noexcept;
  static size_t OnBody(char* buf, size_t size, size_t n, void* userp);
  static size_t Body(Transfer* t, char* buf, size_t len);

  static constexpr int kHedgeBurst = 4;      // at least this many hedges beyond the budget's share
  static constexpr uint64_t kHedgeWarmup = 32;  // GETs that must finish before any is hedged

  EngineOptions opt;
  bool https = false;
  bool h2 = false;  // HTTP/2 expected (until a response says otherwise)
  int streams = 1, conns_h2 = 1, conns_h1 = 1;
  std::string ca_file;
  CURLM* multi = nullptr;
  CURLSH* share = nullptr;
  std::thread io;
  std::mutex join_mu;  // one joiner of io at a time

  // Guarded by mu.
  std::mutex mu;
  std::condition_variable results_cv;
  std::deque<std::unique_ptr<Transfer>> incoming;
  std::deque<FetchResult> results;
  std::string token;
  uint64_t token_version = 0;
  bool stop = false;
  bool started = false;
  uint64_t submit_seq = 0;  // Submit() calls so far
  uint64_t cancel_upto = 0;  // pending RequestCancelAll(): cancel transfers with seq <= this (0: none)

  // I/O thread only.
  std::deque<std::unique_ptr<Transfer>> ready;
  std::vector<std::unique_ptr<Transfer>> delayed;
  std::vector<std::unique_ptr<Transfer>> token_wait;  // refused with 401: waiting for a fresh token
  std::unordered_map<CURL*, std::unique_ptr<Transfer>> active;  // attempts and hedges running
  std::vector<CURL*> free_easy;
  std::string io_token;
  uint64_t io_token_version = 0;
  int inflight_limit = 1;
  double hedge_after_s = 0.0;
  Clock::time_point hedge_after_at{};
  uint64_t rng;

  std::atomic<uint64_t> outstanding{0}, submitted{0}, succeeded{0}, failed{0}, retries{0}, bytes{0};
  std::atomic<uint64_t> http_retryable{0}, network_errors{0}, checksum_failures{0};
  std::atomic<uint64_t> n_active{0}, n_queued{0};
  std::atomic<uint64_t> hedges{0}, hedge_wins{0}, connects{0}, first_byte_timeouts{0}, token_refreshes{0};
  std::atomic<uint64_t> http2{0};
  std::atomic<bool> token_wanted{false};
  LatencyHistogram latency;
};

size_t FetchEngine::State::OnHeader(char* buf, size_t size, size_t n, void* userp) {
  auto* t = static_cast<Transfer*>(userp);
  size_t len = size * n;
  try {  // nothing may unwind through libcurl
    std::string line(buf, len);
    if (line.rfind("HTTP/", 0) == 0) {  // a new response (after 100-continue or a redirect)
      t->NewResponse();
      t->responded = true;
      size_t sp = line.find(' ');
      if (sp != std::string::npos) t->http_status = std::strtol(line.c_str() + sp + 1, nullptr, 10);
      return len;
    }
    size_t colon = line.find(':');
    if (colon == std::string::npos) return len;
    std::string name = Lower(Trim(line.substr(0, colon)));
    std::string value = Trim(line.substr(colon + 1));
    if (name == "x-goog-hash") {
      size_t pos = 0;
      while (pos < value.size()) {
        size_t comma = value.find(',', pos);
        std::string item = Trim(value.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos));
        if (item.rfind("crc32c=", 0) == 0) t->has_crc = DecodeGoogCrc32c(item.substr(7), &t->header_crc);
        if (comma == std::string::npos) break;
        pos = comma + 1;
      }
    } else if (name == "content-length") {
      t->content_length = std::strtoll(value.c_str(), nullptr, 10);
    } else if (name == "content-range") {  // "bytes first-last/total"
      long long first = -1, last = -1;
      if (std::sscanf(value.c_str(), "bytes %lld-%lld", &first, &last) == 2 && first >= 0 && last >= first) {
        t->range_first = first;
        t->range_last = last;
      }
    } else if (name == "content-encoding" || name == "x-goog-stored-content-encoding") {
      if (Lower(value).find("gzip") != std::string::npos) t->gzip = true;
    } else if (name == "retry-after") {
      char* end = nullptr;
      double v = std::strtod(value.c_str(), &end);
      if (end != value.c_str() && v >= 0) t->retry_after_s = v;
    }
    return len;
  } catch (const std::exception& e) {
    return AbortFromCallback(t, ErrorKind::kNetwork, "reading the headers of ", e.what());
  } catch (...) {
    return AbortFromCallback(t, ErrorKind::kNetwork, "reading the headers of ", "unknown exception");
  }
}

// Fails the transfer from inside a libcurl callback and never throws: should even the message fail to be
// built (memory exhausted), the status keeps its kind and a fixed text.
size_t FetchEngine::State::AbortFromCallback(Transfer* t, ErrorKind kind, const char* doing,
                                             const char* why) noexcept {
  try {
    return t->Abort(FetchStatus{kind, static_cast<int>(t->http_status), 0, doing + t->Describe() + ": " + why},
                    false);
  } catch (...) {
    t->abort_status.kind = kind;
    t->abort_status.http_status = static_cast<int>(t->http_status);
    t->abort_retryable = false;
    return 0;
  }
}

size_t FetchEngine::State::OnBody(char* buf, size_t size, size_t n, void* userp) {
  auto* t = static_cast<Transfer*>(userp);
  try {  // nothing may unwind through libcurl (a bad_alloc for a huge object read without a buffer)
    return Body(t, buf, size * n);
  } catch (const std::exception& e) {
    return AbortFromCallback(t, ErrorKind::kBufferTooSmall, "out of memory holding ", e.what());
  } catch (...) {
    return AbortFromCallback(t, ErrorKind::kBufferTooSmall, "out of memory holding ", "unknown exception");
  }
}

size_t FetchEngine::State::Body(Transfer* t, char* buf, size_t len) {
  if (t->http_status < 200 || t->http_status >= 300) {
    size_t room = t->error_body.size() < 1024 ? 1024 - t->error_body.size() : 0;
    t->error_body.append(buf, std::min(room, len));
    return len;
  }
  const FetchRequest& r = t->req;
  if (t->written == 0) {
    if (t->gzip) {
      return t->Abort(FetchStatus{ErrorKind::kHttp, static_cast<int>(t->http_status), 0,
                                  GcsUri(r.bucket, r.object) +
                                      " is stored gzip-encoded (Content-Encoding: gzip): its bytes are not the "
                                      "image and its crc32c covers the compressed form; upload images without "
                                      "gzip encoding (gsutil cp without -z/-Z)"},
                      false);
    }
    // A 200 answers a ranged request with the whole object: it is the range only when the two coincide.
    bool whole_is_range = r.offset == 0 && r.length >= 0 && t->content_length == r.length;
    if (t->ranged() && t->http_status == 200 && !whole_is_range) {
      return t->Abort(FetchStatus{ErrorKind::kHttp, 200, 0,
                                  "the server ignored the Range header for " + t->Describe() +
                                      " (it answered 200 with the whole object, " +
                                      std::to_string(t->content_length) + " bytes)"},
                      false);
    }
    if (t->http_status == 206 && (t->range_first != r.offset || !t->ranged())) {
      std::string got = t->range_first < 0 ? std::string("no Content-Range")
                                           : "bytes " + std::to_string(t->range_first) + "-" +
                                                 std::to_string(t->range_last);
      return t->Abort(FetchStatus{ErrorKind::kNetwork, 206, 0,
                                  "the server sent " + got + " for " + t->Describe() + " (a partial answer that "
                                  "is not the range asked for)"},
                      true);
    }
  }
  size_t cap = r.dst ? r.capacity : (r.capacity ? r.capacity : SIZE_MAX);  // a hedge is bounded like its primary
  bool too_big = t->written + len > cap || (t->written == 0 && t->content_length > 0 &&
                                             static_cast<uint64_t>(t->content_length) > cap);
  if (too_big) {
    int64_t size_hint = t->content_length >= 0 ? t->content_length : static_cast<int64_t>(t->written + len);
    return t->Abort(FetchStatus{ErrorKind::kBufferTooSmall, static_cast<int>(t->http_status), 0,
                                t->Describe() + " has at least " + std::to_string(size_hint) +
                                    " bytes but the buffer holds " + std::to_string(r.capacity)},
                    false);
  }
  if (r.dst != nullptr) {
    std::memcpy(r.dst + t->written, buf, len);
  } else {
    if (t->written == 0 && t->content_length > 0) {
      if (static_cast<uint64_t>(t->content_length) > PhysicalMemory()) {  // refused before any allocation
        return t->Abort(FetchStatus{ErrorKind::kBufferTooSmall, static_cast<int>(t->http_status), 0,
                                    t->Describe() + " has " + std::to_string(t->content_length) +
                                        " bytes (Content-Length), more than this machine's memory (" +
                                        std::to_string(PhysicalMemory()) + " bytes): read it in ranges"},
                        false);
      }
      t->owned.reserve(static_cast<size_t>(t->content_length));
    }
    t->owned.insert(t->owned.end(), buf, buf + len);
  }
  t->written += len;
  return len;
}

void FetchEngine::State::StartAttempt(std::unique_ptr<Transfer> t) {
  Transfer* raw = t.get();
  Clock::time_point now = Clock::now();
  if (raw->attempts == 0) raw->first_start = now;
  raw->attempt_start = now;
  raw->attempts++;
  raw->ResetAttempt();

  CURL* easy;
  if (!free_easy.empty()) {
    easy = free_easy.back();
    free_easy.pop_back();
    curl_easy_reset(easy);
  } else {
    easy = curl_easy_init();
  }
  raw->easy = easy;
  std::string url = DownloadUrl(opt.endpoint, raw->req.bucket, raw->req.object, raw->req.generation);
  curl_easy_setopt(easy, CURLOPT_URL, url.c_str());
  curl_easy_setopt(easy, CURLOPT_PRIVATE, raw);
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, raw->errbuf);
  curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, &State::OnHeader);
  curl_easy_setopt(easy, CURLOPT_HEADERDATA, raw);
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &State::OnBody);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, raw);
  curl_easy_setopt(easy, CURLOPT_SHARE, share);
  curl_easy_setopt(easy, CURLOPT_HTTP_VERSION,
                   static_cast<long>(opt.http_version == 2 ? CURL_HTTP_VERSION_2TLS : CURL_HTTP_VERSION_1_1));
  // HTTP/2: join a connection's streams before opening another (ALPN tells at the handshake). Not for
  // HTTP/1.1: there it would hold every new GET behind the first connection's (maybe slow) response.
  if (h2) curl_easy_setopt(easy, CURLOPT_PIPEWAIT, 1L);
  if (!ca_file.empty()) {
    curl_easy_setopt(easy, CURLOPT_CAINFO, ca_file.c_str());
    curl_easy_setopt(easy, CURLOPT_CAPATH, nullptr);
  }
#if LIBCURL_VERSION_NUM >= 0x075700  // 7.87: the parsed CA store is cached and shared by handshakes
  curl_easy_setopt(easy, CURLOPT_CA_CACHE_TIMEOUT, 86400L);
#endif
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(easy, CURLOPT_BUFFERSIZE, 256L * 1024L);
  curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(opt.connect_timeout_s * 1000));
  curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, static_cast<long>(opt.request_timeout_s * 1000));
  curl_easy_setopt(easy, CURLOPT_LOW_SPEED_LIMIT, 1024L);
  curl_easy_setopt(easy, CURLOPT_LOW_SPEED_TIME, static_cast<long>(std::max(1.0, opt.low_speed_time_s)));
  curl_easy_setopt(easy, CURLOPT_USERAGENT, opt.user_agent.c_str());

  curl_slist* headers = nullptr;
  if (raw->ranged()) {
    std::string range = "Range: " + RangeHeaderValue(raw->req.offset, raw->req.length);
    headers = curl_slist_append(headers, range.c_str());
  }
  raw->sent_token = !io_token.empty();
  raw->token_version = io_token_version;
  if (raw->sent_token) {
    std::string auth = "Authorization: Bearer " + io_token;
    headers = curl_slist_append(headers, auth.c_str());
  }
  raw->headers = headers;
  if (headers) curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);

  active.emplace(easy, std::move(t));
  CountActive();
  curl_multi_add_handle(multi, easy);
}

FetchStatus FetchEngine::State::Judge(Transfer* t, CURLcode rc, bool* retryable) {
  *retryable = false;
  const FetchRequest& r = t->req;
  if (!t->abort_status.ok()) {
    *retryable = t->abort_retryable;
    return t->abort_status;
  }
  long status = t->http_status;
  std::string what = t->Describe();
  if (rc != CURLE_OK) {
    std::string detail = t->errbuf[0] ? std::string(t->errbuf) : std::string(curl_easy_strerror(rc));
    if (IsCertificateError(rc)) {
      std::string store = ca_file.empty() ? "the system CA store" : "CA bundle " + ca_file;
      return FetchStatus{ErrorKind::kTls, 0, static_cast<int>(rc),
                         "TLS certificate of " + opt.endpoint + " could not be verified with " + store + " (" +
                             detail + ") fetching " + what +
                             "; point ca_bundle (train.py --ca_bundle) or CURL_CA_BUNDLE at the CA that signed it"};
    }
    *retryable = IsRetryableCurl(rc);
    network_errors.fetch_add(1, std::memory_order_relaxed);
    return FetchStatus{ErrorKind::kNetwork, static_cast<int>(status), static_cast<int>(rc),
                       "network error fetching " + what + ": " + detail};
  }
  if (status == 200 || status == 206) {
    if (status == 206 && t->range_last - t->range_first + 1 != static_cast<int64_t>(t->written)) {
      *retryable = true;
      return FetchStatus{ErrorKind::kNetwork, 206, 0,
                         "short read of " + what + " (" + std::to_string(t->written) + " bytes, Content-Range says " +
                             std::to_string(t->range_last - t->range_first + 1) + ")"};
    }
    if (r.length >= 0 && t->written != static_cast<size_t>(r.length)) {
      return FetchStatus{ErrorKind::kBadRange, static_cast<int>(status), 0,
                         what + " extends past the end of the object (got " + std::to_string(t->written) + " of " +
                             std::to_string(r.length) + " bytes)"};
    }
    if (status == 200 && t->content_length >= 0 && t->written != static_cast<size_t>(t->content_length)) {
      *retryable = true;
      return FetchStatus{ErrorKind::kNetwork, 200, 0, "short read of " + what};
    }
    if (status == 200 && opt.verify_crc32c && t->has_crc) {  // a 200 is the whole object: its hash applies
      const uint8_t* data = r.dst ? r.dst : t->owned.data();
      uint32_t got = Crc32c(data, t->written);
      if (got != t->header_crc) {
        *retryable = true;
        checksum_failures.fetch_add(1, std::memory_order_relaxed);
        return FetchStatus{ErrorKind::kChecksum, 200, 0, "crc32c mismatch for " + what};
      }
    }
    return FetchStatus{};
  }
  std::string detail = Excerpt(t->error_body);
  std::string suffix = detail.empty() ? "" : ": " + detail;
  std::string head = "HTTP " + std::to_string(status) + " fetching " + what;
  if (status == 404) return FetchStatus{ErrorKind::kNotFound, 404, 0, "no such object: " + what};
  if (status == 401 || status == 403) {
    return FetchStatus{ErrorKind::kPermission, static_cast<int>(status), 0,
                       "permission denied (HTTP " + std::to_string(status) + ") for " + what + suffix};
  }
  if (status == 416) {
    return FetchStatus{ErrorKind::kBadRange, 416, 0, "range not satisfiable: " + what + " starts past the end"};
  }
  if (IsRetryableHttp(status)) {
    *retryable = true;
    http_retryable.fetch_add(1, std::memory_order_relaxed);
  }
  return FetchStatus{ErrorKind::kHttp, static_cast<int>(status), 0, head + suffix};
}

double FetchEngine::State::Backoff(const Transfer& t) {
  // Full jitter: uniform in [0, min(max, base * 2^(attempt-1))], at least what Retry-After asks.
  double cap = std::min(opt.backoff_max_s, opt.backoff_base_s * std::ldexp(1.0, std::min(t.attempts - 1, 30)));
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  double u = static_cast<double>(rng >> 11) / static_cast<double>(1ull << 53);
  double wait = u * cap;
  if (t.retry_after_s >= 0) wait = std::max(wait, std::min(t.retry_after_s, opt.backoff_max_s));
  return wait;
}

// Takes the handle out of libcurl and back to the free list, counting what the attempt used.
void FetchEngine::State::Detach(CURL* easy, Transfer* t) {
  long n = 0;
  if (curl_easy_getinfo(easy, CURLINFO_NUM_CONNECTS, &n) == CURLE_OK && n > 0) {
    connects.fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
  }
  long version = 0;
  if (t->responded && curl_easy_getinfo(easy, CURLINFO_HTTP_VERSION, &version) == CURLE_OK) {
    if (version == CURL_HTTP_VERSION_2_0) {
      http2.fetch_add(1, std::memory_order_relaxed);
    } else if (h2 && version == CURL_HTTP_VERSION_1_1) {
      h2 = false;  // the server (or a proxy) does not speak HTTP/2: one connection per GET in flight
      SetConnectionLimits();
    }
  }
  curl_multi_remove_handle(multi, easy);
  curl_slist_free_all(t->headers);
  t->headers = nullptr;
  t->easy = nullptr;
  free_easy.push_back(easy);
}

void FetchEngine::State::DropHedge(Transfer* primary) {
  Transfer* h = primary->hedge;
  primary->hedge = nullptr;
  if (!h) return;
  auto it = active.find(h->easy);
  if (it == active.end()) return;
  Detach(it->first, h);
  active.erase(it);
  CountActive();
}

void FetchEngine::State::FinishHedge(std::unique_ptr<Transfer> h, CURLcode rc) {
  Transfer* p = h->hedge_of;
  p->hedge = nullptr;
  bool retryable = false;
  if (!Judge(h.get(), rc, &retryable).ok()) return;  // the primary carries on
  auto it = active.find(p->easy);
  if (it == active.end()) return;
  std::unique_ptr<Transfer> primary = std::move(it->second);
  Detach(it->first, primary.get());
  active.erase(it);
  CountActive();
  if (primary->req.dst) {
    std::memcpy(primary->req.dst, h->owned.data(), h->written);
  } else {
    primary->owned = std::move(h->owned);
  }
  primary->written = h->written;
  hedge_wins.fetch_add(1, std::memory_order_relaxed);
  Complete(std::move(primary), FetchStatus{});
}

void FetchEngine::State::FinishAttempt(CURL* easy, CURLcode rc) {
  auto it = active.find(easy);
  if (it == active.end()) return;
  std::unique_ptr<Transfer> t = std::move(it->second);
  active.erase(it);
  Detach(easy, t.get());
  CountActive();
  if (t->hedge_of) {
    FinishHedge(std::move(t), rc);
    return;
  }
  DropHedge(t.get());  // the primary finished first: its hedge is moot

  bool retryable = false;
  FetchStatus st = Judge(t.get(), rc, &retryable);
  if (st.ok()) {
    Complete(std::move(t), std::move(st));
    return;
  }
  if (st.kind == ErrorKind::kPermission && st.http_status == 401 && t->sent_token && !t->token_retried) {
    // The token expired or was revoked: wait for the owner to hand a fresh one (SetToken), retry once.
    t->token_retried = true;
    t->last_error = std::move(st);
    t->ready_at = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                     std::chrono::duration<double>(opt.token_wait_s));
    token_wait.push_back(std::move(t));
    token_wanted.store(true, std::memory_order_relaxed);
    results_cv.notify_all();  // a waiting Poll returns so its caller can refresh the token
    return;
  }
  if (retryable) {
    double wait = Backoff(*t);
    double elapsed = Seconds(Clock::now() - t->first_start);
    if (t->attempts < opt.max_attempts && elapsed + wait < opt.retry_budget_s) {
      retries.fetch_add(1, std::memory_order_relaxed);
      t->last_error = st;
      t->ready_at = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(wait));
      delayed.push_back(std::move(t));
      return;
    }
    st.message += " (gave up after " + std::to_string(t->attempts) + " attempts in " +
                  std::to_string(static_cast<int>(elapsed + 0.5)) + " s)";
  }
  Complete(std::move(t), std::move(st));
}

// How long a GET may run before it is hedged: a multiple of the running p90, within [min, max].
double FetchEngine::State::HedgeAfter(Clock::time_point now) {
  if (now - hedge_after_at > std::chrono::milliseconds(100)) {
    hedge_after_at = now;
    double p90 = latency.Quantile(0.9);
    hedge_after_s = std::clamp(opt.hedge_multiple * p90, opt.hedge_min_s, std::max(opt.hedge_min_s, opt.hedge_max_s));
  }
  return hedge_after_s;
}

// Deadlines on the attempts running: no response within first_byte_timeout_s is a retryable failure; a
// GET slower than HedgeAfter() gets a second GET (within the budget).
void FetchEngine::State::Watch(Clock::time_point now) {
  std::vector<CURL*> late;
  for (auto& [easy, t] : active) {
    if (!t->responded && !t->hedge && Seconds(now - t->attempt_start) > opt.first_byte_timeout_s) late.push_back(easy);
  }
  for (CURL* easy : late) {
    auto it = active.find(easy);
    if (it == active.end()) continue;
    Transfer* t = it->second.get();
    first_byte_timeouts.fetch_add(1, std::memory_order_relaxed);
    t->Abort(FetchStatus{ErrorKind::kNetwork, 0, static_cast<int>(CURLE_OPERATION_TIMEDOUT),
                         "no response within " + std::to_string(static_cast<int>(opt.first_byte_timeout_s)) +
                             " s fetching " + t->Describe()},
             true);
    if (t->hedge_of) {
      DropHedge(t->hedge_of);
    } else {
      FinishAttempt(easy, CURLE_OPERATION_TIMEDOUT);
    }
  }
  // No hedging before the latency is known: a cold start (connections opening, a server warming up) is slow
  // for every GET, and hedging it would spend the budget before the real stragglers come.
  if (opt.hedge_budget <= 0 || succeeded.load(std::memory_order_relaxed) < kHedgeWarmup) return;
  double after = HedgeAfter(now);
  std::vector<Transfer*> slow;
  for (auto& [easy, t] : active) {
    if (!t->hedge_of && !t->hedged && Seconds(now - t->attempt_start) > after) slow.push_back(t.get());
  }
  // The budget goes to the slowest first.
  std::sort(slow.begin(), slow.end(),
            [](const Transfer* a, const Transfer* b) { return a->attempt_start < b->attempt_start; });
  for (Transfer* p : slow) {
    // A share of the requests, plus a burst (a 16th of what may be in flight) so that a cold start does not
    // leave nothing for the first real stragglers while the consumer, blocked on them, submits nothing new.
    double burst = std::max<double>(kHedgeBurst, inflight_limit / 16.0);
    double allowed = opt.hedge_budget * static_cast<double>(submitted.load(std::memory_order_relaxed)) + burst;
    if (static_cast<double>(hedges.load(std::memory_order_relaxed)) >= allowed) break;
    auto h = std::make_unique<Transfer>();
    h->req = p->req;
    h->req.dst = nullptr;
    h->req.capacity = p->req.dst ? p->req.capacity : 0;
    h->seq = p->seq;
    h->hedge_of = p;
    p->hedge = h.get();
    p->hedged = true;
    hedges.fetch_add(1, std::memory_order_relaxed);
    StartAttempt(std::move(h));
  }
}

void FetchEngine::State::Complete(std::unique_ptr<Transfer> t, FetchStatus status) {
  FetchResult res;
  res.tag = t->req.tag;
  res.bucket = std::move(t->req.bucket);
  res.object = std::move(t->req.object);
  res.nbytes = status.ok() ? t->written : 0;
  res.attempts = t->attempts;
  if (t->attempts > 0) res.latency_s = Seconds(Clock::now() - t->first_start);
  if (status.ok()) {
    succeeded.fetch_add(1, std::memory_order_relaxed);
    bytes.fetch_add(t->written, std::memory_order_relaxed);
    latency.Record(res.latency_s);
    if (!t->req.dst) res.owned = std::move(t->owned);
  } else {
    failed.fetch_add(1, std::memory_order_relaxed);
  }
  res.status = std::move(status);
  {
    std::lock_guard<std::mutex> lock(mu);
    results.push_back(std::move(res));
  }
  results_cv.notify_all();
}

void FetchEngine::State::CancelUpTo(uint64_t seq) {
  // Only transfers submitted before the RequestCancelAll() call: a later Submit() (say, the next epoch's
  // first batch, queued before this thread got to the request) must not be cancelled with them.
  auto cancel = [this](std::unique_ptr<Transfer> t) {
    FetchStatus st{ErrorKind::kCancelled, 0, 0, "cancelled: " + t->Describe()};
    Complete(std::move(t), std::move(st));
  };
  std::vector<std::unique_ptr<Transfer>> primaries;
  for (auto it = active.begin(); it != active.end();) {
    if (it->second->seq > seq) {
      ++it;
      continue;
    }
    Detach(it->first, it->second.get());
    if (!it->second->hedge_of) primaries.push_back(std::move(it->second));  // a hedge shares its primary's seq
    it = active.erase(it);
  }
  CountActive();
  for (auto& t : primaries) {
    t->hedge = nullptr;
    cancel(std::move(t));
  }
  auto sweep = [&](auto& list) {
    size_t keep = 0;
    for (size_t i = 0; i < list.size(); ++i) {
      if (list[i]->seq > seq) {
        list[keep++] = std::move(list[i]);
      } else {
        cancel(std::move(list[i]));
      }
    }
    list.erase(list.begin() + static_cast<std::ptrdiff_t>(keep), list.end());
  };
  sweep(ready);
  sweep(delayed);
  sweep(token_wait);
}

// Requests refused with 401 go again once a newer token arrived; those that waited too long fail.
void FetchEngine::State::ResendWithToken(Clock::time_point now) {
  size_t keep = 0;
  for (size_t i = 0; i < token_wait.size(); ++i) {
    std::unique_ptr<Transfer>& t = token_wait[i];
    if (io_token_version > t->token_version) {
      token_refreshes.fetch_add(1, std::memory_order_relaxed);
      ready.push_front(std::move(t));
    } else if (t->ready_at <= now) {
      FetchStatus st = t->last_error;
      st.message += " (no refreshed token arrived within " + std::to_string(static_cast<int>(opt.token_wait_s)) +
                     " s)";
      Complete(std::move(t), std::move(st));
    } else {
      token_wait[keep++] = std::move(t);
    }
  }
  token_wait.resize(keep);
  if (token_wait.empty()) token_wanted.store(false, std::memory_order_relaxed);
}

void FetchEngine::State::Run() {
  while (true) {
    uint64_t cancel = 0;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (stop) break;
      while (!incoming.empty()) {
        ready.push_back(std::move(incoming.front()));
        incoming.pop_front();
      }
      if (token_version != io_token_version) {
        io_token = token;
        io_token_version = token_version;
      }
      cancel = cancel_upto;
      cancel_upto = 0;
    }
    if (cancel) CancelUpTo(cancel);

    Clock::time_point now = Clock::now();
    if (!token_wait.empty()) ResendWithToken(now);
    Clock::time_point next_retry = Clock::time_point::max();
    for (size_t i = 0; i < delayed.size();) {
      if (delayed[i]->ready_at <= now) {
        ready.push_front(std::move(delayed[i]));  // retries go first: their callers have waited longest
        delayed[i] = std::move(delayed.back());
        delayed.pop_back();
      } else {
        next_retry = std::min(next_retry, delayed[i]->ready_at);
        ++i;
      }
    }
    size_t running_hedges = 0;
    for (auto& kv : active) running_hedges += kv.second->hedge_of ? 1 : 0;
    while (active.size() - running_hedges < static_cast<size_t>(inflight_limit) && !ready.empty()) {
      std::unique_ptr<Transfer> t = std::move(ready.front());
      ready.pop_front();
      StartAttempt(std::move(t));
    }
    n_queued.store(ready.size() + delayed.size() + token_wait.size(), std::memory_order_relaxed);

    int running = 0;
    curl_multi_perform(multi, &running);
    int left = 0;
    bool finished_any = false;
    while (CURLMsg* msg = curl_multi_info_read(multi, &left)) {
      if (msg->msg == CURLMSG_DONE) {
        FinishAttempt(msg->easy_handle, msg->data.result);
        finished_any = true;
      }
    }
    if (!active.empty()) Watch(Clock::now());
    if (finished_any) continue;  // refill the freed slots before sleeping

    // Wake often enough to hedge and to enforce first-byte deadlines while GETs run.
    int timeout_ms = active.empty() && token_wait.empty() ? 100 : 20;
    if (next_retry != Clock::time_point::max()) {
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(next_retry - Clock::now()).count();
      timeout_ms = static_cast<int>(std::clamp<int64_t>(ms + 1, 0, timeout_ms));
    }
    curl_multi_poll(multi, nullptr, 0, timeout_ms, nullptr);
  }
}

FetchEngine::FetchEngine(EngineOptions options) : options_(std::move(options)) {
  if (options_.max_in_flight < 1) throw std::invalid_argument("max_in_flight must be >= 1");
  if (options_.max_connections == 0 || options_.max_connections < -1) {
    throw std::invalid_argument("max_connections must be >= 1 (or -1: chosen per protocol)");
  }
  if (options_.max_attempts < 1) throw std::invalid_argument("max_attempts must be >= 1");
  if (options_.http_version != 1 && options_.http_version != 2) {
    throw std::invalid_argument("http_version must be 1 (HTTP/1.1) or 2 (HTTP/2 where offered)");
  }
  if (options_.streams_per_connection < 1) throw std::invalid_argument("streams_per_connection must be >= 1");
  state_ = new State(options_);
}

FetchEngine::~FetchEngine() {
  if (owner_.Current()) delete state_;
}

FetchEngine::State* FetchEngine::state() {
  if (owner_.AdoptIfForked()) {
    // Forked child: the parent's I/O thread does not exist here and its locks may be held.
    // Abandon that state (never touch it) and start afresh.
    state_ = new State(options_);
  }
  return state_;
}

void FetchEngine::Start() { state()->EnsureStarted(); }

void FetchEngine::Shutdown() {
  if (owner_.Current()) state_->Stop();  // in a forked child nothing of ours runs
}

void FetchEngine::SetToken(std::string token) {
  State* s = state();
  {
    std::lock_guard<std::mutex> lock(s->mu);
    s->token = std::move(token);
    s->token_version++;
  }
  s->token_wanted.store(false, std::memory_order_relaxed);
  curl_multi_wakeup(s->multi);
}

bool FetchEngine::TokenWanted() const {
  if (!owner_.Current()) return false;
  return state_->token_wanted.load(std::memory_order_relaxed);
}

void FetchEngine::Submit(std::vector<FetchRequest> requests) {
  State* s = state();
  s->EnsureStarted();
  std::vector<std::unique_ptr<Transfer>> good;
  std::vector<std::unique_ptr<Transfer>> bad;
  std::vector<FetchStatus> bad_status;
  for (auto& r : requests) {
    auto t = std::make_unique<Transfer>();
    t->req = std::move(r);
    const FetchRequest& q = t->req;
    FetchStatus st;
    if (q.bucket.empty() || q.object.empty()) {
      st = FetchStatus{ErrorKind::kBadRequest, 0, 0, "empty bucket or object name: " + t->Describe()};
    } else if (q.offset < 0 || q.length == 0 || q.length < -1) {
      st = FetchStatus{ErrorKind::kBadRange, 0, 0,
                       "invalid byte range for " + GcsUri(q.bucket, q.object) + ": offset " +
                           std::to_string(q.offset) + ", length " + std::to_string(q.length)};
    } else if (q.dst != nullptr && q.length > 0 && static_cast<size_t>(q.length) > q.capacity) {
      st = FetchStatus{ErrorKind::kBufferTooSmall, 0, 0,
                       t->Describe() + " needs " + std::to_string(q.length) + " bytes but the buffer holds " +
                           std::to_string(q.capacity)};
    }
    if (st.ok()) {
      good.push_back(std::move(t));
    } else {
      bad.push_back(std::move(t));
      bad_status.push_back(std::move(st));
    }
  }
  s->submitted.fetch_add(good.size() + bad.size(), std::memory_order_relaxed);
  s->outstanding.fetch_add(good.size() + bad.size(), std::memory_order_relaxed);
  for (size_t i = 0; i < bad.size(); ++i) s->Complete(std::move(bad[i]), std::move(bad_status[i]));
  if (good.empty()) return;
  {
    std::lock_guard<std::mutex> lock(s->mu);
    uint64_t seq = ++s->submit_seq;
    for (auto& t : good) {
      t->seq = seq;
      s->incoming.push_back(std::move(t));
    }
  }
  curl_multi_wakeup(s->multi);
}

size_t FetchEngine::Poll(std::vector<FetchResult>* out, size_t max, double timeout_s, bool wake_for_token) {
  State* s = state();
  std::unique_lock<std::mutex> lock(s->mu);
  if (s->results.empty() && timeout_s > 0) {
    s->results_cv.wait_for(lock, std::chrono::duration<double>(timeout_s), [s, wake_for_token] {
      return s->stop || !s->results.empty() || (wake_for_token && s->token_wanted.load(std::memory_order_relaxed));
    });
  }
  size_t n = 0;
  while (n < max && !s->results.empty()) {
    out->push_back(std::move(s->results.front()));
    s->results.pop_front();
    ++n;
  }
  s->outstanding.fetch_sub(n, std::memory_order_relaxed);
  return n;
}

void FetchEngine::RequestCancelAll() {
  State* s = state();
  {
    std::lock_guard<std::mutex> lock(s->mu);
    s->cancel_upto = s->submit_seq;
  }
  curl_multi_wakeup(s->multi);
}

size_t FetchEngine::Outstanding() const {
  if (!owner_.Current()) return 0;
  return state_->outstanding.load(std::memory_order_relaxed);
}

EngineStats FetchEngine::Stats() const {
  EngineStats st;
  if (!owner_.Current()) return st;
  const State* s = state_;
  st.submitted = s->submitted.load();
  st.succeeded = s->succeeded.load();
  st.failed = s->failed.load();
  st.retries = s->retries.load();
  st.bytes = s->bytes.load();
  st.http_retryable = s->http_retryable.load();
  st.network_errors = s->network_errors.load();
  st.checksum_failures = s->checksum_failures.load();
  st.in_flight = s->n_active.load();
  st.queued = s->n_queued.load();
  st.hedges = s->hedges.load();
  st.hedge_wins = s->hedge_wins.load();
  st.connects = s->connects.load();
  st.first_byte_timeouts = s->first_byte_timeouts.load();
  st.token_refreshes = s->token_refreshes.load();
  st.http2 = s->http2.load();
  st.latency_p50_s = s->latency.Quantile(0.5);
  st.latency_p99_s = s->latency.Quantile(0.99);
  return st;
}

}  // namespace hivedata
