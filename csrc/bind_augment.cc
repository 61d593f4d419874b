#include "bind_augment.h"

#include <pybind11/stl.h>

namespace py = pybind11;

namespace hivedata {

AugmentParams MakeAugmentParams(bool train, int out_h, int out_w, std::pair<double, double> scale,
                                std::pair<double, double> ratio, double flip_p, double eval_crop_ratio,
                                int64_t max_pixels, bool strict) {
  AugmentParams p;
  p.train = train;
  p.out_h = out_h;
  p.out_w = out_w;
  p.scale_min = scale.first;
  p.scale_max = scale.second;
  p.ratio_min = ratio.first;
  p.ratio_max = ratio.second;
  p.flip_p = flip_p;
  p.eval_crop_ratio = eval_crop_ratio;
  p.max_pixels = max_pixels;
  p.strict = strict;
  if (const char* bad = CheckAugmentParams(p)) throw py::value_error(bad);
  return p;
}

void BindAugment(py::module_& m) {
  const AugmentParams def;
  py::class_<AugmentParams>(m, "AugmentParams",
                            "Crop/flip/size settings of the native decoder (see hivedata.loader.decoders.base.Augment).")
      .def(py::init(&MakeAugmentParams), py::kw_only(), py::arg("train") = def.train, py::arg("out_h") = def.out_h,
           py::arg("out_w") = def.out_w, py::arg("scale") = std::make_pair(def.scale_min, def.scale_max),
           py::arg("ratio") = std::make_pair(def.ratio_min, def.ratio_max), py::arg("flip_p") = def.flip_p,
           py::arg("eval_crop_ratio") = def.eval_crop_ratio, py::arg("max_pixels") = def.max_pixels,
           py::arg("strict") = def.strict)
      .def_readonly("train", &AugmentParams::train)
      .def_readonly("out_h", &AugmentParams::out_h)
      .def_readonly("out_w", &AugmentParams::out_w)
      .def_property_readonly("scale", [](const AugmentParams& p) { return std::make_pair(p.scale_min, p.scale_max); })
      .def_property_readonly("ratio", [](const AugmentParams& p) { return std::make_pair(p.ratio_min, p.ratio_max); })
      .def_readonly("flip_p", &AugmentParams::flip_p)
      .def_readonly("eval_crop_ratio", &AugmentParams::eval_crop_ratio)
      .def_readonly("max_pixels", &AugmentParams::max_pixels)
      .def_readonly("strict", &AugmentParams::strict);
}

}  // namespace hivedata
