#include "fuse/passthrough_files.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>

namespace dpfs::fuse {

int PassthroughFiles::attach(uint64_t node, uint64_t fh, int fd, bool direct_io) {
  util::MutexLock lock(mu_);
  auto it = inodes_.find(node);
  if (it == inodes_.end()) {
    // A direct-io open of an inode no other file holds needs no id: it
    // enters no mode, and a later passthrough open may still come.
    if (direct_io) return 0;
    int id = 0;  // served by requests
    if (fd >= 0 && !disabled_) {
      id = backing_.open(fd);
      if (id <= 0) {
        if (refused_++ == 0 || -id != last_error_) {
          spdlog::warn("FUSE passthrough: the kernel refused a backing file ({}){}",
                       std::strerror(-id), id == -EPERM ? "; serving every file by requests" : "");
        }
        last_error_ = -id;
        // Not allowed at all (no CAP_SYS_ADMIN): not worth asking again.
        if (id == -EPERM) disabled_ = true;
        id = 0;
      }
    }
    // Counted either way: while this file is open, the inode's other opens
    // are in its mode (one per inode).
    it = inodes_.emplace(node, Inode{id, 0}).first;
  } else if (direct_io && it->second.id == 0) {
    return 0;
  }
  ++it->second.files;
  files_.emplace(fh, node);
  if (it->second.id > 0) ++opens_;
  return it->second.id;
}

void PassthroughFiles::detach(uint64_t fh) {
  util::MutexLock lock(mu_);
  auto file = files_.find(fh);
  if (file == files_.end()) return;
  auto it = inodes_.find(file->second);
  files_.erase(file);
  if (it == inodes_.end() || --it->second.files > 0) return;
  if (it->second.id > 0) backing_.close(it->second.id);
  inodes_.erase(it);
}

void PassthroughFiles::clear() {
  util::MutexLock lock(mu_);
  for (const auto& [node, inode] : inodes_) {
    if (inode.id > 0) backing_.close(inode.id);
  }
  inodes_.clear();
  files_.clear();
}

std::string PassthroughFiles::summary() const {
  util::MutexLock lock(mu_);
  return fmt::format("FUSE passthrough: {} opens, {} files open on {} inodes, {} refused", opens_,
                     files_.size(), inodes_.size(), refused_);
}

}  // namespace dpfs::fuse
