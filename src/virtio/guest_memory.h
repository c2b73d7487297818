// The tenant's memory as this process sees it: the table of regions a
// vhost-user front-end shares (SET_MEM_TABLE, ADD_MEM_REG), each a file
// descriptor mapped MAP_SHARED, and the translations from the addresses the
// tenant writes into rings and descriptors to host pointers.
//
// Guest physical addresses (GPAs) are what descriptors hold; user addresses
// (UVAs, the front-end's own virtual addresses) are what SET_VRING_ADDR
// holds. Every translation is bounds- and overflow-checked: a pointer comes
// back only when the whole range lies in mapped guest memory, so a hostile
// address or length can never make us touch anything else.
//
// Thread-safety: translations (translate_gpa, map_gpa, translate_uva) are
// const and safe to call from any number of threads at once. add_region and
// remove_region are not: REQUIRES that no other thread translates while they
// run (the vhost-user thread changes the table only while the workers that
// own the device's queues are paused). Pointers handed out stay valid until
// the region is removed or the GuestMemory destroyed.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace dpfs::virtio {

class GuestMemory {
 public:
  // QEMU's vhost-user limit on memory slots (VHOST_USER_MAX_RAM_SLOTS, x86).
  static constexpr size_t kMaxRegions = 509;

  struct Region {
    uint64_t guest_phys_addr = 0;
    uint64_t size = 0;
    uint64_t user_addr = 0;    // the front-end's virtual address of the region
    uint64_t mmap_offset = 0;  // where the region starts in its fd
    uint8_t* host = nullptr;   // our address of guest_phys_addr
    // What to munmap; null for a borrowed region.
    void* map_base = nullptr;
    size_t map_len = 0;
  };

  GuestMemory() = default;
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;
  GuestMemory(GuestMemory&& other) noexcept;
  GuestMemory& operator=(GuestMemory&& other) noexcept;
  // Unmaps every region. The owner must have drained every request that
  // still holds iovecs into this memory.
  ~GuestMemory();

  // Maps `size` bytes of `fd` starting at `mmap_offset` (MAP_SHARED,
  // read-write) as guest physical [gpa, gpa + size), known to the front-end
  // at `user_addr`. Takes ownership of `fd` whatever the outcome (it is
  // closed once mapped: the mapping keeps the memory). Returns 0 or an errno:
  // EINVAL for size 0, an address range that wraps, a GPA range that
  // overlaps an existing region, or a range past the end of the file (or a
  // descriptor that is not a file); ENOSPC past kMaxRegions; mmap's errno.
  //
  // A file shrunk after it was mapped makes its pages fault (SIGBUS). Every
  // mapping made here is registered with a process-wide SIGBUS handler that
  // replaces the mapping with zero pages and sets faulted(): the fault costs
  // the tenant its device, not the daemon. Faults elsewhere keep their
  // previous handling.
  int add_region(int fd, uint64_t gpa, uint64_t size, uint64_t user_addr, uint64_t mmap_offset);

  // Adds memory this object does not own (tests, fuzzing): `host` must stay
  // mapped and valid for `size` bytes while the region is in the table.
  // Same checks and return values as add_region.
  int add_borrowed_region(void* host, uint64_t gpa, uint64_t size, uint64_t user_addr);

  // Removes the region added with exactly these gpa, size and user_addr
  // (REM_MEM_REG). Returns 0 or ENOENT. The address range stays reserved
  // (remapped to private anonymous memory) until this object is destroyed,
  // so a request still in flight into it writes into a void instead of
  // crashing the daemon or reaching the tenant's memory.
  int remove_region(uint64_t gpa, uint64_t size, uint64_t user_addr);
  // Unmaps the ranges remove_region kept reserved. REQUIRES: no request
  // still holds iovecs into a removed region (none in flight).
  void release_removed();
  size_t num_removed() const { return retired_.size(); }

  // True once a fault was taken in this memory: the front-end shrank a
  // region's file under the mapping (SIGBUS). The faulting range now reads
  // zeros and takes writes into a void; the device must stop serving it.
  // Safe from any thread.
  bool faulted() const { return fault_->load(std::memory_order_acquire); }

  // Host pointer for [gpa, gpa + len) when the range lies inside one region;
  // nullptr otherwise (unmapped, spans regions, or wraps). len 0 is treated
  // as 1 byte: the address itself must be mapped.
  void* translate_gpa(uint64_t gpa, uint64_t len) const;

  // Appends to `out` the host iovecs covering [gpa, gpa + len), which may
  // span several adjacent regions. Returns false (and leaves `out` as it
  // was) if any byte is unmapped or the range wraps. len 0 appends nothing
  // and succeeds.
  bool map_gpa(uint64_t gpa, uint64_t len, std::vector<iovec>* out) const;

  // Host pointer for the front-end's user address range [uva, uva + len)
  // when it lies in one region (vring addresses); nullptr otherwise.
  void* translate_uva(uint64_t uva, uint64_t len) const;

  size_t num_regions() const { return regions_.size(); }
  // Regions sorted by guest_phys_addr.
  const std::vector<Region>& regions() const { return regions_; }

 private:
  int insert(const Region& r);
  // Index of the region containing gpa, or -1.
  ptrdiff_t find_gpa(uint64_t gpa) const;

  std::vector<Region> regions_;  // sorted by guest_phys_addr, disjoint
  std::vector<Region> retired_;  // removed, kept reserved (see remove_region)
  // Set by the SIGBUS handler (see guest_memory.cc); on the heap so that a
  // moved GuestMemory keeps the address the handler knows.
  std::unique_ptr<std::atomic<bool>> fault_ = std::make_unique<std::atomic<bool>>(false);
};

}  // namespace dpfs::virtio
