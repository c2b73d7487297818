// libFuzzer target: a virtqueue of either layout -- split (virtio 1.2 §2.7)
// or packed (§2.8), chosen by the first input byte -- driven by a hostile
// driver. The rest is a sequence of driver actions, each the layout's own
// (descriptors with any fields, ring entries and indexes that lie, chains
// made available the way a driver does so that the fuzzer reaches deep
// states -- wrapped rings, batches in flight --, indirect tables,
// notification suppression fields, raw bytes), interleaved with device
// actions through the Virtqueue interface both layouts share (pop, push,
// publish, should_notify, set_notification, restart at any index, remap).
//
// Guest memory as in fuzz_guest.h. Every popped iovec is checked to lie
// inside one region and then touched (read if readable, written if
// writable). A crash, a sanitizer report, an iovec outside guest memory or a
// broken invariant (in-flight count, heads and buffer ids) is a finding.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "fuzz_guest.h"
#include "virtio/packed_virtqueue.h"
#include "virtio/queue.h"
#include "virtio/virtqueue.h"

namespace {

using dpfs::fuzz::Guest;
using dpfs::fuzz::Input;
using dpfs::fuzz::kAvailGpa;
using dpfs::fuzz::kDescGpa;
using dpfs::fuzz::kUsedGpa;
using dpfs::fuzz::kUserOffset;
using dpfs::virtio::DescriptorChain;
using dpfs::virtio::kDescFIndirect;
using dpfs::virtio::kDescFNext;
using dpfs::virtio::kDescFWrite;
using dpfs::virtio::kPackedDescFAvail;
using dpfs::virtio::kPackedDescFUsed;
using dpfs::virtio::PopResult;
using dpfs::virtio::RingLayout;
using dpfs::virtio::VringConfig;

void set16(uint8_t* p, uint16_t v) {
  if (p != nullptr) std::memcpy(p, &v, 2);
}

uint32_t fuzz_len(Input& in) { return (in.byte() & 1) ? in.u32() : in.u16() % 1024; }

// The hostile driver's actions on its own ring layout.
class Driver {
 public:
  explicit Driver(Guest& g) : g_(g) {}
  virtual ~Driver() = default;

  // The ring's configuration, from the setup byte (and more input).
  virtual VringConfig configure(uint8_t setup, Input& in) = 0;
  // A descriptor in the ring, any fields.
  virtual void ring_descriptor(Input& in) = 0;
  // A descriptor anywhere in guest memory (an indirect table's entry).
  virtual void table_descriptor(Input& in) = 0;
  // A chain (or head) made available.
  virtual void make_available(Input& in) = 0;
  // The driver's index goes astray.
  virtual void lie(Input& in) = 0;
  // The driver's notification suppression fields.
  virtual void suppress(Input& in) = 0;
  // A restart (GET/SET_VRING_BASE) at a base from the input: updates *cfg.
  virtual void rebase(Input& in, VringConfig* cfg) = 0;

 protected:
  Guest& g_;
};

class SplitDriver final : public Driver {
 public:
  using Driver::Driver;

  VringConfig configure(uint8_t setup, Input& in) override {
    VringConfig cfg;
    cfg.size = size_ = 1u << (setup % 6);  // 1..32
    cfg.last_avail_idx = avail_idx_ = (setup & 0x20) ? in.u16() : 0;
    return cfg;
  }
  void ring_descriptor(Input& in) override {
    const uint16_t i = in.byte() % size_;
    const uint64_t addr = g_.address(in);
    const uint32_t len = fuzz_len(in);
    const uint16_t flags = in.byte() % 8;
    const uint16_t next = in.byte();
    g_.write_desc(g_.at(kDescGpa + 16 * i, 16), addr, len, flags, next);
  }
  void table_descriptor(Input& in) override {
    const uint64_t at = g_.address(in) & ~uint64_t(15);
    const uint64_t addr = g_.address(in);
    const uint32_t len = fuzz_len(in);
    const uint16_t flags = in.byte() % 8;
    const uint16_t next = in.byte() % 40;
    g_.write_desc(g_.at(at, 16), addr, len, flags, next);
  }
  void make_available(Input& in) override {
    const uint16_t head = in.byte();
    set16(avail16(2 + (avail_idx_ & (size_ - 1))), head);
    ++avail_idx_;
    set16(avail16(1), avail_idx_);
  }
  void lie(Input& in) override {
    avail_idx_ = in.u16();
    set16(avail16(1), avail_idx_);
  }
  void suppress(Input& in) override {  // avail flags or used_event
    const uint16_t v = in.u16();
    set16(avail16((in.byte() & 1) ? 0 : 2 + size_), v);
  }
  void rebase(Input& in, VringConfig* cfg) override { cfg->last_avail_idx = avail_idx_ = in.u16(); }

 private:
  uint8_t* avail16(size_t i) { return g_.at(kAvailGpa + 2 * i, 2); }

  uint32_t size_ = 1;
  uint16_t avail_idx_ = 0;
};

class PackedDriver final : public Driver {
 public:
  using Driver::Driver;

  VringConfig configure(uint8_t setup, Input& in) override {
    VringConfig cfg;
    // 1..32 entries; packed rings need not be a power of two.
    cfg.size = size_ = 1 + setup % 32;
    cfg.last_avail_idx = cfg.last_used_idx = 0x8000;
    if (setup & 0x20) rebase(in, &cfg);  // resume mid-ring
    return cfg;
  }
  void ring_descriptor(Input& in) override {  // any slot, any flags
    const uint32_t slot = in.byte();
    const uint64_t addr = g_.address(in);
    const uint32_t len = fuzz_len(in);
    const uint16_t id = in.byte() & 1 ? in.u16() : in.byte() % 40;
    write_desc(desc_at(slot), addr, len, id, in.u16());
  }
  void table_descriptor(Input& in) override {
    const uint64_t at = g_.address(in) & ~uint64_t(15);
    const uint64_t addr = g_.address(in);
    const uint32_t len = fuzz_len(in);
    const uint16_t flags = in.byte() % 8;
    write_desc(g_.at(at, 16), addr, len, in.u16(), flags);
  }
  void make_available(Input& in) override {  // as a driver would: head flags last
    const unsigned n = 1 + in.byte() % 4;
    const uint16_t id = in.byte() % (size_ + 2);
    const uint16_t head = next_;
    uint16_t head_flags = 0;
    for (unsigned i = 0; i < n; ++i) {
      const uint64_t addr = g_.address(in);
      const uint32_t len = in.u16() % 1024;
      // AVAIL == wrap, USED != wrap.
      uint16_t flags = wrap_ ? kPackedDescFAvail : kPackedDescFUsed;
      if (i + 1 < n) flags |= kDescFNext;
      const uint8_t kind = in.byte();
      if (kind & 1) flags |= kDescFWrite;
      if ((kind & 0x70) == 0x70) flags |= kDescFIndirect;
      if (i == 0) {
        head_flags = flags;
        write_desc(desc_at(next_), addr, len, id, 0);  // not yet available
      } else {
        write_desc(desc_at(next_), addr, len, id, flags);
      }
      if (++next_ == size_) {
        next_ = 0;
        wrap_ = !wrap_;
      }
    }
    set16(desc_at(head) + 14, head_flags);
  }
  void lie(Input& in) override {
    next_ = uint16_t(in.u16() % size_);
    wrap_ = in.byte() & 1;
  }
  void suppress(Input& in) override {  // driver event suppression: off_wrap or flags
    const uint16_t v = in.u16();
    set16(g_.at(kAvailGpa + ((in.byte() & 1) ? 2 : 0), 2), v);
  }
  void rebase(Input& in, VringConfig* cfg) override {
    const uint16_t at = in.u16();
    next_ = uint16_t((at & 0x7fff) % size_);
    wrap_ = at & 0x8000;
    cfg->last_avail_idx = cfg->last_used_idx = uint16_t(next_ | (wrap_ ? 0x8000 : 0));
  }

 private:
  static void write_desc(uint8_t* at, uint64_t addr, uint32_t len, uint16_t id, uint16_t flags) {
    if (at == nullptr) return;
    std::memcpy(at, &addr, 8);
    std::memcpy(at + 8, &len, 4);
    std::memcpy(at + 12, &id, 2);
    std::memcpy(at + 14, &flags, 2);
  }
  uint8_t* desc_at(uint32_t slot) { return g_.at(kDescGpa + 16 * (slot % size_), 16); }

  uint32_t size_ = 1;
  uint16_t next_ = 0;  // where the driver makes the next descriptor available
  bool wrap_ = true;   // and with which wrap counter
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in{data, size};
  Guest g;
  const RingLayout layout = (in.byte() & 1) ? RingLayout::kPacked : RingLayout::kSplit;
  std::unique_ptr<Driver> driver;
  if (layout == RingLayout::kPacked) {
    driver = std::make_unique<PackedDriver>(g);
  } else {
    driver = std::make_unique<SplitDriver>(g);
  }
  const uint8_t setup = in.byte();
  VringConfig cfg = driver->configure(setup, in);
  cfg.queue_index = 0;
  // Split: desc table, avail ring, used ring. Packed: descriptor ring,
  // driver and device event suppression.
  cfg.desc_uva = kDescGpa + kUserOffset;
  cfg.avail_uva = kAvailGpa + kUserOffset;
  cfg.used_uva = kUsedGpa + kUserOffset;
  cfg.event_idx = setup & 0x40;
  cfg.indirect_desc = setup & 0x80;

  const std::unique_ptr<dpfs::virtio::Virtqueue> owned = dpfs::virtio::make_virtqueue(layout);
  dpfs::virtio::Virtqueue& q = *owned;
  if (q.start(g.mem, cfg) != 0) std::abort();  // the harness's rings are valid

  DescriptorChain chain;
  std::vector<uint16_t> inflight;  // heads or buffer ids
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
      case 1:
        driver->ring_descriptor(in);
        break;
      case 2:
        driver->table_descriptor(in);
        break;
      case 3:
        driver->make_available(in);
        break;
      case 4:
        driver->lie(in);
        break;
      case 5: {
        const PopResult r = q.pop(&chain);
        if (r == PopResult::kBroken && !q.broken()) std::abort();
        if (r != PopResult::kChain) {
          if (!chain.readable.empty() || !chain.writable.empty()) std::abort();
          break;
        }
        if (chain.head >= cfg.size) std::abort();  // heads and ids are below the queue size
        if (std::find(inflight.begin(), inflight.end(), chain.head) != inflight.end()) {
          std::abort();  // one already in flight must break the queue, not pop
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
      case 10:
        driver->suppress(in);
        break;
      case 11:  // the front-end restarts the ring or resends the table
        if (in.byte() & 1) {
          driver->rebase(in, &cfg);
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
