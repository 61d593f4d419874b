// hivedata._native: one binding file per concept; this file only assembles them.
#include <pybind11/pybind11.h>

#include "bind_errors.h"

namespace hivedata {
void BindFetch(pybind11::module_& m);
void BindPipeline(pybind11::module_& m);
void BindNormalize(pybind11::module_& m);
void BindDecode(pybind11::module_& m);
void BindAugment(pybind11::module_& m);
}

PYBIND11_MODULE(_native, m) {
  m.doc() = "hivedata native core: GCS fetch engine, JPEG decode + augment, batch pipeline";
  hivedata::BindErrors(m);
  hivedata::BindFetch(m);
  hivedata::BindAugment(m);  // before the Pipeline, whose defaults are AugmentParams
  hivedata::BindPipeline(m);
  hivedata::BindNormalize(m);
  hivedata::BindDecode(m);
}
