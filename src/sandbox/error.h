// What the sandbox throws when it cannot be set up: one line for the
// operator that says what failed and what to do instead.
#pragma once

#include <stdexcept>

namespace dpfs::sandbox {

class SandboxError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace dpfs::sandbox
