#include "race.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <thread>

#include "device.h"
#include "util/unique_fd.h"

namespace dpfs::bench {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::string errno_name(int e) {
  if (e == 0) return "ok";
  const char* n = strerrorname_np(e);
  return n ? n : fmt::format("errno {}", e);
}

// --- The tree outside the export -------------------------------------------

// What must stay the same of one entry.
struct TreeNode {
  mode_t mode = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  uint64_t size = 0, nlink = 0, ino = 0;
  int64_t mtime_ns = 0, ctime_ns = 0;
  uint64_t hash = 0;  // content (files), target (symlinks), xattrs (all)
};
using Tree = std::map<std::string, TreeNode>;

constexpr uint64_t kFnvBasis = 0xcbf29ce484222325ull;
uint64_t fnv(uint64_t h, const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  return h;
}

const char* type_name(mode_t mode) {
  if (S_ISDIR(mode)) return "directory";
  if (S_ISREG(mode)) return "file";
  if (S_ISLNK(mode)) return "symlink";
  return "special file";
}

// The host's view, not the device's: every call here is on the host.
class Outside {
 public:
  Outside(std::string root, const std::string& export_dir) : root_(std::move(root)) {
    struct stat st {};
    if (!export_dir.empty() && ::stat(export_dir.c_str(), &st) == 0) {
      skip_dev_ = st.st_dev;
      skip_ino_ = st.st_ino;
    }
  }

  const std::string& root() const { return root_; }

  // Files the race cases try to unlink, move in or remove; kept if present.
  void plant_canaries() {
    const std::string dir = root_ + "/race-canary-dir";
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
      throw std::system_error(errno, std::generic_category(), "mkdir " + dir);
    }
    for (const char* name : {"race-canary-file", "race-canary-move"}) {
      const std::string path = root_ + "/" + name;
      util::UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
      if (!fd) {
        if (errno == EEXIST) continue;
        throw std::system_error(errno, std::generic_category(), "create " + path);
      }
      const std::string text = fmt::format("{}: dpfs-bench's canary, outside the export\n", name);
      if (::write(fd.get(), text.data(), text.size()) != ssize_t(text.size())) {
        throw std::system_error(errno, std::generic_category(), "write " + path);
      }
    }
  }

  void record() { before_ = snapshot(); }

  // "" if the tree is as recorded; otherwise what changed (the first few).
  std::string changes() const {
    const Tree now = snapshot();
    std::vector<std::string> found;
    for (const auto& [path, node] : now) {
      auto it = before_.find(path);
      if (it == before_.end()) {
        found.push_back(fmt::format("appeared {} ({})", path, type_name(node.mode)));
        continue;
      }
      const TreeNode& was = it->second;
      std::string what;
      auto note = [&](bool differs, const std::string& text) {
        if (differs) what += (what.empty() ? "" : ", ") + text;
      };
      note((was.mode & S_IFMT) != (node.mode & S_IFMT),
           fmt::format("{} became a {}", type_name(was.mode), type_name(node.mode)));
      note(was.mode != node.mode && (was.mode & S_IFMT) == (node.mode & S_IFMT),
           fmt::format("mode {:o} -> {:o}", was.mode & 07777, node.mode & 07777));
      note(was.uid != node.uid || was.gid != node.gid, "owner");
      note(was.ino != node.ino, "replaced by another inode");
      note(was.size != node.size, fmt::format("size {} -> {}", was.size, node.size));
      note(was.nlink != node.nlink, fmt::format("links {} -> {}", was.nlink, node.nlink));
      note(was.hash != node.hash, "content or xattrs");
      note(was.mtime_ns != node.mtime_ns, "mtime");
      note(was.ctime_ns != node.ctime_ns, "ctime");
      if (!what.empty()) found.push_back(fmt::format("changed {} ({})", path, what));
    }
    for (const auto& [path, node] : before_) {
      if (!now.count(path))
        found.push_back(fmt::format("vanished {} ({})", path, type_name(node.mode)));
    }
    std::string text;
    for (size_t i = 0; i < found.size() && i < 6; ++i) text += (i ? "; " : "") + found[i];
    if (found.size() > 6) text += fmt::format("; {} more", found.size() - 6);
    return text;
  }

 private:
  Tree snapshot() const {
    Tree t;
    util::UniqueFd fd(::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd) throw std::system_error(errno, std::generic_category(), "open " + root_);
    struct stat st {};
    ::fstat(fd.get(), &st);
    t["."] = node_of(fd.get(), "", st);
    walk(fd.get(), "", &t, 0);
    return t;
  }

  // Follows no symlink: the tree as it is, names and all.
  void walk(int dirfd, const std::string& prefix, Tree* t, int depth) const {
    if (depth > 16 || t->size() > 100000) return;
    const int dup = ::openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dup < 0) return;
    std::unique_ptr<DIR, int (*)(DIR*)> dir(::fdopendir(dup), ::closedir);
    if (!dir) {
      ::close(dup);
      return;
    }
    while (dirent* e = ::readdir(dir.get())) {
      const std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      struct stat st {};
      if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
      if (st.st_dev == skip_dev_ && st.st_ino == skip_ino_) continue;  // the export itself
      const std::string path = prefix + name;
      (*t)[path] = node_of(dirfd, name, st);
      if (S_ISDIR(st.st_mode)) {
        util::UniqueFd sub(
            ::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (sub) walk(sub.get(), path + "/", t, depth + 1);
      }
    }
  }

  static TreeNode node_of(int dirfd, const std::string& name, const struct stat& st) {
    TreeNode n;
    n.mode = st.st_mode;
    n.uid = st.st_uid;
    n.gid = st.st_gid;
    n.size = uint64_t(st.st_size);
    n.nlink = st.st_nlink;
    n.ino = st.st_ino;
    n.mtime_ns = int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    n.ctime_ns = int64_t(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec;
    n.hash = kFnvBasis;
    char buf[65536];
    if (S_ISREG(st.st_mode)) {
      util::UniqueFd f(::openat(dirfd, name.empty() ? "." : name.c_str(),
                                O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK));
      for (ssize_t r; f && (r = ::read(f.get(), buf, sizeof buf)) > 0;)
        n.hash = fnv(n.hash, buf, size_t(r));
    } else if (S_ISLNK(st.st_mode)) {
      const ssize_t r = ::readlinkat(dirfd, name.c_str(), buf, sizeof buf);
      if (r > 0) n.hash = fnv(n.hash, buf, size_t(r));
    }
    // xattrs, through /proc so that no symlink is followed and any type works.
    util::UniqueFd path_fd(
        ::openat(dirfd, name.empty() ? "." : name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
    if (path_fd && !S_ISLNK(st.st_mode)) {
      const std::string proc = fmt::format("/proc/self/fd/{}", path_fd.get());
      char names[8192];
      const ssize_t len = ::listxattr(proc.c_str(), names, sizeof names);
      for (ssize_t at = 0; at < len;) {
        const std::string_view one(names + at);
        n.hash = fnv(n.hash, one.data(), one.size() + 1);
        const ssize_t v = ::getxattr(proc.c_str(), one.data(), buf, sizeof buf);
        if (v > 0) n.hash = fnv(n.hash, buf, size_t(v));
        at += ssize_t(one.size()) + 1;
      }
    }
    return n;
  }

  std::string root_;
  dev_t skip_dev_ = 0;
  ino_t skip_ino_ = 0;
  Tree before_;
};

// --- FUSE requests the cases send -------------------------------------------

void build_mkdir(Slot& s, uint64_t unique, uint64_t parent, std::string_view name) {
  begin(s, FUSE_MKDIR, parent, unique);
  fuse_mkdir_in a{};
  a.mode = 0755;
  append(s, a);
  append_name(s, name);
  finish(s);
}

void build_mknod(Slot& s, uint64_t unique, uint64_t parent, std::string_view name) {
  begin(s, FUSE_MKNOD, parent, unique);
  fuse_mknod_in a{};
  a.mode = S_IFREG | 0644;
  append(s, a);
  append_name(s, name);
  finish(s);
}

void build_symlink(Slot& s, uint64_t unique, uint64_t parent, std::string_view name,
                   std::string_view target) {
  begin(s, FUSE_SYMLINK, parent, unique);
  append_name(s, name);
  append_name(s, target);
  finish(s);
}

void build_link(Slot& s, uint64_t unique, uint64_t ino, uint64_t new_parent,
                std::string_view name) {
  begin(s, FUSE_LINK, new_parent, unique);
  fuse_link_in a{};
  a.oldnodeid = ino;
  append(s, a);
  append_name(s, name);
  finish(s);
}

void build_rmdir(Slot& s, uint64_t unique, uint64_t parent, std::string_view name) {
  begin(s, FUSE_RMDIR, parent, unique);
  append_name(s, name);
  finish(s);
}

void build_rename(Slot& s, uint64_t unique, uint64_t parent, std::string_view name,
                  std::string_view new_name, std::optional<uint32_t> rename2_flags) {
  begin(s, rename2_flags ? FUSE_RENAME2 : FUSE_RENAME, parent, unique);
  if (rename2_flags) {
    fuse_rename2_in a{};
    a.newdir = parent;
    a.flags = *rename2_flags;
    append(s, a);
  } else {
    fuse_rename_in a{};
    a.newdir = parent;
    append(s, a);
  }
  append_name(s, name);
  append_name(s, new_name);
  finish(s);
}

// FUSE_SETXATTR_EXT is not negotiated: the 8-byte argument of FUSE < 7.33.
void build_setxattr(Slot& s, uint64_t unique, uint64_t ino, std::string_view name,
                    std::string_view value) {
  begin(s, FUSE_SETXATTR, ino, unique);
  fuse_setxattr_in a{};
  a.size = uint32_t(value.size());
  append(s, &a, FUSE_COMPAT_SETXATTR_IN_SIZE);
  append_name(s, name);
  append(s, value.data(), value.size());
  finish(s);
}

void build_getxattr(Slot& s, uint64_t unique, uint64_t ino, std::string_view name, uint32_t size) {
  begin(s, FUSE_GETXATTR, ino, unique);
  fuse_getxattr_in a{};
  a.size = size;
  append(s, a);
  append_name(s, name);
  finish(s);
}

void build_listxattr(Slot& s, uint64_t unique, uint64_t ino, uint32_t size) {
  begin(s, FUSE_LISTXATTR, ino, unique);
  fuse_getxattr_in a{};
  a.size = size;
  append(s, a);
  finish(s);
}

void build_removexattr(Slot& s, uint64_t unique, uint64_t ino, std::string_view name) {
  begin(s, FUSE_REMOVEXATTR, ino, unique);
  append_name(s, name);
  finish(s);
}

void set_uid(Slot& s, uint32_t uid) {
  auto* h = reinterpret_cast<fuse_in_header*>(s.in);
  h->uid = uid;
  h->gid = uid;
}

// One request at a time on request queue 1, for set-up and the checks.
class Sync {
 public:
  explicit Sync(Device& d) : ch_(d.sync()) {}
  Slot& slot() { return ch_.slot(); }
  uint64_t unique() { return ch_.next_unique(); }

  // Sends what slot() holds; returns the answer's errno. Throws when no
  // consistent answer came.
  int call() {
    Reply r;
    if (std::string e = ch_.call(&r); !e.empty()) throw std::runtime_error(e);
    if (r.used_len < kOutHeader || r.header().len != r.used_len) {
      throw std::runtime_error(fmt::format("{}: inconsistent reply ({} bytes used)",
                                           opcode_name(ch_.slot().opcode), r.used_len));
    }
    return r.error();
  }
  // The reply's arguments, `offset` bytes after the header.
  template <typename T>
  const T& arg(size_t offset = 0) {
    return *reinterpret_cast<const T*>(slot().out + kOutHeader + offset);
  }

  // Creates (or opens) a regular file in the root; its node id and handle.
  uint64_t open_file(const std::string& name, uint64_t* fh) {
    build_create(slot(), unique(), FUSE_ROOT_ID, name, O_RDWR | O_CREAT, S_IFREG | 0644);
    if (int e = call()) {
      throw std::runtime_error(fmt::format("CREATE {}: {}", name, errno_name(e)));
    }
    *fh = arg<fuse_open_out>(sizeof(fuse_entry_out)).fh;
    return arg<fuse_entry_out>().nodeid;
  }
  void release(uint64_t ino, uint64_t fh) {
    build_release(slot(), unique(), ino, fh);
    call();
  }
  void ensure_file(const std::string& name) {
    uint64_t fh = 0;
    const uint64_t ino = open_file(name, &fh);
    release(ino, fh);
  }

  // The names in directory `ino` (READDIR, all pages).
  std::vector<std::string> list(uint64_t ino) {
    begin(slot(), FUSE_OPENDIR, ino, unique());
    append(slot(), fuse_open_in{});
    finish(slot());
    if (int e = call()) throw std::runtime_error("OPENDIR: " + errno_name(e));
    const uint64_t fh = reinterpret_cast<const fuse_open_out*>(slot().out + kOutHeader)->fh;
    std::vector<std::string> names;
    uint64_t offset = 0;
    for (int page = 0; page < 10000; ++page) {
      begin(slot(), FUSE_READDIR, ino, unique());
      fuse_read_in a{};
      a.fh = fh;
      a.offset = offset;
      a.size = slot().out_cap - kOutHeader;
      append(slot(), a);
      finish(slot());
      if (int e = call()) throw std::runtime_error("READDIR: " + errno_name(e));
      const auto* h = reinterpret_cast<const fuse_out_header*>(slot().out);
      const uint8_t* p = slot().out + kOutHeader;
      const uint8_t* end = slot().out + h->len;
      if (p == end) break;
      while (p + FUSE_NAME_OFFSET <= end) {
        const auto* d = reinterpret_cast<const fuse_dirent*>(p);
        if (p + FUSE_DIRENT_SIZE(d) > end) break;
        names.emplace_back(d->name, d->namelen);
        offset = d->off;
        p += FUSE_DIRENT_SIZE(d);
      }
    }
    begin(slot(), FUSE_RELEASEDIR, ino, unique());
    fuse_release_in r{};
    r.fh = fh;
    append(slot(), r);
    finish(slot());
    call();
    return names;
  }

  int symlink(const std::string& name, const std::string& target) {
    build_symlink(slot(), unique(), FUSE_ROOT_ID, name, target);
    return call();
  }
  int setxattr(uint64_t ino, const std::string& name, uint32_t uid) {
    build_setxattr(slot(), unique(), ino, name, "probe");
    set_uid(slot(), uid);
    return call();
  }
  int removexattr(uint64_t ino, const std::string& name) {
    build_removexattr(slot(), unique(), ino, name);
    return call();
  }
  // The xattr names of `ino`, as root sees them; sets *error instead.
  std::vector<std::string> xattrs(uint64_t ino, int* error) {
    build_listxattr(slot(), unique(), ino, slot().out_cap - kOutHeader);
    std::vector<std::string> names;
    *error = call();
    if (*error) return names;
    const auto* h = reinterpret_cast<const fuse_out_header*>(slot().out);
    const char* p = reinterpret_cast<const char*>(slot().out + kOutHeader);
    const char* end = reinterpret_cast<const char*>(slot().out + h->len);
    while (p < end) {
      const size_t n = strnlen(p, size_t(end - p));
      names.emplace_back(p, n);
      p += n + 1;
    }
    return names;
  }

 private:
  SyncChannel& ch_;
};

// --- The race ----------------------------------------------------------------

// A word of guest memory the flipper swaps between its two versions.
struct FlipWord {
  uint64_t* at;
  uint64_t harmless, hostile;
};

// The guest's other vCPUs: threads that rewrite the words in a tight loop,
// with a varying pause between flips so that windows of every length are
// hit. Relaxed atomic stores: the device, another process, reads the same
// memory concurrently. Several threads (one per CPU, at least two): on a
// busy host the device's worker and a single flipper often share a CPU and
// never run at the same time, and then no window is ever hit.
class Flipper {
 public:
  explicit Flipper(std::vector<FlipWord> words) : words_(std::move(words)) {
    const unsigned n = std::max(2u, std::min(8u, std::thread::hardware_concurrency()));
    flips_.resize(n);
    threads_.reserve(n);
    for (unsigned i = 0; i < n; ++i) threads_.emplace_back([this, i] { run(i); });
  }
  bool realtime() const { return realtime_.load(std::memory_order_relaxed); }
  ~Flipper() { stop(); }
  // Stops and puts every word back to its harmless version; the flips made.
  uint64_t stop() {
    if (!threads_.empty()) {
      stop_.store(true, std::memory_order_relaxed);
      for (std::thread& t : threads_) t.join();
      threads_.clear();
      for (const FlipWord& w : words_) {
        std::atomic_ref<uint64_t>(*w.at).store(w.harmless, std::memory_order_relaxed);
      }
    }
    uint64_t total = 0;
    for (uint64_t f : flips_) total += f;
    return total;
  }

 private:
  void run(unsigned index) {
    if (index == 0 && flips_.size() > 1 && std::thread::hardware_concurrency() > 1) {
      // One flipper real-time when allowed (root): it keeps a CPU to itself
      // while the device's worker runs on the others, so every window the
      // worker opens is raced. The kernel's RT throttling (95% by default)
      // and the case's short time bound what it takes from the host.
      sched_param sp{};
      sp.sched_priority = 1;
      realtime_.store(pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp) == 0,
                      std::memory_order_relaxed);
    }
    uint32_t x = 2463534242u + index * 7919u;
    bool hostile = index % 2 == 0;
    uint64_t flips = 0;
    while (!stop_.load(std::memory_order_relaxed)) {
      hostile = !hostile;
      for (const FlipWord& w : words_) {
        std::atomic_ref<uint64_t>(*w.at).store(hostile ? w.hostile : w.harmless,
                                               std::memory_order_relaxed);
      }
      ++flips;
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      // A pause of 0-15 iterations the compiler cannot remove.
      for (uint32_t i = x & 15; i > 0; --i) std::atomic_signal_fence(std::memory_order_seq_cst);
    }
    flips_[index] = flips;  // read after join
  }

  std::vector<FlipWord> words_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> realtime_{false};
  std::vector<uint64_t> flips_;
  std::vector<std::thread> threads_;
};

// Builds one request in `s`, the harmless or the hostile version; both must
// have the same shape (lengths, buffers).
using Build = std::function<void(Slot& s, uint64_t unique, bool hostile)>;

// Builds both versions of `build` into `s`, leaves the harmless one in place
// and returns the words of `s.in` that differ.
std::vector<FlipWord> flip_words(Slot& s, uint64_t unique, const Build& build) {
  build(s, unique, true);
  const std::vector<uint8_t> hostile(s.in, s.in + s.in_len);
  const uint32_t in_len = s.in_len, write_len = s.write_len, read_len = s.read_len;
  build(s, unique, false);
  if (s.in_len != in_len || s.write_len != write_len || s.read_len != read_len) {
    throw std::logic_error(
        fmt::format("race {}: the two versions differ in shape", opcode_name(s.opcode)));
  }
  std::vector<FlipWord> words;
  // s.in is 64-byte aligned (device.cc): whole words, bytes past in_len are
  // the same in both versions.
  for (uint32_t at = 0; at < in_len; at += 8) {
    uint64_t a = 0, b = 0;
    const uint32_t n = std::min<uint32_t>(8, in_len - at);
    std::memcpy(&a, s.in + at, 8);
    b = a;
    std::memcpy(&b, hostile.data() + at, n);
    if (a != b) words.push_back({reinterpret_cast<uint64_t*>(s.in + at), a, b});
  }
  return words;
}

// "" if the reply to `s` is consistent with what was asked.
std::string check_race_reply(const Slot& s, uint32_t used_len) {
  const uint32_t cap = s.read_len ? kOutHeader + s.read_len : s.out_cap;
  const auto& h = *reinterpret_cast<const fuse_out_header*>(s.out);
  const char* op = opcode_name(s.opcode);
  if (used_len < kOutHeader) return fmt::format("{}: {} bytes used, no reply header", op, used_len);
  if (used_len > cap) return fmt::format("{}: {} bytes used of buffers of {}", op, used_len, cap);
  if (h.len != used_len)
    return fmt::format("{}: reply says {} bytes, used {}", op, h.len, used_len);
  if (h.unique != s.unique)
    return fmt::format("{}: reply to unique {}, not {}", op, h.unique, s.unique);
  if (h.error > 0 || h.error < -4095) return fmt::format("{}: error {}", op, h.error);
  return "";
}

struct RaceStats {
  uint64_t requests = 0;
  uint64_t flips = 0;
  unsigned connections = 1;
  double seconds = 0;
  std::map<int, uint64_t> answers;  // errno (0: success) -> count
  std::string bad_reply;            // the first inconsistent reply
  std::string escape;               // the first change outside
  uint64_t escape_after = 0;        // requests answered when it was seen
  bool stalled = false;
  bool realtime = false;    // a flipper ran SCHED_FIFO
  std::string other_queue;  // descriptors: how queue 1 of the attacked connection did

  std::string summary() const {
    std::string a;
    for (const auto& [e, n] : answers)
      a += fmt::format("{}{} {}", a.empty() ? "" : ", ", n, errno_name(e));
    return fmt::format("{} requests in {:.2f} s ({} flips{}{}): {}", requests, seconds, flips,
                       realtime ? ", a real-time flipper" : "",
                       connections > 1 ? fmt::format(", {} connections", connections) : "",
                       a.empty() ? "replies not read (their buffers were raced)" : a);
  }
};

// The attacked queue: the last request queue (hostile.cc's victim()).
uint32_t victim(Device& d) { return d.options().request_queues; }

// Keeps every slot of the victim queue busy with `builds` (round robin)
// while the flipper swaps their raced words, until `seconds` pass or an
// escape or bad reply is seen; then lets the last requests come back.
RaceStats race(Device& d, const HostileOptions& o, const Outside* outside,
               const std::vector<Build>& builds) {
  RaceStats st;
  const uint32_t v = victim(d);
  DriverQueue& q = d.queue(v);
  const std::vector<Slot>& own = d.slots(v);
  // The requests of one kind all read the same guest bytes (each has its
  // own reply and READ buffers): the flipper swaps a few words as fast as
  // it can, and whichever request the device is deciding on sees them move.
  // Swapping one word per request in flight instead would leave each word
  // still for the whole pass, longer than the device's window.
  const size_t kinds = std::min(builds.size(), own.size());
  std::vector<FlipWord> words;
  std::vector<Slot> slots(own.begin(), own.end());
  for (size_t t = 0; t < kinds; ++t) {
    // Even uniques, away from the sync channel's odd ones.
    auto w = flip_words(slots[t], 0x40000000 + 2 * t, builds[t]);
    words.insert(words.end(), w.begin(), w.end());
  }
  for (size_t k = kinds; k < slots.size(); ++k) {
    const Slot& model = slots[k % kinds];
    Slot& s = slots[k];
    s.in = model.in;
    s.in_len = model.in_len;
    s.write_len = model.write_len;
    s.read_len = model.read_len;
    s.unique = model.unique;
    s.opcode = model.opcode;
    s.takes_reply = model.takes_reply;
    if (s.write_len) s.data = model.data;  // the WRITE payload, read only
  }
  std::vector<int> slot_of(q.size(), -1);
  uint32_t in_flight = 0;
  auto submit = [&](size_t k) {
    const int head = slots[k].submit(q);
    if (head < 0) return;
    slot_of[size_t(head)] = int(k);
    ++in_flight;
  };
  for (size_t k = 0; k < slots.size(); ++k) submit(k);
  q.publish();
  q.kick_always();

  Flipper flipper(words);
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration<double>(o.race_seconds);
  auto last_answer = start, next_check = start;
  while (in_flight > 0) {
    const auto now = Clock::now();
    const bool winding_down = now >= deadline || !st.escape.empty() || !st.bad_reply.empty();
    bool answered = false, resubmitted = false;
    uint16_t head;
    uint32_t len;
    while (q.next_used(&head, &len)) {
      answered = true;
      --in_flight;
      ++st.requests;
      const int k = head < slot_of.size() ? slot_of[head] : -1;
      if (k < 0) {
        if (st.bad_reply.empty())
          st.bad_reply = fmt::format("used head {} was not in flight", head);
        continue;
      }
      slot_of[head] = -1;
      const Slot& s = slots[size_t(k)];
      if (std::string e = check_race_reply(s, len); !e.empty()) {
        if (st.bad_reply.empty()) st.bad_reply = e;
      } else {
        ++st.answers[-reinterpret_cast<const fuse_out_header*>(s.out)->error];
      }
      if (!winding_down) {
        submit(size_t(k));
        resubmitted = true;
      }
    }
    if (resubmitted) {
      q.publish();
      q.kick();
    }
    if (answered) {
      last_answer = now;
    } else if (now - last_answer > 3s) {
      st.stalled = true;
      break;
    }
    // The outside after every batch of answers for the first thousand
    // requests (an escape is reported with how many it took, give or take
    // one batch), then every millisecond.
    if (outside && st.escape.empty() && (st.requests < 1024 || now >= next_check)) {
      if (std::string c = outside->changes(); !c.empty()) {
        st.escape = c;
        st.escape_after = st.requests;
      }
      next_check = Clock::now() + 1ms;
    }
    if (!answered) {
      pollfd p{q.call_fd(), POLLIN, 0};
      ::poll(&p, 1, 1);
      q.drain_call();
    }
  }
  st.flips = flipper.stop();
  st.realtime = flipper.realtime();
  st.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (outside && st.escape.empty()) {
    if (std::string c = outside->changes(); !c.empty()) {
      st.escape = c;
      st.escape_after = st.requests;
    }
  }
  return st;
}

// Descriptors of chains already made available, rewritten while the device
// may be reading them: addresses outside memory, lengths past it, flags and
// next fields that loop. The queue may be declared broken (then a new
// connection carries on); the device must not read or write anywhere else.
RaceStats race_descriptors(Device& d, const HostileOptions& o, const Outside* outside) {
  RaceStats st;
  st.connections = 0;
  const uint32_t v = victim(d);
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration<double>(o.race_seconds);
  std::unique_ptr<Device> fresh;
  Device* dev = &d;
  while (Clock::now() < deadline && st.connections < 50 && st.bad_reply.empty()) {
    ++st.connections;
    DriverQueue& q = dev->queue(v);
    std::vector<Slot>& slots = dev->slots(v);
    const uint32_t n = std::min<uint32_t>(uint32_t(slots.size()), q.size() / 2);
    const SharedMemory& mem = dev->memory();
    std::vector<FlipWord> words;
    // The second half of a descriptor: len, flags and next.
    auto word = [](const VringDesc& desc) {
      uint64_t w;
      std::memcpy(&w, reinterpret_cast<const uint8_t*>(&desc) + 8, 8);
      return w;
    };
    // Slot k: its request in descriptor 2k, its reply buffer in 2k + 1.
    for (uint32_t k = 0; k < n; ++k) {
      Slot& s = slots[k];
      build_lookup(s, 0x40000000 + 2 * k, FUSE_ROOT_ID, "race-descriptor-name");
      const uint16_t a = uint16_t(2 * k), b = uint16_t(2 * k + 1);
      VringDesc& da = q.desc()[a];
      VringDesc& db = q.desc()[b];
      da = VringDesc{mem.guest_addr(s.in), s.in_len, virtio::kDescFNext, b};
      db = VringDesc{mem.guest_addr(s.out), s.out_cap, virtio::kDescFWrite, 0};
      VringDesc bad = da;
      VringDesc* target = &da;
      switch (k % 8) {
        case 0:  // the request's address past the end of memory
          words.push_back(
              {reinterpret_cast<uint64_t*>(&da.addr), da.addr, mem.guest_end() + 4096ull * k});
          continue;
        case 1:  // the request's length past the end of memory
          bad.len = 0x80000000u;
          break;
        case 2:  // the request becomes device-writable
          bad.flags = virtio::kDescFWrite | virtio::kDescFNext;
          break;
        case 3:  // the chain loops on itself
          bad.next = a;
          break;
        case 4:  // next beyond the ring
          bad.next = uint16_t(q.size() + 9);
          break;
        case 5:  // the reply buffer loops back to the request
          target = &db;
          bad = db;
          bad.flags = virtio::kDescFWrite | virtio::kDescFNext;
          bad.next = a;
          break;
        case 6:  // the reply buffer's address into the ring itself
          words.push_back(
              {reinterpret_cast<uint64_t*>(&db.addr), db.addr, mem.guest_addr(q.desc())});
          continue;
        default:  // left alone: the requests the device should still answer
          continue;
      }
      words.push_back({reinterpret_cast<uint64_t*>(reinterpret_cast<uint8_t*>(target) + 8),
                       word(*target), word(bad)});
    }
    uint16_t used_seen = std::atomic_ref<uint16_t>(q.used()->idx).load(std::memory_order_acquire);
    auto make_available = [&](uint16_t head) {
      q.avail()->ring[q.avail_idx() % q.size()] = head;
      q.set_avail_idx(uint16_t(q.avail_idx() + 1));
    };
    for (uint32_t k = 0; k < n; ++k) make_available(uint16_t(2 * k));
    q.publish();
    q.kick_always();
    Flipper flipper(words);
    auto last_answer = Clock::now();
    bool broken = false;
    while (!broken) {
      const auto now = Clock::now();
      bool answered = false;
      while (used_seen !=
             std::atomic_ref<uint16_t>(q.used()->idx).load(std::memory_order_acquire)) {
        const VringUsedElem e = q.used()->ring[used_seen % q.size()];
        ++used_seen;
        ++st.requests;
        answered = true;
        if (e.id >= 2 * n || e.id % 2) {
          if (st.bad_reply.empty()) st.bad_reply = fmt::format("used id {} was no head", e.id);
          continue;
        }
        // A reply that fits its buffer, or none; the buffer's address may
        // have been flipped, so only the length is ours to check.
        if (e.len > slots[e.id / 2].out_cap && st.bad_reply.empty()) {
          st.bad_reply =
              fmt::format("{} bytes used of a {}-byte buffer", e.len, slots[e.id / 2].out_cap);
        }
        if (now < deadline) make_available(uint16_t(e.id));
      }
      if (answered) {
        q.publish();
        q.kick_always();
        last_answer = now;
      } else if (now - last_answer > 100ms || now >= deadline) {
        broken = now < deadline;  // at the deadline the queue may be fine
        break;
      }
      if (outside && st.escape.empty()) {
        if (std::string c = outside->changes(); !c.empty()) {
          st.escape = c;
          st.escape_after = st.requests;
          break;
        }
      }
      pollfd p{q.call_fd(), POLLIN, 0};
      if (!answered) ::poll(&p, 1, 1);
      q.drain_call();
    }
    st.flips += flipper.stop();
    st.realtime = flipper.realtime();
    if (dev == &d && v > 1) {
      // The attacked connection's other queue still serves.
      Sync sync(d);
      build_getattr(sync.slot(), sync.unique(), FUSE_ROOT_ID);
      try {
        if (int e = sync.call()) st.other_queue = "GETATTR on queue 1: " + errno_name(e);
      } catch (const std::exception& e) {
        st.other_queue = e.what();
      }
      if (st.other_queue.empty()) st.other_queue = "ok";
    }
    if (!st.escape.empty() || !broken || Clock::now() >= deadline) break;
    // The device gave up on the queue: a new connection carries on, once
    // the last one is gone (a vhost-user device serves one front-end).
    if (dev == &d) d.frontend().vanish();
    fresh.reset();
    fresh = std::make_unique<Device>(d.options());
    dev = fresh.get();
  }
  if (dev == &d) d.frontend().vanish();  // the case ends the connection either way
  st.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return st;
}

// --- The cases -------------------------------------------------------------

// What every case starts from: names that lead outside, a file, a symlink
// to the outside.
struct Prep {
  Device& d;
  Sync sync;
  std::unique_ptr<Outside> outside;
  std::string up;        // from the export's root to the outside: ".." or more
  uint64_t file = 0;     // node id of race-file, a regular file in the root
  uint64_t file_fh = 0;  // its open handle
  // Ends the names this run creates, so that what an earlier run left
  // behind (outside too, when it escaped) does not make them EEXIST.
  std::string tag = fmt::format(
      "{:04x}",
      (uint32_t(::getpid()) ^ uint32_t(Clock::now().time_since_epoch().count() >> 10)) & 0xffff);

  std::string fresh(const std::string& leaf) const { return leaf + "-" + tag; }

  explicit Prep(Device& dev) : d(dev), sync(dev) {}

  // `leaf` reached through `up`, and its harmless twin of the same length
  // ('/' and '.' replaced): "../x" and "xx-x".
  std::pair<std::string, std::string> through_parent(const std::string& leaf) const {
    return twins(up + "/" + leaf);
  }
  // `leaf` reached through the symlink "ab" (which points at the outside):
  // "ab/x" and "ab-x".
  std::pair<std::string, std::string> through_symlink(const std::string& leaf) const {
    return twins("ab/" + leaf);
  }
  static std::pair<std::string, std::string> twins(std::string hostile) {
    std::string harmless = hostile;
    for (char& c : harmless) {
      if (c == '/') c = '-';
      if (c == '.') c = 'x';
    }
    return {harmless, hostile};
  }
};

std::unique_ptr<Prep> prepare(Device& d, const HostileOptions& o) {
  auto p = std::make_unique<Prep>(d);
  p->up = "..";
  std::string link_target = "/nonexistent-dpfs-bench-outside";
  if (!o.outside.empty()) {
    namespace fs = std::filesystem;
    const fs::path outside = fs::weakly_canonical(o.outside);
    link_target = outside.string();
    if (!o.export_dir.empty()) {
      const fs::path up = fs::relative(outside, fs::weakly_canonical(o.export_dir));
      if (up.empty() || !up.string().starts_with("..")) {
        throw std::invalid_argument("--outside must lie outside --export-dir");
      }
      p->up = up.string();
    }
    p->outside = std::make_unique<Outside>(outside.string(), o.export_dir);
    p->outside->plant_canaries();
  }
  // The tenant's own symlink, pointing where the tenant likes: harmless
  // unless the device follows it while resolving a name with a '/'.
  if (int e = p->sync.symlink("ab", link_target); e != 0 && e != EEXIST) {
    throw std::runtime_error("SYMLINK ab: " + errno_name(e));
  }
  p->file = p->sync.open_file("race-file", &p->file_fh);
  // The sources of the rename-out races, renamed onto themselves when
  // harmless.
  p->sync.ensure_file(p->through_parent(p->fresh("race-move-out")).first);
  p->sync.ensure_file(p->through_symlink(p->fresh("race-move-out")).first);
  if (p->outside) p->outside->record();
  return p;
}

// The names the device serves at its root must be names (no '/') and each
// listed once. "" or the first few bad ones and how many there are.
std::string bad_names(Sync& sync) {
  std::vector<std::string> bad;
  size_t slashes = 0, twice = 0;
  std::set<std::string> seen;
  auto note = [&](const std::string& n) {
    if (bad.size() < 4 && std::find(bad.begin(), bad.end(), n) == bad.end()) bad.push_back(n);
  };
  for (const std::string& n : sync.list(FUSE_ROOT_ID)) {
    if (n.find('/') != std::string::npos || n.empty()) {
      ++slashes;
      note(n);
    } else if (!seen.insert(n).second) {
      ++twice;
      note(n);
    }
  }
  if (slashes == 0 && twice == 0) return "";
  std::string text = fmt::format(
      "the root now lists {} names with a '/' and {} names twice, among them", slashes, twice);
  for (const std::string& n : bad) text += " '" + n + "'";
  return text;
}

// A case: its requests, and a check after the race besides the common ones.
RaceResult run_names(Device& d, const HostileOptions& o,
                     const std::function<std::vector<Build>(Prep&)>& builds,
                     const std::function<std::string(Prep&)>& after = nullptr,
                     bool descriptors = false) {
  std::unique_ptr<Prep> p = prepare(d, o);
  if (descriptors) p->sync.release(p->file, p->file_fh);  // the connection will go
  const RaceStats st = descriptors ? race_descriptors(d, o, p->outside.get())
                                   : race(d, o, p->outside.get(), builds(*p));
  RaceResult r;
  r.what = st.summary();
  if (descriptors) {
    // The device must have refused the bad chains without touching
    // anything else; its connection is gone, hostile.cc tries a new one.
    if (!st.escape.empty()) {
      r.failed = true;
      r.what = fmt::format("ESCAPED the export: {} outside {}; {}", st.escape, p->outside->root(),
                           r.what);
      return r;
    }
    if (p->outside) r.what += "; nothing changed outside " + p->outside->root();
    if (!st.bad_reply.empty()) {
      r.failed = true;
      r.what += "; " + st.bad_reply;
    }
    if (!st.other_queue.empty()) {
      r.failed |= st.other_queue != "ok";
      r.what += st.other_queue == "ok" ? "; queue 1 of the attacked connection still served"
                                       : "; queue 1 of the attacked connection: " + st.other_queue;
    }
    return r;
  }
  if (!st.escape.empty()) {
    r.failed = true;
    r.what = fmt::format("ESCAPED the export after {} requests: {} outside {}; {}", st.escape_after,
                         st.escape, p->outside->root(), r.what);
    return r;
  }
  if (p->outside) r.what += "; nothing changed outside " + p->outside->root();
  if (!st.bad_reply.empty()) {
    r.failed = true;
    r.what += "; an inconsistent reply: " + st.bad_reply;
  }
  if (st.stalled) {
    r.failed = true;
    r.what += fmt::format("; the queue stopped answering with requests in flight");
    return r;
  }
  try {
    if (std::string bad = bad_names(p->sync); !bad.empty()) {
      r.failed = true;
      r.what += "; " + bad;
    } else {
      r.what += "; no name with a '/', none listed twice";
    }
    if (after) {
      if (std::string e = after(*p); !e.empty()) {
        r.failed = true;
        r.what += "; " + e;
      }
    }
    p->sync.release(p->file, p->file_fh);
  } catch (const std::exception& e) {
    r.failed = true;
    r.what += std::string("; checking afterwards failed: ") + e.what();
  }
  return r;
}

// Both twins of `leaf` through the parent and through the symlink, for a
// builder of one name.
std::vector<Build> each_way(Prep& p, const std::string& leaf,
                            std::function<void(Slot&, uint64_t, const std::string&)> one) {
  std::vector<Build> b;
  for (auto pair : {p.through_parent(leaf), p.through_symlink(leaf)}) {
    b.push_back([pair, one](Slot& s, uint64_t u, bool hostile) {
      one(s, u, hostile ? pair.second : pair.first);
    });
  }
  return b;
}

// The xattr namespaces the device refused before the race must still hold
// nothing afterwards.
struct XattrFilters {
  bool skip = false;     // the device serves no xattrs
  bool trusted = false;  // trusted.* refused to a non-root uid
  bool unknown = false;  // an unknown namespace refused
  bool guard = false;    // kGuardName set by root before the race
};

constexpr char kUserName[] = "user.abcdpfsrace";     // same length as the two below
constexpr char kTrustedName[] = "trusted.dpfsrace";  // needs CAP_SYS_ADMIN
constexpr char kUnknownName[] = "invalid.dpfsrace";  // no such namespace
constexpr char kGuardName[] = "trusted.dpfskeep";    // root sets it, uid 1000 may not remove it
constexpr uint32_t kTenantUid = 1000;

const std::vector<RaceCase>& cases() {
  static const std::vector<RaceCase> all = [] {
    std::vector<RaceCase> c;
    auto add = [&](const char* name, const char* text,
                   std::function<RaceResult(Device&, const HostileOptions&)> f) {
      c.push_back({{name, text}, std::move(f)});
    };
    add("race-mkdir", "MKDIR names flipped between xx-x and ../x or ab/x (ab: a symlink out)",
        [](Device& d, const HostileOptions& o) {
          return run_names(d, o, [](Prep& p) {
            return each_way(p, p.fresh("race-escape-mkdir"),
                            [](Slot& s, uint64_t u, const std::string& n) {
                              build_mkdir(s, u, FUSE_ROOT_ID, n);
                            });
          });
        });
    add("race-create", "CREATE names flipped the same way", [](Device& d, const HostileOptions& o) {
      return run_names(d, o, [](Prep& p) {
        return each_way(
            p, p.fresh("race-escape-create"), [](Slot& s, uint64_t u, const std::string& n) {
              build_create(s, u, FUSE_ROOT_ID, n, O_WRONLY | O_CREAT | O_EXCL, S_IFREG | 0644);
            });
      });
    });
    add("race-mknod", "MKNOD names flipped the same way", [](Device& d, const HostileOptions& o) {
      return run_names(d, o, [](Prep& p) {
        return each_way(
            p, p.fresh("race-escape-mknod"),
            [](Slot& s, uint64_t u, const std::string& n) { build_mknod(s, u, FUSE_ROOT_ID, n); });
      });
    });
    add("race-symlink", "SYMLINK names and targets flipped (the target's NUL too)",
        [](Device& d, const HostileOptions& o) {
          return run_names(d, o, [](Prep& p) {
            auto b = each_way(p, p.fresh("race-escape-symlink"),
                              [](Slot& s, uint64_t u, const std::string& n) {
                                build_symlink(s, u, FUSE_ROOT_ID, n, "race-symlink-target");
                              });
            // The target alone: its NUL moves, its bytes change.
            const auto name = p.through_parent(p.fresh("race-escape-symlink-2"));
            b.push_back([name](Slot& s, uint64_t u, bool hostile) {
              build_symlink(s, u, FUSE_ROOT_ID, hostile ? name.second : name.first,
                            hostile ? std::string_view("/etc/../../x\0abcdef", 19)
                                    : std::string_view("race-target\0abcdefg", 19));
            });
            return b;
          });
        });
    add("race-link", "LINK names flipped the same way", [](Device& d, const HostileOptions& o) {
      return run_names(d, o, [](Prep& p) {
        const uint64_t file = p.file;
        return each_way(p, p.fresh("race-escape-link"),
                        [file](Slot& s, uint64_t u, const std::string& n) {
                          build_link(s, u, file, FUSE_ROOT_ID, n);
                        });
      });
    });
    add("race-unlink", "UNLINK and RMDIR of canaries outside, through .. and through ab/",
        [](Device& d, const HostileOptions& o) {
          return run_names(d, o, [](Prep& p) {
            auto b = each_way(p, "race-canary-file", [](Slot& s, uint64_t u, const std::string& n) {
              build_unlink(s, u, FUSE_ROOT_ID, n);
            });
            auto r = each_way(p, "race-canary-dir", [](Slot& s, uint64_t u, const std::string& n) {
              build_rmdir(s, u, FUSE_ROOT_ID, n);
            });
            b.insert(b.end(), r.begin(), r.end());
            return b;
          });
        });
    add("race-rename", "RENAME and RENAME2 moving a canary in and a file out",
        [](Device& d, const HostileOptions& o) {
          return run_names(d, o, [](Prep& p) {
            std::vector<Build> b;
            const std::string moved_in = p.fresh("race-moved-in");
            for (std::optional<uint32_t> flags :
                 {std::optional<uint32_t>(), std::optional<uint32_t>(0u),
                  std::optional<uint32_t>(uint32_t(RENAME_NOREPLACE))}) {
              // A host file moved in: the source flips.
              for (auto in :
                   {p.through_parent("race-canary-move"), p.through_symlink("race-canary-move")}) {
                b.push_back([in, flags, moved_in](Slot& s, uint64_t u, bool hostile) {
                  build_rename(s, u, FUSE_ROOT_ID, hostile ? in.second : in.first, moved_in, flags);
                });
              }
              // An export file moved out: the target flips; harmless, the
              // file is renamed onto itself.
              for (auto out : {p.through_parent(p.fresh("race-move-out")),
                               p.through_symlink(p.fresh("race-move-out"))}) {
                b.push_back([out, flags](Slot& s, uint64_t u, bool hostile) {
                  build_rename(s, u, FUSE_ROOT_ID, out.first, hostile ? out.second : out.first,
                               flags);
                });
              }
            }
            return b;
          });
        });
    add("race-xattr",
        "xattr names flipped (uid 1000): SETXATTR and GETXATTR user.* to trusted.* and to an "
        "unknown namespace, REMOVEXATTR user.* to a trusted.* xattr root set",
        [](Device& d, const HostileOptions& o) {
          auto filters = std::make_shared<XattrFilters>();
          return run_names(
              d, o,
              [filters](Prep& p) {
                // What the device refuses when nobody races.
                for (const char* n : {kTrustedName, kUnknownName, kGuardName}) {
                  p.sync.removexattr(p.file, n);
                }
                const int trusted = p.sync.setxattr(p.file, kTrustedName, kTenantUid);
                filters->skip = trusted == ENOSYS;
                filters->trusted = trusted != 0;
                filters->unknown = p.sync.setxattr(p.file, kUnknownName, kTenantUid) != 0;
                if (!filters->trusted) p.sync.removexattr(p.file, kTrustedName);
                if (!filters->unknown) p.sync.removexattr(p.file, kUnknownName);
                // An xattr root set, which uid 1000 may not remove.
                filters->guard = filters->trusted && p.sync.setxattr(p.file, kGuardName, 0) == 0;
                std::vector<Build> b;
                const uint64_t file = p.file;
                for (const std::string hostile : {kTrustedName, kUnknownName}) {
                  b.push_back([file, hostile](Slot& s, uint64_t u, bool h) {
                    build_setxattr(s, u, file, h ? hostile : kUserName, "raced-value");
                    set_uid(s, kTenantUid);
                  });
                  b.push_back([file, hostile](Slot& s, uint64_t u, bool h) {
                    build_getxattr(s, u, file, h ? hostile : kUserName, 64);
                    set_uid(s, kTenantUid);
                  });
                }
                // Also makes SETXATTR create the name again and again.
                b.push_back([file](Slot& s, uint64_t u, bool h) {
                  build_removexattr(s, u, file, h ? kGuardName : kUserName);
                  set_uid(s, kTenantUid);
                });
                return b;
              },
              [filters](Prep& p) -> std::string {
                if (filters->skip) return "";
                int error = 0;
                const auto names = p.sync.xattrs(p.file, &error);
                if (error) return "LISTXATTR afterwards: " + errno_name(error);
                std::string bad;
                bool guard = false;
                for (const std::string& n : names) {
                  guard |= n == kGuardName;
                  if ((filters->trusted && n == kTrustedName) ||
                      (filters->unknown && n == kUnknownName)) {
                    bad += fmt::format("{}set {}", bad.empty() ? "" : ", ", n);
                  }
                }
                if (filters->guard && !guard) {
                  bad += fmt::format("{}removed {}", bad.empty() ? "" : ", ", kGuardName);
                }
                if (!bad.empty()) {
                  return "the race got past the device's xattr checks: " + bad;
                }
                return "";
              });
        });
    add("race-header", "FUSE header len, nodeid and opcode flipped in GETATTR and MKDIR",
        [](Device& d, const HostileOptions& o) {
          return run_names(d, o, [](Prep& p) {
            const uint64_t file = p.file;
            std::vector<Build> b;
            b.push_back([](Slot& s, uint64_t u, bool h) {
              build_getattr(s, u, FUSE_ROOT_ID);
              if (h) reinterpret_cast<fuse_in_header*>(s.in)->len = 1u << 20;
            });
            b.push_back([](Slot& s, uint64_t u, bool h) {
              build_getattr(s, u, FUSE_ROOT_ID);
              if (h) reinterpret_cast<fuse_in_header*>(s.in)->nodeid = 0x7fffffffffffull;
            });
            b.push_back([](Slot& s, uint64_t u, bool h) {
              build_getattr(s, u, FUSE_ROOT_ID);
              if (h) reinterpret_cast<fuse_in_header*>(s.in)->opcode = FUSE_STATFS;
            });
            b.push_back([](Slot& s, uint64_t u, bool h) {
              build_getattr(s, u, FUSE_ROOT_ID);
              if (h) reinterpret_cast<fuse_in_header*>(s.in)->opcode = 9999;
            });
            // The parent becomes a file, and the length cuts the name.
            b.push_back([file](Slot& s, uint64_t u, bool h) {
              build_mkdir(s, u, FUSE_ROOT_ID, "race-header-dir");
              auto* hdr = reinterpret_cast<fuse_in_header*>(s.in);
              if (h) {
                hdr->nodeid = file;
                hdr->len -= 4;
              }
            });
            return b;
          });
        });
    add("race-sizes", "READ and WRITE sizes, WRITE size against its payload, SETXATTR size",
        [](Device& d, const HostileOptions& o) {
          return run_names(d, o, [](Prep& p) {
            const uint64_t file = p.file, fh = p.file_fh;
            std::vector<Build> b;
            b.push_back([file, fh](Slot& s, uint64_t u, bool h) {
              build_read(s, u, file, fh, 0, 4096);
              if (h) reinterpret_cast<fuse_read_in*>(s.in + kInHeader)->size = 1u << 20;
            });
            b.push_back([file, fh](Slot& s, uint64_t u, bool h) {
              std::memset(s.data, 'r', 4096);
              build_write(s, u, file, fh, 0, 4096);
              if (h) reinterpret_cast<fuse_write_in*>(s.in + kInHeader)->size = 64u << 10;
            });
            b.push_back([file](Slot& s, uint64_t u, bool h) {
              build_setxattr(s, u, file, "user.race-size", "0123456789abcdef");
              if (h) reinterpret_cast<fuse_setxattr_in*>(s.in + kInHeader)->size = 60000;
            });
            return b;
          });
        });
    add("race-descriptors",
        "descriptor addr, len, flags and next rewritten in chains already made available",
        [](Device& d, const HostileOptions& o) { return run_names(d, o, nullptr, nullptr, true); });
    c.back().ends_connection = true;
    return c;
  }();
  return all;
}

}  // namespace

const std::vector<RaceCase>& race_cases() { return cases(); }

}  // namespace dpfs::bench
