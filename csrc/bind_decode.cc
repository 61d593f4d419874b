// Python binding of the JPEG decode + augment path: per-sample seeds, crop choice, header reads and
// decode into a caller-owned buffer with the GIL released. Failures become hivedata.errors
// exceptions in bind_errors.cc (bucket "", object = the name passed in).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <utility>

#include "augment.h"
#include "bind_augment.h"
#include "bind_buffers.h"
#include "bind_errors.h"
#include "jpeg_decoder.h"
#include "sample_rng.h"

namespace py = pybind11;

namespace hivedata {
namespace {

// Any Python int, taken modulo 2**64 (so negative seeds work too).
uint64_t ToU64(const py::int_& v) {
  const unsigned long long r = PyLong_AsUnsignedLongLongMask(v.ptr());
  if (r == static_cast<unsigned long long>(-1) && PyErr_Occurred()) throw py::error_already_set();
  return static_cast<uint64_t>(r);
}

bool IsUint8Format(const char* fmt) {
  if (fmt == nullptr) return true;  // plain bytes
  if (*fmt == '@' || *fmt == '=' || *fmt == '<' || *fmt == '>' || *fmt == '!' || *fmt == '|') ++fmt;
  return fmt[0] == 'B' && fmt[1] == '\0';
}

[[noreturn]] void Raise(FetchStatus status, const std::string& name) {
  if (!name.empty()) status.message = name + ": " + status.message;
  ThrowStatus(status, "", name);
}

py::tuple ChooseCropPy(int width, int height, const py::int_& sample_seed, bool train, int out_h, int out_w,
                       std::pair<double, double> scale, std::pair<double, double> ratio, double flip_p,
                       double eval_crop_ratio) {
  if (width <= 0 || height <= 0) throw py::value_error("width and height must be positive");
  const AugmentParams p = MakeAugmentParams(train, out_h, out_w, scale, ratio, flip_p, eval_crop_ratio, 1, false);
  const CropBox b = ChooseCrop(width, height, p, ToU64(sample_seed));
  return py::make_tuple(b.x, b.y, b.w, b.h, b.flip);
}

py::tuple JpegHeaderPy(const py::object& data, const std::string& name) {
  Lent src(data, false, "data");
  int w = 0, h = 0, c = 0;
  bool progressive = false;
  FetchStatus st;
  {
    py::gil_scoped_release release;
    st = ReadJpegHeader(src.data(), src.size(), &w, &h, &c, &progressive);
  }
  if (!st.ok()) Raise(std::move(st), name);
  return py::make_tuple(w, h, c, progressive);
}

py::dict DecodeImagePy(const py::object& data, const py::object& out, const py::int_& sample_seed, bool train,
                       int out_h, int out_w, std::pair<double, double> scale, std::pair<double, double> ratio,
                       double flip_p, double eval_crop_ratio, int64_t max_pixels, bool strict,
                       const std::string& name) {
  const AugmentParams p =
      MakeAugmentParams(train, out_h, out_w, scale, ratio, flip_p, eval_crop_ratio, max_pixels, strict);
  const uint64_t seed = ToU64(sample_seed);
  Lent src(data, false, "data");
  Lent dst(out, true, "out");
  if (dst.view().itemsize != 1 || !IsUint8Format(dst.view().format)) {
    throw py::value_error(std::string("out must be a uint8 buffer, got format '") +
                          (dst.view().format ? dst.view().format : "B") + "'");
  }
  const size_t need = static_cast<size_t>(out_h) * out_w * 3;
  if (dst.size() < need) {
    throw py::value_error("out has " + std::to_string(dst.size()) + " bytes, needs out_h*out_w*3 = " +
                          std::to_string(out_h) + "*" + std::to_string(out_w) + "*3 = " + std::to_string(need));
  }
  DecodeInfo info;
  FetchStatus st;
  {
    py::gil_scoped_release release;
    st = DecodeCropResize(src.data(), src.size(), p, seed, dst.data(), &info);
  }
  if (!st.ok()) Raise(std::move(st), name);
  py::dict d;
  d["src_w"] = info.src_w;
  d["src_h"] = info.src_h;
  d["scale_num"] = info.scale_num;
  d["box"] = py::make_tuple(info.box.x, info.box.y, info.box.w, info.box.h);
  d["flip"] = info.box.flip;
  d["warnings"] = info.warnings;
  d["warning"] = info.warning;
  return d;
}

}  // namespace

void BindDecode(py::module_& m) {
  const AugmentParams def;
  const auto def_scale = std::make_pair(def.scale_min, def.scale_max);
  const auto def_ratio = std::make_pair(def.ratio_min, def.ratio_max);

  m.def(
      "sample_seed",
      [](const py::int_& seed, const py::int_& epoch, const py::int_& index) {
        return SampleSeed(ToU64(seed), ToU64(epoch), ToU64(index));
      },
      py::arg("seed"), py::arg("epoch"), py::arg("index"),
      "The 64-bit seed of sample `index` in `epoch` (each argument taken modulo 2**64).");

  m.def("choose_crop", &ChooseCropPy, py::arg("width"), py::arg("height"), py::arg("sample_seed"), py::kw_only(),
        py::arg("train") = def.train, py::arg("out_h") = def.out_h, py::arg("out_w") = def.out_w,
        py::arg("scale") = def_scale, py::arg("ratio") = def_ratio, py::arg("flip_p") = def.flip_p,
        py::arg("eval_crop_ratio") = def.eval_crop_ratio,
        "The crop (x, y, w, h, flip) in source pixels that decode_image uses for a width x height image:\n"
        "torchvision's RandomResizedCrop + flip when training, Resize + CenterCrop otherwise.");

  m.def("jpeg_header", &JpegHeaderPy, py::arg("data"), py::kw_only(), py::arg("name") = "",
        "(width, height, components, progressive) from a JPEG header; raises a hivedata.errors.BadImageError.");

  m.def("decode_image", &DecodeImagePy, py::arg("data"), py::arg("out"), py::kw_only(), py::arg("sample_seed"),
        py::arg("train") = def.train, py::arg("out_h") = def.out_h, py::arg("out_w") = def.out_w,
        py::arg("scale") = def_scale, py::arg("ratio") = def_ratio, py::arg("flip_p") = def.flip_p,
        py::arg("eval_crop_ratio") = def.eval_crop_ratio, py::arg("max_pixels") = def.max_pixels,
        py::arg("strict") = def.strict, py::arg("name") = "",
        "Decodes JPEG `data` (any C-contiguous buffer), crops, resizes and flips into `out` (a writable\n"
        "C-contiguous uint8 buffer of at least out_h*out_w*3 bytes, HWC RGB) with the GIL released.\n"
        "The whole file is decoded through EOI whatever the crop (one verdict per file). Returns dict(src_w,\n"
        "src_h, scale_num, box=(x, y, w, h), flip, warnings, warning): libjpeg warnings that did not refuse\n"
        "the file and the first one's text. strict: any warning refuses it. Raises NotJpegError,\n"
        "CorruptImageError, ImageTooLargeError or UnsupportedImageError with .object == name.");
}

}  // namespace hivedata
