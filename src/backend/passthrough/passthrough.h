// passthrough: a directory of this host served to the tenant.
//
// Every operation is the host file system's own, done on the host file the
// tenant names, with the host's semantics (xattrs, fallocate, SEEK_DATA and
// SEEK_HOLE, copy_file_range, statfs, O_TMPFILE...). READ, WRITE, FSYNC and
// FALLOCATE go through io_uring, straight between the host file and the
// tenant's buffers (see uring.h); the rest are plain system calls.
//
// Confinement: the tenant never reaches outside the directory.
//   - Inodes are held by O_PATH descriptors and file handles (inode_table.h);
//     every name the tenant sends is one component (the session refuses '/'),
//     resolved relative to its parent's descriptor with openat2
//     RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
//     RESOLVE_NO_XDEV: no symlink is followed on the host, no ".." climbs,
//     no mount point inside the directory is crossed. "." and ".." are
//     answered from the table ("..", at the root, is the root).
//   - Operations on an inode itself use its descriptor (AT_EMPTY_PATH) or a
//     reopen of that very inode by handle; none goes through a path that a
//     rename could swap for a symlink between check and use.
//   - Only regular files and directories are ever opened on the host:
//     device nodes, FIFOs and sockets are looked up (O_PATH) but never opened.
//   - Files are created with the tenant's uid/gid as the file system uid/gid
//     of the worker thread (setfsuid/setfsgid, as virtiofsd does), so the host
//     checks the tenant's rights on the parent too, whatever the tenant's
//     kernel did; optionally squashed to one uid/gid.
//   - read_only: everything that would change the directory answers EROFS.
//
// Byte-range and flock locks are kept by dpfs (memfs's lock table), not taken
// on the host: tenants see POSIX semantics among themselves; host processes
// do not see them.
//
// Safe for concurrent use by any number of workers.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "backend/backend.h"
#include "backend/lock_table.h"
#include "backend/passthrough/inode_table.h"
#include "backend/passthrough/uring.h"
#include "util/thread_annotations.h"

namespace dpfs {

// virtiofsd's cache modes.
enum class CachePolicy {
  kNone,    // FOPEN_DIRECT_IO, entry and attr timeouts 0: the host may change files any time
  kAuto,    // the configured timeouts; page cache dropped on open
  kAlways,  // FOPEN_KEEP_CACHE, long timeouts: only the tenant changes the files
};

// Whether READ, WRITE, FSYNC and FALLOCATE go through io_uring.
enum class UringMode {
  kAuto,    // io_uring, unless the directory is on tmpfs: io_uring cannot
            // complete tmpfs reads inline and hands each to an io-wq thread,
            // which costs more than the system call (measured: a third of the
            // IOPS at depth 1)
  kOn,      // io_uring for what would wait; what needs no wait is done at once
  kAlways,  // every READ and WRITE through the ring, even what needs no wait
  kOff,
};

struct PassthroughOptions {
  std::string root;  // the directory to serve
  bool read_only = false;
  CachePolicy cache = CachePolicy::kAuto;
  double entry_timeout = 1.0;  // kAuto's timeouts
  double attr_timeout = 1.0;
  bool writeback = false;  // the kernel caches writes (fuse.writeback_cache)
  size_t max_fds = 8192;   // O_PATH descriptors cached, and files open at once
  // This device's share of the process's descriptors: open files and cached
  // O_PATH descriptors together (util/fd_budget.h). Spent: cached ones are
  // evicted, then EMFILE. 0: no budget.
  size_t fd_budget = 0;
  // With io_uring (but kAlways): a READ of data in the page cache, and a
  // WRITE that needs no wait, are done at once (RWF_NOWAIT), not through
  // the ring; only what would wait for the disk goes through it.
  UringMode io_uring = UringMode::kAuto;
  // Tenant credentials replaced by these on the host (files created, access
  // checks) when set.
  std::optional<uint32_t> squash_uid;
  std::optional<uint32_t> squash_gid;
};

class Passthrough final : public Backend {
 public:
  // Throws std::runtime_error (one line for the operator) when `root` is not
  // a directory it can open.
  explicit Passthrough(PassthroughOptions options);
  ~Passthrough() override;
  Passthrough(const Passthrough&) = delete;
  Passthrough& operator=(const Passthrough&) = delete;

  Capabilities capabilities() const override;
  void destroy() override;
  // The worker's io_uring ring, submitted once per batch (uring.h).
  std::unique_ptr<WorkerHook> attach_worker() override { return data_.attach_worker(); }
  std::vector<std::string> stats() const override { return data_.stats(); }

  void lookup(const Context& ctx, uint64_t parent, std::string_view name,
              EntryReply reply) override;
  void forget(uint64_t ino, uint64_t nlookup) override;
  void getattr(const Context& ctx, uint64_t ino, std::optional<uint64_t> fh,
               AttrReply reply) override;
  void setattr(const Context& ctx, uint64_t ino, const SetAttr& attr, AttrReply reply) override;
  void readlink(const Context& ctx, uint64_t ino, ReadlinkReply reply) override;
  void symlink(const Context& ctx, uint64_t parent, std::string_view name, std::string_view target,
               EntryReply reply) override;
  void mknod(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
             uint32_t rdev, uint32_t umask, EntryReply reply) override;
  void mkdir(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
             uint32_t umask, EntryReply reply) override;
  void unlink(const Context& ctx, uint64_t parent, std::string_view name,
              StatusReply reply) override;
  void rmdir(const Context& ctx, uint64_t parent, std::string_view name,
             StatusReply reply) override;
  void rename(const Context& ctx, uint64_t parent, std::string_view name, uint64_t new_parent,
              std::string_view new_name, uint32_t flags, StatusReply reply) override;
  void link(const Context& ctx, uint64_t ino, uint64_t new_parent, std::string_view new_name,
            EntryReply reply) override;
  void open(const Context& ctx, uint64_t ino, uint32_t flags, OpenReply reply) override;
  void read(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset, uint32_t size,
            std::span<const iovec> dst, ReadReply reply) override;
  void write(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset,
             std::span<const iovec> src, uint32_t write_flags, WriteReply reply) override;
  void statfs(const Context& ctx, uint64_t ino, StatfsReply reply) override;
  void release(const Context& ctx, uint64_t ino, uint64_t fh, uint32_t flags, uint64_t lock_owner,
               ReleaseFlock flock, StatusReply reply) override;
  void fsync(const Context& ctx, uint64_t ino, uint64_t fh, SyncMode mode,
             StatusReply reply) override;
  void setxattr(const Context& ctx, uint64_t ino, std::string_view name,
                std::span<const std::byte> value, uint32_t flags, StatusReply reply) override;
  void getxattr(const Context& ctx, uint64_t ino, std::string_view name, XattrReply reply) override;
  void listxattr(const Context& ctx, uint64_t ino, XattrReply reply) override;
  void removexattr(const Context& ctx, uint64_t ino, std::string_view name,
                   StatusReply reply) override;
  void flush(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t lock_owner,
             StatusReply reply) override;
  void opendir(const Context& ctx, uint64_t ino, uint32_t flags, OpenReply reply) override;
  void readdir(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset,
               DirReply reply) override;
  void releasedir(const Context& ctx, uint64_t ino, uint64_t fh, StatusReply reply) override;
  void fsyncdir(const Context& ctx, uint64_t ino, uint64_t fh, SyncMode mode,
                StatusReply reply) override;
  void getlk(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t owner, const Lock& lock,
             LockReply reply) override;
  void setlk(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t owner, const Lock& lock,
             LockWait wait, LockFlavor flavor, StatusReply reply) override;
  void access(const Context& ctx, uint64_t ino, uint32_t mask, StatusReply reply) override;
  void create(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
              uint32_t umask, uint32_t flags, CreateReply reply) override;
  void interrupt(uint64_t unique) override;
  void fallocate(const Context& ctx, uint64_t ino, uint64_t fh, uint32_t mode, uint64_t offset,
                 uint64_t length, StatusReply reply) override;
  void lseek(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset, uint32_t whence,
             LseekReply reply) override;
  void copy_file_range(const Context& ctx, const CopyRange& range, WriteReply reply) override;
  void syncfs(const Context& ctx, uint64_t ino, StatusReply reply) override;
  void tmpfile(const Context& ctx, uint64_t parent, uint32_t mode, uint32_t umask, uint32_t flags,
               CreateReply reply) override;

  // For tests: O_PATH descriptors the inode table holds, and open files.
  size_t cached_fds() const { return inodes_.cached_fds(); }
  size_t open_files() const;

 private:
  struct OpenFile;
  struct OpenDir;

  // The entry for the host file `fd` (as add_lookup takes it), one lookup counted.
  int make_entry(util::UniqueFd fd, bool fd_is_path, Entry* entry);
  // Looks `name` up in directory `dir` and counts it: "." and ".." included.
  int lookup_name(uint64_t parent, const passthrough::PathRef& dir, std::string_view name,
                  Entry* entry);
  // Opens an existing regular file (or directory, for opendir) of inode `ino`.
  std::shared_ptr<OpenFile> find_file(uint64_t fh, uint64_t ino, int* error) const;
  // `fd`, if a transport's kernel may read and write it itself; else -1.
  static int kernel_io_fd(int fd, const struct stat* attr);
  // Keeps `fd` as an open file, paid by `charge` (InodeTable::take_fd).
  int add_file(util::UniqueFd fd, uint64_t ino, bool dir, util::FdCharge charge, uint64_t* fh);
  // open(2) flags as the host gets them: the tenant's, minus what must not
  // reach the host (O_CREAT, O_NOCTTY, O_DIRECT...), plus O_CLOEXEC|O_NOFOLLOW.
  int host_open_flags(uint32_t flags) const;
  uint32_t open_reply_flags() const;
  double entry_timeout() const;
  double attr_timeout() const;
  // The credentials a created file gets: the tenant's or the squashed ones.
  uint32_t host_uid(const Context& ctx) const;
  uint32_t host_gid(const Context& ctx) const;
  // The parent directory's descriptor for a creating/removing operation, or
  // nullptr and *error (EROFS in read-only mode, ENOTDIR, ESTALE).
  passthrough::PathRef dir_for_change(uint64_t parent, int* error);
  void reply_created(int error, Entry* entry, EntryReply& reply);

  const PassthroughOptions options_;
  util::FdBudget fd_budget_;  // before inodes_, which pays from it
  passthrough::InodeTable inodes_;
  passthrough::DataPath data_;
  LockTable locks_;

  // The open files and directories, by handle, in shards: an operation on
  // one file takes its shard's lock only, never one every worker takes. A
  // SETLKW waiter is queued under its handle's shard lock, and release()
  // cancels the handle's waiters under it too, so a waiter never outlives
  // its handle.
  struct alignas(64) FileShard {
    mutable util::Mutex mu;
    std::unordered_map<uint64_t, std::shared_ptr<OpenFile>> files DPFS_GUARDED_BY(mu);
  };
  static constexpr size_t kFileShards = 16;
  FileShard& shard_of(uint64_t fh) const { return file_shards_[fh % kFileShards]; }
  mutable std::array<FileShard, kFileShards> file_shards_;
  std::atomic<size_t> open_files_{0};  // in every shard: bounded by options_.max_fds
  std::atomic<uint64_t> next_fh_{1};
};

}  // namespace dpfs
