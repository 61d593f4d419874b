#include "gcs_url.h"

namespace hivedata {

std::string PercentEncode(const std::string& s) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size() * 3);
  for (unsigned char c : s) {
    bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
                      c == '.' || c == '_' || c == '~';
    if (unreserved) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

std::string DownloadUrl(const std::string& endpoint, const std::string& bucket, const std::string& object,
                        int64_t generation) {
  std::string url = endpoint + "/download/storage/v1/b/" + PercentEncode(bucket) + "/o/" + PercentEncode(object) +
                    "?alt=media";
  if (generation > 0) url += "&generation=" + std::to_string(generation);
  return url;
}

std::string RangeHeaderValue(int64_t offset, int64_t length) {
  std::string v = "bytes=" + std::to_string(offset) + "-";
  if (length >= 0) v += std::to_string(offset + length - 1);
  return v;
}

std::string GcsUri(const std::string& bucket, const std::string& object) { return "gs://" + bucket + "/" + object; }

}  // namespace hivedata
