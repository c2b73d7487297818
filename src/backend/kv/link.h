// One connection to a Redis server, driven by a loop thread of its own:
// hiredis's asynchronous API, pipelined (every command any thread submits
// goes out as soon as the socket takes it; answers come back in order).
//
// Faults: a command not answered by its deadline, or lost with the
// connection, completes with a null reply (the backend answers EIO). The
// loop reconnects every 100 ms while the server is away, and commands
// submitted meanwhile wait for it, each until its own deadline: a tenant
// gets EIO after the timeout when the store is gone, not a hang, and is
// served again once it is back.
//
// Thread-safe: submit() from any thread; callbacks run on the loop thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "util/rate_limited_log.h"
#include "util/unique_function.h"

struct redisAsyncContext;
struct redisReply;

namespace dpfs::kv {

using Clock = std::chrono::steady_clock;

// The answer to one command: the reply, or null when none came (the
// connection broke or the deadline passed). Runs on the link's loop thread.
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

class Link {
 public:
  // Starts the loop thread, which connects (and reconnects) in the
  // background: commands wait for it.
  Link(std::string host, int port, std::chrono::milliseconds timeout, std::string name,
       WhenDown when_down = WhenDown::kWait);
  ~Link();  // completes what is still pending with null, then joins
  Link(const Link&) = delete;
  Link& operator=(const Link&) = delete;

  // Any thread. `done` runs exactly once, on the loop thread.
  void submit(std::vector<std::string> argv, Done done);
  void submit(Command command);

  // "127.0.0.1:6379: connected, N commands answered, M failed".
  std::string stats() const;
  bool connected() const;

 private:
  void loop();
  void connect();
  void drop(const char* why);  // the connection is gone: pending commands fail
  void send_queued();
  void expire();  // deadlines
  void fail_queued();
  void went_down();
  static void on_reply(redisAsyncContext* ac, void* reply, void* privdata);
  static void on_connect(const redisAsyncContext* ac, int status);
  static void on_disconnect(const redisAsyncContext* ac, int status);

  const std::string host_;
  const int port_;
  const std::chrono::milliseconds timeout_;
  const std::string name_;
  const WhenDown when_down_;

  mutable std::mutex mu_;
  std::deque<Command> queue_;  // guarded by mu_: not yet handed to hiredis
  bool stop_ = false;          // guarded by mu_
  int event_fd_ = -1;          // queue_ has something, or stop_

  // Loop thread only.
  redisAsyncContext* ac_ = nullptr;
  bool want_[2] = {false, false};  // hiredis wants to read, to write (its event hooks)
  bool up_ = false;                // connected (on_connect said so)
  bool down_ = false;              // the last attempt to connect failed, or the connection broke
  Clock::time_point next_connect_{};
  // Handed to hiredis, in order: hiredis answers in order too.
  struct InFlight {
    Done done;
    Clock::time_point deadline;
    bool live = true;  // false: expired, answered with null already
  };
  std::deque<InFlight*> in_flight_;
  std::atomic<uint64_t> answered_{0};
  std::atomic<uint64_t> failed_{0};
  std::atomic<bool> connected_{false};
  Clock::time_point last_log_{};
  // A store that drops every connection at once must not flood the log.
  util::RateLimitedLog log_;
  std::thread thread_;
};

}  // namespace dpfs::kv
