// A native engine or pipeline shared by its Python object and every thread that waits in it with the GIL
// released. close() marks the handle closed, stops the object (none of its threads runs afterwards), and
// waits until every waiter has left before the caller gives back the buffers it had lent; the object's
// memory goes with whoever lets go of it last, so no waiter ever touches a destroyed mutex. Also home of
// the one signal-slicing wait loop (Ctrl-C honoured while waiting).
#pragma once

#include <pybind11/pybind11.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>

#include "process_owner.h"

namespace hivedata {

namespace py = pybind11;

inline bool InterpreterFinalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
}

// The interpreter is exiting and this is not the thread that runs the exit (the main thread): Python would
// end this thread when it asks for the GIL back.
inline bool ExitingWithoutUs() {
#ifdef __linux__
  return InterpreterFinalizing() && syscall(SYS_gettid) != getpid();
#else
  return false;
#endif
}

// Runs fn() with the GIL released. Unlike py::gil_scoped_release, the GIL is taken back outside any
// destructor, and a daemon thread that comes back while the interpreter exits does not ask for it at all
// (it parks here until the process ends): Python would end it with pthread_exit, whose unwinding through
// a noexcept destructor is std::terminate.
template <typename F>
auto WithoutGil(F&& fn) -> decltype(fn()) {
  using R = decltype(fn());
  PyThreadState* ts = PyEval_SaveThread();
  std::exception_ptr err;
  std::conditional_t<std::is_void_v<R>, bool, std::optional<R>> result{};
  try {
    if constexpr (std::is_void_v<R>) {
      fn();
    } else {
      result.emplace(fn());
    }
  } catch (...) {
    err = std::current_exception();
  }
  while (ExitingWithoutUs()) std::this_thread::sleep_for(std::chrono::seconds(1));
  PyEval_RestoreThread(ts);
  if (err) std::rethrow_exception(err);
  if constexpr (!std::is_void_v<R>) return std::move(*result);
}

template <typename T>
class SharedHandle {
 public:
  static constexpr double kWaitSlice = 0.05;  // seconds between signal checks while waiting

  SharedHandle(std::unique_ptr<T> p, std::string what) : p_(std::move(p)), what_(std::move(what)) {}
  SharedHandle(const SharedHandle&) = delete;
  SharedHandle& operator=(const SharedHandle&) = delete;

  bool closed() const { return !p_; }

  // The object, for a call that keeps the GIL; raises RuntimeError once closed.
  T* Get() {
    ForgetIfForked();
    if (!p_) throw std::runtime_error("the " + what_ + " is closed");
    return p_.get();
  }

  // fn(T&) with the GIL released, as a waiter that close() waits for; raises if closed meanwhile.
  template <typename F>
  auto Released(F&& fn) -> decltype(fn(std::declval<T&>())) {
    Get();                        // raises once closed
    std::shared_ptr<T> keep(p_);  // the object outlives this call even if close() lets go of it
    ++waiters_;
    struct Leave {
      SharedHandle* h;
      ~Leave() { --h->waiters_; }  // with the GIL held: after WithoutGil took it back
    } leave{this};
    auto finish = [&] {
      if (!p_) throw std::runtime_error("the " + what_ + " was closed while this thread waited in it");
    };
    if constexpr (std::is_void_v<decltype(fn(*keep))>) {
      WithoutGil([&] { fn(*keep); });
      finish();
    } else {
      auto r = WithoutGil([&] { return fn(*keep); });
      finish();
      return r;
    }
  }

  // Waits in slices with the GIL released: wait(T&, seconds) until it returns true, while idle(T&) (checked
  // with the GIL) says there is something to wait for, at most `timeout` seconds (None: no limit). Ctrl-C
  // raises KeyboardInterrupt; close() from another thread raises RuntimeError. True when wait() said so.
  template <typename Idle, typename Wait>
  bool WaitSliced(std::optional<double> timeout, Idle idle, Wait wait) {
    const auto start = std::chrono::steady_clock::now();
    while (true) {
      if (idle(*Get())) return false;
      double slice = kWaitSlice;
      if (timeout) {
        const double spent = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        slice = std::min(kWaitSlice, *timeout - spent);
      }
      const double s = std::max(slice, 0.0);
      if (Released([&](T& t) { return wait(t, s); })) return true;
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
      if (timeout && slice <= 0) return false;
    }
  }

  // Closes the handle: stop(T&) runs with the GIL released (it must stop every thread of the object and wake
  // its waiters), then this waits until every waiter has left (not while the interpreter exits: a daemon
  // thread then stays parked in WithoutGil, holding the object). Idempotent; safe from any thread.
  template <typename Stop>
  void Close(Stop stop) {
    ForgetIfForked();
    std::shared_ptr<T> p = std::move(p_);
    if (p) WithoutGil([&] { stop(*p); });
    while (waiters_ > 0 && !InterpreterFinalizing()) WithoutGil([] { std::this_thread::sleep_for(std::chrono::milliseconds(1)); });
    if (p) WithoutGil([&] { p.reset(); });  // joins what is left (nothing runs any more)
  }

 private:
  void ForgetIfForked() {
    if (owner_.AdoptIfForked()) waiters_ = 0;  // the parent's waiting threads do not exist here
  }

  std::shared_ptr<T> p_;
  std::string what_;
  int waiters_ = 0;  // threads inside Released(); read and written with the GIL held
  ProcessOwner owner_;
};

}  // namespace hivedata
