#include "sandbox/capabilities.h"

#include <cap-ng.h>
#include <fmt/format.h>
#include <sys/prctl.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "sandbox/error.h"

namespace dpfs::sandbox {

void limit_capabilities(std::span<const int> keep) {
  // The bounding set can only shrink with CAP_SETPCAP, which an unprivileged
  // process lacks: then it has no capabilities to bound either.
  capng_get_caps_process();
  const bool may_bound = capng_have_capability(CAPNG_EFFECTIVE, CAP_SETPCAP) == 1;
  capng_clear(CAPNG_SELECT_ALL);
  for (const int cap : keep) {
    if (capng_update(CAPNG_ADD, capng_type_t(CAPNG_EFFECTIVE | CAPNG_PERMITTED), unsigned(cap)) !=
        0) {
      throw SandboxError(fmt::format("sandbox: unknown capability {}", cap));
    }
    // The bounding set keeps what the process keeps: harmless, and a
    // capability dropped from it can never be raised again.
    if (may_bound) capng_update(CAPNG_ADD, CAPNG_BOUNDING_SET, unsigned(cap));
  }
  const int rc = capng_apply(may_bound ? CAPNG_SELECT_ALL
                                       : capng_select_t(CAPNG_SELECT_CAPS | CAPNG_SELECT_AMBIENT));
  if (rc != 0) {
    throw SandboxError(fmt::format(
        "sandbox: cannot drop capabilities (capng_apply: {}); run with --sandbox none", rc));
  }
}

std::string capability_names(std::span<const int> caps) {
  std::string out;
  for (const int cap : caps) {
    if (!out.empty()) out += ',';
    const char* name = capng_capability_to_name(unsigned(cap));
    out += name ? name : std::to_string(cap);
  }
  return out.empty() ? "none" : out;
}

void set_no_new_privs() {
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    throw SandboxError(
        fmt::format("sandbox: prctl(PR_SET_NO_NEW_PRIVS): {}", std::strerror(errno)));
  }
}

}  // namespace dpfs::sandbox
