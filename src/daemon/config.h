// The daemon's settings: defaults, a TOML file, command-line flags.
//
// Every setting has one dotted key ("fuse.max_write") under which it appears
// in the TOML file and one flag ("--max-write"). Both routes go through the
// same parser and the same checks, so a value is refused with the same
// reason whichever way it came. Precedence: defaults, then the file, then
// the flags. Unknown keys are refused, never ignored: a typo must not
// silently leave a default in place.
//
// Start-up only; nothing here is used once the daemon serves. Errors are
// ConfigError exceptions whose message is one line for the operator.
#pragma once

#include <spdlog/common.h>

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "backend/factory.h"
#include "backend/policy.h"
#include "sandbox/namespace.h"
#include "sandbox/seccomp.h"
#include "transport/fuse_uring_mode.h"

namespace dpfs::daemon {

// A setting refused, with the key (or flag) and the reason:
// "config /etc/dpfs.toml: threads: must be between 1 and 256, got 0".
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct FuseConfig {
  // Where to mount; empty: the default job's mount point (kDefaultMount).
  std::string mount;
  // Set by finish() when `mount` is the default: then it is created if missing.
  bool mount_is_default = false;
  uint32_t max_write = 1u << 20;
  double entry_timeout = 1.0;
  double attr_timeout = 1.0;
  bool writeback_cache = false;
  bool xattr = true;
  // The mount is nosuid,nodev unless these are set: set-user-ID files and
  // device nodes the tenant made must not work on this host through it.
  bool allow_suid = false;
  bool allow_dev = false;
  // FUSE over io_uring where the kernel offers it (transport/fuse_uring.h).
  transport::FuseUringMode io_uring = transport::FuseUringMode::kAuto;
  // FUSE passthrough: the kernel reads and writes the passthrough backend's
  // open files itself (Linux 6.9+, as root, writeback cache off).
  bool passthrough = true;
  bool operator==(const FuseConfig&) const = default;
};

// What the daemon does when a vhost-user front-end (QEMU) goes away.
enum class OnDisconnect {
  kWait,  // accept the next front-end on the same socket; the backend keeps its data
  kExit,  // stop serving that device; the daemon exits 0 once every transport is done
};

// One virtio-fs device over vhost-user: a tenant. Each has its own socket,
// FUSE session and backend instance (two memfs devices are two file systems).
struct DeviceConfig {
  static constexpr uint32_t kMinRequestQueues = 1;
  static constexpr uint32_t kMaxRequestQueues = 64;
  // virtio 1.2 §5.11.4: the tag field of the device configuration is 36 bytes.
  static constexpr size_t kMaxTagLength = 36;
  static constexpr const char* kDefaultTag = "dpfs";

  std::string socket;  // the vhost-user socket path, created by dpfs
  std::string tag = kDefaultTag;
  // "vhost-user TAG (SOCKET)": how logs, statistics and the supervisor
  // name this device.
  std::string name() const;
  uint32_t request_queues = 1;
  bool poll = false;
  // Adaptive polling (vhost_user::VirtioFsDeviceOptions::poll_budget_us).
  static constexpr uint32_t kMaxPollBudgetUs = 10000;
  static constexpr uint32_t kDefaultPollBudgetUs = 50;
  uint32_t poll_budget_us = kDefaultPollBudgetUs;
  // The group that owns the socket (mode 0660), or -1: root's, mode 0600.
  int64_t socket_gid = -1;
  BackendConfig backend;
  // The tenant's host policy: the top-level [policy], with the device's own
  // [device.policy] keys over it (resolved by finish()).
  HostPolicy policy;
  // [device.policy] as given: (key under "policy.", value as text).
  std::vector<std::pair<std::string, std::string>> policy_overrides;
  bool operator==(const DeviceConfig&) const = default;
};

// The [vhost_user] table and its flags: one device served with the
// top-level [backend], plus what applies to every device.
struct VhostUserConfig {
  std::string socket;  // empty: no [vhost_user] device
  std::string tag = DeviceConfig::kDefaultTag;
  uint32_t request_queues = 1;
  bool poll = false;
  uint32_t poll_budget_us = DeviceConfig::kDefaultPollBudgetUs;
  int64_t socket_gid = -1;                           // --socket-group, resolved to a gid; -1: none
  OnDisconnect on_disconnect = OnDisconnect::kWait;  // every device
  bool operator==(const VhostUserConfig&) const = default;
};

// The remote transport (docs/remote-wire-format.md): a server listening for
// remote devices, and what a device with backend remote://HOST:PORT uses.
struct RemoteConfig {
  static constexpr unsigned kMaxConnections = 64;
  std::string listen;       // "tcp://ADDR:PORT"; empty: no listener
  std::string secret_file;  // empty: no shared secret (loopback only)
  // TLS with certificates on both ends (PEM files): all three or none.
  std::string tls_cert, tls_key, tls_ca;
  unsigned connections = 2;     // per remote device
  double timeout = 30.0;        // seconds a request may wait for its reply
  double session_grace = 60.0;  // a server ends a session whose device is gone this long
  // A server: how long a handshake may take, how many at once, from one address.
  double handshake_timeout = 2.0;
  unsigned max_handshakes = 64;
  unsigned max_handshakes_per_address = 8;
  bool operator==(const RemoteConfig&) const = default;
};

// A sanitized build's runtime needs what the sandbox takes away: it makes
// system calls of its own that the allow-list does not have, and
// LeakSanitizer reads /proc/PID/task (which the namespace's root does not
// have) and ptrace-attaches to every thread at exit. There a call outside
// the list is logged by the kernel, not fatal, and the process keeps the
// host's view (capabilities are still dropped, no_new_privs still set).
// The release build's tests run the real sandbox.
#ifdef DPFS_SANITIZED
inline constexpr sandbox::SeccompAction kDefaultSeccomp = sandbox::SeccompAction::kLog;
inline constexpr sandbox::SandboxMode kDefaultSandboxMode = sandbox::SandboxMode::kNone;
#else
inline constexpr sandbox::SeccompAction kDefaultSeccomp = sandbox::SeccompAction::kKill;
inline constexpr sandbox::SandboxMode kDefaultSandboxMode = sandbox::SandboxMode::kNamespace;
#endif

// The sandbox every serving process enters (src/sandbox/sandbox.h).
struct SandboxConfig {
  sandbox::SandboxMode mode = kDefaultSandboxMode;
  sandbox::SeccompAction seccomp = kDefaultSeccomp;
  // With vhost-user devices: a supervisor process and one serving process
  // for each device, the FUSE mount and the remote listener (daemon/
  // supervisor.h). false: one process serves everything.
  bool per_device_processes = true;
  bool operator==(const SandboxConfig&) const = default;
};

struct Config {
  static constexpr unsigned kMinThreads = 1;
  static constexpr unsigned kMaxThreads = 256;
  // The mount point when none is given; created if missing.
  static constexpr const char* kDefaultMount = "/tmp/dpfs";

  unsigned threads = 2;
  spdlog::level::level_enum log_level = spdlog::level::info;
  std::string stats_socket;  // empty: none
  // Each device's share of the process's descriptor limit (daemon/fd_limits.h);
  // 0: the limit, less a reserve, divided equally.
  uint64_t max_fds_per_device = 0;
  BackendConfig backend;
  // fuse.mount is empty after finish() when only vhost-user devices are
  // configured: then there is no FUSE mount.
  FuseConfig fuse;
  VhostUserConfig vhost_user;
  RemoteConfig remote;
  // [policy]: what tenants may do to this host (backend/policy.h). The FUSE
  // mount, the remote server and every device without [device.policy] use it.
  HostPolicy policy;
  SandboxConfig sandbox;
  // Every vhost-user device: after finish(), the [vhost_user] one (if a
  // socket is set) first, then the [[device]] tables in file order.
  std::vector<DeviceConfig> devices;
  bool operator==(const Config&) const = default;
};

// One setting: its key in the TOML file, its flag, and what it means.
struct SettingInfo {
  std::string_view key;         // "fuse.max_write"
  std::string_view flag;        // "--max-write"
  std::string_view value_name;  // "SIZE", for --help; "BOOL" for a switch
  std::string_view help;

  // A boolean, given as --flag / --no-flag on the command line.
  bool is_switch() const { return value_name == "BOOL"; }
  // A list: the flag may be given again and each adds to it ("RULE...").
  bool is_repeated() const { return value_name.ends_with("..."); }
};
std::span<const SettingInfo> settings();

// Applies a TOML document to `cfg`. `source` names it in errors
// ("config FILE: ..."). Throws ConfigError.
void apply_toml(Config& cfg, std::string_view text, std::string_view source);
// Reads and applies a TOML file. Throws ConfigError.
void apply_toml_file(Config& cfg, const std::string& path);
// Applies one flag's value to the setting `key` (a SettingInfo::key).
// Errors name the flag: "--threads: must be between 1 and 256, got 0".
void apply_flag(Config& cfg, std::string_view key, std::string_view value);
// Sets a boolean setting from a flag without a value (--writeback-cache,
// --no-writeback-cache).
void apply_switch(Config& cfg, std::string_view key, bool value);

// Checks what no single setting can: a backend's argument, for one; two
// devices on one socket; vhost-user options without a socket. Adds the
// [vhost_user] device to `devices`. Fills in the default mount point when
// neither a mount nor a vhost-user socket is configured. Throws ConfigError.
void finish(Config& cfg);

// "1G" -> 1073741824. A size is a number of bytes, optionally followed by
// K, M, G or T (powers of 1024, either case). Throws std::invalid_argument
// with the reason.
uint64_t parse_size(std::string_view text);
// 1073741824 -> "1G": the largest exact unit, for logs.
std::string format_size(uint64_t bytes);

std::string_view log_level_name(spdlog::level::level_enum level);

}  // namespace dpfs::daemon
