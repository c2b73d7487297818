// Connections to Redis servers (Links) and who drives them (Lanes).
//
// A Link is one connection: a non-blocking hiredis context, pipelined
// (what is submitted goes out as soon as the socket takes it; answers come
// back in order). Not hiredis's asynchronous API: that one aborts the
// process on an answer no command asked for, which a store can send; here
// such an answer drops the connection. It has no thread: its Lane drives it. A Lane drives a set of
// links (one per server) behind one epoll descriptor: their sockets, an
// eventfd for commands other threads queue, and a 100 ms timer.
// - A transport worker adopts a lane through the backend's WorkerHook
//   (KvBackend::attach_worker). A command it submits goes straight into
//   hiredis during its batch and out at flush(); answers are read and the
//   tenant's replies completed on the worker, in on_readable(). No hand-off
//   to another thread on the way there or back.
// - A lane no worker adopted (more lanes than workers, or transports
//   without hooks) is driven by a loop thread of its own.
// Any other thread's command is queued for the driver (a queue and the
// eventfd). No thread ever blocks on the network.
//
// Faults: a command not answered by its deadline, or lost with the
// connection, completes with a null reply (the backend answers EIO). The
// driver reconnects every 100 ms while the server is away, and commands
// submitted meanwhile wait for it, each until its own deadline: a tenant
// gets EIO after the timeout when the store is gone, not a hang, and is
// served again once it is back.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "util/rate_limited_log.h"
#include "util/unique_function.h"

struct redisContext;
struct redisReply;

namespace dpfs::kv {

using Clock = std::chrono::steady_clock;

// The answer to one command: the reply, or null when none came (the
// connection broke or the deadline passed). Runs on the link's driver.
using Done = util::UniqueFunction<void(const redisReply* reply)>;

struct Command {
  std::vector<std::string> argv;
  // When set, the command's words are these instead of argv: they must
  // live until `done` has run (a caller that may send them again keeps
  // them, and `done` owns the caller's state).
  const std::vector<std::string>* borrowed = nullptr;
  Done done;
  Clock::time_point deadline{};  // the epoch: the link's timeout from now
  bool asking = false;           // ASKING goes first (a cluster's ASK redirection)
};

// What a link does with commands while its server cannot be reached.
enum class WhenDown {
  kWait,  // they wait for it to come back, each until its deadline
  kFail,  // they fail at once (null) once a connection attempt failed:
          // the caller sends them elsewhere (a cluster's other nodes)
};

// A store's text (an error reply) as a log line may hold it: at most `max`
// bytes, anything but printable ASCII shown as '?'.
std::string printable(std::string_view text, size_t max = 160);

class Lane;

class Link {
 public:
  // Driven by `lane` from the start; it connects (and reconnects) in the
  // background, and commands wait for it.
  Link(Lane& lane, std::string host, int port, std::chrono::milliseconds timeout, std::string name,
       WhenDown when_down = WhenDown::kWait);
  // REQUIRES: the lane was closed (Lane::close: nothing drives the link).
  ~Link();
  Link(const Link&) = delete;
  Link& operator=(const Link&) = delete;

  // Any thread. `done` runs exactly once, on the lane's driver (or at once
  // on the calling thread, with null, once the link is closed). On the
  // driver the command goes to hiredis at once, out on the socket at the
  // end of the worker's batch.
  void submit(std::vector<std::string> argv, Done done);
  void submit(Command command);

  // "127.0.0.1:6379 #0: connected, N commands answered, M failed".
  std::string stats() const;
  bool connected() const;
  uint64_t answered() const { return answered_.load(std::memory_order_relaxed); }

  // Closes for good: what is queued or in flight fails; later submits fail
  // at once. The calling thread must be the driver, or there is none (the
  // lane was closed).
  void close();

 private:
  friend class Lane;
  // The driver's side (Lane), below.
  void take_queued();                // sends what other threads queued, once connected
  void on_events(uint32_t events);   // the socket is ready (epoll events)
  void tick(Clock::time_point now);  // reconnects, deadlines, a look at the socket
  void flush();                      // writes what hiredis holds (connected only)
  void watch();                      // the epoll interest in the socket, as hiredis wants now
  bool busy() const { return !in_flight_.empty(); }
  void connect();
  void finish_connect();       // the socket became writable while connecting
  void read_answers();         // the socket is readable
  void drop(const char* why);  // the connection is gone: pending commands fail
  void disconnect();           // frees the context; what is in flight fails
  void send(Command& c);
  void expire(Clock::time_point now);
  void fail_queued();

  Lane& lane_;
  const std::string host_;
  const int port_;
  const std::chrono::milliseconds timeout_;
  const std::string name_;
  const WhenDown when_down_;

  mutable std::mutex mu_;
  std::deque<Command> queue_;             // guarded by mu_: for the driver to send
  std::atomic<bool> have_queued_{false};  // queue_ is not empty
  bool closed_ = false;                   // guarded by mu_

  // Driver only.
  redisContext* c_ = nullptr;
  bool connecting_ = false;      // the non-blocking connect has not completed yet
  bool unflushed_ = false;       // hiredis holds bytes the socket did not take yet
  bool up_ = false;              // connected
  bool down_ = false;            // the last attempt to connect failed, or the connection broke
  int watched_fd_ = -1;          // the socket as the lane's epoll has it
  uint32_t watched_events_ = 0;  // and with which events
  Clock::time_point next_connect_{};
  // Handed to hiredis, in order: the store answers in order too.
  struct InFlight {
    Done done;
    Clock::time_point deadline;
    bool asking = false;  // ASKING's +OK: read and dropped
  };
  std::deque<InFlight*> in_flight_;
  std::atomic<uint64_t> answered_{0};
  std::atomic<uint64_t> failed_{0};
  std::atomic<bool> connected_{false};
  Clock::time_point last_log_{};
  // A store that drops every connection at once must not flood the log.
  util::RateLimitedLog log_;
};

class Lane {
 public:
  // Starts the loop thread, which drives the lane until a worker adopts it.
  explicit Lane(std::string name);
  ~Lane();  // close()
  Lane(const Lane&) = delete;
  Lane& operator=(const Lane&) = delete;

  // Stops the loop thread; from then on nothing drives the lane's links
  // and the calling thread may close and destroy them. No worker may still
  // drive it (its hook is destroyed first). Idempotent.
  void close();

  // The lane the calling thread drives (as its adopting worker or its loop
  // thread), or null.
  static Lane* driven_here();
  // "driven by a worker" or "own loop thread".
  std::string driver() const;

  // --- a transport worker driving the lane (KvBackend's hook) --------------
  // Takes the lane over from its loop thread; the calling thread drives it
  // from now on. False if another worker already has it, or it is closed.
  bool adopt();
  // On the adopting worker: waits (within the commands' deadlines) until
  // what its links have in flight is answered, then hands the lane back to
  // a loop thread.
  void give_back();
  // Readable when a link has something for the driver: an answer on a
  // socket, a command from another thread, a timer tick.
  int wait_fd() const { return epoll_fd_; }
  void on_readable();  // answers what arrived; never blocks
  void flush();        // writes what was submitted out to the sockets
  bool poll();         // a busy-polling worker's round; true if anything was answered
  // On the driver: drives the lane until `done()` or `deadline` (a worker
  // that must wait for an answer of its own lane).
  void drive_until(const std::function<bool()>& done, Clock::time_point deadline);

 private:
  friend class Link;
  void add(Link* link);  // any thread: the driver takes it on its next turn
  void wake();           // a command was queued, or a link added
  void loop();
  void start_loop();
  void stop_loop();
  // One round: waits up to `timeout_ms` for events and handles them; with
  // `take` false, commands from other threads stay queued.
  void drive(int timeout_ms, bool take);
  void take_added();
  bool busy() const;
  bool needs_ticks() const;  // a link is not connected, or has something outstanding
  void set_timer(bool on);
  void watch(Link* link, int fd, uint32_t events);

  const std::string name_;
  int epoll_fd_ = -1;
  int event_fd_ = -1;  // commands from other threads, or links added
  int timer_fd_ = -1;  // 100 ms ticks

  mutable std::mutex mu_;
  std::vector<Link*> added_;  // guarded by mu_: not yet driven
  bool adopted_ = false;      // guarded by mu_
  bool closed_ = false;       // guarded by mu_
  std::vector<Link*> links_;  // driver only
  bool timer_on_ = false;     // driver only
  std::atomic<bool> loop_stop_{false};
  std::thread thread_;
};

}  // namespace dpfs::kv
