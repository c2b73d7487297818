#include "daemon/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

namespace dpfs::daemon {
namespace {

using ::testing::HasSubstr;

// The message of the ConfigError that applying `toml` throws, or "" if none.
std::string toml_error(const std::string& toml) {
  Config cfg;
  try {
    apply_toml(cfg, toml, "test.toml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

std::string flag_error(std::string_view key, std::string_view value) {
  Config cfg;
  try {
    apply_flag(cfg, key, value);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(Config, Defaults) {
  Config cfg;
  finish(cfg);
  EXPECT_EQ(cfg.threads, 2u);
  EXPECT_EQ(cfg.log_level, spdlog::level::info);
  EXPECT_EQ(cfg.backend.kind, BackendKind::kMemfs);
  EXPECT_EQ(cfg.backend.arg, "");
  EXPECT_EQ(cfg.backend.memfs.capacity_bytes, 1ull << 30);
  EXPECT_EQ(cfg.fuse.mount, "/tmp/dpfs");
  EXPECT_TRUE(cfg.fuse.mount_is_default);
  EXPECT_EQ(cfg.fuse.max_write, 1u << 20);
  EXPECT_FALSE(cfg.fuse.writeback_cache);
}

TEST(Config, EveryKeyFromToml) {
  Config cfg;
  apply_toml(cfg, R"(
threads = 8
log_level = "debug"
[backend]
type = "null"
[backend.memfs]
capacity = "512M"
max_inodes = 1000
[backend.null]
file_size = "2T"
direct_io = true
[fuse]
mount = "/mnt/x"
max_write = "128K"
entry_timeout = 2.5
attr_timeout = 3
writeback_cache = true
)",
             "test.toml");
  finish(cfg);
  EXPECT_EQ(cfg.threads, 8u);
  EXPECT_EQ(cfg.log_level, spdlog::level::debug);
  EXPECT_EQ(cfg.backend.kind, BackendKind::kNull);
  EXPECT_EQ(cfg.backend.memfs.capacity_bytes, 512ull << 20);
  EXPECT_EQ(cfg.backend.memfs.max_inodes, 1000u);
  EXPECT_EQ(cfg.backend.null.file_size, 2ull << 40);
  EXPECT_TRUE(cfg.backend.null.direct_io);
  EXPECT_EQ(cfg.fuse.mount, "/mnt/x");
  EXPECT_FALSE(cfg.fuse.mount_is_default);
  EXPECT_EQ(cfg.fuse.max_write, 128u << 10);
  EXPECT_DOUBLE_EQ(cfg.fuse.entry_timeout, 2.5);
  EXPECT_DOUBLE_EQ(cfg.fuse.attr_timeout, 3.0);
  EXPECT_TRUE(cfg.fuse.writeback_cache);
  // The backend reports the [fuse] timeouts.
  EXPECT_DOUBLE_EQ(cfg.backend.entry_timeout, 2.5);
  EXPECT_DOUBLE_EQ(cfg.backend.attr_timeout, 3.0);
}

TEST(Config, DottedKeysAndInlineTables) {
  Config cfg;
  apply_toml(cfg,
             "fuse.mount = \"/a\"\nbackend = { type = \"null\", null = { file_size = 4096 } }\n",
             "test.toml");
  EXPECT_EQ(cfg.fuse.mount, "/a");
  EXPECT_EQ(cfg.backend.kind, BackendKind::kNull);
  EXPECT_EQ(cfg.backend.null.file_size, 4096u);
}

TEST(Config, EmptyFileKeepsDefaults) {
  EXPECT_EQ(toml_error(""), "");
  EXPECT_EQ(toml_error("# nothing\n[fuse]\n"), "");
}

TEST(Config, UnknownKeysAreRefused) {
  EXPECT_EQ(toml_error("[fuse]\nmountt = \"/x\"\n"), "config test.toml: unknown key 'fuse.mountt'");
  EXPECT_EQ(toml_error("thread = 2\n"), "config test.toml: unknown key 'thread'");
  EXPECT_EQ(toml_error("[backend.memfs]\ncapacity_bytes = 5\n"),
            "config test.toml: unknown key 'backend.memfs.capacity_bytes'");
  EXPECT_EQ(toml_error("[server]\nthreads = 2\n"), "config test.toml: unknown key 'server'");
  EXPECT_EQ(toml_error("[backend.nfs]\nurl = \"x\"\n"),
            "config test.toml: unknown key 'backend.nfs.url'");
  EXPECT_EQ(toml_error("[backend.zfs]\nurl = \"x\"\n"),
            "config test.toml: unknown key 'backend.zfs'");
}

TEST(Config, TablesMustBeTables) {
  EXPECT_EQ(toml_error("fuse = 3\n"), "config test.toml: fuse: must be a table ([fuse])");
  EXPECT_EQ(toml_error("[threads]\n"),
            "config test.toml: threads: expected a single value, got a table");
}

TEST(Config, SyntaxErrorsNameTheLine) {
  const std::string e = toml_error("threads = 2\n[fuse\n");
  EXPECT_THAT(e, HasSubstr("config test.toml:2:"));
}

TEST(Config, Threads) {
  EXPECT_EQ(toml_error("threads = 0\n"),
            "config test.toml: threads: must be between 1 and 256, got 0");
  EXPECT_EQ(toml_error("threads = 257\n"),
            "config test.toml: threads: must be between 1 and 256, got 257");
  EXPECT_EQ(toml_error("threads = -1\n"),
            "config test.toml: threads: must be between 1 and 256, got -1");
  EXPECT_EQ(toml_error("threads = \"four\"\n"),
            "config test.toml: threads: must be an integer, got 'four'");
  EXPECT_EQ(toml_error("threads = 1.5\n"),
            "config test.toml: threads: must be an integer, got a number");
  EXPECT_EQ(toml_error("threads = true\n"),
            "config test.toml: threads: must be an integer, got a boolean");
  EXPECT_EQ(toml_error("threads = [1]\n"),
            "config test.toml: threads: expected a single value, got an array");
  EXPECT_EQ(toml_error("threads = 256\n"), "");
  EXPECT_EQ(toml_error("threads = \"3\"\n"), "");
}

TEST(Config, LogLevel) {
  EXPECT_EQ(toml_error("log_level = \"verbose\"\n"),
            "config test.toml: log_level: must be one of trace, debug, info, warn, error; got "
            "'verbose'");
  EXPECT_EQ(toml_error("log_level = 3\n"),
            "config test.toml: log_level: must be a string, got an integer");
  for (const char* level : {"trace", "debug", "info", "warn", "error"}) {
    Config cfg;
    apply_toml(cfg, std::string("log_level = \"") + level + "\"\n", "t");
    EXPECT_EQ(log_level_name(cfg.log_level), level);
  }
}

TEST(Config, BackendType) {
  EXPECT_EQ(toml_error("[backend]\ntype = \"zfs\"\n"),
            "config test.toml: backend.type: unknown backend 'zfs' (known: memfs, null, nfs, "
            "passthrough, remote, redis)");
  EXPECT_EQ(toml_error("[backend]\ntype = \"nfs://server\"\n"),
            "config test.toml: backend.type: nfs://server: no export path (expected "
            "nfs://SERVER[:PORT]/EXPORT[?version=3])");
  EXPECT_EQ(toml_error("[backend]\ntype = \"\"\n"),
            "config test.toml: backend.type: unknown backend '' (known: memfs, null, nfs, "
            "passthrough, remote, redis)");
  EXPECT_EQ(toml_error("[backend]\ntype = \"memfs:/x\"\n"),
            "config test.toml: backend.type: backend memfs takes no argument, got 'memfs:/x'");
  EXPECT_EQ(toml_error("[backend]\ntype = 1\n"),
            "config test.toml: backend.type: must be a string, got an integer");
}

TEST(Config, BackendSpec) {
  BackendConfig b;
  parse_backend_spec("null", &b);
  EXPECT_EQ(b.kind, BackendKind::kNull);
  EXPECT_EQ(b.arg, "");
  parse_backend_spec("memfs", &b);
  EXPECT_EQ(b.kind, BackendKind::kMemfs);
  parse_backend_spec("passthrough:/srv", &b);
  EXPECT_EQ(b.kind, BackendKind::kPassthrough);
  EXPECT_EQ(b.arg, "/srv");
  EXPECT_THROW(parse_backend_spec("passthrough", &b), std::invalid_argument);
  EXPECT_THROW(parse_backend_spec("null:", &b), std::invalid_argument);
  EXPECT_EQ(backend_type_list(), "memfs, null, nfs, passthrough, remote, redis");
}

TEST(Config, MemfsLimits) {
  EXPECT_EQ(toml_error("[backend.memfs]\ncapacity = \"1X\"\n"),
            "config test.toml: backend.memfs.capacity: must be a size such as 4096, 64K or 1G, "
            "got '1X'");
  EXPECT_EQ(toml_error("[backend.memfs]\ncapacity = 4096\n"),
            "config test.toml: backend.memfs.capacity: must be at least 1M, got 4K");
  EXPECT_EQ(toml_error("[backend.memfs]\ncapacity = -1\n"),
            "config test.toml: backend.memfs.capacity: must be a size, got -1");
  EXPECT_EQ(toml_error("[backend.memfs]\ncapacity = 1.5\n"),
            "config test.toml: backend.memfs.capacity: must be a size (bytes, or a string such "
            "as \"64K\" or \"1G\"), got a number");
  EXPECT_EQ(toml_error("[backend.memfs]\nmax_inodes = 0\n"),
            "config test.toml: backend.memfs.max_inodes: must be at least 1, got 0");
  EXPECT_EQ(toml_error("[backend.memfs]\ncapacity = \"16T\"\nmax_inodes = 10000000\n"), "");
}

TEST(Config, NullLimits) {
  EXPECT_EQ(toml_error("[backend.null]\nfile_size = \"8388608T\"\n"),
            "config test.toml: backend.null.file_size: must be at most 2^63-1 bytes, got "
            "9223372036854775808");
  EXPECT_EQ(toml_error("[backend.null]\nfile_size = 0\n"), "");
  EXPECT_EQ(toml_error("[backend.null]\ndirect_io = \"sometimes\"\n"),
            "config test.toml: backend.null.direct_io: must be true or false, got 'sometimes'");
}

TEST(Config, MaxWrite) {
  EXPECT_EQ(toml_error("[fuse]\nmax_write = \"2M\"\n"),
            "config test.toml: fuse.max_write: must be between 4K and 1M, got 2M");
  EXPECT_EQ(toml_error("[fuse]\nmax_write = 1024\n"),
            "config test.toml: fuse.max_write: must be between 4K and 1M, got 1K");
  EXPECT_EQ(toml_error("[fuse]\nmax_write = 6000\n"),
            "config test.toml: fuse.max_write: must be a multiple of 4K, got 6000");
  EXPECT_EQ(toml_error("[fuse]\nmax_write = \"6K\"\n"),
            "config test.toml: fuse.max_write: must be a multiple of 4K, got 6144");
  EXPECT_EQ(toml_error("[fuse]\nmax_write = \"12K\"\n"), "");  // a multiple of 4K, not a power of 2
  EXPECT_EQ(toml_error("[fuse]\nmax_write = \"4K\"\n"), "");
  EXPECT_EQ(toml_error("[fuse]\nmax_write = \"1M\"\n"), "");
}

TEST(Config, Timeouts) {
  EXPECT_EQ(toml_error("[fuse]\nentry_timeout = -1\n"),
            "config test.toml: fuse.entry_timeout: must be 0 or more seconds, got -1");
  EXPECT_EQ(toml_error("[fuse]\nattr_timeout = nan\n"),
            "config test.toml: fuse.attr_timeout: must be 0 or more seconds, got nan");
  EXPECT_EQ(toml_error("[fuse]\nattr_timeout = inf\n"),
            "config test.toml: fuse.attr_timeout: must be 0 or more seconds, got inf");
  EXPECT_EQ(toml_error("[fuse]\nentry_timeout = \"soon\"\n"),
            "config test.toml: fuse.entry_timeout: must be a number of seconds, got 'soon'");
  EXPECT_EQ(toml_error("[fuse]\nentry_timeout = 0\nattr_timeout = 0.0\n"), "");
}

TEST(Config, MountAndWriteback) {
  EXPECT_EQ(toml_error("[fuse]\nmount = \"\"\n"),
            "config test.toml: fuse.mount: must not be empty");
  EXPECT_EQ(toml_error("[fuse]\nmount = 5\n"),
            "config test.toml: fuse.mount: must be a string, got an integer");
  EXPECT_EQ(toml_error("[fuse]\nwriteback_cache = 1\n"),
            "config test.toml: fuse.writeback_cache: must be true or false, got an integer");
}

TEST(Config, MissingFile) {
  Config cfg;
  try {
    apply_toml_file(cfg, "/nonexistent/dpfs.toml");
    FAIL() << "no error for a missing file";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "config /nonexistent/dpfs.toml: No such file or directory");
  }
}

TEST(Config, FlagsUseTheSameChecks) {
  EXPECT_EQ(flag_error("threads", "0"), "--threads: must be between 1 and 256, got 0");
  EXPECT_EQ(flag_error("threads", "x"), "--threads: must be an integer, got 'x'");
  EXPECT_EQ(flag_error("threads", ""), "--threads: must be an integer, got ''");
  EXPECT_EQ(flag_error("backend.type", "zfs"),
            "--backend: unknown backend 'zfs' (known: memfs, null, nfs, passthrough, remote, "
            "redis)");
  EXPECT_EQ(flag_error("fuse.max_write", "3M"), "--max-write: must be between 4K and 1M, got 3M");
  EXPECT_EQ(flag_error("fuse.entry_timeout", "-0.5"),
            "--entry-timeout: must be 0 or more seconds, got -0.5");
  EXPECT_EQ(flag_error("fuse.writeback_cache", "maybe"),
            "--writeback-cache: must be true or false, got 'maybe'");
  EXPECT_EQ(flag_error("fuse.mount", ""), "--fuse-mount: must not be empty");
}

// The ConfigError that finish() throws after applying `toml`, or "".
std::string finish_error(const std::string& toml) {
  Config cfg;
  try {
    apply_toml(cfg, toml, "test.toml");
    finish(cfg);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

// NFS connections default to one per worker thread, for every backend
// (each worker drives its own); an explicit number stays.
TEST(Config, NfsConnectionsDefaultToOnePerWorker) {
  Config cfg;
  apply_toml(cfg, R"(
threads = 5
[backend]
type = "nfs://server/export"
[[device]]
socket = "/run/a.sock"
backend.type = "nfs://server/export"
[[device]]
socket = "/run/b.sock"
backend.type = "nfs://server/export"
backend.nfs.connections = 3
)",
             "test.toml");
  finish(cfg);
  EXPECT_EQ(cfg.backend.nfs.connections, 5u);
  ASSERT_EQ(cfg.devices.size(), 2u);
  EXPECT_EQ(cfg.devices[0].backend.nfs.connections, 5u);
  EXPECT_EQ(cfg.devices[1].backend.nfs.connections, 3u);
  Config many;
  apply_toml(many, "threads = 100\n", "test.toml");
  finish(many);
  EXPECT_EQ(many.backend.nfs.connections, 64u) << "capped at the most connections allowed";
}

TEST(Config, VhostUserDefaultsToNone) {
  Config cfg;
  finish(cfg);
  EXPECT_TRUE(cfg.devices.empty());
  EXPECT_EQ(cfg.vhost_user.on_disconnect, OnDisconnect::kWait);
  EXPECT_EQ(cfg.fuse.mount, "/tmp/dpfs");  // the default job stays FUSE
}

TEST(Config, VhostUserFromToml) {
  Config cfg;
  apply_toml(cfg, R"(
[backend]
type = "null"
[vhost_user]
socket = "/run/dpfs/vm1.sock"
tag = "vm1fs"
request_queues = 4
poll = true
on_disconnect = "exit"
)",
             "test.toml");
  finish(cfg);
  // Only vhost-user is configured: no FUSE mount.
  EXPECT_EQ(cfg.fuse.mount, "");
  EXPECT_FALSE(cfg.fuse.mount_is_default);
  ASSERT_EQ(cfg.devices.size(), 1u);
  const DeviceConfig& d = cfg.devices[0];
  EXPECT_EQ(d.socket, "/run/dpfs/vm1.sock");
  EXPECT_EQ(d.tag, "vm1fs");
  EXPECT_EQ(d.request_queues, 4u);
  EXPECT_TRUE(d.poll);
  EXPECT_EQ(d.backend.kind, BackendKind::kNull);  // the [vhost_user] device serves [backend]
  EXPECT_EQ(cfg.vhost_user.on_disconnect, OnDisconnect::kExit);
}

TEST(Config, VhostUserAndFuseTogether) {
  Config cfg;
  apply_flag(cfg, "vhost_user.socket", "/tmp/dpfs.sock");
  apply_flag(cfg, "fuse.mount", "/tmp/dpfs");
  finish(cfg);
  EXPECT_EQ(cfg.fuse.mount, "/tmp/dpfs");
  ASSERT_EQ(cfg.devices.size(), 1u);
  EXPECT_EQ(cfg.devices[0].tag, "dpfs");
  EXPECT_EQ(cfg.devices[0].request_queues, 1u);
  EXPECT_FALSE(cfg.devices[0].poll);
}

TEST(Config, VhostUserValues) {
  EXPECT_EQ(flag_error("vhost_user.request_queues", "0"),
            "--request-queues: must be between 1 and 64, got 0");
  EXPECT_EQ(flag_error("vhost_user.request_queues", "65"),
            "--request-queues: must be between 1 and 64, got 65");
  EXPECT_EQ(flag_error("vhost_user.request_queues", "64"), "");
  EXPECT_EQ(flag_error("vhost_user.tag", ""), "--tag: must be 1 to 36 bytes, got 0");
  EXPECT_EQ(flag_error("vhost_user.tag", std::string(37, 'a')),
            "--tag: must be 1 to 36 bytes, got 37");
  EXPECT_EQ(flag_error("vhost_user.tag", std::string(36, 'a')), "");
  EXPECT_EQ(flag_error("vhost_user.tag", "a,b"),
            "--tag: may hold only letters, digits and . _ - :, got 'a,b'");
  EXPECT_EQ(flag_error("vhost_user.socket", ""), "--vhost-user: must not be empty");
  EXPECT_EQ(flag_error("vhost_user.socket", "/" + std::string(107, 's')),
            "--vhost-user: must be at most 107 bytes (sockaddr_un), got 108");
  EXPECT_EQ(flag_error("vhost_user.on_disconnect", "retry"),
            "--on-disconnect: must be wait or exit, got 'retry'");
  EXPECT_EQ(flag_error("vhost_user.poll", "maybe"), "--poll: must be true or false, got 'maybe'");
  EXPECT_EQ(toml_error("[vhost_user]\nrequest_queues = \"x\"\n"),
            "config test.toml: vhost_user.request_queues: must be an integer, got 'x'");
  EXPECT_EQ(toml_error("[vhost_user]\nsockett = \"/x\"\n"),
            "config test.toml: unknown key 'vhost_user.sockett'");
}

TEST(Config, VhostUserOptionsNeedASocket) {
  const std::string want =
      "vhost_user.tag, request_queues and poll (--tag, --request-queues, --poll) need "
      "vhost_user.socket (--vhost-user SOCK)";
  EXPECT_EQ(finish_error("[vhost_user]\ntag = \"x\"\n"), want);
  EXPECT_EQ(finish_error("[vhost_user]\nrequest_queues = 2\n"), want);
  EXPECT_EQ(finish_error("[vhost_user]\npoll = true\n"), want);
  // on_disconnect alone is harmless: it applies to [[device]] tables too.
  EXPECT_EQ(finish_error("[vhost_user]\non_disconnect = \"exit\"\n"), "");
}

TEST(Config, SeveralDevices) {
  Config cfg;
  apply_toml(cfg, R"(
[vhost_user]
socket = "/tmp/main.sock"

[[device]]
socket = "/tmp/a.sock"
tag = "tenant-a"
request_queues = 2
[device.backend]
type = "memfs"
memfs.capacity = "64M"

[[device]]
socket = "/tmp/b.sock"
poll = true
[device.backend]
type = "null"
[device.backend.null]
file_size = "1G"
direct_io = true

[fuse]
entry_timeout = 0.5
)",
             "test.toml");
  finish(cfg);
  EXPECT_EQ(cfg.fuse.mount, "");  // vhost-user only
  ASSERT_EQ(cfg.devices.size(), 3u);
  EXPECT_EQ(cfg.devices[0].socket, "/tmp/main.sock");
  EXPECT_EQ(cfg.devices[0].backend.kind, BackendKind::kMemfs);

  const DeviceConfig& a = cfg.devices[1];
  EXPECT_EQ(a.socket, "/tmp/a.sock");
  EXPECT_EQ(a.tag, "tenant-a");
  EXPECT_EQ(a.request_queues, 2u);
  EXPECT_FALSE(a.poll);
  EXPECT_EQ(a.backend.kind, BackendKind::kMemfs);
  EXPECT_EQ(a.backend.memfs.capacity_bytes, 64ull << 20);
  EXPECT_DOUBLE_EQ(a.backend.entry_timeout, 0.5);

  const DeviceConfig& b = cfg.devices[2];
  EXPECT_EQ(b.socket, "/tmp/b.sock");
  EXPECT_EQ(b.tag, "dpfs");
  EXPECT_EQ(b.request_queues, 1u);
  EXPECT_TRUE(b.poll);
  EXPECT_EQ(b.backend.kind, BackendKind::kNull);
  EXPECT_EQ(b.backend.null.file_size, 1ull << 30);
  EXPECT_TRUE(b.backend.null.direct_io);
  // A device's backend starts from the defaults, not from [backend].
  EXPECT_EQ(b.backend.memfs.capacity_bytes, 1ull << 30);
}

TEST(Config, PollBudgetIsMicrosecondsWithinBounds) {
  Config cfg;
  EXPECT_EQ(cfg.vhost_user.poll_budget_us, DeviceConfig::kDefaultPollBudgetUs);
  apply_toml(cfg, "[vhost_user]\nsocket = \"/s\"\npoll_budget = 0\n", "test.toml");
  apply_flag(cfg, "vhost_user.poll_budget", "200");
  finish(cfg);
  ASSERT_EQ(cfg.devices.size(), 1u);
  EXPECT_EQ(cfg.devices[0].poll_budget_us, 200u);
  EXPECT_THROW(apply_flag(cfg, "vhost_user.poll_budget", "10001"), ConfigError);
  EXPECT_THROW(apply_flag(cfg, "vhost_user.poll_budget", "-1"), ConfigError);
}

TEST(Config, DeviceErrors) {
  EXPECT_EQ(toml_error("[[device]]\ntag = \"x\"\n"),
            "config test.toml: device[0]: socket is required");
  EXPECT_EQ(
      toml_error("[[device]]\nsocket = \"/a\"\nfoo = 1\n"),
      "config test.toml: unknown key 'device[0].foo' (a device has socket, tag, "
      "request_queues, poll, poll_budget, socket_group, [device.backend] and [device.policy])");
  EXPECT_EQ(
      toml_error("[[device]]\nsocket = \"/a\"\non_disconnect = \"exit\"\n"),
      "config test.toml: unknown key 'device[0].on_disconnect' (a device has socket, tag, "
      "request_queues, poll, poll_budget, socket_group, [device.backend] and [device.policy])");
  EXPECT_EQ(toml_error("[[device]]\nsocket = \"/a\"\n[[device]]\nsocket = \"/b\"\n"
                       "request_queues = 0\n"),
            "config test.toml: device[1].request_queues: must be between 1 and 64, got 0");
  EXPECT_EQ(toml_error("[[device]]\nsocket = \"/a\"\n[device.backend]\ntype = \"zfs\"\n"),
            "config test.toml: device[0].backend.type: unknown backend 'zfs' (known: memfs, null, "
            "nfs, passthrough, remote, redis)");
  EXPECT_EQ(toml_error("[[device]]\nsocket = \"/a\"\n[device.backend.memfs]\ncap = 1\n"),
            "config test.toml: unknown key 'device[0].backend.memfs.cap'");
  EXPECT_EQ(toml_error("[[device]]\nsocket = \"/a\"\nbackend = 3\n"),
            "config test.toml: device[0].backend: must be a table ([device.backend])");
  EXPECT_EQ(toml_error("device = 3\n"),
            "config test.toml: device: must be an array of tables ([[device]])");
  EXPECT_EQ(toml_error("device = [1, 2]\n"),
            "config test.toml: device: must be an array of tables ([[device]])");
  EXPECT_EQ(finish_error("[vhost_user]\nsocket = \"/a\"\n[[device]]\nsocket = \"/a\"\n"),
            "two vhost-user devices on one socket: /a");
}

TEST(Config, FlagsOverrideTheFile) {
  Config cfg;
  apply_toml(cfg, "threads = 4\n[fuse]\nmount = \"/from/file\"\nwriteback_cache = true\n", "t");
  apply_flag(cfg, "threads", "8");
  apply_switch(cfg, "fuse.writeback_cache", false);
  finish(cfg);
  EXPECT_EQ(cfg.threads, 8u);
  EXPECT_EQ(cfg.fuse.mount, "/from/file");
  EXPECT_FALSE(cfg.fuse.writeback_cache);
}

TEST(Config, EverySettingHasAFlagAndHelp) {
  for (const SettingInfo& s : settings()) {
    EXPECT_TRUE(s.flag.starts_with("--")) << s.key;
    EXPECT_FALSE(s.help.empty()) << s.key;
    EXPECT_FALSE(s.value_name.empty()) << s.key;
  }
}

// Every "(default X)" that --help states is what Config{} holds: setting X
// changes nothing. (The defaults live in config.h; the help states them.)
TEST(Config, TheDefaultsTheHelpStatesAreTheDefaults) {
  // Stated in words, not as a value to set: the build's (a sanitized build
  // logs where the release build kills, and runs unsandboxed), and the
  // mount point finish() applies only when no transport is configured.
  const std::set<std::string_view> described = {"sandbox.seccomp", "sandbox.mode", "fuse.mount"};
  int checked = 0;
  for (const SettingInfo& s : settings()) {
    const size_t at = s.help.rfind("default ");
    if (at == std::string_view::npos || described.count(s.key) != 0) continue;
    const std::string_view rest = s.help.substr(at + std::string_view("default ").size());
    const std::string value(rest.substr(0, rest.find_first_of(");,:")));
    Config cfg;
    if (s.is_switch()) {
      ASSERT_TRUE(value == "true" || value == "false") << s.flag << ": default " << value;
      apply_switch(cfg, s.key, value == "true");
    } else {
      ASSERT_NO_THROW(apply_flag(cfg, s.key, value)) << s.flag << ": default " << value;
    }
    EXPECT_TRUE(cfg == Config{}) << s.flag << ": --help says the default is " << value
                                 << ", which is not what Config holds";
    ++checked;
  }
  EXPECT_GE(checked, 30);
}

// docs/ beside tests/: the example must parse and mention every setting, and
// the reference must explain every key.
std::filesystem::path docs_dir() {
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "docs";
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(Docs, ExampleConfigParsesAndHasEverySetting) {
  const std::filesystem::path example = docs_dir() / "dpfs.example.toml";
  Config cfg;
  ASSERT_NO_THROW(apply_toml_file(cfg, example.string()));
  finish(cfg);
  // Its values are the defaults, every one of them: the release build's (a
  // sanitized build's sandbox defaults differ; config.h).
  Config defaults;
  finish(defaults);
#ifdef DPFS_SANITIZED
  cfg.sandbox.mode = defaults.sandbox.mode;
  cfg.sandbox.seccomp = defaults.sandbox.seccomp;
#endif
  EXPECT_TRUE(cfg == defaults) << "docs/dpfs.example.toml sets something to other than its default";

  const std::string text = read_file(example);
  for (const SettingInfo& s : settings()) {
    const std::string_view name = s.key.substr(s.key.rfind('.') + 1);
    EXPECT_NE(text.find(std::string(name) + " = "), std::string::npos) << s.key;
    EXPECT_NE(text.find("flag: " + std::string(s.flag)), std::string::npos) << s.flag;
  }
}

TEST(Docs, ReferenceExplainsEverySetting) {
  const std::string text = read_file(docs_dir() / "configuration.md");
  ASSERT_FALSE(text.empty());
  for (const SettingInfo& s : settings()) {
    EXPECT_NE(text.find("`" + std::string(s.key) + "`"), std::string::npos) << s.key;
    EXPECT_NE(text.find("`" + std::string(s.flag) + "`"), std::string::npos) << s.flag;
  }
}

TEST(Size, Parse) {
  EXPECT_EQ(parse_size("0"), 0u);
  EXPECT_EQ(parse_size("4096"), 4096u);
  EXPECT_EQ(parse_size("4K"), 4096u);
  EXPECT_EQ(parse_size("4k"), 4096u);
  EXPECT_EQ(parse_size("3M"), 3u << 20);
  EXPECT_EQ(parse_size("1G"), 1ull << 30);
  EXPECT_EQ(parse_size("1T"), 1ull << 40);
  EXPECT_EQ(parse_size("16777215T"), 16777215ull << 40);
  for (const char* bad : {"", "K", "1.5G", "1GB", "1KiB", "-1", " 1", "1 ", "1P", "0x10",
                          "16777216T", "99999999999999999999"}) {
    EXPECT_THROW(parse_size(bad), std::invalid_argument) << bad;
  }
}

TEST(Size, Format) {
  EXPECT_EQ(format_size(0), "0");
  EXPECT_EQ(format_size(1000), "1000");
  EXPECT_EQ(format_size(4096), "4K");
  EXPECT_EQ(format_size(6144), "6K");
  EXPECT_EQ(format_size(1ull << 20), "1M");
  EXPECT_EQ(format_size(3ull << 30), "3G");
  EXPECT_EQ(format_size(2ull << 40), "2T");
  EXPECT_EQ(format_size((1ull << 30) + 1), "1073741825");
}

}  // namespace
}  // namespace dpfs::daemon
