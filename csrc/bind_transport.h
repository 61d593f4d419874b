// The one place where transport settings (keyword arguments) and fetch counters cross the Python boundary.
#pragma once

#include <pybind11/pybind11.h>

#include <string>

#include "fetch_engine.h"

namespace hivedata {

// EngineOptions from the endpoint and keyword arguments named like its fields; an unknown name is a TypeError.
EngineOptions EngineOptionsFrom(const std::string& endpoint, const pybind11::kwargs& kw);
// Adds the engine's counters to `d`, each name prefixed by `prefix`.
void AddEngineStats(pybind11::dict& d, const EngineStats& s, const std::string& prefix);

}  // namespace hivedata
