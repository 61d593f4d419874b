// The one place where Python's augmentation settings become the native AugmentParams.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <utility>

#include "augment.h"

namespace hivedata {

// Validated AugmentParams (raises ValueError naming what is wrong).
AugmentParams MakeAugmentParams(bool train, int out_h, int out_w, std::pair<double, double> scale,
                                std::pair<double, double> ratio, double flip_p, double eval_crop_ratio,
                                int64_t max_pixels, bool strict);
// hivedata._native.AugmentParams: keyword constructor (defaults as AugmentParams), read-only fields.
void BindAugment(pybind11::module_& m);

}  // namespace hivedata
