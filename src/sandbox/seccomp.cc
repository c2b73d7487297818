#include "sandbox/seccomp.h"

#include <fmt/format.h>
#include <sched.h>
#include <seccomp.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <stdexcept>

#include "sandbox/error.h"

namespace dpfs::sandbox {
namespace {

// What dpfs, glibc, libnfs, liburing and OpenSSL call once serving,
// checked by running the integration suites (memfs, passthrough, NFS,
// remote with TLS, dpfs-bench and its hostile cases) with --seccomp log:
// the kernel logs each call outside the list as an audit line (dmesg:
// "type=1326 ... syscall=N"); none appeared; real guests then ran under
// kill. Names the architecture lacks (open on aarch64) are skipped.
constexpr const char* kAllowed[] = {
    // Memory: allocation, the guest's memory regions, thread stacks.
    "brk",
    "mmap",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "membarrier",
    // Threads and their synchronization (clone: see the rule below).
    "futex",
    "futex_waitv",
    "set_robust_list",
    "get_robust_list",
    "rseq",
    "set_tid_address",
    "gettid",
    "getpid",
    "tgkill",
    "exit",
    "exit_group",
    "sched_yield",
    "sched_getaffinity",
    "sched_setaffinity",
    "nanosleep",
    "clock_nanosleep",
    "clock_gettime",
    "clock_getres",
    "gettimeofday",
    "getrandom",
    "prctl",
    "restart_syscall",
    // Reaping the FUSE unmounter (transport/fuse_dev.h), our own child.
    "wait4",
    "waitid",
    // Signals: the signalfd the main thread waits on, blocked masks, abort.
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "rt_sigtimedwait",
    "sigaltstack",
    // Descriptors: reading and writing, events.
    "read",
    "write",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "lseek",
    "close",
    "close_range",
    "dup",
    "dup2",
    "dup3",
    "fcntl",
    "ioctl",
    "pipe2",
    "eventfd2",
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "timerfd_create",
    "timerfd_settime",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    // Files, always relative to a descriptor the backend holds.
    "open",
    "openat",
    "openat2",
    "name_to_handle_at",
    "open_by_handle_at",
    "fstat",
    "newfstatat",
    "statx",
    "fstatfs",
    "statfs",
    "getdents64",
    "readlinkat",
    "mkdirat",
    "mknodat",
    "unlinkat",
    "renameat",
    "renameat2",
    "linkat",
    "symlinkat",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "chmod",
    "fchown",
    "fchownat",
    "utimensat",
    "faccessat",
    "faccessat2",
    "access",
    "truncate",
    "ftruncate",
    "fallocate",
    "fsync",
    "syncfs",
    "fdatasync",
    "sync_file_range",
    "fadvise64",
    "flock",
    "copy_file_range",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
    "lsetxattr",
    "lgetxattr",
    "llistxattr",
    "lremovexattr",
    "fsetxattr",
    "fgetxattr",
    "flistxattr",
    "fremovexattr",
    "umask",
    "getcwd",
    // Credentials: the passthrough backend acts as the tenant per thread.
    "setfsuid",
    "setfsgid",
    "setgroups",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getresuid",
    "getresgid",
    "getgroups",
    "capget",
    // Sockets: vhost-user, remote, NFS (libnfs reconnects; as root from a
    // reserved port: bind).
    "socket",
    "connect",
    "bind",
    "accept",
    "accept4",
    "shutdown",
    "sendmsg",
    "recvmsg",
    "sendto",
    "recvfrom",
    "sendmmsg",
    "recvmmsg",
    "setsockopt",
    "getsockopt",
    "getsockname",
    "getpeername",
    // Limits and system facts (the fd limit, uname for libnfs's client name).
    "getrlimit",
    "setrlimit",
    "prlimit64",
    "uname",
    "sysinfo",
    "getpriority",
};

struct ContextDeleter {
  void operator()(scmp_filter_ctx ctx) const { seccomp_release(ctx); }
};

void check(int rc, const char* what) {
  if (rc != 0) {
    throw SandboxError(fmt::format("sandbox: seccomp: {}: {}", what, std::strerror(-rc)));
  }
}

}  // namespace

SeccompAction parse_seccomp_action(std::string_view text) {
  if (text == "kill") return SeccompAction::kKill;
  if (text == "log") return SeccompAction::kLog;
  if (text == "none") return SeccompAction::kNone;
  throw std::invalid_argument(fmt::format("must be kill, log or none, got '{}'", text));
}

std::string_view seccomp_action_name(SeccompAction action) {
  switch (action) {
    case SeccompAction::kKill:
      return "kill";
    case SeccompAction::kLog:
      return "log";
    case SeccompAction::kNone:
      return "none";
  }
  return "?";
}

void install_seccomp_filter(SeccompAction action) {
  if (action == SeccompAction::kNone) return;
  const uint32_t deny = action == SeccompAction::kKill ? SCMP_ACT_KILL_PROCESS : SCMP_ACT_LOG;
  std::unique_ptr<void, ContextDeleter> ctx(seccomp_init(deny));
  if (!ctx) throw SandboxError("sandbox: seccomp_init failed");
  check(seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_TSYNC, 1), "TSYNC");
  for (const char* name : kAllowed) {
    const int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) continue;
    check(seccomp_rule_add(ctx.get(), SCMP_ACT_ALLOW, nr, 0), name);
  }
  // Threads only: a clone without CLONE_THREAD would be a new process.
  check(seccomp_rule_add(ctx.get(), SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
                         SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD)),
        "clone");
  // clone3 passes its flags in memory a filter cannot read: ENOSYS makes
  // glibc (2.34+) fall back to clone, which the rule above checks.
  check(seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0), "clone3");
  // The passthrough backend gives each worker its own umask.
  check(seccomp_rule_add(ctx.get(), SCMP_ACT_ALLOW, SCMP_SYS(unshare), 1,
                         SCMP_A0(SCMP_CMP_EQ, CLONE_FS)),
        "unshare");
  check(seccomp_load(ctx.get()), "load");
}

}  // namespace dpfs::sandbox
