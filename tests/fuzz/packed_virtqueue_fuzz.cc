// libFuzzer target: a packed virtqueue (virtio 1.2 §2.8) driven by a hostile
// driver. Fuzzer bytes are a sequence of driver actions -- descriptors with
// any flags, well-formed chains made available the way a driver does (so
// that the fuzzer reaches deep states: wrapped rings, batches in flight),
// indirect tables, event suppression fields, raw bytes -- interleaved with
// device actions (pop, push, publish, should_notify, set_notification,
// restart at any index and wrap counter, remap).
//
// Guest memory as in fuzz_guest.h. Every popped iovec is checked to lie
// inside one region and then touched (read if readable, written if
// writable). A crash, a sanitizer report, an iovec outside guest memory or a
// broken invariant (in-flight count, buffer ids) is a finding.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "fuzz_guest.h"
#include "virtio/packed_virtqueue.h"

namespace {

using dpfs::fuzz::Guest;
using dpfs::fuzz::Input;
using dpfs::fuzz::kAvailGpa;
using dpfs::fuzz::kDescGpa;
using dpfs::fuzz::kUsedGpa;
using dpfs::fuzz::kUserOffset;
using dpfs::virtio::DescriptorChain;
using dpfs::virtio::kPackedDescFAvail;
using dpfs::virtio::kPackedDescFUsed;
using dpfs::virtio::PackedVirtqueue;
using dpfs::virtio::PopResult;
using dpfs::virtio::VringConfig;

constexpr uint16_t kNext = 1;
constexpr uint16_t kWrite = 2;
constexpr uint16_t kIndirect = 4;

void write_packed_desc(uint8_t* at, uint64_t addr, uint32_t len, uint16_t id, uint16_t flags) {
  if (at == nullptr) return;
  std::memcpy(at, &addr, 8);
  std::memcpy(at + 8, &len, 4);
  std::memcpy(at + 12, &id, 2);
  std::memcpy(at + 14, &flags, 2);
}

// The driver's view of the ring: where it makes the next descriptor
// available, and with which wrap counter.
struct Driver {
  uint16_t next = 0;
  bool wrap = true;
  uint16_t avail_flags() const {
    return wrap ? kPackedDescFAvail : kPackedDescFUsed;  // AVAIL == wrap, USED != wrap
  }
  void advance(uint32_t size) {
    if (++next == size) {
      next = 0;
      wrap = !wrap;
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in{data, size};
  Guest g;
  const uint8_t setup = in.byte();
  VringConfig cfg;
  cfg.queue_index = 0;
  // 1..32 entries; packed rings need not be a power of two.
  cfg.size = 1 + setup % 32;
  cfg.desc_uva = kDescGpa + kUserOffset;
  cfg.avail_uva = kAvailGpa + kUserOffset;  // driver event suppression
  cfg.used_uva = kUsedGpa + kUserOffset;    // device event suppression
  cfg.event_idx = setup & 0x40;
  cfg.indirect_desc = setup & 0x80;
  Driver driver;
  cfg.last_avail_idx = 0x8000;
  cfg.last_used_idx = 0x8000;
  if (setup & 0x20) {  // resume mid-ring, as after GET/SET_VRING_BASE
    const uint16_t at = in.u16();
    driver.next = uint16_t((at & 0x7fff) % cfg.size);
    driver.wrap = at & 0x8000;
    cfg.last_avail_idx = uint16_t(driver.next | (driver.wrap ? 0x8000 : 0));
    cfg.last_used_idx = cfg.last_avail_idx;
  }

  PackedVirtqueue q;
  if (q.start(g.mem, cfg) != 0) std::abort();  // the harness's rings are valid

  DescriptorChain chain;
  std::vector<uint16_t> inflight;  // buffer ids
  auto desc_at = [&](uint32_t slot) { return g.at(kDescGpa + 16 * (slot % cfg.size), 16); };
  uint64_t sink = 0;

  for (int ops = 0; !in.empty() && ops < 4096; ++ops) {
    switch (in.byte() % 12) {
      case 0: {  // raw bytes anywhere in guest memory
        const uint64_t gpa = g.address(in);
        const size_t n = in.byte() % 32;
        for (size_t i = 0; i < n; ++i) {
          const uint8_t b = in.byte();
          if (uint8_t* p = g.at(gpa + i, 1)) *p = b;
        }
        break;
      }
      case 1: {  // any descriptor in the ring, any flags
        const uint32_t slot = in.byte();
        const uint64_t addr = g.address(in);
        const uint32_t len = (in.byte() & 1) ? in.u32() : in.u16() % 1024;
        const uint16_t id = in.byte() & 1 ? in.u16() : in.byte() % 40;
        write_packed_desc(desc_at(slot), addr, len, id, in.u16());
        break;
      }
      case 2: {  // a descriptor of an indirect table, anywhere
        const uint64_t at = g.address(in) & ~uint64_t(15);
        const uint64_t addr = g.address(in);
        const uint32_t len = (in.byte() & 1) ? in.u32() : in.u16() % 1024;
        const uint16_t flags = in.byte() % 8;
        write_packed_desc(g.at(at, 16), addr, len, in.u16(), flags);
        break;
      }
      case 3: {  // a chain made available as a driver would (head flags last)
        const unsigned n = 1 + in.byte() % 4;
        const uint16_t id = in.byte() % (cfg.size + 2);
        const uint16_t head = driver.next;
        uint16_t head_flags = 0;
        for (unsigned i = 0; i < n; ++i) {
          const uint64_t addr = g.address(in);
          const uint32_t len = in.u16() % 1024;
          uint16_t flags = driver.avail_flags();
          if (i + 1 < n) flags |= kNext;
          const uint8_t kind = in.byte();
          if (kind & 1) flags |= kWrite;
          if ((kind & 0x70) == 0x70) flags |= kIndirect;
          if (i == 0) {
            head_flags = flags;
            write_packed_desc(desc_at(driver.next), addr, len, id, 0);  // not yet available
          } else {
            write_packed_desc(desc_at(driver.next), addr, len, id, flags);
          }
          driver.advance(cfg.size);
        }
        std::memcpy(desc_at(head) + 14, &head_flags, 2);
        break;
      }
      case 4: {  // the driver's idea of the ring position goes astray
        driver.next = uint16_t(in.u16() % cfg.size);
        driver.wrap = in.byte() & 1;
        break;
      }
      case 5: {
        const PopResult r = q.pop(&chain);
        if (r == PopResult::kBroken && !q.broken()) std::abort();
        if (r != PopResult::kChain) {
          if (!chain.readable.empty() || !chain.writable.empty()) std::abort();
          break;
        }
        if (chain.head >= cfg.size) std::abort();  // buffer ids are below the queue size
        if (std::find(inflight.begin(), inflight.end(), chain.head) != inflight.end()) {
          std::abort();  // an id already in flight must break the queue, not pop
        }
        sink += g.touch(chain);
        inflight.push_back(chain.head);
        if (q.inflight() != inflight.size()) std::abort();
        break;
      }
      case 6: {  // complete one in flight
        if (inflight.empty()) break;
        const size_t k = in.byte() % inflight.size();
        if (!q.push(inflight[k], in.u32()) && q.running()) std::abort();
        inflight.erase(inflight.begin() + ptrdiff_t(k));
        break;
      }
      case 7: {  // a bogus completion: must be refused unless in flight
        const uint16_t id = in.u16();
        const auto it = std::find(inflight.begin(), inflight.end(), id);
        if (it == inflight.end()) {
          if (q.push(id, 0)) std::abort();
        } else {
          q.push(id, 0);
          inflight.erase(it);
        }
        break;
      }
      case 8:
        q.publish();
        sink += q.should_notify();
        break;
      case 9:
        sink += q.set_notification(in.byte() & 1);
        break;
      case 10: {  // driver event suppression: off_wrap and flags
        const uint16_t v = in.u16();
        if (uint8_t* p = g.at(kAvailGpa + ((in.byte() & 1) ? 2 : 0), 2)) std::memcpy(p, &v, 2);
        break;
      }
      case 11:  // the front-end restarts the ring or resends the table
        if (in.byte() & 1) {
          const uint16_t at = in.u16();
          driver.next = uint16_t((at & 0x7fff) % cfg.size);
          driver.wrap = at & 0x8000;
          cfg.last_avail_idx = uint16_t(driver.next | (driver.wrap ? 0x8000 : 0));
          cfg.last_used_idx = cfg.last_avail_idx;
          if (q.start(g.mem, cfg) != 0) std::abort();
          inflight.clear();
        } else if (q.remap(g.mem) != 0) {
          std::abort();
        }
        break;
    }
    if (!q.broken() && q.running() && q.inflight() != inflight.size()) std::abort();
  }
  if (sink == 0xdeadbeefcafef00d) std::abort();  // keep the reads alive
  return 0;
}
