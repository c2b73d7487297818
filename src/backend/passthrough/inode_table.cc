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
    by_host_[{st.st_dev, st.st_ino}] = kRootIno;
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

uint64_t InodeTable::add_lookup(UniqueFd fd, bool fd_is_path, const struct stat& st, int* error) {
  std::string handle = handles_ ? handle_of(fd.get()) : std::string();
  if (handles_ && handle.empty()) {
    *error = errno;
    return 0;
  }
  const uint32_t type = st.st_mode & S_IFMT;
  util::MutexLock lock(mu_);
  const HostId id{st.st_dev, st.st_ino};
  if (auto found = by_host_.find(id); found != by_host_.end()) {
    if (found->second == kRootIno) return kRootIno;  // ".." at the top: no count
    Inode& node = inodes_.at(found->second);
    // The same host inode number with another handle is a new file that
    // took the number of a deleted one: the old node id stays (ESTALE once
    // used), the name now leads to a new one.
    if (node.handle == handle && node.type == type) {
      ++node.lookups;
      // Evicted (so it has a handle): cached again if the budget allows,
      // else reopened when next needed.
      util::FdCharge charge;
      if (!node.fd && fd_is_path && take_fd_locked(&charge)) {
        cache(node, std::make_shared<PathFd>(std::move(fd), type, std::move(charge)));
        trim();
      }
      return node.ino;
    }
  }
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
  // With a handle the inode may start out evicted when the budget is spent
  // (reopened when used); without one its descriptor is the inode.
  util::FdCharge charge;
  const bool paid = take_fd_locked(&charge);
  if (!paid && !handles_) {
    *error = EMFILE;
    return 0;
  }
  const uint64_t ino = next_ino_++;
  Inode& node = inodes_[ino];
  node.ino = ino;
  node.type = type;
  node.lookups = 1;
  node.handle = std::move(handle);
  node.host = id;
  if (paid) cache(node, std::make_shared<PathFd>(std::move(fd), type, std::move(charge)));
  by_host_[id] = ino;
  trim();
  return ino;
}

PathRef InodeTable::get(uint64_t ino, int* error) {
  if (ino == kRootIno) return root_;
  std::string handle;
  uint32_t type = 0;
  {
    util::MutexLock lock(mu_);
    auto it = inodes_.find(ino);
    if (it == inodes_.end()) {
      *error = ESTALE;
      return nullptr;
    }
    Inode& node = it->second;
    if (node.fd) {
      if (!node.handle.empty()) lru_.splice(lru_.begin(), lru_, node.lru);
      return node.fd;
    }
    handle = node.handle;
    type = node.type;
  }
  // Reopened outside the lock (a system call); two threads may both reopen,
  // the second one's descriptor is simply dropped.
  UniqueFd fd = open_handle(handle, kPathFlags, error);
  if (!fd) return nullptr;
  util::MutexLock lock(mu_);
  auto it = inodes_.find(ino);
  if (it != inodes_.end() && it->second.fd) return it->second.fd;
  util::FdCharge charge;
  if (!take_fd_locked(&charge)) {
    *error = EMFILE;
    return nullptr;
  }
  auto ref = std::make_shared<PathFd>(std::move(fd), type, std::move(charge));
  if (it == inodes_.end()) return ref;  // forgotten meanwhile: this use still may go on
  cache(it->second, ref);
  trim();
  return ref;
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
    util::MutexLock lock(mu_);
    auto it = inodes_.find(ino);
    if (it == inodes_.end()) {
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
  util::MutexLock lock(mu_);
  return by_host_.count({st.st_dev, st.st_ino}) != 0;
}

void InodeTable::forget(uint64_t ino, uint64_t n) {
  util::MutexLock lock(mu_);
  auto it = inodes_.find(ino);
  if (it == inodes_.end()) return;
  Inode& node = it->second;
  node.lookups -= std::min(n, node.lookups);
  if (node.lookups == 0) drop(it);
}

void InodeTable::forget_all() {
  util::MutexLock lock(mu_);
  while (!inodes_.empty()) drop(inodes_.begin());
}

void InodeTable::drop(std::unordered_map<uint64_t, Inode>::iterator it) {
  Inode& node = it->second;
  if (node.fd && !node.handle.empty()) lru_.erase(node.lru);
  // The host id may lead to a newer inode already (see add_lookup).
  if (auto h = by_host_.find(node.host); h != by_host_.end() && h->second == node.ino) {
    by_host_.erase(h);
  }
  inodes_.erase(it);
}

void InodeTable::cache(Inode& node, PathRef fd) {
  node.fd = std::move(fd);
  if (!node.handle.empty()) {
    lru_.push_front(node.ino);
    node.lru = lru_.begin();
  }
}

void InodeTable::trim() {
  // Only inodes with a handle can be evicted: their descriptor can come back.
  while (!lru_.empty() && cached_fds_locked() > max_fds_) {
    Inode& victim = inodes_.at(lru_.back());
    lru_.pop_back();
    victim.fd.reset();
  }
}

bool InodeTable::take_fd(util::FdCharge* charge) {
  util::MutexLock lock(mu_);
  return take_fd_locked(charge);
}

bool InodeTable::take_fd_locked(util::FdCharge* charge) {
  if (budget_ == nullptr) return true;
  for (;;) {
    if (budget_->try_take()) {
      *charge = util::FdCharge(budget_);
      return true;
    }
    // A victim still in use elsewhere pays until its last user is done, so
    // one eviction may not be enough.
    if (lru_.empty()) return false;
    Inode& victim = inodes_.at(lru_.back());
    lru_.pop_back();
    victim.fd.reset();
  }
}

size_t InodeTable::cached_fds_locked() const {
  // Without handles every inode keeps its descriptor; with them, exactly
  // those in the LRU list have one. Plus the root.
  return 1 + (handles_ ? lru_.size() : inodes_.size());
}

size_t InodeTable::cached_fds() const {
  util::MutexLock lock(mu_);
  return cached_fds_locked();
}

size_t InodeTable::size() const {
  util::MutexLock lock(mu_);
  return inodes_.size() + 1;
}

}  // namespace dpfs::passthrough
