#include "engine.h"

#include <dirent.h>
#include <fmt/format.h>
#include <poll.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

namespace dpfs::bench {
namespace {

enum class Phase : int { kWarmup, kMeasure, kStop };

uint64_t now_ns() {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

double cpu_seconds(clockid_t clock) {
  timespec ts;
  ::clock_gettime(clock, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

struct SlotRun {
  Slot* slot;
  SlotState state;
  uint64_t submitted_ns = 0;
};

struct QueueRun {
  DriverQueue* queue;
  std::vector<SlotRun> slots;
  std::vector<int32_t> slot_of_head;  // head -> index in slots, -1 if none
};

// One driver thread and what it owns.
class Driver {
 public:
  Driver(Device& d, Workload& w, const RunOptions& o, const std::atomic<Phase>& phase,
         unsigned index)
      : workload_(w), options_(o), phase_(phase) {
    for (uint32_t q = index + 1; q <= d.options().request_queues; q += o.threads) {
      QueueRun qr{&d.queue(q), {}, std::vector<int32_t>(d.queue(q).size(), -1)};
      uint32_t k = 0;
      for (Slot& s : d.slots(q)) {
        SlotRun sr{&s, {}, 0};
        sr.state.thread = index;
        sr.state.queue = q;
        sr.state.slot = k++;
        qr.slots.push_back(sr);
      }
      queues_.push_back(std::move(qr));
    }
  }

  void start() {
    thread_ = std::thread([this] { run(); });
  }
  void join() {
    if (thread_.joinable()) thread_.join();
  }

  std::atomic<uint64_t> live_ops{0};  // for the progress line
  uint64_t ops = 0, bytes = 0, errors = 0, kicks = 0;
  std::string first_error;
  std::string fatal;
  Histogram latency;

 private:
  bool submit(QueueRun& q, uint32_t k) {
    SlotRun& s = q.slots[k];
    s.state.unique = unique_ += 2;
    workload_.next(*s.slot, s.state);
    s.submitted_ns = now_ns();
    const int head = s.slot->submit(*q.queue);
    if (head < 0) {
      fatal = "the ring ran out of descriptors (a bug in the queue size estimate)";
      return false;
    }
    q.slot_of_head[size_t(head)] = int32_t(k);
    ++outstanding_;
    return true;
  }

  void kick(QueueRun& q) {
    q.queue->publish();
    kicks += q.queue->kick();
  }

  // Takes every used entry of `q`; resubmits unless stopping. Returns how
  // many completed.
  uint32_t reap(QueueRun& q, bool measuring, bool resubmit) {
    uint32_t n = 0;
    uint16_t head;
    uint32_t len;
    while (q.queue->next_used(&head, &len)) {
      const int32_t k = head < q.slot_of_head.size() ? q.slot_of_head[head] : -1;
      if (k < 0) {
        fatal = fmt::format("queue {}: the device returned head {}, which is not in flight",
                            q.queue->index(), head);
        return n;
      }
      q.slot_of_head[head] = -1;
      --outstanding_;
      ++n;
      SlotRun& s = q.slots[size_t(k)];
      const std::string e = workload_.complete(Reply{s.slot, len}, s.state);
      if (measuring) {
        latency.record(now_ns() - s.submitted_ns);
        ++ops;
        if (e.empty()) {
          if (s.slot->opcode == FUSE_READ || s.slot->opcode == FUSE_WRITE) {
            bytes += s.slot->opcode == FUSE_READ ? s.slot->read_len : s.slot->write_len;
          }
        } else if (errors++ == 0) {
          first_error = e;
        }
      }
      if (!e.empty()) s.state.step = 0;
      if (resubmit && !submit(q, uint32_t(k))) return n;
    }
    return n;
  }

  void wait_for_calls(int timeout_ms) {
    std::vector<pollfd> fds;
    for (QueueRun& q : queues_) fds.push_back({q.queue->call_fd(), POLLIN, 0});
    ::poll(fds.data(), fds.size(), timeout_ms);
    for (QueueRun& q : queues_) q.queue->drain_call();
  }

  void run() {
    for (QueueRun& q : queues_) {
      q.queue->set_interrupts(!options_.poll);
      for (uint32_t k = 0; k < q.slots.size(); ++k) {
        if (!submit(q, k)) return;
      }
      kick(q);
    }
    Phase seen = Phase::kWarmup;
    uint64_t last_progress = now_ns();
    uint64_t spins = 0;
    while (fatal.empty()) {
      const Phase p = phase_.load(std::memory_order_acquire);
      if (p != seen) {
        seen = p;
        if (p == Phase::kStop) break;
      }
      uint32_t got = 0;
      for (QueueRun& q : queues_) {
        const uint32_t n = reap(q, seen == Phase::kMeasure, true);
        if (n > 0) kick(q);
        got += n;
      }
      live_ops.store(ops, std::memory_order_relaxed);
      if (got > 0) {
        last_progress = spins = 0;
        continue;
      }
      // Reading the clock on every empty spin would cost more than the spin.
      if (options_.poll && (++spins & 1023) != 0) continue;
      const uint64_t now = now_ns();
      if (last_progress == 0) last_progress = now;
      if (now - last_progress > uint64_t(options_.stall_ms) * 1000000) {
        fatal = fmt::format("the device answered nothing for {} ms ({} requests in flight)",
                            options_.stall_ms, outstanding_);
        return;
      }
      if (!options_.poll) wait_for_calls(10);
    }
    // Collect what is still in flight so the device is left idle.
    const uint64_t deadline = now_ns() + uint64_t(options_.stall_ms) * 1000000;
    for (QueueRun& q : queues_) q.queue->set_interrupts(true);
    while (outstanding_ > 0 && fatal.empty() && now_ns() < deadline) {
      uint32_t got = 0;
      for (QueueRun& q : queues_) got += reap(q, false, false);
      if (got == 0) wait_for_calls(1);
    }
    if (outstanding_ > 0 && fatal.empty()) {
      fatal = fmt::format("{} requests still unanswered {} ms after the run", outstanding_,
                          options_.stall_ms);
    }
  }

  Workload& workload_;
  const RunOptions& options_;
  const std::atomic<Phase>& phase_;
  std::vector<QueueRun> queues_;
  uint64_t unique_ = 0;
  uint32_t outstanding_ = 0;
  std::thread thread_;
};

void sleep_seconds(double s) { std::this_thread::sleep_for(std::chrono::duration<double>(s)); }

}  // namespace

namespace {

double task_cpu_seconds(pid_t pid) {
  const std::string dir = fmt::format("/proc/{}/task", pid);
  DIR* d = ::opendir(dir.c_str());
  if (!d) return -1;
  double total = 0;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream in(dir + "/" + e->d_name + "/schedstat");
    uint64_t ns = 0;
    if (in >> ns) total += double(ns) * 1e-9;
  }
  ::closedir(d);
  return total;
}

// The parent of `pid` from /proc/PID/stat (0 if gone).
pid_t parent_of(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string line;
  std::getline(in, line);
  const size_t paren = line.rfind(')');
  if (paren == std::string::npos) return 0;
  char state;
  int ppid = 0;
  std::istringstream rest(line.substr(paren + 1));
  rest >> state >> ppid;
  return pid_t(ppid);
}

}  // namespace

double process_cpu_seconds(pid_t pid) {
  double total = task_cpu_seconds(pid);
  if (total < 0) return -1;
  // Its descendants too: virtiofsd serves from a child in its sandbox.
  std::vector<pid_t> family{pid};
  std::vector<std::pair<pid_t, pid_t>> all;  // (pid, parent)
  if (DIR* d = ::opendir("/proc")) {
    while (dirent* e = ::readdir(d)) {
      const pid_t p = pid_t(std::atoi(e->d_name));
      if (p > 0 && p != pid) all.emplace_back(p, parent_of(p));
    }
    ::closedir(d);
  }
  for (size_t i = 0; i < family.size(); ++i) {
    for (const auto& [p, parent] : all) {
      if (parent == family[i]) {
        family.push_back(p);
        total += std::max(0.0, task_cpu_seconds(p));
      }
    }
  }
  return total;
}

RunResult run_workload(Device& device, Workload& workload, const RunOptions& options) {
  RunOptions o = options;
  o.threads = std::clamp<unsigned>(o.threads, 1, device.options().request_queues);
  std::atomic<Phase> phase{Phase::kWarmup};
  std::vector<std::unique_ptr<Driver>> drivers;
  for (unsigned i = 0; i < o.threads; ++i) {
    drivers.push_back(std::make_unique<Driver>(device, workload, o, phase, i));
  }
  for (auto& d : drivers) d->start();

  sleep_seconds(o.warmup);
  RunResult r;
  const double dev0 = o.device_pid > 0 ? process_cpu_seconds(o.device_pid) : -1;
  const double cpu0 = cpu_seconds(CLOCK_PROCESS_CPUTIME_ID);
  const auto t0 = std::chrono::steady_clock::now();
  phase.store(Phase::kMeasure, std::memory_order_release);

  // The measured interval, with a progress line once a second.
  double elapsed = 0;
  while (elapsed < o.duration) {
    sleep_seconds(std::min(1.0, o.duration - elapsed));
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (o.progress && elapsed < o.duration) {
      uint64_t ops = 0;
      for (auto& d : drivers) ops += d->live_ops.load(std::memory_order_relaxed);
      std::fprintf(stderr, "\r%s: %5.1f/%.1f s, %.0f ops/s   ",
                   std::string(workload.name()).c_str(), elapsed, o.duration,
                   double(ops) / elapsed);
    }
  }
  phase.store(Phase::kStop, std::memory_order_release);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.driver_cpu_s = cpu_seconds(CLOCK_PROCESS_CPUTIME_ID) - cpu0;
  if (dev0 >= 0) {
    const double dev1 = process_cpu_seconds(o.device_pid);
    if (dev1 >= 0) r.device_cpu_s = dev1 - dev0;
  }
  if (o.progress) std::fprintf(stderr, "\r%60s\r", "");

  std::string fatal;
  for (auto& d : drivers) {
    d->join();
    r.ops += d->ops;
    r.bytes += d->bytes;
    r.errors += d->errors;
    r.kicks += d->kicks;
    r.latency.merge(d->latency);
    if (r.first_error.empty()) r.first_error = d->first_error;
    if (fatal.empty()) fatal = d->fatal;
  }
  if (!fatal.empty()) throw std::runtime_error(fatal);
  std::string error;
  r.verified = workload.verify(device, &error);
  if (!error.empty()) {
    ++r.errors;
    if (r.first_error.empty()) r.first_error = "verification: " + error;
  }
  return r;
}

}  // namespace dpfs::bench
