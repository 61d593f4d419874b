#include "bind_errors.h"

namespace py = pybind11;

namespace hivedata {
namespace {

const char* ClassName(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kNotFound:
      return "ObjectNotFoundError";  // also a FileNotFoundError
    case ErrorKind::kPermission:
      return "ObjectPermissionError";  // also a PermissionError
    case ErrorKind::kBadRange:
      return "RangeError";  // also a ValueError
    case ErrorKind::kChecksum:
      return "ChecksumError";
    case ErrorKind::kBufferTooSmall:
      return "BufferTooSmallError";
    case ErrorKind::kCancelled:
      return "FetchCancelledError";
    case ErrorKind::kBadRequest:
      return "BadRequestError";
    case ErrorKind::kNotJpeg:
      return "NotJpegError";
    case ErrorKind::kCorruptImage:
      return "CorruptImageError";
    case ErrorKind::kImageTooLarge:
      return "ImageTooLargeError";
    case ErrorKind::kUnsupportedImage:
      return "UnsupportedImageError";
    case ErrorKind::kTls:
      return "TlsError";
    case ErrorKind::kHttp:
    case ErrorKind::kNetwork:
    case ErrorKind::kOk:
      break;
  }
  return "FetchError";
}

}  // namespace

py::object MakeError(const FetchStatus& status, const std::string& bucket, const std::string& object) {
  if (status.ok()) return py::none();
  py::module_ errors = py::module_::import("hivedata.errors");
  py::object cls = errors.attr(ClassName(status.kind));
  py::object http = status.http_status ? py::object(py::int_(status.http_status)) : py::object(py::none());
  return cls(status.message, py::arg("bucket") = bucket, py::arg("object") = object, py::arg("status") = http);
}

void ThrowStatus(const FetchStatus& status, const std::string& bucket, const std::string& object) {
  py::object exc = MakeError(status, bucket, object);
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
  throw py::error_already_set();
}

void BindErrors(py::module_& m) {
  py::enum_<ErrorKind>(m, "ErrorKind")
      .value("OK", ErrorKind::kOk)
      .value("NOT_FOUND", ErrorKind::kNotFound)
      .value("PERMISSION", ErrorKind::kPermission)
      .value("BAD_RANGE", ErrorKind::kBadRange)
      .value("HTTP", ErrorKind::kHttp)
      .value("NETWORK", ErrorKind::kNetwork)
      .value("CHECKSUM", ErrorKind::kChecksum)
      .value("BUFFER_TOO_SMALL", ErrorKind::kBufferTooSmall)
      .value("CANCELLED", ErrorKind::kCancelled)
      .value("BAD_REQUEST", ErrorKind::kBadRequest)
      .value("NOT_JPEG", ErrorKind::kNotJpeg)
      .value("CORRUPT_IMAGE", ErrorKind::kCorruptImage)
      .value("IMAGE_TOO_LARGE", ErrorKind::kImageTooLarge)
      .value("UNSUPPORTED_IMAGE", ErrorKind::kUnsupportedImage)
      .value("TLS", ErrorKind::kTls);
}

}  // namespace hivedata
