// The server end of the remote transport: `dpfs serve --listen tcp://...`.
//
// Accepts connections from remote devices (remote::Forwarder), checks that
// each peer proves the shared secret, and serves the FUSE requests it sends
// with a real FuseSession over this daemon's backend. See
// docs/remote-wire-format.md.
//
// Sessions: a device's first connection gets a new FUSE session (an id and
// a token only the server can make, wire.h session_token); its other
// connections join it by proving the token, so they share one FuseSession
// -- one INIT, one set of lookup counts -- and a connection that drops and
// comes back finds its session where it left it. Nobody else can join it.
// Every session serves the same backend; each keeps a SessionTable of the
// lookups and handles it holds there, which fences it off from the others
// (a request naming a node id or handle the session was not given is
// answered ESTALE/EBADF) and lets it end alone: a DESTROY from its device,
// or the device gone (no connection, no request in flight) for longer than
// `session_grace_s`, gives back that session's lookups (forget) and
// handles and nobody else's -- the backend's destroy() is never called for
// one session.
//
// Threads: one event loop (epoll) accepts connections and runs every
// handshake -- TLS included (non-blocking SSL_do_handshake) -- on
// non-blocking sockets with a deadline each, at most `max_handshakes` at
// once and `max_handshakes_per_address` from one source address (an IPv6
// /64), so connections that never authenticate hold no thread and cannot
// crowd out a device from elsewhere; it also ends idle sessions, once a
// second. Only an authenticated connection gets a thread: its reader,
// which decodes frames and hands requests to the session; replies are
// written by whichever thread completes them, under the connection's send
// lock. (--threads does not apply here; max_connections bounds the
// readers.) A peer that sends anything malformed loses that connection
// only, with one (rate-limited) log line.
//
// Not thread-safe itself: constructed, started, stopped and destroyed by
// one thread.
#pragma once

#include <sys/socket.h>

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
#include "remote/session_table.h"
#include "remote/wire.h"
#include "util/thread_annotations.h"
#include "util/unique_fd.h"

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
  unsigned max_connections = 256;  // authenticated
  unsigned max_sessions = 64;
  // Connections not authenticated yet, in all and from one source address
  // (an IPv4 address, an IPv6 /64). A new connection past the total takes
  // the place of the oldest one from the address with the most, if that
  // address has more than the newcomer's.
  unsigned max_handshakes = 64;
  unsigned max_handshakes_per_address = 8;
  // How long a peer may take over the handshake (TLS included), and a
  // reply may wait for a device that does not read.
  double handshake_timeout_s = 2.0;
  double send_timeout_s = 30.0;
  // A session whose device has had no connection for this long ends.
  double session_grace_s = 60.0;
};

class Server {
 public:
  // Binds and listens. Throws ListenError (an address in use, a
  // non-loopback address without a secret or TLS, unusable TLS files).
  // `backend` may be null and given later by set_backend.
  Server(ServerOptions options, std::unique_ptr<Backend> backend);
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  ~Server();

  // The backend, when the socket had to be bound (and the TLS files read)
  // before it could be built: before a sandbox is entered.
  // REQUIRES: before start(); none given to the constructor.
  void set_backend(std::unique_ptr<Backend> backend) { backend_ = std::move(backend); }

  // REQUIRES: a backend.
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
  // Connections in the handshake now.
  size_t handshakes() const { return handshakes_count_.load(); }

  class Connection;
  // One device's FUSE session here, and the lookups it holds. Kept alive by
  // the connections (and so the requests in flight) that use it.
  struct Session {
    std::unique_ptr<fuse::FuseSession> fuse;
    SessionTable table;
    uint64_t id = 0;
    // When the last user went (under sessions_mu_, by expire_sessions()).
    std::optional<std::chrono::steady_clock::time_point> idle_since;
  };

 private:
  struct Handshake;
  struct LogBudgets;
  // The event loop: accepts, runs the handshakes, ends idle sessions.
  void loop();
  void accept_all();
  // Takes `fd` (from `addr`) into the handshake, or refuses it (the caps).
  void admit(util::UniqueFd fd, const sockaddr_storage& addr);
  // Runs `hs` as far as its socket allows; false once it is over (handed
  // to a Connection, or closed).
  bool advance(Handshake& hs);
  // After AUTH: the session, the WELCOME; false (and an ERROR) if refused.
  bool welcome(Handshake& hs, const AuthPayload& auth);
  void drop_handshake(int fd);
  // The session a device joins (with kHelloJoin, the proof of its token) or
  // a new one; nullptr (and *why) for a wrong token or too many sessions.
  // REQUIRES: check_hello() accepted the hello.
  std::shared_ptr<Session> session_for(const HelloPayload& hello, const Mac& proof,
                                       const Nonce& server_nonce, bool* created, std::string* why);
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
  util::UniqueFd listen_fd_;
  util::UniqueFd epoll_fd_, wake_fd_;
  std::thread loop_;
  std::atomic<bool> stopping_{false};
  // Keys the session tokens (wire.h session_token); never leaves the server.
  Mac session_key_{};

  // The loop's own: handshakes by fd, how many from each source address.
  std::map<int, std::unique_ptr<Handshake>> handshakes_;
  std::map<std::string, unsigned> handshakes_by_source_;
  std::unique_ptr<LogBudgets> budgets_;
  uint64_t accepted_ = 0;
  std::atomic<size_t> handshakes_count_{0};

  mutable util::Mutex sessions_mu_;
  std::map<uint64_t, std::shared_ptr<Session>> sessions_ DPFS_GUARDED_BY(sessions_mu_);

  util::Mutex connections_mu_;
  std::vector<std::shared_ptr<Connection>> connections_ DPFS_GUARDED_BY(connections_mu_);
};

}  // namespace dpfs::remote
