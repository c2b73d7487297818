// The contents of one memfs regular file, and the capacity they draw from.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <vector>

namespace dpfs::memfs {

// Bytes a file system may hold, shared by every file. Safe for concurrent use.
class Space {
 public:
  explicit Space(uint64_t capacity) : capacity_(capacity) {}

  uint64_t capacity() const { return capacity_; }
  uint64_t used() const { return used_.load(std::memory_order_relaxed); }
  // Takes `bytes` if they fit under the capacity; false (nothing taken) if not.
  bool reserve(uint64_t bytes);
  // Takes `bytes` even past the capacity: for moves that free as much as they
  // take (a rename), where failing halfway would be worse than a brief excess.
  void charge(uint64_t bytes) { used_.fetch_add(bytes, std::memory_order_relaxed); }
  void release(uint64_t bytes) { used_.fetch_sub(bytes, std::memory_order_relaxed); }

 private:
  const uint64_t capacity_;
  std::atomic<uint64_t> used_{0};
};

// A sparse file: fixed-size chunks in a map keyed by chunk index. A chunk
// missing from the map is a hole, reads as zeros and costs nothing.
//
// The chunk is the page size, as tmpfs allocates pages: SEEK_HOLE/SEEK_DATA,
// st_blocks and ENOSPC behave as they do on tmpfs.
//
// Invariant: every byte of an allocated chunk at or past size() is zero (a
// file that grows exposes zeros without touching its chunks).
//
// Not thread-safe: the owning inode's lock guards it.
class FileData {
 public:
  static constexpr uint64_t kChunkSize = 4096;
  // The largest size and end offset (MAX_LFS_FILESIZE, loff_t).
  static constexpr uint64_t kMaxSize = INT64_MAX;

  explicit FileData(Space& space) : space_(space) {}
  FileData(const FileData&) = delete;
  FileData& operator=(const FileData&) = delete;
  ~FileData();

  uint64_t size() const { return size_; }
  uint64_t allocated_chunks() const { return chunks_.size(); }
  // st_blocks: allocated bytes in 512-byte units.
  uint64_t blocks() const { return chunks_.size() * (kChunkSize / 512); }

  // Copies up to `len` bytes from `offset` into `dst` (holes as zeros),
  // stopping at the end of the file; returns the bytes copied.
  size_t read(uint64_t offset, size_t len, std::span<const iovec> dst) const;
  // Writes all of `src` at `offset`, growing the file. Returns the bytes
  // written, fewer when space ran out part way, or -errno (ENOSPC when nothing
  // could be written, EFBIG past kMaxSize).
  int64_t write(uint64_t offset, std::span<const iovec> src);
  // Sets the size. Shrinking frees the chunks past the end and zeroes the
  // tail of the last one; growing adds a hole.
  void truncate(uint64_t size);
  // fallocate(2) mode and range; 0 or -errno. Supported: 0 and KEEP_SIZE
  // (allocate), PUNCH_HOLE|KEEP_SIZE, ZERO_RANGE [|KEEP_SIZE] (zeroed and
  // allocated), COLLAPSE_RANGE and INSERT_RANGE (chunk-aligned, as ext4
  // requires block alignment). Others: EOPNOTSUPP.
  int fallocate(uint32_t mode, uint64_t offset, uint64_t len);
  // SEEK_DATA / SEEK_HOLE from `offset`: the offset found or -ENXIO.
  int64_t seek(uint64_t offset, int whence) const;
  // Copies `len` bytes from `from` at `off_in` to `to` at `off_out` (stopping
  // at the end of `from`), holes staying holes where `to` has none. `from`
  // and `to` may be the same file with overlapping ranges (memmove order).
  // Returns the bytes copied or -errno; all or nothing.
  static int64_t copy(const FileData& from, uint64_t off_in, FileData& to, uint64_t off_out,
                      uint64_t len);

 private:
  using Chunk = std::unique_ptr<std::byte[]>;

  // The chunk at `index`, allocated if missing: zeroed, or left as it comes
  // when the caller overwrites all of it. nullptr and *error set (ENOSPC,
  // ENOMEM) if it cannot be.
  std::byte* chunk_for_write(uint64_t index, bool overwritten, int* error);
  // Allocates every missing chunk of [first, last], all or nothing.
  int allocate(uint64_t first, uint64_t last);
  // Zeroes [offset, end) and frees the chunks it covers whole.
  void punch(uint64_t offset, uint64_t end);
  // Zeroes [offset, end) inside allocated chunks, freeing none.
  void zero(uint64_t offset, uint64_t end);
  void free_from(uint64_t first_index);
  // The chunk at `index`, or nullptr for a hole.
  std::byte* find(uint64_t index) const;
  // Remembers where chunk `index` lives, if the direct table covers it.
  void remember(uint64_t index, std::byte* chunk) const;

  Space& space_;
  uint64_t size_ = 0;
  std::map<uint64_t, Chunk> chunks_;
  // A lookup cache in front of chunks_ for the first kDirectChunks chunks:
  // random 4k I/O on a large file would otherwise walk the map's nodes,
  // one cache miss per level. direct_[i], when not null, is chunks_[i];
  // filled as chunks are found, emptied whenever chunks are freed or moved.
  // Grown only in proportion to the chunks allocated, so a sparse file with
  // one chunk far out costs no table. Mutable: filled by const reads, which
  // run under the inode's lock like everything else here.
  static constexpr uint64_t kDirectChunks = 1u << 20;  // the first 4 GiB
  mutable std::vector<std::byte*> direct_;
};

}  // namespace dpfs::memfs
