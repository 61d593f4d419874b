// Python binding of the fetch engine: submit requests into caller-owned buffers, poll results
// with the GIL released and Ctrl-C honoured.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <unordered_set>

#include "bind_buffers.h"
#include "bind_errors.h"
#include "bind_handle.h"
#include "bind_transport.h"
#include "crc32c.h"
#include "fetch_engine.h"
#include "gcs_url.h"

namespace py = pybind11;

namespace hivedata {
namespace {

struct PyResult {
  uint64_t tag;
  std::string bucket, object;
  FetchStatus status;
  size_t nbytes;
  int attempts;
  double latency_s;
  std::optional<py::bytes> owned;
};


class PyFetchEngine {
 public:
  explicit PyFetchEngine(EngineOptions opt) : engine_(std::make_unique<FetchEngine>(std::move(opt)), "fetch engine") {}

  ~PyFetchEngine() { Close(); }

  void SetToken(std::string token) { Engine()->SetToken(std::move(token)); }

  // items: (tag, bucket, object, offset, length, generation, buffer or None)
  void Submit(const std::vector<py::tuple>& items) {
    FetchEngine* e = Engine();
    std::vector<FetchRequest> reqs;
    reqs.reserve(items.size());
    std::vector<std::pair<uint64_t, Lent>> lent;
    std::unordered_set<uint64_t> seen;
    for (const py::tuple& it : items) {
      if (it.size() != 7) throw py::value_error("each request is (tag, bucket, object, offset, length, generation, buffer)");
      FetchRequest r;
      r.tag = it[0].cast<uint64_t>();
      r.bucket = it[1].cast<std::string>();
      r.object = it[2].cast<std::string>();
      r.offset = it[3].cast<int64_t>();
      r.length = it[4].is_none() ? -1 : it[4].cast<int64_t>();
      r.generation = it[5].is_none() ? 0 : it[5].cast<int64_t>();
      if (lent_.count(r.tag)) throw py::value_error("tag " + std::to_string(r.tag) + " is already in flight");
      if (!seen.insert(r.tag).second) throw py::value_error("tag " + std::to_string(r.tag) + " appears twice");
      py::object buf = it[6];
      if (!buf.is_none()) {
        Lent l(buf);
        r.dst = l.data();
        r.capacity = l.size();
        lent.emplace_back(r.tag, std::move(l));
      } else {
        lent.emplace_back(r.tag, Lent());
      }
      reqs.push_back(std::move(r));
    }
    e->Start();  // a thread that cannot start is an exception before any buffer is lent
    for (auto& kv : lent) lent_.emplace(kv.first, std::move(kv.second));
    try {
      engine_.Released([&](FetchEngine& engine) { engine.Submit(std::move(reqs)); });
    } catch (...) {
      for (auto& kv : lent) lent_.erase(kv.first);  // taken by none: Submit throws before taking any
      throw;
    }
  }

  // Finished results in completion order; waits (GIL released, Ctrl-C honoured) up to timeout
  // for the first one, or until nothing is outstanding. timeout None waits as long as needed.
  // close() from another thread raises RuntimeError here.
  py::list Poll(size_t max, std::optional<double> timeout) {
    Engine();
    std::vector<FetchResult> out;
    engine_.WaitSliced(
        timeout, [](FetchEngine& e) { return e.Outstanding() == 0 || e.TokenWanted(); },
        [&](FetchEngine& e, double slice) { return e.Poll(&out, max, slice, /*wake_for_token=*/true) > 0; });
    py::list res;
    for (FetchResult& r : out) {
      PyResult p{r.tag, std::move(r.bucket), std::move(r.object), std::move(r.status), r.nbytes, r.attempts,
                 r.latency_s, std::nullopt};
      auto it = lent_.find(r.tag);
      bool had_buffer = it != lent_.end() && it->second.held();
      if (p.status.ok() && !had_buffer) {
        p.owned = py::bytes(reinterpret_cast<const char*>(r.owned.data()), r.owned.size());
      }
      if (it != lent_.end()) lent_.erase(it);
      res.append(py::cast(std::move(p)));
    }
    return res;
  }

  // Asynchronous: the cancelled results arrive through poll().
  void RequestCancelAll() { Engine()->RequestCancelAll(); }

  size_t Outstanding() { return Engine()->Outstanding(); }

  py::dict Stats() {
    py::dict d;
    AddEngineStats(d, Engine()->Stats(), "");
    return d;
  }

  bool TokenWanted() { return Engine()->TokenWanted(); }

  // Stops and joins the I/O thread (no more writes into lent buffers), ends every poll() waiting in other
  // threads, then gives the buffers back. Safe from any thread, and at interpreter exit.
  void Close() {
    engine_.Close([](FetchEngine& e) { e.Shutdown(); });
    lent_.clear();
  }

  bool closed() const { return engine_.closed(); }

 private:
  FetchEngine* Engine() {
    FetchEngine* e = engine_.Get();
    lent_.ForgetIfForked();
    return e;
  }

  SharedHandle<FetchEngine> engine_;
  LentMap<Lent> lent_;
};

}  // namespace

void BindFetch(py::module_& m) {
  py::class_<PyResult>(m, "FetchResult")
      .def_readonly("tag", &PyResult::tag)
      .def_readonly("bucket", &PyResult::bucket)
      .def_readonly("object", &PyResult::object)
      .def_readonly("nbytes", &PyResult::nbytes)
      .def_readonly("attempts", &PyResult::attempts)
      .def_readonly("latency_s", &PyResult::latency_s)
      .def_property_readonly("ok", [](const PyResult& r) { return r.status.ok(); })
      .def_property_readonly("kind", [](const PyResult& r) { return r.status.kind; })
      .def_property_readonly("http_status", [](const PyResult& r) { return r.status.http_status; })
      .def_property_readonly("message", [](const PyResult& r) { return r.status.message; })
      .def_property_readonly("data", [](const PyResult& r) -> py::object {
        return r.owned ? py::object(*r.owned) : py::object(py::none());
      })
      .def_property_readonly("error", [](const PyResult& r) { return MakeError(r.status, r.bucket, r.object); })
      .def("raise_for_status", [](const PyResult& r) {
        if (!r.status.ok()) ThrowStatus(r.status, r.bucket, r.object);
      })
      .def("__repr__", [](const PyResult& r) {
        return "<FetchResult " + GcsUri(r.bucket, r.object) + (r.status.ok() ? " ok " + std::to_string(r.nbytes) + " bytes"
                                                                               : " failed: " + r.status.message) + ">";
      });

  py::class_<PyFetchEngine>(m, "FetchEngine")
      .def(py::init([](const std::string& endpoint, const py::kwargs& kw) {
             return std::make_unique<PyFetchEngine>(EngineOptionsFrom(endpoint, kw));
           }),
           py::kw_only(), py::arg("endpoint"),
           "Transport options by keyword, named like EngineOptions' fields (csrc/fetch_engine.h).")
      .def("set_token", &PyFetchEngine::SetToken, py::arg("token"))
      .def("submit", &PyFetchEngine::Submit, py::arg("requests"))
      .def("poll", &PyFetchEngine::Poll, py::arg("max") = static_cast<size_t>(1) << 20, py::arg("timeout") = py::none())
      .def("cancel_all", &PyFetchEngine::RequestCancelAll,
           "Asks every request submitted so far to finish as cancelled; returns at once (results come via poll)")
      .def("stats", &PyFetchEngine::Stats)
      .def("close", &PyFetchEngine::Close)
      .def_property_readonly("outstanding", &PyFetchEngine::Outstanding)
      .def_property_readonly("token_wanted", &PyFetchEngine::TokenWanted,
                             "True while a request refused with 401 waits for set_token(a fresh token)")
      .def_property_readonly("closed", &PyFetchEngine::closed);

  m.def(
      "crc32c",
      [](py::buffer b) {
        py::buffer_info info = b.request();
        const auto* p = static_cast<const uint8_t*>(info.ptr);
        size_t n = static_cast<size_t>(info.size * info.itemsize);
        py::gil_scoped_release release;
        return Crc32c(p, n);
      },
      py::arg("data"), "CRC-32C of a contiguous buffer.");
  m.def("percent_encode", &PercentEncode, py::arg("text"), "Percent-encodes an object name for a URL path.");
}

}  // namespace hivedata
