#pragma once

namespace dpfs::daemon {

inline constexpr const char* kVersion = "0.1.0";

}  // namespace dpfs::daemon
