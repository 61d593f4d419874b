// Python binding of the batch pipeline: submit a batch (objects + caller-owned arena and output slot),
// poll finished batches with the GIL released and Ctrl-C honoured.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <tuple>
#include <unordered_map>

#include "bind_buffers.h"
#include "bind_errors.h"
#include "pipeline.h"

namespace py = pybind11;

namespace hivedata {
namespace {

constexpr double kWaitSlice = 0.05;
using SpanTuple = std::tuple<int64_t, uint64_t, uint64_t, bool, std::vector<size_t>>;

struct LentBatch {
  Lent arena;
  Lent out;
};

class PyPipeline {
 public:
  explicit PyPipeline(PipelineOptions opt) : p_(std::make_unique<Pipeline>(std::move(opt))), pid_(getpid()) {}
  ~PyPipeline() { Close(); }

  void SetToken(std::string token) { Get()->SetToken(std::move(token)); }

  // objects[i] is fetched into arena[offsets[i]:offsets[i]+sizes[i]] (or already there when in_memory),
  // then decoded into out[i] (decode mode). With starts, item i is the byte range
  // [starts[i], starts[i] + sizes[i]) of objects[i] (a sample inside a shard) instead of the whole object.
  // With spans, each (start, length, arena offset, present, [item indices]) is one GET filling several
  // items (coalesced adjacent members of a shard); present: already in the arena (a cache hit).
  void Submit(uint64_t batch_id, const std::string& bucket, const std::vector<std::string>& objects,
              const std::vector<int64_t>& generations, const std::vector<uint64_t>& seeds,
              const std::vector<uint64_t>& offsets, const std::vector<uint64_t>& sizes, bool in_memory,
              const py::object& arena, const py::object& out, const std::vector<int64_t>& starts,
              const std::vector<SpanTuple>& spans) {
    Pipeline* p = Get();
    size_t n = objects.size();
    if (!starts.empty() && starts.size() != n) throw py::value_error("starts must be empty or one per object");
    if (generations.size() != n || seeds.size() != n || offsets.size() != n || sizes.size() != n) {
      throw py::value_error("objects, generations, seeds, offsets and sizes must have the same length");
    }
    if (lent_.count(batch_id)) throw py::value_error("batch " + std::to_string(batch_id) + " is already in flight");
    LentBatch lb{Lent(arena, !in_memory), out.is_none() ? Lent() : Lent(out, true)};
    const auto& a = p->options().augment;
    if (p->options().decode) {
      size_t need = n * static_cast<size_t>(a.out_h) * a.out_w * 3;
      if (!lb.out.held() || lb.out.size() < need) {
        throw py::value_error("output slot holds " + std::to_string(lb.out.held() ? lb.out.size() : 0) +
                              " bytes; the batch needs " + std::to_string(need));
      }
    }
    std::vector<PipelineItem> items(n);
    for (size_t i = 0; i < n; ++i) {
      items[i].object = objects[i];
      items[i].generation = generations[i];
      items[i].sample_seed = seeds[i];
      items[i].offset = offsets[i];
      items[i].size = sizes[i];
      items[i].in_memory = in_memory;
      if (!starts.empty()) {
        if (starts[i] < 0) throw py::value_error("starts[" + std::to_string(i) + "] is negative");
        items[i].range_start = starts[i];
      }
    }
    std::vector<PipelineSpan> cspans(spans.size());
    for (size_t k = 0; k < spans.size(); ++k) {
      std::tie(cspans[k].start, cspans[k].length, cspans[k].offset, cspans[k].present, cspans[k].items) = spans[k];
    }
    uint8_t* arena_ptr = lb.arena.data();
    size_t arena_size = lb.arena.size();
    uint8_t* out_ptr = lb.out.held() ? lb.out.data() : nullptr;
    lent_.emplace(batch_id, std::move(lb));  // before C++ may touch them
    try {
      py::gil_scoped_release release;
      p->Submit(batch_id, bucket, std::move(items), arena_ptr, arena_size, out_ptr, std::move(cspans));
    } catch (...) {
      lent_.erase(batch_id);
      throw;
    }
  }

  // (batch_id, nbytes per sample, [(index, exception)] for failed samples, decode seconds), or None on timeout.
  py::object Poll(std::optional<double> timeout) {
    Pipeline* p = Get();
    BatchResult r;
    bool got = false;
    auto start = std::chrono::steady_clock::now();
    while (!got) {
      if (p->Outstanding() == 0) return py::none();
      double slice = kWaitSlice;
      if (timeout) {
        double spent = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        slice = std::min(kWaitSlice, *timeout - spent);
      }
      {
        py::gil_scoped_release release;
        got = p->Poll(&r, std::max(slice, 0.0));
      }
      if (got) break;
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
      if (timeout && slice <= 0) return py::none();
    }
    lent_.erase(r.batch_id);
    py::list nbytes;
    py::list failed;
    for (size_t i = 0; i < r.samples.size(); ++i) {
      nbytes.append(r.samples[i].nbytes);
      if (!r.samples[i].status.ok()) {
        failed.append(py::make_tuple(i, MakeError(r.samples[i].status, r.bucket, r.objects[i])));
      }
    }
    return py::make_tuple(r.batch_id, nbytes, failed, r.decode_s);
  }

  void CancelAll() { Get()->CancelAll(); }
  size_t Outstanding() { return Get()->Outstanding(); }

  py::dict Stats() {
    PipelineStats s = Get()->Stats();
    py::dict d;
    d["batches"] = s.batches;
    d["decoded"] = s.decoded;
    d["decode_errors"] = s.decode_errors;
    d["decode_s"] = s.decode_s;
    d["batches_in_flight"] = s.batches_in_flight;
    d["gets"] = s.gets;
    d["present"] = s.present;
    d["splits"] = s.splits;
    d["objects"] = s.fetch.succeeded;
    d["fetch_failed"] = s.fetch.failed;
    d["bytes"] = s.fetch.bytes;
    d["retries"] = s.fetch.retries;
    d["fetch_latency_p50_s"] = s.fetch.latency_p50_s;
    d["fetch_latency_p99_s"] = s.fetch.latency_p99_s;
    d["fetch_in_flight"] = s.fetch.in_flight;
    return d;
  }

  void Close() {
    if (p_) {
      std::unique_ptr<Pipeline> p = std::move(p_);
      py::gil_scoped_release release;
      p.reset();  // joins every thread: nothing writes into lent buffers after this
    }
    lent_.clear();
  }

 private:
  Pipeline* Get() {
    if (!p_) throw std::runtime_error("the pipeline is closed");
    pid_t pid = getpid();
    if (pid != pid_) {  // forked child: the parent's batches do not exist here
      lent_.clear();
      pid_ = pid;
    }
    return p_.get();
  }

  std::unique_ptr<Pipeline> p_;
  std::unordered_map<uint64_t, LentBatch> lent_;
  pid_t pid_;
};

}  // namespace

void BindPipeline(py::module_& m) {
  py::class_<PyPipeline>(m, "Pipeline")
      .def(py::init([](const std::string& endpoint, int max_in_flight, int max_connections, int max_attempts,
                       double retry_budget_s, double backoff_base_s, double backoff_max_s, double request_timeout_s,
                       int threads, bool decode, int out_h, int out_w, bool train, std::pair<double, double> scale,
                       std::pair<double, double> ratio, double flip_p, double eval_crop_ratio, int64_t max_pixels) {
             PipelineOptions o;
             o.fetch.endpoint = endpoint;
             o.fetch.max_in_flight = max_in_flight;
             o.fetch.max_connections = max_connections;
             o.fetch.max_attempts = max_attempts;
             o.fetch.retry_budget_s = retry_budget_s;
             o.fetch.backoff_base_s = backoff_base_s;
             o.fetch.backoff_max_s = backoff_max_s;
             o.fetch.request_timeout_s = request_timeout_s;
             o.threads = threads;
             o.decode = decode;
             o.augment.out_h = out_h;
             o.augment.out_w = out_w;
             o.augment.train = train;
             o.augment.scale_min = scale.first;
             o.augment.scale_max = scale.second;
             o.augment.ratio_min = ratio.first;
             o.augment.ratio_max = ratio.second;
             o.augment.flip_p = flip_p;
             o.augment.eval_crop_ratio = eval_crop_ratio;
             o.augment.max_pixels = max_pixels;
             return std::make_unique<PyPipeline>(std::move(o));
           }),
           py::kw_only(), py::arg("endpoint"), py::arg("max_in_flight") = 64, py::arg("max_connections") = 64,
           py::arg("max_attempts") = 8, py::arg("retry_budget_s") = 60.0, py::arg("backoff_base_s") = 0.05,
           py::arg("backoff_max_s") = 5.0, py::arg("request_timeout_s") = 120.0, py::arg("threads") = 0,
           py::arg("decode") = true, py::arg("out_h") = 224, py::arg("out_w") = 224, py::arg("train") = true,
           py::arg("scale") = std::make_pair(0.08, 1.0), py::arg("ratio") = std::make_pair(3.0 / 4.0, 4.0 / 3.0),
           py::arg("flip_p") = 0.5, py::arg("eval_crop_ratio") = 0.875, py::arg("max_pixels") = 178956970)
      .def("set_token", &PyPipeline::SetToken, py::arg("token"))
      .def("submit", &PyPipeline::Submit, py::arg("batch_id"), py::arg("bucket"), py::arg("objects"),
           py::arg("generations"), py::arg("seeds"), py::arg("offsets"), py::arg("sizes"), py::arg("in_memory"),
           py::arg("arena"), py::arg("out"), py::arg("starts") = std::vector<int64_t>{},
           py::arg("spans") = std::vector<SpanTuple>{})
      .def("poll", &PyPipeline::Poll, py::arg("timeout") = py::none())
      .def("cancel_all", &PyPipeline::CancelAll)
      .def("stats", &PyPipeline::Stats)
      .def("close", &PyPipeline::Close)
      .def_property_readonly("outstanding", &PyPipeline::Outstanding);
}

}  // namespace hivedata
