#include "bind_transport.h"

#include <functional>
#include <unordered_map>

namespace py = pybind11;

namespace hivedata {

EngineOptions EngineOptionsFrom(const std::string& endpoint, const py::kwargs& kw) {
  EngineOptions o;
  o.endpoint = endpoint;
  using Setter = std::function<void(EngineOptions&, py::handle)>;
  auto i = [](int EngineOptions::*f) -> Setter { return [f](EngineOptions& e, py::handle v) { e.*f = v.cast<int>(); }; };
  auto d = [](double EngineOptions::*f) -> Setter {
    return [f](EngineOptions& e, py::handle v) { e.*f = v.cast<double>(); };
  };
  static const std::unordered_map<std::string, Setter> setters = {
      {"max_in_flight", i(&EngineOptions::max_in_flight)},
      {"max_connections", i(&EngineOptions::max_connections)},
      {"streams_per_connection", i(&EngineOptions::streams_per_connection)},
      {"http_version", i(&EngineOptions::http_version)},
      {"max_attempts", i(&EngineOptions::max_attempts)},
      {"retry_budget_s", d(&EngineOptions::retry_budget_s)},
      {"backoff_base_s", d(&EngineOptions::backoff_base_s)},
      {"backoff_max_s", d(&EngineOptions::backoff_max_s)},
      {"connect_timeout_s", d(&EngineOptions::connect_timeout_s)},
      {"request_timeout_s", d(&EngineOptions::request_timeout_s)},
      {"low_speed_time_s", d(&EngineOptions::low_speed_time_s)},
      {"first_byte_timeout_s", d(&EngineOptions::first_byte_timeout_s)},
      {"hedge_budget", d(&EngineOptions::hedge_budget)},
      {"hedge_multiple", d(&EngineOptions::hedge_multiple)},
      {"hedge_min_s", d(&EngineOptions::hedge_min_s)},
      {"hedge_max_s", d(&EngineOptions::hedge_max_s)},
      {"token_wait_s", d(&EngineOptions::token_wait_s)},
      {"verify_crc32c", [](EngineOptions& e, py::handle v) { e.verify_crc32c = v.cast<bool>(); }},
      {"user_agent", [](EngineOptions& e, py::handle v) { e.user_agent = v.cast<std::string>(); }},
      {"ca_bundle",
       [](EngineOptions& e, py::handle v) { e.ca_bundle = v.is_none() ? std::string() : v.cast<std::string>(); }},
  };
  for (auto item : kw) {
    std::string name = item.first.cast<std::string>();
    auto it = setters.find(name);
    if (it == setters.end()) throw py::type_error("unknown transport option '" + name + "'");
    it->second(o, item.second);
  }
  return o;
}

void AddEngineStats(py::dict& d, const EngineStats& s, const std::string& prefix) {
  auto put = [&](const char* name, py::object v) { d[py::str(prefix + name)] = std::move(v); };
  put("submitted", py::int_(s.submitted));
  put("succeeded", py::int_(s.succeeded));
  put("failed", py::int_(s.failed));
  put("retries", py::int_(s.retries));
  put("bytes", py::int_(s.bytes));
  put("http_retryable", py::int_(s.http_retryable));
  put("network_errors", py::int_(s.network_errors));
  put("checksum_failures", py::int_(s.checksum_failures));
  put("in_flight", py::int_(s.in_flight));
  put("queued", py::int_(s.queued));
  put("hedges", py::int_(s.hedges));
  put("hedge_wins", py::int_(s.hedge_wins));
  put("connects", py::int_(s.connects));
  put("first_byte_timeouts", py::int_(s.first_byte_timeouts));
  put("token_refreshes", py::int_(s.token_refreshes));
  put("http2", py::int_(s.http2));
  put("latency_p50_s", py::float_(s.latency_p50_s));
  put("latency_p99_s", py::float_(s.latency_p99_s));
}

}  // namespace hivedata
