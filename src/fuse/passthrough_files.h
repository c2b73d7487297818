// FUSE passthrough (Linux >= 6.9): the kernel reads and writes the host
// file behind an open file itself, and no READ or WRITE of it reaches the
// daemon. The session decides per OPEN and CREATE (passthrough_abi.h has
// the kernel's rules); a transport that can register host files with its
// kernel (the /dev/fuse one, as root) provides BackingFiles.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>

#include "util/thread_annotations.h"

namespace dpfs::fuse {

// Registers host files with the kernel of one FUSE connection.
class BackingFiles {
 public:
  virtual ~BackingFiles() = default;
  // Registers `fd` (an open regular file; borrowed): the kernel's backing
  // id (> 0), or -errno. Any thread.
  virtual int open(int fd) = 0;
  // Drops a backing id open() returned. Any thread.
  virtual void close(int id) = 0;
};

// Which open files of a session the kernel reads and writes itself, and
// the backing id each inode uses: one per inode while any of its files is
// open through passthrough (the kernel's rule), registered at its first
// such open and dropped at the release of its last.
//
// Thread-safe (a mutex: OPEN, CREATE and RELEASE only, never READ or WRITE).
class PassthroughFiles {
 public:
  explicit PassthroughFiles(BackingFiles& backing) : backing_(backing) {}
  ~PassthroughFiles() { clear(); }
  PassthroughFiles(const PassthroughFiles&) = delete;
  PassthroughFiles& operator=(const PassthroughFiles&) = delete;

  // The open handle `fh` of inode `node`, whose host file is `fd` (-1: the
  // backend named none): the backing id to answer the open with, or 0 to
  // answer it without passthrough. An inode already open through
  // passthrough keeps its id for every new open, with or without `fd` (the
  // kernel fails an open in the other mode). `direct_io`: the open bypasses
  // the page cache (FOPEN_DIRECT_IO), so it only joins an inode already in
  // passthrough.
  int attach(uint64_t node, uint64_t fh, int fd, bool direct_io);
  // RELEASE of `fh`: drops the inode's backing id after its last file.
  // Nothing if `fh` was not attached.
  void detach(uint64_t fh);
  // Drops every backing id (the session ended).
  void clear();

  // "FUSE passthrough: 12 opens, 3 files open on 2 backing files, 0
  // refused": for statistics.
  std::string summary() const;

 private:
  // An inode with open files: their backing id, or 0 when the kernel
  // refused one (those files, and the others opened while they are, are
  // served by requests).
  struct Inode {
    int id = 0;
    uint32_t files = 0;
  };
  BackingFiles& backing_;
  mutable util::Mutex mu_;
  std::unordered_map<uint64_t, Inode> inodes_ DPFS_GUARDED_BY(mu_);
  std::unordered_map<uint64_t, uint64_t> files_ DPFS_GUARDED_BY(mu_);  // fh -> node
  uint64_t opens_ DPFS_GUARDED_BY(mu_) = 0;
  uint64_t refused_ DPFS_GUARDED_BY(mu_) = 0;
  int last_error_ DPFS_GUARDED_BY(mu_) = 0;
  bool disabled_ DPFS_GUARDED_BY(mu_) = false;  // the kernel said EPERM
};

}  // namespace dpfs::fuse
