#include "backend/null/null.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstring>
#include <ctime>

#include "util/iov.h"

namespace dpfs {
namespace {

struct DirSlot {
  std::string_view name;
  uint64_t ino;
  uint32_t type;
};

// The root's listing; an entry's readdir cookie is its index + 1.
constexpr std::array<DirSlot, 3> kRootListing{{
    {".", kRootIno, DT_DIR},
    {"..", kRootIno, DT_DIR},
    {"zero", NullBackend::kFileIno, DT_REG},
}};

constexpr uint32_t kBlockSize = 4096;

}  // namespace

NullBackend::NullBackend(NullOptions options) : options_(options) {
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  for (struct stat* st : {&root_, &file_}) {
    st->st_uid = getuid();
    st->st_gid = getgid();
    st->st_blksize = kBlockSize;
    st->st_atim = st->st_mtim = st->st_ctim = now;
  }
  root_.st_ino = kRootIno;
  root_.st_mode = S_IFDIR | 0755;
  root_.st_nlink = 2;
  root_.st_size = kBlockSize;
  root_.st_blocks = kBlockSize / 512;

  file_.st_ino = kFileIno;
  file_.st_mode = S_IFREG | 0644;
  file_.st_nlink = 1;
  file_.st_size = static_cast<off_t>(options_.file_size);
  file_.st_blocks = 0;  // all holes: nothing is stored
}

Capabilities NullBackend::capabilities() const {
  Capabilities caps;
  caps.posix_locks = false;
  caps.flock_locks = false;
  caps.readdirplus = true;
  caps.writeback_cache = false;
  return caps;
}

Entry NullBackend::entry(uint64_t ino) const {
  Entry e;
  e.ino = ino;
  e.generation = 0;
  e.attr = attr(ino);
  e.entry_timeout = options_.timeout;
  e.attr_timeout = options_.timeout;
  return e;
}

int NullBackend::dir_change_error(uint64_t parent) {
  if (parent == kRootIno) return EROFS;
  return parent == kFileIno ? ENOTDIR : ESTALE;
}

void NullBackend::lookup(const Context&, uint64_t parent, std::string_view name, EntryReply reply) {
  if (parent != kRootIno) return reply.error(parent == kFileIno ? ENOTDIR : ESTALE);
  if (name != kFileName) return reply.error(ENOENT);
  reply.ok(entry(kFileIno));
}

// Static inodes: there is no lookup count to drop.
void NullBackend::forget(uint64_t, uint64_t) {}

void NullBackend::getattr(const Context&, uint64_t ino, std::optional<uint64_t>, AttrReply reply) {
  if (!valid(ino)) return reply.error(ESTALE);
  reply.ok(attr(ino), options_.timeout);
}

void NullBackend::setattr(const Context&, uint64_t ino, const SetAttr& set, AttrReply reply) {
  if (!valid(ino)) return reply.error(ESTALE);
  // Only a request that changes nothing succeeds: a truncate to the current
  // size (what ftruncate of a laid-out file sends), or no field at all.
  constexpr uint32_t kNoChange = SetAttr::kFh | SetAttr::kLockOwner;
  uint32_t changes = set.valid & ~kNoChange;
  if ((changes & SetAttr::kSize) && ino == kFileIno && set.size == options_.file_size) {
    changes &= ~SetAttr::kSize;
  }
  if (changes != 0) return reply.error(EROFS);
  reply.ok(attr(ino), options_.timeout);
}

void NullBackend::readlink(const Context&, uint64_t ino, ReadlinkReply reply) {
  reply.error(valid(ino) ? EINVAL : ESTALE);
}

void NullBackend::symlink(const Context&, uint64_t parent, std::string_view, std::string_view,
                          EntryReply reply) {
  reply.error(dir_change_error(parent));
}

void NullBackend::mknod(const Context&, uint64_t parent, std::string_view, uint32_t, uint32_t,
                        uint32_t, EntryReply reply) {
  reply.error(dir_change_error(parent));
}

void NullBackend::mkdir(const Context&, uint64_t parent, std::string_view, uint32_t, uint32_t,
                        EntryReply reply) {
  reply.error(dir_change_error(parent));
}

void NullBackend::unlink(const Context&, uint64_t parent, std::string_view, StatusReply reply) {
  reply.error(dir_change_error(parent));
}

void NullBackend::rmdir(const Context&, uint64_t parent, std::string_view, StatusReply reply) {
  reply.error(dir_change_error(parent));
}

void NullBackend::rename(const Context&, uint64_t parent, std::string_view, uint64_t new_parent,
                         std::string_view, uint32_t, StatusReply reply) {
  const int err = dir_change_error(parent);
  reply.error(err != EROFS ? err : dir_change_error(new_parent));
}

void NullBackend::link(const Context&, uint64_t ino, uint64_t new_parent, std::string_view,
                       EntryReply reply) {
  reply.error(valid(ino) ? dir_change_error(new_parent) : ESTALE);
}

void NullBackend::open(const Context&, uint64_t ino, uint32_t flags, OpenReply reply) {
  if (ino != kFileIno) return reply.error(ino == kRootIno ? EISDIR : ESTALE);
  // O_TRUNC arrives only with FUSE_ATOMIC_O_TRUNC; the size cannot change.
  if ((flags & O_TRUNC) && options_.file_size != 0) return reply.error(EROFS);
  reply.ok(0, options_.direct_io ? FOPEN_DIRECT_IO : 0);
}

void NullBackend::read(const Context&, uint64_t ino, uint64_t fh, uint64_t offset, uint32_t size,
                       std::span<const iovec> dst, ReadReply reply) {
  if (ino != kFileIno) return reply.error(ino == kRootIno ? EISDIR : ESTALE);
  if (fh != 0) return reply.error(EBADF);
  const uint64_t left = offset < options_.file_size ? options_.file_size - offset : 0;
  const size_t len = static_cast<size_t>(std::min<uint64_t>(size, left));
  size_t done = 0;
  for (const iovec& v : dst) {
    if (done == len) break;
    const size_t n = std::min(v.iov_len, len - done);
    std::memset(v.iov_base, 0, n);
    done += n;
  }
  reply.ok(done);
}

void NullBackend::write(const Context&, uint64_t ino, uint64_t fh, uint64_t,
                        std::span<const iovec> src, uint32_t, WriteReply reply) {
  if (ino != kFileIno) return reply.error(ino == kRootIno ? EISDIR : ESTALE);
  if (fh != 0) return reply.error(EBADF);
  reply.ok(iov_length(src));
}

void NullBackend::statfs(const Context&, uint64_t ino, StatfsReply reply) {
  if (!valid(ino)) return reply.error(ESTALE);
  struct statvfs st {};
  st.f_bsize = kBlockSize;
  st.f_frsize = kBlockSize;
  st.f_blocks = options_.file_size / kBlockSize;
  st.f_bfree = 0;
  st.f_bavail = 0;
  st.f_files = 2;
  st.f_ffree = 0;
  st.f_favail = 0;
  st.f_namemax = NAME_MAX;
  reply.ok(st);
}

void NullBackend::release(const Context&, uint64_t ino, uint64_t, uint32_t, uint64_t, ReleaseFlock,
                          StatusReply reply) {
  if (!valid(ino)) return reply.error(ESTALE);
  reply.ok();
}

void NullBackend::fsync(const Context&, uint64_t ino, uint64_t, SyncMode, StatusReply reply) {
  if (!valid(ino)) return reply.error(ESTALE);
  reply.ok();
}

void NullBackend::setxattr(const Context&, uint64_t ino, std::string_view,
                           std::span<const std::byte>, uint32_t, StatusReply reply) {
  reply.error(change_error(ino));
}

void NullBackend::getxattr(const Context&, uint64_t ino, std::string_view, XattrReply reply) {
  reply.error(valid(ino) ? ENODATA : ESTALE);
}

void NullBackend::listxattr(const Context&, uint64_t ino, XattrReply reply) {
  if (!valid(ino)) return reply.error(ESTALE);
  reply.ok(std::string_view());
}

void NullBackend::removexattr(const Context&, uint64_t ino, std::string_view, StatusReply reply) {
  reply.error(change_error(ino));
}

void NullBackend::flush(const Context&, uint64_t ino, uint64_t, uint64_t, StatusReply reply) {
  if (!valid(ino)) return reply.error(ESTALE);
  reply.ok();
}

void NullBackend::opendir(const Context&, uint64_t ino, uint32_t, OpenReply reply) {
  if (ino != kRootIno) return reply.error(ino == kFileIno ? ENOTDIR : ESTALE);
  reply.ok(0);
}

void NullBackend::readdir(const Context&, uint64_t ino, uint64_t fh, uint64_t offset,
                          DirReply reply) {
  if (ino != kRootIno) return reply.error(ino == kFileIno ? ENOTDIR : ESTALE);
  if (fh != 0) return reply.error(EBADF);
  // `offset` is a cookie we gave (index + 1) or 0; anything past the end is
  // an empty tail, not an error.
  for (uint64_t i = offset; i < kRootListing.size(); ++i) {
    const DirSlot& slot = kRootListing[i];
    // "." and ".." in READDIRPLUS add no lookup (the kernel skips them), and
    // "zero" is static: no count is kept either way.
    const bool added = reply.plus() ? reply.add_plus(slot.name, entry(slot.ino), i + 1)
                                    : reply.add(slot.name, slot.ino, slot.type, i + 1);
    if (!added) break;
  }
  reply.done();
}

void NullBackend::releasedir(const Context&, uint64_t ino, uint64_t, StatusReply reply) {
  if (!valid(ino)) return reply.error(ESTALE);
  reply.ok();
}

void NullBackend::fsyncdir(const Context&, uint64_t ino, uint64_t, SyncMode, StatusReply reply) {
  if (!valid(ino)) return reply.error(ESTALE);
  reply.ok();
}

// Permission checks are the kernel's (default_permissions) or nobody's: the
// null file system lets everyone through.
void NullBackend::access(const Context&, uint64_t ino, uint32_t, StatusReply reply) {
  if (!valid(ino)) return reply.error(ESTALE);
  reply.ok();
}

void NullBackend::create(const Context&, uint64_t parent, std::string_view, uint32_t, uint32_t,
                         uint32_t, CreateReply reply) {
  reply.error(dir_change_error(parent));
}

void NullBackend::fallocate(const Context&, uint64_t ino, uint64_t, uint32_t, uint64_t, uint64_t,
                            StatusReply reply) {
  if (!valid(ino)) return reply.error(ESTALE);
  reply.error(EOPNOTSUPP);
}

void NullBackend::syncfs(const Context&, uint64_t ino, StatusReply reply) {
  if (!valid(ino)) return reply.error(ESTALE);
  reply.ok();
}

void NullBackend::tmpfile(const Context&, uint64_t parent, uint32_t, uint32_t, uint32_t,
                          CreateReply reply) {
  reply.error(dir_change_error(parent));
}

}  // namespace dpfs
