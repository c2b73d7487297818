// The sandbox a serving process enters before it reads a byte from a
// tenant: a view of the host's files limited to what it serves
// (namespace.h), only the capabilities its backends need
// (capabilities.h), no_new_privs, and a system call allow-list
// (seccomp.h). docs/security-notes/sandbox.md says what each stops.
#pragma once

#include <string>
#include <vector>

#include "sandbox/namespace.h"
#include "sandbox/seccomp.h"

namespace dpfs::sandbox {

struct SandboxOptions {
  ConfineOptions view;  // mode, shared directories, network
  SeccompAction seccomp = SeccompAction::kKill;
  std::vector<int> capabilities;  // CAP_* the backends need; the rest go
};

// Enters the sandbox, in this order: the view (needs the privileges that go
// next), the capabilities, no_new_privs, the filter (which forbids setting
// up any of the others). With view.mode kNone only the view is skipped:
// capabilities, no_new_privs and the filter apply in every mode, as in
// virtiofsd. Returns the paths of view.shared_dirs inside. Throws
// SandboxError.
//
// REQUIRES: no other thread runs yet.
std::vector<std::string> enter_sandbox(const SandboxOptions& options);

}  // namespace dpfs::sandbox
