// What of the host's file systems a serving process can still name.
//
// virtiofsd's sandbox (src/sandbox.rs) is the model: a mount namespace of
// its own whose root is the shared directory (pivot_root), so that a path a
// tenant smuggles past the backend's checks ("..", a symlink the host
// swapped) ends at the shared directory and nowhere else. Backends that
// serve no host directory (memfs, null, NFS, remote) get an empty root.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace dpfs::sandbox {

enum class SandboxMode {
  // New mount, IPC (and, unless the backend needs it, network) namespaces;
  // unprivileged: inside a new user namespace first.
  kNamespace,
  // chroot(2) into the shared directory, for a root without namespace
  // privileges (some containers). Weaker: same mounts, same network.
  kChroot,
  kNone,
};

// "namespace" | "chroot" | "none"; throws std::invalid_argument.
SandboxMode parse_sandbox_mode(std::string_view text);
std::string_view sandbox_mode_name(SandboxMode mode);

struct ConfineOptions {
  SandboxMode mode = SandboxMode::kNamespace;
  // The host directories the backends serve, absolute and canonical. One:
  // it becomes the root. Several (namespace mode only): each is bound at
  // /1, /2, ... of an empty root. None: an empty root.
  std::vector<std::string> shared_dirs;
  // Keep the host's network namespace (the NFS and remote backends
  // connect, and reconnect, to their servers). Without it the process gets
  // a network namespace with nothing in it; sockets it holds already (a
  // bound --listen socket) keep working.
  bool network = false;
  // Host files the process still reads by name after entering
  // (/etc/hosts, /etc/resolv.conf for the network backends' name lookups):
  // bound read-only at the same path inside. Namespace mode, empty root only.
  std::vector<std::string> read_only_files;
};

// Enters the view `options` describe, for the whole process. Returns, for
// each of options.shared_dirs, the path that names it from inside. The
// working directory becomes the host's /proc/self/fd (see proc_fd.h).
// Throws SandboxError with what to do instead ("run as root or use
// --sandbox none").
//
// REQUIRES: no other thread runs (a mount namespace and a root belong to
// a thread until others are created from it; a user namespace cannot be
// entered by a multithreaded process).
std::vector<std::string> confine(const ConfineOptions& options);

// The number of threads of this process (from /proc/self/task).
size_t count_threads();

}  // namespace dpfs::sandbox
