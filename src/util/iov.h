// Readers and writers over scatter-gather lists.
//
// A request arrives as a list of readable buffers (a /dev/fuse read, the
// device-readable descriptors of a virtqueue chain) and its reply goes into a
// list of writable buffers. Neither list is contiguous in general, and both
// are tenant-controlled in size: every access here is bounds-checked and
// reports a short read or write instead of touching memory past the list.
//
// Not thread-safe; a reader or writer belongs to the request being handled.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dpfs {

// Total bytes described by an iovec list.
inline size_t iov_length(std::span<const iovec> iov) {
  size_t n = 0;
  for (const iovec& v : iov) n += v.iov_len;
  return n;
}

// Copies up to `len` bytes of `src` into `iov` from its start; returns bytes copied.
size_t iov_copy_in(std::span<const iovec> iov, const void* src, size_t len);
// Copies up to `len` bytes from the start of `iov` into `dst`; returns bytes copied.
size_t iov_copy_out(std::span<const iovec> iov, void* dst, size_t len);

// Sequential reader over readable buffers. `limit` caps how far it may read
// (the length the FUSE header declares), whatever the buffers hold.
class IovReader {
 public:
  IovReader() = default;
  IovReader(std::span<const iovec> iov, size_t limit);

  size_t remaining() const { return remaining_; }
  size_t consumed() const { return consumed_; }

  // Copies exactly `len` bytes; false (and nothing consumed) if fewer remain.
  bool read(void* dst, size_t len);
  template <typename T>
  bool read(T* obj) {
    return read(obj, sizeof(T));
  }
  // Skips `len` bytes; false if fewer remain.
  bool skip(size_t len);
  // Returns a pointer to the next `len` bytes when they are contiguous in one
  // buffer (the common case), consuming them; nullptr otherwise.
  const char* contiguous(size_t len);
  // Reads a NUL-terminated string of at most `max_len` bytes (NUL not
  // counted) into `out`, consuming it and its NUL. The view points into the
  // buffers when the string is contiguous, else into `scratch`. Returns false
  // if no NUL comes within max_len + 1 bytes of what remains; `*too_long` then
  // says whether bytes remained past max_len (a name too long) or the
  // request simply ended (malformed).
  bool cstring(size_t max_len, std::string* scratch, std::string_view* out, bool* too_long);
  // Appends the next `len` bytes as iovecs to `out` without copying
  // (a WRITE payload); false if fewer remain.
  bool take_iovecs(size_t len, std::vector<iovec>* out);
  // Shortens what may still be read to `len` bytes (extensions at the tail).
  void truncate(size_t len) {
    if (len < remaining_) remaining_ = len;
  }

 private:
  std::span<const iovec> iov_;
  size_t index_ = 0;   // current iovec
  size_t offset_ = 0;  // offset inside it
  size_t remaining_ = 0;
  size_t consumed_ = 0;
};

// Sequential writer over writable buffers.
class IovWriter {
 public:
  IovWriter() = default;
  explicit IovWriter(std::span<const iovec> iov) : IovWriter(iov, iov_length(iov)) {}
  IovWriter(std::span<const iovec> iov, size_t limit);

  size_t remaining() const { return remaining_; }
  size_t written() const { return written_; }

  // Copies exactly `len` bytes; false (and nothing written) if they do not fit.
  bool write(const void* src, size_t len);
  template <typename T>
  bool write(const T& obj) {
    return write(&obj, sizeof(T));
  }
  // Advances over `len` bytes that were filled through take_iovecs.
  bool skip(size_t len);
  // Appends iovecs covering the next `len` bytes (or fewer, if fewer remain)
  // to `out` without consuming them; returns the length covered.
  size_t peek_iovecs(size_t len, std::vector<iovec>* out) const;

 private:
  std::span<const iovec> iov_;
  size_t index_ = 0;
  size_t offset_ = 0;
  size_t remaining_ = 0;
  size_t written_ = 0;
};

}  // namespace dpfs
