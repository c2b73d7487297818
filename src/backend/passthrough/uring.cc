#include "backend/passthrough/uring.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <variant>

#include "util/counter.h"
#include "util/iov.h"
#include "util/unique_fd.h"

namespace dpfs::passthrough {
namespace {

std::atomic<uint64_t> next_data_path_id{1};

// The completion queue is this many times the submission queue: a worker
// may have more in flight than one batch (each flush empties the SQ).
constexpr unsigned kCqPerSq = 8;
// CQEs answered per pass; the CQ slots are handed back before answering.
constexpr size_t kReapBatch = 32;

using AnyReply = std::variant<ReadReply, WriteReply, StatusReply>;

// One operation in flight: its reply and what must outlive it.
struct Op {
  AnyReply reply;
  Keepalive keep;
};

// Answers `reply` with the result of a system call or a CQE: -errno or a count.
void answer(AnyReply& reply, int64_t res) {
  if (res < 0) return std::visit([&](Reply& r) { r.error(int(-res)); }, reply);
  if (auto* r = std::get_if<ReadReply>(&reply)) return r->ok(size_t(res));
  if (auto* w = std::get_if<WriteReply>(&reply)) return w->ok(size_t(res));
  std::get<StatusReply>(reply).ok();
}

int64_t result(ssize_t rc) { return rc < 0 ? -int64_t(errno) : int64_t(rc); }

}  // namespace

// One io_uring, owned by one thread (which prepares and submits): either
// driven by that thread's worker loop through a hook ("attached"), or with
// a reaper thread for completions that do not arrive inline.
class Ring {
 public:
  static std::shared_ptr<Ring> create(unsigned entries, bool attached, int* error) {
    auto ring = std::shared_ptr<Ring>(new Ring(attached));
    io_uring_params params{};
    params.flags = IORING_SETUP_CQSIZE;
    params.cq_entries = entries * kCqPerSq;
    if (int rc = io_uring_queue_init_params(entries, &ring->ring_, &params); rc < 0) {
      *error = -rc;
      return nullptr;
    }
    ring->initialized_ = true;
    // The worker polls its eventfd with its other descriptors and reads it
    // only when it is readable; the reaper sleeps in read(2).
    ring->efd_.reset(::eventfd(0, EFD_CLOEXEC | (attached ? EFD_NONBLOCK : 0)));
    if (!ring->efd_) {
      *error = errno;
      return nullptr;
    }
    if (int rc = io_uring_register_eventfd(&ring->ring_, ring->efd_.get()); rc < 0) {
      *error = -rc;
      return nullptr;
    }
    if (!attached) ring->reaper_ = std::thread([r = ring.get()] { r->reaper_loop(); });
    return ring;
  }

  ~Ring() {
    if (reaper_.joinable()) {
      stop_.store(true);
      const uint64_t one = 1;
      [[maybe_unused]] ssize_t n = ::write(efd_.get(), &one, sizeof one);
      reaper_.join();
    }
    if (initialized_) io_uring_queue_exit(&ring_);
  }

  bool attached() const { return attached_; }
  int event_fd() const { return efd_.get(); }
  uint64_t inflight() const { return inflight_.load(std::memory_order_acquire); }
  // The hook is gone (its worker ended): the ring is idle for good.
  void retire() { retired_.store(true, std::memory_order_release); }
  bool retired() const { return retired_.load(std::memory_order_acquire); }
  uint64_t ops() const { return ops_.load(std::memory_order_relaxed); }
  uint64_t submits() const { return submits_.load(std::memory_order_relaxed); }
  uint64_t cached_reads() const { return cached_reads_.load(std::memory_order_relaxed); }
  uint64_t cached_writes() const { return cached_writes_.load(std::memory_order_relaxed); }
  // A read or write done at once without the ring. Owning thread only.
  void note_cached_read() { util::single_writer_add(cached_reads_); }
  void note_cached_write() { util::single_writer_add(cached_writes_); }

  // A free submission entry, or nullptr (the caller falls back to a system
  // call). An attached ring whose queue is full submits what it holds to
  // make room. Owning thread only.
  io_uring_sqe* sqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr && attached_) {
      submit();
      sqe = io_uring_get_sqe(&ring_);
    }
    return sqe;
  }

  // An Op to fill: an attached ring reuses answered ones (steady state
  // allocates nothing); the others' are freed by whichever thread reaps.
  std::unique_ptr<Op> new_op() {
    if (!attached_ || spare_ops_.empty()) return std::make_unique<Op>();
    std::unique_ptr<Op> op = std::move(spare_ops_.back());
    spare_ops_.pop_back();
    return op;
  }

  // Hands `op`, prepared in `sqe`, to the ring: an attached ring submits it
  // with the rest of the batch in flush(); otherwise it is submitted now and
  // answered now if it completed inline.
  void add(io_uring_sqe* sqe, std::unique_ptr<Op> op) {
    io_uring_sqe_set_data(sqe, op.release());
    inflight_.fetch_add(1, std::memory_order_relaxed);
    util::single_writer_add(ops_);
    if (attached_) return;
    submit();
    reap();
  }

  // WorkerHook::flush: the batch's entries in one io_uring_enter.
  void flush() {
    submit();
    reap();
  }

  // WorkerHook::on_readable.
  void on_readable() {
    uint64_t count = 0;
    [[maybe_unused]] ssize_t n = ::read(efd_.get(), &count, sizeof count);
    reap();
  }

  // WorkerHook::poll: peeks at the completion queue (shared memory).
  bool poll() { return reap() > 0; }

  // Submits what is prepared, then waits until everything in flight has
  // been answered. Owning thread only; attached rings.
  void drain() {
    submit();
    while (inflight() > 0) {
      if (reap() > 0) continue;
      io_uring_cqe* cqe = nullptr;
      const int rc = io_uring_wait_cqe(&ring_, &cqe);
      if (rc < 0 && rc != -EINTR && rc != -EAGAIN) {
        spdlog::error("passthrough: waiting for {} I/O operations at shutdown: {}", inflight(),
                      std::strerror(-rc));
        return;
      }
    }
  }

 private:
  explicit Ring(bool attached) : attached_(attached) {}

  // Submits every prepared entry with one io_uring_enter. The eventfd is
  // off meanwhile: what completes inline, during the submit, the caller
  // reaps right after; nobody needs waking for it.
  void submit() {
    if (io_uring_sq_ready(&ring_) == 0) return;
    io_uring_cq_eventfd_toggle(&ring_, false);
    int rc = 0;
    for (int attempt = 0; attempt < 3; ++attempt) {
      rc = io_uring_submit(&ring_);
      if (rc >= 0) break;
      // EBUSY/EAGAIN: completions must be reaped first (CQ overflow).
      reap();
    }
    // The entries stay in the submission queue and go with the next
    // submit; the kernel has them either way once the tail was published.
    if (rc < 0)
      spdlog::warn("passthrough: io_uring_submit: {}", std::strerror(-rc));
    else
      util::single_writer_add(submits_);
    // Re-enabled before the caller reaps: a completion posted after that
    // reap signals the eventfd; one posted before is reaped there.
    io_uring_cq_eventfd_toggle(&ring_, true);
  }

  // Answers every completion posted so far; returns how many. Completion
  // side: the owning thread, and the reaper of a ring that is not attached.
  size_t reap() {
    size_t total = 0;
    for (;;) {
      std::array<Op*, kReapBatch> done{};
      std::array<int, kReapBatch> res{};
      size_t n = 0;
      unsigned seen = 0;
      {
        std::unique_lock lock(cq_mu_, std::defer_lock);
        if (!attached_) lock.lock();  // an attached ring has no other reaper
        unsigned head = 0;
        io_uring_cqe* cqe = nullptr;
        io_uring_for_each_cqe(&ring_, head, cqe) {
          if (seen == kReapBatch) break;
          ++seen;
          if (auto* op = static_cast<Op*>(io_uring_cqe_get_data(cqe))) {
            done[n] = op;
            res[n] = cqe->res;
            ++n;
          }
        }
        io_uring_cq_advance(&ring_, seen);
      }
      // Answered outside the lock: a reply writes to /dev/fuse or a virtqueue.
      for (size_t i = 0; i < n; ++i) {
        std::unique_ptr<Op> op(done[i]);
        answer(op->reply, res[i]);
        if (!attached_) continue;
        op->keep.reset();
        spare_ops_.push_back(std::move(op));
      }
      inflight_.fetch_sub(n, std::memory_order_release);
      total += n;
      if (seen < kReapBatch) return total;
    }
  }

  void reaper_loop() {
    for (;;) {
      uint64_t count = 0;
      const ssize_t n = ::read(efd_.get(), &count, sizeof count);
      if (n < 0 && errno != EINTR) {
        spdlog::error("passthrough: io_uring reaper: read eventfd: {}", std::strerror(errno));
        return;
      }
      reap();
      if (stop_.load() && inflight() == 0) return;
    }
  }

  const bool attached_;
  io_uring ring_{};
  bool initialized_ = false;
  util::UniqueFd efd_;
  std::mutex cq_mu_;  // rings with a reaper only
  std::atomic<uint64_t> inflight_{0};
  std::atomic<uint64_t> ops_{0};
  std::atomic<uint64_t> submits_{0};
  std::atomic<uint64_t> cached_reads_{0};
  std::atomic<uint64_t> cached_writes_{0};
  std::atomic<bool> retired_{false};
  std::atomic<bool> stop_{false};
  std::vector<std::unique_ptr<Op>> spare_ops_;  // attached rings: answered, for reuse
  std::thread reaper_;
};

namespace {

// A worker's ring, driven by the worker's loop. Holds the ring, not the
// DataPath: the worker may outlive the backend.
class RingHook final : public WorkerHook {
 public:
  explicit RingHook(std::shared_ptr<Ring> ring) : ring_(std::move(ring)) {}
  ~RingHook() override {
    ring_->drain();
    ring_->retire();
  }
  int fd() const override { return ring_->event_fd(); }
  void on_readable() override { ring_->on_readable(); }
  void flush() override { ring_->flush(); }
  bool poll() override { return ring_->poll(); }

 private:
  std::shared_ptr<Ring> ring_;
};

// Queues the operation `prep` fills in on `ring`, with its reply and
// keepalive; false (both untouched) when there is no ring or no room.
template <typename Prep, typename R>
bool queue(Ring* ring, Prep prep, R& reply, Keepalive& keep) {
  if (ring == nullptr) return false;
  io_uring_sqe* sqe = ring->sqe();
  if (sqe == nullptr) return false;
  prep(sqe);
  std::unique_ptr<Op> op = ring->new_op();
  op->reply = std::move(reply);
  op->keep = std::move(keep);
  ring->add(sqe, std::move(op));
  return true;
}

}  // namespace

DataPath::DataPath(bool use_uring, bool at_once_without_wait, unsigned ring_entries)
    : use_uring_(use_uring),
      at_once_without_wait_(at_once_without_wait),
      ring_entries_(ring_entries),
      id_(next_data_path_id.fetch_add(1)) {}

DataPath::~DataPath() {
  std::vector<std::shared_ptr<Ring>> workers;
  {
    std::lock_guard lock(mu_);
    for (auto& [thread, ring] : rings_) {
      if (ring && ring->attached()) workers.push_back(ring);
    }
  }
  // A worker's ring is reaped by its worker, which runs until its transport
  // stops (possibly after the backend): wait for it to answer everything.
  // (Rings with a reaper wait for themselves when destroyed.)
  for (const auto& ring : workers) {
    auto start = std::chrono::steady_clock::now();
    bool warned = false;
    while (ring->inflight() > 0 && !ring->retired()) {
      if (!warned && std::chrono::steady_clock::now() - start > std::chrono::seconds(5)) {
        spdlog::warn("passthrough: waiting for {} I/O operations of a worker", ring->inflight());
        warned = true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
}

std::shared_ptr<Ring>& DataPath::ring_slot(bool attached, bool* created) {
  *created = false;
  std::shared_ptr<Ring>& slot = rings_[std::this_thread::get_id()];
  // A ring whose worker ended: this is a new thread with a reused id.
  if (slot && slot->retired()) {
    retired_.uring_ops += slot->ops();
    retired_.submits += slot->submits();
    retired_.cached_reads += slot->cached_reads();
    retired_.cached_writes += slot->cached_writes();
    ++retired_.worker_rings;
    slot.reset();
  }
  if (!slot && !failed_) {
    int error = 0;
    slot = Ring::create(ring_entries_, attached, &error);
    if (slot) {
      *created = true;
    } else {
      failed_ = true;
      spdlog::warn("passthrough: io_uring unavailable ({}); reads and writes use system calls",
                   std::strerror(error));
    }
  }
  return slot;
}

Ring* DataPath::ring() {
  if (!use_uring_) return nullptr;
  // The last DataPath this thread used, and its ring: no lock on the hot path.
  thread_local uint64_t cached_id = 0;
  thread_local Ring* cached_ring = nullptr;
  if (cached_id == id_) return cached_ring;
  std::lock_guard lock(mu_);
  bool created = false;
  cached_ring = ring_slot(/*attached=*/false, &created).get();
  cached_id = id_;
  return cached_ring;
}

std::unique_ptr<WorkerHook> DataPath::attach_worker() {
  if (!use_uring_) return nullptr;
  std::lock_guard lock(mu_);
  bool created = false;
  std::shared_ptr<Ring>& slot = ring_slot(/*attached=*/true, &created);
  if (!created) return nullptr;
  return std::make_unique<RingHook>(slot);
}

bool DataPath::uring_active() { return ring() != nullptr; }

DataPath::Counters DataPath::counters() const {
  std::lock_guard lock(mu_);
  Counters c = retired_;
  for (const auto& [thread, ring] : rings_) {
    if (!ring) continue;
    c.uring_ops += ring->ops();
    c.submits += ring->submits();
    c.cached_reads += ring->cached_reads();
    c.cached_writes += ring->cached_writes();
    if (ring->attached())
      ++c.worker_rings;
    else
      ++c.fallback_rings;
  }
  c.syscall_ops = syscall_ops_.load(std::memory_order_relaxed);
  return c;
}

std::vector<std::string> DataPath::stats() const {
  if (!use_uring_) {
    return {fmt::format("io_uring: off; {} operations by system call",
                        syscall_ops_.load(std::memory_order_relaxed))};
  }
  const Counters c = counters();
  return {fmt::format(
      "io_uring: {} operations, {} submits ({:.1f} per submit), {} worker rings, "
      "{} fallback rings; {} reads and {} writes done at once (no wait); {} "
      "operations by system call",
      c.uring_ops, c.submits, c.submits ? double(c.uring_ops) / double(c.submits) : 0.0,
      c.worker_rings, c.fallback_rings, c.cached_reads, c.cached_writes, c.syscall_ops)};
}

void DataPath::read(int fd, std::span<const iovec> dst, uint64_t offset, Keepalive keep,
                    ReadReply reply) {
  Ring* r = ring();
  if (r != nullptr && at_once_without_wait_) {
    // Data in the page cache is read at once, as a plain system call would:
    // the ring's round trip (submit, complete, reap, answer after the
    // batch) costs more than the copy, and the answer goes back with its
    // batch. RWF_NOWAIT makes the read fail with EAGAIN rather than wait for
    // the disk; a short count may be a page that is not cached as well as
    // the end of the file, so the ring reads the whole range again then.
    const ssize_t n = ::preadv2(fd, dst.data(), int(dst.size()), off_t(offset), RWF_NOWAIT);
    if (n >= 0 && size_t(n) == iov_length(dst)) {
      r->note_cached_read();
      return reply.ok(size_t(n));
    }
  }
  auto prep = [&](io_uring_sqe* sqe) {
    io_uring_prep_readv(sqe, fd, dst.data(), unsigned(dst.size()), offset);
  };
  if (queue(r, prep, reply, keep)) return;
  syscall_ops_.fetch_add(1, std::memory_order_relaxed);
  const ssize_t n = ::preadv(fd, dst.data(), int(dst.size()), off_t(offset));
  if (n < 0) return reply.error(errno);
  reply.ok(size_t(n));
}

void DataPath::write(int fd, std::span<const iovec> src, uint64_t offset, Keepalive keep,
                     WriteReply reply) {
  Ring* r = ring();
  if (r != nullptr && at_once_without_wait_) {
    // As for reads: a write that needs no wait (into the page cache) is
    // done at once; one that would wait goes through the ring. A file
    // system that cannot tell (EOPNOTSUPP: ext4's buffered writes) would
    // have the ring hand every write to an io-wq thread, which costs 3 to
    // 5 times a plain write here (docs/PASSTHROUGH_BENCHMARKS.md): its
    // writes are plain system calls from then on.
    const bool plain = nowait_writes_unsupported_.load(std::memory_order_relaxed);
    const ssize_t n =
        ::pwritev2(fd, src.data(), int(src.size()), off_t(offset), plain ? 0 : RWF_NOWAIT);
    if (n >= 0) {
      r->note_cached_write();
      return finish_write(fd, src, offset, size_t(n), std::move(reply));
    }
    if (plain) return reply.error(errno);
    if (errno == EOPNOTSUPP) {
      nowait_writes_unsupported_.store(true, std::memory_order_relaxed);
      return write(fd, src, offset, std::move(keep), std::move(reply));
    }
  }
  auto prep = [&](io_uring_sqe* sqe) {
    io_uring_prep_writev(sqe, fd, src.data(), unsigned(src.size()), offset);
  };
  if (queue(r, prep, reply, keep)) return;
  syscall_ops_.fetch_add(1, std::memory_order_relaxed);
  const ssize_t n = ::pwritev(fd, src.data(), int(src.size()), off_t(offset));
  if (n < 0) return reply.error(errno);
  reply.ok(size_t(n));
}

void DataPath::finish_write(int fd, std::span<const iovec> src, uint64_t offset, size_t done,
                            WriteReply reply) {
  const size_t total = iov_length(src);
  if (done == total) return reply.ok(done);
  // A non-blocking write that stopped part way: the rest now, as a plain
  // write would have done it (never the whole again: an O_APPEND file would
  // take it twice).
  std::vector<iovec> rest;
  while (done < total) {
    IovReader left(src, total);
    left.skip(done);
    rest.clear();
    left.take_iovecs(total - done, &rest);
    const ssize_t n = ::pwritev(fd, rest.data(), int(rest.size()), off_t(offset + done));
    if (n <= 0) break;  // what was written is the answer
    done += size_t(n);
  }
  reply.ok(done);
}

void DataPath::fsync(int fd, SyncMode mode, Keepalive keep, StatusReply reply) {
  const bool datasync = mode == SyncMode::kDataOnly;
  auto prep = [&](io_uring_sqe* sqe) {
    io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
  };
  if (queue(ring(), prep, reply, keep)) return;
  syscall_ops_.fetch_add(1, std::memory_order_relaxed);
  AnyReply v(std::move(reply));
  answer(v, result(datasync ? ::fdatasync(fd) : ::fsync(fd)));
}

void DataPath::fallocate(int fd, uint32_t mode, uint64_t offset, uint64_t length, Keepalive keep,
                         StatusReply reply) {
  auto prep = [&](io_uring_sqe* sqe) {
    io_uring_prep_fallocate(sqe, fd, int(mode), offset, length);
  };
  if (queue(ring(), prep, reply, keep)) return;
  syscall_ops_.fetch_add(1, std::memory_order_relaxed);
  AnyReply v(std::move(reply));
  answer(v, result(::fallocate(fd, int(mode), off_t(offset), off_t(length))));
}

}  // namespace dpfs::passthrough
