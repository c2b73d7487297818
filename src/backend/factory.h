// Choosing and building a backend from configuration.
//
// A backend is named by a spec, "type" or "type:argument" (later
// "passthrough:/srv/dir"); an NFS export by its URL, "nfs://server/export". This file is the one
// place that knows which types exist, what each needs, and how to construct it.
//
// Start-up only; make_backend() and parse_backend_spec() throw
// std::invalid_argument with a one-line reason.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "backend/backend.h"
#include "backend/passthrough/passthrough.h"

namespace dpfs {

namespace remote {
class TlsContext;
}

// Every backend type this build has (backend_types() names them).
enum class BackendKind { kMemfs, kNull, kNfs, kPassthrough, kRemote, kRedis };

struct BackendConfig {
  BackendKind kind = BackendKind::kMemfs;
  std::string arg;  // after "type:"; empty for types that take none

  struct Memfs {
    uint64_t capacity_bytes = 1ull << 30;
    uint64_t max_inodes = 1ull << 20;
    bool operator==(const Memfs&) const = default;
  } memfs;

  struct Null {
    uint64_t file_size = 1ull << 40;
    bool direct_io = false;
    bool operator==(const Null&) const = default;
  } null;

  // nfs: `arg` is the URL without its "nfs:" ("//server/export?version=3").
  struct Nfs {
    uint32_t connections = 0;  // 0: one per transport worker (the daemon's threads)
    double timeout = 30.0;     // seconds an RPC may go unanswered, retries included
    uint64_t rsize = 1ull << 20;
    uint64_t wsize = 1ull << 20;
    uint64_t max_unstable = 64ull << 20;
    bool operator==(const Nfs&) const = default;
  } nfs;
  // redis: `arg` is the URL without its "redis:".
  struct Redis {
    uint32_t connections = 0;  // per server; 0: one per transport worker (the daemon's threads)
    bool operator==(const Redis&) const = default;
  } redis;
  struct Passthrough {
    // The directory (`arg`) as a sandboxed process names it ("/" when it is
    // the sandbox's root); empty: `arg`.
    std::string root_inside;
    bool read_only = false;
    CachePolicy cache = PassthroughOptions{}.cache;
    uint64_t max_fds = PassthroughOptions{}.max_fds;
    UringMode io_uring = PassthroughOptions{}.io_uring;
    int64_t squash_uid = -1;  // -1: the tenant's
    int64_t squash_gid = -1;
    bool operator==(const Passthrough&) const = default;
  } passthrough;
  // remote: `arg` is "//HOST:PORT". The [remote] settings, and what the
  // daemon read from their files at start-up, before a sandbox hides them.
  struct Remote {
    unsigned connections = 2;                 // links to the server
    double timeout = 30.0;                    // seconds a request may wait for its reply
    uint32_t max_write = 1u << 20;            // [fuse] max_write
    std::string secret;                       // empty: none
    std::shared_ptr<remote::TlsContext> tls;  // null: plain TCP
    bool operator==(const Remote&) const = default;
  } remote;

  // The descriptors this backend may hold for its device's tenant (open files,
  // cached inode descriptors): its share of the process's limit, set by the
  // daemon at start-up (daemon/fd_limits.h), not configured here. 0: no budget.
  uint64_t fd_budget = 0;

  // The timeouts a backend reports to the kernel for names and attributes
  // (the [fuse] settings of the same names).
  double entry_timeout = 1.0;
  double attr_timeout = 1.0;
  bool writeback_cache = false;  // [fuse] writeback_cache
  bool operator==(const BackendConfig&) const = default;
};

struct BackendType {
  BackendKind kind;
  std::string_view name;
  bool takes_arg;
  std::string_view description;
};
// Every type make_backend() can build.
std::span<const BackendType> backend_types();
// "memfs, null": for messages and --help.
std::string backend_type_list();

// "memfs", "passthrough": the name a spec starts with.
std::string_view backend_name(BackendKind kind);
// The spec `cfg` was parsed from: "memfs", "passthrough:/srv/dir".
std::string backend_spec(const BackendConfig& cfg);

// Parses a spec into cfg->kind and cfg->arg. Throws std::invalid_argument
// for an unknown type (naming the known ones) or a misplaced argument.
void parse_backend_spec(std::string_view spec, BackendConfig* cfg);

// Builds the configured backend. Throws std::invalid_argument (a type this
// build does not have) or whatever the backend's constructor throws.
std::unique_ptr<Backend> make_backend(const BackendConfig& cfg);

}  // namespace dpfs
