// dpfs: the daemon.
#include <signal.h>

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "backend/kv/admin.h"
#include "daemon/cli.h"
#include "daemon/log.h"
#include "daemon/serve.h"
#include "daemon/stats_socket.h"

namespace {

// Errors reach the operator as exactly one line, whatever a library put in
// its message.
void print_error(const char* what) {
  std::string line(what);
  for (char& c : line) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  std::fprintf(stderr, "dpfs: %s\n", line.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  // A reply written to a peer that went away must be an EPIPE, not a death.
  ::signal(SIGPIPE, SIG_IGN);

  using dpfs::daemon::Invocation;
  Invocation inv;
  try {
    inv = dpfs::daemon::parse_command_line(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::exception& e) {
    print_error(e.what());
    return 2;
  }
  switch (inv.command) {
    case Invocation::Command::kHelp:
    case Invocation::Command::kVersion:
      std::fputs(inv.text.c_str(), stdout);
      return 0;
    case Invocation::Command::kStats:
      try {
        std::fputs(dpfs::daemon::query_stats(inv.text).c_str(), stdout);
        return 0;
      } catch (const std::exception& e) {
        print_error(e.what());
        return 1;
      }
    case Invocation::Command::kKvFormat:
    case Invocation::Command::kKvInfo:
      try {
        const dpfs::kv::KvUrl url = dpfs::kv::parse_kv_url(inv.text);
        if (inv.command == Invocation::Command::kKvFormat) {
          dpfs::kv::format(url, inv.chunk_size);
          std::printf("formatted %s\n", url.fsname.c_str());
        }
        std::fputs(dpfs::kv::describe(url, dpfs::kv::read_format(url)).c_str(), stdout);
        return 0;
      } catch (const std::exception& e) {
        print_error(e.what());
        return 1;
      }
    case Invocation::Command::kServe:
      break;
  }

  dpfs::daemon::init_logging(inv.config.log_level);
  try {
    return dpfs::daemon::serve(inv.config);
  } catch (const std::exception& e) {
    // Start-up failures: one line, no log decoration.
    print_error(e.what());
    return 1;
  }
}
