#include "fetch_engine.h"

#include <curl/curl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <stdexcept>
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
      return true;
    default:
      return false;
  }
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
  int attempts = 0;
  uint64_t seq = 0;  // the Submit() call it came from: CancelAll() only reaches earlier submissions
  Clock::time_point first_start{};
  Clock::time_point ready_at{};
  FetchStatus last_error;
  // Per attempt.
  size_t written = 0;
  long http_status = 0;
  bool has_crc = false;
  uint32_t header_crc = 0;
  int64_t content_length = -1;
  double retry_after_s = -1.0;
  std::string error_body;
  FetchStatus abort_status;

  std::string Describe() const {
    std::string d = GcsUri(req.bucket, req.object);
    if (req.offset != 0 || req.length >= 0) d += " (" + RangeHeaderValue(req.offset, req.length) + ")";
    return d;
  }
  void ResetAttempt() {
    written = 0;
    http_status = 0;
    has_crc = false;
    content_length = -1;
    retry_after_s = -1.0;
    error_body.clear();
    abort_status = FetchStatus{};
    owned.clear();
  }
};

struct FetchEngine::State {
  explicit State(const EngineOptions& o) : opt(o) {
    GlobalInitOnce();
    multi = curl_multi_init();
    if (!multi) throw std::runtime_error("curl_multi_init failed");
    curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, static_cast<long>(opt.max_connections));
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, static_cast<long>(opt.max_connections));
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, static_cast<long>(opt.max_connections));
    curl_multi_setopt(multi, CURLMOPT_PIPELINING, static_cast<long>(CURLPIPE_MULTIPLEX));
    rng = static_cast<uint64_t>(Clock::now().time_since_epoch().count()) | 1u;
  }

  ~State() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stop = true;
    }
    curl_multi_wakeup(multi);
    if (io.joinable()) io.join();
    for (auto& kv : active) {
      curl_multi_remove_handle(multi, kv.first);
      curl_slist_free_all(kv.second->headers);
      curl_easy_cleanup(kv.first);
    }
    for (CURL* e : free_easy) curl_easy_cleanup(e);
    curl_multi_cleanup(multi);
  }

  void EnsureStarted() {
    std::lock_guard<std::mutex> lock(mu);
    if (!started) {
      started = true;
      io = std::thread([this] { Run(); });
    }
  }

  void Run();
  void StartAttempt(std::unique_ptr<Transfer> t);
  void FinishAttempt(CURL* easy, CURLcode rc);
  FetchStatus Judge(Transfer* t, CURLcode rc, bool* retryable);
  void Complete(std::unique_ptr<Transfer> t, FetchStatus status);
  void CancelUpTo(uint64_t seq);
  double Backoff(const Transfer& t);

  static size_t OnHeader(char* buf, size_t size, size_t n, void* userp);
  static size_t OnBody(char* buf, size_t size, size_t n, void* userp);

  EngineOptions opt;
  CURLM* multi = nullptr;
  std::thread io;

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
  uint64_t cancel_upto = 0;  // pending CancelAll(): cancel transfers with seq <= this (0: none)

  // I/O thread only.
  std::deque<std::unique_ptr<Transfer>> ready;
  std::vector<std::unique_ptr<Transfer>> delayed;
  std::unordered_map<CURL*, std::unique_ptr<Transfer>> active;
  std::vector<CURL*> free_easy;
  std::string io_token;
  uint64_t io_token_version = 0;
  uint64_t rng;

  std::atomic<uint64_t> outstanding{0}, submitted{0}, succeeded{0}, failed{0}, retries{0}, bytes{0};
  std::atomic<uint64_t> http_retryable{0}, network_errors{0}, checksum_failures{0};
  std::atomic<uint64_t> n_active{0}, n_queued{0};
  LatencyHistogram latency;
};

size_t FetchEngine::State::OnHeader(char* buf, size_t size, size_t n, void* userp) {
  auto* t = static_cast<Transfer*>(userp);
  size_t len = size * n;
  std::string line(buf, len);
  if (line.rfind("HTTP/", 0) == 0) {  // a new response (after 100-continue or a redirect)
    t->http_status = 0;
    t->has_crc = false;
    t->content_length = -1;
    t->retry_after_s = -1.0;
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
  } else if (name == "retry-after") {
    char* end = nullptr;
    double v = std::strtod(value.c_str(), &end);
    if (end != value.c_str() && v >= 0) t->retry_after_s = v;
  }
  return len;
}

size_t FetchEngine::State::OnBody(char* buf, size_t size, size_t n, void* userp) {
  auto* t = static_cast<Transfer*>(userp);
  size_t len = size * n;
  if (t->http_status < 200 || t->http_status >= 300) {
    size_t room = t->error_body.size() < 1024 ? 1024 - t->error_body.size() : 0;
    t->error_body.append(buf, std::min(room, len));
    return len;
  }
  if (t->req.dst != nullptr) {
    bool too_big = t->written + len > t->req.capacity ||
                   (t->written == 0 && t->content_length > static_cast<int64_t>(t->req.capacity));
    if (too_big) {
      int64_t size_hint = t->content_length >= 0 ? t->content_length : static_cast<int64_t>(t->written + len);
      t->abort_status = FetchStatus{ErrorKind::kBufferTooSmall, static_cast<int>(t->http_status), 0,
                                    t->Describe() + " has at least " + std::to_string(size_hint) +
                                        " bytes but the buffer holds " + std::to_string(t->req.capacity)};
      return 0;  // aborts the transfer
    }
    std::memcpy(t->req.dst + t->written, buf, len);
  } else {
    if (t->written == 0 && t->content_length > 0) t->owned.reserve(static_cast<size_t>(t->content_length));
    t->owned.insert(t->owned.end(), buf, buf + len);
  }
  t->written += len;
  return len;
}

void FetchEngine::State::StartAttempt(std::unique_ptr<Transfer> t) {
  Transfer* raw = t.get();
  if (raw->attempts == 0) raw->first_start = Clock::now();
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
  std::string url = DownloadUrl(opt.endpoint, raw->req.bucket, raw->req.object, raw->req.generation);
  curl_easy_setopt(easy, CURLOPT_URL, url.c_str());
  curl_easy_setopt(easy, CURLOPT_PRIVATE, raw);
  curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, &State::OnHeader);
  curl_easy_setopt(easy, CURLOPT_HEADERDATA, raw);
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &State::OnBody);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, raw);
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
  if (raw->req.offset != 0 || raw->req.length >= 0) {
    std::string range = "Range: " + RangeHeaderValue(raw->req.offset, raw->req.length);
    headers = curl_slist_append(headers, range.c_str());
  }
  if (!io_token.empty()) {
    std::string auth = "Authorization: Bearer " + io_token;
    headers = curl_slist_append(headers, auth.c_str());
  }
  raw->headers = headers;
  if (headers) curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);

  active.emplace(easy, std::move(t));
  n_active.store(active.size(), std::memory_order_relaxed);
  curl_multi_add_handle(multi, easy);
}

FetchStatus FetchEngine::State::Judge(Transfer* t, CURLcode rc, bool* retryable) {
  *retryable = false;
  const FetchRequest& r = t->req;
  if (!t->abort_status.ok()) return t->abort_status;
  long status = t->http_status;
  if (rc != CURLE_OK) {
    *retryable = IsRetryableCurl(rc);
    network_errors.fetch_add(1, std::memory_order_relaxed);
    return FetchStatus{ErrorKind::kNetwork, static_cast<int>(status), static_cast<int>(rc),
                       std::string("network error fetching ") + t->Describe() + ": " + curl_easy_strerror(rc)};
  }
  std::string what = t->Describe();
  if (status == 200 || status == 206) {
    bool ranged = r.offset != 0 || r.length >= 0;
    if (ranged && status == 200 && r.offset != 0) {
      return FetchStatus{ErrorKind::kHttp, 200, 0, "server ignored the Range header for " + what};
    }
    if (r.length >= 0 && t->written != static_cast<size_t>(r.length)) {
      if (status == 206 || t->written < static_cast<size_t>(r.length)) {
        return FetchStatus{ErrorKind::kBadRange, static_cast<int>(status), 0,
                           what + " extends past the end of the object (got " + std::to_string(t->written) +
                               " of " + std::to_string(r.length) + " bytes)"};
      }
    }
    if (status == 200 && t->content_length >= 0 && t->written != static_cast<size_t>(t->content_length)) {
      *retryable = true;
      return FetchStatus{ErrorKind::kNetwork, 200, 0, "short read of " + what};
    }
    if (status == 200 && !ranged && opt.verify_crc32c && t->has_crc) {
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

void FetchEngine::State::FinishAttempt(CURL* easy, CURLcode rc) {
  auto it = active.find(easy);
  if (it == active.end()) return;
  std::unique_ptr<Transfer> t = std::move(it->second);
  active.erase(it);
  n_active.store(active.size(), std::memory_order_relaxed);
  curl_multi_remove_handle(multi, easy);
  curl_slist_free_all(t->headers);
  t->headers = nullptr;
  free_easy.push_back(easy);

  bool retryable = false;
  FetchStatus st = Judge(t.get(), rc, &retryable);
  if (st.ok()) {
    Complete(std::move(t), std::move(st));
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
  // Only transfers submitted before the CancelAll() call: a later Submit() (say, the next epoch's
  // first batch, queued before this thread got to the request) must not be cancelled with them.
  auto cancel = [this](std::unique_ptr<Transfer> t) {
    FetchStatus st{ErrorKind::kCancelled, 0, 0, "cancelled: " + t->Describe()};
    Complete(std::move(t), std::move(st));
  };
  for (auto it = active.begin(); it != active.end();) {
    if (it->second->seq > seq) {
      ++it;
      continue;
    }
    curl_multi_remove_handle(multi, it->first);
    curl_slist_free_all(it->second->headers);
    it->second->headers = nullptr;
    free_easy.push_back(it->first);
    cancel(std::move(it->second));
    it = active.erase(it);
  }
  n_active.store(active.size(), std::memory_order_relaxed);
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
    while (active.size() < static_cast<size_t>(opt.max_in_flight) && !ready.empty()) {
      std::unique_ptr<Transfer> t = std::move(ready.front());
      ready.pop_front();
      StartAttempt(std::move(t));
    }
    n_queued.store(ready.size() + delayed.size(), std::memory_order_relaxed);

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
    if (finished_any) continue;  // refill the freed slots before sleeping

    int timeout_ms = 100;
    if (next_retry != Clock::time_point::max()) {
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(next_retry - Clock::now()).count();
      timeout_ms = static_cast<int>(std::clamp<int64_t>(ms + 1, 0, timeout_ms));
    }
    curl_multi_poll(multi, nullptr, 0, timeout_ms, nullptr);
  }
}

FetchEngine::FetchEngine(EngineOptions options) : options_(std::move(options)) {
  if (options_.max_in_flight < 1) throw std::invalid_argument("max_in_flight must be >= 1");
  if (options_.max_connections < 1) throw std::invalid_argument("max_connections must be >= 1");
  if (options_.max_attempts < 1) throw std::invalid_argument("max_attempts must be >= 1");
  state_ = new State(options_);
  owner_pid_ = getpid();
}

FetchEngine::~FetchEngine() {
  if (owner_pid_ == getpid()) delete state_;
}

FetchEngine::State* FetchEngine::state() {
  pid_t pid = getpid();
  if (pid != owner_pid_) {
    // Forked child: the parent's I/O thread does not exist here and its locks may be held.
    // Abandon that state (never touch it) and start afresh.
    state_ = new State(options_);
    owner_pid_ = pid;
  }
  return state_;
}

void FetchEngine::SetToken(std::string token) {
  State* s = state();
  std::lock_guard<std::mutex> lock(s->mu);
  s->token = std::move(token);
  s->token_version++;
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

size_t FetchEngine::Poll(std::vector<FetchResult>* out, size_t max, double timeout_s) {
  State* s = state();
  std::unique_lock<std::mutex> lock(s->mu);
  if (s->results.empty() && timeout_s > 0) {
    s->results_cv.wait_for(lock, std::chrono::duration<double>(timeout_s), [s] { return !s->results.empty(); });
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

void FetchEngine::CancelAll() {
  State* s = state();
  {
    std::lock_guard<std::mutex> lock(s->mu);
    s->cancel_upto = s->submit_seq;
  }
  curl_multi_wakeup(s->multi);
}

size_t FetchEngine::Outstanding() const {
  if (owner_pid_ != getpid()) return 0;
  return state_->outstanding.load(std::memory_order_relaxed);
}

EngineStats FetchEngine::Stats() const {
  EngineStats st;
  if (owner_pid_ != getpid()) return st;
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
  st.latency_p50_s = s->latency.Quantile(0.5);
  st.latency_p99_s = s->latency.Quantile(0.99);
  return st;
}

}  // namespace hivedata
