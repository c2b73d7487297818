#include "hostile.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <thread>

#include "device.h"
#include "race.h"

namespace dpfs::bench {
namespace {

using namespace std::chrono_literals;

// How a case went, before the checks that the device still serves.
struct Observed {
  std::string what;  // one line for the report
  bool failed = false;
};

// The attacked queue: the last request queue. A device with one request
// queue is attacked on it, and only a new connection shows it recovered.
uint32_t victim(Device& d) { return d.options().request_queues; }

// Waits up to `timeout` for a used entry on `q`; returns whether one came.
bool wait_used(DriverQueue& q, std::chrono::milliseconds timeout, uint16_t* head = nullptr,
               uint32_t* len = nullptr) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  uint16_t h;
  uint32_t l;
  while (std::chrono::steady_clock::now() < deadline) {
    if (q.next_used(head ? head : &h, len ? len : &l)) return true;
    std::this_thread::sleep_for(1ms);
  }
  return false;
}

// Makes descriptor `head` available on `q`, as a driver would, then kicks.
void make_available(DriverQueue& q, uint16_t head) {
  q.avail()->ring[q.avail_idx() % q.size()] = head;
  q.set_avail_idx(uint16_t(q.avail_idx() + 1));
  q.publish();
  q.kick_always();
}

// A GETATTR of the root on request queue `index` must be answered.
std::string probe(Device& d, uint32_t index) {
  DriverQueue& q = d.queue(index);
  SyncChannel ch(q, d.slots(index)[0]);
  build_getattr(ch.slot(), ch.next_unique(), FUSE_ROOT_ID);
  Reply r;
  if (std::string e = ch.call(&r, 2000); !e.empty()) return e;
  return check_reply(r, sizeof(fuse_attr_out));
}

// After a ring-level attack: does the attacked queue still answer?
Observed after_ring_attack(Device& d) {
  std::this_thread::sleep_for(50ms);
  const uint32_t v = victim(d);
  DriverQueue& q = d.queue(v);
  // A well-formed request behind the bad one.
  Slot& s = d.slots(v)[0];
  build_getattr(s, 1000001, FUSE_ROOT_ID);
  if (s.submit(q) < 0) return {"no descriptors left for the follow-up request", true};
  q.publish();
  q.kick_always();
  if (wait_used(q, 300ms)) {
    return {fmt::format("queue {} still answers (the device served or skipped the chain)", v)};
  }
  return {fmt::format("queue {} stopped answering (the device took it as broken)", v)};
}

// A chain of raw descriptors (index, addr, len, flags, next) made available.
struct RawDesc {
  uint16_t index;
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
Observed raw_chain(Device& d, std::initializer_list<RawDesc> chain) {
  DriverQueue& q = d.queue(victim(d));
  for (const RawDesc& r : chain) {
    q.desc()[r.index] = VringDesc{r.addr, r.len, r.flags, r.next};
  }
  make_available(q, chain.begin()->index);
  return after_ring_attack(d);
}

// A FUSE-level attack: the chain is well-formed, its contents are not. The
// device must answer it (an error) and keep serving the queue.
Observed fuse_attack(Device& d, const std::function<void(Slot&)>& build, bool expect_reply) {
  const uint32_t v = victim(d);
  // A copy: the attack may shrink its buffers, the probe after it must not.
  Slot s = d.slots(v)[0];
  build(s);
  DriverQueue& q = d.queue(v);
  if (s.submit(q) < 0) return {"no descriptors", true};
  q.publish();
  q.kick_always();
  uint16_t head;
  uint32_t len;
  if (!wait_used(q, 2000ms, &head, &len)) {
    return {"no answer to the malformed request within 2 s", expect_reply};
  }
  const auto& h = *reinterpret_cast<const fuse_out_header*>(s.out);
  std::string what = len >= kOutHeader
                         ? fmt::format("answered {} ({} bytes)",
                                       h.error ? std::strerror(-h.error) : "success", len)
                         : fmt::format("returned the chain with {} bytes written", len);
  if (len >= kOutHeader && h.error == 0) return {what + ": accepted a malformed request", true};
  if (std::string e = probe(d, v); !e.empty()) {
    return {what + "; then the same queue failed a GETATTR: " + e, true};
  }
  return {what + fmt::format("; queue {} goes on", v)};
}

// The front-end shrinks its memory file under the device's mapping, then
// hands it a request in the part that is gone. The device's access faults
// (SIGBUS); the daemon must contain it: this device stops serving (its
// memory means nothing now), the daemon and its other devices go on, and
// the next front-end on this socket is served.
Observed shrink_memory(Device& d) {
  SharedMemory& mem = d.memory();
  // A request at the very end of the memory, past everything else (rings
  // and slots), so that shrinking the file takes only this.
  Slot s;
  s.in_cap = s.out_cap = 4096;
  s.in = mem.allocate(4096, 4096);
  s.out = mem.allocate(4096, 4096);
  build_getattr(s, 31337, FUSE_ROOT_ID);
  const off_t cut = off_t(s.in - mem.base());
  if (::ftruncate(mem.fd(), cut) != 0) {
    return {fmt::format("ftruncate: {}", std::strerror(errno)), true};
  }
  DriverQueue& q = d.queue(victim(d));
  if (s.submit(q) < 0) return {"no descriptors", true};
  q.publish();
  q.kick_always();
  // No answer can come: once the device faults, its view of this memory
  // (rings included) is zero pages. The connection stays up for a second
  // so that the device takes the chain before the front-end goes; the
  // test then looks for the device's log line.
  std::this_thread::sleep_for(1s);
  return {fmt::format("memory file cut to {} KiB under a queued GETATTR", cut >> 10)};
}

Observed kick_storm(Device& d) {
  const uint32_t v = victim(d);
  DriverQueue& q = d.queue(v);
  for (int i = 0; i < 100000; ++i) q.kick_always();
  // Kicks interleaved with real requests.
  for (int i = 0; i < 100; ++i) {
    for (int k = 0; k < 100; ++k) q.kick_always();
    if (std::string e = probe(d, v); !e.empty()) return {"after kicks: " + e, true};
  }
  return {"100000 empty kicks and 10000 more around 100 requests; all answered"};
}

Observed vanish(Device& d) {
  const uint32_t v = victim(d);
  DriverQueue& q = d.queue(v);
  uint32_t n = 0;
  for (Slot& s : d.slots(v)) {
    build_getattr(s, 5000 + n, FUSE_ROOT_ID);
    if (s.submit(q) >= 0) ++n;
  }
  q.publish();
  q.kick_always();
  d.frontend().vanish();
  return {fmt::format("closed the socket with {} requests just made available", n)};
}

struct Case {
  HostileCase info;
  bool needs_new_connection_only;  // the attack ends the connection
  std::function<Observed(Device&, const HostileOptions&)> run;
  uint32_t depth = 8;  // slots per request queue
};

const std::vector<Case>& cases() {
  static const std::vector<Case> all = [] {
    std::vector<Case> c;
    auto ring = [&](const char* name, const char* text, std::function<Observed(Device&)> f) {
      c.push_back({{name, text}, false, [f](Device& d, const HostileOptions&) { return f(d); }});
    };
    ring("loop", "a descriptor chain that loops back on itself", [](Device& d) {
      DriverQueue& q = d.queue(victim(d));
      const uint16_t a = uint16_t(q.size() - 1), b = uint16_t(q.size() - 2);
      const uint64_t buf = d.memory().guest_addr(d.slots(victim(d))[0].in);
      return raw_chain(d,
                       {{a, buf, 64, virtio::kDescFNext, b}, {b, buf, 64, virtio::kDescFNext, a}});
    });
    ring("outside-memory", "a buffer address outside shared memory", [](Device& d) {
      const uint16_t a = uint16_t(d.queue(victim(d)).size() - 1);
      return raw_chain(d, {{a, d.memory().guest_end() + (1u << 20), 64, 0, 0}});
    });
    ring("crosses-end", "a buffer whose length runs past the end of shared memory", [](Device& d) {
      const uint16_t a = uint16_t(d.queue(victim(d)).size() - 1);
      return raw_chain(d, {{a, d.memory().guest_end() - 64, 1u << 20, 0, 0}});
    });
    ring("bad-next", "a next index beyond the ring", [](Device& d) {
      DriverQueue& q = d.queue(victim(d));
      const uint16_t a = uint16_t(q.size() - 1);
      const uint64_t buf = d.memory().guest_addr(d.slots(victim(d))[0].in);
      return raw_chain(d, {{a, buf, 64, virtio::kDescFNext, uint16_t(q.size() + 7)}});
    });
    ring("bad-head", "an avail ring entry beyond the ring", [](Device& d) {
      DriverQueue& q = d.queue(victim(d));
      make_available(q, uint16_t(q.size() + 3));
      return after_ring_attack(d);
    });
    ring("wrapped-index", "an avail index more than the ring size ahead", [](Device& d) {
      DriverQueue& q = d.queue(victim(d));
      q.set_avail_idx(uint16_t(q.avail_idx() + q.size() + 5));
      q.publish();
      q.kick_always();
      return after_ring_attack(d);
    });
    ring("duplicate-head", "the same head made available twice", [](Device& d) {
      const uint32_t v = victim(d);
      DriverQueue& q = d.queue(v);
      Slot& s = d.slots(v)[0];
      build_getattr(s, 4242, FUSE_ROOT_ID);
      // A valid chain, made available twice while the first is in flight.
      const uint16_t a = uint16_t(q.size() - 1), b = uint16_t(q.size() - 2);
      q.desc()[a] = VringDesc{d.memory().guest_addr(s.in), s.in_len, virtio::kDescFNext, b};
      q.desc()[b] = VringDesc{d.memory().guest_addr(s.out), s.out_cap, virtio::kDescFWrite, 0};
      q.avail()->ring[q.avail_idx() % q.size()] = a;
      q.avail()->ring[(q.avail_idx() + 1) % q.size()] = a;
      q.set_avail_idx(uint16_t(q.avail_idx() + 2));
      q.publish();
      q.kick_always();
      return after_ring_attack(d);
    });
    ring("readable-after-writable", "a device-readable descriptor after a writable one",
         [](Device& d) {
           DriverQueue& q = d.queue(victim(d));
           Slot& s = d.slots(victim(d))[0];
           const uint16_t a = uint16_t(q.size() - 1), b = uint16_t(q.size() - 2);
           return raw_chain(d, {{a, d.memory().guest_addr(s.out), 64,
                                 virtio::kDescFWrite | virtio::kDescFNext, b},
                                {b, d.memory().guest_addr(s.in), 64, 0, 0}});
         });
    ring("indirect", "an indirect descriptor, which was not negotiated", [](Device& d) {
      DriverQueue& q = d.queue(victim(d));
      const uint16_t a = uint16_t(q.size() - 1);
      return raw_chain(
          d, {{a, d.memory().guest_addr(d.slots(victim(d))[0].in), 32, virtio::kDescFIndirect, 0}});
    });
    auto fuse = [&](const char* name, const char* text, std::function<void(Slot&)> build,
                    bool expect_reply = true) {
      c.push_back({{name, text}, false, [build, expect_reply](Device& d, const HostileOptions&) {
                     return fuse_attack(d, build, expect_reply);
                   }});
    };
    fuse("truncated-header", "20 bytes where a FUSE header takes 40", [](Slot& s) {
      build_getattr(s, 777, FUSE_ROOT_ID);
      s.in_len = 20;
    });
    fuse("oversized-header", "a FUSE header claiming 1 MiB in a 56-byte request", [](Slot& s) {
      build_getattr(s, 777, FUSE_ROOT_ID);
      reinterpret_cast<fuse_in_header*>(s.in)->len = 1u << 20;
    });
    fuse("short-length", "a LOOKUP whose header length cuts its name before the NUL", [](Slot& s) {
      build_lookup(s, 777, FUSE_ROOT_ID, "a-name-that-is-cut");
      reinterpret_cast<fuse_in_header*>(s.in)->len = kInHeader + 4;
    });
    fuse("lying-write", "a WRITE whose size says 64 KiB with 4 KiB of payload", [](Slot& s) {
      build_write(s, 777, FUSE_ROOT_ID, 0, 0, 4096);
      reinterpret_cast<fuse_write_in*>(s.in + kInHeader)->size = 64u << 10;
    });
    fuse("tiny-reply-buffer", "a reply buffer too small for the reply header", [](Slot& s) {
      build_getattr(s, 777, FUSE_ROOT_ID);
      s.out_cap = 8;
    });
    fuse("unknown-opcode", "opcode 9999", [](Slot& s) {
      build_getattr(s, 777, FUSE_ROOT_ID);
      reinterpret_cast<fuse_in_header*>(s.in)->opcode = 9999;
    });
    c.push_back({{"kick-storm", "100000 kicks with nothing available, then kicks around requests"},
                 false,
                 [](Device& d, const HostileOptions&) { return kick_storm(d); }});
    c.push_back({{"shrink-memory",
                  "the memory file shrunk under the device, then a request in the lost part"},
                 true,
                 [](Device& d, const HostileOptions&) { return shrink_memory(d); }});
    c.push_back({{"vanish", "the front-end disappears with requests in flight"},
                 true,
                 [](Device& d, const HostileOptions&) { return vanish(d); }});
    for (const RaceCase& r : race_cases()) {
      c.push_back({r.info, r.ends_connection,
                   [run = r.run](Device& d, const HostileOptions& o) {
                     const RaceResult res = run(d, o);
                     return Observed{res.what, res.failed};
                   },
                   kRaceDepth});
    }
    return c;
  }();
  return all;
}

// Runs one case; prints its line; returns whether it passed.
bool run_case(const std::string& socket, const Case& c, const HostileOptions& options) {
  DeviceOptions o;
  o.socket = socket;
  o.depth = c.depth;
  // Two request queues when the device has them: one to attack, one to
  // show the others go on.
  o.request_queues = 2;
  std::unique_ptr<Device> d;
  try {
    d = std::make_unique<Device>(o);
  } catch (const std::exception&) {
    o.request_queues = 1;
    d = std::make_unique<Device>(o);
  }
  Observed seen = c.run(*d, options);
  std::string verdict = seen.what;
  bool ok = !seen.failed;
  if (!c.needs_new_connection_only && o.request_queues > 1) {
    if (std::string e = probe(*d, 1); !e.empty()) {
      verdict += "; queue 1 of the same connection failed: " + e;
      ok = false;
    } else {
      verdict += "; queue 1 still served";
    }
  }
  d.reset();  // the front-end goes away; the device must take the next one
  try {
    DeviceOptions fresh = o;
    Device again(fresh);
    for (uint32_t i = 1; i <= fresh.request_queues; ++i) {
      if (std::string e = probe(again, i); !e.empty()) {
        throw std::runtime_error(fmt::format("queue {}: {}", i, e));
      }
    }
    verdict += "; a new connection was served";
  } catch (const std::exception& e) {
    verdict += std::string("; a new connection FAILED: ") + e.what();
    ok = false;
  }
  std::printf("hostile %s: %s: %s\n", c.info.name.c_str(), ok ? "ok" : "FAILED", verdict.c_str());
  std::fflush(stdout);
  return ok;
}

}  // namespace

const std::vector<HostileCase>& hostile_cases() {
  static const std::vector<HostileCase> list = [] {
    std::vector<HostileCase> l;
    for (const Case& c : cases()) l.push_back(c.info);
    return l;
  }();
  return list;
}

int run_hostile(const std::string& socket, const std::string& name, const HostileOptions& options) {
  int failed = 0;
  bool found = false;
  for (const Case& c : cases()) {
    const bool in_group = name == "all" || (name == "race" && c.info.name.starts_with("race-"));
    if (!in_group && c.info.name != name) continue;
    found = true;
    try {
      failed += !run_case(socket, c, options);
    } catch (const std::exception& e) {
      std::printf("hostile %s: FAILED: %s\n", c.info.name.c_str(), e.what());
      ++failed;
    }
  }
  if (!found) throw std::invalid_argument("unknown hostile case " + name);
  return failed;
}

}  // namespace dpfs::bench
