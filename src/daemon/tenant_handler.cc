#include "daemon/tenant_handler.h"

#include <fmt/format.h>

#include <algorithm>

#include "daemon/config.h"
#include "fuse/session_stats.h"
#include "remote/forwarder.h"

namespace dpfs::daemon {

fuse::SessionOptions session_options(const Config& cfg, const HostPolicy& policy) {
  fuse::SessionOptions options;
  options.max_write = cfg.fuse.max_write;
  options.entry_timeout = cfg.fuse.entry_timeout;
  options.attr_timeout = cfg.fuse.attr_timeout;
  options.writeback_cache = cfg.fuse.writeback_cache;
  options.xattr = cfg.fuse.xattr;
  options.policy = std::make_shared<const HostPolicy>(policy);
  return options;
}

std::string describe_backend(const BackendConfig& b) {
  switch (b.kind) {
    case BackendKind::kMemfs:
      return fmt::format("memfs (capacity {}, max_inodes {})", format_size(b.memfs.capacity_bytes),
                         b.memfs.max_inodes);
    case BackendKind::kNull:
      return fmt::format("null (file_size {}{})", format_size(b.null.file_size),
                         b.null.direct_io ? ", direct_io" : "");
    case BackendKind::kRemote:
      return fmt::format(
          "{} ({} connection{}, timeout {} s, {}{})", backend_spec(b), b.remote.connections,
          b.remote.connections == 1 ? "" : "s", b.remote.timeout, b.remote.tls ? "TLS, " : "",
          b.remote.secret.empty()
              ? "no shared secret"
              : (b.remote.tls ? "shared secret" : "shared secret, frames authenticated"));
    default:
      return backend_spec(b);
  }
}

RemoteCredentials read_remote_credentials(const Config& cfg) {
  RemoteCredentials c;
  const bool forwards =
      cfg.backend.kind == BackendKind::kRemote ||
      std::any_of(cfg.devices.begin(), cfg.devices.end(),
                  [](const DeviceConfig& d) { return d.backend.kind == BackendKind::kRemote; });
  if (!forwards) return c;
  if (!cfg.remote.secret_file.empty()) c.secret = remote::read_secret_file(cfg.remote.secret_file);
  const remote::TlsFiles tls{cfg.remote.tls_cert, cfg.remote.tls_key, cfg.remote.tls_ca};
  if (tls.enabled()) {
    try {
      c.tls = std::make_shared<remote::TlsContext>(tls, remote::TlsContext::Role::kDevice);
    } catch (const std::invalid_argument& e) {
      throw remote::RemoteError(e.what());
    }
  }
  return c;
}

TenantHandler::TenantHandler(const BackendConfig& backend, fuse::SessionOptions options,
                             const RemoteCredentials& credentials) {
  BackendConfig b = backend;
  if (b.kind == BackendKind::kRemote) {
    b.remote.secret = credentials.secret;
    b.remote.tls = credentials.tls;
    // The server's policy is the one that protects its host; nothing here
    // maps ids or filters names a second time.
    options.policy = nullptr;
    backend_ = make_backend(b);
  } else {
    backend_ = std::make_unique<PolicyBackend>(make_backend(b), options.policy);
  }
  description_ = describe_backend(b);
  session_ = std::make_unique<fuse::FuseSession>(*backend_, std::move(options));
}

std::vector<std::string> TenantHandler::request_stats() const { return format_stats(*session_); }

std::vector<std::string> TenantHandler::backend_stats() const {
  return backend_ ? backend_->stats() : final_backend_stats_;
}

void TenantHandler::forget_tenant() {
  if (backend_ && session_->initialized()) backend_->destroy();
}

void TenantHandler::end() {
  if (backend_) final_backend_stats_ = backend_->stats();
  backend_.reset();
}

}  // namespace dpfs::daemon
