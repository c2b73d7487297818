#include "util/iov.h"

#include <algorithm>

namespace dpfs {
namespace {

// Walks `len` bytes of `iov` from the position (index, offset), calling
// fn(piece, n) for each contiguous piece, and leaves the position after them.
// REQUIRES: `len` bytes remain past the position.
template <typename Fn>
void walk(std::span<const iovec> iov, size_t& index, size_t& offset, size_t len, Fn&& fn) {
  size_t done = 0;
  while (done < len) {
    const iovec& v = iov[index];
    const size_t n = std::min(v.iov_len - offset, len - done);
    if (n != 0) fn(static_cast<char*>(v.iov_base) + offset, done, n);
    done += n;
    offset += n;
    if (offset == v.iov_len) {
      ++index;
      offset = 0;
    }
  }
}

}  // namespace

size_t iov_copy_in(std::span<const iovec> iov, const void* src, size_t len) {
  len = std::min(len, iov_length(iov));
  size_t index = 0, offset = 0;
  walk(iov, index, offset, len, [src](char* p, size_t at, size_t n) {
    std::memcpy(p, static_cast<const char*>(src) + at, n);
  });
  return len;
}

size_t iov_copy_out(std::span<const iovec> iov, void* dst, size_t len) {
  len = std::min(len, iov_length(iov));
  size_t index = 0, offset = 0;
  walk(iov, index, offset, len,
       [dst](char* p, size_t at, size_t n) { std::memcpy(static_cast<char*>(dst) + at, p, n); });
  return len;
}

IovReader::IovReader(std::span<const iovec> iov, size_t limit)
    : iov_(iov), remaining_(std::min(limit, iov_length(iov))) {}

bool IovReader::read(void* dst, size_t len) {
  if (len > remaining_) return false;
  walk(iov_, index_, offset_, len,
       [dst](char* p, size_t at, size_t n) { std::memcpy(static_cast<char*>(dst) + at, p, n); });
  remaining_ -= len;
  consumed_ += len;
  return true;
}

bool IovReader::skip(size_t len) {
  if (len > remaining_) return false;
  walk(iov_, index_, offset_, len, [](char*, size_t, size_t) {});
  remaining_ -= len;
  consumed_ += len;
  return true;
}

const char* IovReader::contiguous(size_t len) {
  if (len > remaining_) return nullptr;
  // Step over exhausted or empty buffers so the position is inside one.
  while (index_ < iov_.size() && offset_ == iov_[index_].iov_len) {
    ++index_;
    offset_ = 0;
  }
  if (len == 0) return "";
  if (index_ >= iov_.size() || iov_[index_].iov_len - offset_ < len) return nullptr;
  const char* p = static_cast<const char*>(iov_[index_].iov_base) + offset_;
  skip(len);
  return p;
}

bool IovReader::cstring(size_t max_len, std::string* scratch, std::string_view* out,
                        bool* too_long) {
  *too_long = false;
  const size_t window = std::min(remaining_, max_len + 1);
  // Fast path: the string and its NUL lie in the current buffer.
  while (index_ < iov_.size() && offset_ == iov_[index_].iov_len) {
    ++index_;
    offset_ = 0;
  }
  if (index_ < iov_.size()) {
    const char* p = static_cast<const char*>(iov_[index_].iov_base) + offset_;
    const size_t avail = std::min(window, iov_[index_].iov_len - offset_);
    if (const void* nul = std::memchr(p, 0, avail)) {
      const size_t len = static_cast<const char*>(nul) - p;
      *out = std::string_view(p, len);
      skip(len + 1);
      return true;
    }
  }
  // Slow path: the string spans buffers; gather it.
  scratch->clear();
  size_t index = index_, offset = offset_;
  bool found = false;
  walk(iov_, index, offset, window, [&](char* p, size_t, size_t n) {
    if (found) return;
    if (const void* nul = std::memchr(p, 0, n)) {
      scratch->append(p, static_cast<const char*>(nul) - p);
      found = true;
    } else {
      scratch->append(p, n);
    }
  });
  if (!found) {
    *too_long = remaining_ > max_len;
    return false;
  }
  *out = *scratch;
  skip(scratch->size() + 1);
  return true;
}

bool IovReader::take_iovecs(size_t len, std::vector<iovec>* out) {
  if (len > remaining_) return false;
  walk(iov_, index_, offset_, len, [out](char* p, size_t, size_t n) { out->push_back({p, n}); });
  remaining_ -= len;
  consumed_ += len;
  return true;
}

IovWriter::IovWriter(std::span<const iovec> iov, size_t limit)
    : iov_(iov), remaining_(std::min(limit, iov_length(iov))) {}

bool IovWriter::write(const void* src, size_t len) {
  if (len > remaining_) return false;
  walk(iov_, index_, offset_, len, [src](char* p, size_t at, size_t n) {
    std::memcpy(p, static_cast<const char*>(src) + at, n);
  });
  remaining_ -= len;
  written_ += len;
  return true;
}

bool IovWriter::skip(size_t len) {
  if (len > remaining_) return false;
  walk(iov_, index_, offset_, len, [](char*, size_t, size_t) {});
  remaining_ -= len;
  written_ += len;
  return true;
}

size_t IovWriter::peek_iovecs(size_t len, std::vector<iovec>* out) const {
  len = std::min(len, remaining_);
  size_t index = index_, offset = offset_;
  walk(iov_, index, offset, len, [out](char* p, size_t, size_t n) { out->push_back({p, n}); });
  return len;
}

}  // namespace dpfs
