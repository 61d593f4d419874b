// CRC-32C (Castagnoli), as GCS reports it in x-goog-hash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace hivedata {

// CRC-32C of `n` bytes, continuing from `crc` (0 to start).
uint32_t Crc32c(const uint8_t* data, size_t n, uint32_t crc = 0);

// Decodes the base64 big-endian CRC-32C that GCS sends ("crc32c=4nWrzQ==").
// Returns false when the text is not a valid 4-byte base64 value.
bool DecodeGoogCrc32c(const std::string& b64, uint32_t* out);

}  // namespace hivedata
