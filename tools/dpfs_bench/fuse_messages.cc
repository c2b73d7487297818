#include "fuse_messages.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstring>

namespace dpfs::bench {

int Slot::submit(DriverQueue& q) const {
  Buffer readable[2] = {{in, in_len}, {data, write_len}};
  // A READ's payload goes to its own buffer: the first one holds only the
  // out-header, as the Linux driver lays it out.
  Buffer writable[2] = {{out, read_len ? kOutHeader : out_cap}, {data, read_len}};
  return q.add({readable, size_t(write_len ? 2 : 1)}, {writable, size_t(!takes_reply ? 0
                                                                        : read_len   ? 2
                                                                                     : 1)});
}

void begin(Slot& s, uint32_t opcode, uint64_t nodeid, uint64_t unique) {
  static const uint32_t pid = uint32_t(::getpid());
  fuse_in_header h{};
  h.opcode = opcode;
  h.unique = unique;
  h.nodeid = nodeid;
  h.pid = pid;
  std::memcpy(s.in, &h, sizeof(h));
  s.in_len = sizeof(h);
  s.opcode = opcode;
  s.unique = unique;
  s.write_len = s.read_len = 0;
  s.takes_reply = true;
}

void append(Slot& s, const void* bytes, size_t len) {
  if (s.in_len + len > s.in_cap) len = s.in_cap - s.in_len;  // names are bounded by callers
  std::memcpy(s.in + s.in_len, bytes, len);
  s.in_len += uint32_t(len);
}

void append_name(Slot& s, std::string_view name) {
  append(s, name.data(), name.size());
  const char nul = 0;
  append(s, &nul, 1);
}

void finish(Slot& s, uint32_t write_len, uint32_t read_len) {
  s.write_len = write_len;
  s.read_len = read_len;
  reinterpret_cast<fuse_in_header*>(s.in)->len = s.in_len + write_len;
}

void build_init(Slot& s, uint64_t unique) {
  begin(s, FUSE_INIT, 0, unique);
  fuse_init_in a{};
  a.major = FUSE_KERNEL_VERSION;
  a.minor = FUSE_KERNEL_MINOR_VERSION;
  a.max_readahead = 1u << 20;
  a.flags = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES;
  append(s, a);
  finish(s);
}

void build_getattr(Slot& s, uint64_t unique, uint64_t nodeid) {
  begin(s, FUSE_GETATTR, nodeid, unique);
  append(s, fuse_getattr_in{});
  finish(s);
}

void build_lookup(Slot& s, uint64_t unique, uint64_t parent, std::string_view name) {
  begin(s, FUSE_LOOKUP, parent, unique);
  append_name(s, name);
  finish(s);
}

void build_open(Slot& s, uint64_t unique, uint64_t nodeid, uint32_t flags) {
  begin(s, FUSE_OPEN, nodeid, unique);
  fuse_open_in a{};
  a.flags = flags;
  append(s, a);
  finish(s);
}

void build_create(Slot& s, uint64_t unique, uint64_t parent, std::string_view name, uint32_t flags,
                  uint32_t mode) {
  begin(s, FUSE_CREATE, parent, unique);
  fuse_create_in a{};
  a.flags = flags;
  a.mode = mode;
  append(s, a);
  append_name(s, name);
  finish(s);
}

void build_read(Slot& s, uint64_t unique, uint64_t nodeid, uint64_t fh, uint64_t offset,
                uint32_t size) {
  begin(s, FUSE_READ, nodeid, unique);
  fuse_read_in a{};
  a.fh = fh;
  a.offset = offset;
  a.size = size;
  append(s, a);
  finish(s, 0, size);
}

void build_write(Slot& s, uint64_t unique, uint64_t nodeid, uint64_t fh, uint64_t offset,
                 uint32_t size) {
  begin(s, FUSE_WRITE, nodeid, unique);
  fuse_write_in a{};
  a.fh = fh;
  a.offset = offset;
  a.size = size;
  append(s, a);
  finish(s, size, 0);
}

void build_release(Slot& s, uint64_t unique, uint64_t nodeid, uint64_t fh) {
  begin(s, FUSE_RELEASE, nodeid, unique);
  fuse_release_in a{};
  a.fh = fh;
  append(s, a);
  finish(s);
}

void build_setattr(Slot& s, uint64_t unique, uint64_t nodeid, uint32_t mode, uint64_t size) {
  begin(s, FUSE_SETATTR, nodeid, unique);
  fuse_setattr_in a{};
  a.valid = FATTR_MODE | FATTR_SIZE;
  a.mode = mode;
  a.size = size;
  append(s, a);
  finish(s);
}

void build_unlink(Slot& s, uint64_t unique, uint64_t parent, std::string_view name) {
  begin(s, FUSE_UNLINK, parent, unique);
  append_name(s, name);
  finish(s);
}

void build_forget(Slot& s, uint64_t unique, uint64_t nodeid, uint64_t nlookup) {
  begin(s, FUSE_FORGET, nodeid, unique);
  fuse_forget_in a{};
  a.nlookup = nlookup;
  append(s, a);
  finish(s);
  s.takes_reply = false;
}

std::string check_no_reply(const Reply& r) {
  if (r.used_len != 0) {
    return fmt::format("FORGET: the device wrote {} bytes where there was no buffer", r.used_len);
  }
  return "";
}

std::string check_reply(const Reply& r, uint32_t args, bool data) {
  const fuse_out_header& h = r.header();
  const char* op = opcode_name(r.slot->opcode);
  if (r.used_len < kOutHeader) {
    return fmt::format("{}: used length {} cannot hold a reply header", op, r.used_len);
  }
  if (h.len != r.used_len) {
    return fmt::format("{}: reply header says {} bytes, used ring {}", op, h.len, r.used_len);
  }
  if (h.unique != r.slot->unique) {
    return fmt::format("{}: reply for unique {}, sent {}", op, h.unique, r.slot->unique);
  }
  if (h.error != 0) {
    return fmt::format("{}: {}", op, std::strerror(-h.error));
  }
  if (data ? h.len > kOutHeader + args : h.len != kOutHeader + args) {
    return fmt::format("{}: reply of {} bytes, expected {}", op, h.len, kOutHeader + args);
  }
  return "";
}

const char* opcode_name(uint32_t opcode) {
  switch (opcode) {
    case FUSE_INIT:
      return "INIT";
    case FUSE_GETATTR:
      return "GETATTR";
    case FUSE_LOOKUP:
      return "LOOKUP";
    case FUSE_OPEN:
      return "OPEN";
    case FUSE_CREATE:
      return "CREATE";
    case FUSE_READ:
      return "READ";
    case FUSE_WRITE:
      return "WRITE";
    case FUSE_RELEASE:
      return "RELEASE";
    case FUSE_SETATTR:
      return "SETATTR";
    case FUSE_UNLINK:
      return "UNLINK";
    default:
      return "UNKNOWN";
  }
}

}  // namespace dpfs::bench
