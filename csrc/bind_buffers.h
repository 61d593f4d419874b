// Caller-owned buffers lent to C++ for the duration of an operation (synchronous or asynchronous).
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>

#include "process_owner.h"

namespace hivedata {

namespace py = pybind11;

// Keeps a caller's buffer exported (and so alive and in place) while C++ may read or write it.
class Lent {
 public:
  Lent() = default;
  // Exports `obj` as a C-contiguous buffer (writable when asked). Python's own error (TypeError,
  // BufferError) when it is not one; with `what`, a writable one that is not becomes a ValueError naming it.
  explicit Lent(const py::handle& obj, bool writable = true, const char* what = nullptr) {
    const int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj.ptr(), &view_, flags) != 0) {
      if (!writable || what == nullptr) throw py::error_already_set();
      py::error_already_set cause;
      throw py::value_error(std::string(what) + " must be a writable C-contiguous uint8 buffer: " + cause.what());
    }
    held_ = true;
  }
  Lent(Lent&& o) noexcept : view_(o.view_), held_(o.held_) { o.held_ = false; }
  Lent& operator=(Lent&&) = delete;
  Lent(const Lent&) = delete;
  ~Lent() {
    if (held_) PyBuffer_Release(&view_);
  }
  bool held() const { return held_; }
  const Py_buffer& view() const { return view_; }
  uint8_t* data() const { return static_cast<uint8_t*>(view_.buf); }
  size_t size() const { return static_cast<size_t>(view_.len); }

 private:
  Py_buffer view_{};
  bool held_ = false;
};

// Buffers lent per operation (a fetch tag, a batch id). A forked child inherits the map but not the
// operations, so the first use in a child forgets what the parent had lent.
template <typename V>
class LentMap : public std::unordered_map<uint64_t, V> {
 public:
  void ForgetIfForked() {
    if (owner_.AdoptIfForked()) this->clear();
  }

 private:
  ProcessOwner owner_;
};

}  // namespace hivedata
