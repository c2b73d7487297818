// The inodes of a passthrough export: FUSE node ids bound to host files.
//
// Each inode the kernel knows (lookup count > 0) is held by a file handle
// (name_to_handle_at) and, while it is in use or recently used, by an O_PATH
// descriptor. At most `max_fds` such descriptors are cached: past that, one
// not used lately is closed and reopened from its handle (open_by_handle_at)
// the next time it is needed. Where the host file system has no file
// handles, every inode keeps its descriptor and the bound cannot hold (the
// backend warns once at start).
//
// Every descriptor the table caches is paid from the device's FdBudget (when
// it has one): to make room, cached descriptors that can come back are
// evicted first; when none can, the operation that needed one answers
// EMFILE (the tenant's share of the process's descriptors is spent).
//
// Eviction is CLOCK (second chance), not LRU: a use of a cached descriptor
// only marks its inode referenced, so get() moves nothing. A descriptor takes
// one of the `max_fds` places before it is cached; when none is free, a clock
// hand sweeps the shards, clearing the marks and evicting the first
// unmarked descriptor it meets (only inodes with a handle: theirs can come
// back). A descriptor cached by a lookup starts unmarked: a scan (find, ls
// -l) evicts its own descriptors before those of the files in use. The
// bound holds at every instant, not only between operations.
//
// Node ids are never reused (a 64-bit counter): an id the kernel still names
// is either alive or answers ESTALE. Two names of one host file (hard links)
// are one node id, found by the host's (st_dev, st_ino) and confirmed by the
// handle, so a host inode number reused after a delete is not mistaken for
// the old file.
//
// Safe for concurrent use, with no lock every operation takes: inodes live in
// kShards node shards (by node id), host ids in kShards host shards (by a hash
// of (st_dev, st_ino)), each with its own mutex; the count of cached
// descriptors is one atomic. get() (GETATTR, SETATTR, the parent of a
// LOOKUP, OPEN...) takes its inode's node shard lock only, and while the
// inode's descriptor is cached, only for a hash lookup and a mark.
//
// Lock order: a host shard before a node shard, at most one of each, and
// never a host shard while a node shard is held. add_lookup holds its host
// shard while it finds or adds the inode, so two lookups of one host file
// agree on its node id; forget drops the last lookup and erases the inode
// and its host id under both locks, so a lookup that finds the host id
// either counts on a live inode or finds none and makes a new id. Eviction
// takes one node shard at a time and runs with no other lock held (a place
// and a charge are taken before any lock); descriptors are closed after the
// locks.
#pragma once

#include <sys/stat.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

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

  // O_PATH descriptors held now, or about to be (the root included): never
  // more than max_fds where there are handles. For tests and stats.
  size_t cached_fds() const;
  size_t size() const;

  static constexpr unsigned kShardBits = 4;
  static constexpr size_t kShards = size_t(1) << kShardBits;

 private:
  using HostId = std::pair<dev_t, ino_t>;
  struct HostIdHash {
    size_t operator()(const HostId& id) const {
      // Fibonacci hashing: host inode numbers are often dense, and the top
      // bits choose the shard.
      return size_t((uint64_t(id.second) ^ (uint64_t(id.first) << 40)) * 0x9e3779b97f4a7c15ull);
    }
  };
  static constexpr size_t kNotInClock = SIZE_MAX;
  // Guarded by its node shard's mutex (which the analysis cannot see from
  // here).
  struct Inode {
    uint64_t ino = 0;
    HostId host{};
    uint32_t type = 0;
    uint64_t lookups = 0;
    std::string handle;               // struct file_handle bytes; empty without handles
    PathRef fd;                       // null when evicted; holds one of the max_fds places
    bool referenced = false;          // used since the clock hand last passed
    size_t clock_slot = kNotInClock;  // in the shard's clock: fd set and a handle
  };
  struct alignas(64) NodeShard {
    mutable util::Mutex mu;
    // Element addresses are stable (unordered_map), so the clock holds them.
    std::unordered_map<uint64_t, Inode> inodes DPFS_GUARDED_BY(mu);
    std::vector<Inode*> clock DPFS_GUARDED_BY(mu);  // the inodes whose fd may be evicted
    size_t hand DPFS_GUARDED_BY(mu) = 0;            // next in clock to look at
  };
  struct alignas(64) HostShard {
    mutable util::Mutex mu;
    // The live inode of each host file; the root's too.
    std::unordered_map<HostId, uint64_t, HostIdHash> ids DPFS_GUARDED_BY(mu);
  };

  NodeShard& node_shard(uint64_t ino) const { return node_shards_[ino % kShards]; }
  HostShard& host_shard(const HostId& id) const {
    static_assert(sizeof(size_t) == 8);
    return host_shards_[HostIdHash{}(id) >> (64 - kShardBits)];
  }
  // The file handle of `fd` (empty when the host gives none).
  std::string handle_of(int fd) const;
  UniqueFd open_handle(const std::string& handle, int flags, int* error) const;
  // Takes one of the max_fds places, evicting a descriptor when none is
  // free. False when there is nothing to evict (every place is about to be
  // cached by another thread) or other threads took what a few evictions
  // freed. Always true without handles: there is no bound then.
  bool take_place();
  void give_place() { cached_.fetch_sub(1, std::memory_order_relaxed); }
  // A place and the budget's descriptor for caching a new descriptor.
  // False (nothing taken) when either is missing.
  bool take_place_and_fd(util::FdCharge* charge);
  // Counts one lookup of the host file `id` if the table holds it (with
  // this handle and type): its node id, and *evicted when it has no
  // descriptor. 0 when the table holds no such inode.
  uint64_t count_known(HostShard& hs, const HostId& id, const std::string& handle, uint32_t type,
                       bool* evicted) DPFS_REQUIRES(hs.mu);
  // Caches `fd` (paid from the budget; holding a place when `placed`) for
  // `ino` unless it has a descriptor already (another thread's reopen won):
  // returns the one `ino` has now. `fd` itself, uncached, when `ino` is
  // gone or there was no place. `used`: marked (a get), or not (a lookup).
  // REQUIRES: no node shard lock held.
  PathRef install(uint64_t ino, PathRef fd, bool placed, bool used);
  // Evicts one cached descriptor: the clock hand moves over the shards.
  // False when there is none to evict. REQUIRES: no node shard lock held.
  bool evict_one();
  // One visit of the hand to `shard`: it passes up to kSweep inodes
  // (every one and then the first again, when `all`), clearing their marks,
  // and evicts the first it finds unmarked. The evicted descriptor, to be
  // dropped after the lock, or null.
  PathRef sweep(NodeShard& shard, bool all) DPFS_REQUIRES(shard.mu);
  // Sets `fd` as `node`'s descriptor (its place taken), marked if `used`.
  void cache(NodeShard& shard, Inode& node, PathRef fd, bool used) DPFS_REQUIRES(shard.mu);
  // Takes `node`'s descriptor (and its place) away; the caller drops it
  // after the lock.
  PathRef uncache(NodeShard& shard, Inode& node) DPFS_REQUIRES(shard.mu);

  static constexpr size_t kSweep = 8;

  const size_t max_fds_;
  util::FdBudget* const budget_;
  const PathRef root_;
  UniqueFd mount_fd_;  // open_by_handle_at wants a real (not O_PATH) descriptor of the mount
  bool handles_ = false;

  mutable std::array<HostShard, kShards> host_shards_;
  mutable std::array<NodeShard, kShards> node_shards_;
  // Places taken: non-root inodes with a descriptor, plus descriptors about
  // to be cached. At most max_fds - 1 where there are handles.
  std::atomic<size_t> cached_{0};
  std::atomic<size_t> evictable_{0};   // inodes in the shards' clocks
  std::atomic<size_t> clock_hand_{0};  // the node shard the hand visits next
  std::atomic<uint64_t> next_ino_{2};
};

}  // namespace dpfs::passthrough
