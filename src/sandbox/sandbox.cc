#include "sandbox/sandbox.h"

#include "sandbox/capabilities.h"

namespace dpfs::sandbox {

std::vector<std::string> enter_sandbox(const SandboxOptions& options) {
  std::vector<std::string> inside = confine(options.view);
  limit_capabilities(options.capabilities);
  set_no_new_privs();
  install_seccomp_filter(options.seccomp);
  return inside;
}

}  // namespace dpfs::sandbox
