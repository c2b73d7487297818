#include "backend/kv/link.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

namespace dpfs::kv {
namespace {

constexpr auto kTick = std::chrono::milliseconds(100);

void add_read(void* p) { static_cast<bool*>(p)[0] = true; }
void del_read(void* p) { static_cast<bool*>(p)[0] = false; }
void add_write(void* p) { static_cast<bool*>(p)[1] = true; }
void del_write(void* p) { static_cast<bool*>(p)[1] = false; }

}  // namespace

std::string printable(std::string_view text, size_t max) {
  std::string out(text.substr(0, max));
  for (char& c : out) {
    if (c < 0x20 || c > 0x7e) c = '?';
  }
  if (text.size() > max) out += "...";
  return out;
}

Link::Link(std::string host, int port, std::chrono::milliseconds timeout, std::string name,
           WhenDown when_down)
    : host_(std::move(host)),
      port_(port),
      timeout_(timeout),
      name_(std::move(name)),
      when_down_(when_down),
      log_(name_) {
  event_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (event_fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
  thread_ = std::thread([this] { loop(); });
}

Link::~Link() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  const uint64_t one = 1;
  (void)!::write(event_fd_, &one, sizeof(one));
  thread_.join();
  ::close(event_fd_);
}

void Link::submit(std::vector<std::string> argv, Done done) {
  Command c;
  c.argv = std::move(argv);
  c.done = std::move(done);
  submit(std::move(c));
}

void Link::submit(Command command) {
  if (command.deadline == Clock::time_point{}) command.deadline = Clock::now() + timeout_;
  std::unique_lock lock(mu_);
  if (stop_) {
    lock.unlock();
    command.done(nullptr);  // shutting down
    return;
  }
  queue_.push_back(std::move(command));
  lock.unlock();
  const uint64_t one = 1;
  (void)!::write(event_fd_, &one, sizeof(one));
}

bool Link::connected() const { return connected_.load(std::memory_order_relaxed); }

std::string Link::stats() const {
  return name_ + ": " + (connected() ? "connected" : "not connected") + ", " +
         std::to_string(answered_.load(std::memory_order_relaxed)) + " commands answered, " +
         std::to_string(failed_.load(std::memory_order_relaxed)) + " failed";
}

void Link::on_connect(const redisAsyncContext* ac, int status) {
  auto* self = static_cast<Link*>(ac->data);
  if (status != REDIS_OK) {
    // hiredis frees the context after this callback.
    self->ac_ = nullptr;
    self->up_ = false;
    self->want_[0] = self->want_[1] = false;
    self->went_down();
    const auto now = Clock::now();
    if (now - self->last_log_ > std::chrono::seconds(10)) {
      spdlog::warn("{}: cannot connect ({}); retrying", self->name_, ac->errstr);
      self->last_log_ = now;
    }
    return;
  }
  self->up_ = true;
  self->down_ = false;
  self->connected_.store(true, std::memory_order_relaxed);
  spdlog::info("{}: connected", self->name_);
}

void Link::on_disconnect(const redisAsyncContext* ac, int status) {
  auto* self = static_cast<Link*>(ac->data);
  self->ac_ = nullptr;
  self->up_ = false;
  self->want_[0] = self->want_[1] = false;
  self->connected_.store(false, std::memory_order_relaxed);
  self->went_down();
  if (status != REDIS_OK) self->log_.warn("{}: connection lost ({})", self->name_, ac->errstr);
}

void Link::went_down() {
  down_ = true;
  // Not now: this may run inside hiredis, and a command's answer may send
  // it again here. The loop fails the queue on its next turn.
}

void Link::fail_queued() {
  std::deque<Command> failed;
  {
    std::lock_guard lock(mu_);
    failed.swap(queue_);
  }
  for (Command& c : failed) {
    failed_.fetch_add(1, std::memory_order_relaxed);
    c.done(nullptr);
  }
}

void Link::on_reply(redisAsyncContext* ac, void* reply, void* privdata) {
  auto* self = static_cast<Link*>(ac->data);
  auto* f = static_cast<InFlight*>(privdata);
  // Answers come in order: this is the oldest in flight.
  if (!self->in_flight_.empty() && self->in_flight_.front() == f) self->in_flight_.pop_front();
  if (f->live) {
    const auto* r = static_cast<const redisReply*>(reply);
    (r != nullptr ? self->answered_ : self->failed_).fetch_add(1, std::memory_order_relaxed);
    f->done(r);
  }
  delete f;
}

void Link::connect() {
  redisAsyncContext* ac = redisAsyncConnect(host_.c_str(), port_);
  if (ac == nullptr) return;
  if (ac->err != 0) {
    went_down();
    const auto now = Clock::now();
    if (now - last_log_ > std::chrono::seconds(10)) {
      spdlog::warn("{}: cannot connect ({}); retrying", name_, ac->errstr);
      last_log_ = now;
    }
    redisAsyncFree(ac);
    return;
  }
  ac->data = this;
  ac->ev.data = want_;
  ac->ev.addRead = add_read;
  ac->ev.delRead = del_read;
  ac->ev.addWrite = add_write;
  ac->ev.delWrite = del_write;
  ac->ev.cleanup = nullptr;
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  ac_ = ac;
  // Connecting: hiredis waits for the socket to be writable.
  want_[1] = true;
}

void Link::send_queued() {
  std::deque<Command> batch;
  {
    std::lock_guard lock(mu_);
    batch.swap(queue_);
  }
  for (Command& c : batch) {
    if (c.asking) {
      // No callback: its +OK is read and dropped, and the command after it
      // is the one that was redirected.
      redisAsyncCommand(ac_, nullptr, nullptr, "ASKING");
    }
    const std::vector<std::string>& words = c.borrowed != nullptr ? *c.borrowed : c.argv;
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    argv.reserve(words.size());
    lens.reserve(words.size());
    for (const std::string& a : words) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    auto* f = new InFlight{std::move(c.done), c.deadline};
    in_flight_.push_back(f);
    if (redisAsyncCommandArgv(ac_, on_reply, f, int(argv.size()), argv.data(), lens.data()) !=
        REDIS_OK) {
      // Only when the context is going away; its callbacks fail the rest.
      in_flight_.pop_back();
      failed_.fetch_add(1, std::memory_order_relaxed);
      f->done(nullptr);
      delete f;
    }
  }
}

void Link::expire() {
  const auto now = Clock::now();
  // Not sent yet: waiting for a connection.
  std::vector<Done> late;
  {
    std::lock_guard lock(mu_);
    while (!queue_.empty() && queue_.front().deadline <= now) {
      late.push_back(std::move(queue_.front().done));
      queue_.pop_front();
    }
  }
  for (Done& d : late) {
    failed_.fetch_add(1, std::memory_order_relaxed);
    d(nullptr);
  }
  // Sent and unanswered past the deadline: the server is stuck or gone. Its
  // answers come in order, so nothing behind the oldest can come either:
  // start over on a new connection.
  if (!in_flight_.empty() && in_flight_.front()->deadline <= now && ac_ != nullptr) {
    drop("a command went unanswered past the timeout");
  }
}

void Link::drop(const char* why) {
  if (ac_ == nullptr) return;
  log_.warn("{}: {}; reconnecting", name_, why);
  redisAsyncContext* ac = ac_;
  ac_ = nullptr;
  up_ = false;
  connected_.store(false, std::memory_order_relaxed);
  redisAsyncFree(ac);  // every pending callback runs with null
  want_[0] = want_[1] = false;
  in_flight_.clear();  // each InFlight was deleted by its callback
  went_down();
}

void Link::loop() {
  for (;;) {
    {
      std::lock_guard lock(mu_);
      if (stop_) break;
    }
    const auto now = Clock::now();
    if (ac_ == nullptr && now >= next_connect_) {
      next_connect_ = now + kTick;
      connect();
    }
    if (ac_ != nullptr && up_) send_queued();
    if (down_ && when_down_ == WhenDown::kFail) fail_queued();
    pollfd fds[2] = {{event_fd_, POLLIN, 0}, {-1, 0, 0}};
    if (ac_ != nullptr) {
      fds[1].fd = ac_->c.fd;
      fds[1].events = short((want_[0] ? POLLIN : 0) | (want_[1] ? POLLOUT : 0));
    }
    const int n = ::poll(fds, ac_ != nullptr ? 2 : 1, int(kTick.count()));
    if (n < 0 && errno != EINTR) break;
    if (fds[0].revents & POLLIN) {
      uint64_t v;
      (void)!::read(event_fd_, &v, sizeof(v));
    }
    if (ac_ != nullptr && fds[1].revents != 0) {
      if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) redisAsyncHandleRead(ac_);
      if (ac_ != nullptr && (fds[1].revents & POLLOUT)) redisAsyncHandleWrite(ac_);
    }
    expire();
  }
  // Shutting down: what is queued or in flight fails.
  if (ac_ != nullptr) {
    redisAsyncContext* ac = ac_;
    ac_ = nullptr;
    redisAsyncFree(ac);
  }
  fail_queued();
}

}  // namespace dpfs::kv
