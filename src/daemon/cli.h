// The command line: `dpfs serve [options]`, `dpfs stats SOCKET`,
// `dpfs version`, `--help`.
//
// Parsing only; main() acts on the result. Start-up only, not thread-safe.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "daemon/config.h"

namespace dpfs::daemon {

// A command line refused, as one line: "--threads: must be between 1 and
// 256, got 0", "The following argument was not expected: --bogus".
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Invocation {
  enum class Command {
    kServe,     // serve `config`
    kVersion,   // print `text`
    kHelp,      // print `text` (to stdout; exit 0)
    kStats,     // print the statistics of the daemon at stats socket `text`
    kKvFormat,  // make the KV file system at URL `text` (chunks of `chunk_size`)
    kKvInfo,    // describe the KV file system at URL `text`
  };
  Command command = Command::kHelp;
  Config config;  // kServe: defaults, then --config FILE, then flags; finish()ed
  std::string text;
  uint64_t chunk_size = 0;  // kKvFormat
};

// Parses `args` (without the program name). Reads the --config file.
// Throws UsageError for the command line and ConfigError for the file
// (both one line).
Invocation parse_command_line(const std::vector<std::string>& args);

}  // namespace dpfs::daemon
