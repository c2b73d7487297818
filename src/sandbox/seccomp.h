// The system calls a serving process may make: an allow-list, as virtiofsd
// keeps (virtiofsd src/seccomp.rs).
//
// A process that serves tenants only reads and writes descriptors it holds:
// files under its shared directory (the *at family, io_uring), its sockets
// and eventfds, memory (the guest's memfds). It never mounts, executes,
// traces, loads modules or creates processes; a tenant that finds a memory
// bug in it can do no more than that list allows.
#pragma once

#include <string>
#include <string_view>

namespace dpfs::sandbox {

// What happens when a process calls outside the list.
enum class SeccompAction {
  kKill,  // the whole process dies of SIGSYS (SECCOMP_RET_KILL_PROCESS)
  kLog,   // the call proceeds and the kernel logs it (SECCOMP_RET_LOG: audit/dmesg)
  kNone,  // no filter
};

// "kill" | "log" | "none"; throws std::invalid_argument.
SeccompAction parse_seccomp_action(std::string_view text);
std::string_view seccomp_action_name(SeccompAction action);

// Installs the filter on every thread of the process (TSYNC). Threads
// (clone with CLONE_THREAD) stay allowed, new processes and clone3 (whose
// flags a filter cannot see; glibc then falls back to clone) do not;
// unshare only for CLONE_FS (the passthrough backend's per-thread umask).
// Throws SandboxError.
//
// REQUIRES: no_new_privs is set (set_no_new_privs) or the process has
// CAP_SYS_ADMIN. Called last: after it, setting up the sandbox itself
// (mount, pivot_root, capset) is forbidden.
void install_seccomp_filter(SeccompAction action);

}  // namespace dpfs::sandbox
