#include "remote/ledger.h"

#include <linux/fuse.h>

#include <algorithm>
#include <cstring>
#include <string_view>

#include "backend/backend.h"

namespace dpfs::remote {
namespace {

template <typename T>
bool read_at(std::span<const uint8_t> bytes, size_t at, T* out) {
  if (at > bytes.size() || bytes.size() - at < sizeof(T)) return false;
  std::memcpy(out, bytes.data() + at, sizeof(T));
  return true;
}

bool gives_entry(uint32_t opcode) {
  switch (opcode) {
    case FUSE_LOOKUP:
    case FUSE_MKNOD:
    case FUSE_MKDIR:
    case FUSE_SYMLINK:
    case FUSE_LINK:
    case FUSE_CREATE:
    case FUSE_TMPFILE:
      return true;
    default:
      return false;
  }
}

}  // namespace

void LookupLedger::on_reply(uint32_t opcode, uint64_t nodeid, std::span<const uint8_t> reply) {
  const bool opens = opcode == FUSE_OPEN || opcode == FUSE_OPENDIR || opcode == FUSE_CREATE;
  if (!gives_entry(opcode) && opcode != FUSE_READDIRPLUS && !opens) return;
  fuse_out_header out;
  if (!read_at(reply, 0, &out) || out.error != 0) return;
  size_t at = sizeof(out);
  if (opens) {
    // CREATE: fuse_entry_out, then fuse_open_out (the new file's handle).
    fuse_entry_out entry{};
    if (opcode == FUSE_CREATE) {
      if (!read_at(reply, at, &entry)) return;
      nodeid = entry.nodeid;
      at += sizeof(entry);
    }
    fuse_open_out open;
    if (read_at(reply, at, &open)) {
      std::lock_guard lock(mu_);
      open_[open.fh] = {nodeid, open.fh, opcode == FUSE_OPENDIR};
    }
    if (opcode != FUSE_CREATE) return;
    if (entry.nodeid != 0) add(entry.nodeid);
    return;
  }
  if (gives_entry(opcode)) {
    fuse_entry_out entry;
    // nodeid 0: a negative entry, no lookup.
    if (read_at(reply, at, &entry) && entry.nodeid != 0) add(entry.nodeid);
    return;
  }
  // READDIRPLUS: every entry but "." and ".." counts (backend.h).
  fuse_direntplus d;
  while (read_at(reply, at, &d)) {
    const size_t record = FUSE_DIRENTPLUS_SIZE(&d);
    if (record > reply.size() - at) break;
    const std::string_view name(reinterpret_cast<const char*>(reply.data()) + at +
                                    FUSE_NAME_OFFSET_DIRENTPLUS,
                                d.dirent.namelen);
    if (name != "." && name != ".." && d.entry_out.nodeid != 0) add(d.entry_out.nodeid);
    at += record;
  }
}

void LookupLedger::on_forget(std::span<uint8_t> request) {
  fuse_in_header h;
  if (!read_at<fuse_in_header>(request, 0, &h)) return;
  const size_t at = sizeof(h);
  if (h.opcode == FUSE_FORGET) {
    fuse_forget_in a;
    if (!read_at<fuse_forget_in>(request, at, &a)) return;
    a.nlookup = remove(h.nodeid, a.nlookup);
    std::memcpy(request.data() + at, &a, sizeof(a));
    return;
  }
  if (h.opcode != FUSE_BATCH_FORGET) return;
  fuse_batch_forget_in a;
  if (!read_at<fuse_batch_forget_in>(request, at, &a)) return;
  size_t entry = at + sizeof(a);
  fuse_forget_one one;
  for (uint32_t i = 0; i < a.count && read_at<fuse_forget_one>(request, entry, &one); ++i) {
    one.nlookup = remove(one.nodeid, one.nlookup);
    std::memcpy(request.data() + entry, &one, sizeof(one));
    entry += sizeof(one);
  }
}

void LookupLedger::on_release(std::span<const uint8_t> request) {
  fuse_in_header h;
  fuse_release_in a;
  if (!read_at(request, 0, &h) || (h.opcode != FUSE_RELEASE && h.opcode != FUSE_RELEASEDIR) ||
      !read_at(request, sizeof(h), &a)) {
    return;
  }
  std::lock_guard lock(mu_);
  open_.erase(a.fh);
}

std::vector<LookupLedger::OpenHandle> LookupLedger::take_handles() {
  std::lock_guard lock(mu_);
  std::vector<OpenHandle> all;
  all.reserve(open_.size());
  for (const auto& [fh, handle] : open_) all.push_back(handle);
  open_.clear();
  return all;
}

size_t LookupLedger::handles() const {
  std::lock_guard lock(mu_);
  return open_.size();
}

std::vector<std::pair<uint64_t, uint64_t>> LookupLedger::take_all() {
  std::lock_guard lock(mu_);
  std::vector<std::pair<uint64_t, uint64_t>> all(held_.begin(), held_.end());
  held_.clear();
  return all;
}

uint64_t LookupLedger::held(uint64_t ino) const {
  std::lock_guard lock(mu_);
  const auto it = held_.find(ino);
  return it == held_.end() ? 0 : it->second;
}

size_t LookupLedger::inodes() const {
  std::lock_guard lock(mu_);
  return held_.size();
}

void LookupLedger::add(uint64_t ino) {
  // The root is never forgotten (backend.h): nothing to hold or give back.
  if (ino == kRootIno) return;
  std::lock_guard lock(mu_);
  ++held_[ino];
}

uint64_t LookupLedger::remove(uint64_t ino, uint64_t n) {
  std::lock_guard lock(mu_);
  const auto it = held_.find(ino);
  if (it == held_.end()) return 0;
  const uint64_t taken = std::min(n, it->second);
  it->second -= taken;
  if (it->second == 0) held_.erase(it);
  return taken;
}

}  // namespace dpfs::remote
