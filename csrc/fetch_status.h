// Outcome of one fetch; turned into a Python exception in exactly one place (bind_errors.cc).
#pragma once

#include <string>

namespace hivedata {

enum class ErrorKind : int {
  kOk = 0,
  kNotFound = 1,         // HTTP 404
  kPermission = 2,       // HTTP 401 / 403
  kBadRange = 3,         // invalid or unsatisfiable byte range
  kHttp = 4,             // any other HTTP status
  kNetwork = 5,          // connection / timeout / protocol failure
  kChecksum = 6,         // crc32c mismatch
  kBufferTooSmall = 7,   // object larger than the caller's buffer
  kCancelled = 8,
  kBadRequest = 9,       // unusable request (empty name, ...)
  kNotJpeg = 10,         // the bytes are not a JPEG (PNG named .JPEG, random bytes, 0 bytes)
  kCorruptImage = 11,    // a JPEG that libjpeg could not decode (truncated, damaged)
  kImageTooLarge = 12,   // more pixels than the decompression-bomb limit
  kUnsupportedImage = 13,  // a JPEG colour space or layout we do not convert
  kTls = 14,               // the server's certificate could not be verified (not retried)
};

struct FetchStatus {
  ErrorKind kind = ErrorKind::kOk;
  int http_status = 0;
  int curl_code = 0;
  std::string message;  // names the object; never contains credentials
  bool ok() const { return kind == ErrorKind::kOk; }
};

}  // namespace hivedata
