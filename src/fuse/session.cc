#include "fuse/session.h"

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

uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

// The session whose request or reply this thread is working on. Malformed
// requests are found deep in decoding, where only the request is at hand;
// log_malformed charges their lines to this session's limiter, so that one
// tenant's flood neither floods the operator's log nor silences the others.
thread_local FuseSession* t_logging_session = nullptr;

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

void split_timeout(double seconds, uint64_t* sec, uint32_t* nsec) {
  if (!(seconds > 0) || std::isnan(seconds)) {
    *sec = 0;
    *nsec = 0;
    return;
  }
  if (seconds > 1e15) seconds = 1e15;
  const double whole = std::floor(seconds);
  *sec = uint64_t(whole);
  *nsec = uint32_t(std::min(999999999.0, (seconds - whole) * 1e9));
}

void fill_attr(const struct stat& st, fuse_attr* a, const HostPolicy* policy) {
  *a = {};
  a->ino = st.st_ino;
  a->size = uint64_t(st.st_size);
  a->blocks = uint64_t(st.st_blocks);
  a->atime = uint64_t(st.st_atim.tv_sec);
  a->mtime = uint64_t(st.st_mtim.tv_sec);
  a->ctime = uint64_t(st.st_ctim.tv_sec);
  a->atimensec = uint32_t(st.st_atim.tv_nsec);
  a->mtimensec = uint32_t(st.st_mtim.tv_nsec);
  a->ctimensec = uint32_t(st.st_ctim.tv_nsec);
  a->mode = st.st_mode;
  a->nlink = uint32_t(st.st_nlink);
  a->uid = st.st_uid;
  a->gid = st.st_gid;
  if (policy != nullptr && policy->identity.translates_to_guest()) {
    a->uid = policy->identity.guest_uid(st.st_uid);
    a->gid = policy->identity.guest_gid(st.st_gid);
  }
  a->rdev = uint32_t(st.st_rdev);  // the kernel's 32-bit encoding, as MKNOD carried it
  a->blksize = st.st_blksize > 0 ? uint32_t(st.st_blksize) : kPageSize;
}

void fill_entry(const Entry& e, fuse_entry_out* out, const HostPolicy* policy) {
  *out = {};
  out->nodeid = e.ino;
  out->generation = e.generation;
  split_timeout(e.entry_timeout, &out->entry_valid, &out->entry_valid_nsec);
  split_timeout(e.attr_timeout, &out->attr_valid, &out->attr_valid_nsec);
  fill_attr(e.attr, &out->attr, policy);
}

const HostPolicy* policy_of(const Request* req) {
  return req->session_state.session->options().policy.get();
}

// Writes the reply header at the start of `out`. The payload, if any, is
// already in place after it.
size_t write_header(std::span<const iovec> out, uint64_t unique, int error, size_t payload) {
  fuse_out_header h{};
  h.len = uint32_t(sizeof(h) + payload);
  h.error = error;
  h.unique = unique;
  return iov_copy_in(out, &h, sizeof(h)) == sizeof(h) ? h.len : 0;
}

// Sends a reply whose payload (`len` bytes) the writer already holds.
void send_written(Request* req, int error) {
  Request::SessionState& st = req->session_state;
  const size_t payload = error != 0 ? 0 : st.writer.written() - sizeof(fuse_out_header);
  const size_t len = write_header(req->out, st.unique, error, payload);
  st.session->finish(*req, error);
  req->complete(len);
}

// Sends a reply carrying `payload`; if it does not fit the tenant's buffer,
// EIO instead (a well-behaved kernel always gives room for its own replies).
void send(Request* req, const void* payload, size_t len) {
  Request::SessionState& st = req->session_state;
  const LoggingSessionScope logging(st.session);  // a reply may come from outside handle()
  if (!st.writer.write(payload, len)) {
    log_malformed("{} reply of {} bytes does not fit the reply buffer", opcode_name(st.opcode),
                  len);
    send_written(req, -EIO);
    return;
  }
  send_written(req, 0);
}

template <typename T>
void send(Request* req, const T& obj) {
  send(req, &obj, sizeof(obj));
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
    const bool flock_unlock = a.release_flags & FUSE_RELEASE_FLOCK_UNLOCK;
    c.backend.release(c.ctx, c.hdr.nodeid, a.fh, a.flags, a.lock_owner, flock_unlock,
                      c.reply<StatusReply>());
  }
  return 0;
}

int do_fsync(Call& c) {
  fuse_fsync_in a;
  if (!c.arg(&a)) return c.short_args();
  const bool datasync = a.fsync_flags & FUSE_FSYNC_FDATASYNC;
  if (c.hdr.opcode == FUSE_FSYNCDIR) {
    c.backend.fsyncdir(c.ctx, c.hdr.nodeid, a.fh, datasync, c.reply<StatusReply>());
  } else {
    c.backend.fsync(c.ctx, c.hdr.nodeid, a.fh, datasync, c.reply<StatusReply>());
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
  const bool flock = a.lk_flags & FUSE_LK_FLOCK;
  c.backend.setlk(c.ctx, c.hdr.nodeid, a.fh, a.owner, lock, c.hdr.opcode == FUSE_SETLKW, flock,
                  c.reply<StatusReply>());
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
  const uint64_t len =
      std::min<uint64_t>({a.len, kMaxOffset - a.off_in, kMaxOffset - a.off_out, 0xfffff000u});
  c.backend.copy_file_range(c.ctx, c.hdr.nodeid, a.fh_in, a.off_in, a.nodeid_out, a.fh_out,
                            a.off_out, len, a.flags, c.reply<WriteReply>());
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
    : backend_(backend), options_(std::move(options)), log_(options_.name) {
  // max_write: whole pages, from one page up to what the kernel can take.
  uint32_t mw = std::clamp(options_.max_write, kPageSize, kMaxPagesLimit * kPageSize);
  mw -= mw % kPageSize;
  options_.max_write = mw;
  max_write_.store(mw, std::memory_order_relaxed);
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

void FuseSession::reset() {
  std::lock_guard lock(init_mu_);
  initialized_.store(false, std::memory_order_release);
  destroyed_.store(false, std::memory_order_release);
}

void FuseSession::finish(Request& req, int error) {
  Request::SessionState& st = req.session_state;
  st.latency_ns = now_ns() - st.started_ns;
  st.error = error < 0 ? -error : error;
  OpStats& s = stats_[st.opcode < kMaxOpcode ? st.opcode : 0];
  s.requests.fetch_add(1, std::memory_order_relaxed);
  if (error != 0) s.errors.fetch_add(1, std::memory_order_relaxed);
  s.total_ns.fetch_add(st.latency_ns, std::memory_order_relaxed);
}

void FuseSession::handle(Request& req) {
  const LoggingSessionScope logging(this);
  Request::SessionState& st = req.session_state;
  st.session = this;
  st.unique = 0;
  st.opcode = 0;
  st.started_ns = now_ns();
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
    send(&req, &out, sizeof(out));
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
  const uint64_t flags = kernel_flags & want;

  uint32_t max_write = options_.max_write;
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

  out.minor = std::min(kMinor, a.minor);
  out.max_readahead = std::min(a.max_readahead, options_.max_readahead);
  out.flags = uint32_t(flags);
  out.flags2 = uint32_t(flags >> 32);
  out.max_background = uint16_t(std::min<uint32_t>(options_.max_background, 0xffff));
  out.congestion_threshold = uint16_t(out.max_background * 3 / 4);
  out.max_write = max_write;
  out.time_gran = 1;  // nanosecond timestamps
  out.max_pages = uint16_t(max_pages);

  log_.info(
      "{}: FUSE {}.{} session up: max_write={} max_pages={} max_readahead={} flags={:#x} "
      "(readdirplus={} posix_locks={} flock={} writeback_cache={} killpriv_v2={})",
      options_.name, a.major, out.minor, max_write, max_pages, out.max_readahead, flags,
      bool(flags & FUSE_DO_READDIRPLUS), bool(flags & FUSE_POSIX_LOCKS),
      bool(flags & FUSE_FLOCK_LOCKS), bool(flags & FUSE_WRITEBACK_CACHE),
      bool(flags & FUSE_HANDLE_KILLPRIV_V2));
  // Older minors take a shorter reply (FUSE_COMPAT_22_INIT_OUT_SIZE before 7.23).
  const size_t size = a.minor < 23 ? FUSE_COMPAT_22_INIT_OUT_SIZE : sizeof(out);
  send(&req, &out, size);
}

}  // namespace dpfs::fuse

// --- Replies ------------------------------------------------------------------

namespace dpfs {

using fuse::Request;

Reply& Reply::operator=(Reply&& other) noexcept {
  if (this != &other) {
    if (req_ != nullptr) error(EIO);
    req_ = other.req_;
    other.req_ = nullptr;
  }
  return *this;
}

Reply::~Reply() {
  if (req_ != nullptr) {
    spdlog::error("backend dropped the reply to {} (unique {}); answering EIO",
                  fuse::opcode_name(req_->session_state.opcode), req_->session_state.unique);
    error(EIO);
  }
}

Request* Reply::take() {
  Request* req = req_;
  req_ = nullptr;
  if (req == nullptr) spdlog::error("backend answered a request twice; ignored");
  return req;
}

uint64_t Reply::unique() const { return req_ != nullptr ? req_->session_state.unique : 0; }

void Reply::error(int errno_value) {
  Request* req = take();
  if (req == nullptr) return;
  if (errno_value <= 0 || errno_value >= 4096) {
    spdlog::error("backend answered {} with invalid errno {}; answering EIO",
                  fuse::opcode_name(req->session_state.opcode), errno_value);
    errno_value = EIO;
  }
  fuse::send_written(req, -errno_value);
}

void StatusReply::ok() {
  if (Request* req = take()) fuse::send_written(req, 0);
}

void EntryReply::ok(const Entry& entry) {
  Request* req = take();
  if (req == nullptr) return;
  fuse_entry_out out;
  fuse::fill_entry(entry, &out, fuse::policy_of(req));
  fuse::send(req, out);
}

void AttrReply::ok(const struct stat& attr, double timeout) {
  Request* req = take();
  if (req == nullptr) return;
  fuse_attr_out out{};
  fuse::split_timeout(timeout, &out.attr_valid, &out.attr_valid_nsec);
  fuse::fill_attr(attr, &out.attr, fuse::policy_of(req));
  fuse::send(req, out);
}

void OpenReply::ok(uint64_t fh, uint32_t open_flags) {
  Request* req = take();
  if (req == nullptr) return;
  fuse_open_out out{};
  out.fh = fh;
  out.open_flags = open_flags;
  fuse::send(req, out);
}

void CreateReply::ok(const Entry& entry, uint64_t fh, uint32_t open_flags) {
  Request* req = take();
  if (req == nullptr) return;
  struct {
    fuse_entry_out entry;
    fuse_open_out open;
  } out{};
  fuse::fill_entry(entry, &out.entry, fuse::policy_of(req));
  out.open.fh = fh;
  out.open.open_flags = open_flags;
  fuse::send(req, out);
}

void ReadReply::ok(size_t bytes) {
  Request* req = take();
  if (req == nullptr) return;
  Request::SessionState& st = req->session_state;
  if (bytes > st.limit) {
    spdlog::error("backend read {} bytes into a {}-byte buffer; answering EIO", bytes, st.limit);
    fuse::send_written(req, -EIO);
    return;
  }
  st.writer.skip(bytes);  // the backend filled them through data_iov
  fuse::send_written(req, 0);
}

void WriteReply::ok(size_t bytes) {
  Request* req = take();
  if (req == nullptr) return;
  fuse_write_out out{};
  out.size = uint32_t(std::min<size_t>(bytes, UINT32_MAX));
  fuse::send(req, out);
}

void ReadlinkReply::ok(std::string_view target) {
  Request* req = take();
  if (req == nullptr) return;
  fuse::send(req, target.data(), target.size());
}

void XattrReply::ok(std::span<const std::byte> value) {
  Request* req = take();
  if (req == nullptr) return;
  const HostPolicy* policy = fuse::policy_of(req);
  thread_local std::string listed;
  if (policy != nullptr && req->session_state.opcode == FUSE_LISTXATTR) {
    // Only the names the tenant may use (HostPolicy::xattr_allowed).
    listed.clear();
    const std::string_view names(reinterpret_cast<const char*>(value.data()), value.size());
    for (size_t at = 0; at < names.size();) {
      size_t end = names.find('\0', at);
      if (end == std::string_view::npos) end = names.size();
      if (policy->xattr_allowed(names.substr(at, end - at))) {
        listed.append(names.substr(at, end - at));
        listed.push_back('\0');
      }
      at = end + 1;
    }
    value = std::as_bytes(std::span<const char>(listed.data(), listed.size()));
  }
  const uint32_t limit = req->session_state.limit;
  if (limit == 0) {  // a size probe
    fuse_getxattr_out out{};
    out.size = uint32_t(value.size());
    fuse::send(req, out);
  } else if (value.size() > limit) {
    fuse::send_written(req, -ERANGE);
  } else {
    fuse::send(req, value.data(), value.size());
  }
}

void StatfsReply::ok(const struct statvfs& st) {
  Request* req = take();
  if (req == nullptr) return;
  fuse_statfs_out out{};
  out.st.blocks = st.f_blocks;
  out.st.bfree = st.f_bfree;
  out.st.bavail = st.f_bavail;
  out.st.files = st.f_files;
  out.st.ffree = st.f_ffree;
  out.st.bsize = uint32_t(st.f_bsize);
  out.st.namelen = uint32_t(st.f_namemax);
  out.st.frsize = uint32_t(st.f_frsize);
  fuse::send(req, out);
}

void LockReply::ok(const Lock& lock) {
  Request* req = take();
  if (req == nullptr) return;
  fuse_lk_out out{};
  out.lk.start = lock.start;
  out.lk.end = lock.end;
  out.lk.type = lock.type;
  out.lk.pid = lock.pid;
  fuse::send(req, out);
}

void LseekReply::ok(uint64_t offset) {
  Request* req = take();
  if (req == nullptr) return;
  fuse_lseek_out out{};
  out.offset = offset;
  fuse::send(req, out);
}

bool DirReply::plus() const { return req_ != nullptr && req_->session_state.plus; }

namespace {

// Appends one dirent record (optionally preceded by an entry_out) if it fits
// within the listing's limit.
bool add_dirent(Request* req, const fuse_entry_out* entry, std::string_view name, uint64_t ino,
                uint32_t type, uint64_t next_offset) {
  if (req == nullptr || name.empty() || name.size() > NAME_MAX) return false;
  Request::SessionState& st = req->session_state;
  const size_t head = (entry ? sizeof(fuse_entry_out) : 0) + FUSE_NAME_OFFSET;
  const size_t record = FUSE_DIRENT_ALIGN(head + name.size());
  const size_t used = st.writer.written() - sizeof(fuse_out_header);
  if (used + record > st.limit || st.writer.remaining() < record) return false;
  if (entry) st.writer.write(*entry);
  fuse_dirent d{};
  d.ino = ino;
  d.off = next_offset;
  d.namelen = uint32_t(name.size());
  d.type = type;
  st.writer.write(&d, FUSE_NAME_OFFSET);
  st.writer.write(name.data(), name.size());
  static constexpr char kZeros[8] = {};
  st.writer.write(kZeros, record - head - name.size());
  return true;
}

}  // namespace

bool DirReply::add(std::string_view name, uint64_t ino, uint32_t type, uint64_t next_offset) {
  return add_dirent(req_, nullptr, name, ino, type, next_offset);
}

bool DirReply::add_plus(std::string_view name, const Entry& entry, uint64_t next_offset) {
  if (req_ == nullptr) return false;
  fuse_entry_out out;
  fuse::fill_entry(entry, &out, fuse::policy_of(req_));
  // d_ino is the inode number stat(2) shows (the kernel takes it from the
  // dirent, not from the node id): they differ for a backend whose node ids
  // are not the file's own inode numbers (nfs: the server's fileid; passthrough: its node ids are
  // its own).
  const uint64_t d_ino = entry.attr.st_ino != 0 ? entry.attr.st_ino : entry.ino;
  return add_dirent(req_, &out, name, d_ino, (entry.attr.st_mode & S_IFMT) >> 12, next_offset);
}

void DirReply::done() {
  if (Request* req = take()) fuse::send_written(req, 0);
}

// --- Backend defaults: every operation not implemented answers ENOSYS ---------

void Backend::lookup(const Context&, uint64_t, std::string_view, EntryReply r) { r.error(ENOSYS); }
void Backend::forget(uint64_t, uint64_t) {}
void Backend::getattr(const Context&, uint64_t, std::optional<uint64_t>, AttrReply r) {
  r.error(ENOSYS);
}
void Backend::setattr(const Context&, uint64_t, const SetAttr&, AttrReply r) { r.error(ENOSYS); }
void Backend::readlink(const Context&, uint64_t, ReadlinkReply r) { r.error(ENOSYS); }
void Backend::symlink(const Context&, uint64_t, std::string_view, std::string_view, EntryReply r) {
  r.error(ENOSYS);
}
void Backend::mknod(const Context&, uint64_t, std::string_view, uint32_t, uint32_t, uint32_t,
                    EntryReply r) {
  r.error(ENOSYS);
}
void Backend::mkdir(const Context&, uint64_t, std::string_view, uint32_t, uint32_t, EntryReply r) {
  r.error(ENOSYS);
}
void Backend::unlink(const Context&, uint64_t, std::string_view, StatusReply r) { r.error(ENOSYS); }
void Backend::rmdir(const Context&, uint64_t, std::string_view, StatusReply r) { r.error(ENOSYS); }
void Backend::rename(const Context&, uint64_t, std::string_view, uint64_t, std::string_view,
                     uint32_t, StatusReply r) {
  r.error(ENOSYS);
}
void Backend::link(const Context&, uint64_t, uint64_t, std::string_view, EntryReply r) {
  r.error(ENOSYS);
}
void Backend::open(const Context&, uint64_t, uint32_t, OpenReply r) { r.error(ENOSYS); }
void Backend::read(const Context&, uint64_t, uint64_t, uint64_t, uint32_t, std::span<const iovec>,
                   ReadReply r) {
  r.error(ENOSYS);
}
void Backend::write(const Context&, uint64_t, uint64_t, uint64_t, std::span<const iovec>, uint32_t,
                    WriteReply r) {
  r.error(ENOSYS);
}
void Backend::statfs(const Context&, uint64_t, StatfsReply r) { r.error(ENOSYS); }
void Backend::release(const Context&, uint64_t, uint64_t, uint32_t, uint64_t, bool, StatusReply r) {
  r.ok();
}
void Backend::fsync(const Context&, uint64_t, uint64_t, bool, StatusReply r) { r.error(ENOSYS); }
void Backend::setxattr(const Context&, uint64_t, std::string_view, std::span<const std::byte>,
                       uint32_t, StatusReply r) {
  r.error(ENOSYS);
}
void Backend::getxattr(const Context&, uint64_t, std::string_view, XattrReply r) {
  r.error(ENOSYS);
}
void Backend::listxattr(const Context&, uint64_t, XattrReply r) { r.error(ENOSYS); }
void Backend::removexattr(const Context&, uint64_t, std::string_view, StatusReply r) {
  r.error(ENOSYS);
}
void Backend::flush(const Context&, uint64_t, uint64_t, uint64_t, StatusReply r) {
  r.error(ENOSYS);
}
void Backend::opendir(const Context&, uint64_t, uint32_t, OpenReply r) { r.error(ENOSYS); }
void Backend::readdir(const Context&, uint64_t, uint64_t, uint64_t, DirReply r) { r.error(ENOSYS); }
void Backend::releasedir(const Context&, uint64_t, uint64_t, StatusReply r) { r.ok(); }
void Backend::fsyncdir(const Context&, uint64_t, uint64_t, bool, StatusReply r) { r.error(ENOSYS); }
void Backend::getlk(const Context&, uint64_t, uint64_t, uint64_t, const Lock&, LockReply r) {
  r.error(ENOSYS);
}
void Backend::setlk(const Context&, uint64_t, uint64_t, uint64_t, const Lock&, bool, bool,
                    StatusReply r) {
  r.error(ENOSYS);
}
void Backend::access(const Context&, uint64_t, uint32_t, StatusReply r) { r.error(ENOSYS); }
void Backend::create(const Context&, uint64_t, std::string_view, uint32_t, uint32_t, uint32_t,
                     CreateReply r) {
  r.error(ENOSYS);
}
void Backend::interrupt(uint64_t) {}
void Backend::fallocate(const Context&, uint64_t, uint64_t, uint32_t, uint64_t, uint64_t,
                        StatusReply r) {
  r.error(ENOSYS);
}
void Backend::lseek(const Context&, uint64_t, uint64_t, uint64_t, uint32_t, LseekReply r) {
  r.error(ENOSYS);
}
void Backend::copy_file_range(const Context&, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t,
                              uint64_t, uint64_t, uint64_t, WriteReply r) {
  r.error(ENOSYS);
}
void Backend::syncfs(const Context&, uint64_t, StatusReply r) { r.error(ENOSYS); }
void Backend::tmpfile(const Context&, uint64_t, uint32_t, uint32_t, uint32_t, CreateReply r) {
  r.error(ENOSYS);
}

}  // namespace dpfs
