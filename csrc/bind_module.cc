// hivedata._native: one binding file per concept; this file only assembles them.
#include <pybind11/pybind11.h>

#include "bind_errors.h"

namespace hivedata {
void BindFetch(pybind11::module_& m);
}

PYBIND11_MODULE(_native, m) {
  m.doc() = "hivedata native core: parallel GCS fetch engine";
  hivedata::BindErrors(m);
  hivedata::BindFetch(m);
}
