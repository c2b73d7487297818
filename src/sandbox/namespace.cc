#include "sandbox/namespace.h"

#include <cap-ng.h>
#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "sandbox/error.h"
#include "sandbox/proc_fd.h"

namespace dpfs::sandbox {
namespace {

std::string errno_text(int e) { return std::strerror(e); }

[[noreturn]] void fail(const std::string& what, int e) {
  throw SandboxError(fmt::format("sandbox: {}: {}", what, errno_text(e)));
}

void write_file(const std::string& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) fail("open " + path, errno);
  const ssize_t n = ::write(fd, text.data(), text.size());
  const int e = errno;
  ::close(fd);
  if (n != ssize_t(text.size())) fail("write " + path, n < 0 ? e : EIO);
}

void do_mount(const char* source, const std::string& target, const char* type, unsigned long flags,
              const char* data, const char* what) {
  if (::mount(source, target.c_str(), type, flags, data) != 0) {
    fail(fmt::format("{} ({})", what, target), errno);
  }
}

// An unprivileged process gets the privileges a mount namespace needs from
// a user namespace of its own, in which its uid and gid map to themselves:
// files keep their owners, and the passthrough backend on a directory the
// user owns works as the user.
void enter_user_namespace() {
  const uid_t uid = ::geteuid();
  const gid_t gid = ::getegid();
  if (::unshare(CLONE_NEWUSER) != 0) {
    const int e = errno;
    throw SandboxError(fmt::format(
        "sandbox: not root, and cannot create a user namespace ({}); run as root, allow "
        "unprivileged user namespaces (sysctl user.max_user_namespaces), or use --sandbox none",
        errno_text(e)));
  }
  // user_namespaces(7): setgroups must be denied before an unprivileged
  // process may write gid_map.
  write_file("/proc/self/setgroups", "deny");
  write_file("/proc/self/uid_map", fmt::format("{} {} 1", uid, uid));
  write_file("/proc/self/gid_map", fmt::format("{} {} 1", gid, gid));
}

// A bind mount read-only. In a user namespace the kernel may refuse to
// clear flags the outer mount has locked; a file there is root's, which the
// namespace cannot write anyway.
void bind_read_only(const std::string& source, const std::string& target, bool privileged) {
  do_mount(source.c_str(), target, nullptr, MS_BIND, nullptr, "bind");
  if (::mount(nullptr, target.c_str(), nullptr,
              MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0 &&
      privileged) {
    fail("remount read-only " + target, errno);
  }
}

// Makes `dir` (a mount point) the root, as virtiofsd does: pivot_root(".",
// ".") stacks the old root on top of the new one, and detaching it leaves
// only the new root (pivot_root(2), "NOTES").
void pivot_into(const std::string& dir) {
  if (::chdir(dir.c_str()) != 0) fail("chdir " + dir, errno);
  if (::syscall(SYS_pivot_root, ".", ".") != 0) fail("pivot_root " + dir, errno);
  if (::umount2(".", MNT_DETACH) != 0) fail("detaching the old root", errno);
  if (::chdir("/") != 0) fail("chdir /", errno);
}

std::vector<std::string> confine_namespace(const ConfineOptions& o) {
  capng_get_caps_process();
  const bool privileged = capng_have_capability(CAPNG_EFFECTIVE, CAP_SYS_ADMIN) == 1;
  if (!privileged) enter_user_namespace();
  int flags = CLONE_NEWNS | CLONE_NEWIPC;
  if (!o.network) flags |= CLONE_NEWNET;
  if (::unshare(flags) != 0) {
    const int e = errno;
    throw SandboxError(fmt::format(
        "sandbox: cannot create namespaces ({}); run as root, or use --sandbox chroot (root "
        "without namespace privileges) or --sandbox none",
        errno_text(e)));
  }
  // Nothing we mount leaks out; what the host unmounts (say, the FUSE mount
  // when the daemon stops) goes here too.
  do_mount(nullptr, "/", nullptr, MS_SLAVE | MS_REC, nullptr, "making mounts private");

  std::vector<std::string> inside;
  if (o.shared_dirs.size() == 1) {
    const std::string& dir = o.shared_dirs.front();
    // pivot_root needs a mount point: the directory bound onto itself.
    do_mount(dir.c_str(), dir, nullptr, MS_BIND | MS_REC, nullptr, "bind");
    pivot_into(dir);
    inside.push_back("/");
  } else {
    // An empty root: a small read-only tmpfs. It is mounted over the host's
    // /proc (in this namespace only): a directory that exists everywhere and
    // that no shared directory lives under, so every bind source stays in
    // reach; this process reaches /proc/self/fd through the descriptor
    // opened before.
    const std::string root = "/proc";
    do_mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=0755",
             "mounting an empty root");
    for (size_t i = 0; i < o.shared_dirs.size(); ++i) {
      const std::string at = fmt::format("/{}", i + 1);
      if (::mkdir((root + at).c_str(), 0755) != 0) fail("mkdir " + root + at, errno);
      do_mount(o.shared_dirs[i].c_str(), root + at, nullptr, MS_BIND | MS_REC, nullptr, "bind");
      inside.push_back(at);
    }
    for (const std::string& file : o.read_only_files) {
      struct stat st {};
      if (::stat(file.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
      const std::filesystem::path target = std::filesystem::path(root) / file.substr(1);
      std::error_code ec;
      std::filesystem::create_directories(target.parent_path(), ec);
      const int fd = ::open(target.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
      if (fd < 0) fail("creating " + target.string(), errno);
      ::close(fd);
      bind_read_only(file, target, privileged);
    }
    do_mount(nullptr, root, nullptr, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
             nullptr, "making the empty root read-only");
    pivot_into(root);
  }
  return inside;
}

// chroot into the one shared directory, or into an empty directory that
// no longer exists anywhere (removed while we hold it: nothing can be
// created or found in it).
std::vector<std::string> confine_chroot(const ConfineOptions& o) {
  if (o.shared_dirs.size() > 1) {
    throw SandboxError(
        "sandbox: --sandbox chroot serves one directory; these backends serve several (use "
        "--sandbox namespace)");
  }
  if (o.shared_dirs.size() == 1) {
    const std::string& dir = o.shared_dirs.front();
    if (::chdir(dir.c_str()) != 0) fail("chdir " + dir, errno);
  } else {
    char tmpl[] = "/tmp/dpfs-root-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) fail("mkdtemp /tmp/dpfs-root-XXXXXX", errno);
    const int fd = ::open(tmpl, O_PATH | O_DIRECTORY | O_CLOEXEC);
    const int e = errno;
    ::rmdir(tmpl);
    if (fd < 0) fail(std::string("open ") + tmpl, e);
    const int rc = ::fchdir(fd);
    ::close(fd);
    if (rc != 0) fail("fchdir", errno);
  }
  if (::chroot(".") != 0) {
    const int e = errno;
    throw SandboxError(fmt::format(
        "sandbox: chroot: {}; --sandbox chroot needs root (CAP_SYS_CHROOT): use --sandbox "
        "namespace or none",
        errno_text(e)));
  }
  return o.shared_dirs.empty() ? std::vector<std::string>{} : std::vector<std::string>{"/"};
}

}  // namespace

SandboxMode parse_sandbox_mode(std::string_view text) {
  if (text == "namespace") return SandboxMode::kNamespace;
  if (text == "chroot") return SandboxMode::kChroot;
  if (text == "none") return SandboxMode::kNone;
  throw std::invalid_argument(fmt::format("must be namespace, chroot or none, got '{}'", text));
}

std::string_view sandbox_mode_name(SandboxMode mode) {
  switch (mode) {
    case SandboxMode::kNamespace:
      return "namespace";
    case SandboxMode::kChroot:
      return "chroot";
    case SandboxMode::kNone:
      return "none";
  }
  return "?";
}

size_t count_threads() {
  size_t n = 0;
  DIR* dir = ::opendir("/proc/self/task");
  if (dir == nullptr) return 0;
  while (const dirent* e = ::readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(dir);
  return n;
}

std::vector<std::string> confine(const ConfineOptions& options) {
  if (options.mode == SandboxMode::kNone) return options.shared_dirs;
  if (const size_t n = count_threads(); n != 1) {
    throw std::logic_error(
        fmt::format("sandbox: entered with {} threads; it must come before any thread starts", n));
  }
  // What proc_fd_path names from inside, held as the working directory for
  // the life of the process. Opened before the host's /proc goes out of reach.
  const int proc_self_fd = ::open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (proc_self_fd < 0) fail("open /proc/self/fd", errno);
  std::vector<std::string> inside;
  try {
    inside = options.mode == SandboxMode::kNamespace ? confine_namespace(options)
                                                     : confine_chroot(options);
  } catch (...) {
    ::close(proc_self_fd);
    throw;
  }
  // The working directory now holds the host's /proc/self/fd; the
  // descriptor itself is no longer needed.
  if (::fchdir(proc_self_fd) != 0) fail("fchdir /proc/self/fd", errno);
  ::close(proc_self_fd);
  use_relative_proc_fd_paths();
  return inside;
}

}  // namespace dpfs::sandbox
