// URL and header text for the GCS JSON API media endpoint.
#pragma once

#include <cstdint>
#include <string>

namespace hivedata {

// Percent-encodes everything but RFC 3986 unreserved characters ('/' included).
std::string PercentEncode(const std::string& s);
// {endpoint}/download/storage/v1/b/{bucket}/o/{object}?alt=media[&generation=N]
std::string DownloadUrl(const std::string& endpoint, const std::string& bucket, const std::string& object,
                        int64_t generation);
// "bytes=a-b" (length >= 0) or "bytes=a-" (length -1).
std::string RangeHeaderValue(int64_t offset, int64_t length);
// gs://bucket/object, for messages.
std::string GcsUri(const std::string& bucket, const std::string& object);

}  // namespace hivedata
