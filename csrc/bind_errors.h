// The one place where a native status becomes a Python exception.
#pragma once

#include <pybind11/pybind11.h>

#include <string>

#include "fetch_status.h"

namespace hivedata {

// The exception instance for a failed status (None when ok); names the object.
pybind11::object MakeError(const FetchStatus& status, const std::string& bucket, const std::string& object);
// Raises MakeError(...) as a Python exception.
[[noreturn]] void ThrowStatus(const FetchStatus& status, const std::string& bucket, const std::string& object);
// Exposes the kind names to Python (hivedata._native.ErrorKind) for tests and stats.
void BindErrors(pybind11::module_& m);

}  // namespace hivedata
