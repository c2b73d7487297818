#include "backend/passthrough/uring.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "transport/unique_fd.h"

namespace dpfs::passthrough {
namespace {

std::atomic<uint64_t> next_data_path_id{1};

// One operation in flight: its reply and what must outlive it.
struct Op {
  std::variant<ReadReply, WriteReply, StatusReply> reply;
  Keepalive keep;
};

// Answers `reply` with the result of a system call or a CQE: -errno or a count.
void answer(std::variant<ReadReply, WriteReply, StatusReply>& reply, int64_t res) {
  if (res < 0) return std::visit([&](Reply& r) { r.error(int(-res)); }, reply);
  if (auto* r = std::get_if<ReadReply>(&reply)) return r->ok(size_t(res));
  if (auto* w = std::get_if<WriteReply>(&reply)) return w->ok(size_t(res));
  std::get<StatusReply>(reply).ok();
}

int64_t result(ssize_t rc) { return rc < 0 ? -int64_t(errno) : int64_t(rc); }

size_t iov_bytes(std::span<const iovec> iov) {
  size_t total = 0;
  for (const iovec& v : iov) total += v.iov_len;
  return total;
}

}  // namespace

class Ring {
 public:
  static std::unique_ptr<Ring> create(unsigned entries, int* error) {
    auto ring = std::unique_ptr<Ring>(new Ring());
    if (int rc = io_uring_queue_init(entries, &ring->ring_, 0); rc < 0) {
      *error = -rc;
      return nullptr;
    }
    ring->initialized_ = true;
    ring->efd_.reset(::eventfd(0, EFD_CLOEXEC));
    if (!ring->efd_) {
      *error = errno;
      return nullptr;
    }
    if (int rc = io_uring_register_eventfd(&ring->ring_, ring->efd_.get()); rc < 0) {
      *error = -rc;
      return nullptr;
    }
    ring->reaper_ = std::thread([r = ring.get()] { r->reaper_loop(); });
    return ring;
  }

  ~Ring() {
    if (reaper_.joinable()) {
      stop_.store(true);
      wake();
      reaper_.join();
    }
    if (initialized_) io_uring_queue_exit(&ring_);
  }

  // A free submission entry, or nullptr when the ring is full (the caller
  // falls back to a system call). Submission side: the owning thread only.
  io_uring_sqe* sqe() { return io_uring_get_sqe(&ring_); }

  // Submits `sqe` (prepared by the caller) for `op`, then answers whatever
  // completed inline.
  void submit(io_uring_sqe* sqe, std::unique_ptr<Op> op) {
    io_uring_sqe_set_data(sqe, op.release());
    inflight_.fetch_add(1, std::memory_order_relaxed);
    // What completes inline, during the submit, this thread answers below:
    // no eventfd signal for it, no reaper woken.
    io_uring_cq_eventfd_toggle(&ring_, false);
    int rc = 0;
    for (int attempt = 0; attempt < 3; ++attempt) {
      rc = io_uring_submit(&ring_);
      if (rc >= 0) break;
      // EBUSY/EAGAIN: completions must be reaped first (CQ overflow).
      reap();
    }
    // The entry stays in the submission queue and goes with the next
    // submit; the kernel has it either way once the tail was published.
    if (rc < 0) spdlog::warn("passthrough: io_uring_submit: {}", std::strerror(-rc));
    // Re-enabled before reaping: a completion posted after the reap signals
    // the reaper; one posted before is reaped here.
    io_uring_cq_eventfd_toggle(&ring_, true);
    reap();
  }

 private:
  Ring() = default;

  void wake() {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(efd_.get(), &one, sizeof one);
  }

  // Answers every completion posted so far. Completion side: any thread.
  void reap() {
    for (;;) {
      std::array<Op*, 32> done{};
      std::array<int64_t, 32> res{};
      size_t n = 0;
      {
        std::lock_guard lock(cq_mu_);
        io_uring_cqe* cqe = nullptr;
        while (n < done.size() && io_uring_peek_cqe(&ring_, &cqe) == 0 && cqe != nullptr) {
          done[n] = static_cast<Op*>(io_uring_cqe_get_data(cqe));
          res[n] = cqe->res;
          io_uring_cqe_seen(&ring_, cqe);
          if (done[n] != nullptr) ++n;
        }
      }
      // Answered outside the lock: a reply writes to /dev/fuse or a virtqueue.
      for (size_t i = 0; i < n; ++i) {
        std::unique_ptr<Op> op(done[i]);
        answer(op->reply, res[i]);
        inflight_.fetch_sub(1, std::memory_order_release);
      }
      if (n < done.size()) return;
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
      if (stop_.load() && inflight_.load(std::memory_order_acquire) == 0) return;
    }
  }

  io_uring ring_{};
  bool initialized_ = false;
  transport::UniqueFd efd_;
  std::mutex cq_mu_;
  std::atomic<uint64_t> inflight_{0};
  std::atomic<bool> stop_{false};
  std::thread reaper_;
};

DataPath::DataPath(bool use_uring, unsigned ring_entries)
    : use_uring_(use_uring), ring_entries_(ring_entries), id_(next_data_path_id.fetch_add(1)) {}

DataPath::~DataPath() = default;

Ring* DataPath::ring() {
  if (!use_uring_) return nullptr;
  // The last DataPath this thread used, and its ring: no lock on the hot path.
  thread_local uint64_t cached_id = 0;
  thread_local Ring* cached_ring = nullptr;
  if (cached_id == id_) return cached_ring;
  std::lock_guard lock(mu_);
  std::unique_ptr<Ring>& slot = rings_[std::this_thread::get_id()];
  if (!slot && !failed_) {
    int error = 0;
    slot = Ring::create(ring_entries_, &error);
    if (!slot) {
      failed_ = true;
      spdlog::warn("passthrough: io_uring unavailable ({}); reads and writes use system calls",
                   std::strerror(error));
    }
  }
  cached_id = id_;
  cached_ring = slot.get();
  return cached_ring;
}

bool DataPath::uring_active() { return ring() != nullptr; }

void DataPath::read(int fd, std::span<const iovec> dst, uint64_t offset, Keepalive keep,
                    ReadReply reply) {
  if (Ring* r = ring()) {
    // A read the page cache holds whole is answered at once: preadv2 with
    // RWF_NOWAIT copies it or fails with EAGAIN without ever blocking. That
    // costs less than an io_uring round trip (measured with dpfs-bench: 4k
    // random reads at depth 32 went from 2.4 to 1.7 µs of daemon CPU); what
    // would block (a cache miss), a short read (EOF or partly cached) and any
    // error go to the ring, and the worker never waits for the disk.
    const size_t want = iov_bytes(dst);
    const ssize_t n = ::preadv2(fd, dst.data(), int(dst.size()), off_t(offset), RWF_NOWAIT);
    if (n >= 0 && size_t(n) == want) return reply.ok(size_t(n));
    if (io_uring_sqe* sqe = r->sqe()) {
      io_uring_prep_readv(sqe, fd, dst.data(), unsigned(dst.size()), offset);
      r->submit(sqe, std::unique_ptr<Op>(new Op{std::move(reply), std::move(keep)}));
      return;
    }
  }
  const ssize_t n = ::preadv(fd, dst.data(), int(dst.size()), off_t(offset));
  if (n < 0) return reply.error(errno);
  reply.ok(size_t(n));
}

void DataPath::write(int fd, std::span<const iovec> src, uint64_t offset, Keepalive keep,
                     WriteReply reply) {
  if (Ring* r = ring()) {
    if (io_uring_sqe* sqe = r->sqe()) {
      io_uring_prep_writev(sqe, fd, src.data(), unsigned(src.size()), offset);
      r->submit(sqe, std::unique_ptr<Op>(new Op{std::move(reply), std::move(keep)}));
      return;
    }
  }
  const ssize_t n = ::pwritev(fd, src.data(), int(src.size()), off_t(offset));
  if (n < 0) return reply.error(errno);
  reply.ok(size_t(n));
}

void DataPath::fsync(int fd, bool datasync, Keepalive keep, StatusReply reply) {
  if (Ring* r = ring()) {
    if (io_uring_sqe* sqe = r->sqe()) {
      io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
      r->submit(sqe, std::unique_ptr<Op>(new Op{std::move(reply), std::move(keep)}));
      return;
    }
  }
  std::variant<ReadReply, WriteReply, StatusReply> v(std::move(reply));
  answer(v, result(datasync ? ::fdatasync(fd) : ::fsync(fd)));
}

void DataPath::fallocate(int fd, uint32_t mode, uint64_t offset, uint64_t length, Keepalive keep,
                         StatusReply reply) {
  if (Ring* r = ring()) {
    if (io_uring_sqe* sqe = r->sqe()) {
      io_uring_prep_fallocate(sqe, fd, int(mode), offset, length);
      r->submit(sqe, std::unique_ptr<Op>(new Op{std::move(reply), std::move(keep)}));
      return;
    }
  }
  std::variant<ReadReply, WriteReply, StatusReply> v(std::move(reply));
  answer(v, result(::fallocate(fd, int(mode), off_t(offset), off_t(length))));
}

}  // namespace dpfs::passthrough
