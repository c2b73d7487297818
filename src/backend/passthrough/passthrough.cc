#include "backend/passthrough/passthrough.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <spdlog/spdlog.h>
#include <sys/fsuid.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "sandbox/proc_fd.h"

namespace dpfs {
namespace {

using passthrough::PathRef;
using util::UniqueFd;

// One component below a directory descriptor, and never through a symlink
// or a mount point: the tenant's names cannot lead outside the export.
constexpr uint64_t kResolve =
    RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;
constexpr double kAlwaysTimeout = 86400;  // cache=always: a day, as virtiofsd
constexpr size_t kXattrMax = 65536;       // XATTR_SIZE_MAX and XATTR_LIST_MAX

UniqueFd open_beneath(int dirfd, std::string_view name, uint64_t flags, uint64_t mode, int* error) {
  const std::string n(name);
  open_how how{};
  how.flags = flags | O_CLOEXEC | O_NOFOLLOW;
  how.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0;
  how.resolve = kResolve;
  UniqueFd fd(int(::syscall(SYS_openat2, dirfd, n.c_str(), &how, sizeof how)));
  if (!fd) *error = errno;
  return fd;
}

int stat_fd(int fd, struct stat* st) {
  return ::fstatat(fd, "", st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0 ? 0 : errno;
}

// The magic link of our own descriptor: for the operations that have no
// descriptor-relative form (chmod, xattrs). It leads to the inode the
// descriptor holds, never through a name a tenant could swap. Also inside
// the sandbox, which has no /proc of its own (sandbox/proc_fd.h).
std::string proc_path(int fd) { return sandbox::proc_fd_path(fd); }

// Per worker thread, once: a umask of its own set to 0 (the session applies
// the tenant's umask; the daemon's must not apply twice), and no
// supplementary groups (root's would otherwise count for the tenant while
// the thread works as the tenant's uid/gid). Raw system calls: glibc's
// setgroups changes every thread.
void prepare_thread() {
  thread_local bool prepared = false;
  if (prepared) return;
  prepared = true;
  if (::unshare(CLONE_FS) != 0) {
    spdlog::warn("passthrough: unshare(CLONE_FS): {}; the daemon's umask applies to new files",
                 std::strerror(errno));
  } else {
    ::umask(0);
  }
  if (::syscall(SYS_setgroups, 0, nullptr) != 0) {
    spdlog::warn("passthrough: setgroups: {}", std::strerror(errno));
  }
}

// The tenant's credentials as this thread's file system uid/gid, for the
// scope: the host then checks the tenant's rights and gives new files the
// tenant's ownership. Per thread (setfsuid is, unlike setuid).
class TenantCreds {
 public:
  TenantCreds(uint32_t uid, uint32_t gid) {
    prepare_thread();
    old_gid_ = ::setfsgid(gid);
    old_uid_ = ::setfsuid(uid);
  }
  ~TenantCreds() {
    ::setfsuid(old_uid_);
    ::setfsgid(old_gid_);
  }
  TenantCreds(const TenantCreds&) = delete;
  TenantCreds& operator=(const TenantCreds&) = delete;

 private:
  int old_uid_;
  int old_gid_;
};

bool is_dot(std::string_view name) { return name == "." || name == ".."; }

// FUSE_HANDLE_KILLPRIV_V2: what a write or truncation by the tenant's
// unprivileged process drops. The host kernel drops it for writers without
// CAP_FSETID, but dpfs writes as root: done here. Set-user-ID goes;
// set-group-ID only with group execute (without it, it is not a privilege).
// File capabilities the host drops itself on every write, truncation and
// chown, even root's. `fd` is an open descriptor of the file, or an O_PATH
// one (`is_path`).
int kill_setid(int fd, bool is_path) {
  struct stat st {};
  if (int e = stat_fd(fd, &st); e != 0) return e;
  mode_t mode = st.st_mode & 07777;
  mode &= ~mode_t(S_ISUID);
  if (mode & S_IXGRP) mode &= ~mode_t(S_ISGID);
  if (mode == (st.st_mode & 07777) || !S_ISREG(st.st_mode)) return 0;
  const int rc = is_path ? ::chmod(proc_path(fd).c_str(), mode) : ::fchmod(fd, mode);
  return rc == 0 ? 0 : errno;
}

// trusted.* is for CAP_SYS_ADMIN; the daemon has it, the tenant's process
// may not. A tenant's root counts as privileged, as in the tenant's own kernel.
bool hidden_xattr(const Context& ctx, std::string_view name) {
  return ctx.uid != 0 && name.starts_with("trusted.");
}

bool use_uring(const PassthroughOptions& options) {
  if (options.io_uring != UringMode::kAuto) return options.io_uring != UringMode::kOff;
  struct statfs st {};
  if (::statfs(options.root.c_str(), &st) == 0 && st.f_type == TMPFS_MAGIC) {
    spdlog::info(
        "passthrough: {} is on tmpfs: reads and writes use system calls (io_uring = on "
        "forces io_uring)",
        options.root);
    return false;
  }
  return true;
}

void raise_fd_limit(size_t want) {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur >= want) return;
  rlimit more{std::max<rlim_t>(want, lim.rlim_cur), std::max<rlim_t>(want, lim.rlim_max)};
  if (::setrlimit(RLIMIT_NOFILE, &more) != 0) {
    more.rlim_cur = lim.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &more);
    spdlog::warn("passthrough: descriptor limit {} is below the {} max_fds needs", lim.rlim_max,
                 want);
  }
}

}  // namespace

// An open file or directory of the tenant.
struct Passthrough::OpenFile {
  OpenFile(UniqueFd fd, uint64_t ino, bool dir, util::FdCharge charge)
      : fd(std::move(fd)), ino(ino), dir(dir), charge(std::move(charge)) {}
  const UniqueFd fd;
  const uint64_t ino;
  const bool dir;
  util::FdCharge charge;  // returned to the device's budget when the descriptor closes
  std::mutex mu;          // directories: one listing at a time (lseek + getdents)
};

Passthrough::Passthrough(PassthroughOptions options)
    : options_(std::move(options)),
      fd_budget_(options_.fd_budget),
      inodes_(
          [&] {
            UniqueFd root(::open(options_.root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
            if (!root) {
              throw std::runtime_error("passthrough: cannot open directory " + options_.root +
                                       ": " + std::strerror(errno));
            }
            return root;
          }(),
          options_.max_fds, &fd_budget_),
      data_(use_uring(options_), options_.io_uring != UringMode::kAlways) {
  if (!inodes_.has_handles()) {
    spdlog::warn(
        "passthrough: {} has no file handles (name_to_handle_at); every inode the tenant knows "
        "keeps a descriptor and max_fds does not bound them",
        options_.root);
  }
  // Cached O_PATH descriptors, open files, and some for everything else.
  raise_fd_limit(2 * options_.max_fds + 1024);
}

Passthrough::~Passthrough() {
  Completions done;
  locks_.clear(EIO, done);
}

Capabilities Passthrough::capabilities() const {
  Capabilities caps;
  caps.posix_locks = true;
  caps.flock_locks = true;
  caps.readdirplus = true;
  caps.writeback_cache = true;
  caps.killpriv_v2 = true;
  caps.host_files = true;  // every open regular file is a host descriptor of ours
  return caps;
}

void Passthrough::destroy() {
  // The kernel forgets every inode and closes every file when the session ends.
  Completions done;
  locks_.clear(EINTR, done);
  for (FileShard& shard : file_shards_) {
    util::MutexLock lock(shard.mu);
    open_files_.fetch_sub(shard.files.size(), std::memory_order_relaxed);
    shard.files.clear();
  }
  inodes_.forget_all();
}

size_t Passthrough::open_files() const { return open_files_.load(std::memory_order_relaxed); }

double Passthrough::entry_timeout() const {
  switch (options_.cache) {
    case CachePolicy::kNone:
      return 0;
    case CachePolicy::kAlways:
      return kAlwaysTimeout;
    default:
      return options_.entry_timeout;
  }
}

double Passthrough::attr_timeout() const {
  switch (options_.cache) {
    case CachePolicy::kNone:
      return 0;
    case CachePolicy::kAlways:
      return kAlwaysTimeout;
    default:
      return options_.attr_timeout;
  }
}

uint32_t Passthrough::host_uid(const Context& ctx) const {
  return options_.squash_uid.value_or(ctx.uid);
}
uint32_t Passthrough::host_gid(const Context& ctx) const {
  return options_.squash_gid.value_or(ctx.gid);
}

int Passthrough::make_entry(UniqueFd fd, bool fd_is_path, Entry* entry) {
  struct stat st {};
  if (int e = stat_fd(fd.get(), &st); e != 0) return e;
  int error = 0;
  const uint64_t ino = inodes_.add_lookup(std::move(fd), fd_is_path, st, &error);
  if (ino == 0) return error;
  entry->ino = ino;
  entry->generation = 0;  // node ids are never reused
  entry->attr = st;
  entry->entry_timeout = entry_timeout();
  entry->attr_timeout = attr_timeout();
  return 0;
}

int Passthrough::lookup_name(uint64_t parent, const PathRef& dir, std::string_view name,
                             Entry* entry) {
  if (dir->type() != S_IFDIR) return ENOTDIR;
  int error = 0;
  UniqueFd fd;
  if (name == "." || (name == ".." && parent == kRootIno)) {
    // ".." of the root is the root: nothing above the export exists.
    fd.reset(::openat(dir->get(), ".", O_PATH | O_DIRECTORY | O_CLOEXEC));
  } else if (name == "..") {
    // Beneath the root, the parent is inside the export too (directories
    // have one name, and the tenant cannot move one out) -- unless the host
    // moved the directory out. So only a parent the table holds (the kernel
    // holds the parents of what it knows) is answered.
    fd.reset(::openat(dir->get(), "..", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    struct stat st {};
    if (fd && (stat_fd(fd.get(), &st) != 0 || !inodes_.holds(st))) return EACCES;
  } else {
    fd = open_beneath(dir->get(), name, O_PATH, 0, &error);
    if (!fd) return error;
  }
  if (!fd) return errno;
  return make_entry(std::move(fd), true, entry);
}

void Passthrough::lookup(const Context&, uint64_t parent, std::string_view name, EntryReply reply) {
  if (int e = check_component(name); e != 0) return reply.error(e);
  int error = 0;
  PathRef dir = inodes_.get(parent, &error);
  if (!dir) return reply.error(error);
  Entry entry;
  if (int e = lookup_name(parent, dir, name, &entry); e != 0) return reply.error(e);
  reply.ok(entry);
}

void Passthrough::forget(uint64_t ino, uint64_t nlookup) { inodes_.forget(ino, nlookup); }

void Passthrough::getattr(const Context&, uint64_t ino, std::optional<uint64_t>, AttrReply reply) {
  int error = 0;
  PathRef path = inodes_.get(ino, &error);
  if (!path) return reply.error(error);
  struct stat st {};
  if (int e = stat_fd(path->get(), &st); e != 0) return reply.error(e);
  reply.ok(st, attr_timeout());
}

void Passthrough::setattr(const Context&, uint64_t ino, const SetAttr& attr, AttrReply reply) {
  if (options_.read_only) return reply.error(EROFS);
  int error = 0;
  PathRef path = inodes_.get(ino, &error);
  if (!path) return reply.error(error);
  std::shared_ptr<OpenFile> file;
  if (attr.valid & SetAttr::kFh) {
    file = find_file(attr.fh, ino, &error);
    if (!file) return reply.error(error);
  }
  const int e = [&]() -> int {
    // Owner first: a chown clears set-user-ID, and a mode in the same
    // request must win.
    if (attr.valid & (SetAttr::kUid | SetAttr::kGid)) {
      const uid_t uid = (attr.valid & SetAttr::kUid) ? attr.uid : uid_t(-1);
      const gid_t gid = (attr.valid & SetAttr::kGid) ? attr.gid : gid_t(-1);
      if (::fchownat(path->get(), "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) {
        return errno;
      }
    }
    if (attr.valid & SetAttr::kMode) {
      if (path->type() == S_IFLNK) return EOPNOTSUPP;
      const int rc = file ? ::fchmod(file->fd.get(), attr.mode & 07777)
                          : ::chmod(proc_path(path->get()).c_str(), attr.mode & 07777);
      if (rc != 0) return errno;
    }
    if (attr.valid & SetAttr::kSize) {
      if (path->type() == S_IFDIR) return EISDIR;
      if (path->type() != S_IFREG) return EINVAL;
      if (attr.size > uint64_t(INT64_MAX)) return EFBIG;
      UniqueFd reopened;
      int fd = file ? file->fd.get() : -1;
      if (fd < 0) {
        reopened = inodes_.reopen(ino, *path, O_WRONLY, &error);
        if (!reopened) return error;
        fd = reopened.get();
      }
      if (::ftruncate(fd, off_t(attr.size)) != 0) return errno;
    }
    if (attr.valid & (SetAttr::kAtime | SetAttr::kMtime)) {
      timespec times[2] = {{0, UTIME_OMIT}, {0, UTIME_OMIT}};
      if (attr.valid & SetAttr::kAtime) {
        times[0] = (attr.valid & SetAttr::kAtimeNow) ? timespec{0, UTIME_NOW} : attr.atime;
      }
      if (attr.valid & SetAttr::kMtime) {
        times[1] = (attr.valid & SetAttr::kMtimeNow) ? timespec{0, UTIME_NOW} : attr.mtime;
      }
      if (::utimensat(path->get(), "", times, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) {
        return errno;
      }
    }
    if ((attr.valid & SetAttr::kKillSuidgid) && !(attr.valid & SetAttr::kMode)) {
      return file ? kill_setid(file->fd.get(), false) : kill_setid(path->get(), true);
    }
    return 0;
  }();
  if (e != 0) return reply.error(e);
  struct stat st {};
  if (int s = stat_fd(path->get(), &st); s != 0) return reply.error(s);
  reply.ok(st, attr_timeout());
}

void Passthrough::readlink(const Context&, uint64_t ino, ReadlinkReply reply) {
  int error = 0;
  PathRef path = inodes_.get(ino, &error);
  if (!path) return reply.error(error);
  if (path->type() != S_IFLNK) return reply.error(EINVAL);
  char target[PATH_MAX + 1];
  const ssize_t n = ::readlinkat(path->get(), "", target, sizeof target);
  if (n < 0) return reply.error(errno);
  reply.ok(std::string_view(target, size_t(n)));
}

PathRef Passthrough::dir_for_change(uint64_t parent, int* error) {
  if (options_.read_only) {
    *error = EROFS;
    return nullptr;
  }
  PathRef dir = inodes_.get(parent, error);
  if (dir && dir->type() != S_IFDIR) {
    *error = ENOTDIR;
    return nullptr;
  }
  return dir;
}

void Passthrough::reply_created(int error, Entry* entry, EntryReply& reply) {
  if (error != 0) return reply.error(error);
  reply.ok(*entry);
}

void Passthrough::symlink(const Context& ctx, uint64_t parent, std::string_view name,
                          std::string_view target, EntryReply reply) {
  if (int e = check_new_component(name); e != 0) return reply.error(e);
  int error = 0;
  PathRef dir = dir_for_change(parent, &error);
  if (!dir) return reply.error(error);
  Entry entry;
  error = [&] {
    {
      TenantCreds creds(host_uid(ctx), host_gid(ctx));
      // The target is only stored: it is never followed on the host.
      if (::symlinkat(std::string(target).c_str(), dir->get(), std::string(name).c_str()) != 0) {
        return errno;
      }
    }
    return lookup_name(parent, dir, name, &entry);
  }();
  reply_created(error, &entry, reply);
}

void Passthrough::mknod(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
                        uint32_t rdev, uint32_t umask, EntryReply reply) {
  if (int e = check_new_component(name); e != 0) return reply.error(e);
  int error = 0;
  PathRef dir = dir_for_change(parent, &error);
  if (!dir) return reply.error(error);
  Entry entry;
  error = [&] {
    {
      TenantCreds creds(host_uid(ctx), host_gid(ctx));
      const mode_t m = (mode & S_IFMT) | (mode & 07777 & ~umask);
      if (::mknodat(dir->get(), std::string(name).c_str(), m, rdev) != 0) return errno;
    }
    return lookup_name(parent, dir, name, &entry);
  }();
  reply_created(error, &entry, reply);
}

void Passthrough::mkdir(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
                        uint32_t umask, EntryReply reply) {
  if (int e = check_new_component(name); e != 0) return reply.error(e);
  int error = 0;
  PathRef dir = dir_for_change(parent, &error);
  if (!dir) return reply.error(error);
  Entry entry;
  error = [&] {
    {
      TenantCreds creds(host_uid(ctx), host_gid(ctx));
      if (::mkdirat(dir->get(), std::string(name).c_str(), mode & 07777 & ~umask) != 0) {
        return errno;
      }
    }
    return lookup_name(parent, dir, name, &entry);
  }();
  reply_created(error, &entry, reply);
}

void Passthrough::unlink(const Context&, uint64_t parent, std::string_view name,
                         StatusReply reply) {
  if (int e = check_new_component(name); e != 0) return reply.error(e);
  int error = 0;
  PathRef dir = dir_for_change(parent, &error);
  if (!dir) return reply.error(error);
  if (::unlinkat(dir->get(), std::string(name).c_str(), 0) != 0) return reply.error(errno);
  reply.ok();
}

void Passthrough::rmdir(const Context&, uint64_t parent, std::string_view name, StatusReply reply) {
  if (int e = check_new_component(name); e != 0) return reply.error(e);
  int error = 0;
  PathRef dir = dir_for_change(parent, &error);
  if (!dir) return reply.error(error);
  if (::unlinkat(dir->get(), std::string(name).c_str(), AT_REMOVEDIR) != 0) {
    return reply.error(errno);
  }
  reply.ok();
}

void Passthrough::rename(const Context&, uint64_t parent, std::string_view name,
                         uint64_t new_parent, std::string_view new_name, uint32_t flags,
                         StatusReply reply) {
  if (int e = check_new_component(name); e != 0) return reply.error(e);
  if (int e = check_new_component(new_name); e != 0) return reply.error(e);
  if (flags & ~uint32_t(RENAME_NOREPLACE | RENAME_EXCHANGE)) return reply.error(EINVAL);
  int error = 0;
  PathRef from = dir_for_change(parent, &error);
  if (!from) return reply.error(error);
  PathRef to = dir_for_change(new_parent, &error);
  if (!to) return reply.error(error);
  if (::renameat2(from->get(), std::string(name).c_str(), to->get(), std::string(new_name).c_str(),
                  flags) != 0) {
    return reply.error(errno);
  }
  reply.ok();
}

void Passthrough::link(const Context&, uint64_t ino, uint64_t new_parent, std::string_view new_name,
                       EntryReply reply) {
  if (int e = check_new_component(new_name); e != 0) return reply.error(e);
  int error = 0;
  PathRef dir = dir_for_change(new_parent, &error);
  if (!dir) return reply.error(error);
  PathRef path = inodes_.get(ino, &error);
  if (!path) return reply.error(error);
  if (path->type() == S_IFDIR) return reply.error(EPERM);
  // The inode itself, by its descriptor: no name to resolve.
  if (::linkat(path->get(), "", dir->get(), std::string(new_name).c_str(), AT_EMPTY_PATH) != 0) {
    return reply.error(errno);
  }
  Entry entry;
  error = lookup_name(new_parent, dir, new_name, &entry);
  reply_created(error, &entry, reply);
}

// --- Open files -------------------------------------------------------------

int Passthrough::host_open_flags(uint32_t flags) const {
  int f = int(flags) & (O_ACCMODE | O_APPEND | O_TRUNC | O_SYNC | O_DSYNC | O_NONBLOCK);
  if (options_.writeback) {
    // The kernel reads around partial pages it caches, and appends itself.
    if ((f & O_ACCMODE) == O_WRONLY) f = (f & ~O_ACCMODE) | O_RDWR;
    f &= ~O_APPEND;
  }
  return f;
}

uint32_t Passthrough::open_reply_flags() const {
  switch (options_.cache) {
    case CachePolicy::kNone:
      return FOPEN_DIRECT_IO;
    case CachePolicy::kAlways:
      return FOPEN_KEEP_CACHE;
    default:
      return 0;
  }
}

// The host file a transport may let its kernel read and write itself
// (Capabilities::host_files): not a set-user-ID or set-group-ID one. The
// kernel writes such a file with the credentials of the process that
// registered it, not the writer's, so whether a write keeps those bits
// would not follow the writer's privileges (passthrough_abi.h); through
// requests, WRITE drops them as the writer's would. `attr`: the file's, if
// known.
int Passthrough::kernel_io_fd(int fd, const struct stat* attr) {
  struct stat st;
  if (attr == nullptr) {
    if (::fstat(fd, &st) != 0) return -1;
    attr = &st;
  }
  return (attr->st_mode & (S_ISUID | S_ISGID)) != 0 ? -1 : fd;
}

int Passthrough::add_file(UniqueFd fd, uint64_t ino, bool dir, util::FdCharge charge,
                          uint64_t* fh) {
  // Each open file is a host descriptor: bounded like the inode cache.
  if (open_files_.fetch_add(1, std::memory_order_relaxed) >= options_.max_fds) {
    open_files_.fetch_sub(1, std::memory_order_relaxed);
    return ENFILE;
  }
  *fh = next_fh_.fetch_add(1, std::memory_order_relaxed);
  auto file = std::make_shared<OpenFile>(std::move(fd), ino, dir, std::move(charge));
  FileShard& shard = shard_of(*fh);
  util::MutexLock lock(shard.mu);
  shard.files.emplace(*fh, std::move(file));
  return 0;
}

std::shared_ptr<Passthrough::OpenFile> Passthrough::find_file(uint64_t fh, uint64_t ino,
                                                              int* error) const {
  FileShard& shard = shard_of(fh);
  util::MutexLock lock(shard.mu);
  auto it = shard.files.find(fh);
  if (it == shard.files.end() || it->second->ino != ino) {
    *error = EBADF;
    return nullptr;
  }
  return it->second;
}

void Passthrough::open(const Context& ctx, uint64_t ino, uint32_t flags, OpenReply reply) {
  int error = 0;
  PathRef path = inodes_.get(ino, &error);
  if (!path) return reply.error(error);
  if (path->type() == S_IFDIR) return reply.error(EISDIR);
  // Device nodes, FIFOs and sockets are opened by the tenant's kernel, never here.
  if (path->type() != S_IFREG) return reply.error(ENXIO);
  const int host_flags = host_open_flags(flags);
  if (options_.read_only && ((host_flags & O_ACCMODE) != O_RDONLY || (host_flags & O_TRUNC))) {
    return reply.error(EROFS);
  }
  // Checked before anything happens on the host (O_TRUNC); add_file checks again.
  if (open_files() >= options_.max_fds) return reply.error(ENFILE);
  util::FdCharge charge;
  if (!inodes_.take_fd(&charge)) return reply.error(EMFILE);
  UniqueFd fd = inodes_.reopen(ino, *path, host_flags, &error);
  if (!fd) return reply.error(error);
  if (ctx.kill_suidgid && (host_flags & O_TRUNC)) {
    if (int e = kill_setid(fd.get(), false); e != 0) return reply.error(e);
  }
  const int host_fd = kernel_io_fd(fd.get(), nullptr);
  uint64_t fh = 0;
  if (int e = add_file(std::move(fd), ino, false, std::move(charge), &fh); e != 0) {
    return reply.error(e);
  }
  reply.ok(fh, open_reply_flags(), host_fd);
}

void Passthrough::create(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
                         uint32_t umask, uint32_t flags, CreateReply reply) {
  if (int e = check_new_component(name); e != 0) return reply.error(e);
  int error = 0;
  PathRef dir = dir_for_change(parent, &error);
  if (!dir) return reply.error(error);
  if (open_files() >= options_.max_fds) return reply.error(ENFILE);  // before creating
  util::FdCharge charge;
  if (!inodes_.take_fd(&charge)) return reply.error(EMFILE);
  const int f = host_open_flags(flags);
  // Always exclusive on the host: opening an existing name with O_CREAT
  // could open a FIFO or a device node. An existing name is then opened as
  // open() does, regular files only.
  UniqueFd fd;
  {
    TenantCreds creds(host_uid(ctx), host_gid(ctx));
    fd = open_beneath(dir->get(), name, uint64_t(f | O_CREAT | O_EXCL), mode & 07777 & ~umask,
                      &error);
  }
  Entry entry;
  if (fd) {
    UniqueFd twin(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0));
    if (!twin) return reply.error(errno);
    if (int e = make_entry(std::move(twin), false, &entry); e != 0) return reply.error(e);
  } else {
    if (error != EEXIST || (flags & O_EXCL)) return reply.error(error);
    if (int e = lookup_name(parent, dir, name, &entry); e != 0) return reply.error(e);
    const mode_t type = entry.attr.st_mode & S_IFMT;
    PathRef path = type == S_IFREG ? inodes_.get(entry.ino, &error) : nullptr;
    if (path) fd = inodes_.reopen(entry.ino, *path, f, &error);
    if (!fd) {
      inodes_.forget(entry.ino, 1);
      return reply.error(type == S_IFDIR ? EISDIR : type != S_IFREG ? ENXIO : error);
    }
    if (ctx.kill_suidgid && (f & O_TRUNC)) {
      if (int e = kill_setid(fd.get(), false); e != 0) {
        inodes_.forget(entry.ino, 1);
        return reply.error(e);
      }
    }
  }
  const int host_fd = kernel_io_fd(fd.get(), &entry.attr);
  uint64_t fh = 0;
  if (int e = add_file(std::move(fd), entry.ino, false, std::move(charge), &fh); e != 0) {
    inodes_.forget(entry.ino, 1);
    return reply.error(e);
  }
  reply.ok(entry, fh, open_reply_flags(), host_fd);
}

void Passthrough::tmpfile(const Context& ctx, uint64_t parent, uint32_t mode, uint32_t umask,
                          uint32_t flags, CreateReply reply) {
  int error = 0;
  PathRef dir = dir_for_change(parent, &error);
  if (!dir) return reply.error(error);
  if (open_files() >= options_.max_fds) return reply.error(ENFILE);
  util::FdCharge charge;
  if (!inodes_.take_fd(&charge)) return reply.error(EMFILE);
  UniqueFd fd;
  {
    TenantCreds creds(host_uid(ctx), host_gid(ctx));
    int f = host_open_flags(flags);
    if ((f & O_ACCMODE) == O_RDONLY) f |= O_RDWR;  // O_TMPFILE needs write access
    f |= O_TMPFILE | O_CLOEXEC | (int(flags) & O_EXCL);
    fd.reset(::openat(dir->get(), ".", f, mode & 07777 & ~umask));
    if (!fd) error = errno;
  }
  if (!fd) return reply.error(error);
  Entry entry;
  UniqueFd twin(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0));
  if (!twin) return reply.error(errno);
  if (int e = make_entry(std::move(twin), false, &entry); e != 0) return reply.error(e);
  const int host_fd = kernel_io_fd(fd.get(), &entry.attr);
  uint64_t fh = 0;
  if (int e = add_file(std::move(fd), entry.ino, false, std::move(charge), &fh); e != 0) {
    inodes_.forget(entry.ino, 1);
    return reply.error(e);
  }
  reply.ok(entry, fh, open_reply_flags(), host_fd);
}

void Passthrough::read(const Context&, uint64_t ino, uint64_t fh, uint64_t offset, uint32_t,
                       std::span<const iovec> dst, ReadReply reply) {
  int error = 0;
  std::shared_ptr<OpenFile> file = find_file(fh, ino, &error);
  if (!file) return reply.error(error);
  if (offset > uint64_t(INT64_MAX)) return reply.error(EINVAL);
  const int fd = file->fd.get();
  data_.read(fd, dst, offset, std::move(file), std::move(reply));
}

void Passthrough::write(const Context&, uint64_t ino, uint64_t fh, uint64_t offset,
                        std::span<const iovec> src, uint32_t write_flags, WriteReply reply) {
  if (options_.read_only) return reply.error(EROFS);
  int error = 0;
  std::shared_ptr<OpenFile> file = find_file(fh, ino, &error);
  if (!file) return reply.error(error);
  if (offset > uint64_t(INT64_MAX)) return reply.error(EINVAL);
  const int fd = file->fd.get();
  if (write_flags & FUSE_WRITE_KILL_SUIDGID) {
    if (int e = kill_setid(fd, false); e != 0) return reply.error(e);
  }
  data_.write(fd, src, offset, std::move(file), std::move(reply));
}

void Passthrough::fsync(const Context&, uint64_t ino, uint64_t fh, SyncMode mode,
                        StatusReply reply) {
  int error = 0;
  std::shared_ptr<OpenFile> file = find_file(fh, ino, &error);
  if (!file) return reply.error(error);
  const int fd = file->fd.get();
  data_.fsync(fd, mode, std::move(file), std::move(reply));
}

void Passthrough::fallocate(const Context&, uint64_t ino, uint64_t fh, uint32_t mode,
                            uint64_t offset, uint64_t length, StatusReply reply) {
  if (options_.read_only) return reply.error(EROFS);
  int error = 0;
  std::shared_ptr<OpenFile> file = find_file(fh, ino, &error);
  if (!file) return reply.error(error);
  if (offset > uint64_t(INT64_MAX) || length > uint64_t(INT64_MAX)) return reply.error(EINVAL);
  const int fd = file->fd.get();
  data_.fallocate(fd, mode, offset, length, std::move(file), std::move(reply));
}

void Passthrough::flush(const Context&, uint64_t ino, uint64_t fh, uint64_t lock_owner,
                        StatusReply reply) {
  int error = 0;
  if (!find_file(fh, ino, &error)) return reply.error(error);
  Completions done;
  // close(2) drops every POSIX lock the closing process holds on the file.
  locks_.release_owner(ino, lock_owner, LockFlavor::kPosix, done);
  reply.ok();
}

void Passthrough::release(const Context&, uint64_t ino, uint64_t fh, uint32_t, uint64_t lock_owner,
                          ReleaseFlock flock, StatusReply reply) {
  Completions done;
  {
    FileShard& shard = shard_of(fh);
    util::MutexLock lock(shard.mu);
    auto it = shard.files.find(fh);
    if (it == shard.files.end() || it->second->ino != ino) return reply.error(EBADF);
    // Operations in flight keep their own reference: the descriptor closes
    // after the last of them.
    shard.files.erase(it);
    open_files_.fetch_sub(1, std::memory_order_relaxed);
    if (flock == ReleaseFlock::kUnlock)
      locks_.release_owner(ino, lock_owner, LockFlavor::kFlock, done);
    locks_.cancel_handle(ino, fh, done);
  }
  reply.ok();
}

void Passthrough::lseek(const Context&, uint64_t ino, uint64_t fh, uint64_t offset, uint32_t whence,
                        LseekReply reply) {
  if (whence != SEEK_DATA && whence != SEEK_HOLE) return reply.error(EINVAL);
  if (offset > uint64_t(INT64_MAX)) return reply.error(ENXIO);
  int error = 0;
  std::shared_ptr<OpenFile> file = find_file(fh, ino, &error);
  if (!file) return reply.error(error);
  const off_t at = ::lseek(file->fd.get(), off_t(offset), int(whence));
  if (at < 0) return reply.error(errno);
  reply.ok(uint64_t(at));
}

void Passthrough::copy_file_range(const Context& ctx, const CopyRange& range, WriteReply reply) {
  if (range.flags != 0) return reply.error(EINVAL);
  if (options_.read_only) return reply.error(EROFS);
  if (range.off_in > uint64_t(INT64_MAX) || range.off_out > uint64_t(INT64_MAX)) {
    return reply.error(EINVAL);
  }
  int error = 0;
  std::shared_ptr<OpenFile> in = find_file(range.fh_in, range.ino_in, &error);
  if (!in) return reply.error(error);
  std::shared_ptr<OpenFile> out = find_file(range.fh_out, range.ino_out, &error);
  if (!out) return reply.error(error);
  // The host drops file capabilities itself; set-id bits are ours to drop
  // for a writer without CAP_FSETID (we copy as root).
  if (ctx.kill_suidgid) {
    if (int e = kill_setid(out->fd.get(), false); e != 0) return reply.error(e);
  }
  loff_t from = loff_t(range.off_in);
  loff_t to = loff_t(range.off_out);
  const ssize_t n = ::copy_file_range(in->fd.get(), &from, out->fd.get(), &to, range.len, 0);
  if (n < 0) return reply.error(errno);
  reply.ok(size_t(n));
}

// --- Directories ------------------------------------------------------------

void Passthrough::opendir(const Context&, uint64_t ino, uint32_t, OpenReply reply) {
  int error = 0;
  PathRef path = inodes_.get(ino, &error);
  if (!path) return reply.error(error);
  if (path->type() != S_IFDIR) return reply.error(ENOTDIR);
  util::FdCharge charge;
  if (!inodes_.take_fd(&charge)) return reply.error(EMFILE);
  UniqueFd fd = inodes_.reopen(ino, *path, O_RDONLY | O_DIRECTORY, &error);
  if (!fd) return reply.error(error);
  uint64_t fh = 0;
  if (int e = add_file(std::move(fd), ino, true, std::move(charge), &fh); e != 0) {
    return reply.error(e);
  }
  reply.ok(fh, options_.cache == CachePolicy::kAlways ? FOPEN_CACHE_DIR : 0);
}

void Passthrough::readdir(const Context&, uint64_t ino, uint64_t fh, uint64_t offset,
                          DirReply reply) {
  int error = 0;
  std::shared_ptr<OpenFile> dir = find_file(fh, ino, &error);
  if (!dir || !dir->dir) return reply.error(dir ? ENOTDIR : error);
  PathRef path = inodes_.get(ino, &error);
  if (!path) return reply.error(error);
  const bool plus = reply.plus();
  std::lock_guard lock(dir->mu);
  // The cookies are the host's d_off values: seek to where the kernel is.
  if (offset > uint64_t(INT64_MAX)) return reply.error(EINVAL);
  if (::lseek(dir->fd.get(), off_t(offset), SEEK_SET) < 0) return reply.error(errno);
  alignas(dirent64) char buf[16384];
  for (;;) {
    const long n = ::syscall(SYS_getdents64, dir->fd.get(), buf, sizeof buf);
    if (n < 0) return reply.error(errno);
    if (n == 0) break;
    for (long pos = 0; pos < n;) {
      const auto* d = reinterpret_cast<const dirent64*>(buf + pos);
      pos += d->d_reclen;
      const std::string_view name(d->d_name);
      const uint64_t next = uint64_t(d->d_off);
      if (!plus) {
        if (!reply.add(name, d->d_ino, d->d_type, next)) return reply.done();
        continue;
      }
      // An entry that cannot be looked up (gone meanwhile, a mount point)
      // is listed without attributes, as "." and ".." are: no lookup counted.
      Entry entry;
      const bool counted = !is_dot(name) && lookup_name(ino, path, name, &entry) == 0;
      if (!counted) {
        entry = Entry{};
        entry.attr.st_ino = d->d_ino;
        entry.attr.st_mode = mode_t(d->d_type) << 12;
      }
      if (!reply.add_plus(name, entry, next)) {
        if (counted) inodes_.forget(entry.ino, 1);
        return reply.done();
      }
    }
  }
  reply.done();
}

void Passthrough::releasedir(const Context&, uint64_t ino, uint64_t fh, StatusReply reply) {
  FileShard& shard = shard_of(fh);
  util::MutexLock lock(shard.mu);
  auto it = shard.files.find(fh);
  if (it == shard.files.end() || it->second->ino != ino || !it->second->dir) {
    return reply.error(EBADF);
  }
  shard.files.erase(it);
  open_files_.fetch_sub(1, std::memory_order_relaxed);
  reply.ok();
}

void Passthrough::fsyncdir(const Context&, uint64_t ino, uint64_t fh, SyncMode mode,
                           StatusReply reply) {
  int error = 0;
  std::shared_ptr<OpenFile> dir = find_file(fh, ino, &error);
  if (!dir) return reply.error(error);
  const int rc = mode == SyncMode::kDataOnly ? ::fdatasync(dir->fd.get()) : ::fsync(dir->fd.get());
  if (rc != 0) return reply.error(errno);
  reply.ok();
}

// --- The rest ---------------------------------------------------------------

void Passthrough::statfs(const Context&, uint64_t ino, StatfsReply reply) {
  int error = 0;
  PathRef path = inodes_.get(ino, &error);
  if (!path) return reply.error(error);
  struct statvfs st {};
  if (::fstatvfs(path->get(), &st) != 0) return reply.error(errno);
  reply.ok(st);
}

void Passthrough::access(const Context& ctx, uint64_t ino, uint32_t mask, StatusReply reply) {
  int error = 0;
  PathRef path = inodes_.get(ino, &error);
  if (!path) return reply.error(error);
  if ((mask & W_OK) && options_.read_only) return reply.error(EROFS);
  TenantCreds creds(host_uid(ctx), host_gid(ctx));
  if (::faccessat(path->get(), "", int(mask), AT_EMPTY_PATH | AT_EACCESS) != 0) {
    return reply.error(errno);
  }
  reply.ok();
}

void Passthrough::setxattr(const Context& ctx, uint64_t ino, std::string_view name,
                           std::span<const std::byte> value, uint32_t flags, StatusReply reply) {
  if (int e = check_xattr_key(name); e != 0) return reply.error(e);
  if (options_.read_only) return reply.error(EROFS);
  if (hidden_xattr(ctx, name)) return reply.error(EPERM);
  int error = 0;
  PathRef path = inodes_.get(ino, &error);
  if (!path) return reply.error(error);
  if (::setxattr(proc_path(path->get()).c_str(), std::string(name).c_str(), value.data(),
                 value.size(), int(flags)) != 0) {
    return reply.error(errno);
  }
  reply.ok();
}

void Passthrough::getxattr(const Context& ctx, uint64_t ino, std::string_view name,
                           XattrReply reply) {
  if (int e = check_xattr_key(name); e != 0) return reply.error(e);
  if (hidden_xattr(ctx, name)) return reply.error(ENODATA);
  int error = 0;
  PathRef path = inodes_.get(ino, &error);
  if (!path) return reply.error(error);
  std::vector<std::byte> value(kXattrMax);
  const ssize_t n = ::getxattr(proc_path(path->get()).c_str(), std::string(name).c_str(),
                               value.data(), value.size());
  if (n < 0) return reply.error(errno);
  reply.ok(std::span<const std::byte>(value.data(), size_t(n)));
}

void Passthrough::listxattr(const Context& ctx, uint64_t ino, XattrReply reply) {
  int error = 0;
  PathRef path = inodes_.get(ino, &error);
  if (!path) return reply.error(error);
  std::vector<char> names(kXattrMax);
  const ssize_t n = ::listxattr(proc_path(path->get()).c_str(), names.data(), names.size());
  if (n < 0) return reply.error(errno);
  // The list is NUL-terminated names; drop the ones the tenant may not see.
  size_t kept = 0;
  for (size_t at = 0; at < size_t(n);) {
    const std::string_view one(names.data() + at);
    const size_t len = std::min(one.size() + 1, size_t(n) - at);
    if (!hidden_xattr(ctx, one)) {
      std::memmove(names.data() + kept, names.data() + at, len);
      kept += len;
    }
    at += len;
  }
  reply.ok(std::string_view(names.data(), kept));
}

void Passthrough::removexattr(const Context& ctx, uint64_t ino, std::string_view name,
                              StatusReply reply) {
  if (int e = check_xattr_key(name); e != 0) return reply.error(e);
  if (options_.read_only) return reply.error(EROFS);
  if (hidden_xattr(ctx, name)) return reply.error(EPERM);
  int error = 0;
  PathRef path = inodes_.get(ino, &error);
  if (!path) return reply.error(error);
  if (::removexattr(proc_path(path->get()).c_str(), std::string(name).c_str()) != 0) {
    return reply.error(errno);
  }
  reply.ok();
}

void Passthrough::syncfs(const Context&, uint64_t, StatusReply reply) {
  int error = 0;
  UniqueFd fd = inodes_.reopen(kRootIno, *inodes_.root(), O_RDONLY | O_DIRECTORY, &error);
  if (!fd) return reply.error(error);
  if (::syncfs(fd.get()) != 0) return reply.error(errno);
  reply.ok();
}

// --- Locks ------------------------------------------------------------------

void Passthrough::getlk(const Context&, uint64_t ino, uint64_t fh, uint64_t owner, const Lock& lock,
                        LockReply reply) {
  int error = 0;
  if (!find_file(fh, ino, &error)) return reply.error(error);
  reply.ok(locks_.test(ino, owner, lock));
}

void Passthrough::setlk(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t owner,
                        const Lock& lock, LockWait wait, LockFlavor flavor, StatusReply reply) {
  Completions done;  // the answer (now or for a waiter: later), after the locks
  // Under the handle's shard lock, so that a waiter never outlives its handle: release()
  // removes the handle and cancels its waiters under it too.
  FileShard& shard = shard_of(fh);
  util::MutexLock guard(shard.mu);
  auto it = shard.files.find(fh);
  if (it == shard.files.end() || it->second->ino != ino) return reply.error(EBADF);
  locks_.set(ino, fh, owner, lock, wait, flavor, ctx.unique, std::move(reply), done);
}

void Passthrough::interrupt(uint64_t unique) {
  Completions done;
  locks_.interrupt(unique, done);
}

}  // namespace dpfs
