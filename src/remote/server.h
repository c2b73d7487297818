// The server end of the remote transport: `dpfs serve --listen tcp://...`.
//
// Accepts connections from remote devices (remote::Forwarder), checks that
// each peer proves the shared secret, and serves the FUSE requests it sends
// with a real FuseSession over this daemon's backend. See
// docs/remote-wire-format.md.
//
// Sessions: a device names its FUSE session (a random id) on every
// connection, so its several connections share one FuseSession -- one INIT,
// one set of lookup counts -- and a connection that drops and comes back
// finds its session where it left it. Every session serves the same backend;
// each keeps a LookupLedger of the lookups it holds there, so that it can
// end alone: a DESTROY from its device, or the device gone (no connection,
// no request in flight) for longer than `session_grace_s`, gives back that
// session's lookups (forget) and nobody else's -- the backend's destroy()
// is never called for one session.
//
// Threads: one acceptor (which also ends idle sessions, once a second), and
// one reader per connection that decodes frames and hands requests to the
// session; replies are written by whichever thread completes them, under
// the connection's send lock. (Not yet a fixed pool of epoll workers:
// --threads does not apply here; max_connections bounds the readers.) A peer that
// sends anything malformed loses that connection only, with one log line.
//
// Not thread-safe itself: constructed, started, stopped and destroyed by
// one thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "backend/backend.h"
#include "fuse/session.h"
#include "remote/channel.h"
#include "remote/ledger.h"
#include "remote/wire.h"
#include "transport/unique_fd.h"

namespace dpfs::remote {

// Start-up failures, one line for the operator.
class ListenError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct ServerOptions {
  Endpoint listen;
  // Peers must prove it (HMAC); empty: no secret, allowed on loopback only
  // unless TLS is on.
  std::string secret;
  // TLS with client certificates: only devices with a certificate from
  // tls.ca are served. Empty: plain TCP.
  TlsFiles tls;
  // For every session; max_write is lowered to a device's if it is smaller.
  fuse::SessionOptions session;
  unsigned max_connections = 256;
  unsigned max_sessions = 64;
  // How long a peer may take over the handshake, and a reply may wait for
  // a device that does not read.
  double handshake_timeout_s = 5.0;
  double send_timeout_s = 30.0;
  // A session whose device has had no connection for this long ends.
  double session_grace_s = 60.0;
};

class Server {
 public:
  // Binds and listens. Throws ListenError (an address in use, a
  // non-loopback address without a secret or TLS, unusable TLS files).
  Server(ServerOptions options, std::unique_ptr<Backend> backend);
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  ~Server();

  void start();
  // Closes the listening socket and every connection, joins the threads and
  // destroys the backend (which answers what it still holds). Idempotent.
  void stop();

  // The address actually bound (the port chosen when asked for port 0).
  const Endpoint& bound() const { return bound_; }
  // Request statistics of every session ("session ID: LOOKUP 120 requests,
  // ..."), for SIGUSR1, the stats socket and the exit.
  std::vector<std::string> stats() const;

  // Sessions alive (a device connected, or gone for less than the grace).
  size_t sessions() const;

  class Connection;
  // One device's FUSE session here, and the lookups it holds. Kept alive by
  // the connections (and so the requests in flight) that use it.
  struct Session {
    std::unique_ptr<fuse::FuseSession> fuse;
    LookupLedger ledger;
    uint64_t id = 0;
    // When the last user went (under sessions_mu_, by expire_sessions()).
    std::optional<std::chrono::steady_clock::time_point> idle_since;
  };

 private:
  void accept_loop();
  // The session named `id`, created on first use; nullptr (and *why) if
  // there are too many sessions. REQUIRES: check_hello() accepted max_write.
  std::shared_ptr<Session> session_for(uint64_t id, uint32_t max_write, std::string* why);
  // Closes the handles `session` left open and gives the backend back the
  // lookups it holds.
  void release(const std::shared_ptr<Session>& session);
  // Ends the sessions whose device has been gone past the grace period.
  void expire_sessions();
  void reap(bool all);

  ServerOptions options_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<TlsContext> tls_;  // null: plain TCP
  Endpoint bound_;
  transport::UniqueFd listen_fd_;
  std::thread acceptor_;
  std::atomic<bool> stopping_{false};

  mutable std::mutex sessions_mu_;
  std::map<uint64_t, std::shared_ptr<Session>> sessions_;

  std::mutex connections_mu_;
  std::vector<std::shared_ptr<Connection>> connections_;
};

}  // namespace dpfs::remote
