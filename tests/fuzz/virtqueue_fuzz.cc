// libFuzzer target: a split virtqueue driven by a hostile driver. Fuzzer
// bytes are a sequence of driver actions (write descriptors, ring entries,
// indexes, raw bytes, notification fields) interleaved with device actions
// (pop, push, publish, should_notify, set_notification, restart, remap).
//
// Guest memory is three heap buffers of exactly their size, registered as
// borrowed regions (two adjacent in guest physical space, one after a gap),
// so AddressSanitizer reports any access past what the tenant shared. Every
// popped iovec is checked to lie inside one region and then touched (read
// if readable, written if writable). A crash, a sanitizer report or an iovec
// outside guest memory is a finding.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "fuzz_guest.h"
#include "virtio/virtqueue.h"

namespace {

using dpfs::fuzz::Guest;
using dpfs::fuzz::Input;
using dpfs::fuzz::kAvailGpa;
using dpfs::fuzz::kDescGpa;
using dpfs::fuzz::kUsedGpa;
using dpfs::fuzz::kUserOffset;
using dpfs::virtio::DescriptorChain;
using dpfs::virtio::PopResult;
using dpfs::virtio::SplitVirtqueue;
using dpfs::virtio::VringConfig;

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
  cfg.size = 1u << (setup % 6);  // 1..32
  cfg.desc_uva = kDescGpa + kUserOffset;
  cfg.avail_uva = kAvailGpa + kUserOffset;
  cfg.used_uva = kUsedGpa + kUserOffset;
  cfg.event_idx = setup & 0x40;
  cfg.indirect_desc = setup & 0x80;
  cfg.last_avail_idx = (setup & 0x20) ? in.u16() : 0;

  SplitVirtqueue q;
  if (q.start(g.mem, cfg) != 0) std::abort();  // the harness's rings are valid

  DescriptorChain chain;
  std::vector<uint16_t> inflight;
  uint16_t avail_idx = cfg.last_avail_idx;
  auto avail16 = [&](size_t i) { return g.at(kAvailGpa + 2 * i, 2); };
  auto set16 = [](uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); };
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
      case 1: {  // a descriptor in the table
        const uint16_t i = in.byte() % cfg.size;
        const uint64_t addr = g.address(in);
        const uint32_t len = (in.byte() & 1) ? in.u32() : in.u16() % 1024;
        const uint16_t flags = in.byte() % 8;
        const uint16_t next = in.byte();
        g.write_desc(g.at(kDescGpa + 16 * i, 16), addr, len, flags, next);
        break;
      }
      case 2: {  // a descriptor anywhere (an indirect table)
        const uint64_t at = g.address(in) & ~uint64_t(15);
        const uint64_t addr = g.address(in);
        const uint32_t len = (in.byte() & 1) ? in.u32() : in.u16() % 1024;
        const uint16_t flags = in.byte() % 8;
        const uint16_t next = in.byte() % 40;
        g.write_desc(g.at(at, 16), addr, len, flags, next);
        break;
      }
      case 3: {  // make a head available
        const uint16_t head = in.byte();
        set16(avail16(2 + (avail_idx & (cfg.size - 1))), head);
        ++avail_idx;
        set16(avail16(1), avail_idx);
        break;
      }
      case 4:  // a lying avail idx
        avail_idx = in.u16();
        set16(avail16(1), avail_idx);
        break;
      case 5: {
        const PopResult r = q.pop(&chain);
        if (r == PopResult::kBroken && !q.broken()) std::abort();
        if (r != PopResult::kChain) {
          if (!chain.readable.empty() || !chain.writable.empty()) std::abort();
          break;
        }
        if (chain.head >= cfg.size) std::abort();
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
        const uint16_t head = in.u16();
        bool ours = false;
        for (uint16_t h : inflight) ours |= h == head;
        if (!ours) {
          if (q.push(head, 0)) std::abort();
        } else {
          q.push(head, 0);
          inflight.erase(std::find(inflight.begin(), inflight.end(), head));
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
      case 10: {  // driver suppression fields
        const uint16_t v = in.u16();
        if (in.byte() & 1) {
          set16(avail16(0), v);
        } else {
          set16(avail16(2 + cfg.size), v);
        }
        break;
      }
      case 11:  // the front-end restarts the ring or resends the table
        if (in.byte() & 1) {
          cfg.last_avail_idx = in.u16();
          avail_idx = cfg.last_avail_idx;
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
