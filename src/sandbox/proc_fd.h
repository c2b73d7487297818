// The name by which a descriptor of this process reaches its file again:
// its magic link in /proc/self/fd. For the operations that have no
// descriptor-relative form (chmod, the xattr calls, reopening an O_PATH
// descriptor for I/O).
//
// A sandboxed process has no /proc in its root; the sandbox opens
// /proc/self/fd before it leaves the host's view and makes that directory
// the working directory of the process, so "N" (relative) names the same
// link that "/proc/self/fd/N" did. virtiofsd does the same (its
// proc_self_fd, opened before pivot_root).
#pragma once

#include <string>

namespace dpfs::sandbox {

// "/proc/self/fd/N", or "N" once the sandbox is entered. Thread-safe.
std::string proc_fd_path(int fd);

// Called by the sandbox once the working directory of every thread is
// /proc/self/fd. REQUIRES: no other thread runs yet.
void use_relative_proc_fd_paths();

}  // namespace dpfs::sandbox
