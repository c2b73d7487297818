#include "backend/passthrough/inode_table.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string>

#include "backend/backend.h"
#include "sandbox/proc_fd.h"

namespace dpfs::passthrough {
namespace {

constexpr int kPathFlags = O_PATH | O_NOFOLLOW | O_CLOEXEC;

}  // namespace

InodeTable::InodeTable(UniqueFd root, size_t max_fds, util::FdBudget* budget)
    : max_fds_(max_fds),
      budget_(budget),
      root_(std::make_shared<PathFd>(std::move(root), S_IFDIR)) {
  // "." of an O_PATH directory descriptor: the directory itself, opened for
  // real (open_by_handle_at refuses O_PATH descriptors as its mount).
  mount_fd_.reset(::openat(root_->get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  struct stat st {};
  if (mount_fd_ && ::fstat(root_->get(), &st) == 0) {
    handles_ = !handle_of(root_->get()).empty();
    const HostId id{st.st_dev, st.st_ino};
    HostShard& hs = host_shard(id);
    util::MutexLock lock(hs.mu);
    hs.ids[id] = kRootIno;
  }
}

std::string InodeTable::handle_of(int fd) const {
  struct {
    file_handle fh;
    unsigned char bytes[MAX_HANDLE_SZ];
  } buf{};
  buf.fh.handle_bytes = MAX_HANDLE_SZ;
  int mount_id = 0;
  if (::name_to_handle_at(fd, "", &buf.fh, &mount_id, AT_EMPTY_PATH) != 0) return {};
  return std::string(reinterpret_cast<const char*>(&buf.fh),
                     sizeof(file_handle) + buf.fh.handle_bytes);
}

UniqueFd InodeTable::open_handle(const std::string& handle, int flags, int* error) const {
  // Copied out: file_handle must be aligned, the string's bytes need not be.
  struct {
    file_handle fh;
    unsigned char bytes[MAX_HANDLE_SZ];
  } buf{};
  handle.copy(reinterpret_cast<char*>(&buf), std::min(handle.size(), sizeof buf));
  UniqueFd fd(::open_by_handle_at(mount_fd_.get(), &buf.fh, flags));
  if (!fd) *error = errno == ENOENT ? ESTALE : errno;
  return fd;
}

uint64_t InodeTable::count_known(HostShard& hs, const HostId& id, const std::string& handle,
                                 uint32_t type, bool* evicted) {
  auto found = hs.ids.find(id);
  if (found == hs.ids.end()) return 0;
  if (found->second == kRootIno) return kRootIno;  // ".." at the top: no count
  NodeShard& ns = node_shard(found->second);
  util::MutexLock lock(ns.mu);
  // A host id in its shard names a live inode: forget erases both under
  // both locks.
  Inode& node = ns.inodes.at(found->second);
  // The same host inode number with another handle is a new file that took
  // the number of a deleted one: the old node id stays (ESTALE once used),
  // the name now leads to a new one.
  if (node.handle != handle || node.type != type) return 0;
  ++node.lookups;
  *evicted = !node.fd;
  return node.ino;
}

uint64_t InodeTable::add_lookup(UniqueFd fd, bool fd_is_path, const struct stat& st, int* error) {
  std::string handle = handles_ ? handle_of(fd.get()) : std::string();
  if (handles_ && handle.empty()) {
    *error = errno;
    return 0;
  }
  const uint32_t type = st.st_mode & S_IFMT;
  const HostId id{st.st_dev, st.st_ino};
  HostShard& hs = host_shard(id);
  bool evicted = false;
  uint64_t ino = 0;
  {
    util::MutexLock lock(hs.mu);
    ino = count_known(hs, id, handle, type, &evicted);
  }
  if (ino != 0) {
    // Evicted (so it has a handle): cached again if a place and the budget
    // allow, else reopened when next needed.
    util::FdCharge charge;
    if (evicted && fd_is_path && take_place_and_fd(&charge)) {
      install(ino, std::make_shared<PathFd>(std::move(fd), type, std::move(charge)),
              /*placed=*/true, /*used=*/false);
    }
    return ino;
  }

  // A new inode. Its descriptor, place and charge are readied outside the
  // host shard's lock (system calls, evictions); another lookup of the same
  // file may add it meanwhile, and then this one counts on that.
  if (!fd_is_path) {
    // A descriptor opened for I/O (create, tmpfile) is not kept: it would pin
    // the file's open mode. Its O_PATH twin comes from the handle.
    if (handles_) {
      fd = open_handle(handle, kPathFlags, error);
    } else {
      const std::string proc = sandbox::proc_fd_path(fd.get());
      fd.reset(::open(proc.c_str(), O_PATH | O_CLOEXEC));
      if (!fd) *error = errno;
    }
    if (!fd) return 0;
  }
  // With a handle the inode may start out evicted when no place is free or
  // the budget is spent (reopened when used); without one its descriptor is
  // the inode.
  util::FdCharge charge;
  const bool paid = take_place_and_fd(&charge);
  if (!paid && !handles_) {
    *error = EMFILE;
    return 0;
  }
  PathRef ref = paid ? std::make_shared<PathFd>(std::move(fd), type, std::move(charge)) : nullptr;
  {
    util::MutexLock lock(hs.mu);
    ino = count_known(hs, id, handle, type, &evicted);
    if (ino == 0) {
      ino = next_ino_.fetch_add(1, std::memory_order_relaxed);
      NodeShard& ns = node_shard(ino);
      util::MutexLock node_lock(ns.mu);
      Inode& node = ns.inodes[ino];
      node.ino = ino;
      node.type = type;
      node.lookups = 1;
      node.handle = std::move(handle);
      node.host = id;
      if (ref) cache(ns, node, std::move(ref), /*used=*/false);
      hs.ids[id] = ino;
      return ino;
    }
  }
  // Added meanwhile: the place goes to it if it has no descriptor.
  if (ref) install(ino, std::move(ref), /*placed=*/true, /*used=*/false);
  return ino;
}

PathRef InodeTable::get(uint64_t ino, int* error) {
  if (ino == kRootIno) return root_;
  std::string handle;
  uint32_t type = 0;
  {
    NodeShard& ns = node_shard(ino);
    util::MutexLock lock(ns.mu);
    auto it = ns.inodes.find(ino);
    if (it == ns.inodes.end()) {
      *error = ESTALE;
      return nullptr;
    }
    Inode& node = it->second;
    if (node.fd) {
      node.referenced = true;  // CLOCK: the hand passes it over once
      return node.fd;
    }
    handle = node.handle;
    type = node.type;
  }
  // Reopened outside the lock (a system call); two threads may both reopen,
  // the second one's descriptor is simply dropped.
  UniqueFd fd = open_handle(handle, kPathFlags, error);
  if (!fd) return nullptr;
  const bool placed = take_place();
  util::FdCharge charge;
  if (!take_fd(&charge)) {
    if (placed) give_place();
    *error = EMFILE;
    return nullptr;
  }
  return install(ino, std::make_shared<PathFd>(std::move(fd), type, std::move(charge)), placed,
                 /*used=*/true);
}

PathRef InodeTable::install(uint64_t ino, PathRef fd, bool placed, bool used) {
  NodeShard& ns = node_shard(ino);
  util::MutexLock lock(ns.mu);
  auto it = ns.inodes.find(ino);
  if (it != ns.inodes.end() && !it->second.fd && placed) {
    cache(ns, it->second, fd, used);
    return fd;
  }
  if (placed) give_place();
  if (it != ns.inodes.end() && it->second.fd) {
    // Another thread's reopen won: this descriptor goes with the caller's
    // copy (`fd`, dropped after the lock).
    if (used) it->second.referenced = true;
    return it->second.fd;
  }
  // Forgotten meanwhile, or no place to keep it: this use still may go on.
  return fd;
}

UniqueFd InodeTable::reopen(uint64_t ino, const PathFd& path, int flags, int* error) {
  flags |= O_CLOEXEC | O_NOFOLLOW;
  if (ino == kRootIno || path.type() == S_IFDIR) {
    // "." of a directory is the directory: no handle, no /proc needed.
    UniqueFd fd(::openat(path.get(), ".", flags & ~O_NOFOLLOW));
    if (!fd) *error = errno;
    return fd;
  }
  std::string handle;
  {
    NodeShard& ns = node_shard(ino);
    util::MutexLock lock(ns.mu);
    auto it = ns.inodes.find(ino);
    if (it == ns.inodes.end()) {
      *error = ESTALE;
      return UniqueFd();
    }
    handle = it->second.handle;
  }
  if (!handle.empty()) return open_handle(handle, flags, error);
  // Without handles: the magic link of our own O_PATH descriptor, which
  // leads to exactly that inode, wherever its names went.
  const std::string proc = sandbox::proc_fd_path(path.get());
  UniqueFd fd(::open(proc.c_str(), flags & ~O_NOFOLLOW));
  if (!fd) *error = errno;
  return fd;
}

bool InodeTable::holds(const struct stat& st) const {
  const HostId id{st.st_dev, st.st_ino};
  HostShard& hs = host_shard(id);
  util::MutexLock lock(hs.mu);
  return hs.ids.count(id) != 0;
}

void InodeTable::forget(uint64_t ino, uint64_t n) {
  NodeShard& ns = node_shard(ino);
  HostId host;
  {
    util::MutexLock lock(ns.mu);
    auto it = ns.inodes.find(ino);
    if (it == ns.inodes.end()) return;
    Inode& node = it->second;
    if (node.lookups > n) {
      node.lookups -= n;
      return;
    }
    host = node.host;
  }
  // The last lookups go with the inode and its host id, under both locks in
  // their order (host shard first): an add_lookup of the same file either
  // counted on the inode before (and it stays), or finds neither after.
  PathRef closing;  // dropped after the locks
  HostShard& hs = host_shard(host);
  util::MutexLock host_lock(hs.mu);
  util::MutexLock lock(ns.mu);
  auto it = ns.inodes.find(ino);
  if (it == ns.inodes.end()) return;  // another forget freed it
  Inode& node = it->second;
  node.lookups -= std::min(n, node.lookups);
  if (node.lookups > 0) return;  // counted again meanwhile
  // The host id may lead to a newer inode already (see count_known).
  if (auto h = hs.ids.find(host); h != hs.ids.end() && h->second == ino) hs.ids.erase(h);
  closing = uncache(ns, node);
  ns.inodes.erase(it);
}

void InodeTable::forget_all() {
  for (NodeShard& ns : node_shards_) {
    std::vector<uint64_t> inos;
    {
      util::MutexLock lock(ns.mu);
      for (const auto& [ino, node] : ns.inodes) inos.push_back(ino);
    }
    for (uint64_t ino : inos) forget(ino, UINT64_MAX);
  }
}

void InodeTable::cache(NodeShard& ns, Inode& node, PathRef fd, bool used) {
  node.fd = std::move(fd);
  node.referenced = used;
  if (!node.handle.empty()) {
    node.clock_slot = ns.clock.size();
    ns.clock.push_back(&node);
    evictable_.fetch_add(1, std::memory_order_relaxed);
  }
}

PathRef InodeTable::uncache(NodeShard& ns, Inode& node) {
  if (!node.fd) return nullptr;
  if (node.clock_slot != kNotInClock) {
    // The last of the clock takes its slot.
    Inode* last = ns.clock.back();
    ns.clock[node.clock_slot] = last;
    last->clock_slot = node.clock_slot;
    ns.clock.pop_back();
    node.clock_slot = kNotInClock;
    evictable_.fetch_sub(1, std::memory_order_relaxed);
  }
  give_place();
  return std::move(node.fd);
}

PathRef InodeTable::sweep(NodeShard& ns, bool all) {
  if (ns.clock.empty()) return nullptr;
  // All: the whole clock clears every mark it passes, so the first inode
  // comes round again unmarked.
  const size_t steps = all ? ns.clock.size() + 1 : std::min(ns.clock.size(), kSweep);
  for (size_t i = 0; i < steps; ++i) {
    if (ns.hand >= ns.clock.size()) ns.hand = 0;
    Inode& node = *ns.clock[ns.hand];
    if (!node.referenced) return uncache(ns, node);  // the hand stays: the slot's new inode is next
    node.referenced = false;
    ++ns.hand;
  }
  return nullptr;
}

bool InodeTable::evict_one() {
  // Two rounds over the shards a few inodes at a time, as one clock over the
  // whole table would go (an inode used since the hand passed keeps its
  // descriptor); then each visit sweeps its shard whole, which always
  // evicts, so a hand racing get()s that mark inodes again still ends.
  for (size_t visit = 0; visit < 3 * kShards; ++visit) {
    if (evictable_.load(std::memory_order_relaxed) == 0) return false;
    NodeShard& ns = node_shards_[clock_hand_.fetch_add(1, std::memory_order_relaxed) % kShards];
    PathRef victim;  // closed after the lock, if no one else uses it
    {
      util::MutexLock lock(ns.mu);
      victim = sweep(ns, /*all=*/visit >= 2 * kShards);
    }
    if (victim) return true;
  }
  return false;
}

bool InodeTable::take_place() {
  // Without handles nothing can be evicted: no bound (the backend warned).
  if (!handles_) {
    cached_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  const size_t limit = max_fds_ > 0 ? max_fds_ - 1 : 0;  // the root holds one
  // A place freed by an eviction may go to another thread first: a few
  // tries, then the descriptor is not cached.
  for (int tries = 0; tries < 8; ++tries) {
    size_t n = cached_.load(std::memory_order_relaxed);
    while (n < limit) {
      if (cached_.compare_exchange_weak(n, n + 1, std::memory_order_relaxed)) return true;
    }
    if (!evict_one()) return false;
  }
  return false;
}

bool InodeTable::take_place_and_fd(util::FdCharge* charge) {
  if (!take_place()) return false;
  if (take_fd(charge)) return true;
  give_place();
  return false;
}

bool InodeTable::take_fd(util::FdCharge* charge) {
  if (budget_ == nullptr) return true;
  for (;;) {
    if (budget_->try_take()) {
      *charge = util::FdCharge(budget_);
      return true;
    }
    // A victim still in use elsewhere pays until its last user is done, so
    // one eviction may not be enough.
    if (!evict_one()) return false;
  }
}

size_t InodeTable::cached_fds() const { return 1 + cached_.load(std::memory_order_relaxed); }

size_t InodeTable::size() const {
  size_t n = 1;  // the root
  for (const NodeShard& ns : node_shards_) {
    util::MutexLock lock(ns.mu);
    n += ns.inodes.size();
  }
  return n;
}

}  // namespace dpfs::passthrough
