#include "backend/nfs/connection.h"

// libnfs.h first: the raw headers use the EXTERN it defines.
#include <nfsc/libnfs.h>

#include <fmt/format.h>
#include <nfsc/libnfs-raw-nfs.h>
#include <nfsc/libnfs-raw-nfs4.h>
#include <nfsc/libnfs-raw.h>
#include <poll.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <stdexcept>

#include "util/counter.h"

// libnfs 4.0 exports the root handle of a mounted context but declares it
// only in its private header; struct nfs_fh is {int len; char *val;} there
// (and forward-declared in libnfs-raw.h).
extern "C" {
struct nfs_fh {
  int len;
  char* val;
};
struct nfs_fh* nfs_get_rootfh(struct nfs_context* nfs);
// Also exported but private: libnfs 4.0 turns reconnecting on after an
// NFSv3 mount only; an NFSv4 context needs it set by hand.
void rpc_set_autoreconnect(struct rpc_context* rpc, int num_retries);
}

namespace dpfs::nfs {
namespace {

// How long a Call that failed without an answer waits before it is sent
// again, and how often the driver wakes, while anything is outstanding, to
// let libnfs expire RPCs and to send retries.
constexpr auto kRetryPause = std::chrono::milliseconds(200);
constexpr int kPollMs = 100;

// What epoll_fd_'s entries carry.
enum Tag : uint32_t { kSocket, kSubmitted, kTimer };

thread_local Connection* t_driving = nullptr;

uint32_t to_epoll(int poll_events) {
  return ((poll_events & POLLIN) ? EPOLLIN : 0u) | ((poll_events & POLLOUT) ? EPOLLOUT : 0u);
}

int to_poll(uint32_t epoll_events) {
  return ((epoll_events & EPOLLIN) ? POLLIN : 0) | ((epoll_events & EPOLLOUT) ? POLLOUT : 0) |
         ((epoll_events & EPOLLERR) ? POLLERR : 0) | ((epoll_events & EPOLLHUP) ? POLLHUP : 0);
}

void drain(int fd) {
  uint64_t count;
  (void)!::read(fd, &count, sizeof count);
}

// libnfs's last error, which may be none.
const char* error_text(rpc_context* rpc) {
  const char* e = rpc_get_error(rpc);
  return e != nullptr ? e : "connection failed";
}

}  // namespace

Connection::Connection(const ConnectionOptions& options, int index)
    : options_(options), index_(index) {
  nfs_ = nfs_init_context();
  if (nfs_ == nullptr) throw std::runtime_error("nfs: cannot create a libnfs context");
  auto fail = [&](const std::string& what) {
    std::string msg = fmt::format("nfs://{}{}: {}: {}", options_.url.server,
                                  options_.url.export_path, what, nfs_get_error(nfs_));
    nfs_destroy_context(nfs_);
    nfs_ = nullptr;
    for (int fd : {event_fd_, epoll_fd_, timer_fd_}) {
      if (fd >= 0) ::close(fd);
    }
    throw std::runtime_error(msg);
  };
  if (options_.url.port != 0) {
    // libnfs takes a fixed NFS port only from a URL argument.
    const std::string url = fmt::format("nfs://{}{}?nfsport={}", options_.url.server,
                                        options_.url.export_path, options_.url.port);
    nfs_url* parsed = nfs_parse_url_dir(nfs_, url.c_str());
    if (parsed == nullptr) fail("bad URL");
    nfs_destroy_url(parsed);
  }
  nfs_set_version(nfs_, options_.url.version == 4 ? NFS_V4 : NFS_V3);
  // Requests go out as root; the tenant's uid and gid are set explicitly on
  // what it creates, and the kernel checks permissions (default_permissions).
  nfs_set_uid(nfs_, 0);
  nfs_set_gid(nfs_, 0);
  nfs_set_autoreconnect(nfs_, -1);
  if (nfs_mount(nfs_, options_.url.server.c_str(), options_.url.export_path.c_str()) != 0) {
    fail(options_.url.port != 0
             ? fmt::format("mount failed (is an NFS server answering on port {}, exporting "
                           "this path to this host?)",
                           options_.url.port)
             : std::string("mount failed (is an NFS server with rpcbind answering there, "
                           "exporting this path to this host?)"));
  }
  rpc_ = nfs_get_rpc_context(nfs_);
  rpc_set_autoreconnect(rpc_, -1);
  const nfs_fh* root = nfs_get_rootfh(nfs_);
  const int max_fh = options_.url.version == 4 ? NFS4_FHSIZE : NFS3_FHSIZE;
  if (root == nullptr || root->len <= 0 || root->len > max_fh) fail("no root file handle");
  root_fh_.assign(root->val, size_t(root->len));
  readmax_ = nfs_get_readmax(nfs_);
  writemax_ = nfs_get_writemax(nfs_);
  event_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  if (event_fd_ < 0 || epoll_fd_ < 0 || timer_fd_ < 0) {
    fail(fmt::format("cannot make its event descriptors: {}", strerror(errno)));
  }
  for (auto [fd, tag] : {std::pair{event_fd_, kSubmitted}, std::pair{timer_fd_, kTimer}}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u32 = tag;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) fail("epoll_ctl");
  }
  start_loop();
}

Connection::~Connection() {
  shutdown();
  for (int fd : {event_fd_, epoll_fd_, timer_fd_}) {
    if (fd >= 0) ::close(fd);
  }
}

Connection* Connection::driven_here() { return t_driving; }

std::string Connection::stats() const {
  bool adopted;
  {
    std::lock_guard lock(mu_);
    adopted = adopted_;
  }
  return fmt::format("{}, {}", adopted ? "driven by a worker" : "own loop thread", counts());
}

std::string Connection::counts() const {
  const uint64_t answered = answered_.load(std::memory_order_relaxed);
  const double rtt_us =
      answered ? double(round_trip_ns_.load(std::memory_order_relaxed)) / 1e3 / double(answered)
               : 0.0;
  return fmt::format("{} RPCs answered, mean round trip {:.1f} us", answered, rtt_us);
}

void Connection::start_loop() {
  loop_stop_ = false;
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), fmt::format("dpfs-nfs-{}", index_).substr(0, 15).c_str());
    t_driving = this;
    loop();
    t_driving = nullptr;
  });
}

void Connection::stop_loop() {
  if (!thread_.joinable()) return;
  loop_stop_ = true;
  const uint64_t one = 1;
  (void)!::write(event_fd_, &one, sizeof one);
  thread_.join();
}

void Connection::shutdown() {
  if (nfs_ == nullptr) return;
  {
    std::lock_guard lock(mu_);
    if (adopted_) {
      // A worker's hook outlived the backend: the context is that worker's.
      spdlog::error("nfs connection {}: shut down while a worker still drives it", index_);
    }
  }
  stop_ = true;
  stop_loop();
  if (answered_ > 0) spdlog::info("nfs connection {}: {}", index_, counts());
  // From here on the calling thread owns the context. Calls never sent, or
  // waiting for a retry, are answered here; those in flight are cancelled
  // by libnfs (their callbacks run with an error). What their completions
  // submit is answered at once (closed_).
  std::vector<std::unique_ptr<Call>> unsent;
  {
    std::lock_guard lock(mu_);
    closed_ = true;
    unsent.swap(incoming_);
  }
  for (auto& call : unsent) call->complete(RPC_STATUS_CANCEL, nullptr);
  auto retries = std::move(retries_);
  for (auto& [when, call] : retries) call->complete(RPC_STATUS_CANCEL, nullptr);
  nfs_context* nfs = nfs_;
  nfs_ = nullptr;
  nfs_destroy_context(nfs);
}

void Connection::submit(std::unique_ptr<Call> call) {
  call->deadline = Clock::now() + options_.timeout;
  call->connection = this;
  if (t_driving == this) return send(std::move(call));
  {
    std::unique_lock lock(mu_);
    if (closed_) {
      lock.unlock();
      return call->complete(RPC_STATUS_CANCEL, nullptr);
    }
    incoming_.push_back(std::move(call));
    have_incoming_.store(true, std::memory_order_release);
  }
  const uint64_t one = 1;
  (void)!::write(event_fd_, &one, sizeof one);
}

void Connection::on_reply(rpc_context*, int status, void* data, void* private_data) {
  auto* call = static_cast<Call*>(private_data);
  call->connection->finish(call, status, data);
}

void Connection::send(std::unique_ptr<Call> call) {
  if (Clock::now() >= call->deadline) return call->complete(RPC_STATUS_TIMEOUT, nullptr);
  // libnfs stamps each RPC with the context's timeout when it is sent, in
  // whole seconds: give this one what is left of its deadline.
  const auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(call->deadline - Clock::now());
  nfs_set_timeout(nfs_, int(std::max<int64_t>(1, (left.count() + 999) / 1000) * 1000));
  call->sent = Clock::now();
  Call* raw = call.release();  // libnfs holds it until on_reply
  if (raw->send(rpc_, &Connection::on_reply, raw) == 0) {
    ++in_libnfs_;
    return;
  }
  call.reset(raw);
  if (call->idempotent && Clock::now() + kRetryPause < call->deadline) {
    retry_later(std::move(call));
    return;
  }
  spdlog::warn("nfs connection {}: cannot send an RPC: {}", index_, error_text(rpc_));
  call->complete(RPC_STATUS_ERROR, nullptr);
}

void Connection::finish(Call* raw, int status, void* res) {
  std::unique_ptr<Call> call(raw);
  --in_libnfs_;
  if (status == RPC_STATUS_SUCCESS) {
    // Single writer: the driver.
    util::single_writer_add(answered_);
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - call->sent);
    util::single_writer_add(round_trip_ns_, uint64_t(ns.count()));
  }
  // Every NFSv3 *3res and the v4 COMPOUND4res begin with their status.
  // "Try again later": NFS3ERR_JUKEBOX is NFS4ERR_DELAY; NFS4ERR_GRACE while
  // a restarted server waits for its clients to reclaim state.
  const int nfs_status =
      status == RPC_STATUS_SUCCESS && res != nullptr ? *static_cast<int*>(res) : 0;
  const bool jukebox = nfs_status == NFS3ERR_JUKEBOX || nfs_status == NFS4ERR_GRACE;
  const bool lost = status == RPC_STATUS_ERROR;
  if ((jukebox || lost) && !stop_ && call->idempotent &&
      Clock::now() + kRetryPause < call->deadline) {
    retry_later(std::move(call));
    return;
  }
  if (lost && !stop_) {
    spdlog::warn("nfs connection {}: an RPC failed: {}", index_, error_text(rpc_));
  }
  call->complete(status, res);
}

void Connection::retry_later(std::unique_ptr<Call> call) {
  retries_.emplace_back(Clock::now() + kRetryPause, std::move(call));
}

void Connection::take_incoming() {
  std::vector<std::unique_ptr<Call>> batch;
  {
    std::lock_guard lock(mu_);
    batch.swap(incoming_);
    have_incoming_.store(false, std::memory_order_relaxed);
  }
  for (auto& call : batch) send(std::move(call));
}

void Connection::service(int revents) {
  if (rpc_service(rpc_, revents) >= 0) return;
  // Once a second at most: a broken socket fails every round.
  const auto now = Clock::now();
  if (now - last_error_log_ >= std::chrono::seconds(1)) {
    last_error_log_ = now;
    spdlog::warn("nfs connection {}: {}", index_, error_text(rpc_));
  }
}

void Connection::tick() {
  // libnfs expires timed-out RPCs in rpc_service(), also with no events.
  service(0);
  if (retries_.empty()) return;
  const auto now = Clock::now();
  std::vector<std::unique_ptr<Call>> due;
  std::erase_if(retries_, [&](auto& entry) {
    if (entry.first > now) return false;
    due.push_back(std::move(entry.second));
    return true;
  });
  for (auto& call : due) send(std::move(call));
}

void Connection::drive(int timeout_ms, bool take) {
  pollfd fds[2] = {{rpc_get_fd(rpc_), short(rpc_which_events(rpc_)), 0},
                   {take ? event_fd_ : -1, POLLIN, 0}};
  const int n = ::poll(fds, 2, timeout_ms);
  if (n < 0 && errno != EINTR) {
    spdlog::error("nfs connection {}: poll: {}", index_, strerror(errno));
    return;
  }
  if (fds[1].revents & POLLIN) {
    drain(event_fd_);
    take_incoming();
  }
  if (fds[0].fd >= 0 && fds[0].revents != 0) service(fds[0].revents);
  tick();
}

void Connection::loop() {
  while (!loop_stop_) drive(kPollMs, /*take=*/true);
}

// --- driven by a transport worker --------------------------------------------

bool Connection::adopt() {
  {
    std::lock_guard lock(mu_);
    if (adopted_ || closed_) return false;
    adopted_ = true;
  }
  stop_loop();  // what it had in libnfs and its retries are the worker's now
  t_driving = this;
  watched_fd_ = -1;
  watched_events_ = 0;
  if (have_incoming_.load(std::memory_order_acquire)) take_incoming();
  flush();
  return true;
}

void Connection::give_back() {
  // The tenant's buffers of what this worker started stay valid until their
  // answers are in: wait for them (each has a deadline), but leave Calls
  // from other threads to the loop thread.
  flush();
  while (busy()) {
    drive(kPollMs, /*take=*/false);
  }
  t_driving = nullptr;
  if (watched_fd_ >= 0) epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, watched_fd_, nullptr);
  watched_fd_ = -1;
  if (timer_on_) {
    const itimerspec off{};
    timerfd_settime(timer_fd_, 0, &off, nullptr);
    timer_on_ = false;
  }
  {
    std::lock_guard lock(mu_);
    adopted_ = false;
  }
  start_loop();
}

void Connection::on_readable() {
  epoll_event events[4];
  const int n = epoll_wait(epoll_fd_, events, 4, 0);
  for (int i = 0; i < n; ++i) {
    switch (events[i].data.u32) {
      case kSubmitted:
        drain(event_fd_);
        take_incoming();
        break;
      case kTimer: {
        drain(timer_fd_);
        tick();
        // A look at the socket, whatever epoll says: the descriptor under
        // the same number may be a new socket after a reconnect.
        pollfd p{rpc_get_fd(rpc_), short(rpc_which_events(rpc_)), 0};
        if (p.fd >= 0 && ::poll(&p, 1, 0) > 0) service(p.revents);
        if (!busy()) {
          const itimerspec off{};
          timerfd_settime(timer_fd_, 0, &off, nullptr);
          timer_on_ = false;
        }
        break;
      }
      default:
        service(to_poll(events[i].events));
        break;
    }
  }
  flush();
}

void Connection::flush() {
  // Only once connected: a POLLOUT while connecting would be taken for the
  // connection's completion.
  const int want = rpc_which_events(rpc_);
  if ((want & POLLIN) && (want & POLLOUT)) service(POLLOUT);
  watch();
}

bool Connection::poll() {
  if (!busy() && !have_incoming_.load(std::memory_order_acquire)) return false;
  const uint64_t answered = answered_.load(std::memory_order_relaxed);
  const size_t waiting = retries_.size();
  on_readable();
  return answered_.load(std::memory_order_relaxed) != answered || retries_.size() != waiting;
}

void Connection::watch() {
  const int fd = rpc_get_fd(rpc_);
  const uint32_t events = to_epoll(rpc_which_events(rpc_));
  if (fd != watched_fd_ || events != watched_events_) {
    if (watched_fd_ >= 0 && watched_fd_ != fd) {
      epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, watched_fd_, nullptr);
    }
    watched_fd_ = -1;
    if (fd >= 0) {
      epoll_event ev{};
      ev.events = events;
      ev.data.u32 = kSocket;
      // After a reconnect the number may be the same and the socket new:
      // the old one's entry went with it (ENOENT).
      if (epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &ev) == 0 ||
          (errno == ENOENT && epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) == 0)) {
        watched_fd_ = fd;
        watched_events_ = events;
      }
    }
  }
  if (busy() && !timer_on_) {
    itimerspec every{};
    every.it_interval.tv_nsec = every.it_value.tv_nsec = kPollMs * 1000000L;
    timerfd_settime(timer_fd_, 0, &every, nullptr);
    timer_on_ = true;
  }
}

}  // namespace dpfs::nfs
