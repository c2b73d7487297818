#include "daemon/tenant_handler.h"

#include <fmt/format.h>

#include <algorithm>

#include "daemon/config.h"
#include "fuse/session_stats.h"

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

remote::ForwarderOptions forwarder_options(const BackendConfig& b, const Config& cfg,
                                           const RemoteCredentials& credentials) {
  remote::ForwarderOptions options;
  options.server = remote::parse_endpoint(backend_spec(b), "remote://", false);
  options.secret = credentials.secret;
  options.tls = {cfg.remote.tls_cert, cfg.remote.tls_key, cfg.remote.tls_ca};
  options.tls_context = credentials.tls;
  options.connections = cfg.remote.connections;
  options.timeout_s = cfg.remote.timeout;
  options.max_write = cfg.fuse.max_write;
  return options;
}

TenantHandler::TenantHandler(const BackendConfig& backend, const fuse::SessionOptions& options,
                             const Config& cfg, const RemoteCredentials& credentials) {
  if (backend.kind == BackendKind::kRemote) {
    // Requests go whole to a remote dpfs, which runs the session.
    forwarder_ = std::make_unique<remote::Forwarder>(forwarder_options(backend, cfg, credentials));
    handler_ = forwarder_.get();
    description_ = forwarder_->describe();
  } else {
    backend_ = std::make_unique<PolicyBackend>(make_backend(backend), options.policy);
    session_ = std::make_unique<fuse::FuseSession>(*backend_, options);
    handler_ = session_.get();
    description_ = describe_backend(backend);
  }
}

std::vector<std::string> TenantHandler::request_stats() const {
  if (session_) return format_stats(*session_);
  const remote::Forwarder::Counters& c = forwarder_->counters();
  return {fmt::format("{} requests forwarded, {} resent, {} failed, {} connections made",
                      c.forwarded.load(), c.resent.load(), c.failed.load(), c.connects.load())};
}

std::vector<std::string> TenantHandler::backend_stats() const {
  return backend_ ? backend_->stats() : final_backend_stats_;
}

void TenantHandler::forget_tenant() {
  if (session_ && backend_ && session_->initialized()) backend_->destroy();
}

void TenantHandler::end() {
  if (backend_) final_backend_stats_ = backend_->stats();
  backend_.reset();
  if (forwarder_) forwarder_->stop();
}

}  // namespace dpfs::daemon
