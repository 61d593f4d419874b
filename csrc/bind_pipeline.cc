// Python binding of the batch pipeline: submit a batch (a ReadPlan, per-sample seeds, a caller-owned arena and
// output slot), poll finished batches (PipelineResult) with the GIL released and Ctrl-C honoured.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <optional>

#include "bind_augment.h"
#include "bind_buffers.h"
#include "bind_handle.h"
#include "bind_transport.h"
#include "bind_errors.h"
#include "pipeline.h"

namespace py = pybind11;

namespace hivedata {
namespace {

struct LentBatch {
  Lent arena;
  Lent out;
};

// A finished batch as Python sees it (hivedata._native.PipelineResult).
struct PyBatchResult {
  uint64_t batch_id = 0;
  std::vector<size_t> nbytes;  // encoded bytes per sample
  py::list failed;             // [(sample index, exception)] of the samples that failed
  double decode_s = 0.0;       // decode thread time summed over the batch
};

// Per sample of a Python ReadPlan: its expected crc32c (`crcs`: None, or -1 where a sample has none).
void ReadCrcs(const py::handle& plan, std::vector<PipelineItem>* items) {
  const py::object crcs = plan.attr("crcs");
  if (crcs.is_none()) return;
  const auto values = crcs.attr("tolist")().cast<std::vector<int64_t>>();
  if (values.size() != items->size()) {
    throw py::value_error("the plan has " + std::to_string(values.size()) + " crcs for " +
                          std::to_string(items->size()) + " samples");
  }
  for (size_t i = 0; i < values.size(); ++i) {
    if (values[i] < -1 || values[i] > int64_t{0xFFFFFFFF}) {
      throw py::value_error("crc " + std::to_string(values[i]) + " of sample " + std::to_string(i) +
                            " is neither -1 (none) nor a 32-bit value");
    }
    (*items)[i].has_crc = values[i] >= 0;
    (*items)[i].crc32c = static_cast<uint32_t>(values[i] >= 0 ? values[i] : 0);
  }
}

// A Python ReadPlan (hivedata.sources.read_plan) read into the native items and spans: its `offsets`,
// `sizes` and `crcs` per sample, its `spans` (object, generation, start, length, offset, present, members).
void ReadPlan(const py::handle& plan, const std::vector<uint64_t>& seeds, std::vector<PipelineItem>* items,
              std::vector<PipelineSpan>* spans) {
  const auto offsets = plan.attr("offsets").attr("tolist")().cast<std::vector<uint64_t>>();
  const auto sizes = plan.attr("sizes").attr("tolist")().cast<std::vector<uint64_t>>();
  if (offsets.size() != seeds.size() || sizes.size() != seeds.size()) {
    throw py::value_error("the plan has " + std::to_string(offsets.size()) + " offsets and " +
                          std::to_string(sizes.size()) + " sizes for " + std::to_string(seeds.size()) + " seeds");
  }
  items->resize(seeds.size());
  for (size_t i = 0; i < seeds.size(); ++i) (*items)[i] = PipelineItem{seeds[i], offsets[i], sizes[i]};
  ReadCrcs(plan, items);
  const py::sequence in = plan.attr("spans");
  spans->resize(in.size());
  for (size_t k = 0; k < in.size(); ++k) {
    const py::handle s = in[k];
    PipelineSpan& sp = (*spans)[k];
    sp.object = s.attr("object").cast<std::string>();
    sp.generation = s.attr("generation").cast<int64_t>();
    sp.start = s.attr("start").cast<int64_t>();
    sp.length = s.attr("length").cast<uint64_t>();
    sp.offset = s.attr("offset").cast<uint64_t>();
    sp.present = s.attr("present").cast<bool>();
    sp.items = s.attr("members").cast<std::vector<size_t>>();
  }
}

class PyPipeline {
 public:
  explicit PyPipeline(PipelineOptions opt) : p_(std::make_unique<Pipeline>(std::move(opt)), "pipeline") {}
  ~PyPipeline() { Close(); }

  void SetToken(std::string token) { Get()->SetToken(std::move(token)); }

  // The samples of `plan` are read into `arena` as its spans say (present spans are there already), then
  // decoded into out[i] (decode mode) with the crop of seeds[i].
  void Submit(uint64_t batch_id, const py::object& plan, const std::vector<uint64_t>& seeds, const py::object& arena,
              const py::object& out) {
    Pipeline* p = Get();
    if (lent_.count(batch_id)) throw py::value_error("batch " + std::to_string(batch_id) + " is already in flight");
    std::vector<PipelineItem> items;
    std::vector<PipelineSpan> spans;
    ReadPlan(plan, seeds, &items, &spans);
    const bool writes = std::any_of(spans.begin(), spans.end(), [](const PipelineSpan& s) { return !s.present; });
    LentBatch lb{Lent(arena, writes), out.is_none() ? Lent() : Lent(out, true)};
    const auto& a = p->options().augment;
    if (p->options().decode) {
      size_t need = items.size() * static_cast<size_t>(a.out_h) * a.out_w * 3;
      if (!lb.out.held() || lb.out.size() < need) {
        throw py::value_error("output slot holds " + std::to_string(lb.out.held() ? lb.out.size() : 0) +
                              " bytes; the batch needs " + std::to_string(need));
      }
    }
    const std::string bucket = plan.attr("bucket").cast<std::string>();
    uint8_t* arena_ptr = lb.arena.data();
    size_t arena_size = lb.arena.size();
    uint8_t* out_ptr = lb.out.held() ? lb.out.data() : nullptr;
    lent_.emplace(batch_id, std::move(lb));  // before C++ may touch them
    try {
      p_.Released([&](Pipeline& pl) {
        pl.Submit(batch_id, bucket, std::move(items), std::move(spans), arena_ptr, arena_size, out_ptr);
      });
    } catch (...) {
      // Pipeline::Submit throws only before it took the batch (a batch once taken completes, failing what it
      // cannot fetch); a close() meanwhile stopped every thread that could still touch the buffers.
      lent_.erase(batch_id);
      throw;
    }
  }

  // The next finished batch, or None when none finished within `timeout` (None: wait while any is outstanding).
  // close() from another thread raises RuntimeError here.
  py::object Poll(std::optional<double> timeout) {
    Get();
    BatchResult r;
    const bool got = p_.WaitSliced(
        timeout, [](Pipeline& p) { return p.Outstanding() == 0 || p.TokenWanted(); },
        [&](Pipeline& p, double slice) { return p.Poll(&r, slice); });
    if (!got) return py::none();
    lent_.erase(r.batch_id);
    PyBatchResult out;
    out.batch_id = r.batch_id;
    out.decode_s = r.decode_s;
    out.nbytes.reserve(r.samples.size());
    for (size_t i = 0; i < r.samples.size(); ++i) {
      out.nbytes.push_back(r.samples[i].nbytes);
      if (!r.samples[i].status.ok()) {
        out.failed.append(py::make_tuple(i, MakeError(r.samples[i].status, r.bucket, r.objects[i])));
      }
    }
    return py::cast(std::move(out));
  }

  // Asynchronous: the cancelled batches arrive through poll().
  void RequestCancelAll() { Get()->RequestCancelAll(); }
  size_t Outstanding() { return Get()->Outstanding(); }
  bool TokenWanted() { return Get()->TokenWanted(); }

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
    d["verified"] = s.verified;
    d["unverified"] = s.unverified;
    d["checksum_retries"] = s.checksum_retries;
    d["checksum_errors"] = s.checksum_errors;
    d["decode_warnings"] = s.decode_warnings;
    d["warned"] = s.warned;
    d["objects"] = s.fetch.succeeded;
    d["fetch_failed"] = s.fetch.failed;
    d["bytes"] = s.fetch.bytes;
    d["retries"] = s.fetch.retries;
    d["fetch_latency_p50_s"] = s.fetch.latency_p50_s;
    d["fetch_latency_p99_s"] = s.fetch.latency_p99_s;
    d["fetch_in_flight"] = s.fetch.in_flight;
    d["hedges"] = s.fetch.hedges;
    d["hedge_wins"] = s.fetch.hedge_wins;
    d["connects"] = s.fetch.connects;
    d["first_byte_timeouts"] = s.fetch.first_byte_timeouts;
    d["token_refreshes"] = s.fetch.token_refreshes;
    d["http2"] = s.fetch.http2;
    return d;
  }

  // Stops every native thread (nothing writes into lent buffers after this), ends every poll() waiting in
  // other threads, then gives the buffers back. Safe from any thread.
  void Close() {
    p_.Close([](Pipeline& p) { p.Shutdown(); });
    lent_.clear();
  }

 private:
  Pipeline* Get() {
    Pipeline* p = p_.Get();
    lent_.ForgetIfForked();
    return p;
  }

  SharedHandle<Pipeline> p_;
  LentMap<LentBatch> lent_;
};

}  // namespace

void BindPipeline(py::module_& m) {
  py::class_<PyBatchResult>(m, "PipelineResult", "A finished batch of hivedata._native.Pipeline.")
      .def_readonly("batch_id", &PyBatchResult::batch_id)
      .def_readonly("nbytes", &PyBatchResult::nbytes, "encoded bytes per sample")
      .def_readonly("failed", &PyBatchResult::failed, "[(sample index, exception)] of the failed samples")
      .def_readonly("decode_s", &PyBatchResult::decode_s, "decode thread time summed over the batch");
  py::class_<PyPipeline>(m, "Pipeline")
      .def(py::init([](const std::string& endpoint, const AugmentParams& augment, int threads, bool decode,
                       const py::kwargs& kw) {
             PipelineOptions o;
             o.fetch = EngineOptionsFrom(endpoint, kw);
             o.threads = threads;
             o.decode = decode;
             o.augment = augment;
             return std::make_unique<PyPipeline>(std::move(o));
           }),
           py::kw_only(), py::arg("endpoint"), py::arg("augment") = AugmentParams(), py::arg("threads") = 0,
           py::arg("decode") = true, "Transport options by keyword, as for FetchEngine.")
      .def("set_token", &PyPipeline::SetToken, py::arg("token"))
      .def("submit", &PyPipeline::Submit, py::arg("batch_id"), py::arg("plan"), py::arg("seeds"), py::arg("arena"),
           py::arg("out"))
      .def("poll", &PyPipeline::Poll, py::arg("timeout") = py::none())
      .def("cancel_all", &PyPipeline::RequestCancelAll,
           "Asks every batch in flight to finish as cancelled; returns at once (the batches come via poll)")
      .def("stats", &PyPipeline::Stats)
      .def("close", &PyPipeline::Close)
      .def_property_readonly("outstanding", &PyPipeline::Outstanding)
      .def_property_readonly("token_wanted", [](PyPipeline& p) { return p.TokenWanted(); },
                             "True while a GET refused with 401 waits for set_token(a fresh token)");
}

}  // namespace hivedata
