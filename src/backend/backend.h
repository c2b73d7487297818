// The backend API: the file system operations dpfs serves, and the one
// boundary between dpfs and a backend (memfs, null, passthrough, nfs, remote,
// or one written outside this tree; docs/backend-guide.md walks through
// writing one).
//
// One method per file system operation, with typed arguments already decoded
// and validated by the protocol layer (names are non-empty, at most NAME_MAX
// bytes, without '/' or NUL). Every method is handed a reply object of the
// type the operation answers with; the backend must complete it exactly once,
// now or later (from an io_uring completion, an NFS reply, a lock being
// released), with ok(...) or error(errno). A reply destroyed unanswered
// answers EIO and is logged: the tenant never hangs on a forgotten request.
// Nothing here names the protocol that carried the request (FUSE, a virtio
// queue, a socket): a backend sees a Context, typed arguments and a Reply.
//
// Defaults: an operation a backend does not override answers ENOSYS (the
// kernel then stops asking for most of them), except those whose ENOSYS
// would break the tenant: forget and interrupt do nothing, release and
// releasedir answer ok.
//
// Lookup counts (the contract the kernel relies on): every successful reply
// carrying an Entry (lookup, mknod, mkdir, symlink, link, create, tmpfile and
// each entry of READDIRPLUS other than "." and "..") adds one to the inode's
// lookup count; forget(ino, n) removes n. An inode may be freed only when its
// lookup count is zero and it has no links. The root (kRootIno) is never
// forgotten. An error reply changes no count.
//
// Trust: inode numbers and file handles come from the tenant. A backend must
// check that an ino or fh it is handed is one it gave out and still lives,
// and answer ESTALE/EBADF otherwise -- never dereference it blindly.
//
// Threads: methods may be called concurrently from several workers, for the
// same inode too; a backend that keeps shared state synchronizes it itself.
// A reply may be completed on any thread.
//
// Compatibility, for backends built outside this tree: kBackendApiVersion
// changes whenever a method is added, removed or changes its signature or
// contract. Within one version, only comments and non-virtual helpers
// change. A new operation always arrives with a default that keeps a backend
// that does not know it correct (ENOSYS, or what the kernel expects), so an
// out-of-tree backend needs at most a rebuild against a new version, never a
// change, unless the version's notes (docs/backend-guide.md) say otherwise.
#pragma once

#include <linux/limits.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "backend/worker_hook.h"

namespace dpfs {

constexpr uint64_t kRootIno = 1;  // FUSE_ROOT_ID

// The backends' own wall; the session's is the first. A name a backend is
// handed must be one path component: non-empty, at most NAME_MAX bytes, no
// '/' and no NUL. Backends check again where a name meets the host or the
// store, so that neither check alone stands between a tenant and the host.
// Return 0 or the errno to answer.
inline int check_component(std::string_view name) {
  if (name.empty() || name.find('/') != std::string_view::npos ||
      name.find('\0') != std::string_view::npos) {
    return EINVAL;
  }
  return name.size() > NAME_MAX ? ENAMETOOLONG : 0;
}
// A name to create, remove or rename: a component, and neither "." nor
// "..", which the tenant's kernel resolves itself and never sends.
inline int check_new_component(std::string_view name) {
  if (name == "." || name == "..") return EINVAL;
  return check_component(name);
}
// An xattr name: non-empty, at most XATTR_NAME_MAX bytes, no NUL.
inline int check_xattr_key(std::string_view name) {
  if (name.empty() || name.size() > XATTR_NAME_MAX) return ERANGE;
  return name.find('\0') != std::string_view::npos ? EINVAL : 0;
}
// An xattr name in a namespace tmpfs keeps (user., trusted., security.;
// system.posix_acl_* never arrives: the kernel answers it when
// FUSE_POSIX_ACL is off), for backends that keep xattrs themselves: 0,
// EOPNOTSUPP for another namespace, EINVAL for a bare prefix.
inline int check_xattr_namespace(std::string_view name) {
  for (std::string_view prefix : {"user.", "trusted.", "security."}) {
    if (name.starts_with(prefix)) return name.size() > prefix.size() ? 0 : EINVAL;
  }
  return EOPNOTSUPP;
}

// Who asks: the credentials of the tenant process behind a request.
struct Context {
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t pid = 0;
  uint64_t unique = 0;  // the request id, as INTERRUPT names it
  // OPEN and CREATE with O_TRUNC by a caller without CAP_FSETID, when the
  // backend declared Capabilities::killpriv_v2: the truncation must also
  // clear set-user-ID (and set-group-ID on a group-executable file).
  // COPY_FILE_RANGE by such a caller (set by PolicyBackend): the copy
  // clears them on the destination, as a WRITE does.
  bool kill_suidgid = false;
};

// A name bound to an inode, as LOOKUP and the creating operations return it.
struct Entry {
  uint64_t ino = 0;
  uint64_t generation = 0;  // ino:generation is unique for the file system's life
  struct stat attr {};
  double entry_timeout = 0;  // seconds the kernel may cache the name
  double attr_timeout = 0;   // seconds the kernel may cache the attributes
};

// SETATTR: which fields to change (bits of `valid`) and their new values.
struct SetAttr {
  enum : uint32_t {
    kMode = 1u << 0,
    kUid = 1u << 1,
    kGid = 1u << 2,
    kSize = 1u << 3,
    kAtime = 1u << 4,
    kMtime = 1u << 5,
    kFh = 1u << 6,
    kAtimeNow = 1u << 7,  // with kAtime: atime already holds the current time
    kMtimeNow = 1u << 8,  // with kMtime: mtime already holds the current time
    kLockOwner = 1u << 9,
    kCtime = 1u << 10,
    kKillSuidgid = 1u << 11,
  };
  uint32_t valid = 0;
  uint32_t mode = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint64_t size = 0;
  timespec atime{};
  timespec mtime{};
  timespec ctime{};
  uint64_t fh = 0;
  uint64_t lock_owner = 0;
};

// A POSIX byte-range lock, as GETLK/SETLK carry it. `end` is inclusive;
// OFFSET_MAX (INT64_MAX) means "to the end of the file".
struct Lock {
  uint64_t start = 0;
  uint64_t end = 0;
  uint32_t type = 0;  // F_RDLCK, F_WRLCK, F_UNLCK
  uint32_t pid = 0;
};

// What a backend can do, consulted once at INIT to choose the features
// offered to the kernel.
struct Capabilities {
  bool posix_locks = false;  // getlk/setlk implemented
  bool flock_locks = false;  // setlk with flock semantics implemented
  bool readdirplus = true;
  bool writeback_cache = false;
  // The backend drops privileges itself, as the Linux VFS does, so the
  // kernel need not ask for security.capability before every WRITE
  // (FUSE_HANDLE_KILLPRIV_V2): set-user-ID and set-group-ID (the latter
  // only with group execute) go on WRITE with FUSE_WRITE_KILL_SUIDGID, on
  // SETATTR with SetAttr::kKillSuidgid, on OPEN/CREATE with
  // Context::kill_suidgid, and on every chown of a non-directory;
  // security.capability goes on every write, truncation and chown.
  bool killpriv_v2 = false;
  // The largest WRITE (and READ) the backend takes in one call; the session
  // offers the kernel no more. 0: no limit of its own (the session's
  // max_write).
  uint32_t max_write = 0;
  // OPEN and CREATE may name the handle's host file (OpenReply::ok's
  // host_fd): a regular file the backend keeps open until the handle's
  // RELEASE. A transport that can may then let its kernel read and write
  // that file itself (FUSE passthrough), so READ, WRITE and their checks
  // never reach the backend for that handle.
  bool host_files = false;
};

// ---------------------------------------------------------------------------
// Flags, as types rather than positional bools.

// FSYNC and FSYNCDIR: everything, or the data (and the metadata needed to
// read it back) only, as fdatasync(2).
enum class SyncMode { kAll, kDataOnly };
// SETLK answers at once (EAGAIN on a conflict); SETLKW waits.
enum class LockWait { kNoWait, kWait };
// fcntl(2) byte-range locks, or BSD flock(2) whole-file locks.
enum class LockFlavor { kPosix, kFlock };
// RELEASE of the last descriptor of a flock(2) holder: drop its flock too.
enum class ReleaseFlock { kKeep, kUnlock };

// COPY_FILE_RANGE: `len` bytes from (ino_in, fh_in) at off_in to
// (ino_out, fh_out) at off_out. flags: those of copy_file_range(2) (none
// are defined; the kernel passes 0).
struct CopyRange {
  uint64_t ino_in = 0;
  uint64_t fh_in = 0;
  uint64_t off_in = 0;
  uint64_t ino_out = 0;
  uint64_t fh_out = 0;
  uint64_t off_out = 0;
  uint64_t len = 0;
  uint64_t flags = 0;
};

// ---------------------------------------------------------------------------
// Replies. Move-only handles to one in-flight request. Completing a reply
// twice, or completing a moved-from reply, is a bug in the backend; it is
// logged and ignored.

// Where a reply goes: the other end of one in-flight request, implemented by
// the protocol layer that carried it (fuse::Request encodes each answer into
// the tenant's reply buffer). A backend neither implements nor calls it; it
// completes the Reply objects below. Exactly one answer_* (or dir_done) ends
// a request; dir_add* append to a listing before dir_done.
class ReplyTarget {
 public:
  virtual uint64_t request_id() const = 0;
  virtual const char* operation() const = 0;       // for logs: "LOOKUP"
  virtual void answer_error(int errno_value) = 0;  // 0 < errno_value < 4096
  virtual void answer_status() = 0;
  virtual void answer_entry(const Entry& entry) = 0;
  virtual void answer_attr(const struct stat& attr, double timeout) = 0;
  // host_fd: the handle's host file, or -1 (Capabilities::host_files).
  virtual void answer_open(uint64_t fh, uint32_t open_flags, int host_fd) = 0;
  virtual void answer_create(const Entry& entry, uint64_t fh, uint32_t open_flags, int host_fd) = 0;
  virtual void answer_read(size_t bytes) = 0;
  virtual void answer_write(size_t bytes) = 0;
  virtual void answer_readlink(std::string_view target) = 0;
  virtual void answer_xattr(std::span<const std::byte> value) = 0;
  virtual void answer_statfs(const struct statvfs& st) = 0;
  virtual void answer_lock(const Lock& lock) = 0;
  virtual void answer_lseek(uint64_t offset) = 0;
  virtual bool dir_plus() const = 0;
  virtual size_t dir_size() const = 0;
  virtual bool dir_add(std::string_view name, uint64_t ino, uint32_t type,
                       uint64_t next_offset) = 0;
  virtual bool dir_add_plus(std::string_view name, const Entry& entry, uint64_t next_offset) = 0;
  virtual void dir_done() = 0;

 protected:
  ~ReplyTarget() = default;
};

class Reply {
 public:
  Reply() = default;
  explicit Reply(ReplyTarget* target) : target_(target) {}
  Reply(Reply&& other) noexcept : target_(other.target_) { other.target_ = nullptr; }
  Reply& operator=(Reply&& other) noexcept;
  Reply(const Reply&) = delete;
  Reply& operator=(const Reply&) = delete;
  ~Reply();

  // Answers with -errno (errno > 0). A zero or negative value is a backend
  // bug and answers EIO.
  void error(int errno_value);
  bool pending() const { return target_ != nullptr; }
  // The request id (for matching an interrupt()); 0 once answered.
  uint64_t unique() const { return target_ != nullptr ? target_->request_id() : 0; }

 protected:
  ReplyTarget* take();  // hands the request to its answer, once
  ReplyTarget* target_ = nullptr;
};

// No payload: unlink, rmdir, rename, release, fsync, setxattr, flush, setlk...
class StatusReply : public Reply {
 public:
  using Reply::Reply;
  void ok();
};

// An Entry: adds one to entry.ino's lookup count once sent.
class EntryReply : public Reply {
 public:
  using Reply::Reply;
  void ok(const Entry& entry);
};

// Attributes, cacheable for `timeout` seconds.
class AttrReply : public Reply {
 public:
  using Reply::Reply;
  void ok(const struct stat& attr, double timeout);
};

class OpenReply : public Reply {
 public:
  using Reply::Reply;
  // open_flags: FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE, ... of <linux/fuse.h>.
  // host_fd: the handle's host file (borrowed; see Capabilities::host_files).
  void ok(uint64_t fh, uint32_t open_flags = 0, int host_fd = -1);
};

// An Entry (one lookup) and an open handle.
class CreateReply : public Reply {
 public:
  using Reply::Reply;
  void ok(const Entry& entry, uint64_t fh, uint32_t open_flags = 0, int host_fd = -1);
};

// READ: the backend has written `bytes` into the destination iovecs it was
// handed (fewer than asked means end of file).
class ReadReply : public Reply {
 public:
  using Reply::Reply;
  void ok(size_t bytes);
};

// WRITE and COPY_FILE_RANGE: bytes written.
class WriteReply : public Reply {
 public:
  using Reply::Reply;
  void ok(size_t bytes);
};

// READLINK: the target.
class ReadlinkReply : public Reply {
 public:
  using Reply::Reply;
  void ok(std::string_view target);
};

// GETXATTR (a value) and LISTXATTR (NUL-terminated names, concatenated).
// The backend passes the whole value; the protocol layer answers the size
// probe (size 0) or ERANGE when the tenant's buffer is too small.
class XattrReply : public Reply {
 public:
  using Reply::Reply;
  void ok(std::span<const std::byte> value);
  void ok(std::string_view value) {
    ok(std::as_bytes(std::span<const char>(value.data(), value.size())));
  }
};

class StatfsReply : public Reply {
 public:
  using Reply::Reply;
  void ok(const struct statvfs& st);
};

// GETLK: the first conflicting lock, or `lock` with type F_UNLCK if none.
class LockReply : public Reply {
 public:
  using Reply::Reply;
  void ok(const Lock& lock);
};

class LseekReply : public Reply {
 public:
  using Reply::Reply;
  void ok(uint64_t offset);
};

// READDIR and READDIRPLUS. Entries are encoded straight into the tenant's
// buffer: add() returns false when the next entry does not fit, and the
// backend stops there (and, for READDIRPLUS, must not count a lookup for an
// entry that was not added). `next_offset` is the cookie the kernel passes
// back to continue after this entry. Then done().
class DirReply : public Reply {
 public:
  using Reply::Reply;
  bool plus() const { return target_ != nullptr && target_->dir_plus(); }  // use add_plus
  // The bytes the tenant's listing may take, in the protocol's encoding:
  // for a backend that fetches listings in pages from elsewhere (remote),
  // to fetch about what fits.
  size_t size() const { return target_ != nullptr ? target_->dir_size() : 0; }
  // type: DT_* of <dirent.h> (or the S_IFMT bits >> 12).
  bool add(std::string_view name, uint64_t ino, uint32_t type, uint64_t next_offset) {
    return target_ != nullptr && target_->dir_add(name, ino, type, next_offset);
  }
  // Adds one to entry.ino's lookup count when it returns true.
  bool add_plus(std::string_view name, const Entry& entry, uint64_t next_offset) {
    return target_ != nullptr && target_->dir_add_plus(name, entry, next_offset);
  }
  void done();
};

// ---------------------------------------------------------------------------

// See "Compatibility" at the top of this file.
constexpr int kBackendApiVersion = 2;

class Backend {
 public:
  virtual ~Backend() = default;

  // Consulted at each INIT to choose the features offered to the kernel.
  virtual Capabilities capabilities() const { return {}; }
  // The start and end of a session (a mount, a device reset); a session may
  // start again after it ended. No operation runs concurrently with these.
  virtual void init() {}
  virtual void destroy() {}
  // A successor process took the session over (docs/restart.md): the
  // kernel holds node ids and file handles a predecessor gave out. A
  // backend that can recognise them from themselves accepts them from now
  // on; the others answer ESTALE or EBADF for them, as for any stale one.
  virtual void resumed() {}

  // A transport's worker thread starting: what the backend keeps on it
  // (worker_hook.h), or nullptr (the default) when operations need no help
  // from the worker's loop. Called on that thread. The hook must not refer
  // to the backend: a transport's workers may end after it is destroyed.
  virtual std::unique_ptr<WorkerHook> attach_worker() { return nullptr; }
  // Lines for the operator's statistics (`dpfs stats`, SIGUSR1), if the
  // backend counts anything. Safe for concurrent use with operations.
  virtual std::vector<std::string> stats() const { return {}; }

  // --- Names ---------------------------------------------------------------
  // Each answers an Entry (one lookup added) or an errno: ENOENT, ENOTDIR,
  // EACCES, ENAMETOOLONG, ESTALE for a parent that is not a live directory
  // this backend gave out; the creators also EEXIST, ENOSPC, EDQUOT, EMLINK.

  // The name `name` in directory `parent`.
  virtual void lookup(const Context& ctx, uint64_t parent, std::string_view name, EntryReply reply);
  // No reply: drops `nlookup` lookups of `ino` (a count it never gave out
  // is the tenant's error: clamp, never underflow). Never for kRootIno.
  virtual void forget(uint64_t ino, uint64_t nlookup);
  virtual void symlink(const Context& ctx, uint64_t parent, std::string_view name,
                       std::string_view target, EntryReply reply);
  // mode carries the file type (S_IFREG, S_IFCHR, ...); umask already applied
  // by the kernel unless the session says otherwise (umask passed for ACLs).
  virtual void mknod(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
                     uint32_t rdev, uint32_t umask, EntryReply reply);
  virtual void mkdir(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
                     uint32_t umask, EntryReply reply);
  // A new name for `ino` (not a directory: EPERM) in `new_parent`.
  virtual void link(const Context& ctx, uint64_t ino, uint64_t new_parent,
                    std::string_view new_name, EntryReply reply);
  // Status: ok, or ENOENT, EISDIR (unlink), ENOTDIR, ENOTEMPTY (rmdir),
  // EBUSY, EACCES/EPERM (sticky directories). The inode lives on while it has
  // lookups or open handles.
  virtual void unlink(const Context& ctx, uint64_t parent, std::string_view name,
                      StatusReply reply);
  virtual void rmdir(const Context& ctx, uint64_t parent, std::string_view name, StatusReply reply);
  // flags: 0, RENAME_NOREPLACE (EEXIST), RENAME_EXCHANGE (ENOENT if either
  // is missing); RENAME_WHITEOUT or an unsupported flag: EINVAL. Moving a
  // directory under itself: EINVAL. Lookup counts move with the inodes.
  virtual void rename(const Context& ctx, uint64_t parent, std::string_view name,
                      uint64_t new_parent, std::string_view new_name, uint32_t flags,
                      StatusReply reply);

  // --- Attributes ----------------------------------------------------------

  // `fh` when the tenant asked through an open file (fstat).
  virtual void getattr(const Context& ctx, uint64_t ino, std::optional<uint64_t> fh,
                       AttrReply reply);
  // The fields `attr.valid` names, as chmod/chown/truncate/utimensat do
  // (EPERM, EACCES, EINVAL, EFBIG as they would); the new attributes.
  virtual void setattr(const Context& ctx, uint64_t ino, const SetAttr& attr, AttrReply reply);
  virtual void readlink(const Context& ctx, uint64_t ino, ReadlinkReply reply);
  // mask: R_OK | W_OK | X_OK, or F_OK (0). Status: ok or EACCES.
  virtual void access(const Context& ctx, uint64_t ino, uint32_t mask, StatusReply reply);
  virtual void statfs(const Context& ctx, uint64_t ino, StatfsReply reply);

  // --- Files ---------------------------------------------------------------
  // A handle (fh) is the backend's own number, valid from the OpenReply or
  // CreateReply that gave it until release; EBADF for any other.

  // flags: the open(2) flags (O_ACCMODE, O_TRUNC, O_APPEND, ...).
  virtual void open(const Context& ctx, uint64_t ino, uint32_t flags, OpenReply reply);
  // Opens a new file `name` in `parent` (EEXIST with O_EXCL): one lookup and
  // one handle.
  virtual void create(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
                      uint32_t umask, uint32_t flags, CreateReply reply);
  // An unnamed file in directory `parent` (O_TMPFILE): one lookup and one
  // handle.
  virtual void tmpfile(const Context& ctx, uint64_t parent, uint32_t mode, uint32_t umask,
                       uint32_t flags, CreateReply reply);
  // Fills up to `size` bytes of `dst` (iov_length(dst) == size) from `offset`.
  // The destination may be the tenant's memory: write it, never read it back.
  virtual void read(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset, uint32_t size,
                    std::span<const iovec> dst, ReadReply reply);
  // Writes `src` (iov_length(src) bytes) at `offset`. The source may be the
  // tenant's memory, which it can rewrite meanwhile: read each byte once,
  // decide nothing from it. write_flags: FUSE_WRITE_* of <linux/fuse.h>
  // (FUSE_WRITE_KILL_SUIDGID: see Capabilities::killpriv_v2).
  virtual void write(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset,
                     std::span<const iovec> src, uint32_t write_flags, WriteReply reply);
  // close(2) of one descriptor of the handle: lock_owner's POSIX locks go,
  // and an error answered here (a deferred write's) is what close returns.
  virtual void flush(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t lock_owner,
                     StatusReply reply);
  // The handle's last reference is gone: free it. `flags` are its open
  // flags. Default: ok (nothing kept).
  virtual void release(const Context& ctx, uint64_t ino, uint64_t fh, uint32_t flags,
                       uint64_t lock_owner, ReleaseFlock flock, StatusReply reply);
  virtual void fsync(const Context& ctx, uint64_t ino, uint64_t fh, SyncMode mode,
                     StatusReply reply);
  // mode: FALLOC_FL_* of <linux/falloc.h> (EOPNOTSUPP for one not supported).
  virtual void fallocate(const Context& ctx, uint64_t ino, uint64_t fh, uint32_t mode,
                         uint64_t offset, uint64_t length, StatusReply reply);
  // whence: SEEK_DATA or SEEK_HOLE (the kernel handles SEEK_SET/CUR/END);
  // ENXIO past the end.
  virtual void lseek(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset,
                     uint32_t whence, LseekReply reply);
  // Bytes copied, which may be fewer than asked.
  virtual void copy_file_range(const Context& ctx, const CopyRange& range, WriteReply reply);

  // --- Directories ---------------------------------------------------------

  virtual void opendir(const Context& ctx, uint64_t ino, uint32_t flags, OpenReply reply);
  // `offset` is 0 or a next_offset this backend gave in an earlier DirReply
  // on this handle; entries added or removed meanwhile may or may not show,
  // but none shows twice and none present throughout is missed.
  virtual void readdir(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset,
                       DirReply reply);
  // Default: ok (nothing kept).
  virtual void releasedir(const Context& ctx, uint64_t ino, uint64_t fh, StatusReply reply);
  virtual void fsyncdir(const Context& ctx, uint64_t ino, uint64_t fh, SyncMode mode,
                        StatusReply reply);

  // --- Extended attributes -------------------------------------------------
  // ENODATA for a missing name, ENOTSUP for a namespace not kept.

  // flags: XATTR_CREATE (EEXIST) / XATTR_REPLACE (ENODATA).
  virtual void setxattr(const Context& ctx, uint64_t ino, std::string_view name,
                        std::span<const std::byte> value, uint32_t flags, StatusReply reply);
  virtual void getxattr(const Context& ctx, uint64_t ino, std::string_view name, XattrReply reply);
  virtual void listxattr(const Context& ctx, uint64_t ino, XattrReply reply);
  virtual void removexattr(const Context& ctx, uint64_t ino, std::string_view name,
                           StatusReply reply);

  // --- Locks (only if capabilities() offers them) ---------------------------
  // owner: the lock owner the kernel names (one per open file description
  // or process); distinct owners conflict, one owner's locks merge.

  virtual void getlk(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t owner,
                     const Lock& lock, LockReply reply);
  // kNoWait: ok or EAGAIN. kWait: keep the reply, without blocking the
  // calling worker, and answer when the lock is granted (or EINTR on
  // interrupt(), EDEADLK on a deadlock the backend detects).
  virtual void setlk(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t owner,
                     const Lock& lock, LockWait wait, LockFlavor flavor, StatusReply reply);
  // The tenant gave up waiting for request `unique` (Reply::unique()): answer
  // it early (EINTR) if it is still waiting, otherwise ignore. No reply.
  virtual void interrupt(uint64_t unique);

  // --- The file system -----------------------------------------------------

  virtual void syncfs(const Context& ctx, uint64_t ino, StatusReply reply);
};

}  // namespace dpfs
