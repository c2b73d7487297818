#include "fuse/session.h"

#include "fuse/reply.h"
#include "util/counter.h"

#include <fcntl.h>
#include <linux/limits.h>
#include <spdlog/spdlog.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <mutex>

namespace dpfs::fuse {
namespace {

constexpr size_t kNameMax = NAME_MAX;         // 255, a path component
constexpr size_t kSymlinkMax = PATH_MAX - 1;  // a symlink target
constexpr size_t kXattrNameMax = XATTR_NAME_MAX;
constexpr size_t kXattrSizeMax = XATTR_SIZE_MAX;
constexpr uint32_t kMaxPagesLimit = 256;  // FUSE_MAX_MAX_PAGES of the kernel
constexpr uint32_t kPageSize = 4096;
constexpr uint64_t kMaxOffset = INT64_MAX;  // loff_t

}  // namespace

uint64_t monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

namespace {

// The session whose request or reply this thread is working on. Malformed
// requests are found deep in decoding, where only the request is at hand;
// log_malformed charges their lines to this session's limiter, so that one
// tenant's flood neither floods the operator's log nor silences the others.
thread_local FuseSession* t_logging_session = nullptr;

// Session ids, for the threads' caches of their statistics blocks.
std::atomic<uint64_t> g_next_session_id{1};

class LoggingSessionScope {
 public:
  explicit LoggingSessionScope(FuseSession* session) : previous_(t_logging_session) {
    t_logging_session = session;
  }
  LoggingSessionScope(const LoggingSessionScope&) = delete;
  LoggingSessionScope& operator=(const LoggingSessionScope&) = delete;
  ~LoggingSessionScope() { t_logging_session = previous_; }

 private:
  FuseSession* previous_;
};

template <typename... Args>
void log_malformed(fmt::format_string<Args...> format, Args&&... args) {
  // Every caller runs under a LoggingSessionScope; a line from anywhere else
  // still gets a (process-wide) limit.
  static util::RateLimitedLog unattributed("FUSE sessions");
  FuseSession* session = t_logging_session;
  util::RateLimitedLog& log = session != nullptr ? session->log() : unattributed;
  log.log_with(spdlog::level::warn, [&] {
    return fmt::format("{}: malformed FUSE request: {}",
                       session != nullptr ? session->options().name : log.name(),
                       fmt::format(format, std::forward<Args>(args)...));
  });
}

// --- Decoding ---------------------------------------------------------------

// One request being decoded. Handlers return 0 once they have handed the
// request to the backend (which now owns the reply) or an errno to answer now.
struct Call {
  FuseSession& session;
  Backend& backend;
  Request& req;
  const fuse_in_header& hdr;
  IovReader& in;  // over the private copy of the arguments
  Context ctx;
  // For IovReader::cstring, which gathers strings split across buffers;
  // the private copy is one buffer, so this stays empty.
  std::string scratch;

  template <typename T>
  bool arg(T* out) {
    return in.read(out);
  }

  // A path component: non-empty, at most NAME_MAX, no '/'. A view into
  // the request's private copy (CapturedRequest), never into tenant memory.
  int name(std::string_view* out) {
    bool too_long = false;
    if (!in.cstring(kNameMax, &scratch, out, &too_long)) {
      if (too_long) return ENAMETOOLONG;
      log_malformed("{}: name not NUL-terminated", opcode_name(hdr.opcode));
      return EINVAL;
    }
    if (out->empty() || out->find('/') != std::string_view::npos) {
      log_malformed("{}: invalid name", opcode_name(hdr.opcode));
      return EINVAL;
    }
    return 0;
  }

  int xattr_name(std::string_view* out) {
    bool too_long = false;
    if (!in.cstring(kXattrNameMax, &scratch, out, &too_long)) {
      if (too_long) return ERANGE;
      log_malformed("{}: xattr name not NUL-terminated", opcode_name(hdr.opcode));
      return EINVAL;
    }
    return out->empty() ? ERANGE : 0;
  }

  int short_args() {
    log_malformed("{}: {} bytes of arguments is too short", opcode_name(hdr.opcode),
                  in.remaining());
    return EINVAL;
  }

  template <typename R>
  R reply() {
    return R(&req);
  }
};

using Handler = int (*)(Call&);

int do_lookup(Call& c) {
  std::string_view name;
  if (int e = c.name(&name)) return e;
  c.backend.lookup(c.ctx, c.hdr.nodeid, name, c.reply<EntryReply>());
  return 0;
}

int do_forget(Call& c) {
  fuse_forget_in a;
  if (!c.arg(&a)) {
    c.short_args();
  } else {
    c.backend.forget(c.hdr.nodeid, a.nlookup);
  }
  c.session.finish(c.req, 0);
  c.req.complete(0);  // FORGET takes no reply
  return 0;
}

int do_batch_forget(Call& c) {
  fuse_batch_forget_in a;
  if (!c.arg(&a)) {
    c.short_args();
  } else {
    // Forget what the request really carries, whatever count claims.
    for (uint32_t i = 0; i < a.count; ++i) {
      fuse_forget_one one;
      if (!c.arg(&one)) {
        log_malformed("BATCH_FORGET: count {} but only {} entries", a.count, i);
        break;
      }
      c.backend.forget(one.nodeid, one.nlookup);
    }
  }
  c.session.finish(c.req, 0);
  c.req.complete(0);
  return 0;
}

int do_getattr(Call& c) {
  fuse_getattr_in a;
  if (!c.arg(&a)) return c.short_args();
  std::optional<uint64_t> fh;
  if (a.getattr_flags & FUSE_GETATTR_FH) fh = a.fh;
  c.backend.getattr(c.ctx, c.hdr.nodeid, fh, c.reply<AttrReply>());
  return 0;
}

bool valid_nsec(uint32_t nsec) { return nsec < 1000000000u; }

int do_setattr(Call& c) {
  fuse_setattr_in a;
  if (!c.arg(&a)) return c.short_args();
  constexpr uint32_t kKnown = FATTR_MODE | FATTR_UID | FATTR_GID | FATTR_SIZE | FATTR_ATIME |
                              FATTR_MTIME | FATTR_FH | FATTR_ATIME_NOW | FATTR_MTIME_NOW |
                              FATTR_LOCKOWNER | FATTR_CTIME | FATTR_KILL_SUIDGID;
  SetAttr s;
  s.valid = a.valid & kKnown;
  s.mode = a.mode;
  s.uid = a.uid;
  s.gid = a.gid;
  s.size = a.size;
  s.fh = a.fh;
  s.lock_owner = a.lock_owner;
  if ((s.valid & SetAttr::kSize) && a.size > kMaxOffset) return EFBIG;
  timespec now{};
  if (s.valid & (SetAttr::kAtimeNow | SetAttr::kMtimeNow)) clock_gettime(CLOCK_REALTIME, &now);
  if (s.valid & SetAttr::kAtimeNow) {
    s.valid |= SetAttr::kAtime;
    s.atime = now;
  } else if (s.valid & SetAttr::kAtime) {
    if (!valid_nsec(a.atimensec)) return EINVAL;
    s.atime = {time_t(a.atime), long(a.atimensec)};
  }
  if (s.valid & SetAttr::kMtimeNow) {
    s.valid |= SetAttr::kMtime;
    s.mtime = now;
  } else if (s.valid & SetAttr::kMtime) {
    if (!valid_nsec(a.mtimensec)) return EINVAL;
    s.mtime = {time_t(a.mtime), long(a.mtimensec)};
  }
  if (s.valid & SetAttr::kCtime) {
    if (!valid_nsec(a.ctimensec)) return EINVAL;
    s.ctime = {time_t(a.ctime), long(a.ctimensec)};
  }
  c.backend.setattr(c.ctx, c.hdr.nodeid, s, c.reply<AttrReply>());
  return 0;
}

int do_readlink(Call& c) {
  c.backend.readlink(c.ctx, c.hdr.nodeid, c.reply<ReadlinkReply>());
  return 0;
}

int do_symlink(Call& c) {
  std::string_view name, target;
  if (int e = c.name(&name)) return e;
  bool too_long = false;
  if (!c.in.cstring(kSymlinkMax, &c.scratch, &target, &too_long)) {
    if (too_long) return ENAMETOOLONG;
    log_malformed("SYMLINK: target not NUL-terminated");
    return EINVAL;
  }
  if (target.empty()) return ENOENT;
  c.backend.symlink(c.ctx, c.hdr.nodeid, name, target, c.reply<EntryReply>());
  return 0;
}

int do_mknod(Call& c) {
  fuse_mknod_in a;
  if (!c.arg(&a)) return c.short_args();
  std::string_view name;
  if (int e = c.name(&name)) return e;
  c.backend.mknod(c.ctx, c.hdr.nodeid, name, a.mode, a.rdev, a.umask, c.reply<EntryReply>());
  return 0;
}

int do_mkdir(Call& c) {
  fuse_mkdir_in a;
  if (!c.arg(&a)) return c.short_args();
  std::string_view name;
  if (int e = c.name(&name)) return e;
  c.backend.mkdir(c.ctx, c.hdr.nodeid, name, a.mode, a.umask, c.reply<EntryReply>());
  return 0;
}

int do_unlink(Call& c) {
  std::string_view name;
  if (int e = c.name(&name)) return e;
  c.backend.unlink(c.ctx, c.hdr.nodeid, name, c.reply<StatusReply>());
  return 0;
}

int do_rmdir(Call& c) {
  std::string_view name;
  if (int e = c.name(&name)) return e;
  c.backend.rmdir(c.ctx, c.hdr.nodeid, name, c.reply<StatusReply>());
  return 0;
}

int rename_common(Call& c, uint64_t new_parent, uint32_t flags) {
  std::string_view name, new_name;
  if (int e = c.name(&name)) return e;
  if (int e = c.name(&new_name)) return e;
  c.backend.rename(c.ctx, c.hdr.nodeid, name, new_parent, new_name, flags, c.reply<StatusReply>());
  return 0;
}

int do_rename(Call& c) {
  fuse_rename_in a;
  if (!c.arg(&a)) return c.short_args();
  return rename_common(c, a.newdir, 0);
}

int do_rename2(Call& c) {
  fuse_rename2_in a;
  if (!c.arg(&a)) return c.short_args();
  constexpr uint32_t kKnown = RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT;
  if ((a.flags & ~kKnown) ||
      ((a.flags & RENAME_EXCHANGE) && (a.flags & (RENAME_NOREPLACE | RENAME_WHITEOUT)))) {
    return EINVAL;
  }
  return rename_common(c, a.newdir, a.flags);
}

int do_link(Call& c) {
  fuse_link_in a;
  if (!c.arg(&a)) return c.short_args();
  std::string_view name;
  if (int e = c.name(&name)) return e;
  // The header names the new parent; the argument the inode to link.
  c.backend.link(c.ctx, a.oldnodeid, c.hdr.nodeid, name, c.reply<EntryReply>());
  return 0;
}

int do_open(Call& c) {
  fuse_open_in a;
  if (!c.arg(&a)) return c.short_args();
  c.ctx.kill_suidgid = (a.open_flags & FUSE_OPEN_KILL_SUIDGID) != 0;
  c.backend.open(c.ctx, c.hdr.nodeid, a.flags, c.reply<OpenReply>());
  return 0;
}

int do_opendir(Call& c) {
  fuse_open_in a;
  if (!c.arg(&a)) return c.short_args();
  c.backend.opendir(c.ctx, c.hdr.nodeid, a.flags, c.reply<OpenReply>());
  return 0;
}

// Positions the writer for a payload of at most `size` bytes and checks that
// the tenant's buffer can hold it.
int reserve_payload(Call& c, uint32_t size) {
  Request::SessionState& st = c.req.session_state;
  if (st.writer.remaining() < size) {
    log_malformed("{} of {} bytes but the reply buffer holds {}", opcode_name(c.hdr.opcode), size,
                  st.writer.remaining());
    return EINVAL;
  }
  st.limit = size;
  return 0;
}

int do_read(Call& c) {
  fuse_read_in a;
  if (!c.arg(&a)) return c.short_args();
  if (a.offset > kMaxOffset) return EINVAL;
  if (a.size > c.session.max_write()) {
    log_malformed("READ of {} bytes exceeds max_write {}", a.size, c.session.max_write());
    return EINVAL;
  }
  if (int e = reserve_payload(c, a.size)) return e;
  Request::SessionState& st = c.req.session_state;
  st.writer.peek_iovecs(a.size, &st.data_iov);
  c.backend.read(c.ctx, c.hdr.nodeid, a.fh, a.offset, a.size, st.data_iov, c.reply<ReadReply>());
  return 0;
}

int do_write(Call& c) {
  fuse_write_in a;
  if (!c.arg(&a)) return c.short_args();
  if (a.size > c.session.max_write()) {
    log_malformed("WRITE of {} bytes exceeds max_write {}", a.size, c.session.max_write());
    return EINVAL;
  }
  if (a.offset > kMaxOffset || a.size > kMaxOffset - a.offset) return EFBIG;
  // The payload stays in the tenant's buffers (zero-copy): no decision
  // depends on it. Its length is what the private header said.
  const CapturedRequest& cap = c.req.captured;
  const size_t carried = cap.payload_length() - size_t(c.hdr.total_extlen) * 8;  // checked
  if (carried < a.size) {
    log_malformed("WRITE claims {} bytes but carries {}", a.size, carried);
    return EINVAL;
  }
  Request::SessionState& st = c.req.session_state;
  IovReader payload(cap.payload(), a.size);
  payload.take_iovecs(a.size, &st.data_iov);  // a.size <= carried: cannot fail
  c.backend.write(c.ctx, c.hdr.nodeid, a.fh, a.offset, st.data_iov, a.write_flags,
                  c.reply<WriteReply>());
  return 0;
}

int do_statfs(Call& c) {
  c.backend.statfs(c.ctx, c.hdr.nodeid, c.reply<StatfsReply>());
  return 0;
}

int do_release(Call& c) {
  fuse_release_in a;
  if (!c.arg(&a)) return c.short_args();
  if (c.hdr.opcode == FUSE_RELEASEDIR) {
    c.backend.releasedir(c.ctx, c.hdr.nodeid, a.fh, c.reply<StatusReply>());
  } else {
    const ReleaseFlock flock = (a.release_flags & FUSE_RELEASE_FLOCK_UNLOCK) != 0
                                   ? ReleaseFlock::kUnlock
                                   : ReleaseFlock::kKeep;
    // The kernel released its file: the backing id may go with it.
    if (PassthroughFiles* files = c.session.passthrough_files()) files->detach(a.fh);
    c.backend.release(c.ctx, c.hdr.nodeid, a.fh, a.flags, a.lock_owner, flock,
                      c.reply<StatusReply>());
  }
  return 0;
}

int do_fsync(Call& c) {
  fuse_fsync_in a;
  if (!c.arg(&a)) return c.short_args();
  const SyncMode mode =
      (a.fsync_flags & FUSE_FSYNC_FDATASYNC) != 0 ? SyncMode::kDataOnly : SyncMode::kAll;
  if (c.hdr.opcode == FUSE_FSYNCDIR) {
    c.backend.fsyncdir(c.ctx, c.hdr.nodeid, a.fh, mode, c.reply<StatusReply>());
  } else {
    c.backend.fsync(c.ctx, c.hdr.nodeid, a.fh, mode, c.reply<StatusReply>());
  }
  return 0;
}

int do_setxattr(Call& c) {
  fuse_setxattr_in a{};
  // FUSE_SETXATTR_EXT makes the argument 16 bytes; before it, 8.
  const size_t arg_size = (c.session.negotiated_flags() & FUSE_SETXATTR_EXT)
                              ? sizeof(fuse_setxattr_in)
                              : FUSE_COMPAT_SETXATTR_IN_SIZE;
  if (!c.in.read(&a, arg_size)) return c.short_args();
  std::string_view name;
  if (int e = c.xattr_name(&name)) return e;
  if (a.size > kXattrSizeMax) return E2BIG;
  if (c.in.remaining() < a.size) {
    log_malformed("SETXATTR claims {} bytes of value but carries {}", a.size, c.in.remaining());
    return EINVAL;
  }
  // The value is in the private copy, which is one buffer.
  const char* p = c.in.contiguous(a.size);
  if (p == nullptr) return EINVAL;
  const auto value = std::as_bytes(std::span<const char>(p, a.size));
  c.backend.setxattr(c.ctx, c.hdr.nodeid, name, value, a.flags, c.reply<StatusReply>());
  return 0;
}

int do_getxattr(Call& c) {
  fuse_getxattr_in a;
  if (!c.arg(&a)) return c.short_args();
  std::string_view name;
  if (int e = c.xattr_name(&name)) return e;
  c.req.session_state.limit = a.size;
  c.backend.getxattr(c.ctx, c.hdr.nodeid, name, c.reply<XattrReply>());
  return 0;
}

int do_listxattr(Call& c) {
  fuse_getxattr_in a;
  if (!c.arg(&a)) return c.short_args();
  c.req.session_state.limit = a.size;
  c.backend.listxattr(c.ctx, c.hdr.nodeid, c.reply<XattrReply>());
  return 0;
}

int do_removexattr(Call& c) {
  std::string_view name;
  if (int e = c.xattr_name(&name)) return e;
  c.backend.removexattr(c.ctx, c.hdr.nodeid, name, c.reply<StatusReply>());
  return 0;
}

int do_flush(Call& c) {
  fuse_flush_in a;
  if (!c.arg(&a)) return c.short_args();
  c.backend.flush(c.ctx, c.hdr.nodeid, a.fh, a.lock_owner, c.reply<StatusReply>());
  return 0;
}

int do_readdir(Call& c) {
  fuse_read_in a;
  if (!c.arg(&a)) return c.short_args();
  // A directory listing needs no more than max_write per request.
  const uint32_t size = std::min(a.size, c.session.max_write());
  if (int e = reserve_payload(c, size)) return e;
  c.req.session_state.plus = c.hdr.opcode == FUSE_READDIRPLUS;
  c.backend.readdir(c.ctx, c.hdr.nodeid, a.fh, a.offset, c.reply<DirReply>());
  return 0;
}

int decode_lock(Call& c, fuse_lk_in* a, Lock* lock) {
  if (!c.arg(a)) return c.short_args();
  const uint32_t type = a->lk.type;
  if (type != F_RDLCK && type != F_WRLCK && type != F_UNLCK) return EINVAL;
  if (a->lk.start > kMaxOffset || a->lk.end > kMaxOffset || a->lk.start > a->lk.end) return EINVAL;
  *lock = {a->lk.start, a->lk.end, type, a->lk.pid};
  return 0;
}

int do_getlk(Call& c) {
  fuse_lk_in a;
  Lock lock;
  if (int e = decode_lock(c, &a, &lock)) return e;
  c.backend.getlk(c.ctx, c.hdr.nodeid, a.fh, a.owner, lock, c.reply<LockReply>());
  return 0;
}

int do_setlk(Call& c) {
  fuse_lk_in a;
  Lock lock;
  if (int e = decode_lock(c, &a, &lock)) return e;
  const LockWait wait = c.hdr.opcode == FUSE_SETLKW ? LockWait::kWait : LockWait::kNoWait;
  const LockFlavor flavor =
      (a.lk_flags & FUSE_LK_FLOCK) != 0 ? LockFlavor::kFlock : LockFlavor::kPosix;
  c.backend.setlk(c.ctx, c.hdr.nodeid, a.fh, a.owner, lock, wait, flavor, c.reply<StatusReply>());
  return 0;
}

int do_access(Call& c) {
  fuse_access_in a;
  if (!c.arg(&a)) return c.short_args();
  if (a.mask & ~uint32_t(R_OK | W_OK | X_OK)) return EINVAL;
  c.backend.access(c.ctx, c.hdr.nodeid, a.mask, c.reply<StatusReply>());
  return 0;
}

int do_create(Call& c) {
  fuse_create_in a;
  if (!c.arg(&a)) return c.short_args();
  std::string_view name;
  if (int e = c.name(&name)) return e;
  c.ctx.kill_suidgid = (a.open_flags & FUSE_OPEN_KILL_SUIDGID) != 0;
  c.backend.create(c.ctx, c.hdr.nodeid, name, a.mode, a.umask, a.flags, c.reply<CreateReply>());
  return 0;
}

int do_tmpfile(Call& c) {
  fuse_create_in a;
  if (!c.arg(&a)) return c.short_args();
  // The kernel sends the name of the tmpfile dentry ("/"); it means nothing.
  c.backend.tmpfile(c.ctx, c.hdr.nodeid, a.mode, a.umask, a.flags, c.reply<CreateReply>());
  return 0;
}

int do_interrupt(Call& c) {
  fuse_interrupt_in a;
  if (!c.arg(&a)) {
    c.short_args();
  } else {
    c.backend.interrupt(a.unique);
  }
  c.session.finish(c.req, 0);
  c.req.complete(0);  // INTERRUPT takes no reply
  return 0;
}

int do_fallocate(Call& c) {
  fuse_fallocate_in a;
  if (!c.arg(&a)) return c.short_args();
  if (a.length == 0 || a.offset > kMaxOffset || a.length > kMaxOffset) return EINVAL;
  if (a.length > kMaxOffset - a.offset) return EFBIG;
  c.backend.fallocate(c.ctx, c.hdr.nodeid, a.fh, a.mode, a.offset, a.length,
                      c.reply<StatusReply>());
  return 0;
}

int do_lseek(Call& c) {
  fuse_lseek_in a;
  if (!c.arg(&a)) return c.short_args();
  if (a.offset > kMaxOffset) return ENXIO;
  if (a.whence != SEEK_DATA && a.whence != SEEK_HOLE) return EINVAL;
  c.backend.lseek(c.ctx, c.hdr.nodeid, a.fh, a.offset, a.whence, c.reply<LseekReply>());
  return 0;
}

int do_copy_file_range(Call& c) {
  fuse_copy_file_range_in a;
  if (!c.arg(&a)) return c.short_args();
  if (a.off_in > kMaxOffset || a.off_out > kMaxOffset) return EINVAL;
  // The reply counts bytes in 32 bits; a shorter copy is a valid answer.
  CopyRange range;
  range.ino_in = c.hdr.nodeid;
  range.fh_in = a.fh_in;
  range.off_in = a.off_in;
  range.ino_out = a.nodeid_out;
  range.fh_out = a.fh_out;
  range.off_out = a.off_out;
  range.len =
      std::min<uint64_t>({a.len, kMaxOffset - a.off_in, kMaxOffset - a.off_out, 0xfffff000u});
  range.flags = a.flags;
  c.backend.copy_file_range(c.ctx, range, c.reply<WriteReply>());
  return 0;
}

int do_syncfs(Call& c) {
  fuse_syncfs_in a;
  if (!c.arg(&a)) return c.short_args();
  c.backend.syncfs(c.ctx, c.hdr.nodeid, c.reply<StatusReply>());
  return 0;
}

int do_destroy(Call& c) {
  c.backend.destroy();
  c.reply<StatusReply>().ok();
  return 0;
}

// Sent by the kernel only in answer to a NOTIFY_RETRIEVE, which dpfs never
// sends; it takes no reply.
int do_notify_reply(Call& c) {
  c.session.finish(c.req, 0);
  c.req.complete(0);
  return 0;
}

struct OpInfo {
  const char* name;
  Handler handler;
};

constexpr std::array<OpInfo, FuseSession::kMaxOpcode> make_ops() {
  std::array<OpInfo, FuseSession::kMaxOpcode> ops{};
  for (auto& op : ops) op = {"UNKNOWN", nullptr};
  ops[FUSE_LOOKUP] = {"LOOKUP", do_lookup};
  ops[FUSE_FORGET] = {"FORGET", do_forget};
  ops[FUSE_GETATTR] = {"GETATTR", do_getattr};
  ops[FUSE_SETATTR] = {"SETATTR", do_setattr};
  ops[FUSE_READLINK] = {"READLINK", do_readlink};
  ops[FUSE_SYMLINK] = {"SYMLINK", do_symlink};
  ops[FUSE_MKNOD] = {"MKNOD", do_mknod};
  ops[FUSE_MKDIR] = {"MKDIR", do_mkdir};
  ops[FUSE_UNLINK] = {"UNLINK", do_unlink};
  ops[FUSE_RMDIR] = {"RMDIR", do_rmdir};
  ops[FUSE_RENAME] = {"RENAME", do_rename};
  ops[FUSE_LINK] = {"LINK", do_link};
  ops[FUSE_OPEN] = {"OPEN", do_open};
  ops[FUSE_READ] = {"READ", do_read};
  ops[FUSE_WRITE] = {"WRITE", do_write};
  ops[FUSE_STATFS] = {"STATFS", do_statfs};
  ops[FUSE_RELEASE] = {"RELEASE", do_release};
  ops[FUSE_FSYNC] = {"FSYNC", do_fsync};
  ops[FUSE_SETXATTR] = {"SETXATTR", do_setxattr};
  ops[FUSE_GETXATTR] = {"GETXATTR", do_getxattr};
  ops[FUSE_LISTXATTR] = {"LISTXATTR", do_listxattr};
  ops[FUSE_REMOVEXATTR] = {"REMOVEXATTR", do_removexattr};
  ops[FUSE_FLUSH] = {"FLUSH", do_flush};
  ops[FUSE_INIT] = {"INIT", nullptr};  // handled before dispatch
  ops[FUSE_OPENDIR] = {"OPENDIR", do_opendir};
  ops[FUSE_READDIR] = {"READDIR", do_readdir};
  ops[FUSE_RELEASEDIR] = {"RELEASEDIR", do_release};
  ops[FUSE_FSYNCDIR] = {"FSYNCDIR", do_fsync};
  ops[FUSE_GETLK] = {"GETLK", do_getlk};
  ops[FUSE_SETLK] = {"SETLK", do_setlk};
  ops[FUSE_SETLKW] = {"SETLKW", do_setlk};
  ops[FUSE_ACCESS] = {"ACCESS", do_access};
  ops[FUSE_CREATE] = {"CREATE", do_create};
  ops[FUSE_INTERRUPT] = {"INTERRUPT", do_interrupt};
  ops[FUSE_BMAP] = {"BMAP", nullptr};
  ops[FUSE_DESTROY] = {"DESTROY", do_destroy};
  ops[FUSE_IOCTL] = {"IOCTL", nullptr};
  ops[FUSE_POLL] = {"POLL", nullptr};
  ops[FUSE_NOTIFY_REPLY] = {"NOTIFY_REPLY", do_notify_reply};
  ops[FUSE_BATCH_FORGET] = {"BATCH_FORGET", do_batch_forget};
  ops[FUSE_FALLOCATE] = {"FALLOCATE", do_fallocate};
  ops[FUSE_READDIRPLUS] = {"READDIRPLUS", do_readdir};
  ops[FUSE_RENAME2] = {"RENAME2", do_rename2};
  ops[FUSE_LSEEK] = {"LSEEK", do_lseek};
  ops[FUSE_COPY_FILE_RANGE] = {"COPY_FILE_RANGE", do_copy_file_range};
  ops[FUSE_SETUPMAPPING] = {"SETUPMAPPING", nullptr};
  ops[FUSE_REMOVEMAPPING] = {"REMOVEMAPPING", nullptr};
  ops[FUSE_SYNCFS] = {"SYNCFS", do_syncfs};
  ops[FUSE_TMPFILE] = {"TMPFILE", do_tmpfile};
  return ops;
}

constexpr std::array<OpInfo, FuseSession::kMaxOpcode> kOps = make_ops();

}  // namespace

const char* opcode_name(uint32_t opcode) {
  return opcode < kOps.size() ? kOps[opcode].name : "UNKNOWN";
}

size_t encode_error(std::span<const iovec> out, uint64_t unique, int errno_value) {
  return write_header(out, unique, -errno_value, 0);
}

FuseSession::FuseSession(Backend& backend, SessionOptions options)
    : backend_(backend),
      options_(std::move(options)),
      id_(g_next_session_id.fetch_add(1, std::memory_order_relaxed)),
      log_(options_.name) {
  // max_write: whole pages, from one page up to what the kernel can take.
  uint32_t mw = std::clamp(options_.max_write, kPageSize, kMaxPagesLimit * kPageSize);
  mw -= mw % kPageSize;
  options_.max_write = mw;
  max_write_.store(mw, std::memory_order_relaxed);
  if (options_.backing_files != nullptr) {
    passthrough_ = std::make_unique<PassthroughFiles>(*options_.backing_files);
  }
}

std::vector<std::string> FuseSession::extra_stats() const {
  if (!passthrough_ ||
      !(flags_.load(std::memory_order_relaxed) & passthrough_abi::kInitPassthrough)) {
    return {};
  }
  return {passthrough_->summary()};
}

size_t FuseSession::request_size_for(uint32_t max_write) {
  // The larger of a WRITE of max_write and a SETXATTR of the largest value
  // the kernel allows, each with its header and argument, and room for the
  // names and extensions. The kernel refuses requests that do not fit.
  const size_t write = sizeof(fuse_write_in) + max_write;
  const size_t setxattr = sizeof(fuse_setxattr_in) + kXattrNameMax + 1 + kXattrSizeMax;
  return sizeof(fuse_in_header) + std::max(write, setxattr) + kPageSize;
}

size_t FuseSession::reply_size_for(uint32_t max_write) {
  // A READ of max_write, or a GETXATTR/LISTXATTR of the largest value.
  return sizeof(fuse_out_header) + std::max<size_t>(max_write, kXattrSizeMax);
}

void FuseSession::answer_error(Request& req, uint64_t unique, int error) {
  finish(req, -error);
  req.complete(encode_error(req.out, unique, error));
}

bool FuseSession::restore(const InitState& state) {
  if (state.proto_minor < kMinMinor || state.max_write < kPageSize ||
      state.max_write > options_.max_write || state.max_write % kPageSize != 0) {
    return false;
  }
  // Only what INIT can negotiate here (passthrough needs its INIT: the
  // kernel's backing ids are per connection).
  const uint64_t known = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_ATOMIC_O_TRUNC |
                         FUSE_AUTO_INVAL_DATA | FUSE_ASYNC_DIO | FUSE_PARALLEL_DIROPS |
                         FUSE_MAX_PAGES | FUSE_CACHE_SYMLINKS | FUSE_INIT_EXT | FUSE_SETXATTR_EXT |
                         FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO | FUSE_POSIX_LOCKS |
                         FUSE_FLOCK_LOCKS | FUSE_WRITEBACK_CACHE | FUSE_HANDLE_KILLPRIV_V2;
  if ((state.flags & ~known) != 0) return false;
  {
    std::lock_guard lock(init_mu_);
    proto_minor_.store(state.proto_minor, std::memory_order_relaxed);
    flags_.store(state.flags, std::memory_order_relaxed);
    max_write_.store(state.max_write, std::memory_order_relaxed);
    destroyed_.store(false, std::memory_order_release);
    initialized_.store(true, std::memory_order_release);
  }
  backend_.init();
  backend_.resumed();
  log_.info("{}: FUSE 7.{} session restored: max_write={} flags={:#x}", options_.name,
            state.proto_minor, state.max_write, state.flags);
  return true;
}

void FuseSession::reset() {
  std::lock_guard lock(init_mu_);
  if (passthrough_) passthrough_->clear();
  initialized_.store(false, std::memory_order_release);
  destroyed_.store(false, std::memory_order_release);
}

struct FuseSession::ThreadStats {
  struct Counters {
    std::atomic<uint64_t> requests{0};
    std::atomic<uint64_t> errors{0};
    std::atomic<uint64_t> total_ns{0};
  };
  std::thread::id owner = std::this_thread::get_id();
  std::array<Counters, kMaxOpcode> ops;
};

namespace {

// Each thread's last few sessions and its statistics block in each: the
// common case (a worker serving one session) finds its block in one
// compare. Keyed by the session's id, never reused, so an entry of a
// session that is gone can never match another.
struct StatsCacheEntry {
  uint64_t session = 0;
  void* block = nullptr;
};
thread_local std::array<StatsCacheEntry, 4> t_stats_cache;
thread_local unsigned t_stats_cache_next = 0;

}  // namespace

FuseSession::ThreadStats& FuseSession::thread_stats() {
  for (const StatsCacheEntry& e : t_stats_cache) {
    if (e.session == id_) return *static_cast<ThreadStats*>(e.block);
  }
  ThreadStats* block = nullptr;
  {
    util::MutexLock lock(stats_mu_);
    // Evicted from this thread's cache, or its first request here.
    for (const auto& b : thread_stats_) {
      if (b->owner == std::this_thread::get_id()) block = b.get();
    }
    if (block == nullptr) block = thread_stats_.emplace_back(std::make_unique<ThreadStats>()).get();
  }
  t_stats_cache[t_stats_cache_next++ % t_stats_cache.size()] = {id_, block};
  return *block;
}

FuseSession::~FuseSession() = default;

OpStats FuseSession::stats(uint32_t opcode) const {
  OpStats total;
  if (opcode >= kMaxOpcode) opcode = 0;
  util::MutexLock lock(stats_mu_);
  for (const auto& b : thread_stats_) {
    const ThreadStats::Counters& c = b->ops[opcode];
    total.requests += c.requests.load(std::memory_order_relaxed);
    total.errors += c.errors.load(std::memory_order_relaxed);
    total.total_ns += c.total_ns.load(std::memory_order_relaxed);
  }
  return total;
}

void FuseSession::finish(Request& req, int error) {
  Request::SessionState& st = req.session_state;
  st.latency_ns = monotonic_ns() - st.started_ns;
  st.error = error < 0 ? -error : error;
  ThreadStats::Counters& c = thread_stats().ops[st.opcode < kMaxOpcode ? st.opcode : 0];
  util::single_writer_add(c.requests);
  if (error != 0) util::single_writer_add(c.errors);
  util::single_writer_add(c.total_ns, st.latency_ns);
}

void FuseSession::handle(Request& req) {
  const LoggingSessionScope logging(this);
  Request::SessionState& st = req.session_state;
  st.session = this;
  st.unique = 0;
  st.opcode = 0;
  st.started_ns = req.received_ns != 0 ? req.received_ns : monotonic_ns();
  st.latency_ns = 0;
  st.error = 0;
  st.data_iov.clear();
  st.limit = 0;
  st.plus = false;

  // Everything below decides from the private copy only.
  CapturedRequest& cap = req.captured;
  const bool have_header = cap.capture(req.in, req.in_is_private);
  const fuse_in_header& hdr = cap.header();
  if (have_header) {
    st.unique = hdr.unique;
    st.opcode = hdr.opcode;
  }
  st.writer = IovWriter(req.out);
  // FORGET, BATCH_FORGET and INTERRUPT take no reply: virtio-fs sends them
  // on the hiprio queue without reply buffers.
  const bool takes_reply =
      !have_header || (hdr.opcode != FUSE_FORGET && hdr.opcode != FUSE_BATCH_FORGET &&
                       hdr.opcode != FUSE_INTERRUPT && hdr.opcode != FUSE_NOTIFY_REPLY);
  if (!st.writer.skip(sizeof(fuse_out_header)) && takes_reply) {
    log_malformed("reply buffer of {} bytes cannot hold a reply header", iov_length(req.out));
    finish(req, EIO);
    req.complete(0);
    return;
  }
  auto fail = [&](int error) { answer_error(req, st.unique, error); };
  if (!have_header) {
    log_malformed("{} bytes cannot hold a request header", cap.sent());
    return fail(EINVAL);
  }
  // The header's length must cover itself and lie within what was sent.
  if (hdr.len < sizeof(hdr) || hdr.len > cap.sent()) {
    log_malformed("{}: header says {} bytes but {} were sent", opcode_name(hdr.opcode), hdr.len,
                  cap.sent());
    return fail(EINVAL);
  }
  if (cap.too_large()) {
    log_malformed("{}: {} bytes is more than any such request needs", opcode_name(hdr.opcode),
                  hdr.len);
    return fail(EINVAL);
  }
  // Extensions (security context, supplementary groups) trail the
  // arguments; a WRITE's trail its payload, which is not copied.
  const size_t args = hdr.len - sizeof(hdr);
  const size_t ext = size_t(hdr.total_extlen) * 8;
  if (ext > args) {
    log_malformed("{}: extensions of {} bytes exceed the request", opcode_name(hdr.opcode), ext);
    return fail(EINVAL);
  }
  const std::span<const char> copy = cap.args();
  size_t usable = copy.size();
  if (hdr.opcode != FUSE_WRITE) {
    usable = args - ext;  // the copy holds all of args here
  } else if (cap.payload_length() < ext) {
    log_malformed("WRITE: extensions of {} bytes exceed the request", ext);
    return fail(EINVAL);
  }
  const iovec args_iov{const_cast<char*>(copy.data()), copy.size()};
  IovReader in(std::span<const iovec>(&args_iov, 1), usable);

  if (hdr.opcode == FUSE_INIT) {
    handle_init(req, in, hdr.unique);
    return;
  }
  if (!initialized()) {
    log_malformed("{} before INIT", opcode_name(hdr.opcode));
    return fail(EIO);
  }
  dispatch(req, hdr, in);
}

void FuseSession::dispatch(Request& req, const fuse_in_header& hdr, IovReader& in) {
  const Handler handler = hdr.opcode < kOps.size() ? kOps[hdr.opcode].handler : nullptr;
  if (handler == nullptr) {
    answer_error(req, hdr.unique, ENOSYS);
    return;
  }
  if (!options_.xattr && (hdr.opcode == FUSE_GETXATTR || hdr.opcode == FUSE_SETXATTR ||
                          hdr.opcode == FUSE_LISTXATTR || hdr.opcode == FUSE_REMOVEXATTR)) {
    answer_error(req, hdr.unique, ENOSYS);
    return;
  }
  if (hdr.opcode == FUSE_DESTROY) {
    // Requests after DESTROY (until a new INIT) are refused.
    initialized_.store(false, std::memory_order_release);
    destroyed_.store(true, std::memory_order_release);
  }
  Call call{*this, backend_, req, hdr, in, Context{hdr.uid, hdr.gid, hdr.pid, hdr.unique}};
  if (const int error = handler(call)) {
    answer_error(req, hdr.unique, error);
  }
}

void FuseSession::handle_init(Request& req, IovReader& in, uint64_t unique) {
  // The first four words are in every protocol version; the rest (flags2)
  // only when the kernel sets FUSE_INIT_EXT.
  fuse_init_in a{};
  const size_t have = std::min(in.remaining(), sizeof(a));
  if (have < offsetof(fuse_init_in, flags2)) {
    log_malformed("INIT argument of {} bytes is too short", have);
    answer_error(req, unique, EINVAL);
    return;
  }
  in.read(&a, have);
  uint64_t kernel_flags = a.flags;
  if ((a.flags & FUSE_INIT_EXT) && have >= offsetof(fuse_init_in, unused)) {
    kernel_flags |= uint64_t(a.flags2) << 32;
  }

  fuse_init_out out{};
  out.major = kMajor;
  out.minor = kMinor;
  if (a.major > kMajor) {
    // A newer kernel: answer with our version only; it retries with ours.
    log_.info("{}: kernel speaks FUSE {}.{}, offering {}.{}", options_.name, a.major, a.minor,
              kMajor, kMinor);
    send(req, out);
    return;
  }
  if (a.major < kMajor || a.minor < kMinMinor) {
    log_.error("{}: kernel speaks FUSE {}.{}; dpfs needs at least {}.{}", options_.name, a.major,
               a.minor, kMajor, kMinMinor);
    answer_error(req, unique, EPROTO);
    return;
  }

  const Capabilities caps = backend_.capabilities();
  uint64_t want = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_ATOMIC_O_TRUNC | FUSE_AUTO_INVAL_DATA |
                  FUSE_ASYNC_DIO | FUSE_PARALLEL_DIROPS | FUSE_MAX_PAGES | FUSE_CACHE_SYMLINKS |
                  FUSE_INIT_EXT | FUSE_SETXATTR_EXT;
  if (caps.readdirplus) want |= FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO;
  if (caps.posix_locks) want |= FUSE_POSIX_LOCKS;
  if (caps.flock_locks) want |= FUSE_FLOCK_LOCKS;
  if (options_.writeback_cache && caps.writeback_cache) want |= FUSE_WRITEBACK_CACHE;
  if (caps.killpriv_v2) want |= FUSE_HANDLE_KILLPRIV_V2;
  if (passthrough_ && caps.host_files) {
    if (!(kernel_flags & passthrough_abi::kInitPassthrough)) {
      log_.info(
          "{}: the kernel offers no FUSE passthrough (Linux >= 6.9 with "
          "CONFIG_FUSE_PASSTHROUGH has it); files are read and written by requests",
          options_.name);
    } else if (want & kernel_flags & FUSE_WRITEBACK_CACHE) {
      log_.info(
          "{}: no FUSE passthrough with the writeback cache on (the kernel takes one or "
          "the other)",
          options_.name);
    } else {
      want |= passthrough_abi::kInitPassthrough;
    }
  }
  const uint64_t flags = kernel_flags & want;

  uint32_t max_write = options_.max_write;
  if (caps.max_write != 0) max_write = std::max(kPageSize, std::min(max_write, caps.max_write));
  max_write -= max_write % kPageSize;
  uint32_t max_pages = max_write / kPageSize;
  if (!(flags & FUSE_MAX_PAGES)) {
    // Without MAX_PAGES the kernel sends at most 32 pages per request.
    max_pages = std::min<uint32_t>(max_pages, 32);
    max_write = std::min(max_write, max_pages * kPageSize);
  }

  {
    std::lock_guard lock(init_mu_);
    if (initialized()) log_.warn("{}: INIT again; renegotiating", options_.name);
    proto_minor_.store(a.minor, std::memory_order_relaxed);
    flags_.store(flags, std::memory_order_relaxed);
    max_write_.store(max_write, std::memory_order_relaxed);
    destroyed_.store(false, std::memory_order_release);
    initialized_.store(true, std::memory_order_release);
  }
  backend_.init();
  if (options_.on_init) options_.on_init(InitState{a.minor, max_write, flags});

  out.minor = std::min(kMinor, a.minor);
  out.max_readahead = std::min(a.max_readahead, options_.max_readahead);
  out.flags = uint32_t(flags);
  out.flags2 = uint32_t(flags >> 32);
  out.max_background = uint16_t(std::min<uint32_t>(options_.max_background, 0xffff));
  out.congestion_threshold = uint16_t(out.max_background * 3 / 4);
  out.max_write = max_write;
  out.time_gran = 1;  // nanosecond timestamps
  out.max_pages = uint16_t(max_pages);
  // Backing files on a file system that is not itself stacked (overlayfs
  // over the shared directory is not); the mount then stacks one deep.
  if (flags & passthrough_abi::kInitPassthrough) passthrough_abi::set_max_stack_depth(&out, 1);

  log_.info(
      "{}: FUSE {}.{} session up: max_write={} max_pages={} max_readahead={} flags={:#x} "
      "(readdirplus={} posix_locks={} flock={} writeback_cache={} killpriv_v2={} "
      "passthrough={})",
      options_.name, a.major, out.minor, max_write, max_pages, out.max_readahead, flags,
      bool(flags & FUSE_DO_READDIRPLUS), bool(flags & FUSE_POSIX_LOCKS),
      bool(flags & FUSE_FLOCK_LOCKS), bool(flags & FUSE_WRITEBACK_CACHE),
      bool(flags & FUSE_HANDLE_KILLPRIV_V2), bool(flags & passthrough_abi::kInitPassthrough));
  // Older minors take a shorter reply (FUSE_COMPAT_22_INIT_OUT_SIZE before 7.23).
  const size_t size = a.minor < 23 ? FUSE_COMPAT_22_INIT_OUT_SIZE : sizeof(out);
  send(req, &out, size);
}

}  // namespace dpfs::fuse
