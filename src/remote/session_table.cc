#include "remote/session_table.h"

#include <linux/fuse.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
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

}  // namespace

void SessionTable::gave_lookup(uint64_t ino) {
  if (ino != 0) add(ino);
}

void SessionTable::gave_handle(uint64_t ino, uint64_t fh, bool directory) {
  util::MutexLock lock(mu_);
  Open& o = open_[fh];
  o.handle = {ino, fh, directory};
  ++o.count;
}

void SessionTable::opens_nothing() {
  util::MutexLock lock(mu_);
  no_open_ = true;
}

void SessionTable::on_forget(std::span<uint8_t> request) {
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

void SessionTable::on_release(std::span<const uint8_t> request) {
  fuse_in_header h;
  fuse_release_in a;
  if (!read_at(request, 0, &h) || (h.opcode != FUSE_RELEASE && h.opcode != FUSE_RELEASEDIR) ||
      !read_at(request, sizeof(h), &a)) {
    return;
  }
  util::MutexLock lock(mu_);
  const auto it = open_.find(a.fh);
  if (it != open_.end() && --it->second.count == 0) open_.erase(it);
}

std::vector<SessionTable::OpenHandle> SessionTable::take_handles() {
  util::MutexLock lock(mu_);
  std::vector<OpenHandle> all;
  for (const auto& [fh, o] : open_) all.insert(all.end(), o.count, o.handle);
  open_.clear();
  return all;
}

size_t SessionTable::handles() const {
  util::MutexLock lock(mu_);
  size_t n = 0;
  for (const auto& [fh, o] : open_) n += o.count;
  return n;
}

bool SessionTable::holds(uint64_t ino) const {
  // The root is every session's (backend.h: it is never looked up).
  return ino == kRootIno || held_.contains(ino);
}

bool SessionTable::opened(uint64_t fh) const { return open_.contains(fh) || (fh == 0 && no_open_); }

int SessionTable::check(std::span<const uint8_t> request) const {
  fuse_in_header h;
  if (!read_at(request, 0, &h)) return 0;
  switch (h.opcode) {
    case FUSE_INIT:
    case FUSE_DESTROY:
    case FUSE_INTERRUPT:
    case FUSE_NOTIFY_REPLY:
    case FUSE_FORGET:
    case FUSE_BATCH_FORGET:
      return 0;
    default:
      break;
  }
  // The arguments as far as the header says: the session reads no further.
  if (h.len < sizeof(h)) return 0;
  const std::span<const uint8_t> args =
      request.subspan(sizeof(h), std::min<size_t>(request.size(), h.len) - sizeof(h));
  util::MutexLock lock(mu_);
  if (!holds(h.nodeid)) return ESTALE;
  // The fh at `offset` in the arguments; a missing one is the session's.
  auto fh_at = [&](size_t offset) DPFS_REQUIRES(mu_) {
    uint64_t fh = 0;
    return !read_at(args, offset, &fh) || opened(fh) ? 0 : EBADF;
  };
  auto node_at = [&](size_t offset) DPFS_REQUIRES(mu_) {
    uint64_t ino = 0;
    return !read_at(args, offset, &ino) || holds(ino) ? 0 : ESTALE;
  };
  switch (h.opcode) {
    case FUSE_READ:
    case FUSE_READDIR:
    case FUSE_READDIRPLUS:
      return fh_at(offsetof(fuse_read_in, fh));
    case FUSE_WRITE:
      return fh_at(offsetof(fuse_write_in, fh));
    case FUSE_RELEASE:
    case FUSE_RELEASEDIR:
      return fh_at(offsetof(fuse_release_in, fh));
    case FUSE_FLUSH:
      return fh_at(offsetof(fuse_flush_in, fh));
    case FUSE_FSYNC:
    case FUSE_FSYNCDIR:
      return fh_at(offsetof(fuse_fsync_in, fh));
    case FUSE_GETLK:
    case FUSE_SETLK:
    case FUSE_SETLKW:
      return fh_at(offsetof(fuse_lk_in, fh));
    case FUSE_LSEEK:
      return fh_at(offsetof(fuse_lseek_in, fh));
    case FUSE_FALLOCATE:
      return fh_at(offsetof(fuse_fallocate_in, fh));
    case FUSE_IOCTL:
      return fh_at(offsetof(fuse_ioctl_in, fh));
    case FUSE_POLL:
      return fh_at(offsetof(fuse_poll_in, fh));
    case FUSE_SETUPMAPPING:
      return fh_at(offsetof(fuse_setupmapping_in, fh));
    case FUSE_GETATTR: {
      fuse_getattr_in a;
      if (!read_at(args, 0, &a) || !(a.getattr_flags & FUSE_GETATTR_FH)) return 0;
      return fh_at(offsetof(fuse_getattr_in, fh));
    }
    case FUSE_SETATTR: {
      fuse_setattr_in a;
      if (!read_at(args, 0, &a) || !(a.valid & FATTR_FH)) return 0;
      return fh_at(offsetof(fuse_setattr_in, fh));
    }
    case FUSE_LINK:
      return node_at(offsetof(fuse_link_in, oldnodeid));
    case FUSE_RENAME:
      return node_at(offsetof(fuse_rename_in, newdir));
    case FUSE_RENAME2:
      return node_at(offsetof(fuse_rename2_in, newdir));
    case FUSE_COPY_FILE_RANGE: {
      if (int e = node_at(offsetof(fuse_copy_file_range_in, nodeid_out))) return e;
      if (int e = fh_at(offsetof(fuse_copy_file_range_in, fh_in))) return e;
      return fh_at(offsetof(fuse_copy_file_range_in, fh_out));
    }
    default:
      return 0;
  }
}

std::vector<std::pair<uint64_t, uint64_t>> SessionTable::take_all() {
  util::MutexLock lock(mu_);
  std::vector<std::pair<uint64_t, uint64_t>> all(held_.begin(), held_.end());
  held_.clear();
  return all;
}

uint64_t SessionTable::held(uint64_t ino) const {
  util::MutexLock lock(mu_);
  const auto it = held_.find(ino);
  return it == held_.end() ? 0 : it->second;
}

size_t SessionTable::inodes() const {
  util::MutexLock lock(mu_);
  return held_.size();
}

void SessionTable::add(uint64_t ino) {
  // The root is never forgotten (backend.h): nothing to hold or give back.
  if (ino == kRootIno) return;
  util::MutexLock lock(mu_);
  ++held_[ino];
}

uint64_t SessionTable::remove(uint64_t ino, uint64_t n) {
  util::MutexLock lock(mu_);
  const auto it = held_.find(ino);
  if (it == held_.end()) return 0;
  const uint64_t taken = std::min(n, it->second);
  it->second -= taken;
  if (it->second == 0) held_.erase(it);
  return taken;
}

// --- SessionRequest -------------------------------------------------------------

void SessionRequest::forget_given() {
  lookups_given_.clear();
  handle_given_.reset();
  opens_nothing_ = false;
}

void SessionRequest::give_to(SessionTable& table, size_t reply_len) {
  if (opens_nothing_) table.opens_nothing();
  if (session_state.error != 0 || reply_len == 0) return;
  for (uint64_t ino : lookups_given_) table.gave_lookup(ino);
  if (handle_given_)
    table.gave_handle(handle_given_->ino, handle_given_->fh, handle_given_->directory);
}

void SessionRequest::answer_entry(const Entry& entry) {
  lookups_given_.push_back(entry.ino);
  fuse::Request::answer_entry(entry);
}

// A remote tenant's kernel is on another machine: the host file means
// nothing there (and the server's session registers none).
void SessionRequest::answer_create(const Entry& entry, uint64_t fh, uint32_t open_flags,
                                   int /*host_fd*/) {
  lookups_given_.push_back(entry.ino);
  handle_given_ = SessionTable::OpenHandle{entry.ino, fh, false};
  fuse::Request::answer_create(entry, fh, open_flags, -1);
}

void SessionRequest::answer_open(uint64_t fh, uint32_t open_flags, int /*host_fd*/) {
  const uint64_t ino = captured.header().nodeid;
  handle_given_ = SessionTable::OpenHandle{ino, fh, session_state.opcode == FUSE_OPENDIR};
  fuse::Request::answer_open(fh, open_flags, -1);
}

void SessionRequest::answer_error(int errno_value) {
  const uint32_t op = session_state.opcode;
  if (errno_value == ENOSYS && (op == FUSE_OPEN || op == FUSE_OPENDIR)) opens_nothing_ = true;
  fuse::Request::answer_error(errno_value);
}

bool SessionRequest::dir_add_plus(std::string_view name, const Entry& entry, uint64_t next_offset) {
  if (!fuse::Request::dir_add_plus(name, entry, next_offset)) return false;
  // "." and ".." give out no lookup (backend.h).
  if (name != "." && name != "..") lookups_given_.push_back(entry.ino);
  return true;
}

}  // namespace dpfs::remote
