// Fuzzer bytes read as a stream of values, shared by the fuzz targets. Past
// the end every value reads as zero, so a target never has to check lengths
// before it reads.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace dpfs::fuzz {

struct Input {
  const uint8_t* p;
  size_t n;

  bool empty() const { return n == 0; }
  uint8_t byte() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
  uint16_t u16() { return uint16_t(byte() | byte() << 8); }
  uint32_t u32() { return uint32_t(u16()) | uint32_t(u16()) << 16; }
  uint64_t u64() { return uint64_t(u32()) | uint64_t(u32()) << 32; }
  // Up to `len` bytes (fewer at the end), copied.
  std::vector<uint8_t> bytes(size_t len) {
    len = std::min(len, n);
    std::vector<uint8_t> out(p, p + len);
    p += len;
    n -= len;
    return out;
  }
  // The next `len` bytes, or nothing if fewer are left (a frame cut short).
  std::optional<std::span<const uint8_t>> take(size_t len) {
    if (len > n) return std::nullopt;
    std::span<const uint8_t> s(p, len);
    p += len;
    n -= len;
    return s;
  }
};

}  // namespace dpfs::fuzz
