// Python binding of NormalizeU8 (GIL released).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <string>

#include "bind_buffers.h"
#include "normalize.h"

namespace py = pybind11;

namespace hivedata {

void BindNormalize(py::module_& m) {
  m.def(
      "normalize_u8",
      [](const py::object& src, const py::object& dst, size_t n, size_t h, size_t w, bool channels_last,
         std::array<float, 3> mean, std::array<float, 3> std) {
        Lent s(src, false);
        Lent d(dst, true);
        // n*h*w*3 (and its float bytes) must not wrap: a product that overflowed would pass the size checks
        size_t count = 0, dst_bytes = 0;
        if (__builtin_mul_overflow(n, h, &count) || __builtin_mul_overflow(count, w, &count) ||
            __builtin_mul_overflow(count, size_t{3}, &count) ||
            __builtin_mul_overflow(count, sizeof(float), &dst_bytes)) {
          throw py::value_error("n*h*w*3 overflows: n=" + std::to_string(n) + ", h=" + std::to_string(h) +
                                ", w=" + std::to_string(w));
        }
        if (s.size() < count) throw py::value_error("source holds " + std::to_string(s.size()) + " bytes, needs " +
                                                    std::to_string(count));
        if (d.size() < dst_bytes) {
          throw py::value_error("destination holds " + std::to_string(d.size()) + " bytes, needs " +
                                std::to_string(dst_bytes));
        }
        float inv[3] = {1.0f / std[0], 1.0f / std[1], 1.0f / std[2]};
        py::gil_scoped_release release;
        NormalizeU8(s.data(), reinterpret_cast<float*>(d.data()), n, h, w, channels_last, mean.data(), inv);
      },
      py::arg("src"), py::arg("dst"), py::arg("n"), py::arg("h"), py::arg("w"), py::arg("channels_last"),
      py::arg("mean"), py::arg("std"),
      "(src uint8 [n,h,w,3] - mean) / std -> float32 dst, NCHW or channels-last (NHWC memory).");
}

}  // namespace hivedata
