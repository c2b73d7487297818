#include "daemon/cli.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace dpfs::daemon {
namespace {

using ::testing::HasSubstr;
using Command = Invocation::Command;

std::string usage_error(const std::vector<std::string>& args) {
  try {
    parse_command_line(args);
  } catch (const UsageError& e) {
    return e.what();
  } catch (const ConfigError& e) {
    return std::string("config error: ") + e.what();
  }
  return "";
}

// A TOML file that lives as long as the test.
class TempConfig {
 public:
  explicit TempConfig(const std::string& text) {
    char name[] = "/tmp/dpfs_cli_test_XXXXXX";
    const int fd = mkstemp(name);
    EXPECT_GE(fd, 0);
    close(fd);
    path_ = name;
    std::ofstream(path_) << text;
  }
  ~TempConfig() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(Cli, ServeWithoutArgumentsIsTheDefaultJob) {
  const Invocation inv = parse_command_line({"serve"});
  EXPECT_EQ(inv.command, Command::kServe);
  EXPECT_EQ(inv.config.backend.kind, BackendKind::kMemfs);
  EXPECT_EQ(inv.config.fuse.mount, "/tmp/dpfs");
  EXPECT_TRUE(inv.config.fuse.mount_is_default);
  EXPECT_EQ(inv.config.threads, 2u);
}

TEST(Cli, ServeFlags) {
  const Invocation inv = parse_command_line({"serve",
                                             "--backend",
                                             "null",
                                             "--fuse-mount",
                                             "/mnt/d",
                                             "--threads",
                                             "4",
                                             "--log-level",
                                             "debug",
                                             "--max-write",
                                             "128K",
                                             "--entry-timeout",
                                             "0.5",
                                             "--attr-timeout=2",
                                             "--writeback-cache",
                                             "--null-file-size",
                                             "1G",
                                             "--null-direct-io",
                                             "--memfs-capacity",
                                             "2G",
                                             "--memfs-max-inodes",
                                             "77"});
  const Config& c = inv.config;
  EXPECT_EQ(c.backend.kind, BackendKind::kNull);
  EXPECT_EQ(c.fuse.mount, "/mnt/d");
  EXPECT_FALSE(c.fuse.mount_is_default);
  EXPECT_EQ(c.threads, 4u);
  EXPECT_EQ(c.log_level, spdlog::level::debug);
  EXPECT_EQ(c.fuse.max_write, 128u << 10);
  EXPECT_DOUBLE_EQ(c.fuse.entry_timeout, 0.5);
  EXPECT_DOUBLE_EQ(c.fuse.attr_timeout, 2.0);
  EXPECT_TRUE(c.fuse.writeback_cache);
  EXPECT_EQ(c.backend.null.file_size, 1ull << 30);
  EXPECT_TRUE(c.backend.null.direct_io);
  EXPECT_EQ(c.backend.memfs.capacity_bytes, 2ull << 30);
  EXPECT_EQ(c.backend.memfs.max_inodes, 77u);
}

TEST(Cli, VhostUserFlags) {
  const Invocation inv =
      parse_command_line({"serve", "--vhost-user", "/tmp/x.sock", "--tag", "vmfs",
                          "--request-queues", "2", "--poll", "--on-disconnect", "exit"});
  const Config& c = inv.config;
  EXPECT_EQ(c.fuse.mount, "");  // vhost-user only: no FUSE mount
  ASSERT_EQ(c.devices.size(), 1u);
  EXPECT_EQ(c.devices[0].socket, "/tmp/x.sock");
  EXPECT_EQ(c.devices[0].tag, "vmfs");
  EXPECT_EQ(c.devices[0].request_queues, 2u);
  EXPECT_TRUE(c.devices[0].poll);
  EXPECT_EQ(c.vhost_user.on_disconnect, OnDisconnect::kExit);

  const Invocation both =
      parse_command_line({"serve", "--vhost-user", "/tmp/x.sock", "--fuse-mount", "/tmp/dpfs"});
  EXPECT_EQ(both.config.fuse.mount, "/tmp/dpfs");
  EXPECT_EQ(both.config.devices.size(), 1u);
  EXPECT_EQ(usage_error({"serve", "--tag", "x"}),
            "config error: vhost_user.tag, request_queues and poll (--tag, --request-queues, "
            "--poll) need vhost_user.socket (--vhost-user SOCK)");
}

TEST(Cli, FlagsOverrideTheConfigFile) {
  TempConfig file(
      "threads = 3\n[backend]\ntype = \"null\"\n[fuse]\nmount = \"/from/file\"\n"
      "writeback_cache = true\nmax_write = \"64K\"\n");
  const Invocation from_file = parse_command_line({"serve", "--config", file.path()});
  EXPECT_EQ(from_file.config.threads, 3u);
  EXPECT_EQ(from_file.config.backend.kind, BackendKind::kNull);
  EXPECT_EQ(from_file.config.fuse.mount, "/from/file");
  EXPECT_TRUE(from_file.config.fuse.writeback_cache);
  EXPECT_EQ(from_file.config.fuse.max_write, 64u << 10);

  // Flags win whatever their position relative to --config.
  const Invocation inv = parse_command_line({"serve", "--threads", "9", "--config", file.path(),
                                             "--no-writeback-cache", "--backend", "memfs"});
  EXPECT_EQ(inv.config.threads, 9u);
  EXPECT_EQ(inv.config.backend.kind, BackendKind::kMemfs);
  EXPECT_FALSE(inv.config.fuse.writeback_cache);
  EXPECT_EQ(inv.config.fuse.mount, "/from/file");   // not overridden
  EXPECT_EQ(inv.config.fuse.max_write, 64u << 10);  // not overridden
}

TEST(Cli, RepeatedFlagTakesTheLast) {
  EXPECT_EQ(parse_command_line({"serve", "--threads", "3", "--threads", "5"}).config.threads, 5u);
}

TEST(Cli, BadValuesAreOneLine) {
  EXPECT_EQ(usage_error({"serve", "--threads", "0"}),
            "config error: --threads: must be between 1 and 256, got 0");
  EXPECT_EQ(usage_error({"serve", "--backend", "zfs"}),
            "config error: --backend: unknown backend 'zfs' (known: memfs, null, nfs, passthrough, "
            "remote, redis)");
  EXPECT_EQ(usage_error({"serve", "--max-write", "5000"}),
            "config error: --max-write: must be a multiple of 4K, got 5000");
}

TEST(Cli, ConfigFileErrors) {
  TempConfig file("[fuse]\nmountt = \"/x\"\n");
  EXPECT_EQ(usage_error({"serve", "--config", file.path()}),
            "config error: config " + file.path() + ": unknown key 'fuse.mountt'");
  EXPECT_EQ(usage_error({"serve", "--config", "/nonexistent.toml"}),
            "config error: config /nonexistent.toml: No such file or directory");
}

TEST(Cli, UsageErrors) {
  EXPECT_EQ(usage_error({}),
            "a command is required: serve, stats, kv or version (see dpfs --help)");
  EXPECT_THAT(usage_error({"serve", "--bogus"}), HasSubstr("--bogus"));
  EXPECT_THAT(usage_error({"mount"}), HasSubstr("mount"));
  EXPECT_THAT(usage_error({"serve", "--threads"}), HasSubstr("--threads"));
  for (const std::string& e :
       {usage_error({"serve", "--bogus"}), usage_error({"serve", "--threads"})}) {
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  }
}

TEST(Cli, Version) {
  for (const auto& args : {std::vector<std::string>{"version"}, {"--version"}}) {
    const Invocation inv = parse_command_line(args);
    EXPECT_EQ(inv.command, Command::kVersion);
    EXPECT_THAT(inv.text, HasSubstr("dpfs 0."));
    EXPECT_THAT(inv.text, HasSubstr("FUSE protocol 7."));
  }
}

TEST(Cli, HelpDocumentsEveryOption) {
  const Invocation top = parse_command_line({"--help"});
  const Invocation serve = parse_command_line({"serve", "--help"});
  EXPECT_EQ(top.command, Command::kHelp);
  EXPECT_EQ(serve.command, Command::kHelp);
  for (const std::string& text : {top.text, serve.text}) {
    EXPECT_THAT(text, HasSubstr("--config"));
    for (const SettingInfo& s : settings()) {
      EXPECT_THAT(text, HasSubstr(std::string(s.flag))) << s.key;
      EXPECT_THAT(text, HasSubstr(std::string(s.key))) << s.key;
    }
    EXPECT_THAT(text, HasSubstr("--no-writeback-cache"));
    EXPECT_THAT(text, HasSubstr("vhost-user-fs-pci"));
    EXPECT_THAT(text, HasSubstr("null"));
  }
  EXPECT_THAT(top.text, HasSubstr("version"));
}

}  // namespace
}  // namespace dpfs::daemon
