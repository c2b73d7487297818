// The FUSE passthrough part of the kernel's FUSE ABI, which the installed
// <linux/fuse.h> (7.38) predates. Follows include/uapi/linux/fuse.h of Linux
// 6.9 (FUSE 7.40, where passthrough appeared), unchanged in meaning up to
// 6.18; fs/fuse/passthrough.c and fs/fuse/iomode.c are the other side.
//
// The protocol, as the kernel implements it:
// - The kernel offers FUSE_PASSTHROUGH in INIT (CONFIG_FUSE_PASSTHROUGH);
//   the daemon accepts it with a max_stack_depth of 1 or 2 (how deep the
//   backing files' file systems may stack), and never together with
//   FUSE_WRITEBACK_CACHE (the kernel then ignores it).
// - FUSE_DEV_IOC_BACKING_OPEN on any descriptor of the connection registers
//   an open file and returns its backing id (> 0). It needs CAP_SYS_ADMIN in
//   the initial user namespace. The backing file is reopened later with the
//   credentials of the process that registered it.
// - An OPEN or CREATE reply with FOPEN_PASSTHROUGH and a backing id makes
//   the kernel read, write and mmap that file itself: no READ or WRITE
//   request reaches the daemon for it.
// - Every passthrough open of one inode must name the same backing id while
//   any is open, and an inode is in one mode at a time: a cached
//   (non-passthrough, non-direct-io) open of an inode open for passthrough,
//   or the reverse, fails the open with EIO.
// - FUSE_DEV_IOC_BACKING_CLOSE drops the id; files already open keep the
//   backing file.
#pragma once

#include <linux/fuse.h>
#include <sys/ioctl.h>

#include <cstdint>

namespace dpfs::fuse::passthrough_abi {

// init_in.flags2 / init_out.flags2 bit (FUSE_PASSTHROUGH is 1ULL << 37 of
// the 64-bit flags).
constexpr uint64_t kInitPassthrough = 1ull << 37;
// fuse_open_out.open_flags
constexpr uint32_t kFopenPassthrough = 1u << 7;

// struct fuse_backing_map
struct BackingMap {
  int32_t fd;
  uint32_t flags;  // none defined
  uint64_t padding;
};

constexpr unsigned long kIocBackingOpen = _IOW(229, 1, BackingMap);
constexpr unsigned long kIocBackingClose = _IOW(229, 2, uint32_t);

// In 7.40, fuse_init_out's first unused word became max_stack_depth and
// fuse_open_out's padding backing_id; the sizes are the same.
inline void set_max_stack_depth(fuse_init_out* out, uint32_t depth) { out->unused[0] = depth; }
inline void set_backing_id(fuse_open_out* out, int32_t id) { out->padding = uint32_t(id); }

}  // namespace dpfs::fuse::passthrough_abi
