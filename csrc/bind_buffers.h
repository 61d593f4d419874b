// Caller-owned buffers lent to C++ for the duration of an asynchronous operation.
#pragma once

#include <pybind11/pybind11.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <unordered_map>

namespace hivedata {

namespace py = pybind11;

// Keeps a caller's buffer exported (and alive) while C++ may write into it.
class Lent {
 public:
  Lent() = default;
  // Exports `obj` as a writable C-contiguous buffer; raises if it is not one.
  explicit Lent(const py::object& obj, bool writable = true) {
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj.ptr(), &view_, flags) != 0) {
      throw py::error_already_set();
    }
    held_ = true;
  }
  Lent(Lent&& o) noexcept : view_(o.view_), held_(o.held_) { o.held_ = false; }
  Lent& operator=(Lent&&) = delete;
  ~Lent() {
    if (held_) PyBuffer_Release(&view_);
  }
  bool held() const { return held_; }
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
    const pid_t pid = getpid();
    if (pid != pid_) {
      this->clear();
      pid_ = pid;
    }
  }

 private:
  pid_t pid_ = getpid();
};

}  // namespace hivedata
