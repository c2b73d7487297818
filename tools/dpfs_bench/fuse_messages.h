// FUSE requests as a virtio-fs driver lays them out in its buffers
// (<linux/fuse.h>; virtio 1.2 §5.11.6): the device-readable part is the
// in-header and the arguments, then the WRITE payload in a buffer of its
// own; the device-writable part is room for the out-header and reply
// arguments, then the READ payload buffer.
//
// A Slot is one request's set of buffers in shared memory, reused from one
// request to the next. Pure functions on it; no state.
#pragma once

#include <linux/fuse.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "driver_queue.h"

namespace dpfs::bench {

struct Slot {
  uint8_t* in = nullptr;  // header + arguments
  uint32_t in_cap = 0;
  uint8_t* out = nullptr;  // reply header + arguments
  uint32_t out_cap = 0;
  uint8_t* data = nullptr;  // WRITE payload or READ destination
  uint32_t data_cap = 0;

  // The request built last.
  uint32_t in_len = 0;
  uint32_t write_len = 0;  // bytes of `data` the device reads
  uint32_t read_len = 0;   // bytes of `data` the device may write
  uint64_t unique = 0;
  uint32_t opcode = 0;
  bool takes_reply = true;  // FORGET does not: no writable buffers at all

  // Adds the request to `q`; returns the head or -1 (no free descriptors).
  int submit(DriverQueue& q) const;
};

// Header sizes every size check below starts from.
inline constexpr uint32_t kInHeader = sizeof(fuse_in_header);
inline constexpr uint32_t kOutHeader = sizeof(fuse_out_header);
inline constexpr uint32_t kSlotArgBytes = 4096;  // in_cap and out_cap

// Starts a request in `s` (header with uid/gid 0 and this pid), then
// appends arguments; finish() sets the header's length.
void begin(Slot& s, uint32_t opcode, uint64_t nodeid, uint64_t unique);
void append(Slot& s, const void* bytes, size_t len);
template <typename T>
void append(Slot& s, const T& arg) {
  append(s, &arg, sizeof(arg));
}
void append_name(Slot& s, std::string_view name);  // with its NUL
void finish(Slot& s, uint32_t write_len = 0, uint32_t read_len = 0);

// The builders the workloads use.
void build_init(Slot& s, uint64_t unique);
void build_getattr(Slot& s, uint64_t unique, uint64_t nodeid);
void build_lookup(Slot& s, uint64_t unique, uint64_t parent, std::string_view name);
void build_open(Slot& s, uint64_t unique, uint64_t nodeid, uint32_t flags);
void build_create(Slot& s, uint64_t unique, uint64_t parent, std::string_view name, uint32_t flags,
                  uint32_t mode);
void build_read(Slot& s, uint64_t unique, uint64_t nodeid, uint64_t fh, uint64_t offset,
                uint32_t size);
// The payload is the first `size` bytes of s.data, filled by the caller.
void build_write(Slot& s, uint64_t unique, uint64_t nodeid, uint64_t fh, uint64_t offset,
                 uint32_t size);
void build_release(Slot& s, uint64_t unique, uint64_t nodeid, uint64_t fh);
void build_setattr(Slot& s, uint64_t unique, uint64_t nodeid, uint32_t mode, uint64_t size);
void build_unlink(Slot& s, uint64_t unique, uint64_t parent, std::string_view name);
// Drops `nlookup` lookups of `nodeid` (as the kernel does when it evicts an
// inode); no reply, the device returns the chain with 0 bytes written.
void build_forget(Slot& s, uint64_t unique, uint64_t nodeid, uint64_t nlookup);

// A reply as it came back: `len` is what the used ring says the device
// wrote. Validate with check_reply() before reading arguments.
struct Reply {
  const Slot* slot = nullptr;
  uint32_t used_len = 0;

  const fuse_out_header& header() const {
    return *reinterpret_cast<const fuse_out_header*>(slot->out);
  }
  int error() const { return -header().error; }
  // Reply arguments (after the header), in the out buffer.
  template <typename T>
  const T& arg() const {
    return *reinterpret_cast<const T*>(slot->out + kOutHeader);
  }
  // READ payload bytes.
  uint32_t data_len() const { return header().len > kOutHeader ? header().len - kOutHeader : 0; }
};

// "" if the reply is consistent (used length = header length, unique
// matches, and on success `args` argument bytes came back); otherwise what
// is wrong, for the error count. `args` is the reply size expected on
// success, 0 for header-only; for READ pass the expected payload size and
// data = true.
std::string check_reply(const Reply& r, uint32_t args, bool data = false);
// "" if a request without reply (FORGET) came back with nothing written.
std::string check_no_reply(const Reply& r);

const char* opcode_name(uint32_t opcode);

}  // namespace dpfs::bench
