#include "daemon/config.h"

#include <fmt/format.h>
#include <grp.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <variant>

#include "remote/wire.h"
#include "util/size.h"

namespace dpfs::daemon {
namespace {

// A value as given: typed from TOML, always a string from a flag. Each
// setting accepts the forms that make sense for it ("1G" and 1073741824).
using Value = std::variant<int64_t, double, bool, std::string>;

std::string_view kind_of(const Value& v) {
  switch (v.index()) {
    case 0:
      return "an integer";
    case 1:
      return "a number";
    case 2:
      return "a boolean";
    default:
      return "a string";
  }
}

[[noreturn]] void refuse(const std::string& reason) { throw std::invalid_argument(reason); }

// A value as a flag would give it: every setting takes its text.
std::string value_text(const Value& v) {
  if (const auto* i = std::get_if<int64_t>(&v)) return std::to_string(*i);
  if (const auto* d = std::get_if<double>(&v)) return fmt::format("{}", *d);
  if (const auto* b = std::get_if<bool>(&v)) return *b ? "true" : "false";
  return std::get<std::string>(v);
}

int64_t as_integer(const Value& v) {
  if (const auto* i = std::get_if<int64_t>(&v)) return *i;
  if (const auto* s = std::get_if<std::string>(&v)) {
    int64_t n = 0;
    const auto [end, ec] = std::from_chars(s->data(), s->data() + s->size(), n);
    if (ec == std::errc() && end == s->data() + s->size() && !s->empty()) return n;
    refuse(fmt::format("must be an integer, got '{}'", *s));
  }
  refuse(fmt::format("must be an integer, got {}", kind_of(v)));
}

uint64_t as_size(const Value& v) {
  if (const auto* i = std::get_if<int64_t>(&v)) {
    if (*i < 0) refuse(fmt::format("must be a size, got {}", *i));
    return uint64_t(*i);
  }
  if (const auto* s = std::get_if<std::string>(&v)) return parse_size(*s);
  refuse(fmt::format("must be a size (bytes, or a string such as \"64K\" or \"1G\"), got {}",
                     kind_of(v)));
}

double as_seconds(const Value& v) {
  double d = 0;
  if (const auto* f = std::get_if<double>(&v)) {
    d = *f;
  } else if (const auto* i = std::get_if<int64_t>(&v)) {
    d = double(*i);
  } else if (const auto* s = std::get_if<std::string>(&v)) {
    const auto [end, ec] = std::from_chars(s->data(), s->data() + s->size(), d);
    if (ec != std::errc() || end != s->data() + s->size() || s->empty()) {
      refuse(fmt::format("must be a number of seconds, got '{}'", *s));
    }
  } else {
    refuse(fmt::format("must be a number of seconds, got {}", kind_of(v)));
  }
  if (!std::isfinite(d) || d < 0) refuse(fmt::format("must be 0 or more seconds, got {}", d));
  return d;
}

bool as_bool(const Value& v) {
  if (const auto* b = std::get_if<bool>(&v)) return *b;
  if (const auto* s = std::get_if<std::string>(&v)) {
    if (*s == "true" || *s == "yes" || *s == "on" || *s == "1") return true;
    if (*s == "false" || *s == "no" || *s == "off" || *s == "0") return false;
    refuse(fmt::format("must be true or false, got '{}'", *s));
  }
  refuse(fmt::format("must be true or false, got {}", kind_of(v)));
}

// A host uid or gid: 0..2^32-2 ((uid_t)-1 means "unchanged" to the kernel).
int64_t as_id(const Value& v) {
  const int64_t n = as_integer(v);
  if (n < 0 || n >= int64_t(UINT32_MAX)) refuse(fmt::format("must be 0 to 4294967294, got {}", n));
  return n;
}

const std::string& as_string(const Value& v) {
  if (const auto* s = std::get_if<std::string>(&v)) return *s;
  refuse(fmt::format("must be a string, got {}", kind_of(v)));
}

// A file name: a string, not empty.
const std::string& non_empty_string(const Value& v) {
  const std::string& s = as_string(v);
  if (s.empty()) refuse("must not be empty");
  return s;
}

constexpr std::array<std::pair<std::string_view, spdlog::level::level_enum>, 5> kLogLevels{{
    {"trace", spdlog::level::trace},
    {"debug", spdlog::level::debug},
    {"info", spdlog::level::info},
    {"warn", spdlog::level::warn},
    {"error", spdlog::level::err},
}};

constexpr uint64_t kPage = 4096;
constexpr uint64_t kMinMaxWrite = uint64_t(4) << 10;
constexpr uint64_t kMaxMaxWrite = uint64_t(1) << 20;  // 256 pages: the kernel's FUSE_MAX_MAX_PAGES
constexpr uint64_t kMinMemfsCapacity = uint64_t(1) << 20;
constexpr uint64_t kMaxFileSize = uint64_t(INT64_MAX);  // loff_t
constexpr size_t kMaxSocketPath = 107;
constexpr uint32_t kMaxConnections = 64;

// A unix socket's path: sockaddr_un::sun_path holds 108 bytes with the
// terminating NUL.
std::string as_socket_path(const Value& v) {
  const std::string& s = as_string(v);
  if (s.empty()) refuse("must not be empty");
  if (s.find('\0') != std::string::npos) refuse("must not contain NUL");
  if (s.size() > kMaxSocketPath) {
    refuse(fmt::format("must be at most {} bytes (sockaddr_un), got {}", kMaxSocketPath, s.size()));
  }
  return s;
}

uint64_t as_nfs_io_size(const Value& v) {
  const uint64_t n = as_size(v);
  if (n < 4096 || n > (uint64_t(1) << 20)) {
    refuse(fmt::format("must be between 4K and 1M, got {}", format_size(n)));
  }
  return n;
}

// A group name or number: the gid.
int64_t as_group(const Value& v) {
  if (std::get_if<int64_t>(&v) != nullptr) return as_id(v);
  const std::string& s = as_string(v);
  if (s.empty()) refuse("must not be empty");
  if (std::all_of(s.begin(), s.end(), [](char c) { return std::isdigit((unsigned char)c); })) {
    return as_id(v);
  }
  std::vector<char> buf(16384);
  group grp{};
  group* found = nullptr;
  const int e = ::getgrnam_r(s.c_str(), &grp, buf.data(), buf.size(), &found);
  if (e != 0) refuse(fmt::format("cannot look up group '{}': {}", s, std::strerror(e)));
  if (found == nullptr) refuse(fmt::format("no group named '{}'", s));
  return int64_t(found->gr_gid);
}

struct Setting {
  SettingInfo info;
  void (*set)(Config& cfg, const Value& v);
};

// The order here is the order of --help and of docs/configuration.md.
const Setting kSettings[] = {
    {{"threads", "--threads", "N", "worker threads serving requests (1..256; default 2)"},
     [](Config& cfg, const Value& v) {
       const int64_t n = as_integer(v);
       if (n < int64_t(Config::kMinThreads) || n > int64_t(Config::kMaxThreads)) {
         refuse(fmt::format("must be between {} and {}, got {}", Config::kMinThreads,
                            Config::kMaxThreads, n));
       }
       cfg.threads = unsigned(n);
     }},
    {{"log_level", "--log-level", "LEVEL", "trace, debug, info, warn or error (default info)"},
     [](Config& cfg, const Value& v) {
       const std::string& s = as_string(v);
       for (const auto& [name, level] : kLogLevels) {
         if (s == name) {
           cfg.log_level = level;
           return;
         }
       }
       refuse(fmt::format("must be one of trace, debug, info, warn, error; got '{}'", s));
     }},
    {{"stats_socket", "--stats-socket", "PATH",
      "answer `dpfs stats PATH` with live statistics on this unix socket (default: none)"},
     [](Config& cfg, const Value& v) { cfg.stats_socket = as_socket_path(v); }},
    {{"max_fds_per_device", "--max-fds-per-device", "N",
      "descriptors one device's backend may hold for its tenant (passthrough: open files and "
      "cached inodes); past it the tenant gets EMFILE, its neighbours do not (default 0: the "
      "process limit, raised to its hard limit, less a reserve, divided between the devices)"},
     [](Config& cfg, const Value& v) {
       const int64_t n = as_integer(v);
       if (n != 0 && (n < 16 || n > (int64_t(1) << 24))) {
         refuse(fmt::format("must be 0 or between 16 and 16777216, got {}", n));
       }
       cfg.max_fds_per_device = uint64_t(n);
     }},
    {{"sandbox.mode", "--sandbox", "namespace|chroot|none",
      "what of the host the serving process sees: its own mount namespace whose root is the "
      "shared directory (an empty one for other backends), a chroot into it, or everything "
      "(default namespace; none in a sanitized build)"},
     [](Config& cfg, const Value& v) {
       cfg.sandbox.mode = sandbox::parse_sandbox_mode(as_string(v));
     }},
    {{"sandbox.seccomp", "--seccomp", "kill|log|none",
      "a system call outside the serving process's allow-list kills it, is logged by the "
      "kernel (audit), or is allowed (default kill; log in a sanitized build)"},
     [](Config& cfg, const Value& v) {
       cfg.sandbox.seccomp = sandbox::parse_seccomp_action(as_string(v));
     }},
    {{"sandbox.processes", "--processes", "per-device|single",
      "per-device: each vhost-user device, the FUSE mount and the remote listener are served "
      "by a sandboxed process of their own, started (and restarted after a crash) by a "
      "supervisor; single: one process serves them all (default per-device)"},
     [](Config& cfg, const Value& v) {
       const std::string mode = as_string(v);
       if (mode != "per-device" && mode != "single") {
         refuse(fmt::format("must be per-device or single, got '{}'", mode));
       }
       cfg.sandbox.per_device_processes = mode == "per-device";
     }},
    {{"backend.type", "--backend", "TYPE[:ARG]", "the file system to serve (default memfs)"},
     [](Config& cfg, const Value& v) { parse_backend_spec(as_string(v), &cfg.backend); }},
    {{"backend.memfs.capacity", "--memfs-capacity", "SIZE",
      "memfs: bytes of file data it may hold (default 1G)"},
     [](Config& cfg, const Value& v) {
       const uint64_t n = as_size(v);
       if (n < kMinMemfsCapacity) {
         refuse(fmt::format("must be at least {}, got {}", format_size(kMinMemfsCapacity),
                            format_size(n)));
       }
       cfg.backend.memfs.capacity_bytes = n;
     }},
    {{"backend.memfs.max_inodes", "--memfs-max-inodes", "N",
      "memfs: most files, directories and links it may hold (default 1048576)"},
     [](Config& cfg, const Value& v) {
       const int64_t n = as_integer(v);
       if (n < 1) refuse(fmt::format("must be at least 1, got {}", n));
       cfg.backend.memfs.max_inodes = uint64_t(n);
     }},
    {{"backend.null.file_size", "--null-file-size", "SIZE",
      "null: size of its one file, \"zero\" (default 1T)"},
     [](Config& cfg, const Value& v) {
       const uint64_t n = as_size(v);
       if (n > kMaxFileSize) refuse(fmt::format("must be at most 2^63-1 bytes, got {}", n));
       cfg.backend.null.file_size = n;
     }},
    {{"backend.null.direct_io", "--null-direct-io", "BOOL",
      "null: open \"zero\" with FOPEN_DIRECT_IO, bypassing the page cache (default false)"},
     [](Config& cfg, const Value& v) { cfg.backend.null.direct_io = as_bool(v); }},
    {{"backend.nfs.connections", "--nfs-connections", "N",
      "nfs: TCP connections to the server (1..64; default: one per worker thread). Each worker "
      "drives one from its own event loop; connections no worker takes get a loop thread"},
     [](Config& cfg, const Value& v) {
       const int64_t n = as_integer(v);
       if (n < 1 || n > kMaxConnections) {
         refuse(fmt::format("must be between 1 and {}, got {}", kMaxConnections, n));
       }
       cfg.backend.nfs.connections = uint32_t(n);
     }},
    {{"backend.redis.connections", "--redis-connections", "N",
      "redis: connections to each server (1..64; default: one per worker thread). Each worker "
      "drives one lane of them from its own event loop; lanes no worker takes get a loop thread"},
     [](Config& cfg, const Value& v) {
       const int64_t n = as_integer(v);
       if (n < 1 || n > kMaxConnections) {
         refuse(fmt::format("must be between 1 and {}, got {}", kMaxConnections, n));
       }
       cfg.backend.redis.connections = uint32_t(n);
     }},
    {{"backend.nfs.timeout", "--nfs-timeout", "SECONDS",
      "nfs: how long a request may wait for the server, reconnects and retries included, before "
      "the tenant gets ETIMEDOUT (1..3600; default 30)"},
     [](Config& cfg, const Value& v) {
       const double s = as_seconds(v);
       if (s < 1 || s > 3600) refuse(fmt::format("must be between 1 and 3600 seconds, got {}", s));
       cfg.backend.nfs.timeout = s;
     }},
    {{"backend.nfs.rsize", "--nfs-rsize", "SIZE",
      "nfs: largest READ sent, capped by the server's (4K..1M; default 1M)"},
     [](Config& cfg, const Value& v) { cfg.backend.nfs.rsize = as_nfs_io_size(v); }},
    {{"backend.nfs.wsize", "--nfs-wsize", "SIZE",
      "nfs: largest WRITE sent, capped by the server's (4K..1M; default 1M)"},
     [](Config& cfg, const Value& v) { cfg.backend.nfs.wsize = as_nfs_io_size(v); }},
    {{"backend.nfs.max_unstable", "--nfs-max-unstable", "SIZE",
      "nfs: bytes of UNSTABLE writes kept until COMMIT to be sent again if the server restarts; "
      "past it writes are FILE_SYNC (default 64M)"},
     [](Config& cfg, const Value& v) { cfg.backend.nfs.max_unstable = as_size(v); }},
    {{"backend.passthrough.read_only", "--passthrough-read-only", "BOOL",
      "passthrough: serve DIR read-only; changes answer EROFS (default false)"},
     [](Config& cfg, const Value& v) { cfg.backend.passthrough.read_only = as_bool(v); }},
    {{"backend.passthrough.cache", "--passthrough-cache", "none|auto|always",
      "passthrough: none: no caching (direct I/O, timeouts 0); auto: the fuse timeouts; always: "
      "keep the page cache, timeouts of a day (default auto)"},
     [](Config& cfg, const Value& v) {
       const std::string& s = as_string(v);
       if (s == "none") {
         cfg.backend.passthrough.cache = CachePolicy::kNone;
       } else if (s == "auto") {
         cfg.backend.passthrough.cache = CachePolicy::kAuto;
       } else if (s == "always") {
         cfg.backend.passthrough.cache = CachePolicy::kAlways;
       } else {
         refuse(fmt::format("must be none, auto or always, got '{}'", s));
       }
     }},
    {{"backend.passthrough.max_fds", "--passthrough-max-fds", "N",
      "passthrough: host descriptors cached for inodes, and files open at once (default 8192)"},
     [](Config& cfg, const Value& v) {
       const int64_t n = as_integer(v);
       if (n < 16 || n > (int64_t(1) << 24)) {
         refuse(fmt::format("must be between 16 and 16777216, got {}", n));
       }
       cfg.backend.passthrough.max_fds = uint64_t(n);
     }},
    {{"backend.passthrough.io_uring", "--passthrough-io-uring", "auto|on|always|off",
      "passthrough: READ/WRITE/FSYNC/FALLOCATE through io_uring when they would wait, at once "
      "when they need not (on), every one through io_uring (always), system calls (off), or "
      "on except on tmpfs, where io_uring cannot complete reads inline (default auto)"},
     [](Config& cfg, const Value& v) {
       const std::string& s = as_string(v);
       if (s == "auto") {
         cfg.backend.passthrough.io_uring = UringMode::kAuto;
       } else if (s == "on") {
         cfg.backend.passthrough.io_uring = UringMode::kOn;
       } else if (s == "always") {
         cfg.backend.passthrough.io_uring = UringMode::kAlways;
       } else if (s == "off") {
         cfg.backend.passthrough.io_uring = UringMode::kOff;
       } else {
         refuse(fmt::format("must be auto, on, always or off, got '{}'", s));
       }
     }},
    {{"backend.passthrough.squash_uid", "--passthrough-squash-uid", "UID",
      "passthrough: create files and check access as this host uid, whoever the tenant is "
      "(default: the tenant's uid)"},
     [](Config& cfg, const Value& v) { cfg.backend.passthrough.squash_uid = as_id(v); }},
    {{"backend.passthrough.squash_gid", "--passthrough-squash-gid", "GID",
      "passthrough: likewise for the gid (default: the tenant's gid)"},
     [](Config& cfg, const Value& v) { cfg.backend.passthrough.squash_gid = as_id(v); }},
    {{"fuse.mount", "--fuse-mount", "DIR",
      "mount point of the FUSE file system (default /tmp/dpfs, created if missing)"},
     [](Config& cfg, const Value& v) {
       const std::string& s = as_string(v);
       if (s.empty()) refuse("must not be empty");
       if (s.find('\0') != std::string::npos) refuse("must not contain NUL");
       cfg.fuse.mount = s;
     }},
    {{"fuse.max_write", "--max-write", "SIZE",
      "largest READ/WRITE payload, 4K..1M in whole 4K pages (default 1M)"},
     [](Config& cfg, const Value& v) {
       const uint64_t n = as_size(v);
       if (n < kMinMaxWrite || n > kMaxMaxWrite) {
         refuse(fmt::format("must be between {} and {}, got {}", format_size(kMinMaxWrite),
                            format_size(kMaxMaxWrite), format_size(n)));
       }
       if (n % kPage != 0) refuse(fmt::format("must be a multiple of 4K, got {}", n));
       cfg.fuse.max_write = uint32_t(n);
     }},
    {{"fuse.entry_timeout", "--entry-timeout", "SECONDS",
      "how long the kernel may cache a name (default 1.0)"},
     [](Config& cfg, const Value& v) { cfg.fuse.entry_timeout = as_seconds(v); }},
    {{"fuse.attr_timeout", "--attr-timeout", "SECONDS",
      "how long the kernel may cache attributes (default 1.0)"},
     [](Config& cfg, const Value& v) { cfg.fuse.attr_timeout = as_seconds(v); }},
    {{"fuse.writeback_cache", "--writeback-cache", "BOOL",
      "let the kernel cache writes and send them later, in bulk (default false)"},
     [](Config& cfg, const Value& v) { cfg.fuse.writeback_cache = as_bool(v); }},
    {{"fuse.xattr", "--xattr", "BOOL",
      "serve extended attributes; off, the kernel stops asking (default true)"},
     [](Config& cfg, const Value& v) { cfg.fuse.xattr = as_bool(v); }},
    {{"fuse.passthrough", "--fuse-passthrough", "BOOL",
      "with the passthrough backend, let the kernel read and write open files itself, without "
      "a request to dpfs (FUSE passthrough: Linux 6.9+, as root, writeback cache off; "
      "default true)"},
     [](Config& cfg, const Value& v) { cfg.fuse.passthrough = as_bool(v); }},
    {{"fuse.allow_suid", "--fuse-allow-suid", "BOOL",
      "mount without nosuid: set-user-ID files on the mount run with their owner's rights on "
      "this host (default false)"},
     [](Config& cfg, const Value& v) { cfg.fuse.allow_suid = as_bool(v); }},
    {{"fuse.allow_dev", "--fuse-allow-dev", "BOOL",
      "mount without nodev: device nodes on the mount open this host's devices (default false)"},
     [](Config& cfg, const Value& v) { cfg.fuse.allow_dev = as_bool(v); }},
    {{"fuse.io_uring", "--fuse-io-uring", "auto|on|off",
      "serve the mount through FUSE over io_uring (Linux 6.14+, with the fuse module's "
      "enable_uring on): auto where the kernel offers it, else read/write; on fails start-up "
      "without it; off never (default auto)"},
     [](Config& cfg, const Value& v) {
       const std::string& s = as_string(v);
       if (s == "auto") {
         cfg.fuse.io_uring = transport::FuseUringMode::kAuto;
       } else if (s == "on") {
         cfg.fuse.io_uring = transport::FuseUringMode::kOn;
       } else if (s == "off") {
         cfg.fuse.io_uring = transport::FuseUringMode::kOff;
       } else {
         refuse(fmt::format("must be auto, on or off, got '{}'", s));
       }
     }},
    {{"policy.translate_uid", "--translate-uid", "RULE...",
      "map tenant uids to host uids, virtiofsd's rules: map:GUEST:HOST:COUNT, guest:GUEST:HOST:"
      "COUNT, host:HOST:GUEST:COUNT, squash-guest:GUEST:HOST:COUNT, squash-host:HOST:GUEST:"
      "COUNT, forbid-guest:GUEST:COUNT; repeat the flag or separate with commas (default: none, "
      "ids are themselves)"},
     [](Config& cfg, const Value& v) { cfg.policy.identity.uids.add_all(as_string(v)); }},
    {{"policy.translate_gid", "--translate-gid", "RULE...", "likewise for gids (default: none)"},
     [](Config& cfg, const Value& v) { cfg.policy.identity.gids.add_all(as_string(v)); }},
    {{"policy.squash", "--squash", "none|root|all",
      "root: a request that would act as host uid or gid 0 acts as policy.squash_id instead; "
      "all: every request does (default none)"},
     [](Config& cfg, const Value& v) { cfg.policy.identity.squash = parse_squash(as_string(v)); }},
    {{"policy.squash_id", "--squash-id", "ID",
      "the host uid and gid squashed requests act as (default 65534)"},
     [](Config& cfg, const Value& v) { cfg.policy.identity.squash_id = uint32_t(as_id(v)); }},
    {{"policy.allow_device_nodes", "--allow-device-nodes", "BOOL",
      "let tenants create block and character device nodes; off, MKNOD of one answers EPERM "
      "(default false)"},
     [](Config& cfg, const Value& v) { cfg.policy.allow_device_nodes = as_bool(v); }},
    {{"policy.xattr_namespaces", "--xattr-namespaces", "LIST",
      "the xattr namespaces tenants may use, of user, trusted, security, system; others answer "
      "EPERM (set) or ENODATA (get) and are not listed (default user)"},
     [](Config& cfg, const Value& v) {
       cfg.policy.xattr_namespaces = parse_xattr_namespaces(as_string(v));
     }},
    {{"vhost_user.socket", "--vhost-user", "SOCK",
      "serve a virtio-fs device on this vhost-user socket, created by dpfs (default: none)"},
     [](Config& cfg, const Value& v) { cfg.vhost_user.socket = as_socket_path(v); }},
    {{"vhost_user.tag", "--tag", "TAG",
      "the virtio-fs tag the guest mounts (QEMU's vhost-user-fs-pci tag=; default dpfs)"},
     [](Config& cfg, const Value& v) {
       const std::string& s = as_string(v);
       if (s.empty() || s.size() > DeviceConfig::kMaxTagLength) {
         refuse(
             fmt::format("must be 1 to {} bytes, got {}", DeviceConfig::kMaxTagLength, s.size()));
       }
       for (const char c : s) {
         if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-' &&
             c != ':') {
           refuse(fmt::format("may hold only letters, digits and . _ - :, got '{}'", s));
         }
       }
       cfg.vhost_user.tag = s;
     }},
    {{"vhost_user.request_queues", "--request-queues", "N",
      "request queues of the virtio-fs device, 1..64; QEMU's num-request-queues (default 1)"},
     [](Config& cfg, const Value& v) {
       const int64_t n = as_integer(v);
       if (n < int64_t(DeviceConfig::kMinRequestQueues) ||
           n > int64_t(DeviceConfig::kMaxRequestQueues)) {
         refuse(fmt::format("must be between {} and {}, got {}", DeviceConfig::kMinRequestQueues,
                            DeviceConfig::kMaxRequestQueues, n));
       }
       cfg.vhost_user.request_queues = uint32_t(n);
     }},
    {{"vhost_user.poll", "--poll", "BOOL",
      "workers busy-poll the virtqueues instead of sleeping on kicks (default false)"},
     [](Config& cfg, const Value& v) { cfg.vhost_user.poll = as_bool(v); }},
    {{"vhost_user.poll_budget", "--poll-budget", "MICROSECONDS",
      "without --poll: after a kick, workers keep polling until the queues have been idle this "
      "long, then sleep on kicks again; the most they poll: each adapts it to how soon requests "
      "come; 0..10000, 0 sleeps at once (default 50)"},
     [](Config& cfg, const Value& v) {
       const int64_t us = as_integer(v);
       if (us < 0 || us > int64_t(DeviceConfig::kMaxPollBudgetUs)) {
         refuse(
             fmt::format("must be between 0 and {}, got {}", DeviceConfig::kMaxPollBudgetUs, us));
       }
       cfg.vhost_user.poll_budget_us = uint32_t(us);
     }},
    {{"vhost_user.socket_group", "--socket-group", "GROUP",
      "vhost-user sockets are owned by this group (a name or gid) with mode 0660, for a "
      "front-end that runs as it (default: mode 0600, root's only)"},
     [](Config& cfg, const Value& v) { cfg.vhost_user.socket_gid = as_group(v); }},
    {{"vhost_user.on_disconnect", "--on-disconnect", "wait|exit",
      "when QEMU goes away: wait for the next one, or exit once every device is done (default "
      "wait)"},
     [](Config& cfg, const Value& v) {
       const std::string& s = as_string(v);
       if (s == "wait") {
         cfg.vhost_user.on_disconnect = OnDisconnect::kWait;
       } else if (s == "exit") {
         cfg.vhost_user.on_disconnect = OnDisconnect::kExit;
       } else {
         refuse(fmt::format("must be wait or exit, got '{}'", s));
       }
     }},
    {{"remote.listen", "--listen", "tcp://ADDR:PORT",
      "serve remote devices (backend remote://) on this TCP address; non-loopback needs "
      "remote.secret_file (default: none)"},
     [](Config& cfg, const Value& v) {
       const std::string& s = as_string(v);
       remote::parse_endpoint(s, "tcp://", true);
       cfg.remote.listen = s;
     }},
    {{"remote.secret_file", "--remote-secret-file", "FILE",
      "shared secret (>= 16 bytes, mode 0600) a remote device and its server both prove "
      "(default: none)"},
     [](Config& cfg, const Value& v) { cfg.remote.secret_file = non_empty_string(v); }},
    {{"remote.tls_cert", "--remote-tls-cert", "FILE",
      "TLS for the remote transport: this end's certificate (PEM); needs remote.tls_key and "
      "remote.tls_ca (default: none, plain TCP)"},
     [](Config& cfg, const Value& v) { cfg.remote.tls_cert = non_empty_string(v); }},
    {{"remote.tls_key", "--remote-tls-key", "FILE",
      "TLS: the private key of remote.tls_cert (PEM, mode 0600) (default: none)"},
     [](Config& cfg, const Value& v) { cfg.remote.tls_key = non_empty_string(v); }},
    {{"remote.tls_ca", "--remote-tls-ca", "FILE",
      "TLS: the CA (PEM) the peer's certificate must be signed by; a server serves only devices "
      "with one (default: none)"},
     [](Config& cfg, const Value& v) { cfg.remote.tls_ca = non_empty_string(v); }},
    {{"remote.connections", "--remote-connections", "N",
      "TCP connections of a remote device to its server, 1..64 (default 2)"},
     [](Config& cfg, const Value& v) {
       const int64_t n = as_integer(v);
       if (n < 1 || n > int64_t(RemoteConfig::kMaxConnections)) {
         refuse(fmt::format("must be between 1 and {}, got {}", RemoteConfig::kMaxConnections, n));
       }
       cfg.remote.connections = unsigned(n);
     }},
    {{"remote.session_grace", "--remote-session-grace", "SECONDS",
      "a server ends the session of a device gone (no connection) this long, giving back its "
      "lookups (default 60)"},
     [](Config& cfg, const Value& v) {
       const double d = as_seconds(v);
       if (d < 0.1 || d > 86400)
         refuse(fmt::format("must be between 0.1 and 86400 seconds, got {}", d));
       cfg.remote.session_grace = d;
     }},
    {{"remote.handshake_timeout", "--remote-handshake-timeout", "SECONDS",
      "a server closes a connection that has not authenticated within this long (default 2)"},
     [](Config& cfg, const Value& v) {
       const double d = as_seconds(v);
       if (d < 0.1 || d > 60) refuse(fmt::format("must be between 0.1 and 60 seconds, got {}", d));
       cfg.remote.handshake_timeout = d;
     }},
    {{"remote.max_handshakes", "--remote-max-handshakes", "N",
      "a server's connections not authenticated yet, 1..4096 (default 64)"},
     [](Config& cfg, const Value& v) {
       const int64_t n = as_integer(v);
       if (n < 1 || n > 4096) refuse(fmt::format("must be between 1 and 4096, got {}", n));
       cfg.remote.max_handshakes = unsigned(n);
     }},
    {{"remote.max_handshakes_per_address", "--remote-max-handshakes-per-address", "N",
      "of those, from one source address (IPv6: one /64), 1..4096 (default 8)"},
     [](Config& cfg, const Value& v) {
       const int64_t n = as_integer(v);
       if (n < 1 || n > 4096) refuse(fmt::format("must be between 1 and 4096, got {}", n));
       cfg.remote.max_handshakes_per_address = unsigned(n);
     }},
    {{"remote.timeout", "--remote-timeout", "SECONDS",
      "a remote device answers a request ETIMEDOUT after this long without a reply (default 30)"},
     [](Config& cfg, const Value& v) {
       const double d = as_seconds(v);
       if (d < 0.1 || d > 3600)
         refuse(fmt::format("must be between 0.1 and 3600 seconds, got {}", d));
       cfg.remote.timeout = d;
     }},
};

// The [vhost_user] keys a [[device]] table may set for itself (as "socket",
// "tag", ...); on_disconnect is daemon-wide.
constexpr std::string_view kDeviceKeys[] = {"socket", "tag",         "request_queues",
                                            "poll",   "poll_budget", "socket_group"};

// A device with the [vhost_user] keys of `vu` (a [[device]] table's, or the
// top-level one's) and `backend`.
DeviceConfig device_from(const VhostUserConfig& vu, const BackendConfig& backend) {
  DeviceConfig device;
  device.socket = vu.socket;
  device.tag = vu.tag;
  device.request_queues = vu.request_queues;
  device.poll = vu.poll;
  device.poll_budget_us = vu.poll_budget_us;
  device.socket_gid = vu.socket_gid;
  device.backend = backend;
  return device;
}

const Setting* find_setting(std::string_view key) {
  for (const Setting& s : kSettings) {
    if (s.info.key == key) return &s;
  }
  return nullptr;
}

// A table is any proper prefix of a setting's key ("backend", "backend.memfs").
bool is_table(std::string_view key) {
  for (const Setting& s : kSettings) {
    if (s.info.key.size() > key.size() && s.info.key.starts_with(key) &&
        s.info.key[key.size()] == '.') {
      return true;
    }
  }
  return false;
}

std::string_view toml_kind(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::date:
    case toml::node_type::time:
    case toml::node_type::date_time:
      return "a date or time";
    default:
      return "a value";
  }
}

// A TOML scalar as a Value; ConfigError (via `fail`) for anything else. A
// list setting (SettingInfo::is_repeated) also takes an array of strings.
template <typename Fail>
Value to_value(const toml::node& node, Fail&& fail, bool list = false) {
  if (list && node.is_array()) {
    std::string joined;
    for (const toml::node& item : *node.as_array()) {
      if (!item.is_string()) throw fail("expected an array of strings");
      if (!joined.empty()) joined += ',';
      joined += item.as_string()->get();
    }
    return joined;
  }
  if (node.is_integer()) return node.as_integer()->get();
  if (node.is_floating_point()) return node.as_floating_point()->get();
  if (node.is_boolean()) return node.as_boolean()->get();
  if (node.is_string()) return node.as_string()->get();
  throw fail(fmt::format("expected a single value, got {}", toml_kind(node)));
}

// Applies `table`, whose keys are settings under `prefix` ("" at the top).
// `shown` is what errors call that prefix ("device[1].backend" for a
// device's "backend").
void apply_table(Config& cfg, const toml::table& table, const std::string& prefix,
                 std::string_view source, const std::string& shown);

DeviceConfig parse_device(const toml::table& table, size_t index, std::string_view source) {
  const std::string name = fmt::format("device[{}]", index);
  Config scratch;  // the device's settings start from the defaults
  std::vector<std::pair<std::string, std::string>> policy_overrides;
  for (auto&& [k, node] : table) {
    const std::string key(k.str());
    auto fail = [&](std::string_view reason) {
      return ConfigError(fmt::format("config {}: {}.{}: {}", source, name, key, reason));
    };
    if (key == "backend") {
      const toml::table* sub = node.as_table();
      if (sub == nullptr) throw fail("must be a table ([device.backend])");
      apply_table(scratch, *sub, "backend", source, name + ".backend");
      continue;
    }
    if (key == "policy") {
      // Kept as given and applied over the top-level [policy] by finish(),
      // which may come later in the file; checked now.
      const toml::table* sub = node.as_table();
      if (sub == nullptr) throw fail("must be a table ([device.policy])");
      for (auto&& [pk, pnode] : *sub) {
        const std::string pkey(pk.str());
        auto pfail = [&](std::string_view reason) {
          return ConfigError(
              fmt::format("config {}: {}.policy.{}: {}", source, name, pkey, reason));
        };
        const Setting* setting = find_setting("policy." + pkey);
        if (setting == nullptr) {
          throw ConfigError(
              fmt::format("config {}: unknown key '{}.policy.{}'", source, name, pkey));
        }
        const Value value = to_value(pnode, pfail, setting->info.is_repeated());
        Config check;
        try {
          setting->set(check, value);
        } catch (const std::invalid_argument& e) {
          throw pfail(e.what());
        }
        policy_overrides.emplace_back(pkey, value_text(value));
      }
      continue;
    }
    if (std::find(std::begin(kDeviceKeys), std::end(kDeviceKeys), key) == std::end(kDeviceKeys)) {
      throw ConfigError(fmt::format(
          "config {}: unknown key '{}.{}' (a device has socket, tag, request_queues, poll, "
          "poll_budget, socket_group, [device.backend] and [device.policy])",
          source, name, key));
    }
    const Setting* setting = find_setting("vhost_user." + key);
    try {
      setting->set(scratch, to_value(node, fail));
    } catch (const std::invalid_argument& e) {
      throw fail(e.what());
    }
  }
  if (scratch.vhost_user.socket.empty()) {
    throw ConfigError(fmt::format("config {}: {}: socket is required", source, name));
  }
  DeviceConfig device = device_from(scratch.vhost_user, scratch.backend);
  device.policy_overrides = std::move(policy_overrides);
  return device;
}

void apply_table(Config& cfg, const toml::table& table, const std::string& prefix,
                 std::string_view source, const std::string& shown) {
  for (auto&& [k, node] : table) {
    const std::string name(k.str());
    const std::string key = prefix.empty() ? name : prefix + "." + name;
    const std::string shown_key = shown.empty() ? name : shown + "." + name;
    auto fail = [&](std::string_view reason) {
      return ConfigError(fmt::format("config {}: {}: {}", source, shown_key, reason));
    };
    if (key == "device") {
      // [[device]]: an array of tables, one per vhost-user device.
      const toml::array* devices = node.as_array();
      if (devices == nullptr) throw fail("must be an array of tables ([[device]])");
      for (size_t i = 0; i < devices->size(); ++i) {
        const toml::table* entry = devices->get(i)->as_table();
        if (entry == nullptr) throw fail("must be an array of tables ([[device]])");
        cfg.devices.push_back(parse_device(*entry, cfg.devices.size(), source));
      }
      continue;
    }
    if (is_table(key)) {
      const toml::table* sub = node.as_table();
      if (sub == nullptr) throw fail("must be a table ([" + key + "])");
      apply_table(cfg, *sub, key, source, shown_key);
      continue;
    }
    const Setting* setting = find_setting(key);
    if (setting == nullptr) {
      throw ConfigError(fmt::format("config {}: unknown key '{}'", source, shown_key));
    }
    try {
      setting->set(cfg, to_value(node, fail, setting->info.is_repeated()));
    } catch (const std::invalid_argument& e) {
      throw fail(e.what());
    }
  }
}

}  // namespace

std::span<const SettingInfo> settings() {
  static const auto infos = [] {
    std::array<SettingInfo, std::size(kSettings)> out;
    for (size_t i = 0; i < out.size(); ++i) out[i] = kSettings[i].info;
    return out;
  }();
  return infos;
}

void apply_toml(Config& cfg, std::string_view text, std::string_view source) {
  toml::table table;
  try {
    table = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    throw ConfigError(fmt::format("config {}:{}:{}: {}", source, e.source().begin.line,
                                  e.source().begin.column, e.description()));
  }
  apply_table(cfg, table, "", source, "");
}

void apply_toml_file(Config& cfg, const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw ConfigError(fmt::format("config {}: {}", path, std::strerror(errno)));
  std::ostringstream text;
  text << file.rdbuf();
  if (file.bad()) throw ConfigError(fmt::format("config {}: read error", path));
  apply_toml(cfg, text.str(), path);
}

void apply_flag(Config& cfg, std::string_view key, std::string_view value) {
  const Setting* setting = find_setting(key);
  if (setting == nullptr) throw std::logic_error(fmt::format("no setting '{}'", key));
  try {
    setting->set(cfg, std::string(value));
  } catch (const std::invalid_argument& e) {
    throw ConfigError(fmt::format("{}: {}", setting->info.flag, e.what()));
  }
}

void apply_switch(Config& cfg, std::string_view key, bool value) {
  const Setting* setting = find_setting(key);
  if (setting == nullptr) throw std::logic_error(fmt::format("no setting '{}'", key));
  try {
    setting->set(cfg, value);
  } catch (const std::invalid_argument& e) {
    throw ConfigError(fmt::format("{}: {}", setting->info.flag, e.what()));
  }
}

void finish(Config& cfg) {
  const VhostUserConfig& vu = cfg.vhost_user;
  if (!vu.socket.empty()) {
    cfg.devices.insert(cfg.devices.begin(), device_from(vu, cfg.backend));
  } else if (vu.tag != DeviceConfig::kDefaultTag || vu.request_queues != 1 || vu.poll) {
    // Like an unknown key: a setting that would silently do nothing.
    throw ConfigError(
        "vhost_user.tag, request_queues and poll (--tag, --request-queues, --poll) need "
        "vhost_user.socket (--vhost-user SOCK)");
  }
  // Each device's policy: the top-level one, with its [device.policy] over
  // it. A device's own translate rules replace the top-level ones (tenants'
  // ranges differ; added together they would overlap).
  for (size_t i = 0; i < cfg.devices.size(); ++i) {
    DeviceConfig& device = cfg.devices[i];
    Config scratch;
    scratch.policy = cfg.policy;
    for (const auto& [key, value] : device.policy_overrides) {
      if (key == "translate_uid") scratch.policy.identity.uids = IdMap();
      if (key == "translate_gid") scratch.policy.identity.gids = IdMap();
    }
    for (const auto& [key, value] : device.policy_overrides) {
      const Setting* setting = find_setting("policy." + key);
      try {
        setting->set(scratch, value);
      } catch (const std::invalid_argument& e) {
        throw ConfigError(fmt::format("device {}: policy.{}: {}", device.socket, key, e.what()));
      }
    }
    device.policy = scratch.policy;
  }
  for (size_t i = 0; i < cfg.devices.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (cfg.devices[i].socket == cfg.devices[j].socket) {
        throw ConfigError(
            fmt::format("two vhost-user devices on one socket: {}", cfg.devices[i].socket));
      }
    }
  }
  const int tls_files =
      !cfg.remote.tls_cert.empty() + !cfg.remote.tls_key.empty() + !cfg.remote.tls_ca.empty();
  if (tls_files != 0 && tls_files != 3) {
    throw ConfigError(
        "TLS needs all of remote.tls_cert, remote.tls_key and remote.tls_ca "
        "(--remote-tls-cert, --remote-tls-key, --remote-tls-ca)");
  }
  if (!cfg.remote.listen.empty() && cfg.backend.kind == BackendKind::kRemote) {
    throw ConfigError("--listen serves remote devices from a local backend, not from remote://");
  }
  // Without any transport configured, the default job: FUSE at /tmp/dpfs.
  if (cfg.fuse.mount.empty() && cfg.devices.empty() && cfg.remote.listen.empty()) {
    cfg.fuse.mount = Config::kDefaultMount;
    cfg.fuse.mount_is_default = true;
  }
  // Settings every backend takes from the rest of the configuration.
  auto complete = [&](BackendConfig& backend) {
    backend.entry_timeout = cfg.fuse.entry_timeout;
    backend.attr_timeout = cfg.fuse.attr_timeout;
    backend.writeback_cache = cfg.fuse.writeback_cache;
    backend.remote.connections = cfg.remote.connections;
    backend.remote.timeout = cfg.remote.timeout;
    backend.remote.max_write = cfg.fuse.max_write;
    if (backend.nfs.connections == 0) {
      backend.nfs.connections = std::min<uint32_t>(cfg.threads, kMaxConnections);
    }
    // A lane of connections for each worker to drive (kv::Store).
    if (backend.redis.connections == 0) {
      backend.redis.connections = std::min<uint32_t>(cfg.threads, kMaxConnections);
    }
  };
  complete(cfg.backend);
  for (DeviceConfig& device : cfg.devices) complete(device.backend);
}

uint64_t parse_size(std::string_view text) {
  uint64_t bytes = 0;
  switch (util::parse_size(text, &bytes)) {
    case util::SizeParse::kOk:
      break;
    case util::SizeParse::kMalformed:
      refuse(fmt::format("must be a size such as 4096, 64K or 1G, got '{}'", text));
    case util::SizeParse::kTooLarge:
      refuse(fmt::format("size '{}' is too large", text));
  }
  return bytes;
}

std::string format_size(uint64_t bytes) {
  static constexpr std::pair<unsigned, char> kUnits[] = {
      {40, 'T'}, {30, 'G'}, {20, 'M'}, {10, 'K'}};
  for (const auto& [shift, unit] : kUnits) {
    const uint64_t size = uint64_t(1) << shift;
    if (bytes >= size && bytes % size == 0) return fmt::format("{}{}", bytes >> shift, unit);
  }
  return fmt::format("{}", bytes);
}

std::string_view log_level_name(spdlog::level::level_enum level) {
  for (const auto& [name, l] : kLogLevels) {
    if (l == level) return name;
  }
  return "info";
}

std::string DeviceConfig::name() const { return fmt::format("vhost-user {} ({})", tag, socket); }

}  // namespace dpfs::daemon
