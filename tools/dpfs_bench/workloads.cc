#include "workloads.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>

namespace dpfs::bench {
namespace {

constexpr const char* kDataFile = "dpfs-bench.data";
constexpr uint32_t kPage = 4096;

uint64_t xorshift(uint64_t& s) {
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}

void seed(SlotState& st) {
  if (st.rng == 0) {
    st.rng = 0x9e3779b97f4a7c15ull ^ (uint64_t(st.thread) << 40) ^ (uint64_t(st.queue) << 20) ^
             (st.slot + 1);
  }
}

// Every 4 KiB page of data this benchmark writes starts with a stamp (which
// file offset, which run) and continues with a fixed filler, so a read can
// tell misplaced, stale or torn data from the right bytes.
struct Stamp {
  uint64_t magic;
  uint64_t offset;
  uint64_t generation;
};
constexpr uint64_t kMagic = 0x6470667362656e63ull;  // "dpfsbenc"

uint8_t filler(size_t i) { return uint8_t(i * 7 + 13); }

void fill_pages(uint8_t* data, uint32_t len) {
  for (uint32_t i = 0; i < len; ++i) data[i] = filler(i % kPage);
}

void stamp_pages(uint8_t* data, uint64_t offset, uint32_t len, uint64_t generation) {
  for (uint32_t p = 0; p < len; p += kPage) {
    const Stamp s{kMagic, offset + p, generation};
    std::memcpy(data + p, &s, sizeof(s));
  }
}

// "" if every page of `data` carries its offset's stamp (and `generation`
// unless 0) and the filler; `full` compares the whole filler, else a
// sample of it.
std::string check_pages(const uint8_t* data, uint64_t offset, uint32_t len, uint64_t generation,
                        bool full) {
  for (uint32_t p = 0; p < len; p += kPage) {
    Stamp s;
    std::memcpy(&s, data + p, sizeof(s));
    if (s.magic != kMagic || s.offset != offset + p) {
      return fmt::format("data at offset {} is not what was written there", offset + p);
    }
    if (generation != 0 && s.generation != generation) {
      return fmt::format("data at offset {} is from an older write", offset + p);
    }
    const uint32_t end = full ? kPage : 64;
    for (uint32_t i = sizeof(Stamp); i < end && p + i < len; ++i) {
      if (data[p + i] != filler(i)) {
        return fmt::format("data at offset {} differs from what was written", offset + p + i);
      }
    }
  }
  return "";
}

std::string call(Device& d, Reply* r, uint32_t args, bool data = false) {
  if (std::string e = d.sync().call(r); !e.empty()) return e;
  return check_reply(*r, args, data);
}

// A file in the root, opened as a kernel would: LOOKUP, then OPEN if the
// name exists, else CREATE with O_EXCL. (A CREATE of an existing name is
// valid FUSE, but QEMU 7.2's virtiofsd aborts on it: "invalid openat64
// call: O_CREAT or O_TMPFILE without mode".) `error` is the CREATE's errno
// when the device refused it (EROFS: the null backend); other failures
// throw.
struct OpenedFile {
  uint64_t nodeid = 0;
  uint64_t fh = 0;
  uint64_t size = 0;
  int error = 0;
};

OpenedFile open_in_root(Device& d, std::string_view name, uint32_t flags) {
  Slot& s = d.sync().slot();
  Reply r;
  OpenedFile f;
  build_lookup(s, d.sync().next_unique(), FUSE_ROOT_ID, name);
  std::string e = call(d, &r, sizeof(fuse_entry_out));
  if (e.empty()) {
    f.nodeid = r.arg<fuse_entry_out>().nodeid;
    f.size = r.arg<fuse_entry_out>().attr.size;
    build_open(s, d.sync().next_unique(), f.nodeid, flags);
    if (e = call(d, &r, sizeof(fuse_open_out)); !e.empty()) throw std::runtime_error(e);
    f.fh = r.arg<fuse_open_out>().fh;
    return f;
  }
  if (!r.slot || r.error() != ENOENT) throw std::runtime_error(e);
  build_create(s, d.sync().next_unique(), FUSE_ROOT_ID, name, flags | O_CREAT | O_EXCL, 0644);
  e = call(d, &r, sizeof(fuse_entry_out) + sizeof(fuse_open_out));
  if (!e.empty()) {
    if (!r.slot || r.error() == 0) throw std::runtime_error(e);
    f.error = r.error();
    return f;
  }
  f.nodeid = r.arg<fuse_entry_out>().nodeid;
  f.fh = reinterpret_cast<const fuse_open_out*>(s.out + kOutHeader + sizeof(fuse_entry_out))->fh;
  return f;
}

// ---------------------------------------------------------------------------

class Getattr final : public Workload {
 public:
  std::string_view name() const override { return "getattr"; }
  void next(Slot& s, SlotState& st) override { build_getattr(s, st.unique, FUSE_ROOT_ID); }
  std::string complete(const Reply& r, SlotState&) override {
    if (std::string e = check_reply(r, sizeof(fuse_attr_out)); !e.empty()) return e;
    if (!S_ISDIR(r.arg<fuse_attr_out>().attr.mode)) return "GETATTR: the root is no directory";
    return "";
  }
};

// LOOKUP, GETATTR and FORGET of names created by prepare(), or of the null
// backend's one file when the device is read-only.
class LookupGetattr final : public Workload {
 public:
  explicit LookupGetattr(uint32_t files) : files_(std::max<uint32_t>(files, 1)) {}
  std::string_view name() const override { return "lookup"; }

  void prepare(Device& d) override {
    for (uint32_t i = 0; i < files_; ++i) {
      std::string name = fmt::format("dpfs-bench.f{}", i);
      const OpenedFile f = open_in_root(d, name, O_WRONLY);
      if (f.error == EROFS) {
        names_ = {"zero"};  // the null backend
        return;
      }
      if (f.error != 0) throw std::runtime_error(fmt::format("CREATE: {}", std::strerror(f.error)));
      Slot& s = d.sync().slot();
      Reply r;
      build_release(s, d.sync().next_unique(), f.nodeid, f.fh);
      if (std::string e = call(d, &r, 0); !e.empty()) throw std::runtime_error(e);
      names_.push_back(std::move(name));
    }
  }

  void next(Slot& s, SlotState& st) override {
    seed(st);
    switch (st.step) {
      case 0:
        build_lookup(s, st.unique, FUSE_ROOT_ID, names_[xorshift(st.rng) % names_.size()]);
        break;
      case 1:
        build_getattr(s, st.unique, st.nodeid);
        break;
      default:
        build_forget(s, st.unique, st.nodeid, 1);
        break;
    }
  }
  std::string complete(const Reply& r, SlotState& st) override {
    const uint32_t step = st.step;
    st.step = 0;
    if (step == 0) {
      if (std::string e = check_reply(r, sizeof(fuse_entry_out)); !e.empty()) return e;
      st.nodeid = r.arg<fuse_entry_out>().nodeid;
      st.step = 1;
      return "";
    }
    if (step == 1) {
      st.step = 2;  // the lookup is forgotten even after a failed GETATTR
      return check_reply(r, sizeof(fuse_attr_out));
    }
    return check_no_reply(r);
  }

 private:
  uint32_t files_;
  std::vector<std::string> names_;
};

// The data file: created and filled with stamped pages, or the null
// backend's "zero" (read-only tree, zeros, writes discarded: no checks).
struct DataFile {
  uint64_t nodeid = 0;
  uint64_t fh = 0;
  bool stamped = false;

  void open(Device& d, uint64_t size) {
    const OpenedFile f = open_in_root(d, kDataFile, O_RDWR);
    Slot& s = d.sync().slot();
    Reply r;
    std::string e;
    if (f.error == EROFS) {
      const OpenedFile zero = open_in_root(d, "zero", O_RDWR);
      if (zero.error != 0) {
        throw std::runtime_error("the device is read-only and has no file \"zero\"");
      }
      nodeid = zero.nodeid;
      fh = zero.fh;
      return;
    }
    if (f.error != 0) {
      throw std::runtime_error(fmt::format("CREATE {}: {}", kDataFile, std::strerror(f.error)));
    }
    nodeid = f.nodeid;
    fh = f.fh;
    stamped = true;
    uint64_t have = f.size;
    if (have >= kPage) {
      // Made by an earlier run? Otherwise it is filled again from the start.
      build_read(s, d.sync().next_unique(), nodeid, fh, 0, kPage);
      e = call(d, &r, kPage, true);
      if (!e.empty() || r.data_len() != kPage || !check_pages(s.data, 0, kPage, 0, true).empty()) {
        have = 0;
      }
    }
    // Fill it once; later runs find it full (every run stamps the same
    // offsets the same way, up to the generation).
    const uint32_t chunk =
        std::min<uint32_t>({s.data_cap, d.max_write(), 128u << 10}) / kPage * kPage;
    if (chunk == 0) throw std::runtime_error("the device's max_write is under 4 KiB");
    fill_pages(s.data, chunk);
    for (uint64_t off = have / chunk * chunk; off < size; off += chunk) {
      const uint32_t n = uint32_t(std::min<uint64_t>(chunk, size - off));
      stamp_pages(s.data, off, n, 1);
      build_write(s, d.sync().next_unique(), nodeid, fh, off, n);
      if (e = call(d, &r, sizeof(fuse_write_out)); !e.empty()) {
        throw std::runtime_error(fmt::format("filling {}: {}", kDataFile, e));
      }
    }
  }
};

// READ or WRITE of block_size at random or sequential offsets of the data
// file, opened once.
class DataIo final : public Workload {
 public:
  DataIo(std::string name, bool write, bool random, const WorkloadOptions& o)
      : name_(std::move(name)),
        write_(write),
        random_(random),
        verify_(o.verify),
        block_(o.block_size ? o.block_size
               : random     ? 4096
                            : 128u << 10),
        file_size_(std::max<uint64_t>(o.file_size, block_)),
        blocks_(file_size_ / block_),
        written_(write ? blocks_ : 0) {}

  std::string_view name() const override { return name_; }
  uint32_t data_size() const override { return block_; }
  uint32_t op_bytes() const override { return block_; }

  void prepare(Device& d) override {
    if (block_ % kPage != 0) throw std::runtime_error("the block size must be a multiple of 4K");
    if (write_ && block_ > d.max_write()) {
      throw std::runtime_error(fmt::format("the block size {} is over the device's max_write {}",
                                           block_, d.max_write()));
    }
    file_.open(d, file_size_);
    generation_ = uint64_t(std::chrono::steady_clock::now().time_since_epoch().count()) | 2;
    for (uint32_t q = 1; q <= d.options().request_queues; ++q) {
      for (Slot& s : d.slots(q)) fill_pages(s.data, s.data_cap);
    }
  }

  void next(Slot& s, SlotState& st) override {
    seed(st);
    uint64_t block;
    if (random_) {
      block = xorshift(st.rng) % blocks_;
    } else {
      // Each slot walks its own stripe so slots do not read the same block.
      block = (st.cursor++ * 131 + st.slot * 7919ull + st.queue * 104729ull) % blocks_;
    }
    st.counter = block;
    if (write_) {
      stamp_pages(s.data, block * block_, block_, generation_);
      build_write(s, st.unique, file_.nodeid, file_.fh, block * block_, block_);
    } else {
      build_read(s, st.unique, file_.nodeid, file_.fh, block * block_, block_);
    }
  }

  std::string complete(const Reply& r, SlotState& st) override {
    if (write_) {
      if (std::string e = check_reply(r, sizeof(fuse_write_out)); !e.empty()) return e;
      if (r.arg<fuse_write_out>().size != block_) return "WRITE: short write";
      written_[st.counter].store(1, std::memory_order_relaxed);
      return "";
    }
    if (std::string e = check_reply(r, block_, true); !e.empty()) return e;
    if (r.data_len() != block_) return fmt::format("READ: {} bytes of {}", r.data_len(), block_);
    if (file_.stamped && verify_) {
      return check_pages(r.slot->data, st.counter * block_, block_, 0, false);
    }
    return "";
  }

  std::string verify(Device& d, std::string* error) override {
    if (!write_ || !verify_) return "";
    if (!file_.stamped) return "not verified: the device discards writes (null backend)";
    uint64_t checked = 0;
    Slot& s = d.sync().slot();
    for (uint64_t b = 0; b < blocks_ && checked < 4096; ++b) {
      if (!written_[b].load(std::memory_order_relaxed)) continue;
      build_read(s, d.sync().next_unique(), file_.nodeid, file_.fh, b * block_, block_);
      Reply r;
      std::string e = call(d, &r, block_, true);
      if (e.empty() && r.data_len() != block_) e = "short read";
      if (e.empty()) e = check_pages(s.data, b * block_, block_, generation_, true);
      if (!e.empty()) {
        *error = fmt::format("reading back block {}: {}", b, e);
        return "";
      }
      ++checked;
    }
    return fmt::format("{} written blocks read back and verified", checked);
  }

 private:
  std::string name_;
  bool write_, random_, verify_;
  uint32_t block_;
  uint64_t file_size_, blocks_;
  uint64_t generation_ = 0;
  DataFile file_;
  std::vector<std::atomic<uint8_t>> written_;
};

// OPEN, one 4 KiB READ, RELEASE: what a small-file read costs.
class OpenReadRelease final : public Workload {
 public:
  explicit OpenReadRelease(const WorkloadOptions& o)
      : file_size_(std::max<uint64_t>(o.file_size, kPage)) {}
  std::string_view name() const override { return "open-read"; }
  uint32_t op_bytes() const override { return kPage / 3; }  // one READ per three ops
  void prepare(Device& d) override { file_.open(d, file_size_); }

  void next(Slot& s, SlotState& st) override {
    seed(st);
    switch (st.step) {
      case 0:
        build_open(s, st.unique, file_.nodeid, O_RDONLY);
        break;
      case 1:
        st.counter = xorshift(st.rng) % (file_size_ / kPage);
        build_read(s, st.unique, file_.nodeid, st.fh, st.counter * kPage, kPage);
        break;
      default:
        build_release(s, st.unique, file_.nodeid, st.fh);
        break;
    }
  }
  std::string complete(const Reply& r, SlotState& st) override {
    const uint32_t step = st.step;
    st.step = 0;
    if (step == 0) {
      if (std::string e = check_reply(r, sizeof(fuse_open_out)); !e.empty()) return e;
      st.fh = r.arg<fuse_open_out>().fh;
      st.step = 1;
      return "";
    }
    if (step == 1) {
      st.step = 2;  // RELEASE even after a bad READ
      if (std::string e = check_reply(r, kPage, true); !e.empty()) return e;
      if (r.data_len() != kPage) return "READ: short read";
      return file_.stamped ? check_pages(r.slot->data, st.counter * kPage, kPage, 0, false) : "";
    }
    return check_reply(r, 0);
  }

 private:
  uint64_t file_size_;
  DataFile file_;
};

// CREATE, SETATTR (mode and size), RELEASE, UNLINK of a fresh name, and the
// FORGET of its inode (a device that keeps an fd per inode needs it).
class Metadata final : public Workload {
 public:
  std::string_view name() const override { return "metadata"; }
  void next(Slot& s, SlotState& st) override {
    switch (st.step) {
      case 0:
        st.name = fmt::format("dpfs-bench.m{}.{}.{}.{}.{}", ::getpid(), st.thread, st.queue,
                              st.slot, st.counter++);
        build_create(s, st.unique, FUSE_ROOT_ID, st.name, O_CREAT | O_EXCL | O_RDWR, 0644);
        break;
      case 1:
        build_setattr(s, st.unique, st.nodeid, 0600, 4096);
        break;
      case 2:
        build_release(s, st.unique, st.nodeid, st.fh);
        break;
      case 3:
        build_unlink(s, st.unique, FUSE_ROOT_ID, st.name);
        break;
      default:
        build_forget(s, st.unique, st.nodeid, 1);
        break;
    }
  }
  std::string complete(const Reply& r, SlotState& st) override {
    const uint32_t step = st.step;
    st.step = 0;
    switch (step) {
      case 0: {
        if (std::string e = check_reply(r, sizeof(fuse_entry_out) + sizeof(fuse_open_out));
            !e.empty()) {
          return e;
        }
        st.nodeid = r.arg<fuse_entry_out>().nodeid;
        st.fh = reinterpret_cast<const fuse_open_out*>(r.slot->out + kOutHeader +
                                                       sizeof(fuse_entry_out))
                    ->fh;
        st.step = 1;
        return "";
      }
      case 1: {
        st.step = 2;
        if (std::string e = check_reply(r, sizeof(fuse_attr_out)); !e.empty()) return e;
        const fuse_attr& a = r.arg<fuse_attr_out>().attr;
        if (a.size != 4096 || (a.mode & 07777) != 0600) return "SETATTR: attributes not applied";
        return "";
      }
      case 2:
        st.step = 3;
        return check_reply(r, 0);
      case 3:
        st.step = 4;
        return check_reply(r, 0);
      default:
        return check_no_reply(r);
    }
  }
};

}  // namespace

const std::vector<std::string>& workload_names() {
  static const std::vector<std::string> names{"getattr",   "lookup",  "open-read", "randread",
                                              "randwrite", "seqread", "seqwrite",  "metadata"};
  return names;
}

std::unique_ptr<Workload> make_workload(std::string_view name, const WorkloadOptions& o) {
  if (name == "getattr") return std::make_unique<Getattr>();
  if (name == "lookup") return std::make_unique<LookupGetattr>(o.files);
  if (name == "open-read") return std::make_unique<OpenReadRelease>(o);
  if (name == "randread") return std::make_unique<DataIo>("randread", false, true, o);
  if (name == "randwrite") return std::make_unique<DataIo>("randwrite", true, true, o);
  if (name == "seqread") return std::make_unique<DataIo>("seqread", false, false, o);
  if (name == "seqwrite") return std::make_unique<DataIo>("seqwrite", true, false, o);
  if (name == "metadata") return std::make_unique<Metadata>();
  return nullptr;
}

}  // namespace dpfs::bench
