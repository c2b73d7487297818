// What answers one tenant's FUSE requests, built the same way for every
// transport (the FUSE mount, each vhost-user device) and every backend: a
// FUSE session over the configured backend, behind the tenant's host policy
// (a remote backend's host is the server's, whose own policy applies there).
//
//   TenantHandler tenant(cfg.backend, options, cfg, credentials);
//   Transport transport(tenant.handler(), ...);   // serves through it
//   ...
//   transport.stop_workers();
//   tenant.end();       // the backend goes, answering what it still holds
//   transport.reset();
//
// Not thread-safe: built, ended and destroyed by the main thread; its
// statistics may be read from any thread while it serves.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/factory.h"
#include "fuse/handler.h"
#include "fuse/session.h"
#include "remote/channel.h"

namespace dpfs::daemon {

struct Config;

// What a remote backend proves itself with: the shared secret and the TLS
// context, read from their files at start-up, before the sandbox hides them.
struct RemoteCredentials {
  std::string secret;                       // empty: none
  std::shared_ptr<remote::TlsContext> tls;  // null: plain TCP
};

// Reads them if any backend of `cfg` is remote (else an empty set). Throws
// std::invalid_argument (the secret file) or remote::RemoteError (TLS files).
RemoteCredentials read_remote_credentials(const Config& cfg);

// The FUSE session settings of `cfg` ([fuse]) for a tenant under `policy`;
// options.name is the caller's to set.
fuse::SessionOptions session_options(const Config& cfg, const HostPolicy& policy);

// Describes a backend configuration for logs: "memfs (capacity 1G, ...)".
std::string describe_backend(const BackendConfig& b);

class TenantHandler {
 public:
  // Builds the backend and its session. `options` are the session's (its
  // policy is the tenant's). Throws std::invalid_argument and whatever the
  // backend's constructor throws (remote::RemoteError).
  TenantHandler(const BackendConfig& backend, fuse::SessionOptions options,
                const RemoteCredentials& credentials);
  TenantHandler(const TenantHandler&) = delete;
  TenantHandler& operator=(const TenantHandler&) = delete;
  ~TenantHandler() { end(); }

  fuse::RequestHandler& handler() { return *session_; }
  // A successor's session: serves as INIT had negotiated (FuseSession::restore).
  bool restore(const fuse::InitState& state) { return session_->restore(state); }
  // What is served, for logs: "memfs (capacity 1G, ...)", "remote dpfs at ...".
  const std::string& description() const { return description_; }

  // Request lines: the session's per-opcode counts.
  std::vector<std::string> request_stats() const;
  // The backend's own lines (Backend::stats), kept from the end once ended.
  std::vector<std::string> backend_stats() const;

  // A tenant that went away without DESTROY (a guest gone with its
  // front-end): its kernel's lookups and open files die with it; the
  // backend forgets them, as a DESTROY would, so the next tenant starts
  // clean (memfs keeps the files; a remote backend's server forgets them).
  // Nothing else may call the backend meanwhile.
  void forget_tenant();

  // Once the transport's workers have stopped and before the transport
  // goes: the backend goes (its destructor answers the replies it still
  // holds, a SETLKW waiting for its lock, a request on its way to a remote
  // server, through the transport's request slots). The session
  // stays, for its statistics; it only keeps a dangling reference to the
  // backend, which nothing uses any more. Idempotent.
  void end();

 private:
  std::unique_ptr<Backend> backend_;
  std::vector<std::string> final_backend_stats_;  // backend_->stats() before it went
  std::unique_ptr<fuse::FuseSession> session_;
  std::string description_;
};

}  // namespace dpfs::daemon
