// One connection to an NFS server: a libnfs context, mounted at start-up,
// and the event-loop thread that owns it.
//
// A libnfs context is not thread-safe, so nothing but the loop thread ever
// touches it: workers hand it Calls through submit() (a queue and an
// eventfd), the loop thread sends them with libnfs's asynchronous raw API
// (NFSv3 calls, NFSv4 COMPOUNDs), polls the socket, and completes each Call
// from the reply callback.
// No thread ever blocks on the network: the loop thread sleeps in poll(2)
// only, and workers only queue.
//
// The transports' worker loops have no hook for a backend's file
// descriptors yet, so each connection runs a loop thread of its own; replies
// to the tenant are completed from it (Reply handles may be completed from
// any thread).
//
// Faults: libnfs reconnects a dropped TCP connection by itself (to the same
// server and port, resending what was in flight). On top of that a Call that
// failed without an answer (the connection broke, the server said JUKEBOX,
// NFS4ERR_DELAY or NFS4ERR_GRACE) is sent again after a short pause if it is
// idempotent (`Call::idempotent`) and its deadline has not passed; a Call not answered by its deadline
// completes with RPC_STATUS_TIMEOUT. Nothing waits longer than the
// configured timeout (plus one poll period).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "backend/nfs/nfs3.h"

struct nfs_context;
struct rpc_context;

namespace dpfs::nfs {

using Clock = std::chrono::steady_clock;

// One RPC to send and what to do with its answer. Made by make_call().
class Call {
 public:
  virtual ~Call() = default;
  // Sends the RPC: rpc_nfs3_*_async(rpc, cb, &args, data), or a COMPOUND.
  // Returns libnfs's result (0: sent; the callback will run).
  virtual int send(rpc_context* rpc, void (*cb)(rpc_context*, int, void*, void*),
                   void* data) = 0;
  // The outcome, exactly once: rpc_status is RPC_STATUS_SUCCESS with the
  // decoded *3res or COMPOUND4res in `res`, or another RPC_STATUS_* with
  // `res` null.
  virtual void complete(int rpc_status, void* res) = 0;

  bool idempotent = true;  // safe to send again when no answer came
  Clock::time_point deadline{};
  Clock::time_point sent{};  // the last send, for the round-trip statistics
  class Connection* connection = nullptr;
};

template <typename Send, typename Done>
class LambdaCall final : public Call {
 public:
  LambdaCall(Send send, Done done) : send_(std::move(send)), done_(std::move(done)) {}
  int send(rpc_context* rpc, void (*cb)(rpc_context*, int, void*, void*), void* data) override {
    return send_(rpc, cb, data);
  }
  void complete(int rpc_status, void* res) override { done_(rpc_status, res); }

 private:
  Send send_;
  Done done_;
};

// send: int(rpc_context*, rpc_cb, void*); done: void(int rpc_status, void* res).
// Both may own move-only state (the tenant's reply).
template <typename Send, typename Done>
std::unique_ptr<Call> make_call(Send send, Done done, bool idempotent = true) {
  auto call = std::make_unique<LambdaCall<Send, Done>>(std::move(send), std::move(done));
  call->idempotent = idempotent;
  return call;
}

struct ConnectionOptions {
  NfsUrl url;
  std::chrono::milliseconds timeout{30000};  // from submit() to an answer, retries included
};

class Connection {
 public:
  // Mounts the export (blocking: start-up only) and starts the loop thread.
  // Throws std::runtime_error with libnfs's reason.
  explicit Connection(const ConnectionOptions& options, int index);
  ~Connection();  // shutdown()
  // Stops the loop thread and completes every Call not yet answered with
  // RPC_STATUS_CANCEL; Calls submitted after it complete so at once, on the
  // submitting thread. Idempotent.
  void shutdown();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // The export's root file handle (MOUNT's answer).
  const std::string& root_fh() const { return root_fh_; }
  // The server's largest READ and WRITE (FSINFO rtmax, wtmax).
  uint64_t readmax() const { return readmax_; }
  uint64_t writemax() const { return writemax_; }

  // Any thread: hands `call` to the loop thread, which sends it.
  void submit(std::unique_ptr<Call> call);

 private:
  static void on_reply(rpc_context* rpc, int status, void* data, void* private_data);
  void loop();
  void send(std::unique_ptr<Call> call);         // loop thread
  void finish(Call* call, int status, void* res);  // loop thread; takes ownership back
  void retry_later(std::unique_ptr<Call> call);  // loop thread

  const ConnectionOptions options_;
  const int index_;
  nfs_context* nfs_ = nullptr;
  rpc_context* rpc_ = nullptr;
  std::string root_fh_;
  uint64_t readmax_ = 0;
  uint64_t writemax_ = 0;
  int event_fd_ = -1;

  std::mutex mu_;
  std::vector<std::unique_ptr<Call>> incoming_;  // guarded by mu_
  bool closed_ = false;                          // guarded by mu_
  // Loop thread only: Calls waiting to be sent again, with when.
  std::vector<std::pair<Clock::time_point, std::unique_ptr<Call>>> retries_;
  // Loop thread only: answered RPCs and their summed round trips (send to
  // callback: libnfs, the network and the server), logged at the end.
  uint64_t answered_ = 0;
  Clock::time_point last_error_log_{};  // loop thread only
  Clock::duration round_trips_{};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace dpfs::nfs
