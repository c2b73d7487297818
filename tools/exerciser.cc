// dpfs-exerciser: an fsx-style file exerciser.
//
// Keeps the expected contents of a file in memory and applies random
// operations to both the real file and the model: reads (every byte checked),
// writes, writes past EOF that leave holes, truncates up and down, the
// fallocate modes the file system supports, copy_file_range inside the file
// and to and from a second file (FILE.copy), reads and writes through
// MAP_SHARED mappings, fsync, and close/reopen with a full verification.
// The first difference prints the last operations, the bad offset, expected
// and actual bytes, and exits 1. The run is a function of the seed (and of
// which operations the file system supports).
//
// Written data never contains a zero byte, so a hole that should not be
// there (or data where a hole should be) shows.
#include <fcntl.h>
#include <fmt/core.h>
#include <getopt.h>
#include <linux/falloc.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "util/size.h"

namespace {

constexpr uint64_t kDefaultOps = 10000;
constexpr uint64_t kDefaultMaxLen = 256ull * 1024;
constexpr uint64_t kDefaultMaxOpLen = 64ull * 1024;
constexpr size_t kLogSize = 50;
constexpr uint64_t kProgressEvery = 10000;

struct Options {
  uint64_t ops = kDefaultOps;
  uint64_t seed = 1;
  uint64_t max_len = kDefaultMaxLen;
  uint64_t max_op_len = kDefaultMaxOpLen;
  bool mmap = true;
  bool fallocate = true;
  bool copy_range = true;
  bool verbose = false;
  std::string path;
};

// xoshiro256** seeded by splitmix64: the same sequence on every platform
// (the std:: distributions are not).
class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (uint64_t& s : s_) {
      seed += 0x9e3779b97f4a7c15ull;
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      s = z ^ (z >> 31);
    }
  }
  uint64_t next() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  // Uniform in [0, n); 0 when n is 0.
  uint64_t below(uint64_t n) { return n == 0 ? 0 : next() % n; }
  // Uniform in [lo, hi].
  uint64_t between(uint64_t lo, uint64_t hi) { return lo + below(hi - lo + 1); }
  bool chance(uint64_t one_in) { return below(one_in) == 0; }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::array<uint64_t, 4> s_{};
};

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    reset(std::exchange(other.fd_, -1));
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  // Closes the descriptor; returns close(2)'s result (0 if there was none).
  int reset(int fd = -1) {
    const int r = fd_ >= 0 ? ::close(fd_) : 0;
    fd_ = fd;
    return r;
  }

 private:
  int fd_ = -1;
};

class Mapping {
 public:
  Mapping(int fd, uint64_t offset, size_t len, int prot) : len_(len) {
    void* p = ::mmap(nullptr, len, prot, MAP_SHARED, fd, static_cast<off_t>(offset));
    addr_ = p == MAP_FAILED ? nullptr : static_cast<uint8_t*>(p);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (addr_ != nullptr) ::munmap(addr_, len_);
  }
  uint8_t* data() const { return addr_; }
  explicit operator bool() const { return addr_ != nullptr; }

 private:
  uint8_t* addr_ = nullptr;
  size_t len_ = 0;
};

enum class OpKind {
  kRead,
  kWrite,
  kHoleWrite,
  kTruncate,
  kFallocate,
  kCopySame,
  kCopyOut,
  kCopyIn,
  kMapRead,
  kMapWrite,
  kFsync,
  kReopen,
  kCount,
};

constexpr std::array<const char*, static_cast<size_t>(OpKind::kCount)> kOpNames = {
    "read",     "write",   "holewrite", "truncate", "fallocate", "copy_same",
    "copy_out", "copy_in", "mapread",   "mapwrite", "fsync",     "reopen",
};

// Relative frequency of each operation, in OpKind order.
constexpr std::array<unsigned, static_cast<size_t>(OpKind::kCount)> kOpWeights = {
    20, 20, 4, 6, 10, 4, 3, 3, 8, 8, 2, 1,
};

const char* op_name(OpKind kind) { return kOpNames[static_cast<size_t>(kind)]; }

struct FallocMode {
  int mode;
  const char* name;
};

constexpr std::array<FallocMode, 7> kFallocModes = {{
    {0, "alloc"},
    {FALLOC_FL_KEEP_SIZE, "keep_size"},
    {FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, "punch_hole"},
    {FALLOC_FL_ZERO_RANGE, "zero_range"},
    {FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, "zero_range|keep_size"},
    {FALLOC_FL_COLLAPSE_RANGE, "collapse_range"},
    {FALLOC_FL_INSERT_RANGE, "insert_range"},
}};

const char* falloc_name(int mode) {
  for (const FallocMode& m : kFallocModes) {
    if (m.mode == mode) return m.name;
  }
  return "?";
}

// One operation as it was done, for the log printed on failure.
struct LogEntry {
  uint64_t n = 0;
  OpKind kind = OpKind::kRead;
  uint64_t off = 0;
  uint64_t len = 0;
  uint64_t aux = 0;  // copy destination, new size, or fsync kind
  int mode = 0;      // fallocate mode
  uint64_t size_before = 0;
  uint64_t size_after = 0;
  const char* note = "";
};

// A file and what it must contain.
struct ModelFile {
  std::string path;
  Fd fd;
  std::vector<uint8_t> data;  // the expected contents; its size is the file size
  // The operation that last set each byte (0: the initial contents).
  std::vector<uint64_t> changed_by;

  uint64_t size() const { return data.size(); }
  void resize(uint64_t size, uint64_t op) {
    const uint64_t old = data.size();
    data.resize(size, 0);
    changed_by.resize(size, op);
    if (size > old) std::fill(changed_by.begin() + old, changed_by.end(), op);
  }
  void set(uint64_t off, const uint8_t* src, uint64_t len, uint64_t op) {
    if (len == 0) return;
    if (off + len > size()) resize(off + len, op);
    std::memcpy(data.data() + off, src, len);
    std::fill_n(changed_by.begin() + off, len, op);
  }
  void zero(uint64_t off, uint64_t len, uint64_t op) {
    if (off >= size()) return;
    len = std::min(len, size() - off);
    std::fill_n(data.begin() + off, len, 0);
    std::fill_n(changed_by.begin() + off, len, op);
  }
  void erase(uint64_t off, uint64_t len) {
    data.erase(data.begin() + off, data.begin() + off + len);
    changed_by.erase(changed_by.begin() + off, changed_by.begin() + off + len);
  }
  void insert(uint64_t off, uint64_t len, uint64_t op) {
    data.insert(data.begin() + off, len, 0);
    changed_by.insert(changed_by.begin() + off, len, op);
  }
};

class Exerciser;
Exerciser* g_exerciser = nullptr;  // for the SIGBUS/SIGSEGV report

class Exerciser {
 public:
  explicit Exerciser(Options options)
      : opt_(std::move(options)), rng_(opt_.seed), page_(sysconf(_SC_PAGESIZE)) {
    main_.path = opt_.path;
    copy_.path = opt_.path + ".copy";
    buf_.resize(opt_.max_len + page_);
    pattern_.resize(opt_.max_len);
  }

  int run();
  [[noreturn]] void fail(const std::string& what);

 private:
  void open_files(bool truncate);
  void probe();
  void do_op(OpKind kind);

  void op_read();
  void op_write(bool past_eof);
  void op_truncate();
  void op_fallocate();
  void op_copy(ModelFile& src, ModelFile& dst, OpKind kind);
  void op_map_read();
  void op_map_write();
  void op_fsync();
  void op_reopen();

  // Random offset and length inside [0, limit), length at most max_op_len;
  // sometimes page-aligned.
  std::pair<uint64_t, uint64_t> range(uint64_t limit);
  // Fills pattern_[0, len) with data for `off` that has no zero byte.
  const uint8_t* make_pattern(uint64_t off, uint64_t len);

  void pwrite_all(ModelFile& f, const uint8_t* src, uint64_t len, uint64_t off);
  // Reads [off, off+len) and checks it against the model, including the
  // short count at EOF.
  void read_and_verify(ModelFile& f, uint64_t off, uint64_t len, const char* how);
  void verify_bytes(const ModelFile& f, uint64_t off, const uint8_t* actual, uint64_t len,
                    const char* how);
  void verify_all(ModelFile& f);
  void check_size(ModelFile& f);
  void set_size(ModelFile& f, uint64_t size, const char* how);

  LogEntry& log(OpKind kind, uint64_t off = 0, uint64_t len = 0);
  void print_log() const;
  [[noreturn]] void fail_errno(const std::string& what);

  Options opt_;
  Rng rng_;
  const uint64_t page_;
  uint64_t block_ = 4096;  // alignment COLLAPSE/INSERT need
  ModelFile main_;
  ModelFile copy_;
  std::vector<uint8_t> buf_;
  std::vector<uint8_t> pattern_;
  std::vector<int> falloc_modes_;
  std::array<uint64_t, static_cast<size_t>(OpKind::kCount)> counts_{};
  uint64_t n_ = 0;  // the operation being done, from 1
  std::array<LogEntry, kLogSize> log_{};
  uint64_t logged_ = 0;
};

LogEntry& Exerciser::log(OpKind kind, uint64_t off, uint64_t len) {
  LogEntry& e = log_[logged_++ % kLogSize];
  e = LogEntry{};
  e.n = n_;
  e.kind = kind;
  e.off = off;
  e.len = len;
  e.size_before = e.size_after = main_.size();
  return e;
}

void Exerciser::print_log() const {
  const uint64_t first = logged_ > kLogSize ? logged_ - kLogSize : 0;
  fmt::print(stderr, "last {} operations (offsets and lengths in hex):\n", logged_ - first);
  for (uint64_t i = first; i < logged_; ++i) {
    const LogEntry& e = log_[i % kLogSize];
    std::string detail;
    switch (e.kind) {
      case OpKind::kTruncate:
        detail = fmt::format("to {:#x}", e.aux);
        break;
      case OpKind::kFallocate:
        detail = fmt::format("{} off {:#x} len {:#x}", falloc_name(e.mode), e.off, e.len);
        break;
      case OpKind::kCopySame:
      case OpKind::kCopyOut:
      case OpKind::kCopyIn:
        detail = fmt::format("from {:#x} to {:#x} len {:#x}", e.off, e.aux, e.len);
        break;
      case OpKind::kFsync:
        detail = e.aux != 0 ? "fdatasync" : "fsync";
        break;
      case OpKind::kReopen:
        break;
      default:
        detail = fmt::format("off {:#x} len {:#x} (end {:#x})", e.off, e.len, e.off + e.len);
        break;
    }
    fmt::print(stderr, "  #{:<8} {:<10} {:<44} size {:#x} -> {:#x}{}{}\n", e.n, op_name(e.kind),
               detail, e.size_before, e.size_after, *e.note ? "  " : "", e.note);
  }
}

void Exerciser::fail(const std::string& what) {
  std::fflush(stdout);
  fmt::print(stderr, "\nFAILURE at operation #{} (seed {}): {}\n", n_, opt_.seed, what);
  print_log();
  fmt::print(stderr, "{} ops, 1 failures\n", n_);
  std::exit(1);
}

void Exerciser::fail_errno(const std::string& what) {
  fail(fmt::format("{}: {}", what, std::strerror(errno)));
}

std::pair<uint64_t, uint64_t> Exerciser::range(uint64_t limit) {
  if (limit == 0) return {0, 0};
  uint64_t off = rng_.below(limit);
  uint64_t len = 1 + rng_.below(std::min(opt_.max_op_len, limit - off));
  if (rng_.chance(4)) {
    // Page-aligned ranges take the kernel's whole-page paths.
    const uint64_t aligned_off = off / page_ * page_;
    const uint64_t aligned_len = std::max<uint64_t>(len / page_, 1) * page_;
    if (aligned_off + aligned_len <= limit && aligned_len <= opt_.max_op_len) {
      off = aligned_off;
      len = aligned_len;
    }
  }
  return {off, len};
}

const uint8_t* Exerciser::make_pattern(uint64_t off, uint64_t len) {
  for (uint64_t i = 0; i < len; ++i) {
    pattern_[i] = static_cast<uint8_t>(((off + i) * 7 + n_ * 13) % 255 + 1);
  }
  return pattern_.data();
}

void Exerciser::pwrite_all(ModelFile& f, const uint8_t* src, uint64_t len, uint64_t off) {
  uint64_t done = 0;
  while (done < len) {
    const ssize_t r = ::pwrite(f.fd.get(), src + done, len - done, off + done);
    if (r < 0) fail_errno(fmt::format("pwrite {} off {:#x} len {:#x}", f.path, off, len));
    if (r == 0) fail(fmt::format("pwrite {} off {:#x}: wrote nothing", f.path, off + done));
    done += static_cast<uint64_t>(r);
  }
}

void Exerciser::verify_bytes(const ModelFile& f, uint64_t off, const uint8_t* actual, uint64_t len,
                             const char* how) {
  if (len == 0 || std::memcmp(f.data.data() + off, actual, len) == 0) return;
  uint64_t bad = 0;
  while (f.data[off + bad] == actual[bad]) ++bad;
  const uint64_t at = off + bad;
  std::string exp, act;
  const uint64_t from = bad >= 8 ? bad - 8 : 0;
  const uint64_t to = std::min(len, bad + 24);
  for (uint64_t i = from; i < to; ++i) {
    exp += fmt::format("{}{:02x}", i == bad ? "[" : " ", f.data[off + i]);
    act += fmt::format("{}{:02x}", i == bad ? "[" : " ", actual[i]);
  }
  uint64_t bad_count = 0;
  for (uint64_t i = bad; i < len; ++i) bad_count += f.data[off + i] != actual[i];
  fail(
      fmt::format("{} of {} [{:#x}, {:#x}): first bad byte at offset {:#x} ({}): expected {:#04x}, "
                  "got {:#04x}; {} bad bytes in the range; that byte was last changed by op #{}\n"
                  "  from offset {:#x}:\n  expected {}\n  actual   {}",
                  how, f.path, off, off + len, at, at, f.data[at], actual[bad], bad_count,
                  f.changed_by[at], off + from, exp, act));
}

void Exerciser::read_and_verify(ModelFile& f, uint64_t off, uint64_t len, const char* how) {
  const uint64_t expect = off < f.size() ? std::min(len, f.size() - off) : 0;
  uint64_t done = 0;
  while (done < len) {
    const ssize_t r = ::pread(f.fd.get(), buf_.data() + done, len - done, off + done);
    if (r < 0) fail_errno(fmt::format("{}: pread {} off {:#x} len {:#x}", how, f.path, off, len));
    if (r == 0) break;
    done += static_cast<uint64_t>(r);
  }
  if (done != expect) {
    fail(
        fmt::format("{}: pread {} off {:#x} len {:#x} returned {:#x} bytes, expected {:#x} "
                    "(file size {:#x})",
                    how, f.path, off, len, done, expect, f.size()));
  }
  verify_bytes(f, off, buf_.data(), done, how);
}

void Exerciser::verify_all(ModelFile& f) {
  check_size(f);
  for (uint64_t off = 0; off < f.size(); off += opt_.max_len) {
    read_and_verify(f, off, std::min(opt_.max_len, f.size() - off), "full verification");
  }
  read_and_verify(f, f.size(), 1, "read at EOF");
}

void Exerciser::check_size(ModelFile& f) {
  struct stat st {};
  if (::fstat(f.fd.get(), &st) != 0) fail_errno("fstat " + f.path);
  if (static_cast<uint64_t>(st.st_size) != f.size()) {
    fail(fmt::format("{} has size {:#x}, expected {:#x}", f.path, st.st_size, f.size()));
  }
}

void Exerciser::set_size(ModelFile& f, uint64_t size, const char* how) {
  if (::ftruncate(f.fd.get(), static_cast<off_t>(size)) != 0) {
    fail_errno(fmt::format("{}: ftruncate {} to {:#x}", how, f.path, size));
  }
  f.resize(size, n_);
}

void Exerciser::op_read() {
  // Mostly inside the file, sometimes across or past EOF.
  const uint64_t limit = rng_.chance(10) ? opt_.max_len : std::max<uint64_t>(main_.size(), 1);
  auto [off, len] = range(limit);
  log(OpKind::kRead, off, len);
  read_and_verify(main_, off, len, "read");
}

void Exerciser::op_write(bool past_eof) {
  uint64_t off, len;
  if (past_eof && main_.size() + 1 < opt_.max_len) {
    // Leave a hole of at least a byte between EOF and the new data.
    off = rng_.between(main_.size() + 1, opt_.max_len - 1);
    len = 1 + rng_.below(std::min(opt_.max_op_len, opt_.max_len - off));
  } else {
    std::tie(off, len) = range(opt_.max_len);
  }
  LogEntry& e = log(past_eof ? OpKind::kHoleWrite : OpKind::kWrite, off, len);
  const uint8_t* src = make_pattern(off, len);
  pwrite_all(main_, src, len, off);
  main_.set(off, src, len, n_);
  e.size_after = main_.size();
}

void Exerciser::op_truncate() {
  uint64_t size = rng_.below(opt_.max_len + 1);
  if (rng_.chance(4)) size = size / page_ * page_;
  LogEntry& e = log(OpKind::kTruncate);
  e.aux = size;
  set_size(main_, size, "truncate");
  e.size_after = size;
}

void Exerciser::op_fallocate() {
  if (falloc_modes_.empty()) return op_write(false);
  const int mode = falloc_modes_[rng_.below(falloc_modes_.size())];
  const uint64_t size = main_.size();
  uint64_t off, len;
  if (mode == FALLOC_FL_COLLAPSE_RANGE || mode == FALLOC_FL_INSERT_RANGE) {
    // Both take whole blocks. COLLAPSE needs off + len < size; INSERT needs
    // off < size and room for the file to grow by len.
    const uint64_t max_blocks = std::max<uint64_t>(opt_.max_op_len / block_, 1);
    uint64_t off_blocks, len_blocks;
    if (mode == FALLOC_FL_COLLAPSE_RANGE) {
      const uint64_t nb = size == 0 ? 0 : (size - 1) / block_;
      if (nb < 1) return op_write(false);
      off_blocks = rng_.below(nb);
      len_blocks = 1 + rng_.below(std::min(nb - off_blocks, max_blocks));
    } else {
      const uint64_t room = (opt_.max_len - size) / block_;
      if (size == 0 || room < 1) return op_write(false);
      off_blocks = rng_.below((size - 1) / block_ + 1);
      len_blocks = 1 + rng_.below(std::min(room, max_blocks));
    }
    off = off_blocks * block_;
    len = len_blocks * block_;
  } else {
    std::tie(off, len) = range(opt_.max_len);
  }
  LogEntry& e = log(OpKind::kFallocate, off, len);
  e.mode = mode;
  if (::fallocate(main_.fd.get(), mode, static_cast<off_t>(off), static_cast<off_t>(len)) != 0) {
    fail_errno(fmt::format("fallocate {} off {:#x} len {:#x}", falloc_name(mode), off, len));
  }
  const bool keep_size = (mode & FALLOC_FL_KEEP_SIZE) != 0;
  if (mode == FALLOC_FL_COLLAPSE_RANGE) {
    main_.erase(off, len);
  } else if (mode == FALLOC_FL_INSERT_RANGE) {
    main_.insert(off, len, n_);
  } else {
    if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) main_.zero(off, len, n_);
    if (!keep_size && off + len > size) main_.resize(off + len, n_);
  }
  e.size_after = main_.size();
}

void Exerciser::op_copy(ModelFile& src, ModelFile& dst, OpKind kind) {
  if (src.size() == 0) return op_write(false);
  const uint64_t src_off = rng_.below(src.size());
  uint64_t len = 1 + rng_.below(std::min(opt_.max_op_len, src.size() - src_off));
  if (len > opt_.max_len / 2) len = opt_.max_len / 2;
  if (len == 0) return op_write(false);
  // Same file: the ranges may not overlap (EINVAL). A few tries, then give up.
  uint64_t dst_off = 0;
  bool found = false;
  for (int tries = 0; tries < 8 && !found; ++tries) {
    dst_off = rng_.below(opt_.max_len - len + 1);
    found = &src != &dst || dst_off + len <= src_off || src_off + len <= dst_off;
  }
  if (!found) return op_write(false);
  LogEntry& e = log(kind, src_off, len);
  e.aux = dst_off;
  std::vector<uint8_t>& expect = pattern_;  // copy first: dst may be src
  std::memcpy(expect.data(), src.data.data() + src_off, len);

  loff_t in = static_cast<loff_t>(src_off), out = static_cast<loff_t>(dst_off);
  uint64_t done = 0;
  while (done < len) {
    const ssize_t r = ::copy_file_range(src.fd.get(), &in, dst.fd.get(), &out, len - done, 0);
    if (r < 0) {
      fail_errno(fmt::format("copy_file_range {} {:#x} -> {} {:#x} len {:#x}", src.path, src_off,
                             dst.path, dst_off, len));
    }
    if (r == 0) {
      fail(
          fmt::format("copy_file_range {} {:#x} -> {} {:#x} len {:#x}: stopped after {:#x} "
                      "bytes, inside the source file (size {:#x})",
                      src.path, src_off, dst.path, dst_off, len, done, src.size()));
    }
    done += static_cast<uint64_t>(r);
  }
  if (static_cast<uint64_t>(in) != src_off + len || static_cast<uint64_t>(out) != dst_off + len) {
    fail(fmt::format("copy_file_range left offsets at {:#x} and {:#x}, expected {:#x} and {:#x}",
                     in, out, src_off + len, dst_off + len));
  }
  dst.set(dst_off, expect.data(), len, n_);
  e.size_after = main_.size();
  // The second file is otherwise read only at reopen: check what landed now.
  if (&dst == &copy_) read_and_verify(copy_, dst_off, len, "read after copy");
}

void Exerciser::op_map_read() {
  if (main_.size() == 0) return op_read();
  auto [off, len] = range(main_.size());
  log(OpKind::kMapRead, off, len);
  const uint64_t map_off = off / page_ * page_;
  const uint64_t map_len = off + len - map_off;
  Mapping m(main_.fd.get(), map_off, map_len, PROT_READ);
  if (!m) fail_errno(fmt::format("mmap off {:#x} len {:#x}", map_off, map_len));
  verify_bytes(main_, off, m.data() + (off - map_off), len, "mapped read");
  // POSIX: the rest of the page holding EOF reads as zeros.
  if (off + len == main_.size() && main_.size() % page_ != 0) {
    const uint8_t* tail = m.data() + map_len;
    const uint64_t tail_len = page_ - main_.size() % page_;
    for (uint64_t i = 0; i < tail_len; ++i) {
      if (tail[i] != 0) {
        fail(
            fmt::format("mapped read: byte {:#x} past EOF ({:#x}) in the last page is {:#04x}, "
                        "expected 0",
                        main_.size() + i, main_.size(), tail[i]));
      }
    }
  }
}

void Exerciser::op_map_write() {
  auto [off, len] = range(opt_.max_len);
  LogEntry& e = log(OpKind::kMapWrite, off, len);
  // A mapping cannot grow the file: extend it first, as fsx does.
  if (off + len > main_.size()) {
    set_size(main_, off + len, "extend for mapped write");
    e.note = "extended by ftruncate first";
  }
  const uint64_t map_off = off / page_ * page_;
  const uint64_t map_len = off + len - map_off;
  {
    Mapping m(main_.fd.get(), map_off, map_len, PROT_READ | PROT_WRITE);
    if (!m) fail_errno(fmt::format("mmap off {:#x} len {:#x}", map_off, map_len));
    const uint8_t* src = make_pattern(off, len);
    std::memcpy(m.data() + (off - map_off), src, len);
    if (::msync(m.data(), map_len, MS_SYNC) != 0) fail_errno("msync");
    main_.set(off, src, len, n_);
  }
  e.size_after = main_.size();
  read_and_verify(main_, off, len, "read after mapped write");
}

void Exerciser::op_fsync() {
  const bool data_only = rng_.chance(2);
  log(OpKind::kFsync).aux = data_only;
  const int r = data_only ? ::fdatasync(main_.fd.get()) : ::fsync(main_.fd.get());
  if (r != 0) fail_errno(data_only ? "fdatasync" : "fsync");
}

void Exerciser::op_reopen() {
  log(OpKind::kReopen);
  open_files(false);
  verify_all(main_);
  verify_all(copy_);
}

void Exerciser::open_files(bool truncate) {
  for (ModelFile* f : {&main_, &copy_}) {
    if (f->fd.reset() != 0) fail_errno("close " + f->path);
    const int flags = O_RDWR | O_CREAT | (truncate ? O_TRUNC : 0);
    const int fd = ::open(f->path.c_str(), flags, 0644);
    if (fd < 0) fail_errno("open " + f->path);
    f->fd.reset(fd);
  }
}

// Finds out which optional operations the file system supports, on the
// files themselves, before the model starts.
void Exerciser::probe() {
  struct stat st {};
  if (::fstat(main_.fd.get(), &st) != 0) fail_errno("fstat " + main_.path);
  block_ = std::max<uint64_t>(st.st_blksize, 512);
  const int fd = main_.fd.get();
  auto reset = [&](uint64_t size) {
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0) fail_errno("probe: ftruncate");
  };

  if (opt_.fallocate) {
    std::string on, off;
    for (const FallocMode& m : kFallocModes) {
      reset(4 * block_);
      const uint64_t at = m.mode == FALLOC_FL_KEEP_SIZE ? 4 * block_ : block_;
      if (::fallocate(fd, m.mode, static_cast<off_t>(at), static_cast<off_t>(block_)) == 0) {
        falloc_modes_.push_back(m.mode);
        on += fmt::format(" {}", m.name);
      } else {
        off += fmt::format(" {} ({})", m.name, std::strerror(errno));
      }
    }
    fmt::print(stderr, "fallocate modes enabled:{}\n", on.empty() ? " none" : on);
    if (!off.empty()) fmt::print(stderr, "fallocate modes disabled (not supported):{}\n", off);
    if (falloc_modes_.empty()) opt_.fallocate = false;
  } else {
    fmt::print(stderr, "fallocate disabled (--no-fallocate)\n");
  }

  if (opt_.copy_range) {
    reset(0);
    std::vector<uint8_t> data(block_, 0x5a);
    if (::pwrite(fd, data.data(), data.size(), 0) != static_cast<ssize_t>(data.size())) {
      fail_errno("probe: pwrite");
    }
    loff_t in = 0, out = 0;
    if (::copy_file_range(fd, &in, copy_.fd.get(), &out, block_, 0) < 0) {
      fmt::print(stderr, "copy_file_range disabled (not supported): {}\n", std::strerror(errno));
      opt_.copy_range = false;
    }
    if (::ftruncate(copy_.fd.get(), 0) != 0) fail_errno("probe: ftruncate");
  } else {
    fmt::print(stderr, "copy_file_range disabled (--no-copy-range)\n");
  }

  if (opt_.mmap) {
    reset(page_);
    Mapping m(fd, 0, page_, PROT_READ | PROT_WRITE);
    if (!m) {
      fmt::print(stderr, "mmap disabled (not supported): {}\n", std::strerror(errno));
      opt_.mmap = false;
    }
  } else {
    fmt::print(stderr, "mmap disabled (--no-mmap)\n");
  }
  reset(0);
}

void Exerciser::do_op(OpKind kind) {
  switch (kind) {
    case OpKind::kRead:
      return op_read();
    case OpKind::kWrite:
      return op_write(false);
    case OpKind::kHoleWrite:
      return op_write(true);
    case OpKind::kTruncate:
      return op_truncate();
    case OpKind::kFallocate:
      return op_fallocate();
    case OpKind::kCopySame:
      return op_copy(main_, main_, kind);
    case OpKind::kCopyOut:
      return op_copy(main_, copy_, kind);
    case OpKind::kCopyIn:
      return op_copy(copy_, main_, kind);
    case OpKind::kMapRead:
      return op_map_read();
    case OpKind::kMapWrite:
      return op_map_write();
    case OpKind::kFsync:
      return op_fsync();
    case OpKind::kReopen:
      return op_reopen();
    case OpKind::kCount:
      break;
  }
}

int Exerciser::run() {
  open_files(true);
  probe();

  std::array<unsigned, static_cast<size_t>(OpKind::kCount)> weights = kOpWeights;
  auto disable = [&](OpKind k) { weights[static_cast<size_t>(k)] = 0; };
  if (!opt_.fallocate) disable(OpKind::kFallocate);
  if (!opt_.copy_range) {
    disable(OpKind::kCopySame);
    disable(OpKind::kCopyOut);
    disable(OpKind::kCopyIn);
  }
  if (!opt_.mmap) {
    disable(OpKind::kMapRead);
    disable(OpKind::kMapWrite);
  }
  unsigned total_weight = 0;
  for (unsigned w : weights) total_weight += w;

  // Something to copy in from.
  if (opt_.copy_range) {
    const uint64_t len = opt_.max_len / 2;
    pwrite_all(copy_, make_pattern(0, len), len, 0);
    copy_.set(0, pattern_.data(), len, 0);
  }

  fmt::print(stderr, "{}: {} ops, seed {}, max file length {:#x}, max op length {:#x}\n",
             main_.path, opt_.ops, opt_.seed, opt_.max_len, opt_.max_op_len);
  const auto start = std::chrono::steady_clock::now();
  for (n_ = 1; n_ <= opt_.ops; ++n_) {
    uint64_t pick = rng_.below(total_weight);
    size_t k = 0;
    while (pick >= weights[k]) pick -= weights[k++];
    const OpKind kind = static_cast<OpKind>(k);
    do_op(kind);
    ++counts_[k];
    if (opt_.verbose) {
      const LogEntry& e = log_[(logged_ - 1) % kLogSize];
      fmt::print(stderr, "#{} {} off {:#x} len {:#x} aux {:#x} size {:#x}\n", e.n, op_name(e.kind),
                 e.off, e.len, e.aux, e.size_after);
    }
    check_size(main_);
    if (n_ % kProgressEvery == 0) {
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      fmt::print(stderr, "{} ops done, file size {:#x}, {:.1f} s\n", n_, main_.size(), secs);
    }
  }
  n_ = opt_.ops;
  open_files(false);
  verify_all(main_);
  if (opt_.copy_range) verify_all(copy_);

  std::string summary;
  for (size_t k = 0; k < counts_.size(); ++k) {
    if (counts_[k] != 0) summary += fmt::format(" {} {}", kOpNames[k], counts_[k]);
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  fmt::print(stderr, "done in {:.1f} s:{}\n", secs, summary);
  std::fflush(stderr);
  fmt::print("{} ops, 0 failures\n", opt_.ops);
  return 0;
}

// A mapped access past EOF (a file system that lost the size) ends here.
void on_fault(int sig) {
  if (g_exerciser != nullptr) {
    g_exerciser->fail(fmt::format("signal {} ({}) during a mapped access", sig, strsignal(sig)));
  }
  std::_Exit(1);
}

void usage(const char* argv0) {
  fmt::print(stderr,
             "usage: {} [-N ops] [-S seed] [-l maxlen] [-o maxoplen] [-v] [--no-mmap]\n"
             "       [--no-fallocate] [--no-copy-range] FILE\n"
             "  -N ops       operations to do (default {})\n"
             "  -S seed      random seed (default 1)\n"
             "  -l maxlen    largest file size (default {}; K, M, G suffixes)\n"
             "  -o maxoplen  largest length of one operation (default {})\n"
             "  -v           print every operation\n"
             "Uses FILE and FILE.copy, which are truncated first.\n",
             argv0, kDefaultOps, kDefaultMaxLen, kDefaultMaxOpLen);
}

// A number, optionally with a K, M or G suffix (powers of 1024).
bool parse_u64(const char* s, uint64_t* out) {
  return dpfs::util::parse_size(s, out) == dpfs::util::SizeParse::kOk;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  enum { kNoMmap = 256, kNoFallocate, kNoCopyRange };
  const option long_options[] = {
      {"no-mmap", no_argument, nullptr, kNoMmap},
      {"no-fallocate", no_argument, nullptr, kNoFallocate},
      {"no-copy-range", no_argument, nullptr, kNoCopyRange},
      {"help", no_argument, nullptr, 'h'},
      {nullptr, 0, nullptr, 0},
  };
  int c;
  while ((c = getopt_long(argc, argv, "N:S:l:o:vh", long_options, nullptr)) != -1) {
    bool ok = true;
    switch (c) {
      case 'N':
        ok = parse_u64(optarg, &opt.ops);
        break;
      case 'S':
        ok = parse_u64(optarg, &opt.seed);
        break;
      case 'l':
        ok = parse_u64(optarg, &opt.max_len) && opt.max_len > 0;
        break;
      case 'o':
        ok = parse_u64(optarg, &opt.max_op_len) && opt.max_op_len > 0;
        break;
      case 'v':
        opt.verbose = true;
        break;
      case kNoMmap:
        opt.mmap = false;
        break;
      case kNoFallocate:
        opt.fallocate = false;
        break;
      case kNoCopyRange:
        opt.copy_range = false;
        break;
      case 'h':
        usage(argv[0]);
        return 0;
      default:
        usage(argv[0]);
        return 2;
    }
    if (!ok) {
      fmt::print(stderr, "{}: bad value for -{}: {}\n", argv[0], static_cast<char>(c), optarg);
      return 2;
    }
  }
  if (optind + 1 != argc) {
    usage(argv[0]);
    return 2;
  }
  opt.path = argv[optind];
  opt.max_op_len = std::min(opt.max_op_len, opt.max_len);

  Exerciser exerciser(std::move(opt));
  g_exerciser = &exerciser;
  signal(SIGBUS, on_fault);
  signal(SIGSEGV, on_fault);
  return exerciser.run();
}
