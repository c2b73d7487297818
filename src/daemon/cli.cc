#include "daemon/cli.h"

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <map>
#include <optional>

#include "backend/factory.h"
#include "backend/kv/url.h"
#include "daemon/version.h"
#include "fuse/session.h"

namespace dpfs::daemon {
namespace {

std::string version_text() {
  return fmt::format("dpfs {} (FUSE protocol {}.{})\n", kVersion, fuse::FuseSession::kMajor,
                     fuse::FuseSession::kMinor);
}

std::string backends_text() {
  std::string out = "Backends (--backend, [backend] type):\n";
  for (const BackendType& t : backend_types()) {
    out += fmt::format("  {:<26}{}\n", t.takes_arg ? std::string(t.name) + ":ARG" : t.name,
                       t.description);
  }
  return out;
}

constexpr const char* kNotes =
    "Every option may also be set in a TOML file given with --config (see\n"
    "docs/configuration.md); options on the command line override the file.\n"
    "Sizes take K, M, G or T (powers of 1024). Without --fuse-mount and a\n"
    "configured mount, dpfs serves at /tmp/dpfs, creating it if missing --\n"
    "unless a vhost-user socket is configured: then only what is configured.\n"
    "vhost-user: --vhost-user SOCK serves a virtio-fs device there; boot QEMU with\n"
    "  -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem\n"
    "  -chardev socket,id=vfs,path=SOCK -device vhost-user-fs-pci,chardev=vfs,tag=TAG\n"
    "and mount -t virtiofs TAG /mnt in the guest. More tenants: [[device]] tables.\n"
    "Signals: SIGINT, SIGTERM, SIGHUP unmount, close the sockets and exit;\n"
    "SIGUSR1 logs statistics; with --stats-socket PATH, `dpfs stats PATH` prints them.";

}  // namespace

Invocation parse_command_line(const std::vector<std::string>& args) {
  CLI::App app("dpfs serves file systems to tenants over FUSE and virtio-fs (vhost-user).", "dpfs");
  app.set_version_flag("--version", version_text());
  app.require_subcommand(0, 1);
  app.footer(backends_text() + "\n" + kNotes);

  CLI::App* serve = app.add_subcommand(
      "serve",
      "Serve file systems on a /dev/fuse mount and/or vhost-user sockets until SIGINT or "
      "SIGTERM.");
  serve->footer(backends_text() + "\n" + kNotes);
  std::string config_file;
  serve->add_option("--config", config_file, "read settings from this TOML file")
      ->type_name("FILE");
  // Flags are applied after the file, in the order of settings().
  std::map<std::string_view, std::string> values;
  std::map<std::string_view, bool> switches;
  for (const SettingInfo& s : settings()) {
    const std::string flag(s.flag);
    std::string help = fmt::format("{} [{}]", s.help, s.key);
    if (s.is_switch()) {
      serve->add_flag_callback(
          flag, [&switches, key = s.key] { switches[key] = true; }, help);
      serve->add_flag_callback(
          "--no-" + flag.substr(2), [&switches, key = s.key] { switches[key] = false; },
          fmt::format("turn {} off", flag));
    } else if (s.is_repeated()) {
      // Every occurrence counts: joined, as a list in the file would be.
      serve->add_option(flag, values[s.key], help)
          ->type_name(std::string(s.value_name))
          ->delimiter(',')
          ->multi_option_policy(CLI::MultiOptionPolicy::Join);
    } else {
      if (s.key == "backend.type") help += fmt::format("; types: {}", backend_type_list());
      serve->add_option(flag, values[s.key], help)
          ->type_name(std::string(s.value_name))
          ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    }
  }

  CLI::App* stats = app.add_subcommand(
      "stats",
      "Print the live statistics of a running dpfs serve --stats-socket SOCKET: requests, "
      "errors and latency per operation, and per virtio queue.");
  std::string stats_socket;
  stats->add_option("SOCKET", stats_socket, "the daemon's stats socket")->required();

  CLI::App* kv =
      app.add_subcommand("kv", "Make and inspect file systems for the redis backend (docs/kv.md).");
  kv->require_subcommand(1);
  CLI::App* kv_format = kv->add_subcommand(
      "format",
      "Create the file system URL names (redis://HOST:PORT/FSNAME): an empty root directory. "
      "Refuses to overwrite one.");
  std::string kv_url;
  std::string chunk_size = "64K";
  kv_format->add_option("URL", kv_url, "redis://HOST:PORT/FSNAME")->required();
  kv_format->add_option("--chunk-size", chunk_size,
                        "bytes of file data per Redis key, a power of two from 4K to 4M "
                        "(default 64K)");
  CLI::App* kv_info = kv->add_subcommand(
      "info", "Print what the file system URL names holds: format version, chunk size, inodes.");
  kv_info->add_option("URL", kv_url, "redis://HOST:PORT/FSNAME")->required();

  app.add_subcommand("version", "Print the version and exit.");

  std::vector<std::string> reversed(args.rbegin(), args.rend());
  try {
    app.parse(std::move(reversed));
  } catch (const CLI::CallForHelp&) {
    // `dpfs --help` documents every option of every command; `dpfs serve
    // --help` those of serve.
    const bool top = app.get_subcommands().empty();
    return {
        Invocation::Command::kHelp, {}, top ? app.help("", CLI::AppFormatMode::All) : app.help()};
  } catch (const CLI::CallForAllHelp&) {
    return {Invocation::Command::kHelp, {}, app.help("", CLI::AppFormatMode::All)};
  } catch (const CLI::CallForVersion&) {
    return {Invocation::Command::kVersion, {}, version_text()};
  } catch (const CLI::ParseError& e) {
    throw UsageError(e.what());
  }

  if (app.got_subcommand("version")) return {Invocation::Command::kVersion, {}, version_text()};
  if (app.got_subcommand(stats)) return {Invocation::Command::kStats, {}, stats_socket};
  if (app.got_subcommand(kv)) {
    Invocation inv;
    inv.text = kv_url;
    try {
      kv::parse_kv_url(kv_url);
    } catch (const std::invalid_argument& e) {
      throw UsageError(e.what());
    }
    if (kv->got_subcommand(kv_format)) {
      inv.command = Invocation::Command::kKvFormat;
      try {
        inv.chunk_size = parse_size(chunk_size);
      } catch (const std::exception& e) {
        throw UsageError(std::string("--chunk-size: ") + e.what());
      }
    } else {
      inv.command = Invocation::Command::kKvInfo;
    }
    return inv;
  }
  if (!app.got_subcommand(serve)) {
    throw UsageError("a command is required: serve, stats, kv or version (see dpfs --help)");
  }

  Invocation inv;
  inv.command = Invocation::Command::kServe;
  if (!config_file.empty()) apply_toml_file(inv.config, config_file);
  for (const SettingInfo& s : settings()) {
    if (s.is_switch()) {
      if (auto it = switches.find(s.key); it != switches.end()) {
        apply_switch(inv.config, s.key, it->second);
      }
    } else if (serve->get_option(std::string(s.flag))->count() > 0) {
      apply_flag(inv.config, s.key, values[s.key]);
    }
  }
  finish(inv.config);
  return inv;
}

}  // namespace dpfs::daemon
