#include "transport/fuse_uring.h"

#include <fmt/format.h>
#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <span>
#include <thread>

#include "transport/fuse_dev.h"
#include "transport/fuse_uring_abi.h"
#include "transport/log_recurring.h"
#include "util/counter.h"
#include "util/unique_fd.h"

namespace dpfs::transport {
namespace {

namespace abi = uring_abi;

constexpr const char* kPossibleCpus = "/sys/devices/system/cpu/possible";
constexpr const char* kEnableHint = "echo 1 > /sys/module/fuse/parameters/enable_uring";

// user_data of the ring's own polls; an entry's is its address.
constexpr uint64_t kWakeTag = 1;
constexpr uint64_t kHookTag = 2;

// The ring thread that is running on this thread, if any: a reply made here
// may queue its commit directly.
thread_local FuseRing::Thread* t_owner = nullptr;

std::string errno_text(int e) { return std::strerror(e); }

std::atomic<uint64_t> g_bad_requests{0};
std::atomic<uint64_t> g_entry_errors{0};
std::atomic<uint64_t> g_double_replies{0};

}  // namespace

unsigned count_cpu_list(std::string_view list) {
  unsigned count = 0;
  while (!list.empty()) {
    const size_t comma = list.find(',');
    std::string_view range = list.substr(0, comma);
    list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
    while (!range.empty() && (range.back() == '\n' || range.back() == ' ')) range.remove_suffix(1);
    if (range.empty()) continue;
    const size_t dash = range.find('-');
    const std::string_view last = dash == std::string_view::npos ? range : range.substr(dash + 1);
    unsigned cpu = 0;
    const auto [end, ec] = std::from_chars(last.data(), last.data() + last.size(), cpu);
    if (ec != std::errc() || end != last.data() + last.size() || cpu >= 65535) return 0;
    count = std::max(count, cpu + 1);
  }
  return count;
}

FuseUringPlan plan_fuse_uring(FuseUringMode mode, std::optional<bool> enable_uring,
                              unsigned possible_cpus) {
  FuseUringPlan plan;
  plan.mode = mode;
  plan.queues = possible_cpus;
  if (mode == FuseUringMode::kOff) {
    plan.reason = "fuse.io_uring is off";
  } else if (!enable_uring) {
    plan.reason = fmt::format(
        "this kernel's fuse module has no io_uring support (no {}; it needs Linux 6.14 or later "
        "built with CONFIG_FUSE_IO_URING)",
        kEnableUringParameter);
  } else if (!*enable_uring) {
    plan.reason = fmt::format("the fuse module's parameter {} is off (as root: {})",
                              kEnableUringParameter, kEnableHint);
  } else if (possible_cpus == 0) {
    plan.reason = fmt::format("cannot tell how many CPUs this host may have ({})", kPossibleCpus);
  } else {
    plan.use = true;
  }
  if (mode == FuseUringMode::kOn && !plan.use) {
    throw MountError(fmt::format(
        "fuse.io_uring = on, but FUSE over io_uring cannot be used: {}; or set fuse.io_uring to "
        "auto",
        plan.reason));
  }
  return plan;
}

FuseUringPlan plan_fuse_uring(FuseUringMode mode) {
  std::optional<bool> enabled;
  if (std::ifstream in(kEnableUringParameter); in) {
    std::string value;
    in >> value;
    enabled = value == "Y" || value == "y" || value == "1";
  }
  unsigned cpus = 0;
  if (std::ifstream in(kPossibleCpus); in) {
    std::string list;
    std::getline(in, list);
    cpus = count_cpu_list(list);
  }
  return plan_fuse_uring(mode, enabled, cpus);
}

std::optional<RingRequestLayout> ring_request_layout(const fuse_in_header& header,
                                                     uint32_t payload_sz, size_t payload_capacity) {
  if (header.len < sizeof(fuse_in_header) || payload_sz > payload_capacity) return std::nullopt;
  const size_t args = header.len - sizeof(fuse_in_header);
  if (payload_sz > args) return std::nullopt;
  const size_t op_in = args - payload_sz;
  if (op_in > abi::kOpInSize) return std::nullopt;
  return RingRequestLayout{op_in, payload_sz};
}

bool accept_uring_in_init_reply(std::span<const char> request, std::span<char> reply,
                                bool* offered) {
  *offered = false;
  fuse_in_header in{};
  fuse_init_in init{};
  if (request.size() < sizeof(in) + offsetof(fuse_init_in, unused)) return false;
  std::memcpy(&in, request.data(), sizeof(in));
  std::memcpy(&init, request.data() + sizeof(in), offsetof(fuse_init_in, unused));
  if (in.opcode != FUSE_INIT || in.len < sizeof(in) + offsetof(fuse_init_in, unused)) return false;
  *offered = (init.flags & FUSE_INIT_EXT) && (init.flags2 & abi::kFlags2OverIoUring);
  if (!*offered) return false;

  fuse_out_header out{};
  fuse_init_out init_out{};
  constexpr size_t kNeeded = sizeof(out) + offsetof(fuse_init_out, flags2) + sizeof(uint32_t);
  if (reply.size() < kNeeded) return false;
  std::memcpy(&out, reply.data(), sizeof(out));
  std::memcpy(&init_out, reply.data() + sizeof(out),
              offsetof(fuse_init_out, flags2) + sizeof(uint32_t));
  if (out.error != 0 || out.len < kNeeded || !(init_out.flags & FUSE_INIT_EXT)) return false;
  init_out.flags2 |= abi::kFlags2OverIoUring;
  std::memcpy(reply.data() + sizeof(out) + offsetof(fuse_init_out, flags2), &init_out.flags2,
              sizeof(init_out.flags2));
  return true;
}

// --- FuseRing::Thread ----------------------------------------------------------

// One io_uring, the entries of its queues, and the thread that drives it.
class FuseRing::Thread {
 public:
  Thread(int fd, fuse::RequestHandler& session, unsigned index, std::vector<uint16_t> qids,
         size_t payload_size)
      : fd_(fd),
        session_(session),
        index_(index),
        qids_(std::move(qids)),
        payload_size_(payload_size) {}
  Thread(const Thread&) = delete;
  Thread& operator=(const Thread&) = delete;
  ~Thread() { stop(); }

  // Starts the thread, which sets its ring up; returns "" or why it could not.
  std::string launch() {
    wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake_) return fmt::format("eventfd: {}", errno_text(errno));
    try {
      thread_ = std::thread([this] { run(); });
    } catch (const std::system_error& e) {
      return fmt::format("cannot start a ring thread: {}", e.what());
    }
    wait_while(Phase::kSettingUp);
    return setup_error_;
  }

  // Registers the entries; returns "" or the kernel's first refusal.
  std::string start() {
    if (!set_phase_from(Phase::kReady, Phase::kGo)) return setup_error_;
    wait_while(Phase::kGo);
    return register_error_;
  }

  void stop() {
    stopping_.store(true, std::memory_order_release);
    set_phase_from(Phase::kReady, Phase::kStop);
    if (wake_) {
      const uint64_t one = 1;
      [[maybe_unused]] const ssize_t n = ::write(wake_.get(), &one, sizeof(one));
    }
    if (thread_.joinable()) thread_.join();
  }

  uint64_t requests() const { return requests_.load(std::memory_order_relaxed); }
  uint64_t foreign_replies() const { return foreign_replies_.load(std::memory_order_relaxed); }

 private:
  // kSettingUp -> kReady | kFailed (the thread); kReady -> kGo | kStop (the
  // device); kGo -> kServing (the thread, once registered).
  enum class Phase : int { kSettingUp, kReady, kFailed, kGo, kServing, kStop };

  // A ring entry: its buffers and the Request the session sees over them.
  // Owned by the ring thread while `busy` is clear (the kernel holds it, or
  // it is about to be committed), by whoever answers it while set.
  class Entry final : public fuse::Request {
   public:
    Entry(Thread& thread, uint16_t qid, size_t payload_size)
        : thread_(thread),
          qid_(qid),
          header_(std::make_unique<abi::ReqHeader>()),
          payload_(std::make_unique_for_overwrite<char[]>(payload_size)),
          payload_size_(payload_size) {
      register_iov_[0] = {header_.get(), sizeof(abi::ReqHeader)};
      register_iov_[1] = {payload_.get(), payload_size};
      in_is_private = true;  // our memory, written by the kernel
    }

    void complete(size_t reply_len) override { thread_.reply(*this, reply_len); }

    abi::ReqHeader& header() { return *header_; }
    char* payload() { return payload_.get(); }
    size_t payload_size() const { return payload_size_; }
    uint16_t qid() const { return qid_; }
    const iovec* register_iov() const { return register_iov_; }

    // Points `in` and `out` at the request the kernel put in the buffers.
    void arm(const RingRequestLayout& layout) {
      size_t n = 0;
      in_iov_[n++] = {header_->in_out, sizeof(fuse_in_header)};
      if (layout.op_in_len != 0) in_iov_[n++] = {header_->op_in, layout.op_in_len};
      if (layout.payload_len != 0) in_iov_[n++] = {payload_.get(), layout.payload_len};
      in = std::span<const iovec>(in_iov_, n);
      // The reply's header goes where the request's was (the session has
      // copied it by then), its arguments over the request's payload: of
      // that only a WRITE's data is used in place, and a backend is done
      // with it before it answers.
      out_iov_[0] = {header_->in_out, sizeof(fuse_out_header)};
      out_iov_[1] = {payload_.get(), payload_size_};
      out = std::span<const iovec>(out_iov_, 2);
    }

    uint64_t commit_id = 0;
    size_t reply_len = 0;           // set by reply(), read by the ring thread
    Entry* next_foreign = nullptr;  // on the foreign reply list
    std::atomic<bool> busy{false};  // with the session
    bool live = false;              // ring thread only: the kernel knows it

   private:
    Thread& thread_;
    const uint16_t qid_;
    std::unique_ptr<abi::ReqHeader> header_;
    std::unique_ptr<char[]> payload_;
    const size_t payload_size_;
    iovec register_iov_[2]{};
    iovec in_iov_[3]{};
    iovec out_iov_[2]{};
  };

  void run();
  std::string setup();
  void register_entries();
  void serve();
  void on_completion(const io_uring_cqe& cqe);
  void take(Entry& entry);
  void reply(Entry& entry, size_t len);
  void commit(Entry& entry);
  void take_foreign_replies();
  void arm_poll(int fd, uint64_t tag);
  io_uring_sqe* next_sqe();

  void wait_while(Phase phase) {
    for (Phase now = phase_.load(); now == phase; now = phase_.load()) phase_.wait(now);
  }
  bool set_phase_from(Phase from, Phase to) {
    const bool changed = phase_.compare_exchange_strong(from, to);
    if (changed) phase_.notify_all();
    return changed;
  }
  void set_phase(Phase to) {
    phase_.store(to);
    phase_.notify_all();
  }

  const int fd_;
  fuse::RequestHandler& session_;
  const unsigned index_;
  const std::vector<uint16_t> qids_;
  const size_t payload_size_;
  util::UniqueFd wake_;  // written to wake the thread: a foreign reply, stop()
  std::atomic<Phase> phase_{Phase::kSettingUp};
  std::atomic<bool> stopping_{false};
  std::string setup_error_;     // written before kReady/kFailed
  std::string register_error_;  // written before kServing
  // Replies made on other threads, for the ring thread to commit: a stack
  // that any thread pushes on and the ring thread takes whole.
  std::atomic<Entry*> foreign_{nullptr};
  std::atomic<uint64_t> requests_{0};         // single writer: the ring thread
  std::atomic<uint64_t> foreign_replies_{0};  // likewise

  // The ring thread's alone.
  io_uring ring_{};
  bool ring_made_ = false;
  std::vector<std::unique_ptr<Entry>> entries_;
  size_t live_ = 0;
  std::unique_ptr<WorkerHook> hook_;
  std::thread thread_;
};

std::string FuseRing::Thread::setup() {
  // One SQE per entry at most is outstanding (a REGISTER or a commit), plus
  // the two polls.
  const unsigned depth = unsigned(qids_.size()) * kEntriesPerQueue + 4;
  io_uring_params params{};
  // SQE128: the command area holds fuse_uring_cmd_req. SINGLE_ISSUER and
  // DEFER_TASKRUN: only this thread submits, and the kernel's work for
  // this ring (copying a request into an entry) runs when this thread asks
  // for completions, not as an interruption elsewhere.
  params.flags = IORING_SETUP_SQE128 | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
  int rc = io_uring_queue_init_params(depth, &ring_, &params);
  if (rc == -EINVAL) {
    params = {};
    params.flags = IORING_SETUP_SQE128;
    rc = io_uring_queue_init_params(depth, &ring_, &params);
  }
  if (rc < 0) return fmt::format("cannot set up an io_uring: {}", errno_text(-rc));
  ring_made_ = true;
  for (const uint16_t qid : qids_) {
    for (unsigned i = 0; i < kEntriesPerQueue; ++i) {
      entries_.push_back(std::make_unique<Entry>(*this, qid, payload_size_));
    }
  }
  return "";
}

void FuseRing::Thread::run() {
  pthread_setname_np(pthread_self(), fmt::format("dpfs-ring-{}", index_).substr(0, 15).c_str());
  t_owner = this;
  setup_error_ = setup();
  set_phase(setup_error_.empty() ? Phase::kReady : Phase::kFailed);
  if (setup_error_.empty()) {
    wait_while(Phase::kReady);
    if (phase_.load() == Phase::kGo) {
      hook_ = session_.attach_worker();
      register_entries();
      set_phase(Phase::kServing);
      serve();
      // Waits for the backend's I/O into this ring's entries.
      hook_.reset();
    }
  }
  t_owner = nullptr;
  if (ring_made_) io_uring_queue_exit(&ring_);
}

io_uring_sqe* FuseRing::Thread::next_sqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) {
    // Cannot happen with one outstanding SQE per entry; make room anyway.
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  if (sqe != nullptr) std::memset(sqe, 0, 2 * sizeof(io_uring_sqe));  // SQE128
  return sqe;
}

void FuseRing::Thread::arm_poll(int fd, uint64_t tag) {
  io_uring_sqe* sqe = next_sqe();
  if (sqe == nullptr) return;
  io_uring_prep_poll_multishot(sqe, fd, POLLIN);
  sqe->user_data = tag;
}

void FuseRing::Thread::register_entries() {
  arm_poll(wake_.get(), kWakeTag);
  if (hook_) arm_poll(hook_->fd(), kHookTag);
  for (const auto& e : entries_) {
    io_uring_sqe* sqe = next_sqe();
    if (sqe == nullptr) break;
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = fd_;
    sqe->cmd_op = abi::kCmdRegister;
    sqe->addr = reinterpret_cast<uint64_t>(e->register_iov());
    sqe->len = 2;
    sqe->user_data = reinterpret_cast<uint64_t>(e.get());
    abi::CmdReq cmd{};
    cmd.qid = e->qid();
    std::memcpy(sqe->cmd, &cmd, sizeof(cmd));
    e->live = true;
    ++live_;
  }
  // The kernel takes a REGISTER at once or refuses it at once: whatever it
  // refused is in the completion queue when this returns.
  const int rc = io_uring_submit_and_get_events(&ring_);
  if (rc < 0) {
    register_error_ = fmt::format("submitting to the io_uring: {}", errno_text(-rc));
    live_ = 0;
    return;
  }
  unsigned head;
  io_uring_cqe* cqe;
  io_uring_for_each_cqe(&ring_, head, cqe) {
    if (cqe->user_data > kHookTag && cqe->res < 0 && register_error_.empty()) {
      register_error_ = fmt::format("the kernel refused a ring entry: {}", errno_text(-cqe->res));
    }
  }
}

void FuseRing::Thread::serve() {
  while (live_ > 0 && !stopping_.load(std::memory_order_acquire)) {
    take_foreign_replies();
    const int rc = io_uring_submit_and_wait(&ring_, 1);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
      spdlog::error("fuse ring {}: io_uring_enter: {}", index_, errno_text(-rc));
      break;
    }
    unsigned head;
    unsigned seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      on_completion(*cqe);
      ++seen;
    }
    io_uring_cq_advance(&ring_, seen);
    if (hook_) hook_->flush();
  }
  spdlog::debug("fuse ring {}: stopped ({} entries still registered)", index_, live_);
}

void FuseRing::Thread::on_completion(const io_uring_cqe& cqe) {
  if (cqe.user_data == kWakeTag || cqe.user_data == kHookTag) {
    const bool wake = cqe.user_data == kWakeTag;
    if (wake) {
      uint64_t value;
      [[maybe_unused]] const ssize_t n = ::read(wake_.get(), &value, sizeof(value));
      take_foreign_replies();
    } else if (hook_) {
      hook_->on_readable();
    }
    // A multishot poll ends on an error or overflow: arm it again.
    if (!(cqe.flags & IORING_CQE_F_MORE) && !stopping_.load(std::memory_order_acquire)) {
      arm_poll(wake ? wake_.get() : hook_->fd(), cqe.user_data);
    }
    return;
  }
  Entry& entry = *reinterpret_cast<Entry*>(cqe.user_data);
  if (cqe.res < 0) {
    // ENOTCONN, ECONNABORTED: the connection ended; ECANCELED: the ring is
    // going away. The entry is no longer the kernel's to fill.
    const int e = -cqe.res;
    if (e != ENOTCONN && e != ECONNABORTED && e != ECANCELED) {
      log_recurring(g_entry_errors, "fuse ring {}: queue {}: an entry failed: {}", index_,
                    entry.qid(), errno_text(e));
    }
    if (entry.live) {
      entry.live = false;
      --live_;
    }
    return;
  }
  take(entry);
}

void FuseRing::Thread::take(Entry& entry) {
  abi::ReqHeader& h = entry.header();
  // The kernel is trusted, but a short or odd completion must not crash
  // the daemon: the lengths are checked before anything is used.
  fuse_in_header in{};
  std::memcpy(&in, h.in_out, sizeof(in));
  abi::EntInOut ent{};
  std::memcpy(&ent, &h.ring_ent_in_out, sizeof(ent));
  entry.commit_id = ent.commit_id;
  util::single_writer_add(requests_);
  entry.busy.store(true, std::memory_order_relaxed);
  const std::optional<RingRequestLayout> layout =
      ring_request_layout(in, ent.payload_sz, entry.payload_size());
  if (!layout) {
    log_recurring(g_bad_requests,
                  "fuse ring {}: queue {}: request {} ({} bytes, {} in the payload) does not fit "
                  "its entry; answering EIO",
                  index_, entry.qid(), in.unique, in.len, ent.payload_sz);
    reply(entry, 0);
    return;
  }
  entry.arm(*layout);
  session_.handle(entry);
}

void FuseRing::Thread::reply(Entry& entry, size_t len) {
  if (!entry.busy.load(std::memory_order_relaxed)) {
    log_recurring(g_double_replies, "fuse ring {}: a request was answered twice; ignored", index_);
    return;
  }
  entry.reply_len = len;
  if (t_owner == this) {
    commit(entry);
    return;
  }
  // Another thread: hand the entry to the ring thread. Release: the reply
  // bytes it wrote are visible to the ring thread that takes the list.
  Entry* head = foreign_.load(std::memory_order_relaxed);
  do {
    entry.next_foreign = head;
  } while (!foreign_.compare_exchange_weak(head, &entry, std::memory_order_release,
                                           std::memory_order_relaxed));
  // The first on an empty list wakes the ring thread, which empties it
  // after reading the eventfd: a later push onto an empty list wakes again.
  if (head == nullptr) {
    const uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(wake_.get(), &one, sizeof(one));
  }
}

void FuseRing::Thread::take_foreign_replies() {
  if (foreign_.load(std::memory_order_relaxed) == nullptr) return;
  Entry* e = foreign_.exchange(nullptr, std::memory_order_acquire);
  while (e != nullptr) {
    Entry* next = e->next_foreign;
    util::single_writer_add(foreign_replies_);
    commit(*e);
    e = next;
  }
}

void FuseRing::Thread::commit(Entry& entry) {
  abi::ReqHeader& h = entry.header();
  size_t len = entry.reply_len;
  if (len < sizeof(fuse_out_header) || len - sizeof(fuse_out_header) > entry.payload_size()) {
    // No reply (a request that takes none cannot come through a ring) or
    // none that fits: the kernel's request must still end, with an error.
    fuse_out_header out{};
    out.len = sizeof(out);
    out.error = -EIO;
    out.unique = entry.commit_id;
    std::memcpy(h.in_out, &out, sizeof(out));
    len = sizeof(out);
  }
  abi::EntInOut ent{};
  ent.commit_id = entry.commit_id;
  ent.payload_sz = uint32_t(len - sizeof(fuse_out_header));
  std::memcpy(&h.ring_ent_in_out, &ent, sizeof(ent));
  entry.busy.store(false, std::memory_order_relaxed);
  if (!ring_made_ || !entry.live) return;
  io_uring_sqe* sqe = next_sqe();
  if (sqe == nullptr) return;
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = fd_;
  sqe->cmd_op = abi::kCmdCommitAndFetch;
  sqe->user_data = reinterpret_cast<uint64_t>(&entry);
  abi::CmdReq cmd{};
  cmd.commit_id = entry.commit_id;
  cmd.qid = entry.qid();
  std::memcpy(sqe->cmd, &cmd, sizeof(cmd));
}

// --- FuseRing ------------------------------------------------------------------

FuseRing::FuseRing(int fd, fuse::RequestHandler& session, unsigned queues, unsigned rings,
                   size_t payload_size)
    : queues_(queues) {
  rings = std::clamp(rings, 1u, std::max(queues, 1u));
  for (unsigned r = 0; r < rings; ++r) {
    std::vector<uint16_t> qids;
    for (unsigned q = r; q < queues; q += rings) qids.push_back(uint16_t(q));
    threads_.push_back(std::make_unique<Thread>(fd, session, r, std::move(qids), payload_size));
  }
  for (auto& t : threads_) {
    std::string error = t->launch();
    if (!error.empty() && setup_error_.empty()) setup_error_ = std::move(error);
  }
}

FuseRing::~FuseRing() { stop(); }

std::string FuseRing::start() {
  std::string first;
  for (auto& t : threads_) {
    std::string error = t->start();
    if (!error.empty() && first.empty()) first = std::move(error);
  }
  return first;
}

void FuseRing::stop() {
  if (stopped_) return;
  stopped_ = true;
  for (auto& t : threads_) t->stop();
}

uint64_t FuseRing::requests() const {
  uint64_t n = 0;
  for (const auto& t : threads_) n += t->requests();
  return n;
}

uint64_t FuseRing::foreign_replies() const {
  uint64_t n = 0;
  for (const auto& t : threads_) n += t->foreign_replies();
  return n;
}

}  // namespace dpfs::transport
