// The links of the remote backend (remote_backend.h) to a dpfs server.
//
// Sends FUSE requests to a dpfs server (remote::Server), which runs a
// session over its backend, and reads each reply straight back into the
// request's `out` buffers. Requests go out with writev(2) from the request's
// buffers and replies come in with reads into its buffers: a WRITE's payload
// and a READ's data are not copied on this side.
//
// Several connections (links) to the server, each with many requests in
// flight, matched to their replies by an id of our own (the FUSE unique is
// the tenant's choice, so it is never trusted to be unique). The links
// share the device's FUSE session on the server: the first handshake gets
// a session id and its token from the server, the others join with them
// (handshakes are one at a time, so that two links never make two
// sessions). With a shared secret and no TLS every frame carries a MAC.
//
// Faults: a link that breaks reconnects with backoff (100 ms doubling to
// 5 s). Requests in flight on it are sent again if they are idempotent
// (reads) and answered EIO otherwise; requests wait for a link at most
// `timeout_s` and are then answered ETIMEDOUT -- the tenant never hangs
// longer (except SETLKW on a live link: waiting for a lock is its purpose).
// A server that restarted lost the session: its INIT is replayed first.
//
// Safe for concurrent use: many transport workers call forward() at once.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "fuse/request.h"
#include "remote/channel.h"
#include "remote/wire.h"
#include "util/rate_limited_log.h"
#include "util/thread_annotations.h"

namespace dpfs::remote {

struct ForwarderOptions {
  Endpoint server;
  std::string secret;  // empty: none (the server must have none either)
  TlsFiles tls;        // empty: plain TCP
  // The context of `tls`, built by the caller while the files can still be
  // read (before a sandbox hides them); null: the forwarder builds it.
  std::shared_ptr<TlsContext> tls_context;
  unsigned connections = 2;
  double timeout_s = 30.0;
  // The largest READ or WRITE this device sends, announced to the server
  // (its session's max_write is no larger).
  uint32_t max_write = 1u << 20;
};

// A start-up failure that retrying will not fix (wrong secret, another
// version of the wire format), one line for the operator.
class RemoteError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Forwarder {
 public:
  // Starts the links. Connects once before returning: throws RemoteError if
  // the server refuses us (authentication, TLS, version) or the TLS files
  // are unusable; an unreachable server is only logged -- the links keep
  // trying.
  explicit Forwarder(ForwarderOptions options);
  Forwarder(const Forwarder&) = delete;
  Forwarder& operator=(const Forwarder&) = delete;
  ~Forwarder();

  // Sends one FUSE request (req.in, header first); req.complete() is called
  // exactly once, with the reply in req.out, or an error reply of ours
  // (EIO, ETIMEDOUT) if the server does not answer.
  void forward(fuse::Request& req);

  // Stops the links and answers every request still waiting with EIO.
  // Idempotent. REQUIRES: no forward() running or to come.
  void stop();

  // Counters for logs: requests forwarded, resent, failed (EIO/ETIMEDOUT),
  // reconnections.
  struct Counters {
    std::atomic<uint64_t> forwarded{0}, resent{0}, failed{0}, connects{0};
  };
  const Counters& counters() const { return counters_; }

  class Link;

 private:
  friend class Link;
  // The last INIT sent, to replay on a server that lost the session; empty
  // before it came and while it is on its way (it negotiates the session
  // itself). One look under init_mu_: the INIT arriving between a check of
  // init_in_flight_ and a read of init_ would be sent twice.
  std::vector<char> init_to_replay() const;

  // The session the server gave us (wire.h, "Sessions"); none at first.
  struct SessionCredentials {
    bool joined = false;
    uint64_t id = 0;
    Mac token{};
  };
  SessionCredentials credentials() const;
  // Records what a WELCOME gave.
  void set_credentials(uint64_t id, const Mac& token);

  ForwarderOptions options_;
  // The lines this device's tenant can cause (oversized requests).
  util::RateLimitedLog tenant_log_{"remote device"};
  std::shared_ptr<TlsContext> tls_;  // null: plain TCP
  // One handshake at a time (see above).
  std::mutex handshake_mu_;
  mutable util::Mutex session_mu_;
  SessionCredentials session_ DPFS_GUARDED_BY(session_mu_);
  mutable util::Mutex init_mu_;
  std::vector<char> init_ DPFS_GUARDED_BY(init_mu_);
  std::atomic<bool> init_in_flight_{false};  // the tenant's INIT awaits its reply
  std::vector<std::unique_ptr<Link>> links_;
  std::atomic<uint64_t> next_link_{0};
  Counters counters_;
};

}  // namespace dpfs::remote
