// The inodes of a passthrough export: FUSE node ids bound to host files.
//
// Each inode the kernel knows (lookup count > 0) is held by a file handle
// (name_to_handle_at) and, while it is in use or recently used, by an O_PATH
// descriptor. At most `max_fds` such descriptors are cached: past that, the
// least recently used is closed and reopened from its handle
// (open_by_handle_at) the next time it is needed. Where the host file system
// has no file handles, every inode keeps its descriptor and the bound cannot
// hold (the backend warns once at start).
//
// Every descriptor the table caches is paid from the device's FdBudget (when
// it has one): to make room, cached descriptors that can come back are
// evicted first; when none can, the operation that needed one answers
// EMFILE (the tenant's share of the process's descriptors is spent).
//
// Node ids are never reused (a 64-bit counter): an id the kernel still names
// is either alive or answers ESTALE. Two names of one host file (hard links)
// are one node id, found by the host's (st_dev, st_ino) and confirmed by the
// handle, so a host inode number reused after a delete is not mistaken for
// the old file.
//
// Safe for concurrent use; one mutex guards the table.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>

#include "util/fd_budget.h"
#include "util/thread_annotations.h"
#include "util/unique_fd.h"

namespace dpfs::passthrough {

using util::UniqueFd;

// An O_PATH descriptor of one host file, shared by whoever uses it at the
// moment; closed when the table evicts it and the last user is done.
class PathFd {
 public:
  explicit PathFd(UniqueFd fd, uint32_t type, util::FdCharge charge = {})
      : fd_(std::move(fd)), type_(type), charge_(std::move(charge)) {}
  int get() const { return fd_.get(); }
  uint32_t type() const { return type_; }  // S_IFMT bits

 private:
  UniqueFd fd_;
  uint32_t type_;
  util::FdCharge charge_;  // returned to the budget when the descriptor closes
};
using PathRef = std::shared_ptr<const PathFd>;

class InodeTable {
 public:
  // `root` is an O_PATH descriptor of the export's root, which becomes
  // kRootIno and is never evicted or forgotten. Cached descriptors are paid
  // from `budget` (null: no budget), which must outlive the table.
  InodeTable(UniqueFd root, size_t max_fds, util::FdBudget* budget = nullptr);
  InodeTable(const InodeTable&) = delete;
  InodeTable& operator=(const InodeTable&) = delete;

  // Whether the host file system gives file handles (the fd bound holds).
  bool has_handles() const { return handles_; }
  const PathRef& root() const { return root_; }

  // Counts one lookup of the host file `fd` (an O_PATH descriptor, or any
  // descriptor of the file when `fd_is_path` is false: it is then reopened
  // O_PATH) whose attributes are `st`. Returns its node id, or 0 and *error.
  uint64_t add_lookup(UniqueFd fd, bool fd_is_path, const struct stat& st, int* error);
  // The descriptor of `ino`, reopened from its handle if it was evicted;
  // nullptr and *error (ESTALE for an unknown or dead inode) otherwise.
  PathRef get(uint64_t ino, int* error);
  // Reopens `ino` with `flags` (an open(2) of the very inode, no path): by
  // handle where there are handles, else by the descriptor's /proc/self/fd
  // entry. REQUIRES: the caller checked the type (never a device or FIFO).
  UniqueFd reopen(uint64_t ino, const PathFd& path, int flags, int* error);
  // Whether the host file `st` is an inode the table holds (the root included).
  bool holds(const struct stat& st) const;
  // Drops `n` lookups; frees the inode at zero.
  void forget(uint64_t ino, uint64_t n);
  // Forgets every inode but the root (the session ended).
  void forget_all();

  // Takes one descriptor from the budget for someone else's use (an open
  // file), evicting cached descriptors to make room. False when the budget
  // is spent (EMFILE). Always true without a budget.
  bool take_fd(util::FdCharge* charge);

  // O_PATH descriptors held now (the root included); for tests and stats.
  size_t cached_fds() const;
  size_t size() const;

 private:
  using HostId = std::pair<dev_t, ino_t>;
  struct Inode {
    uint64_t ino = 0;
    HostId host{};
    uint32_t type = 0;
    uint64_t lookups = 0;
    std::string handle;                 // struct file_handle bytes; empty without handles
    PathRef fd;                         // null when evicted
    std::list<uint64_t>::iterator lru;  // valid while fd is set and handle non-empty
  };

  // The file handle of `fd` (empty when the host gives none).
  std::string handle_of(int fd) const;
  UniqueFd open_handle(const std::string& handle, int flags, int* error) const;
  // Closes cached descriptors past the bound.
  void trim() DPFS_REQUIRES(mu_);
  // take_fd's work: evicts from the LRU end until the budget grants one
  // descriptor.
  bool take_fd_locked(util::FdCharge* charge) DPFS_REQUIRES(mu_);
  size_t cached_fds_locked() const DPFS_REQUIRES(mu_);
  void cache(Inode& node, PathRef fd) DPFS_REQUIRES(mu_);
  void drop(std::unordered_map<uint64_t, Inode>::iterator it) DPFS_REQUIRES(mu_);

  const size_t max_fds_;
  util::FdBudget* const budget_;
  const PathRef root_;
  UniqueFd mount_fd_;  // open_by_handle_at wants a real (not O_PATH) descriptor of the mount
  bool handles_ = false;

  mutable util::Mutex mu_;
  std::unordered_map<uint64_t, Inode> inodes_ DPFS_GUARDED_BY(mu_);
  std::map<HostId, uint64_t> by_host_ DPFS_GUARDED_BY(mu_);
  // Most recent first: inodes whose fd may be evicted.
  std::list<uint64_t> lru_ DPFS_GUARDED_BY(mu_);
  uint64_t next_ino_ DPFS_GUARDED_BY(mu_) = 2;
};

}  // namespace dpfs::passthrough
