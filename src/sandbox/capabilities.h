// The capabilities a serving process keeps, and no_new_privs.
//
// A serving process needs only what its backend does on the tenant's behalf
// (the passthrough backend, as root: chown, bypass permission checks while
// it acts as the tenant, switch its fsuid/fsgid, ...); memfs, null, NFS and
// remote need none. Everything else goes from every set, the bounding set
// included, so nothing the process runs later can get it back.
#pragma once

#include <span>
#include <string>

namespace dpfs::sandbox {

// Leaves the calling thread with exactly the capabilities in `keep`
// (CAP_* numbers) in its effective and permitted sets, and none in its
// inheritable and ambient sets; drops every other one from the bounding set
// when the thread may (CAP_SETPCAP; an unprivileged process has nothing to
// drop there that it could use). Throws SandboxError.
//
// REQUIRES: no other thread runs yet: capabilities belong to a thread, and
// threads created later inherit the caller's.
void limit_capabilities(std::span<const int> keep);

// "chown,dac_override": the names of `caps`, for logs.
std::string capability_names(std::span<const int> caps);

// PR_SET_NO_NEW_PRIVS: execve can never grant privileges again (set-id
// bits, file capabilities). A precondition of an unprivileged seccomp
// filter. Throws SandboxError.
void set_no_new_privs();

}  // namespace dpfs::sandbox
