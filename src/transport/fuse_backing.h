// Registering host files for FUSE passthrough (fuse/passthrough_files.h)
// from inside the sandbox: the kernel allows FUSE_DEV_IOC_BACKING_OPEN only
// to a process with CAP_SYS_ADMIN, which the sandbox drops. A small process
// forked before the sandbox keeps that one capability and a descriptor of
// the connection, and does the two ioctls for the daemon: the daemon sends
// it an open file over a socket (SCM_RIGHTS) and gets the backing id back.
//
// What it lends: the kernel reads and writes a registered file with the
// helper's credentials, but only for the FUSE files the daemon answers with
// its id. The daemon can register only files it already has open, so it
// gains no file it could not read and write itself.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>

#include "fuse/passthrough_files.h"
#include "util/thread_annotations.h"
#include "util/unique_fd.h"

namespace dpfs::transport {

class FuseBackingRegistrar final : public fuse::BackingFiles {
 public:
  // Forks the helper with a descriptor of the connection `connection_fd`.
  // Null (with a log line saying why) when this process cannot register
  // backing files (not root) or the fork fails.
  //
  // REQUIRES: no other thread runs (fork).
  static std::unique_ptr<FuseBackingRegistrar> start(int connection_fd);

  FuseBackingRegistrar(const FuseBackingRegistrar&) = delete;
  FuseBackingRegistrar& operator=(const FuseBackingRegistrar&) = delete;
  // Ends the helper (its socket closes) and reaps it.
  ~FuseBackingRegistrar() override;

  int open(int fd) override;
  void close(int id) override;

 private:
  FuseBackingRegistrar(util::UniqueFd socket, pid_t pid) : socket_(std::move(socket)), pid_(pid) {}
  // One request and its answer, in turn.
  int call(uint32_t op, int32_t arg, int fd);

  util::Mutex mu_;
  util::UniqueFd socket_ DPFS_GUARDED_BY(mu_);
  pid_t pid_;
};

}  // namespace dpfs::transport
