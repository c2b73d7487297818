#include "virtio/queue.h"

#include <fmt/format.h>

#include <cerrno>

#include "virtio/packed_virtqueue.h"
#include "virtio/virtqueue.h"

namespace dpfs::virtio {

namespace {

bool aligned(const void* p, uintptr_t alignment) {
  return (reinterpret_cast<uintptr_t>(p) & (alignment - 1)) == 0;
}

}  // namespace

std::string_view to_string(RingLayout layout) {
  return layout == RingLayout::kPacked ? "packed" : "split";
}

std::unique_ptr<Virtqueue> make_virtqueue(RingLayout layout) {
  if (layout == RingLayout::kPacked) return std::make_unique<PackedVirtqueue>();
  return std::make_unique<SplitVirtqueue>();
}

bool Virtqueue::fail(std::string_view reason) {
  log_.warn("virtio queue {}: broken: {}", index_, reason);
  state_ = State::kBroken;
  return false;
}

bool Virtqueue::fail_buffer(uint32_t at, uint64_t addr, uint32_t len, BufferFault fault) {
  switch (fault) {
    case BufferFault::kReadableUnmapped:
      return fail(fmt::format("{} {}: readable buffer {:#x}+{} not in guest memory", chain_name(),
                              at, addr, len));
    case BufferFault::kWritableUnmapped:
      return fail(fmt::format("{} {}: writable buffer {:#x}+{} not in guest memory", chain_name(),
                              at, addr, len));
    case BufferFault::kReadableAfterWritable:
      return fail(fmt::format("{} {}: readable descriptor after a writable one", chain_name(), at));
    case BufferFault::kChainTooLong:
      break;
  }
  return fail(fmt::format("{} {}: chain longer than 4 GiB", chain_name(), at));
}

const char* Virtqueue::chain_name() const {
  return layout() == RingLayout::kPacked ? "desc" : "head";
}

uint16_t Virtqueue::not_in_flight(uint16_t id) {
  log_.error("virtio queue {}: push of {}, which is not in flight", index_, id);
  return 0;
}

const uint8_t* Virtqueue::indirect_table(uint32_t at, uint64_t addr, uint32_t len) {
  if (!indirect_) {
    fail(fmt::format("{} {}: INDIRECT not negotiated", chain_name(), at));
    return nullptr;
  }
  if (len == 0 || len % 16 != 0 || len / 16 > size_) {
    fail(fmt::format("{} {}: indirect table of {} bytes (queue size {})", chain_name(), at, len,
                     size_));
    return nullptr;
  }
  const void* table = mem_->translate_gpa(addr, len);
  if (table == nullptr) {
    fail(fmt::format("{} {}: indirect table {:#x}+{} not in one memory region", chain_name(), at,
                     addr, len));
  }
  return static_cast<const uint8_t*>(table);
}

int Virtqueue::map_areas(const GuestMemory& mem) {
  const AreaSpecs spec = area_specs();
  void* desc = mem.translate_uva(config_.desc_uva, spec.desc.bytes);
  void* driver = mem.translate_uva(config_.avail_uva, spec.driver.bytes);
  void* device = mem.translate_uva(config_.used_uva, spec.device.bytes);
  if (desc == nullptr || driver == nullptr || device == nullptr) {
    log_.warn("virtio queue {}: {} ring not in guest memory (desc {:#x} driver {:#x} device {:#x})",
              index_, to_string(layout()), config_.desc_uva, config_.avail_uva, config_.used_uva);
    return EFAULT;
  }
  // §2.7 / §2.8.10.1 alignment requirements; our atomic accesses rely on them.
  if (!aligned(desc, spec.desc.align) || !aligned(driver, spec.driver.align) ||
      !aligned(device, spec.device.align)) {
    log_.warn("virtio queue {}: misaligned {} ring (desc {:#x} driver {:#x} device {:#x})", index_,
              to_string(layout()), config_.desc_uva, config_.avail_uva, config_.used_uva);
    return EINVAL;
  }
  mem_ = &mem;
  desc_ = static_cast<uint8_t*>(desc);
  driver_area_ = static_cast<uint8_t*>(driver);
  device_area_ = static_cast<uint8_t*>(device);
  return 0;
}

int Virtqueue::start(const GuestMemory& mem, const VringConfig& config) {
  stop();
  config_ = config;
  index_ = config.queue_index;
  if (config.size == 0 || config.size > kMaxQueueSize) {
    log_.warn("virtio queue {}: invalid size {}", index_, config.size);
    return EINVAL;
  }
  if (int rc = check(config); rc != 0) return rc;
  size_ = config.size;
  event_idx_ = config.event_idx;
  indirect_ = config.indirect_desc;
  if (int rc = map_areas(mem); rc != 0) return rc;

  inflight_ = 0;
  in_flight_.assign(size_, 0);
  state_ = State::kRunning;
  reset();
  return 0;
}

int Virtqueue::remap(const GuestMemory& mem) {
  if (state_ == State::kStopped) return 0;
  if (int rc = map_areas(mem); rc != 0) {
    stop();
    return rc;
  }
  return 0;
}

void Virtqueue::stop() {
  state_ = State::kStopped;
  mem_ = nullptr;
  desc_ = driver_area_ = device_area_ = nullptr;
  inflight_ = 0;
  in_flight_.clear();
}

}  // namespace dpfs::virtio
