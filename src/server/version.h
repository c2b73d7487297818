#pragma once

namespace dpfs::server {

inline constexpr const char* kVersion = "0.1.0";

}  // namespace dpfs::server
