// fuse.io_uring: whether the /dev/fuse transport serves requests through
// FUSE over io_uring (fuse_uring.h). Apart so that configuration code can
// name it without the transport.
#pragma once

namespace dpfs::transport {

// auto uses it where the kernel offers it and serves by read/write
// otherwise; on insists (start-up fails if it cannot be used); off never
// uses it.
enum class FuseUringMode { kAuto, kOn, kOff };

inline const char* fuse_uring_mode_name(FuseUringMode mode) {
  switch (mode) {
    case FuseUringMode::kAuto:
      return "auto";
    case FuseUringMode::kOn:
      return "on";
    case FuseUringMode::kOff:
      return "off";
  }
  return "?";
}

}  // namespace dpfs::transport
