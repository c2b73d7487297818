#include "virtio/guest_memory.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <mutex>
#include <utility>

namespace dpfs::virtio {

static_assert(sizeof(size_t) == sizeof(uint64_t), "a region length must fit a size_t");

namespace {

// end = start + len without wrapping past 2^64 (an end of exactly 2^64 is
// not representable and refused too).
bool range_end(uint64_t start, uint64_t len, uint64_t* end) {
  return !__builtin_add_overflow(start, len, end);
}

// --- SIGBUS containment -----------------------------------------------------
//
// A front-end can shrink the file behind a region after we mapped it; a
// touch of a page past the new end then raises SIGBUS, which by default
// ends the daemon and every tenant in it. Every mapping is registered here;
// the handler looks the faulting address up, replaces that whole mapping
// with private zero pages (MAP_FIXED over our own range: the retried access
// succeeds) and marks its GuestMemory faulted, so the device stops serving
// that tenant. A fault outside every registered mapping goes to the
// handler that was there before (or the default action).
//
// The table is lock-free for the handler: a slot is published with its
// range before its state turns kLive (release) and leaves kLive before it
// is reused; the handler reads ranges only from kLive slots and only of
// mappings that stay mapped while any thread may touch them (a GuestMemory
// unregisters in its destructor, when nothing reads it any more).

struct FaultSlot {
  enum : int { kFree = 0, kBusy = 1, kLive = 2 };
  std::atomic<int> state{kFree};
  std::atomic<uintptr_t> begin{0};
  std::atomic<uintptr_t> end{0};
  std::atomic<std::atomic<bool>*> fault{nullptr};
};

// Mapped regions of every device in the process; add_region refuses a
// region it cannot register (ENOSPC) rather than map it uncontained.
constexpr size_t kFaultSlots = 4096;
std::array<FaultSlot, kFaultSlots> fault_slots;
struct sigaction previous_sigbus;
std::once_flag sigbus_installed;

void on_sigbus(int sig, siginfo_t* info, void* ucontext) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
  for (FaultSlot& slot : fault_slots) {
    if (slot.state.load(std::memory_order_acquire) != FaultSlot::kLive) continue;
    const uintptr_t begin = slot.begin.load(std::memory_order_relaxed);
    const uintptr_t end = slot.end.load(std::memory_order_relaxed);
    if (addr < begin || addr >= end) continue;
    // mmap is a plain system call: safe here in practice on Linux. If it
    // fails, the retried access would fault forever: die of it instead.
    if (::mmap(reinterpret_cast<void*>(begin), end - begin, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == MAP_FAILED) {
      break;
    }
    if (std::atomic<bool>* f = slot.fault.load(std::memory_order_relaxed)) {
      f->store(true, std::memory_order_release);
    }
    return;  // the access is retried, on zero pages now
  }
  // Not guest memory (or its pages could not be replaced): what would
  // have happened without us.
  if (previous_sigbus.sa_flags & SA_SIGINFO) {
    if (previous_sigbus.sa_sigaction != nullptr) {
      previous_sigbus.sa_sigaction(sig, info, ucontext);
      return;
    }
  } else if (previous_sigbus.sa_handler != SIG_DFL && previous_sigbus.sa_handler != SIG_IGN) {
    previous_sigbus.sa_handler(sig);
    return;
  }
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGBUS, &dfl, nullptr);  // the retried access dies as it would have
}

void install_sigbus_handler() {
  std::call_once(sigbus_installed, [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &previous_sigbus);
  });
}

// Returns the slot now covering [base, base + len), or nullptr if the table
// is full.
FaultSlot* register_mapping(void* base, size_t len, std::atomic<bool>* fault) {
  install_sigbus_handler();
  for (FaultSlot& slot : fault_slots) {
    int expected = FaultSlot::kFree;
    if (!slot.state.compare_exchange_strong(expected, FaultSlot::kBusy)) continue;
    slot.begin.store(reinterpret_cast<uintptr_t>(base), std::memory_order_relaxed);
    slot.end.store(reinterpret_cast<uintptr_t>(base) + len, std::memory_order_relaxed);
    slot.fault.store(fault, std::memory_order_relaxed);
    slot.state.store(FaultSlot::kLive, std::memory_order_release);
    return &slot;
  }
  return nullptr;
}

void unregister_mapping(void* base) {
  for (FaultSlot& slot : fault_slots) {
    if (slot.state.load(std::memory_order_acquire) == FaultSlot::kLive &&
        slot.begin.load(std::memory_order_relaxed) == reinterpret_cast<uintptr_t>(base)) {
      slot.state.store(FaultSlot::kFree, std::memory_order_release);
      return;
    }
  }
}

void unmap(const GuestMemory::Region& r) {
  if (r.map_base == nullptr) return;
  unregister_mapping(r.map_base);
  ::munmap(r.map_base, r.map_len);
}

}  // namespace

GuestMemory::GuestMemory(GuestMemory&& other) noexcept
    : regions_(std::move(other.regions_)),
      retired_(std::move(other.retired_)),
      fault_(std::exchange(other.fault_, std::make_unique<std::atomic<bool>>(false))) {
  other.regions_.clear();
  other.retired_.clear();
}

GuestMemory& GuestMemory::operator=(GuestMemory&& other) noexcept {
  if (this != &other) {
    for (const Region& r : regions_) unmap(r);
    for (const Region& r : retired_) unmap(r);
    regions_ = std::move(other.regions_);
    retired_ = std::move(other.retired_);
    fault_ = std::exchange(other.fault_, std::make_unique<std::atomic<bool>>(false));
    other.regions_.clear();
    other.retired_.clear();
  }
  return *this;
}

GuestMemory::~GuestMemory() {
  for (const Region& r : regions_) unmap(r);
  for (const Region& r : retired_) unmap(r);
}

int GuestMemory::insert(const Region& r) {
  uint64_t gpa_end, uva_end;
  if (r.size == 0 || !range_end(r.guest_phys_addr, r.size, &gpa_end) ||
      !range_end(r.user_addr, r.size, &uva_end)) {
    return EINVAL;
  }
  if (regions_.size() >= kMaxRegions) return ENOSPC;
  auto pos = std::upper_bound(
      regions_.begin(), regions_.end(), r.guest_phys_addr,
      [](uint64_t gpa, const Region& other) { return gpa < other.guest_phys_addr; });
  // Sorted and disjoint: only the neighbours can overlap.
  if (pos != regions_.end() && pos->guest_phys_addr < gpa_end) return EINVAL;
  if (pos != regions_.begin()) {
    const Region& prev = *(pos - 1);
    if (prev.guest_phys_addr + prev.size > r.guest_phys_addr) return EINVAL;
  }
  regions_.insert(pos, r);
  return 0;
}

int GuestMemory::add_region(int fd, uint64_t gpa, uint64_t size, uint64_t user_addr,
                            uint64_t mmap_offset) {
  uint64_t map_len, ignored;
  if (size == 0 || !range_end(mmap_offset, size, &map_len) || !range_end(gpa, size, &ignored) ||
      !range_end(user_addr, size, &ignored)) {
    ::close(fd);
    return EINVAL;
  }
  if (regions_.size() >= kMaxRegions) {
    ::close(fd);
    return ENOSPC;
  }
  // Only a file that holds the whole range: a mapping past its end would
  // fault (SIGBUS) at the first touch.
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return err;
  }
  if (!S_ISREG(st.st_mode) || uint64_t(st.st_size) < map_len) {
    ::close(fd);
    return EINVAL;
  }
  // Mapped from offset 0, as libvhost-user does: mmap_offset need not be
  // aligned to the fd's page size (hugetlbfs), and mapping the head too
  // costs only address space.
  void* base = ::mmap(nullptr, map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
  const int err = errno;
  ::close(fd);
  if (base == MAP_FAILED) return err;
  // The file may still shrink later: contain the fault it would raise.
  if (register_mapping(base, map_len, fault_.get()) == nullptr) {
    ::munmap(base, map_len);
    return ENOSPC;
  }

  Region r;
  r.guest_phys_addr = gpa;
  r.size = size;
  r.user_addr = user_addr;
  r.mmap_offset = mmap_offset;
  r.host = static_cast<uint8_t*>(base) + mmap_offset;
  r.map_base = base;
  r.map_len = map_len;
  if (int rc = insert(r); rc != 0) {
    unmap(r);
    return rc;
  }
  return 0;
}

int GuestMemory::add_borrowed_region(void* host, uint64_t gpa, uint64_t size, uint64_t user_addr) {
  Region r;
  r.guest_phys_addr = gpa;
  r.size = size;
  r.user_addr = user_addr;
  r.host = static_cast<uint8_t*>(host);
  return insert(r);
}

int GuestMemory::remove_region(uint64_t gpa, uint64_t size, uint64_t user_addr) {
  auto it = std::find_if(regions_.begin(), regions_.end(), [&](const Region& r) {
    return r.guest_phys_addr == gpa && r.size == size && r.user_addr == user_addr;
  });
  if (it == regions_.end()) return ENOENT;
  // Reserved address space is bounded: a front-end that adds and removes
  // regions while requests stay in flight is refused past this.
  if (it->map_base != nullptr && retired_.size() >= kMaxRegions) return EBUSY;
  if (it->map_base != nullptr) {
    // Drop the tenant's pages but keep the range reserved: MAP_FIXED over
    // our own mapping replaces it atomically.
    void* p = ::mmap(it->map_base, it->map_len, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      unmap(*it);  // the best we can do; in-flight I/O into it would fault
    } else {
      retired_.push_back(*it);
    }
  }
  regions_.erase(it);
  return 0;
}

void GuestMemory::release_removed() {
  for (const Region& r : retired_) unmap(r);
  retired_.clear();
}

ptrdiff_t GuestMemory::find_gpa(uint64_t gpa) const {
  // Last region starting at or below gpa.
  auto it = std::upper_bound(regions_.begin(), regions_.end(), gpa,
                             [](uint64_t a, const Region& r) { return a < r.guest_phys_addr; });
  if (it == regions_.begin()) return -1;
  --it;
  if (gpa - it->guest_phys_addr >= it->size) return -1;
  return it - regions_.begin();
}

void* GuestMemory::translate_gpa(uint64_t gpa, uint64_t len) const {
  if (len == 0) len = 1;
  const ptrdiff_t i = find_gpa(gpa);
  if (i < 0) return nullptr;
  const Region& r = regions_[size_t(i)];
  const uint64_t off = gpa - r.guest_phys_addr;
  if (len > r.size - off) return nullptr;
  return r.host + off;
}

bool GuestMemory::map_gpa(uint64_t gpa, uint64_t len, std::vector<iovec>* out) const {
  if (len == 0) return true;
  uint64_t end;
  if (!range_end(gpa, len, &end)) return false;
  ptrdiff_t i = find_gpa(gpa);
  if (i < 0) return false;
  const size_t mark = out->size();
  while (true) {
    const Region& r = regions_[size_t(i)];
    const uint64_t off = gpa - r.guest_phys_addr;
    const uint64_t n = std::min(len, r.size - off);
    out->push_back({r.host + off, size_t(n)});
    gpa += n;
    len -= n;
    if (len == 0) return true;
    // Continue only into a region that starts exactly where this one ends.
    ++i;
    if (size_t(i) == regions_.size() || regions_[size_t(i)].guest_phys_addr != gpa) {
      out->resize(mark);
      return false;
    }
  }
}

void* GuestMemory::translate_uva(uint64_t uva, uint64_t len) const {
  if (len == 0) len = 1;
  for (const Region& r : regions_) {
    if (uva < r.user_addr) continue;
    const uint64_t off = uva - r.user_addr;
    if (off >= r.size || len > r.size - off) continue;
    return r.host + off;
  }
  return nullptr;
}

}  // namespace dpfs::virtio
