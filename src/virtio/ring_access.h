// Access to ring memory the tenant shares with us and rewrites while we read
// it; for the ring layouts (virtqueue.cc, packed_virtqueue.cc) only.
#pragma once

#include <endian.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace dpfs::virtio::ring {

// Ring fields are little-endian (§2.4: virtio 1.x) and written by the other
// side concurrently: single relaxed accesses, ordered by explicit fences.
inline uint16_t load16(const uint16_t* p) { return le16toh(__atomic_load_n(p, __ATOMIC_RELAXED)); }
inline void store16(uint16_t* p, uint16_t v) { __atomic_store_n(p, htole16(v), __ATOMIC_RELAXED); }
inline void store32(uint32_t* p, uint32_t v) { __atomic_store_n(p, htole32(v), __ATOMIC_RELAXED); }

// Copies tenant memory into a local exactly once: the barrier stops the
// compiler from re-reading the source in place of the copy (the tenant may
// have changed it since). Every descriptor goes through here before any of
// its fields is looked at.
inline void read_once(void* dst, const void* src, size_t n) {
  std::memcpy(dst, src, n);
  asm volatile("" ::: "memory");
}

// vring_need_event (§2.7.7, §2.7.10; virtio_ring.h): whether moving the index
// from `old_idx` to `new_idx` passed `event`.
inline bool need_event(uint16_t event, uint16_t new_idx, uint16_t old_idx) {
  return uint16_t(new_idx - event - 1) < uint16_t(new_idx - old_idx);
}

}  // namespace dpfs::virtio::ring
