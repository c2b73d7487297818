#include "backend/kv/link.h"

#include <fmt/format.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

namespace dpfs::kv {
namespace {

// How often a lane's driver wakes, while anything is outstanding or a link
// is not connected, to reconnect and to fail what passed its deadline.
constexpr auto kTick = std::chrono::milliseconds(100);

thread_local Lane* t_driving = nullptr;

void drain(int fd) {
  uint64_t count;
  (void)!::read(fd, &count, sizeof count);
}

}  // namespace

std::string printable(std::string_view text, size_t max) {
  std::string out(text.substr(0, max));
  for (char& c : out) {
    if (c < 0x20 || c > 0x7e) c = '?';
  }
  if (text.size() > max) out += "...";
  return out;
}

// --- Link -------------------------------------------------------------------

Link::Link(Lane& lane, std::string host, int port, std::chrono::milliseconds timeout,
           std::string name, WhenDown when_down)
    : lane_(lane),
      host_(std::move(host)),
      port_(port),
      timeout_(timeout),
      name_(std::move(name)),
      when_down_(when_down),
      log_(name_) {
  lane_.add(this);
}

Link::~Link() { close(); }

void Link::submit(std::vector<std::string> argv, Done done) {
  Command c;
  c.argv = std::move(argv);
  c.done = std::move(done);
  submit(std::move(c));
}

void Link::submit(Command command) {
  if (command.deadline == Clock::time_point{}) command.deadline = Clock::now() + timeout_;
  const bool driver = t_driving == &lane_;
  if (driver) {
    // What other threads queued goes first; then this, straight to hiredis.
    take_queued();
    if (c_ != nullptr && up_ && !have_queued_.load(std::memory_order_acquire)) {
      return send(command);
    }
  }
  std::unique_lock lock(mu_);
  if (closed_) {
    lock.unlock();
    failed_.fetch_add(1, std::memory_order_relaxed);
    command.done(nullptr);  // shutting down
    return;
  }
  queue_.push_back(std::move(command));
  have_queued_.store(true, std::memory_order_release);
  lock.unlock();
  // The driver sends it once connected (it looks on every tick).
  if (!driver) lane_.wake();
}

bool Link::connected() const { return connected_.load(std::memory_order_relaxed); }

std::string Link::stats() const {
  return name_ + ": " + (connected() ? "connected" : "not connected") + ", " +
         std::to_string(answered_.load(std::memory_order_relaxed)) + " commands answered, " +
         std::to_string(failed_.load(std::memory_order_relaxed)) + " failed";
}

void Link::fail_queued() {
  std::deque<Command> failed;
  {
    std::lock_guard lock(mu_);
    failed.swap(queue_);
    have_queued_.store(false, std::memory_order_relaxed);
  }
  for (Command& c : failed) {
    failed_.fetch_add(1, std::memory_order_relaxed);
    c.done(nullptr);
  }
}

void Link::connect() {
  redisContext* c = redisConnectNonBlock(host_.c_str(), port_);
  if (c == nullptr) return;
  if (c->err != 0) {
    down_ = true;
    const auto now = Clock::now();
    if (now - last_log_ > std::chrono::seconds(10)) {
      spdlog::warn("{}: cannot connect ({}); retrying", name_, c->errstr);
      last_log_ = now;
    }
    redisFree(c);
    return;
  }
  c_ = c;
  // Writable once the connection is made (or refused).
  connecting_ = true;
  up_ = false;
}

void Link::finish_connect() {
  int error = 0;
  socklen_t len = sizeof error;
  if (::getsockopt(c_->fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0) error = errno;
  if (error == EINPROGRESS) return;
  connecting_ = false;
  if (error != 0) {
    redisFree(c_);
    c_ = nullptr;
    watched_fd_ = -1;
    watched_events_ = 0;
    down_ = true;
    const auto now = Clock::now();
    if (now - last_log_ > std::chrono::seconds(10)) {
      spdlog::warn("{}: cannot connect ({}); retrying", name_, std::strerror(error));
      last_log_ = now;
    }
    return;
  }
  up_ = true;
  down_ = false;
  connected_.store(true, std::memory_order_relaxed);
  spdlog::info("{}: connected", name_);
}

void Link::take_queued() {
  if (!have_queued_.load(std::memory_order_acquire)) return;
  if (c_ == nullptr || !up_) {
    if (down_ && when_down_ == WhenDown::kFail) fail_queued();
    return;
  }
  std::deque<Command> batch;
  {
    std::lock_guard lock(mu_);
    batch.swap(queue_);
    have_queued_.store(false, std::memory_order_relaxed);
  }
  for (Command& c : batch) send(c);
}

void Link::send(Command& c) {
  if (c_ == nullptr) {
    // Lost meanwhile (an earlier command's answer broke the connection).
    failed_.fetch_add(1, std::memory_order_relaxed);
    return c.done(nullptr);
  }
  if (c.asking) {
    // Its +OK is read and dropped; the command after it is the one that
    // was redirected.
    const char* asking = "ASKING";
    const size_t len = 6;
    redisAppendCommandArgv(c_, 1, &asking, &len);
    in_flight_.push_back(new InFlight{nullptr, c.deadline, /*asking=*/true});
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
  if (redisAppendCommandArgv(c_, int(argv.size()), argv.data(), lens.data()) != REDIS_OK) {
    failed_.fetch_add(1, std::memory_order_relaxed);
    return c.done(nullptr);  // out of memory
  }
  in_flight_.push_back(new InFlight{std::move(c.done), c.deadline});
  unflushed_ = true;
}

void Link::read_answers() {
  if (redisBufferRead(c_) != REDIS_OK) {
    return drop(c_->err == REDIS_ERR_EOF ? "connection lost (closed by the store)"
                                         : "connection lost (reading failed)");
  }
  for (;;) {
    void* raw = nullptr;
    if (redisGetReplyFromReader(c_, &raw) != REDIS_OK) {
      return drop("the store's answer does not parse");
    }
    if (raw == nullptr) return;
    auto* r = static_cast<redisReply*>(raw);
    if (in_flight_.empty()) {
      freeReplyObject(r);
      return drop("the store answered a command nobody sent");
    }
    // Answers come in order: this is the oldest in flight's.
    std::unique_ptr<InFlight> f(in_flight_.front());
    in_flight_.pop_front();
    if (!f->asking) {
      answered_.fetch_add(1, std::memory_order_relaxed);
      f->done(r);
    }
    freeReplyObject(r);
    if (c_ == nullptr) return;
  }
}

void Link::on_events(uint32_t events) {
  if (c_ == nullptr) return;
  if (connecting_) {
    if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) finish_connect();
  } else {
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) read_answers();
    if (c_ != nullptr && (events & EPOLLOUT)) flush();
  }
  take_queued();  // connected just now, perhaps
}

void Link::tick(Clock::time_point now) {
  if (c_ == nullptr && now >= next_connect_) {
    next_connect_ = now + kTick;
    connect();
  }
  expire(now);
}

void Link::flush() {
  if (c_ != nullptr && up_ && unflushed_) {
    int done = 0;
    if (redisBufferWrite(c_, &done) != REDIS_OK) {
      drop("connection lost (writing failed)");
    } else {
      unflushed_ = done == 0;
    }
  }
  watch();
}

void Link::watch() {
  const int fd = c_ != nullptr ? c_->fd : -1;
  const uint32_t events = fd < 0        ? 0u
                          : connecting_ ? uint32_t(EPOLLOUT)
                          : unflushed_  ? uint32_t(EPOLLIN | EPOLLOUT)
                                        : uint32_t(EPOLLIN);
  if (fd < 0 || (fd == watched_fd_ && events == watched_events_)) return;
  lane_.watch(this, fd, events);
  watched_fd_ = fd;
  watched_events_ = events;
}

void Link::expire(Clock::time_point now) {
  // Not sent yet: waiting for a connection.
  std::vector<Done> late;
  if (have_queued_.load(std::memory_order_acquire)) {
    std::lock_guard lock(mu_);
    while (!queue_.empty() && queue_.front().deadline <= now) {
      late.push_back(std::move(queue_.front().done));
      queue_.pop_front();
    }
    have_queued_.store(!queue_.empty(), std::memory_order_relaxed);
  }
  for (Done& d : late) {
    failed_.fetch_add(1, std::memory_order_relaxed);
    d(nullptr);
  }
  // Sent and unanswered past the deadline: the server is stuck or gone. Its
  // answers come in order, so nothing behind the oldest can come either:
  // start over on a new connection. A connection still being made past
  // the deadline of what waits for it: the same.
  if (!in_flight_.empty() && in_flight_.front()->deadline <= now && c_ != nullptr) {
    drop("a command went unanswered past the timeout");
  }
}

void Link::drop(const char* why) {
  if (c_ == nullptr) return;
  log_.warn("{}: {}; reconnecting", name_, why);
  down_ = true;
  disconnect();
}

void Link::disconnect() {
  if (c_ != nullptr) {
    redisFree(c_);  // closes the socket; the lane's epoll forgets it
    c_ = nullptr;
  }
  connecting_ = up_ = unflushed_ = false;
  watched_fd_ = -1;
  watched_events_ = 0;
  connected_.store(false, std::memory_order_relaxed);
  // What was in flight fails, in order; a command its failure sends again
  // waits for the next connection (or fails at once, once closed).
  std::deque<InFlight*> lost;
  lost.swap(in_flight_);
  for (InFlight* raw : lost) {
    std::unique_ptr<InFlight> f(raw);
    if (f->asking) continue;
    failed_.fetch_add(1, std::memory_order_relaxed);
    f->done(nullptr);
  }
}

void Link::close() {
  {
    std::lock_guard lock(mu_);
    closed_ = true;
  }
  disconnect();
  fail_queued();
}

// --- Lane -------------------------------------------------------------------

Lane::Lane(std::string name) : name_(std::move(name)) {
  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  event_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  timer_fd_ = ::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  if (epoll_fd_ < 0 || event_fd_ < 0 || timer_fd_ < 0) {
    const int e = errno;
    for (int fd : {epoll_fd_, event_fd_, timer_fd_}) {
      if (fd >= 0) ::close(fd);
    }
    throw std::system_error(e, std::generic_category(), name_ + ": its event descriptors");
  }
  // The eventfd's entry carries the lane, the timer's its descriptor's
  // address, a socket's its link.
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = this;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, event_fd_, &ev);
  ev.data.ptr = &timer_fd_;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, timer_fd_, &ev);
  set_timer(true);
  start_loop();
}

Lane::~Lane() {
  close();
  for (int fd : {epoll_fd_, event_fd_, timer_fd_}) ::close(fd);
}

Lane* Lane::driven_here() { return t_driving; }

std::string Lane::driver() const {
  std::lock_guard lock(mu_);
  return adopted_ ? "driven by a worker" : "own loop thread";
}

void Lane::close() {
  {
    std::lock_guard lock(mu_);
    if (closed_) return;
    closed_ = true;
    if (adopted_) spdlog::error("{}: closed while a worker still drives it", name_);
  }
  stop_loop();
}

void Lane::add(Link* link) {
  {
    std::lock_guard lock(mu_);
    added_.push_back(link);
  }
  wake();
}

void Lane::wake() {
  const uint64_t one = 1;
  (void)!::write(event_fd_, &one, sizeof one);
}

void Lane::take_added() {
  std::vector<Link*> added;
  {
    std::lock_guard lock(mu_);
    added.swap(added_);
  }
  const auto now = Clock::now();
  for (Link* l : added) {
    links_.push_back(l);
    l->tick(now);  // connects
  }
}

bool Lane::needs_ticks() const {
  for (const Link* l : links_) {
    if (l->c_ == nullptr || !l->up_ || l->busy() || l->have_queued_.load(std::memory_order_acquire))
      return true;
  }
  return false;
}

void Lane::set_timer(bool on) {
  itimerspec every{};
  if (on) {
    every.it_interval.tv_nsec = every.it_value.tv_nsec =
        std::chrono::duration_cast<std::chrono::nanoseconds>(kTick).count();
  }
  ::timerfd_settime(timer_fd_, 0, &every, nullptr);
  timer_on_ = on;
}

void Lane::start_loop() {
  loop_stop_ = false;
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), fmt::format("dpfs-{}", name_).substr(0, 15).c_str());
    t_driving = this;
    loop();
    t_driving = nullptr;
  });
}

void Lane::stop_loop() {
  if (!thread_.joinable()) return;
  loop_stop_ = true;
  wake();
  thread_.join();
}

void Lane::loop() {
  // What came while nobody drove the lane (a worker gave it back).
  take_added();
  for (Link* l : links_) l->take_queued();
  flush();
  while (!loop_stop_.load(std::memory_order_relaxed)) drive(-1, /*take=*/true);
}

bool Lane::busy() const {
  for (const Link* l : links_) {
    if (l->busy() || l->have_queued_.load(std::memory_order_acquire)) return true;
  }
  return false;
}

void Lane::drive(int timeout_ms, bool take) {
  epoll_event events[16];
  const int n = ::epoll_wait(epoll_fd_, events, 16, timeout_ms);
  if (n < 0 && errno != EINTR) {
    spdlog::error("{}: epoll_wait: {}", name_, strerror(errno));
    return;
  }
  for (int i = 0; i < n; ++i) {
    void* tag = events[i].data.ptr;
    if (tag == this) {
      drain(event_fd_);
      if (!take) continue;  // the loop thread takes it when it starts
      take_added();
      for (Link* l : links_) l->take_queued();
    } else if (tag == &timer_fd_) {
      drain(timer_fd_);
      if (take) take_added();
      const auto now = Clock::now();
      for (Link* l : links_) {
        l->tick(now);
        if (take) l->take_queued();
      }
      // A whole tick with nothing to watch: the driver sleeps until a
      // command or an answer comes (a worker's loop is not woken for nothing).
      if (!needs_ticks()) set_timer(false);
    } else {
      static_cast<Link*>(tag)->on_events(events[i].events);
    }
  }
  flush();
}

void Lane::flush() {
  for (Link* l : links_) l->flush();
  if (!timer_on_ && needs_ticks()) set_timer(true);
}

void Lane::watch(Link* link, int fd, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = link;
  // After a reconnect the number may be the same and the socket new: the
  // old one's entry went with it (ENOENT).
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &ev) == 0) return;
  if (errno == ENOENT && ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) == 0) return;
  spdlog::error("{}: epoll_ctl: {}", name_, strerror(errno));
}

bool Lane::adopt() {
  {
    std::lock_guard lock(mu_);
    if (adopted_ || closed_) return false;
    adopted_ = true;
  }
  stop_loop();  // what its links hold is the worker's now
  t_driving = this;
  take_added();
  for (Link* l : links_) l->take_queued();
  flush();
  return true;
}

void Lane::give_back() {
  // The tenant's buffers that answers are copied into stay valid until
  // they are in: wait for them (each has a deadline), but leave commands
  // from other threads to the loop thread.
  flush();
  const auto any_in_flight = [this] {
    for (const Link* l : links_) {
      if (l->busy()) return true;
    }
    return false;
  };
  while (any_in_flight()) drive(int(kTick.count()), /*take=*/false);
  t_driving = nullptr;
  {
    std::lock_guard lock(mu_);
    adopted_ = false;
    if (closed_) return;
  }
  start_loop();
}

void Lane::on_readable() { drive(0, /*take=*/true); }

bool Lane::poll() {
  if (!busy()) return false;
  uint64_t before = 0;
  for (const Link* l : links_) before += l->answered_.load(std::memory_order_relaxed);
  on_readable();
  uint64_t after = 0;
  for (const Link* l : links_) after += l->answered_.load(std::memory_order_relaxed);
  return after != before;
}

void Lane::drive_until(const std::function<bool()>& done, Clock::time_point deadline) {
  flush();
  while (!done()) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return;
    drive(int(std::min<int64_t>(left.count(), kTick.count())), /*take=*/true);
  }
}

}  // namespace dpfs::kv
