#include "backend/memfs/file_data.h"

#include <linux/falloc.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <vector>

#include "util/iov.h"

namespace dpfs::memfs {
namespace {

constexpr uint64_t kChunk = FileData::kChunkSize;
const std::byte kZeros[kChunk] = {};

}  // namespace

bool Space::reserve(uint64_t bytes) {
  uint64_t used = used_.load(std::memory_order_relaxed);
  do {
    if (used > capacity_ || bytes > capacity_ - used) return false;
  } while (!used_.compare_exchange_weak(used, used + bytes, std::memory_order_relaxed));
  return true;
}

FileData::~FileData() { space_.release(chunks_.size() * kChunk); }

std::byte* FileData::find(uint64_t index) const {
  if (index < direct_.size() && direct_[index] != nullptr) return direct_[index];
  auto it = chunks_.find(index);
  if (it == chunks_.end()) return nullptr;
  remember(index, it->second.get());
  return it->second.get();
}

void FileData::remember(uint64_t index, std::byte* chunk) const {
  if (index >= direct_.size()) {
    const uint64_t bound = std::min<uint64_t>(kDirectChunks, 4 * chunks_.size() + 256);
    if (index >= bound) return;
    direct_.resize(
        size_t(std::min<uint64_t>(bound, std::max<uint64_t>(index + 1, 2 * direct_.size()))));
  }
  direct_[index] = chunk;
}

size_t FileData::read(uint64_t offset, size_t len, std::span<const iovec> dst) const {
  if (offset >= size_) return 0;
  len = size_t(std::min<uint64_t>({len, size_ - offset, iov_length(dst)}));
  IovWriter out(dst, len);
  size_t done = 0;
  while (done < len) {
    const uint64_t pos = offset + done;
    const size_t at = size_t(pos % kChunk);
    const size_t n = std::min<size_t>(kChunk - at, len - done);
    const std::byte* chunk = find(pos / kChunk);
    out.write(chunk != nullptr ? chunk + at : kZeros, n);
    done += n;
  }
  return len;
}

std::byte* FileData::chunk_for_write(uint64_t index, bool overwritten, int* error) {
  if (index < direct_.size() && direct_[index] != nullptr) return direct_[index];
  auto it = chunks_.lower_bound(index);
  if (it != chunks_.end() && it->first == index) {
    remember(index, it->second.get());
    return it->second.get();
  }
  if (!space_.reserve(kChunk)) {
    *error = ENOSPC;
    return nullptr;
  }
  Chunk chunk(overwritten ? new (std::nothrow) std::byte[kChunk]
                          : new (std::nothrow) std::byte[kChunk]());
  if (!chunk) {
    space_.release(kChunk);
    *error = ENOMEM;
    return nullptr;
  }
  std::byte* p = chunk.get();
  chunks_.emplace_hint(it, index, std::move(chunk));
  remember(index, p);
  return p;
}

int64_t FileData::write(uint64_t offset, std::span<const iovec> src) {
  const uint64_t len = iov_length(src);
  if (len == 0) return 0;
  if (offset > kMaxSize || len > kMaxSize - offset) return -EFBIG;
  IovReader in(src, len);
  uint64_t done = 0;
  int error = 0;
  while (done < len) {
    const uint64_t pos = offset + done;
    const size_t at = size_t(pos % kChunk);
    const size_t n = size_t(std::min<uint64_t>(kChunk - at, len - done));
    std::byte* chunk = chunk_for_write(pos / kChunk, n == kChunk, &error);
    if (chunk == nullptr) break;
    in.read(chunk + at, n);
    done += n;
  }
  if (done == 0) return -error;
  size_ = std::max(size_, offset + done);
  return int64_t(done);
}

void FileData::free_from(uint64_t first_index) {
  auto it = chunks_.lower_bound(first_index);
  const uint64_t n = uint64_t(std::distance(it, chunks_.end()));
  chunks_.erase(it, chunks_.end());
  space_.release(n * kChunk);
  if (first_index < direct_.size()) direct_.resize(size_t(first_index));
}

void FileData::truncate(uint64_t size) {
  if (size < size_) {
    free_from((size + kChunk - 1) / kChunk);
    if (size % kChunk != 0) {
      auto it = chunks_.find(size / kChunk);
      if (it != chunks_.end()) {
        std::memset(it->second.get() + size % kChunk, 0, kChunk - size % kChunk);
      }
    }
  }
  size_ = size;
}

int FileData::allocate(uint64_t first, uint64_t last) {
  const uint64_t present =
      uint64_t(std::distance(chunks_.lower_bound(first), chunks_.upper_bound(last)));
  const uint64_t missing = last - first + 1 - present;
  if (missing == 0) return 0;
  if (missing > space_.capacity() / kChunk || !space_.reserve(missing * kChunk)) return -ENOSPC;
  uint64_t left = missing;
  auto it = chunks_.lower_bound(first);
  for (uint64_t i = first; left > 0; ++i) {
    if (it != chunks_.end() && it->first == i) {
      ++it;
      continue;
    }
    Chunk chunk(new (std::nothrow) std::byte[kChunk]());
    if (!chunk) {
      // What was allocated stays (zeros, inside or past the end): harmless.
      space_.release(left * kChunk);
      return -ENOMEM;
    }
    chunks_.emplace_hint(it, i, std::move(chunk));
    --left;
  }
  return 0;
}

void FileData::zero(uint64_t offset, uint64_t end) {
  for (auto it = chunks_.lower_bound(offset / kChunk);
       it != chunks_.end() && it->first * kChunk < end; ++it) {
    const uint64_t start = it->first * kChunk;
    const uint64_t from = std::max(offset, start);
    const uint64_t to = std::min(end, start + kChunk);
    std::memset(it->second.get() + (from - start), 0, to - from);
  }
}

void FileData::punch(uint64_t offset, uint64_t end) {
  for (auto it = chunks_.lower_bound(offset / kChunk);
       it != chunks_.end() && it->first * kChunk < end;) {
    const uint64_t start = it->first * kChunk;
    if (offset <= start && start + kChunk <= end) {
      if (it->first < direct_.size()) direct_[it->first] = nullptr;
      it = chunks_.erase(it);
      space_.release(kChunk);
      continue;
    }
    const uint64_t from = std::max(offset, start);
    const uint64_t to = std::min(end, start + kChunk);
    std::memset(it->second.get() + (from - start), 0, to - from);
    ++it;
  }
}

int FileData::fallocate(uint32_t mode, uint64_t offset, uint64_t len) {
  if (len == 0) return -EINVAL;
  if (offset > kMaxSize || len > kMaxSize - offset) return -EFBIG;
  const uint64_t end = offset + len;
  const bool keep_size = mode & FALLOC_FL_KEEP_SIZE;
  switch (mode) {
    case 0:
    case FALLOC_FL_KEEP_SIZE:
    case FALLOC_FL_ZERO_RANGE:
    case FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE: {
      if (int e = allocate(offset / kChunk, (end - 1) / kChunk)) return e;
      if (mode & FALLOC_FL_ZERO_RANGE) zero(offset, end);
      if (!keep_size && end > size_) size_ = end;
      return 0;
    }
    case FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE:
      punch(offset, end);
      return 0;
    case FALLOC_FL_COLLAPSE_RANGE: {
      // As ext4: block-aligned, and the range must end before the end of file.
      if (offset % kChunk != 0 || len % kChunk != 0 || end >= size_) return -EINVAL;
      punch(offset, end);
      std::map<uint64_t, Chunk> moved;
      for (auto it = chunks_.lower_bound(end / kChunk); it != chunks_.end();) {
        auto node = chunks_.extract(it++);
        node.key() -= len / kChunk;
        moved.insert(std::move(node));
      }
      chunks_.merge(moved);
      direct_.clear();  // chunks moved to other indexes
      size_ -= len;
      return 0;
    }
    case FALLOC_FL_INSERT_RANGE: {
      if (offset % kChunk != 0 || len % kChunk != 0 || offset >= size_) return -EINVAL;
      if (len > kMaxSize - size_) return -EFBIG;
      if (!chunks_.empty() && chunks_.rbegin()->first + len / kChunk > kMaxSize / kChunk) {
        return -EFBIG;  // chunks allocated past the end would move past the largest size
      }
      std::map<uint64_t, Chunk> moved;
      for (auto it = chunks_.lower_bound(offset / kChunk); it != chunks_.end();) {
        auto node = chunks_.extract(it++);
        node.key() += len / kChunk;
        moved.insert(std::move(node));
      }
      chunks_.merge(moved);
      direct_.clear();  // chunks moved to other indexes
      size_ += len;
      return 0;
    }
    default:
      return -EOPNOTSUPP;
  }
}

int64_t FileData::seek(uint64_t offset, int whence) const {
  if (offset >= size_) return -ENXIO;
  auto it = chunks_.lower_bound(offset / kChunk);
  if (whence == SEEK_DATA) {
    if (it == chunks_.end()) return -ENXIO;
    const uint64_t pos = std::max(offset, it->first * kChunk);
    return pos < size_ ? int64_t(pos) : -ENXIO;
  }
  // SEEK_HOLE: the first missing chunk from here; the end of file is a hole.
  uint64_t index = offset / kChunk;
  while (it != chunks_.end() && it->first == index) {
    ++it;
    ++index;
  }
  return int64_t(std::min(std::max(offset, index * kChunk), size_));
}

int64_t FileData::copy(const FileData& from, uint64_t off_in, FileData& to, uint64_t off_out,
                       uint64_t len) {
  if (off_in >= from.size_ || len == 0) return 0;
  if (off_out >= kMaxSize) return -EFBIG;
  const uint64_t n = std::min({len, from.size_ - off_in, kMaxSize - off_out});

  // First allocate every destination chunk that will receive data, so that
  // the copy itself cannot fail half way (it may run backwards).
  std::vector<uint64_t> wanted;
  for (auto it = from.chunks_.lower_bound(off_in / kChunk);
       it != from.chunks_.end() && it->first * kChunk < off_in + n; ++it) {
    const uint64_t start = std::max(off_in, it->first * kChunk);
    const uint64_t end = std::min(off_in + n, it->first * kChunk + kChunk);
    const uint64_t first = (start - off_in + off_out) / kChunk;
    const uint64_t last = (end - 1 - off_in + off_out) / kChunk;
    for (uint64_t i = first; i <= last; ++i) {
      if (!to.chunks_.contains(i) && (wanted.empty() || wanted.back() != i)) wanted.push_back(i);
    }
  }
  std::sort(wanted.begin(), wanted.end());
  wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());
  if (!wanted.empty()) {
    if (!to.space_.reserve(wanted.size() * kChunk)) return -ENOSPC;
    for (size_t i = 0; i < wanted.size(); ++i) {
      Chunk chunk(new (std::nothrow) std::byte[kChunk]());
      if (!chunk) {
        to.space_.release((wanted.size() - i) * kChunk);
        return -ENOMEM;
      }
      to.chunks_.emplace(wanted[i], std::move(chunk));
    }
  }

  // Then copy piece by piece, a piece lying in one chunk on each side. When
  // the destination overlaps the source from above, go backwards (memmove).
  auto copy_piece = [&](uint64_t p, uint64_t m) {
    const uint64_t s = off_in + p, d = off_out + p;
    auto dst = to.chunks_.find(d / kChunk);
    // No destination chunk: the source was a hole when the chunks were
    // allocated (in the same file, a chunk allocated since reads as zeros
    // where it was not yet written), and the hole stays one.
    if (dst == to.chunks_.end()) return;
    auto src = from.chunks_.find(s / kChunk);
    if (src != from.chunks_.end()) {
      std::memmove(dst->second.get() + d % kChunk, src->second.get() + s % kChunk, m);
    } else {
      std::memset(dst->second.get() + d % kChunk, 0, m);
    }
  };
  const bool backward = &from == &to && off_out > off_in && off_out < off_in + n;
  if (backward) {
    for (uint64_t e = n; e > 0;) {
      const uint64_t m =
          std::min({e, (off_in + e - 1) % kChunk + 1, (off_out + e - 1) % kChunk + 1});
      copy_piece(e - m, m);
      e -= m;
    }
  } else {
    for (uint64_t p = 0; p < n;) {
      const uint64_t m =
          std::min({n - p, kChunk - (off_in + p) % kChunk, kChunk - (off_out + p) % kChunk});
      copy_piece(p, m);
      p += m;
    }
  }
  to.size_ = std::max(to.size_, off_out + n);
  return int64_t(n);
}

}  // namespace dpfs::memfs
