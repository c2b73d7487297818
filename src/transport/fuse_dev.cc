#include "transport/fuse_dev.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/fuse.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <string_view>
#include <system_error>

#include "transport/log_recurring.h"
#include "util/counter.h"

namespace dpfs::transport {
namespace {

constexpr const char* kFuseDevice = "/dev/fuse";
// The signal that interrupts a worker blocked in read(2) when the device
// stops while the connection is still alive (a lazily detached mount).
constexpr int kWakeSignal = SIGUSR2;
// Slots per worker at most: each is a pending reply (a SETLKW waiting for
// its lock, a backend answering later). Buffers are allocated untouched, so
// a slot costs physical memory only for the pages a request really used.
constexpr size_t kMaxSlots = 256;
// Requests a worker takes from the kernel before the backend starts their
// I/O (WorkerHook::flush): bounds latency while still batching.
constexpr unsigned kBatch = 64;

std::string errno_text(int e) { return std::strerror(e); }

// /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape_mountinfo(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '7' && s[i + 2] >= '0' &&
        s[i + 2] <= '7' && s[i + 3] >= '0' && s[i + 3] <= '7') {
      out += char((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

// The topmost mount at `path` (an absolute, canonical path), from
// /proc/self/mountinfo: "36 35 98:0 /root /mnt rw,noatime shared:1 - ext4 /dev/sda1 rw".
struct MountEntry {
  std::string dev;  // "major:minor"
  std::string fstype;
};
std::optional<MountEntry> find_mount(const std::string& path) {
  std::ifstream in("/proc/self/mountinfo");
  std::optional<MountEntry> found;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, dev, root, mount_point, field;
    if (!(fields >> id >> parent >> dev >> root >> mount_point)) continue;
    if (unescape_mountinfo(mount_point) != path) continue;
    while (fields >> field && field != "-") {
    }
    std::string fstype;
    fields >> fstype;
    found = MountEntry{dev, fstype};  // later lines are mounted on top of earlier ones
  }
  return found;
}

bool is_mount_point(const std::string& path, const struct stat& st) {
  if (find_mount(path)) return true;
  // Without /proc: a directory on another device than its parent is a mount.
  struct stat parent {};
  if (::stat((path + "/..").c_str(), &parent) == 0 && parent.st_dev != st.st_dev) return true;
  return path == "/";
}

void wake_handler(int) {}

void install_wake_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_handler = wake_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: a blocked read(2) returns EINTR
    sigaction(kWakeSignal, &sa, nullptr);
  });
}

std::atomic<uint64_t> g_write_errors{0};

}  // namespace

// --- FuseMount ---------------------------------------------------------------

FuseMount::FuseMount(const MountOptions& options) {
  const std::string& dir = options.mount_point;
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    const int e = errno;
    if (e == ENOENT && options.create_mount_point) {
      if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
        throw MountError(fmt::format("cannot create mount point {}: {}", dir, errno_text(errno)));
      }
      spdlog::info("created mount point {}", dir);
      if (::stat(dir.c_str(), &st) != 0) {
        throw MountError(fmt::format("mount point {}: {}", dir, errno_text(errno)));
      }
    } else if (e == ENOENT) {
      throw MountError(fmt::format("mount point {} does not exist", dir));
    } else if (e == ENOTCONN) {
      throw MountError(fmt::format(
          "mount point {} is a FUSE mount whose daemon is gone; unmount it first (umount -l {})",
          dir, dir));
    } else {
      throw MountError(fmt::format("mount point {}: {}", dir, errno_text(e)));
    }
  }
  if (!S_ISDIR(st.st_mode)) {
    throw MountError(fmt::format("mount point {} is not a directory", dir));
  }
  char* real = ::realpath(dir.c_str(), nullptr);
  if (real == nullptr) throw MountError(fmt::format("mount point {}: {}", dir, errno_text(errno)));
  path_ = real;
  std::free(real);
  if (is_mount_point(path_, st)) {
    throw MountError(fmt::format(
        "mount point {} is busy: something is already mounted there (unmount it first)", dir));
  }

  fd_.reset(::open(kFuseDevice, O_RDWR | O_CLOEXEC));
  if (!fd_) {
    const int e = errno;
    if (e == ENOENT || e == ENODEV || e == ENXIO) {
      throw MountError(fmt::format("cannot open {}: {}; load the fuse module (modprobe fuse)",
                                   kFuseDevice, errno_text(e)));
    }
    throw MountError(fmt::format("cannot open {}: {}", kFuseDevice, errno_text(e)));
  }

  // The kernel's fuse mount options (fs/fuse/inode.c). default_permissions:
  // the kernel checks permissions from the attributes we report, as a local
  // file system would. allow_other: every user of this host may use the
  // mount, not only the one who mounted it. MS_NOSUID and MS_NODEV unless
  // the operator asks: every user of this host may reach the mount, and the
  // files on it are the tenant's (mount(8) "user" implies them too).
  std::string data =
      fmt::format("fd={},rootmode=40000,user_id={},group_id={},default_permissions,allow_other",
                  fd_.get(), ::geteuid(), ::getegid());
  if (options.max_read != 0) data += fmt::format(",max_read={}", options.max_read);
  unsigned long flags = 0;
  if (!options.allow_suid) flags |= MS_NOSUID;
  if (!options.allow_dev) flags |= MS_NODEV;
  if (::mount("dpfs", path_.c_str(), "fuse.dpfs", flags, data.c_str()) != 0) {
    const int e = errno;
    if (e == EPERM) {
      throw MountError(
          fmt::format("mount of {} failed: {} (dpfs calls mount(2) itself and needs "
                      "root or CAP_SYS_ADMIN)",
                      dir, errno_text(e)));
    }
    throw MountError(fmt::format("mount of {} failed: {}", dir, errno_text(e)));
  }
  mounted_ = true;
  if (const std::optional<MountEntry> top = find_mount(path_)) device_ = top->dev;
}

FuseMount::~FuseMount() { unmount(); }

void FuseMount::unmount() {
  if (!mounted_) return;
  mounted_ = false;
  if (unmounter_) {
    unmounter_->run(quiet_);  // it logs the outcome
    return;
  }
  // Only what we mounted: if someone unmounted it and mounted something
  // else in its place, that is not ours to remove.
  const std::optional<MountEntry> top = find_mount(path_);
  if (!top || top->fstype != "fuse.dpfs" || (!device_.empty() && top->dev != device_)) {
    spdlog::info("{} was already unmounted", path_);
    return;
  }
  if (::umount2(path_.c_str(), UMOUNT_NOFOLLOW) == 0) {
    spdlog::log(quiet_ ? spdlog::level::debug : spdlog::level::info, "unmounted {}", path_);
    return;
  }
  int e = errno;
  if (e == EBUSY) {
    spdlog::warn("{} is busy; detaching it lazily: processes still using it will see ENOTCONN",
                 path_);
    if (::umount2(path_.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW) == 0) return;
    e = errno;
  }
  if (e == EINVAL) {
    spdlog::info("{} was already unmounted", path_);
    return;
  }
  spdlog::error("unmounting {}: {}", path_, errno_text(e));
}

void FuseMount::keep_unmounter() {
  // The helper's copy of this object has no unmounter yet: its unmount()
  // is the real one, run where the mount point is in reach.
  try {
    unmounter_ = std::make_unique<sandbox::OutsideCleanup>([this](bool quiet) {
      quiet_ = quiet;
      unmount();
    });
  } catch (const std::system_error& e) {
    throw MountError(fmt::format("cannot start the unmounter: {}", e.what()));
  }
}

std::vector<util::UniqueFd> FuseMount::open_devices(unsigned n) {
  std::vector<util::UniqueFd> fds;
  for (unsigned i = 0; i < n; ++i) {
    util::UniqueFd fd(::open(kFuseDevice, O_RDWR | O_CLOEXEC));
    if (!fd) break;
    fds.push_back(std::move(fd));
  }
  return fds;
}

// --- DevFuseTransport::Worker ------------------------------------------------------

// One worker thread and the request slots it reads into. The worker thread
// owns the pool (the vector); a slot's `busy` flag hands it to whoever
// completes the request and back.
class DevFuseTransport::Worker {
 public:
  Worker(DevFuseTransport& device, unsigned index, int fd, util::UniqueFd owned_fd)
      : device_(device), index_(index), fd_(fd), owned_fd_(std::move(owned_fd)) {
    const fuse::RequestHandler& session = device_.session_;
    // The kernel refuses a read into a buffer that cannot hold a WRITE of
    // its max_write plus headers, and never less than FUSE_MIN_READ_BUFFER.
    in_size_ = std::max<size_t>(session.max_request_size(), FUSE_MIN_READ_BUFFER);
    out_size_ = session.max_reply_size();
    slots_.push_back(std::make_unique<Slot>(*this));
  }

  ~Worker() {
    if (thread_.joinable()) thread_.join();
    for (const auto& slot : slots_) {
      if (slot->busy.load(std::memory_order_acquire)) {
        spdlog::error("fuse worker {}: a request is still pending at shutdown", index_);
      }
    }
  }

  void start() {
    thread_ = std::thread([this] { run(); });
  }

  bool started() const { return thread_.joinable(); }
  // Requests read from /dev/fuse so far.
  uint64_t taken() const { return taken_.load(std::memory_order_relaxed); }
  bool exited() const { return exited_.load(std::memory_order_acquire); }

  // Interrupts a read(2) or a wait for a free slot; the worker then sees
  // that the device is stopping.
  void wake() {
    releases_.fetch_add(1);
    releases_.notify_all();
    if (thread_.joinable() && !exited()) pthread_kill(thread_.native_handle(), kWakeSignal);
  }

  void join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  // A request buffer, a reply buffer, and the Request the session sees.
  class Slot final : public fuse::Request {
   public:
    explicit Slot(Worker& worker)
        : worker_(worker),
          in_buf_(std::make_unique_for_overwrite<char[]>(worker.in_size_)),
          out_buf_(std::make_unique_for_overwrite<char[]>(worker.out_size_)) {
      in_iov_ = {in_buf_.get(), 0};
      out_iov_ = {out_buf_.get(), worker.out_size_};
      in = std::span<const iovec>(&in_iov_, 1);
      out = std::span<const iovec>(&out_iov_, 1);
      in_is_private = true;  // read from /dev/fuse into our buffer
    }

    char* in_buf() { return in_buf_.get(); }
    void set_in_len(size_t len) { in_iov_.iov_len = len; }
    std::span<const char> request() const { return {in_buf_.get(), in_iov_.iov_len}; }
    uint32_t opcode() const {
      fuse_in_header h{};
      if (in_iov_.iov_len < sizeof(h)) return 0;
      std::memcpy(&h, in_buf_.get(), sizeof(h));
      return h.opcode;
    }
    char* out_buf() { return out_buf_.get(); }

    void complete(size_t reply_len) override { worker_.reply(*this, reply_len); }

    // Set by the worker before handle(); cleared once the reply is written.
    std::atomic<bool> busy{false};

   private:
    Worker& worker_;
    std::unique_ptr<char[]> in_buf_;
    std::unique_ptr<char[]> out_buf_;
    iovec in_iov_{};
    iovec out_iov_{};
  };

  void run();
  Slot* acquire();
  // Takes up to kBatch requests and hands them to the session. Returns
  // false when the worker must stop; *idle when the kernel had no more.
  bool take_batch(bool* idle);
  // Sleeps until the kernel has a request or the backend's hook has
  // completions (which it then answers).
  void wait();

  // Writes a reply (from any thread) and frees its slot.
  void reply(Slot& slot, size_t len) {
    // The INIT reply of a device with rings takes FUSE_OVER_IO_URING.
    bool init = false;
    bool accepted = false;
    bool offered = false;
    if (len > 0 && device_.ring_ && !device_.init_answered_.load(std::memory_order_acquire) &&
        slot.opcode() == FUSE_INIT) {
      init = true;
      accepted = accept_uring_in_init_reply(slot.request(), std::span<char>(slot.out_buf(), len),
                                            &offered);
    }
    bool written = false;
    if (len > 0) {
      ssize_t n;
      do {
        n = ::write(fd_, slot.out_buf(), len);
      } while (n < 0 && errno == EINTR);
      if (n < 0) {
        const int e = errno;
        // ENOENT: the request was interrupted or the connection aborted and
        // the kernel no longer waits for this reply. ENODEV: unmounted.
        if (e != ENOENT && e != ENODEV) {
          log_recurring(g_write_errors, "writing a {}-byte FUSE reply: {}", len, errno_text(e));
        }
      } else if (size_t(n) != len) {
        log_recurring(g_write_errors, "short write of a FUSE reply: {} of {} bytes", n, len);
      } else {
        written = true;
      }
    }
    // Before the slot is freed: the worker that answered INIT starts the
    // rings before it takes another request.
    if (init) device_.init_answered(accepted && written, offered);
    // The slot may be reused as soon as busy is clear: touch it no more.
    slot.busy.store(false, std::memory_order_release);
    // Sequentially consistent, with the worker's waiting_ store and its
    // load of releases_: one of the two sides sees the other.
    releases_.fetch_add(1);
    if (waiting_.load()) releases_.notify_one();
  }

  DevFuseTransport& device_;
  const unsigned index_;
  const int fd_;
  util::UniqueFd owned_fd_;  // empty when sharing the connection's descriptor
  size_t in_size_ = 0;
  size_t out_size_ = 0;
  std::vector<std::unique_ptr<Slot>> slots_;  // worker thread only, after start()
  size_t next_ = 0;
  std::atomic<uint32_t> releases_{0};  // bumped on every reply, to wait for one
  std::atomic<bool> waiting_{false};
  std::atomic<bool> exited_{false};
  std::atomic<uint64_t> taken_{0};  // single writer: the worker thread
  // The backend's state on this worker (an io_uring ring), made and
  // destroyed on the worker thread; nullptr if the backend has none.
  std::unique_ptr<WorkerHook> hook_;
  std::thread thread_;
};

DevFuseTransport::Worker::Slot* DevFuseTransport::Worker::acquire() {
  bool warned = false;
  for (;;) {
    const uint32_t seen = releases_.load();
    const size_t n = slots_.size();
    for (size_t i = 0; i < n; ++i) {
      const size_t at = (next_ + i) % n;
      if (!slots_[at]->busy.load(std::memory_order_acquire)) {
        next_ = at;
        return slots_[at].get();
      }
    }
    if (device_.stopping_.load(std::memory_order_acquire)) return nullptr;
    if (n < kMaxSlots) {
      slots_.push_back(std::make_unique<Slot>(*this));
      next_ = n;
      spdlog::debug("fuse worker {}: all {} request slots await replies; adding one", index_, n);
      return slots_.back().get();
    }
    if (!warned) {
      spdlog::warn("fuse worker {}: all {} request slots await a reply; waiting", index_, n);
      warned = true;
    }
    if (hook_) {
      // Some of those replies are this worker's to reap; the others
      // (answered by other threads) are seen on the next round.
      hook_->flush();
      pollfd pfd{hook_->fd(), POLLIN, 0};
      if (::poll(&pfd, 1, 10) > 0) hook_->on_readable();
      continue;
    }
    waiting_.store(true);
    releases_.wait(seen);
    waiting_.store(false);
  }
}

void DevFuseTransport::Worker::run() {
  pthread_setname_np(pthread_self(), fmt::format("dpfs-fuse-{}", index_).substr(0, 15).c_str());
  sigset_t wake;
  sigemptyset(&wake);
  sigaddset(&wake, kWakeSignal);
  pthread_sigmask(SIG_UNBLOCK, &wake, nullptr);

  hook_ = device_.session_.attach_worker();
  // With a hook, requests are read until the kernel has no more (EAGAIN)
  // and the batch's I/O is then started at once; the worker sleeps in
  // poll(2) on the device and the hook's descriptor. Without one, it sleeps
  // in read(2).
  if (hook_ && ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) | O_NONBLOCK) != 0) {
    spdlog::error("fuse worker {}: fcntl O_NONBLOCK: {}", index_, errno_text(errno));
  }
  while (!device_.stopping_.load(std::memory_order_acquire)) {
    bool idle = false;
    const bool go_on = take_batch(&idle);
    if (hook_) hook_->flush();
    if (!go_on) break;
    if (idle) wait();
  }
  // Waits for the backend's I/O in flight (into this worker's slots).
  hook_.reset();
  exited_.store(true, std::memory_order_release);
  device_.worker_stopped();
}

bool DevFuseTransport::Worker::take_batch(bool* idle) {
  fuse::RequestHandler& session = device_.session_;
  for (unsigned taken = 0; taken < kBatch; ++taken) {
    Slot* slot = acquire();
    if (slot == nullptr) return false;
    const ssize_t n = ::read(fd_, slot->in_buf(), in_size_);
    if (n < 0) {
      const int e = errno;
      // EAGAIN: nothing queued (or another worker sharing the descriptor
      // took it). EINTR: a signal (or stop()). ENOENT: the request we were
      // about to get was interrupted.
      if (e == EAGAIN) *idle = true;
      if (e == EINTR || e == ENOENT || e == EAGAIN) return true;
      if (e == ENODEV) {
        spdlog::debug("fuse worker {}: connection closed", index_);
      } else {
        spdlog::error("fuse worker {}: reading {}: {}", index_, kFuseDevice, errno_text(e));
        device_.failed_.store(true, std::memory_order_release);
      }
      return false;
    }
    slot->set_in_len(size_t(n));
    util::single_writer_add(taken_);
    slot->busy.store(true, std::memory_order_relaxed);
    session.handle(*slot);
    if (session.destroyed()) {
      spdlog::debug("fuse worker {}: session destroyed", index_);
      return false;
    }
  }
  return true;
}

void DevFuseTransport::Worker::wait() {
  pollfd fds[2] = {{fd_, POLLIN, 0}, {hook_ ? hook_->fd() : -1, POLLIN, 0}};
  // EINTR (stop() or a signal): the caller looks at stopping_ again.
  if (::poll(fds, 2, -1) <= 0) return;
  if (fds[1].revents & POLLIN) hook_->on_readable();
}

// --- DevFuseTransport --------------------------------------------------------------

DevFuseTransport::DevFuseTransport(int connection_fd, fuse::RequestHandler& session,
                                   unsigned threads, std::function<void()> on_stop,
                                   std::vector<util::UniqueFd> devices, FuseUringPlan uring)
    : session_(session), on_stop_(std::move(on_stop)), uring_plan_(std::move(uring)) {
  if (uring_plan_.use) {
    // An entry's payload holds a request's arguments after the first, or
    // a reply's; the kernel asks for max_write (or max_pages) at least.
    const size_t payload = (std::max({session.max_request_size(), session.max_reply_size(),
                                      size_t(FUSE_MIN_READ_BUFFER)}) +
                            4095) &
                           ~size_t(4095);
    ring_ =
        std::make_unique<FuseRing>(connection_fd, session, uring_plan_.queues, threads, payload);
    if (const std::string& error = ring_->setup_error(); !error.empty()) {
      if (uring_plan_.mode == FuseUringMode::kOn) {
        throw MountError(
            fmt::format("fuse.io_uring = on, but FUSE over io_uring cannot be used: {}; or set "
                        "fuse.io_uring to auto",
                        error));
      }
      spdlog::info("FUSE over io_uring: not used, serving by read/write: {}", error);
      ring_.reset();
    }
  } else if (uring_plan_.mode == FuseUringMode::kAuto) {
    spdlog::info("FUSE over io_uring: not used, serving by read/write: {}", uring_plan_.reason);
  } else {
    spdlog::debug("FUSE over io_uring: not used: {}", uring_plan_.reason);
  }
  install_wake_handler();
  for (unsigned i = 0; i < threads; ++i) {
    util::UniqueFd fd;
    if (cloned_) {
      if (i < devices.size()) {
        fd = std::move(devices[i]);
      } else {
        fd.reset(::open(kFuseDevice, O_RDWR | O_CLOEXEC));
      }
      uint32_t source = uint32_t(connection_fd);
      if (!fd || ::ioctl(fd.get(), FUSE_DEV_IOC_CLONE, &source) != 0) {
        spdlog::info("cannot clone the FUSE connection ({}); workers share one descriptor",
                     errno_text(errno));
        fd.reset();
        cloned_ = false;
      }
    }
    const int worker_fd = fd ? fd.get() : connection_fd;
    workers_.push_back(std::make_unique<Worker>(*this, i, worker_fd, std::move(fd)));
  }
  try {
    for (auto& w : workers_) w->start();
  } catch (const std::system_error& e) {
    stop();
    throw MountError(fmt::format("cannot start a worker thread: {}", e.what()));
  }
}

DevFuseTransport::~DevFuseTransport() { stop(); }

void DevFuseTransport::stop() {
  stopping_.store(true, std::memory_order_release);
  for (auto& w : workers_) {
    // A worker blocked in read(2) on a live connection needs a signal; one
    // sent just before it entered read(2) is lost, so repeat until it exits.
    while (w->started() && !w->exited()) {
      w->wake();
      for (int i = 0; i < 10 && !w->exited(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
    w->join();
  }
  if (ring_) ring_->stop();
}

void DevFuseTransport::init_answered(bool accepted, bool offered) {
  if (init_answered_.exchange(true)) return;
  if (!accepted) {
    uring_unavailable(offered ? "the INIT reply could not be written with it"
                              : fmt::format("the kernel did not offer it at INIT (is {} still on?)",
                                            kEnableUringParameter));
    return;
  }
  if (const std::string error = ring_->start(); !error.empty()) {
    uring_unavailable(error);
    return;
  }
  uring_serving_.store(true, std::memory_order_release);
  spdlog::info(
      "FUSE over io_uring: on (fuse.io_uring = {}): {} queue{} on {} ring thread{}, {} entries "
      "each; FORGET and INTERRUPT by read/write",
      fuse_uring_mode_name(uring_plan_.mode), ring_->queues(), ring_->queues() == 1 ? "" : "s",
      ring_->rings(), ring_->rings() == 1 ? "" : "s", FuseRing::kEntriesPerQueue);
}

void DevFuseTransport::uring_unavailable(const std::string& why) {
  if (uring_plan_.mode != FuseUringMode::kOn) {
    spdlog::info("FUSE over io_uring: not used, serving by read/write: {}", why);
    return;
  }
  spdlog::error("fuse.io_uring = on, but FUSE over io_uring cannot be used: {}", why);
  failed_.store(true, std::memory_order_release);
  if (!notified_.exchange(true) && on_stop_) on_stop_();
}

std::vector<std::string> DevFuseTransport::stats() const {
  uint64_t read_write = 0;
  for (const auto& w : workers_) read_write += w->taken();
  const bool serving = uring_serving();
  return {fmt::format(
      "fuse transport: io_uring {}: {} requests through the ring, {} by read/write, {} ring "
      "replies made on other threads",
      serving ? fmt::format("on ({} queues, {} rings)", ring_->queues(), ring_->rings()) : "off",
      serving ? ring_->requests() : 0, read_write, serving ? ring_->foreign_replies() : 0)};
}

void DevFuseTransport::worker_stopped() {
  if (stopping_.load(std::memory_order_acquire)) return;
  if (!notified_.exchange(true) && on_stop_) on_stop_();
}

}  // namespace dpfs::transport
