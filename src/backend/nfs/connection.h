// One connection to an NFS server: a libnfs context, mounted at start-up,
// and whoever drives it -- a transport worker that adopted it, or else an
// event-loop thread of its own.
//
// A libnfs context is not thread-safe, so only its driver ever touches it.
// - A transport worker adopts a connection through the backend's
//   WorkerHook (NfsBackend::attach_worker): the connection's socket, its
//   submission eventfd and a 100 ms timer are behind one epoll descriptor
//   that the worker's own event loop waits on. What that worker sends goes
//   straight into libnfs during its batch and out in one go at flush(); the
//   answers are decoded and the tenant's replies completed on the worker,
//   in on_readable(). No hand-off to another thread on the way there or
//   back.
// - A connection no worker adopted (more connections than workers, or
//   transports without hooks: the remote server's connection threads) is
//   driven by a loop thread of its own, which sleeps in poll(2) only.
// Any other thread hands a Call over through submit() (a queue and an
// eventfd), and its completion runs on the driver. No thread ever blocks
// on the network: drivers wait in poll/epoll only, the rest only queue.
//
// Faults: libnfs reconnects a dropped TCP connection by itself (to the same
// server and port, resending what was in flight). On top of that a Call that
// failed without an answer (the connection broke, the server said JUKEBOX,
// NFS4ERR_DELAY or NFS4ERR_GRACE) is sent again after a short pause if it is
// idempotent (`Call::idempotent`) and its deadline has not passed; a Call not
// answered by its deadline completes with RPC_STATUS_TIMEOUT. Nothing waits
// longer than the configured timeout (plus one timer period).
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
  virtual int send(rpc_context* rpc, void (*cb)(rpc_context*, int, void*, void*), void* data) = 0;
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
  const void* owner = nullptr;               // whose connection (Connection::owner())
};

class Connection {
 public:
  // Mounts the export (blocking: start-up only) and starts the loop thread.
  // Throws std::runtime_error with libnfs's reason.
  explicit Connection(const ConnectionOptions& options, int index);
  ~Connection();  // shutdown()
  // Stops the loop thread and completes every Call not yet answered with
  // RPC_STATUS_CANCEL; Calls submitted after it complete so at once, on the
  // submitting thread. Idempotent. No worker may still drive the
  // connection (its hook is destroyed first).
  void shutdown();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // The export's root file handle (MOUNT's answer).
  const std::string& root_fh() const { return root_fh_; }
  // The server's largest READ and WRITE (FSINFO rtmax, wtmax).
  uint64_t readmax() const { return readmax_; }
  uint64_t writemax() const { return writemax_; }
  const void* owner() const { return options_.owner; }
  // One line for `dpfs stats`: who drives it, RPCs answered, mean round trip.
  std::string stats() const;

  // Any thread. On the connection's driver the Call goes to libnfs at once
  // (out on the wire at the end of the worker's batch); from any other
  // thread it is queued for the driver.
  void submit(std::unique_ptr<Call> call);

  // The connection the calling thread drives (as its adopting worker or its
  // loop thread), or null.
  static Connection* driven_here();

  // --- a transport worker driving the connection (see NfsBackend's hook) --
  // Takes the connection over from its loop thread; the calling thread
  // drives it from now on. False if another worker already has it.
  bool adopt();
  // On the adopting worker: waits (in poll, within the Calls' deadlines)
  // until what libnfs holds has been answered, then hands the connection
  // back to a loop thread.
  void give_back();
  // Readable when the connection has something for its driver: an answer
  // on the socket, a Call from another thread, a timer tick.
  int wait_fd() const { return epoll_fd_; }
  void on_readable();  // answers what arrived; never blocks
  void flush();        // writes what was sent into libnfs out to the socket
  bool poll();         // a busy-polling worker's round; true if anything happened

 private:
  static void on_reply(rpc_context* rpc, int status, void* data, void* private_data);
  // Driver only, below.
  void loop();                                     // the loop thread
  void drive(int timeout_ms, bool take_incoming);  // one poll(2) round
  void take_incoming();
  void service(int revents);
  void tick();   // timeouts, due retries, a look at the socket
  void watch();  // the epoll interest in the socket and the timer, as needed now
  void send(std::unique_ptr<Call> call);
  void finish(Call* call, int status, void* res);  // takes ownership back
  void retry_later(std::unique_ptr<Call> call);
  bool busy() const { return in_libnfs_ > 0 || !retries_.empty(); }
  void start_loop();
  void stop_loop();
  std::string counts() const;  // "N RPCs answered, mean round trip X us"

  const ConnectionOptions options_;
  const int index_;
  nfs_context* nfs_ = nullptr;
  rpc_context* rpc_ = nullptr;
  std::string root_fh_;
  uint64_t readmax_ = 0;
  uint64_t writemax_ = 0;
  int event_fd_ = -1;  // Calls from other threads are waiting
  int epoll_fd_ = -1;  // for an adopting worker: the socket, event_fd_, timer_fd_
  int timer_fd_ = -1;  // 100 ms ticks while anything is outstanding

  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Call>> incoming_;  // guarded by mu_
  std::atomic<bool> have_incoming_{false};       // incoming_ is not empty
  bool closed_ = false;                          // guarded by mu_
  bool adopted_ = false;                         // guarded by mu_
  // Driver only: Calls waiting to be sent again, with when.
  std::vector<std::pair<Clock::time_point, std::unique_ptr<Call>>> retries_;
  uint64_t in_libnfs_ = 0;       // driver only: Calls sent and not yet called back
  int watched_fd_ = -1;          // driver only: the socket as epoll_fd_ has it
  uint32_t watched_events_ = 0;  // and with which events
  bool timer_on_ = false;        // driver only
  // Answered RPCs and their summed round trips (send to callback: libnfs,
  // the network and the server) in ns: written by the driver, read by stats.
  std::atomic<uint64_t> answered_{0};
  std::atomic<uint64_t> round_trip_ns_{0};
  Clock::time_point last_error_log_{};  // driver only
  std::atomic<bool> stop_{false};       // shutting down: nothing is retried
  std::atomic<bool> loop_stop_{false};  // the loop thread is to hand over or end
  std::thread thread_;
};

}  // namespace dpfs::nfs
