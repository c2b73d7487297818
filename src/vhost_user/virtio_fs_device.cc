#include "vhost_user/virtio_fs_device.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "vhost_user/adaptive_poll.h"

namespace dpfs::vhost_user {
namespace {

// Device feature bits (virtio 1.2 §6; vhost-user.rst).
constexpr uint64_t kFRingIndirectDesc = 1ull << 28;
constexpr uint64_t kFRingEventIdx = 1ull << 29;
constexpr uint64_t kFProtocolFeatures = 1ull << 30;  // VHOST_USER_F_PROTOCOL_FEATURES
constexpr uint64_t kFVersion1 = 1ull << 32;
constexpr uint64_t kFRingPacked = 1ull << 34;  // VIRTIO_F_RING_PACKED

// Chains taken from one queue in one go, before the worker looks at its
// other queues and events again.
constexpr unsigned kBatch = 64;
// Answers are published (and the driver notified, if it asks) after every
// this many requests of a batch. 8 measured best for GETATTR at depth 32
// (1 and 2: more notifications; 16 and 64: the driver waits longer).
constexpr unsigned kPublishEvery = 8;
// A polling worker drains its eventfds once in this many rounds.
constexpr uint32_t kDrainEveryRounds = 256;
// Marks the backend hook's descriptor among a worker's epoll events (the
// queues' kicks and the wake eventfd are the others).
char hook_event_tag;

// The eventfds are non-blocking (Connection makes every ring fd so): a
// counter at its maximum answers EAGAIN, which means the other side has a
// signal pending already, so nothing is lost by ignoring it.
void signal_eventfd(int fd) {
  if (fd < 0) return;
  const uint64_t one = 1;
  ssize_t n;
  do {
    n = ::write(fd, &one, sizeof(one));
  } while (n < 0 && errno == EINTR);
}

void drain_eventfd(int fd) {
  uint64_t value;
  while (::read(fd, &value, sizeof(value)) > 0) {
  }
}

}  // namespace

// One request in flight: the chain's buffers, kept until the reply is in.
class VirtioFsRequest final : public fuse::Request {
 public:
  void complete(size_t reply_len) override;

  VirtioFsDevice::Queue* queue = nullptr;
  VirtioFsDevice::QueueWorker* worker = nullptr;
  uint16_t head = 0;
  uint64_t generation = 0;  // the queue's start count when popped
  std::vector<iovec> in_iov;
  std::vector<iovec> out_iov;
};

class VirtioFsDevice::Queue {
 public:
  explicit Queue(uint32_t index) : index(index), stats(std::make_unique<QueueStats>()) {
    config.queue_index = uint16_t(index);
  }

  // Slots taken and not yet given back: requests in flight on this queue.
  size_t in_flight() const { return all.size() - free.size(); }

  VirtioFsRequest* acquire() {
    if (free.empty()) {
      all.push_back(std::make_unique<VirtioFsRequest>());
      return all.back().get();
    }
    VirtioFsRequest* r = free.back();
    free.pop_back();
    return r;
  }

  const uint32_t index;
  QueueWorker* worker = nullptr;
  unsigned worker_index = 0;
  std::unique_ptr<QueueStats> stats;

  // Set up by the control thread (workers paused).
  virtio::VringConfig config;
  bool have_num = false;
  bool have_addr = false;
  bool enabled = false;
  util::UniqueFd kick;
  util::UniqueFd call;
  util::UniqueFd err;
  bool started = false;
  bool broken_logged = false;
  uint64_t generation = 0;

  // Owned by the worker while started. Its layout (VIRTIO_F_RING_PACKED)
  // is chosen when the queue starts; nullptr until it first does.
  std::unique_ptr<virtio::Virtqueue> ring;
  virtio::DescriptorChain chain;
  bool need_publish = false;
  // Request objects: steady state reuses them. Only the worker touches
  // these, and the control thread while the worker is paused.
  std::vector<std::unique_ptr<VirtioFsRequest>> all;
  std::vector<VirtioFsRequest*> free;
};

class VirtioFsDevice::QueueWorker {
 public:
  QueueWorker(VirtioFsDevice& device, unsigned index) : device_(device), index_(index) {
    epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
    wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!epoll_ || !wake_) {
      throw std::runtime_error(fmt::format("virtio-fs worker: {}", std::strerror(errno)));
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = nullptr;
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_.get(), &ev);
    thread_ = std::thread([this] { run(); });
  }

  ~QueueWorker() { join(); }

  // Ends the thread (which first drops its backend hook). Idempotent.
  void join() {
    stop_.store(true);
    wake();
    if (thread_.joinable()) thread_.join();
  }

  void wake() { signal_eventfd(wake_.get()); }

  // REQUIRES: worker paused (or not yet running the queue).
  void watch(Queue& q) {
    queues_.push_back(&q);
    if (q.kick) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.ptr = &q;
      ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, q.kick.get(), &ev);
    }
  }
  void unwatch(Queue& q) {
    std::erase(queues_, &q);
    if (q.kick) ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, q.kick.get(), nullptr);
  }

  // A reply from the session. On this worker's thread the used entry goes
  // in now; from any other thread it is handed over.
  void complete(VirtioFsRequest& r, size_t len);

  static thread_local QueueWorker* current;

 private:
  void run();
  void park();
  // Pops, handles, publishes and notifies until the queue is empty.
  // Returns whether any chain was taken.
  bool process(Queue& q, bool polling);
  // Whether an adaptive poll has found nothing for `budget_ns` since
  // *since_ns (set at the first empty round; 0 after work).
  static bool idle_too_long(uint64_t* since_ns, uint64_t budget_ns, uint32_t idle_rounds);
  // True (logged once) when this device's guest memory faulted: stop serving.
  bool memory_lost(Queue& q);
  void publish(Queue& q);
  void drain_completions();
  // The backend's hook (if it has one) answered requests: publish them.
  void hook_readable();
  bool hook_poll();
  void finish(VirtioFsRequest& r, size_t len);

  VirtioFsDevice& device_;
  const unsigned index_;
  util::UniqueFd epoll_;
  util::UniqueFd wake_;
  std::atomic<bool> stop_{false};
  std::vector<Queue*> queues_;  // started queues this worker serves

  std::mutex done_mu_;
  std::vector<std::pair<VirtioFsRequest*, size_t>> done_;  // guarded by done_mu_
  // Whether done_ may hold something: lets a polling worker skip the lock.
  std::atomic<bool> have_done_{false};
  std::vector<std::pair<VirtioFsRequest*, size_t>> draining_;

  // The backend's state on this worker (an io_uring ring), made and
  // destroyed on the worker thread; nullptr if the backend has none.
  std::unique_ptr<WorkerHook> hook_;

  std::thread thread_;
};

thread_local VirtioFsDevice::QueueWorker* VirtioFsDevice::QueueWorker::current = nullptr;

void VirtioFsRequest::complete(size_t reply_len) { worker->complete(*this, reply_len); }

void VirtioFsDevice::QueueWorker::complete(VirtioFsRequest& r, size_t len) {
  if (current == this) {
    finish(r, len);
    return;
  }
  {
    std::lock_guard lock(done_mu_);
    done_.emplace_back(&r, len);
    have_done_.store(true, std::memory_order_release);
  }
  wake();
}

void VirtioFsDevice::QueueWorker::finish(VirtioFsRequest& r, size_t len) {
  Queue& q = *r.queue;
  // A request from before a queue restart has no used entry to fill.
  if (r.generation == q.generation && q.started && q.ring->push(r.head, uint32_t(len))) {
    q.need_publish = true;
    QueueStats& stats = *q.stats;
    fuse::single_writer_add(stats.requests);
    if (r.session_state.error != 0) fuse::single_writer_add(stats.errors);
    stats.latency.record(r.session_state.latency_ns);
  }
  q.free.push_back(&r);
}

void VirtioFsDevice::QueueWorker::publish(Queue& q) {
  if (!q.need_publish) return;
  q.need_publish = false;
  q.ring->publish();
  if (q.ring->should_notify()) {
    signal_eventfd(q.call.get());
    fuse::single_writer_add(q.stats->notifications);
  }
}

void VirtioFsDevice::QueueWorker::drain_completions() {
  {
    if (!have_done_.load(std::memory_order_acquire)) return;
    std::lock_guard lock(done_mu_);
    have_done_.store(false, std::memory_order_relaxed);
    if (done_.empty()) return;
    draining_.swap(done_);
  }
  for (auto [r, len] : draining_) finish(*r, len);
  draining_.clear();
  for (Queue* q : queues_) publish(*q);
}

bool VirtioFsDevice::QueueWorker::memory_lost(Queue& q) {
  // The front-end shrank a memory file under us; the SIGBUS handler put
  // zero pages in its place (GuestMemory::add_region). Nothing read from
  // this memory means anything any more: stop serving it until the
  // front-end sets a new table.
  if (!device_.memory_ || !device_.memory_->faulted()) return false;
  if (!q.broken_logged) {
    q.broken_logged = true;
    q.stats->broken.store(true);
    spdlog::error(
        "{}: queue {}: guest memory faulted (its file shrank under the mapping); "
        "the queue is no longer served until the front-end sets a new memory table",
        device_.options_.name, q.index);
  }
  return true;
}

// Adaptive polling's clock: read once in 64 empty rounds (a round is well
// under a microsecond), starting when the queues first came up empty.
bool VirtioFsDevice::QueueWorker::idle_too_long(uint64_t* since_ns, uint64_t budget_ns,
                                                uint32_t idle_rounds) {
  if (idle_rounds % 64 != 1) return false;
  const uint64_t now = fuse::monotonic_ns();
  if (*since_ns == 0) *since_ns = now;
  return now - *since_ns >= budget_ns;
}

bool VirtioFsDevice::QueueWorker::process(Queue& q, bool polling) {
  bool any = false;
  for (;;) {
    if (!q.started || memory_lost(q)) return any;
    unsigned n = 0;
    virtio::PopResult result = virtio::PopResult::kEmpty;
    // One clock read for the batch: every request of it was taken now.
    uint64_t taken_ns = 0;
    while (n < kBatch && (result = q.ring->pop(&q.chain)) == virtio::PopResult::kChain) {
      if (n == 0) taken_ns = fuse::monotonic_ns();
      ++n;
      VirtioFsRequest* r = q.acquire();
      r->queue = &q;
      r->worker = this;
      r->head = q.chain.head;
      r->generation = q.generation;
      r->in_iov.assign(q.chain.readable.begin(), q.chain.readable.end());
      r->out_iov.assign(q.chain.writable.begin(), q.chain.writable.end());
      r->in = r->in_iov;
      r->out = r->out_iov;
      r->received_ns = taken_ns;
      device_.session_.handle(*r);
      // What is answered goes back now, not at the end of the batch: the
      // driver reaps and refills while this worker goes on, instead of
      // waiting for the whole batch (docs/BENCHMARKS.md, "Publishing
      // within a batch").
      if (n % kPublishEvery == 0) publish(q);
    }
    any |= n > 0;
    // The backend starts what the batch prepared; what completes at once
    // is answered now and published with the rest of the batch.
    if (hook_ && n > 0) hook_->flush();
    publish(q);
    if (memory_lost(q)) return any;
    if (result == virtio::PopResult::kBroken) {
      if (!q.broken_logged) {
        q.broken_logged = true;
        q.stats->broken.store(true);
        device_.log().error(
            "{}: queue {} is broken; it is no longer served (other queues and devices "
            "go on) until the front-end resets it",
            device_.options_.name, q.index);
      }
      return any;
    }
    if (n == kBatch) continue;  // more may be waiting
    if (polling) return any;
    // Ask for kicks again; buffers that came meanwhile must be taken now or
    // their kick may be lost.
    if (!q.ring->set_notification(true)) return any;
  }
}

void VirtioFsDevice::QueueWorker::hook_readable() {
  hook_->on_readable();
  for (Queue* q : queues_) publish(*q);
}

bool VirtioFsDevice::QueueWorker::hook_poll() {
  if (!hook_ || !hook_->poll()) return false;
  for (Queue* q : queues_) publish(*q);
  return true;
}

void VirtioFsDevice::QueueWorker::park() {
  std::unique_lock lock(device_.pause_mu_);
  ++device_.paused_workers_;
  device_.pause_cv_.notify_all();
  device_.pause_cv_.wait(lock, [&] { return !device_.pause_requested_.load(); });
  --device_.paused_workers_;
}

void VirtioFsDevice::QueueWorker::run() {
  current = this;
  hook_ = device_.session_.attach_worker();
  if (hook_) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = &hook_event_tag;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, hook_->fd(), &ev) != 0) {
      spdlog::error("{}: worker {}: epoll_ctl: {}", device_.options_.name, index_,
                    std::strerror(errno));
    }
  }
  const bool poll = device_.options_.poll;
  // Adaptive: poll after each kick until the queues have been idle for the
  // budget, which shrinks while polling does not pay (adaptive_poll.h).
  const uint64_t budget_ns = poll ? 0 : uint64_t(device_.options_.poll_budget_us) * 1000;
  const bool polls = poll || budget_ns > 0;
  AdaptivePoll adapt(budget_ns);
  uint64_t slept_ns = 0;  // adaptive: when the worker last went to sleep
  uint64_t busy_ns = 0;   // when an adaptive poll last found work
  uint32_t idle = 0;
  uint32_t rounds = 0;
  bool sleeping = true;  // notifications enabled, waiting on kicks
  epoll_event events[16];
  while (!stop_.load(std::memory_order_acquire)) {
    if (device_.pause_requested_.load(std::memory_order_acquire)) {
      park();
      // A polling worker may have been paused with its queues' notifications
      // off: sleeping now would wait for kicks the driver no longer sends.
      // Poll again instead; going idle switches them back on safely.
      sleeping = !polls;
      idle = 0;
      continue;
    }
    if (polls && !sleeping) {
      // Busy-poll: no kicks, no syscalls while requests keep coming.
      bool any = false;
      for (Queue* q : queues_) any |= process(*q, /*polling=*/true);
      drain_completions();
      any |= hook_poll();
      if (any) {
        idle = 0;
        busy_ns = 0;
      } else if (budget_ns > 0 ? idle_too_long(&busy_ns, adapt.budget_ns(), ++idle)
                               : ++idle >= device_.options_.poll_idle_rounds) {
        // Idle: sleep on kicks again, unless buffers slipped in meanwhile.
        bool again = false;
        for (Queue* q : queues_) again |= q->started && q->ring->set_notification(true);
        sleeping = !again;
        idle = 0;
        busy_ns = 0;
      }
      // Pauses and stops are seen at the top of every round; the kick and
      // wake eventfds only need draining now and then (what they count is
      // already being served), so the fast path makes no system call.
      if (!sleeping) {
        if (++rounds % kDrainEveryRounds != 0) continue;
        const int n = ::epoll_wait(epoll_.get(), events, 16, 0);
        for (int i = 0; i < n; ++i) {
          if (events[i].data.ptr == nullptr)
            drain_eventfd(wake_.get());
          else if (events[i].data.ptr == &hook_event_tag)
            hook_readable();
          else
            drain_eventfd(static_cast<Queue*>(events[i].data.ptr)->kick.get());
        }
        continue;
      }
    }
    if (budget_ns > 0) slept_ns = fuse::monotonic_ns();
    const int n = ::epoll_wait(epoll_.get(), events, 16, -1);
    bool kicked = false;
    if (n < 0) {
      if (errno == EINTR) continue;
      spdlog::error("{}: worker {}: epoll_wait: {}", device_.options_.name, index_,
                    std::strerror(errno));
      break;
    }
    for (int i = 0; i < n; ++i) {
      if (events[i].data.ptr == nullptr) {
        drain_eventfd(wake_.get());
        continue;
      }
      if (events[i].data.ptr == &hook_event_tag) {
        hook_readable();
        continue;
      }
      Queue& q = *static_cast<Queue*>(events[i].data.ptr);
      drain_eventfd(q.kick.get());
      fuse::single_writer_add(q.stats->kicks);
      if (budget_ns > 0 && !kicked) adapt.woke_after(fuse::monotonic_ns() - slept_ns);
      kicked = true;
      const bool poll_now = poll || (budget_ns > 0 && adapt.budget_ns() > 0);
      if (poll_now) {
        // Switch to polling: no kicks until idle again.
        for (Queue* each : queues_) {
          if (each->started) each->ring->set_notification(false);
        }
        sleeping = false;
        idle = 0;
      }
      process(q, poll_now);
    }
    drain_completions();
  }
  // Waits for the backend's I/O in flight (into guest memory): its replies
  // come back to this worker.
  hook_.reset();
  drain_completions();
  current = nullptr;
}

// ---------------------------------------------------------------------------

namespace {

// A front-end's set-up and tear-down write a few lines per queue; the burst
// lets one whole cycle through, then the limit holds.
util::RateLimitedLog::Limits device_log_limits(const VirtioFsDeviceOptions& options) {
  util::RateLimitedLog::Limits limits;
  limits.burst += 2 * (1 + std::clamp<uint32_t>(options.request_queues, 1, 64));
  return limits;
}

}  // namespace

VirtioFsDevice::VirtioFsDevice(fuse::RequestHandler& session, VirtioFsDeviceOptions options)
    : VhostUserDevice(options.name, device_log_limits(options)),
      session_(session),
      options_(std::move(options)) {
  options_.request_queues = std::clamp<uint32_t>(options_.request_queues, 1, 64);
  const uint32_t nqueues = 1 + options_.request_queues;  // hiprio + requests
  // The hiprio queue shares the first worker: more workers than request
  // queues would idle.
  options_.threads = std::clamp<unsigned>(options_.threads, 1, options_.request_queues);
  for (uint32_t i = 0; i < nqueues; ++i) queues_.push_back(std::make_unique<Queue>(i));
  for (unsigned i = 0; i < options_.threads; ++i) {
    workers_.push_back(std::make_unique<QueueWorker>(*this, i));
  }
  // The hiprio queue shares the first worker with the first request queue.
  for (uint32_t i = 0; i < nqueues; ++i) {
    const uint32_t owner = i == 0 ? 0 : (i - 1) % options_.threads;
    queues_[i]->worker = workers_[owner].get();
    queues_[i]->worker_index = owner;
  }
}

VirtioFsDevice::~VirtioFsDevice() {
  pause();
  for (auto& q : queues_) stop_queue(*q);
  resume();
  workers_.clear();  // joins
  if (const uint64_t n = in_flight()) {
    spdlog::warn("{}: {} requests still unanswered at shutdown", options_.name, n);
  }
}

const QueueStats& VirtioFsDevice::queue_stats(uint32_t index) const {
  return *queues_[index]->stats;
}

uint64_t VirtioFsDevice::features() const {
  return kFVersion1 | kFRingIndirectDesc | kFRingEventIdx | kFProtocolFeatures | kFRingPacked;
}

uint64_t VirtioFsDevice::protocol_features() const {
  return protocol_feature::kMq | protocol_feature::kReplyAck | protocol_feature::kConfigureMemSlots;
}

int VirtioFsDevice::set_features(uint64_t features) {
  if (features & ~this->features()) return -EINVAL;
  pause();
  acked_features_ = features;
  resume();
  log().info("{}: features {:#x} (version_1={} indirect_desc={} event_idx={} ring_packed={})",
             options_.name, features, bool(features & kFVersion1),
             bool(features & kFRingIndirectDesc), bool(features & kFRingEventIdx),
             bool(features & kFRingPacked));
  return 0;
}

void VirtioFsDevice::stop_workers() {
  for (auto& w : workers_) w->join();
  workers_stopped_ = true;
}

void VirtioFsDevice::pause() {
  // Workers that ended are paused for good.
  if (pause_depth_++ > 0 || workers_stopped_) return;
  std::unique_lock lock(pause_mu_);
  pause_requested_.store(true);
  for (auto& w : workers_) w->wake();
  pause_cv_.wait(lock, [&] { return paused_workers_ == workers_.size(); });
}

void VirtioFsDevice::resume() {
  if (--pause_depth_ > 0) return;
  {
    std::lock_guard lock(pause_mu_);
    pause_requested_.store(false);
  }
  pause_cv_.notify_all();
}

uint64_t VirtioFsDevice::in_flight() const {
  uint64_t n = 0;
  for (const auto& q : queues_) n += q->in_flight();
  return n;
}

void VirtioFsDevice::release_retired_memory() {
  if (in_flight() != 0) return;
  retired_.clear();
  if (memory_) memory_->release_removed();
}

void VirtioFsDevice::remap_queues(const virtio::GuestMemory& mem, const char* why) {
  for (auto& q : queues_) {
    if (q->started && q->ring->remap(mem) != 0) {
      log().warn("{}: queue {} rings {}; stopped", options_.name, q->index, why);
      stop_queue(*q);
    }
  }
}

int VirtioFsDevice::set_mem_table(std::vector<MemoryRegionFd> regions) {
  auto mem = std::make_unique<virtio::GuestMemory>();
  for (MemoryRegionFd& r : regions) {
    const int e = mem->add_region(r.fd.release(), r.region.guest_phys_addr, r.region.memory_size,
                                  r.region.userspace_addr, r.region.mmap_offset);
    if (e != 0) {
      log().warn("{}: memory region at guest address {:#x} ({} bytes) refused: {}", options_.name,
                 r.region.guest_phys_addr, r.region.memory_size, std::strerror(e));
      return -e;
    }
  }
  pause();
  remap_queues(*mem, "are not in the new memory table");
  if (memory_) retired_.push_back(std::move(memory_));
  memory_ = std::move(mem);
  release_retired_memory();
  resume();
  log().info("{}: memory table of {} regions", options_.name, memory_->num_regions());
  for (auto& q : queues_) maybe_start(*q);
  return 0;
}

int VirtioFsDevice::add_mem_reg(MemoryRegionFd region) {
  pause();
  if (!memory_) memory_ = std::make_unique<virtio::GuestMemory>();
  const int e = memory_->add_region(region.fd.release(), region.region.guest_phys_addr,
                                    region.region.memory_size, region.region.userspace_addr,
                                    region.region.mmap_offset);
  resume();
  if (e != 0) {
    log().warn("{}: memory region at guest address {:#x} refused: {}", options_.name,
               region.region.guest_phys_addr, std::strerror(e));
    return -e;
  }
  for (auto& q : queues_) maybe_start(*q);
  return 0;
}

int VirtioFsDevice::rem_mem_reg(const MemoryRegion& region) {
  if (!memory_) return -ENOENT;
  pause();
  const int e =
      memory_->remove_region(region.guest_phys_addr, region.memory_size, region.userspace_addr);
  if (e == 0) {
    // A queue whose rings were in the removed region cannot go on.
    remap_queues(*memory_, "were in the removed memory region");
    release_retired_memory();
  }
  resume();
  return -e;
}

int VirtioFsDevice::set_vring_num(uint32_t index, uint32_t num) {
  Queue& q = *queues_[index];
  // Split rings are a power of 2; packed ones need not be (§2.8).
  const bool packed = acked_features_ & kFRingPacked;
  if (num == 0 || num > virtio::kMaxQueueSize || (!packed && (num & (num - 1)) != 0)) {
    return -EINVAL;
  }
  pause();
  q.config.size = num;
  q.have_num = true;
  resume();
  return 0;
}

int VirtioFsDevice::set_vring_addr(uint32_t index, const VringAddr& addr) {
  Queue& q = *queues_[index];
  pause();
  q.config.desc_uva = addr.desc_user_addr;
  q.config.avail_uva = addr.avail_user_addr;
  q.config.used_uva = addr.used_user_addr;
  q.have_addr = true;
  resume();
  maybe_start(q);
  return 0;
}

int VirtioFsDevice::set_vring_base(uint32_t index, uint32_t base) {
  Queue& q = *queues_[index];
  pause();
  // Packed rings: bits 0-14 the avail index, 15 its wrap counter, 16-30
  // the used index, 31 its wrap counter (vhost-user.rst).
  q.config.last_avail_idx = uint16_t(base);
  q.config.last_used_idx = uint16_t(base >> 16);
  resume();
  return 0;
}

uint32_t VirtioFsDevice::get_vring_base(uint32_t index) {
  Queue& q = *queues_[index];
  pause();
  stop_queue(q);
  // A queue that never started is at 0, as a fresh split ring.
  const uint32_t base = q.ring ? q.ring->vring_base() : 0;
  const bool packed = q.ring && q.ring->layout() == virtio::RingLayout::kPacked;
  q.config.last_avail_idx = uint16_t(base);
  q.config.last_used_idx = uint16_t(base >> 16);
  q.kick.reset();  // the ring is stopped until the next SET_VRING_KICK
  resume();
  if (packed) {
    log().info("{}: queue {} (packed) stopped at avail index {:#x}, used index {:#x}",
               options_.name, index, base & 0xffff, base >> 16);
  } else {
    log().info("{}: queue {} stopped at avail index {}", options_.name, index, base);
  }
  return base;
}

int VirtioFsDevice::set_vring_kick(uint32_t index, util::UniqueFd fd) {
  Queue& q = *queues_[index];
  pause();
  stop_queue(q);
  q.kick = std::move(fd);
  resume();
  maybe_start(q);
  return 0;
}

int VirtioFsDevice::set_vring_call(uint32_t index, util::UniqueFd fd) {
  pause();
  queues_[index]->call = std::move(fd);
  resume();
  return 0;
}

int VirtioFsDevice::set_vring_err(uint32_t index, util::UniqueFd fd) {
  pause();
  queues_[index]->err = std::move(fd);
  resume();
  return 0;
}

int VirtioFsDevice::set_vring_enable(uint32_t index, bool enable) {
  Queue& q = *queues_[index];
  pause();
  q.enabled = enable;
  if (!enable) stop_queue(q);
  resume();
  if (enable) maybe_start(q);
  return 0;
}

void VirtioFsDevice::notify_all() {
  for (auto& q : queues_) {
    if (q->started && q->call) signal_eventfd(q->call.get());
  }
}

void VirtioFsDevice::maybe_start(Queue& q) {
  if (q.started || !q.enabled || !q.have_num || !q.have_addr || !q.kick || !memory_) return;
  pause();
  q.config.event_idx = acked_features_ & kFRingEventIdx;
  q.config.indirect_desc = acked_features_ & kFRingIndirectDesc;
  const auto layout =
      acked_features_ & kFRingPacked ? virtio::RingLayout::kPacked : virtio::RingLayout::kSplit;
  if (!q.ring || q.ring->layout() != layout) q.ring = virtio::make_virtqueue(layout);
  q.config.record = options_.records != nullptr ? &options_.records[q.index] : nullptr;
  q.config.resume = resume_;
  if (resume_ && layout == virtio::RingLayout::kPacked) {
    log().warn(
        "{}: queue {} is packed: packed rings keep no record; requests a predecessor "
        "took and did not answer are lost",
        options_.name, q.index);
  }
  const int e = q.ring->start(*memory_, q.config);
  if (e != 0) {
    resume();
    log().warn("{}: queue {} cannot start: {} (size {}, rings at {:#x}/{:#x}/{:#x})", options_.name,
               q.index, e == EFAULT ? "rings outside guest memory" : "bad ring", q.config.size,
               q.config.desc_uva, q.config.avail_uva, q.config.used_uva);
    return;
  }
  q.started = true;
  q.broken_logged = false;
  q.stats->broken.store(false);
  ++q.generation;
  q.worker->watch(q);
  resume();
  // Requests may have been made available before the kick fd was watched.
  signal_eventfd(q.kick.get());
  log().info("{}: queue {} ({}) {}: size {}, avail index {}, event_idx={}{}, worker {}",
             options_.name, q.index, q.index == 0 ? "hiprio" : "requests",
             resume_ ? "resumed" : "started", q.config.size, q.ring->last_avail_idx(),
             q.config.event_idx, layout == virtio::RingLayout::kPacked ? ", packed" : "",
             q.worker_index);
}

// REQUIRES: workers paused.
void VirtioFsDevice::stop_queue(Queue& q) {
  if (!q.started) return;
  q.worker->unwatch(q);
  q.ring->stop();
  q.started = false;
  q.need_publish = false;
}

void VirtioFsDevice::reset_device() {
  pause();
  for (auto& q : queues_) {
    stop_queue(*q);
    q->kick.reset();
    q->call.reset();
    q->err.reset();
    q->have_num = q->have_addr = q->enabled = false;
    q->config = {};
    q->config.queue_index = uint16_t(q->index);
  }
  acked_features_ = 0;
  if (memory_) retired_.push_back(std::move(memory_));
  release_retired_memory();
  resume();
}

void VirtioFsDevice::disconnect() {
  reset_device();
  // The next front-end's driver starts a new FUSE session with INIT.
  session_.reset();
  uint64_t requests = 0;
  for (auto& q : queues_) requests += q->stats->requests.load();
  log().info("{}: front-end gone ({} requests served); waiting for the next", options_.name,
             requests);
}

}  // namespace dpfs::vhost_user
