// Sizes as operators type them: plain bytes, or a number with a K, M, G or
// T suffix (powers of 1024, either case). One parser for the daemon's
// options and for the tools, so "64K" means the same everywhere.
#pragma once

#include <charconv>
#include <cstdint>
#include <string_view>
#include <system_error>

namespace dpfs::util {

enum class SizeParse { kOk, kMalformed, kTooLarge };

// Parses `text` into `*bytes`; leaves it alone unless kOk.
inline SizeParse parse_size(std::string_view text, uint64_t* bytes) {
  const char* begin = text.data();
  const char* end = begin + text.size();
  uint64_t n = 0;
  const auto [p, ec] = std::from_chars(begin, end, n);
  if (p == begin) return SizeParse::kMalformed;
  if (ec == std::errc::result_out_of_range) return SizeParse::kTooLarge;
  unsigned shift = 0;
  if (p != end) {
    if (end - p != 1) return SizeParse::kMalformed;
    switch (*p | 0x20) {  // lower case
      case 'k':
        shift = 10;
        break;
      case 'm':
        shift = 20;
        break;
      case 'g':
        shift = 30;
        break;
      case 't':
        shift = 40;
        break;
      default:
        return SizeParse::kMalformed;
    }
  }
  if (shift != 0 && n > (UINT64_MAX >> shift)) return SizeParse::kTooLarge;
  *bytes = n << shift;
  return SizeParse::kOk;
}

}  // namespace dpfs::util
