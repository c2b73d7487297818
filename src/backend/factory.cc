#include "backend/factory.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

#include "backend/kv/kv.h"
#include "backend/memfs/memfs.h"
#include "backend/nfs/nfs.h"
#include "backend/null/null.h"
#include "backend/passthrough/passthrough.h"
#include "remote/remote_backend.h"
#include "util/endpoint.h"

namespace dpfs {
namespace {

constexpr BackendType kTypes[] = {
    {BackendKind::kMemfs, "memfs", false, "an in-memory file system, empty at start"},
    {BackendKind::kNull, "null", false,
     "a root and one file of zeros that discards writes; for benchmarks"},
    {BackendKind::kNfs, "nfs", true, "an NFS export: nfs://SERVER[:PORT]/EXPORT[?version=3|4]"},
    {BackendKind::kPassthrough, "passthrough", true, "a directory of this host, passthrough:DIR"},
    {BackendKind::kRemote, "remote", true,
     "remote://HOST:PORT: the file system a dpfs server serves (dpfs serve --listen)"},
    {BackendKind::kRedis, "redis", true,
     "a file system kept in Redis, shared by every device that mounts it: "
     "redis://HOST:PORT/FSNAME[?timeout=SECONDS] (make it with dpfs kv format)"},
};

}  // namespace

std::span<const BackendType> backend_types() { return kTypes; }

std::string_view backend_name(BackendKind kind) {
  for (const BackendType& t : kTypes) {
    if (t.kind == kind) return t.name;
  }
  return "unknown";
}

std::string backend_spec(const BackendConfig& cfg) {
  std::string spec(backend_name(cfg.kind));
  if (!cfg.arg.empty()) spec += ":" + cfg.arg;
  return spec;
}

std::string backend_type_list() {
  std::string out;
  for (const BackendType& t : kTypes) {
    if (!out.empty()) out += ", ";
    out += t.name;
  }
  return out;
}

void parse_backend_spec(std::string_view spec, BackendConfig* cfg) {
  const size_t colon = spec.find(':');
  const std::string_view type = spec.substr(0, colon);
  const bool has_arg = colon != std::string_view::npos;
  const std::string_view arg = has_arg ? spec.substr(colon + 1) : std::string_view();
  for (const BackendType& t : kTypes) {
    if (t.name != type) continue;
    if (t.takes_arg && arg.empty()) {
      throw std::invalid_argument(fmt::format("backend {} needs an argument: {}:ARG", type, type));
    }
    if (!t.takes_arg && has_arg) {
      throw std::invalid_argument(
          fmt::format("backend {} takes no argument, got '{}'", type, spec));
    }
    // The URL is checked now, so a typo is refused with the other settings.
    if (t.kind == BackendKind::kNfs) nfs::parse_nfs_url(spec);
    if (t.kind == BackendKind::kRedis) kv::parse_kv_url(spec);
    if (t.kind == BackendKind::kRemote) {
      // "remote://HOST:PORT": the argument is "//HOST:PORT".
      try {
        util::parse_endpoint(spec, "remote://", false);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(fmt::format("backend remote: {}", e.what()));
      }
    }
    cfg->kind = t.kind;
    cfg->arg = std::string(arg);
    return;
  }
  throw std::invalid_argument(fmt::format("unknown backend '{}' (known: {})",
                                          type.empty() ? spec : type, backend_type_list()));
}

std::unique_ptr<Backend> make_backend(const BackendConfig& cfg) {
  switch (cfg.kind) {
    case BackendKind::kMemfs: {
      MemfsOptions options;
      options.capacity_bytes = cfg.memfs.capacity_bytes;
      options.max_inodes = cfg.memfs.max_inodes;
      options.entry_timeout = cfg.entry_timeout;
      options.attr_timeout = cfg.attr_timeout;
      return std::make_unique<Memfs>(options);
    }
    case BackendKind::kNull: {
      NullOptions options;
      options.file_size = cfg.null.file_size;
      options.direct_io = cfg.null.direct_io;
      return std::make_unique<NullBackend>(options);
    }
    case BackendKind::kNfs: {
      NfsOptions options;
      options.url = nfs::parse_nfs_url("nfs:" + cfg.arg);
      options.connections = std::max<uint32_t>(cfg.nfs.connections, 1);  // 0: not from a Config
      options.timeout = std::chrono::milliseconds(int64_t(cfg.nfs.timeout * 1000));
      options.rsize = uint32_t(cfg.nfs.rsize);
      options.wsize = uint32_t(cfg.nfs.wsize);
      options.max_unstable = cfg.nfs.max_unstable;
      options.entry_timeout = cfg.entry_timeout;
      options.attr_timeout = cfg.attr_timeout;
      return std::make_unique<NfsBackend>(options);
    }
    case BackendKind::kPassthrough: {
      PassthroughOptions options;
      options.root = cfg.passthrough.root_inside.empty() ? cfg.arg : cfg.passthrough.root_inside;
      options.read_only = cfg.passthrough.read_only;
      options.cache = cfg.passthrough.cache;
      options.entry_timeout = cfg.entry_timeout;
      options.attr_timeout = cfg.attr_timeout;
      options.writeback = cfg.writeback_cache;
      options.max_fds = cfg.passthrough.max_fds;
      options.fd_budget = cfg.fd_budget;
      options.io_uring = cfg.passthrough.io_uring;
      if (cfg.passthrough.squash_uid >= 0)
        options.squash_uid = uint32_t(cfg.passthrough.squash_uid);
      if (cfg.passthrough.squash_gid >= 0)
        options.squash_gid = uint32_t(cfg.passthrough.squash_gid);
      return std::make_unique<Passthrough>(options);
    }
    case BackendKind::kRedis: {
      KvOptions options;
      options.url = kv::parse_kv_url("redis:" + cfg.arg);
      options.connections = std::max<uint32_t>(cfg.redis.connections, 1);  // 0: not from a Config
      options.entry_timeout = cfg.entry_timeout;
      options.attr_timeout = cfg.attr_timeout;
      return std::make_unique<KvBackend>(options);
    }
    case BackendKind::kRemote: {
      remote::ForwarderOptions options;
      options.server = util::parse_endpoint(backend_spec(cfg), "remote://", false);
      options.secret = cfg.remote.secret;
      options.tls_context = cfg.remote.tls;
      options.connections = cfg.remote.connections;
      options.timeout_s = cfg.remote.timeout;
      options.max_write = cfg.remote.max_write;
      return std::make_unique<remote::RemoteBackend>(std::move(options));
    }
  }
  throw std::invalid_argument("unknown backend kind");
}

}  // namespace dpfs
