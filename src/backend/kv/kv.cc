#include "backend/kv/kv.h"

#include <dirent.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <linux/fs.h>
#include <linux/fuse.h>
#include <spdlog/spdlog.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <ctime>
#include <future>
#include <random>

#include "backend/kv/admin.h"
#include "backend/kv/fan.h"

namespace dpfs {
namespace {

using kv::Fan;
using kv::Script;

constexpr uint64_t kBlockSize = 4096;
constexpr uint64_t kNameMax = 255;
// Files are at most this large: sizes and offsets stay exact in the
// scripts' Lua numbers (doubles).
constexpr uint64_t kMaxFileSize = 1ull << 50;
// Directory entries' sequence numbers (READDIR offsets) count exactly in
// Lua below this.
constexpr uint64_t kMaxSeq = 1ull << 53;
// Chunk commands a walk over many chunks (a truncation, an unlink, an
// fallocate) has in flight at a time.
constexpr uint64_t kChunkBatch = 256;
// Inodes below this get handles that name them (KvBackend::add_handle).
constexpr uint64_t kNamedHandleInodes = 1ull << 39;

std::string num(uint64_t v) { return std::to_string(v); }

int64_t integer(const redisReply* r) {
  if (r == nullptr) return 0;
  if (r->type == REDIS_REPLY_INTEGER) return r->integer;
  if (r->type == REDIS_REPLY_STRING) return std::strtoll(r->str, nullptr, 10);
  return 0;
}

// Element `i` of an array reply, or null past its end: a store's reply is
// foreign bytes, read only as far as it goes.
const redisReply* elem(const redisReply* r, size_t i) {
  return r != nullptr && r->type == REDIS_REPLY_ARRAY && i < r->elements ? r->element[i] : nullptr;
}

// Copies `data` into the iovecs from byte `at` on.
void scatter(std::span<const iovec> dst, size_t at, std::string_view data) {
  for (const iovec& v : dst) {
    if (data.empty()) return;
    if (at >= v.iov_len) {
      at -= v.iov_len;
      continue;
    }
    const size_t n = std::min(v.iov_len - at, data.size());
    std::memcpy(static_cast<char*>(v.iov_base) + at, data.data(), n);
    data.remove_prefix(n);
    at = 0;
  }
}

// `len` bytes of the iovecs from byte `at` on.
std::string gather(std::span<const iovec> src, size_t at, size_t len) {
  std::string out;
  out.reserve(len);
  for (const iovec& v : src) {
    if (out.size() == len) break;
    if (at >= v.iov_len) {
      at -= v.iov_len;
      continue;
    }
    const size_t n = std::min(v.iov_len - at, len - out.size());
    out.append(static_cast<const char*>(v.iov_base) + at, n);
    at = 0;
  }
  return out;
}

void zero(std::span<const iovec> dst, size_t from, size_t to) {
  for (const iovec& v : dst) {
    if (from >= to) return;
    if (from >= v.iov_len) {
      from -= v.iov_len;
      to -= v.iov_len;
      continue;
    }
    const size_t n = std::min(v.iov_len, to) - from;
    std::memset(static_cast<char*>(v.iov_base) + from, 0, n);
    to -= v.iov_len;
    from = 0;
  }
}

}  // namespace

KvBackend::KvBackend(KvOptions options)
    : options_(std::move(options)),
      prefix_(kv::meta_prefix(options_.url.fsname)),
      format_key_(prefix_ + "format") {
  // What the store is, asked once for all three.
  const kv::Topology store = kv::discover(options_.url);
  const kv::FormatInfo info = kv::read_format(options_.url, store);
  chunk_size_ = info.chunk_size;
  if (options_.url.durability == kv::Durability::kLocal) {
    kv::check_local_durability(options_.url, store);
  }
  store_ = std::make_unique<kv::Store>(options_.url, store, std::max(options_.connections, 1u));
  std::random_device rd;
  device_ = fmt::format("{:08x}{:08x}", rd(), rd());
  heartbeat();
  lock_thread_ = std::thread([this] { lock_loop(); });
  spdlog::info("kv: file system {} on {} {}:{} (format {}, {}-byte chunks, {} inodes)",
               options_.url.fsname, store_->cluster() ? "the redis cluster of" : "redis",
               options_.url.servers.front().host, options_.url.servers.front().port, info.version,
               chunk_size_, info.inodes);
}

KvBackend::~KvBackend() {
  {
    std::lock_guard lock(wait_mu_);
    stop_ = true;
  }
  wait_cv_.notify_all();
  lock_thread_.join();
  answer_waiters([](const Waiter&) { return true; }, EIO);
  drop_device_locks();
  store_.reset();
}

Capabilities KvBackend::capabilities() const {
  Capabilities caps;
  // Locks kept in the store (?locks=shared, the default) hold between
  // devices; with ?locks=local each device's kernel keeps its own.
  caps.posix_locks = options_.url.shared_locks;
  caps.flock_locks = options_.url.shared_locks;
  caps.readdirplus = false;
  caps.killpriv_v2 = true;
  return caps;
}

std::vector<std::string> KvBackend::stats() const { return store_->stats(); }

void KvBackend::send(std::string key, std::vector<std::string> argv, kv::Done done, unsigned lane) {
  store_->submit(key, std::move(argv), std::move(done), lane == kAnyLane ? store_->lane() : lane);
}

void KvBackend::eval(Script script, std::string key, std::vector<std::string> args, kv::Done done,
                     unsigned lane) {
  if (lane == kAnyLane) lane = store_->lane();
  auto argv = std::make_shared<std::vector<std::string>>(
      std::vector<std::string>{"EVALSHA", kv::script_sha(script), "1", key});
  argv->insert(argv->end(), std::make_move_iterator(args.begin()),
               std::make_move_iterator(args.end()));
  // The store forgets scripts when it restarts (and a cluster's new master
  // may never have had them): the first EVALSHA after that is NOSCRIPT, and
  // the same words go again, the script whole in place of its hash.
  store_->submit(
      key, argv,
      [this, script, key, lane, argv, done = std::move(done)](const redisReply* r) mutable {
        if (r != nullptr && r->type == REDIS_REPLY_ERROR &&
            std::strncmp(r->str, "NOSCRIPT", 8) == 0) {
          (*argv)[0] = "EVAL";
          (*argv)[1] = kv::script_source(script);
          store_->submit(key, std::move(argv), std::move(done), lane);
          return;
        }
        done(r);
      },
      lane);
}

void KvBackend::run(Script script, std::vector<std::string> args, Then then, unsigned lane) {
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  std::vector<std::string> argv{prefix_, num(uint64_t(now.tv_sec)), num(uint64_t(now.tv_nsec))};
  argv.insert(argv.end(), std::make_move_iterator(args.begin()),
              std::make_move_iterator(args.end()));
  eval(
      script, format_key_, std::move(argv),
      [this, then = std::move(then)](const redisReply* r) mutable {
        if (r == nullptr) return then(EIO, nullptr);
        if (r->type == REDIS_REPLY_ERROR) {
          log_.warn("kv: the store refused a script: {}", kv::printable({r->str, r->len}));
          return then(EIO, nullptr);
        }
        if (r->type != REDIS_REPLY_ARRAY || r->elements == 0 ||
            r->element[0]->type != REDIS_REPLY_INTEGER) {
          return then(EIO, nullptr);
        }
        const int64_t status = r->element[0]->integer;
        if (status != 0) return then(status > 0 && status < 4096 ? int(status) : EIO, nullptr);
        then(0, r);
      },
      lane);
}

void KvBackend::run_chunk(Script script, uint64_t ino, uint64_t index,
                          std::vector<std::string> args,
                          util::UniqueFunction<void(int, int64_t)> then, unsigned lane) {
  eval(
      script, kv::chunk_key(options_.url.fsname, ino, index), std::move(args),
      [this, then = std::move(then)](const redisReply* r) mutable {
        if (r == nullptr || r->type != REDIS_REPLY_INTEGER) {
          if (r != nullptr && r->type == REDIS_REPLY_ERROR) {
            log_.warn("kv: the store refused a chunk script: {}", kv::printable({r->str, r->len}));
          }
          return then(EIO, 0);
        }
        then(0, r->integer);
      },
      lane);
}

void KvBackend::run_chunks(Script script, uint64_t ino, const std::vector<uint64_t>& indexes,
                           const std::function<std::vector<std::string>(uint64_t)>& args,
                           util::UniqueFunction<void(int, int64_t)> then, unsigned lane) {
  if (indexes.empty()) return then(0, 0);
  auto grew = std::make_shared<std::atomic<int64_t>>(0);
  auto fan = std::make_shared<Fan>(indexes.size(), [grew, then = std::move(then)](int e) mutable {
    then(e, grew->load(std::memory_order_relaxed));
  });
  for (const uint64_t c : indexes) {
    run_chunk(
        script, ino, c, args(c),
        [grew, fan](int e, int64_t d) {
          grew->fetch_add(d, std::memory_order_relaxed);
          fan->one(e);
        },
        lane);
  }
}

Entry KvBackend::entry_from(const redisReply* r, size_t at) const {
  Entry e;
  auto field = [&](size_t i) { return at + i < r->elements ? integer(r->element[at + i]) : 0; };
  e.ino = uint64_t(field(0));
  e.generation = 0;
  struct stat& st = e.attr;
  st = {};
  st.st_ino = e.ino;
  st.st_mode = mode_t(field(1));
  st.st_uid = uid_t(field(2));
  st.st_gid = gid_t(field(3));
  st.st_nlink = nlink_t(field(4));
  st.st_size = off_t(field(5));
  st.st_rdev = dev_t(field(6));
  st.st_atim = {time_t(field(7)), long(field(8))};
  st.st_mtim = {time_t(field(9)), long(field(10))};
  st.st_ctim = {time_t(field(11)), long(field(12))};
  st.st_blksize = blksize_t(kBlockSize);
  st.st_blocks = blkcnt_t((uint64_t(field(13)) + 511) / 512);
  e.entry_timeout = options_.entry_timeout;
  e.attr_timeout = options_.attr_timeout;
  return e;
}

// --- Names ------------------------------------------------------------------

void KvBackend::lookup(const Context&, uint64_t parent, std::string_view name, EntryReply reply) {
  if (int e = check_component(name); e != 0) return reply.error(e);
  run(Script::kLookup, {num(parent), std::string(name)},
      [this, reply = std::move(reply)](int error, const redisReply* r) mutable {
        if (error != 0) return reply.error(error);
        answer_entry(reply, entry_from(r, 1));
      });
}

void KvBackend::getattr(const Context&, uint64_t ino, std::optional<uint64_t>, AttrReply reply) {
  run(Script::kGetattr, {num(ino)},
      [this, reply = std::move(reply)](int error, const redisReply* r) mutable {
        if (error != 0) return reply.error(error);
        reply.ok(entry_from(r, 1).attr, options_.attr_timeout);
      });
}

void KvBackend::mknod(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
                      uint32_t rdev, uint32_t umask, EntryReply reply) {
  if (int e = check_component(name); e != 0) return reply.error(e);
  const uint32_t type = mode & S_IFMT;
  if (type != S_IFREG && type != S_IFCHR && type != S_IFBLK && type != S_IFIFO &&
      type != S_IFSOCK) {
    return reply.error(EINVAL);
  }
  run(Script::kMknode,
      {num(parent), std::string(name), num(type | (mode & 07777 & ~umask)), num(ctx.uid),
       num(ctx.gid), num(rdev), ""},
      [this, reply = std::move(reply)](int error, const redisReply* r) mutable {
        if (error != 0) return reply.error(error);
        answer_entry(reply, entry_from(r, 1));
      });
}

void KvBackend::mkdir(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
                      uint32_t umask, EntryReply reply) {
  if (int e = check_component(name); e != 0) return reply.error(e);
  run(Script::kMknode,
      {num(parent), std::string(name), num(S_IFDIR | (mode & 07777 & ~umask)), num(ctx.uid),
       num(ctx.gid), "0", ""},
      [this, reply = std::move(reply)](int error, const redisReply* r) mutable {
        if (error != 0) return reply.error(error);
        answer_entry(reply, entry_from(r, 1));
      });
}

void KvBackend::symlink(const Context& ctx, uint64_t parent, std::string_view name,
                        std::string_view target, EntryReply reply) {
  if (int e = check_component(name); e != 0) return reply.error(e);
  if (target.empty() || target.size() >= PATH_MAX) return reply.error(ENAMETOOLONG);
  run(Script::kMknode,
      {num(parent), std::string(name), num(S_IFLNK | 0777), num(ctx.uid), num(ctx.gid), "0",
       std::string(target)},
      [this, reply = std::move(reply)](int error, const redisReply* r) mutable {
        if (error != 0) return reply.error(error);
        answer_entry(reply, entry_from(r, 1));
      });
}

void KvBackend::readlink(const Context&, uint64_t ino, ReadlinkReply reply) {
  const std::string key = prefix_ + "i:" + num(ino);
  send(key, {"HMGET", key, "mode", "target"},
       [reply = std::move(reply)](const redisReply* r) mutable {
         if (r == nullptr || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
           return reply.error(EIO);
         }
         if (r->element[0]->type != REDIS_REPLY_STRING) return reply.error(ESTALE);
         if ((uint32_t(integer(r->element[0])) & S_IFMT) != S_IFLNK ||
             r->element[1]->type != REDIS_REPLY_STRING) {
           return reply.error(EINVAL);
         }
         reply.ok(std::string_view(r->element[1]->str, r->element[1]->len));
       });
}

void KvBackend::link(const Context&, uint64_t ino, uint64_t new_parent, std::string_view new_name,
                     EntryReply reply) {
  if (int e = check_component(new_name); e != 0) return reply.error(e);
  run(Script::kLink, {num(ino), num(new_parent), std::string(new_name)},
      [this, reply = std::move(reply)](int error, const redisReply* r) mutable {
        if (error != 0) return reply.error(error);
        answer_entry(reply, entry_from(r, 1));
      });
}

void KvBackend::unlink(const Context&, uint64_t parent, std::string_view name, StatusReply reply) {
  if (int e = check_component(name); e != 0) return reply.error(e);
  run(Script::kUnlink, {num(parent), std::string(name)},
      [this, reply = std::move(reply)](int error, const redisReply* r) mutable {
        if (error != 0) return reply.error(error);
        const uint64_t ino = uint64_t(integer(elem(r, 1)));
        const uint64_t left = uint64_t(integer(elem(r, 2)));
        reply.ok();
        if (left == 0) unlinked(ino);
      });
}

void KvBackend::rmdir(const Context&, uint64_t parent, std::string_view name, StatusReply reply) {
  if (int e = check_component(name); e != 0) return reply.error(e);
  run(Script::kRmdir, {num(parent), std::string(name)},
      [reply = std::move(reply)](int error, const redisReply*) mutable {
        if (error != 0) return reply.error(error);
        reply.ok();
      });
}

void KvBackend::rename(const Context&, uint64_t parent, std::string_view name, uint64_t new_parent,
                       std::string_view new_name, uint32_t flags, StatusReply reply) {
  if (int e = check_component(name); e != 0) return reply.error(e);
  if (int e = check_component(new_name); e != 0) return reply.error(e);
  if (flags & ~uint32_t(RENAME_NOREPLACE | RENAME_EXCHANGE)) return reply.error(EINVAL);
  if ((flags & RENAME_NOREPLACE) && (flags & RENAME_EXCHANGE)) return reply.error(EINVAL);
  run(Script::kRename,
      {num(parent), std::string(name), num(new_parent), std::string(new_name), num(flags)},
      [this, reply = std::move(reply)](int error, const redisReply* r) mutable {
        if (error != 0) return reply.error(error);
        const uint64_t replaced = uint64_t(integer(elem(r, 1)));
        reply.ok();
        if (replaced != 0 && integer(elem(r, 2)) == 0) unlinked(replaced);
      });
}

// --- Inodes without names -----------------------------------------------------

void KvBackend::unlinked(uint64_t ino) {
  {
    std::lock_guard lock(mu_);
    auto it = held_.find(ino);
    if (it != held_.end() && !it->second.unused()) {
      it->second.doomed = true;
      return;
    }
  }
  free_inode(ino);
}

void KvBackend::answer_entry(EntryReply& reply, const Entry& entry) {
  count_lookup(entry.ino);
  reply.ok(entry);
}

uint64_t KvBackend::count_lookup(uint64_t ino) {
  std::lock_guard lock(mu_);
  ++held_[ino].lookups;
  return ino;
}

void KvBackend::forget(uint64_t ino, uint64_t nlookup) {
  bool free = false;
  {
    std::lock_guard lock(mu_);
    auto it = held_.find(ino);
    if (it == held_.end()) return;
    it->second.lookups -= std::min(nlookup, it->second.lookups);
    if (!it->second.unused()) return;
    free = it->second.doomed;
    held_.erase(it);
  }
  if (free) free_inode(ino);
}

void KvBackend::free_inode(uint64_t ino) {
  run(Script::kFree, {num(ino)}, [this, ino](int error, const redisReply*) {
    if (error != 0) return;
    drop_chunks(ino, 0, last_index(), [](int) {});
  });
}

uint64_t KvBackend::last_index() const { return (kMaxFileSize - 1) / chunk_size_; }

struct KvBackend::DropWalk {
  uint64_t ino = 0;
  uint64_t next = 0;  // the first index not looked at yet
  uint64_t last = 0;
  util::UniqueFunction<void(int)> then;
  unsigned lane = 0;
};

struct KvBackend::ChunkWalk {
  Script script{};
  uint64_t ino = 0;
  uint64_t next = 0;  // the first index not done yet
  uint64_t last = 0;
  std::function<std::vector<std::string>(uint64_t)> args;
  util::UniqueFunction<void(int, int64_t)> then;
  int64_t grew = 0;
  unsigned lane = 0;
};

void KvBackend::drop_chunks(uint64_t ino, uint64_t first, uint64_t last,
                            util::UniqueFunction<void(int)> then) {
  if (first > last) return then(0);
  auto walk = std::make_shared<DropWalk>();
  walk->ino = ino;
  walk->next = first;
  walk->last = last;
  walk->then = std::move(then);
  walk->lane = store_->lane();
  drop_batch(std::move(walk));
}

void KvBackend::drop_batch(std::shared_ptr<DropWalk> w) {
  // The chunk index names the chunks that exist: a sparse file's few, not
  // every index up to its size (2^50 bytes of holes are 2^34 indexes).
  run(
      Script::kChunkList, {num(w->ino), num(w->next), num(w->last), num(kChunkBatch)},
      [this, w](int error, const redisReply* r) {
        if (error != 0) return w->then(error);
        std::vector<uint64_t> indexes;
        for (size_t i = 1; i < r->elements; ++i) {
          const int64_t v = integer(r->element[i]);
          // In order and in range, or the store lies (and a walk could go
          // round for ever).
          if (v < int64_t(w->next) || uint64_t(v) > w->last ||
              (!indexes.empty() && uint64_t(v) <= indexes.back()) || i > kChunkBatch) {
            return w->then(EIO);
          }
          indexes.push_back(uint64_t(v));
        }
        if (indexes.empty()) return w->then(0);
        const uint64_t upto = indexes.back();
        run_chunks(
            Script::kChunkDrop, w->ino, indexes,
            [](uint64_t) { return std::vector<std::string>{}; },
            [this, w, upto](int e, int64_t freed) {
              if (e != 0) return w->then(e);
              run(
                  Script::kChunksGone,
                  {num(w->ino), num(w->next), num(upto), std::to_string(freed)},
                  [this, w, upto](int e2, const redisReply*) {
                    if (e2 != 0) return w->then(e2);
                    if (upto >= w->last) return w->then(0);
                    w->next = upto + 1;
                    drop_batch(w);
                  },
                  w->lane);
            },
            w->lane);
      },
      w->lane);
}

void KvBackend::each_chunk(Script script, uint64_t ino, uint64_t first, uint64_t last,
                           std::function<std::vector<std::string>(uint64_t)> args,
                           util::UniqueFunction<void(int, int64_t)> then) {
  auto walk = std::make_shared<ChunkWalk>();
  walk->script = script;
  walk->ino = ino;
  walk->next = first;
  walk->last = last;
  walk->args = std::move(args);
  walk->then = std::move(then);
  walk->lane = store_->lane();
  chunk_batch(std::move(walk));
}

void KvBackend::chunk_batch(std::shared_ptr<ChunkWalk> w) {
  // kChunkBatch in flight at a time: a range of a million chunks must not
  // queue a million commands at once.
  if (w->next > w->last) return w->then(0, w->grew);
  const uint64_t upto = std::min(w->last, w->next + kChunkBatch - 1);
  std::vector<uint64_t> batch;
  for (uint64_t c = w->next; c <= upto; ++c) batch.push_back(c);
  run_chunks(
      w->script, w->ino, batch, w->args,
      [this, w, upto](int e, int64_t grew) {
        w->grew += grew;
        if (e != 0) return w->then(e, w->grew);
        w->next = upto + 1;
        chunk_batch(w);
      },
      w->lane);
}

void KvBackend::clear_past(uint64_t ino, uint64_t size, uint64_t old_size,
                           util::UniqueFunction<void(int)> then) {
  if (size >= old_size) return then(0);
  const uint64_t first = size / chunk_size_;
  const uint64_t keep = size % chunk_size_;
  // The chunk the new end falls in keeps its head (a later extension reads
  // zeros past it); every chunk after goes, those allocated past the old
  // end too. Then the inode's byte count.
  auto rest = [this, ino, first, keep, then = std::move(then)](int error, int64_t trimmed) mutable {
    if (error != 0) return then(error);
    drop_chunks(ino, keep != 0 ? first + 1 : first, last_index(),
                [this, ino, trimmed, then = std::move(then)](int e) mutable {
                  if (e != 0 || trimmed == 0) return then(e);
                  run(Script::kGrow, {num(ino), std::to_string(trimmed)},
                      [then = std::move(then)](int e2, const redisReply*) mutable { then(e2); });
                });
  };
  if (keep == 0) return rest(0, 0);
  run_chunk(Script::kChunkTrim, ino, first, {num(keep)}, std::move(rest));
}

// --- Attributes -------------------------------------------------------------

void KvBackend::set_size(const Context&, uint64_t ino, uint64_t size, uint32_t valid, Then then) {
  // The data past the new end goes first: a crash in between leaves the
  // old size with zeros in it, never stale bytes under a later extension.
  run(Script::kGetattr, {num(ino)},
      [this, ino, size, valid, then = std::move(then)](int error, const redisReply* r) mutable {
        if (error != 0) return then(error, nullptr);
        const uint64_t old = uint64_t(integer(elem(r, 6)));
        clear_past(ino, size, old, [this, ino, size, valid, then = std::move(then)](int e) mutable {
          if (e != 0) return then(e, nullptr);
          run(Script::kSetattr,
              {num(ino), num(valid | SetAttr::kSize), "0", "0", "0", num(size), "0", "0", "0", "0",
               "0", "0"},
              std::move(then));
        });
      });
}

void KvBackend::setattr(const Context&, uint64_t ino, const SetAttr& attr, AttrReply reply) {
  if ((attr.valid & SetAttr::kSize) && attr.size > kMaxFileSize) return reply.error(EFBIG);
  auto answer = [this, reply = std::move(reply)](int error, const redisReply* r) mutable {
    if (error != 0) return reply.error(error);
    reply.ok(entry_from(r, 2).attr, options_.attr_timeout);
  };
  std::vector<std::string> args{num(ino),
                                num(attr.valid),
                                num(attr.mode),
                                num(attr.uid),
                                num(attr.gid),
                                num(attr.size),
                                std::to_string(int64_t(attr.atime.tv_sec)),
                                num(uint64_t(attr.atime.tv_nsec)),
                                std::to_string(int64_t(attr.mtime.tv_sec)),
                                num(uint64_t(attr.mtime.tv_nsec)),
                                std::to_string(int64_t(attr.ctime.tv_sec)),
                                num(uint64_t(attr.ctime.tv_nsec))};
  if (!(attr.valid & SetAttr::kSize))
    return run(Script::kSetattr, std::move(args), std::move(answer));
  // A truncation: the data first (set_size), then everything else at once.
  run(Script::kGetattr, {num(ino)},
      [this, ino, size = attr.size, args = std::move(args), answer = std::move(answer)](
          int error, const redisReply* r) mutable {
        if (error != 0) return answer(error, nullptr);
        const uint32_t type = uint32_t(integer(elem(r, 2))) & S_IFMT;
        if (type == S_IFDIR) return answer(EISDIR, nullptr);
        if (type != S_IFREG) return answer(EINVAL, nullptr);
        const uint64_t old = uint64_t(integer(elem(r, 6)));
        clear_past(ino, size, old,
                   [this, args = std::move(args), answer = std::move(answer)](int e) mutable {
                     if (e != 0) return answer(e, nullptr);
                     run(Script::kSetattr, std::move(args), std::move(answer));
                   });
      });
}

void KvBackend::memory(util::UniqueFunction<void(int, uint64_t, uint64_t)> then) {
  // The memory of every master: a cluster's capacity is their sum.
  struct Sum {
    std::mutex mu;
    uint64_t used = 0;
    uint64_t total = 0;
  };
  auto sum = std::make_shared<Sum>();
  const std::vector<uint16_t> masters = store_->master_slots();
  auto fan = std::make_shared<Fan>(
      masters.size(),
      [sum, then = std::move(then)](int error) mutable { then(error, sum->used, sum->total); });
  for (const uint16_t slot : masters) {
    store_->submit_slot(
        slot, {"INFO", "memory"},
        [sum, fan](const redisReply* r) {
          if (r == nullptr || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_STATUS)) {
            return fan->one(EIO);
          }
          const std::string_view text(r->str, r->len);
          const uint64_t used = kv::info_field(text, "used_memory");
          uint64_t total = kv::info_field(text, "maxmemory");
          if (total == 0) total = kv::info_field(text, "total_system_memory");
          {
            std::lock_guard lock(sum->mu);
            sum->used += used;
            sum->total += std::max(total, used);
          }
          fan->one(0);
        },
        store_->lane());
  }
}

void KvBackend::statfs(const Context&, uint64_t, StatfsReply reply) {
  memory([reply = std::move(reply)](int error, uint64_t used, uint64_t total) mutable {
    if (error != 0) return reply.error(error);
    struct statvfs st {};
    st.f_bsize = kBlockSize;
    st.f_frsize = kBlockSize;
    st.f_blocks = total / kBlockSize;
    st.f_bfree = (total - used) / kBlockSize;
    st.f_bavail = st.f_bfree;
    st.f_files = 1ull << 40;
    st.f_ffree = st.f_files;
    st.f_favail = st.f_ffree;
    st.f_namemax = kNameMax;
    reply.ok(st);
  });
}

// --- Files ------------------------------------------------------------------

uint64_t KvBackend::add_handle(uint64_t ino) {
  std::lock_guard lock(mu_);
  for (;;) {
    const uint64_t n = next_fh_.fetch_add(1, std::memory_order_relaxed);
    const uint64_t fh = ino < kNamedHandleInodes ? (ino << 24) | (n & 0xffffff) : n | (1ull << 63);
    // A counter that went round: that one is still open.
    if (!handles_.emplace(fh, ino).second) continue;
    ++held_[ino].open;
    return fh;
  }
}

bool KvBackend::known_handle(uint64_t ino, uint64_t fh) {
  std::lock_guard lock(mu_);
  auto it = handles_.find(fh);
  if (it != handles_.end()) return it->second == ino;
  // A predecessor's handle of the inode it names: taken over.
  if (!resumed_ || (fh >> 63) != 0 || (fh >> 24) != ino || ino >= kNamedHandleInodes) return false;
  handles_.emplace(fh, ino);
  ++held_[ino].open;
  return true;
}

void KvBackend::resumed() {
  std::lock_guard lock(mu_);
  resumed_ = true;
}

bool KvBackend::drop_handle(uint64_t ino, uint64_t fh) {
  std::lock_guard lock(mu_);
  auto it = handles_.find(fh);
  if (it == handles_.end() || it->second != ino) return false;
  handles_.erase(it);
  written_.erase(fh);
  auto h = held_.find(ino);
  if (h == held_.end()) return false;
  if (h->second.open > 0) --h->second.open;
  if (!h->second.unused()) return false;
  const bool doomed = h->second.doomed;
  held_.erase(h);
  return doomed;
}

void KvBackend::open(const Context& ctx, uint64_t ino, uint32_t flags, OpenReply reply) {
  run(Script::kGetattr, {num(ino)},
      [this, ctx, ino, flags, reply = std::move(reply)](int error, const redisReply* r) mutable {
        if (error != 0) return reply.error(error);
        const uint32_t type = uint32_t(integer(elem(r, 2))) & S_IFMT;
        if (type == S_IFDIR) return reply.error(EISDIR);
        if (!(flags & O_TRUNC) || type != S_IFREG) return reply.ok(add_handle(ino));
        // O_TRUNC comes here (FUSE_ATOMIC_O_TRUNC); mtime and ctime change
        // even for an empty file.
        const uint32_t valid = ctx.kill_suidgid ? uint32_t(SetAttr::kKillSuidgid) : 0;
        set_size(ctx, ino, 0, valid,
                 [this, ino, reply = std::move(reply)](int e, const redisReply*) mutable {
                   if (e != 0) return reply.error(e);
                   reply.ok(add_handle(ino));
                 });
      });
}

void KvBackend::create(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
                       uint32_t umask, uint32_t flags, CreateReply reply) {
  if (int e = check_component(name); e != 0) return reply.error(e);
  run(Script::kMknode,
      {num(parent), std::string(name), num(S_IFREG | (mode & 07777 & ~umask)), num(ctx.uid),
       num(ctx.gid), "0", ""},
      [this, ctx, parent, name = std::string(name), flags, reply = std::move(reply)](
          int error, const redisReply* r) mutable {
        if (error == 0) {
          const Entry e = entry_from(r, 1);
          return reply.ok(e, add_handle(count_lookup(e.ino)));
        }
        if (error != EEXIST || (flags & O_EXCL)) return reply.error(error);
        // The name appeared since the kernel looked: open(2) semantics.
        run(Script::kLookup, {num(parent), name},
            [this, ctx, flags, reply = std::move(reply)](int err, const redisReply* r2) mutable {
              if (err != 0) return reply.error(err);
              const Entry e = entry_from(r2, 1);
              const uint32_t type = e.attr.st_mode & S_IFMT;
              if (type == S_IFDIR) return reply.error(EISDIR);
              if (type != S_IFREG) return reply.error(EEXIST);
              if (!(flags & O_TRUNC)) return reply.ok(e, add_handle(count_lookup(e.ino)));
              const uint32_t valid = ctx.kill_suidgid ? uint32_t(SetAttr::kKillSuidgid) : 0;
              set_size(ctx, e.ino, 0, valid,
                       [this, reply = std::move(reply)](int e2, const redisReply* r3) mutable {
                         if (e2 != 0) return reply.error(e2);
                         const Entry now = entry_from(r3, 2);
                         reply.ok(now, add_handle(count_lookup(now.ino)));
                       });
            });
      });
}

void KvBackend::read(const Context&, uint64_t ino, uint64_t fh, uint64_t offset, uint32_t size,
                     std::span<const iovec> dst, ReadReply reply) {
  if (!known_handle(ino, fh)) return reply.error(EBADF);
  if (size == 0 || offset >= kMaxFileSize) return reply.ok(0);
  // The size and every chunk piece, sent together. On one server they go
  // on one connection and the store answers them in order, so the size is
  // the one the pieces had. A cluster's chunks are on other nodes: a READ
  // that races a WRITE which extends the file may see its new size with
  // zeros where the new bytes go (as a READ racing a WRITE may see either).
  struct State {
    std::atomic<uint64_t> file_size{0};
    ReadReply reply;
  };
  auto st = std::make_shared<State>();
  st->reply = std::move(reply);
  const uint64_t first = offset / chunk_size_;
  const uint64_t last = (offset + size - 1) / chunk_size_;
  auto fan = std::make_shared<Fan>(size_t(last - first) + 2, [st, offset, size](int error) {
    if (error != 0) return st->reply.error(error);
    const uint64_t file_size = st->file_size.load(std::memory_order_relaxed);
    const uint64_t n = file_size > offset ? std::min<uint64_t>(size, file_size - offset) : 0;
    st->reply.ok(size_t(n));
  });
  const unsigned lane = store_->lane();
  const std::string key = prefix_ + "i:" + num(ino);
  send(
      key, {"HGET", key, "size"},
      [st, fan](const redisReply* r) {
        if (r == nullptr || r->type == REDIS_REPLY_ERROR) return fan->one(EIO);
        if (r->type == REDIS_REPLY_NIL) return fan->one(ESTALE);
        st->file_size.store(uint64_t(integer(r)), std::memory_order_relaxed);
        fan->one(0);
      },
      lane);
  for (uint64_t c = first; c <= last; ++c) {
    const uint64_t from = std::max(offset, c * chunk_size_);
    const uint64_t to = std::min(offset + size, (c + 1) * chunk_size_);  // exclusive
    const size_t at = size_t(from - offset);
    const size_t len = size_t(to - from);
    const uint64_t in_chunk = from - c * chunk_size_;
    std::string chunk = kv::chunk_key(options_.url.fsname, ino, c);
    send(
        chunk, {"GETRANGE", chunk, num(in_chunk), num(in_chunk + len - 1)},
        [fan, dst, at, len](const redisReply* r) {
          if (r == nullptr || r->type != REDIS_REPLY_STRING) return fan->one(EIO);
          // A chunk shorter than asked (or none) is a hole: zeros.
          const size_t got = std::min(size_t(r->len), len);
          scatter(dst, at, std::string_view(r->str, got));
          zero(dst, at + got, at + len);
          fan->one(0);
        },
        lane);
  }
}

void KvBackend::write(const Context&, uint64_t ino, uint64_t fh, uint64_t offset,
                      std::span<const iovec> src, uint32_t write_flags, WriteReply reply) {
  if (!known_handle(ino, fh)) return reply.error(EBADF);
  size_t size = 0;
  for (const iovec& v : src) size += v.iov_len;
  if (size == 0) return reply.ok(0);
  if (offset + size > kMaxFileSize) return reply.error(EFBIG);
  if (options_.url.durability == kv::Durability::kReplica) {
    std::lock_guard lock(mu_);
    written_.insert(fh);
  }
  // One server: the chunks' pieces, the size and the times in one script,
  // atomically. A cluster's chunks are on other nodes: each piece first,
  // then the size and times once they answered, with what they grew (a
  // crash between leaves data past the end, which is never read, never a
  // size without its data).
  const uint64_t first = offset / chunk_size_;
  const uint64_t last = (offset + size - 1) / chunk_size_;
  const bool kill = (write_flags & FUSE_WRITE_KILL_SUIDGID) != 0;
  std::vector<std::string> args{num(ino), num(offset + size), kill ? "1" : "0", "0"};
  auto piece = [&](uint64_t c) {
    const uint64_t from = std::max(offset, c * chunk_size_);
    const uint64_t to = std::min(offset + size, (c + 1) * chunk_size_);
    return std::pair{num(from - c * chunk_size_),
                     gather(src, size_t(from - offset), size_t(to - from))};
  };
  auto answer = [size, reply = std::move(reply)](int e, const redisReply*) mutable {
    if (e != 0) return reply.error(e);
    reply.ok(size);
  };
  if (!store_->cluster()) {
    // No index to list: the script adds the chunks it makes to the index.
    args.push_back("0");
    for (uint64_t c = first; c <= last; ++c) {
      auto [at, bytes] = piece(c);
      args.push_back(kv::chunk_key(options_.url.fsname, ino, c));
      args.push_back(num(c));
      args.push_back(std::move(at));
      args.push_back(std::move(bytes));
    }
    return run(Script::kWrite, std::move(args), std::move(answer));
  }
  // The chunks written elsewhere go into the index with the size.
  args.push_back(num(last - first + 1));
  for (uint64_t c = first; c <= last; ++c) args.push_back(num(c));
  std::vector<uint64_t> chunks;
  for (uint64_t c = first; c <= last; ++c) chunks.push_back(c);
  const unsigned lane = store_->lane();
  run_chunks(
      Script::kChunkWrite, ino, chunks,
      [&piece](uint64_t c) {
        auto [at, bytes] = piece(c);
        return std::vector<std::string>{std::move(at), std::move(bytes)};
      },
      [this, lane, args = std::move(args), answer = std::move(answer)](int error,
                                                                       int64_t grew) mutable {
        if (error != 0) return answer(error, nullptr);
        args[3] = std::to_string(grew);
        run(Script::kWrite, std::move(args), std::move(answer), lane);
      },
      lane);
}

void KvBackend::fallocate(const Context&, uint64_t ino, uint64_t fh, uint32_t mode, uint64_t offset,
                          uint64_t length, StatusReply reply) {
  if (!known_handle(ino, fh)) return reply.error(EBADF);
  if (length == 0) return reply.error(EINVAL);
  if (offset >= kMaxFileSize || length > kMaxFileSize - offset) return reply.error(EFBIG);
  const bool keep_size = (mode & FALLOC_FL_KEEP_SIZE) != 0;
  // What makes sense in a store that keeps data in memory: allocating
  // writes the zeros (a later write then needs no more memory), punching
  // frees them, zeroing writes them.
  Script script;
  switch (mode & ~uint32_t(FALLOC_FL_KEEP_SIZE)) {
    case 0:
      script = Script::kChunkAlloc;
      break;
    case FALLOC_FL_PUNCH_HOLE:
      if (!keep_size) return reply.error(EOPNOTSUPP);
      script = Script::kChunkPunch;
      break;
    case FALLOC_FL_ZERO_RANGE:
      script = Script::kChunkZero;
      break;
    default:
      return reply.error(EOPNOTSUPP);  // collapse, insert, unshare
  }
  const uint64_t end = offset + length;
  const uint64_t first = offset / chunk_size_;
  const uint64_t last = (end - 1) / chunk_size_;
  const uint64_t chunk = chunk_size_;
  // In-chunk [from, to) of chunk `c`.
  auto span = [offset, end, chunk](uint64_t c) {
    return std::pair{std::max(offset, c * chunk) - c * chunk,
                     std::min(end, (c + 1) * chunk) - c * chunk};
  };
  auto args = [script, span](uint64_t c) {
    const auto [from, to] = span(c);
    if (script == Script::kChunkAlloc) return std::vector<std::string>{num(to)};
    return std::vector<std::string>{num(from), num(to)};
  };
  // Then the size (unless KEEP_SIZE), the times and the byte count, with
  // the chunks made listed in the index.
  auto finish = [this, ino, end, keep_size, first, last, script, reply = std::move(reply)](
                    int error, int64_t grew) mutable {
    if (error != 0) return reply.error(error);
    std::vector<std::string> a{num(ino), keep_size ? "0" : num(end), "0", std::to_string(grew)};
    if (script == Script::kChunkPunch) {
      a.push_back("0");
    } else {
      a.push_back(num(last - first + 1));
      for (uint64_t c = first; c <= last; ++c) a.push_back(num(c));
    }
    run(Script::kWrite, std::move(a), [reply = std::move(reply)](int e, const redisReply*) mutable {
      if (e != 0) return reply.error(e);
      reply.ok();
    });
  };
  if (script == Script::kChunkPunch) {
    // Whole chunks go, only those the index lists (a hole's worth of
    // indexes may be huge); a partial chunk at either end is zeroed in
    // place. Then finish, with what they all freed.
    auto partial = [&span, chunk](uint64_t c) {
      const auto [from, to] = span(c);
      return from != 0 || to != chunk;
    };
    std::vector<uint64_t> ends;
    if (partial(first)) ends.push_back(first);
    if (last != first && partial(last)) ends.push_back(last);
    const uint64_t whole_first = partial(first) ? first + 1 : first;
    const uint64_t whole_last = last != first && partial(last) ? last - 1 : last;
    auto freed = std::make_shared<std::atomic<int64_t>>(0);
    auto fan = std::make_shared<Fan>(2, [freed, finish = std::move(finish)](int error) mutable {
      finish(error, freed->load());
    });
    run_chunks(
        Script::kChunkPunch, ino, ends, args,
        [fan, freed](int e, int64_t d) {
          freed->fetch_add(d, std::memory_order_relaxed);
          fan->one(e);
        },
        store_->lane());
    // drop_chunks counts what it frees in the inode itself.
    return drop_chunks(ino, whole_first, whole_last, [fan](int e) { fan->one(e); });
  }
  // Writing zeros takes memory: refused up front when the store has not
  // that much free (a tenant's one call must not fill it).
  memory([this, script, ino, first, last, length, args, finish = std::move(finish)](
             int error, uint64_t used, uint64_t total) mutable {
    if (error != 0) return finish(error, 0);
    if (length > total - std::min(used, total)) return finish(ENOSPC, 0);
    each_chunk(script, ino, first, last, args, std::move(finish));
  });
}

void KvBackend::flush(const Context&, uint64_t ino, uint64_t fh, uint64_t lock_owner,
                      StatusReply reply) {
  if (!known_handle(ino, fh)) return reply.error(EBADF);
  // close(2) drops every POSIX lock the closing process holds on the file;
  // a close after writes returns once they are as durable as promised.
  unlock_owner(ino, lock_owner, LockFlavor::kPosix, [this, fh, reply = std::move(reply)]() mutable {
    bool wrote = false;
    {
      std::lock_guard lock(mu_);
      wrote = written_.erase(fh) != 0;
    }
    if (!wrote) return reply.ok();
    sync_data(std::move(reply));
  });
}

void KvBackend::sync_data(StatusReply reply) {
  if (options_.url.durability != kv::Durability::kReplica) return reply.ok();
  store_->wait_replicas(1, [this, reply = std::move(reply)](int error) mutable {
    if (error != 0) {
      log_.warn("kv: a replica did not confirm the data within the timeout (durability=replica)");
      return reply.error(error);
    }
    reply.ok();
  });
}

void KvBackend::release(const Context&, uint64_t ino, uint64_t fh, uint32_t, uint64_t lock_owner,
                        ReleaseFlock flock, StatusReply reply) {
  answer_waiters([&](const Waiter& w) { return w.ino == ino && w.fh == fh; }, EBADF);
  const bool last_of_doomed = drop_handle(ino, fh);
  auto done = [this, ino, last_of_doomed, reply = std::move(reply)]() mutable {
    reply.ok();
    if (last_of_doomed) free_inode(ino);
  };
  if (flock == ReleaseFlock::kUnlock) {
    return unlock_owner(ino, lock_owner, LockFlavor::kFlock, std::move(done));
  }
  done();
}

void KvBackend::fsync(const Context&, uint64_t ino, uint64_t fh, SyncMode, StatusReply reply) {
  if (!known_handle(ino, fh)) return reply.error(EBADF);
  {
    std::lock_guard lock(mu_);
    written_.erase(fh);
  }
  sync_data(std::move(reply));
}

// --- Directories ------------------------------------------------------------

void KvBackend::opendir(const Context&, uint64_t ino, uint32_t, OpenReply reply) {
  run(Script::kGetattr, {num(ino)},
      [this, ino, reply = std::move(reply)](int error, const redisReply* r) mutable {
        if (error != 0) return reply.error(error);
        if ((uint32_t(integer(elem(r, 2))) & S_IFMT) != S_IFDIR) return reply.error(ENOTDIR);
        reply.ok(add_handle(ino), 0);
      });
}

void KvBackend::readdir(const Context&, uint64_t ino, uint64_t fh, uint64_t offset,
                        DirReply reply) {
  if (!known_handle(ino, fh)) return reply.error(EBADF);
  // About as many entries as the tenant's buffer holds (24 bytes of header
  // and a short name each), at least a few.
  const size_t want = std::max<size_t>(reply.size() / 32, 8);
  run(Script::kReaddir, {num(ino), num(std::max<uint64_t>(offset, 2)), num(want)},
      [ino, offset, reply = std::move(reply)](int error, const redisReply* r) mutable {
        if (error != 0) return reply.error(error);
        const uint64_t parent = uint64_t(integer(elem(r, 1)));
        if (offset < 1 && !reply.add(".", ino, DT_DIR, 1)) return reply.done();
        if (offset < 2 && !reply.add("..", parent, DT_DIR, 2)) return reply.done();
        // Each entry's offset (its seq) must be past the last: a store whose
        // listing does not move forward would make it endless.
        uint64_t last = std::max<uint64_t>(offset, 2);
        for (size_t i = 2; i + 3 < r->elements; i += 4) {
          const redisReply* name = r->element[i];
          if (name->type != REDIS_REPLY_STRING) break;
          const uint64_t seq = uint64_t(integer(r->element[i + 3]));
          if (seq <= last || seq >= kMaxSeq) break;
          last = seq;
          // Names come from the store: only what a CREATE could have made.
          const std::string_view n(name->str, name->len);
          if (check_component(n) != 0 || n == "." || n == "..") continue;
          if (!reply.add(n, uint64_t(integer(r->element[i + 2])),
                         uint32_t(integer(r->element[i + 1])), seq)) {
            break;
          }
        }
        reply.done();
      });
}

void KvBackend::releasedir(const Context&, uint64_t ino, uint64_t fh, StatusReply reply) {
  if (!known_handle(ino, fh)) return reply.error(EBADF);
  const bool last_of_doomed = drop_handle(ino, fh);
  reply.ok();
  if (last_of_doomed) free_inode(ino);
}

void KvBackend::fsyncdir(const Context&, uint64_t ino, uint64_t fh, SyncMode, StatusReply reply) {
  if (!known_handle(ino, fh)) return reply.error(EBADF);
  sync_data(std::move(reply));
}

// --- Extended attributes ----------------------------------------------------

void KvBackend::setxattr(const Context&, uint64_t ino, std::string_view name,
                         std::span<const std::byte> value, uint32_t flags, StatusReply reply) {
  if (int e = check_xattr_namespace(name); e != 0) return reply.error(e);
  if (flags & ~uint32_t(XATTR_CREATE | XATTR_REPLACE)) return reply.error(EINVAL);
  run(Script::kSetxattr,
      {num(ino), std::string(name),
       std::string(reinterpret_cast<const char*>(value.data()), value.size()), num(flags)},
      [reply = std::move(reply)](int error, const redisReply*) mutable {
        if (error != 0) return reply.error(error);
        reply.ok();
      });
}

void KvBackend::getxattr(const Context&, uint64_t ino, std::string_view name, XattrReply reply) {
  if (int e = check_xattr_namespace(name); e != 0) return reply.error(e);
  run(Script::kGetxattr, {num(ino), std::string(name)},
      [reply = std::move(reply)](int error, const redisReply* r) mutable {
        if (error != 0) return reply.error(error);
        if (r->elements < 2 || r->element[1]->type != REDIS_REPLY_STRING) return reply.error(EIO);
        reply.ok(std::string_view(r->element[1]->str, r->element[1]->len));
      });
}

void KvBackend::listxattr(const Context& ctx, uint64_t ino, XattrReply reply) {
  run(Script::kListxattr, {num(ino)},
      [uid = ctx.uid, reply = std::move(reply)](int error, const redisReply* r) mutable {
        if (error != 0) return reply.error(error);
        std::string names;
        for (size_t i = 1; i < r->elements; ++i) {
          if (r->element[i]->type != REDIS_REPLY_STRING) continue;
          const std::string_view n(r->element[i]->str, r->element[i]->len);
          // trusted.* is for CAP_SYS_ADMIN only; root stands for it here.
          if (uid != 0 && n.starts_with("trusted.")) continue;
          names.append(n);
          names.push_back('\0');
        }
        reply.ok(std::string_view(names));
      });
}

void KvBackend::removexattr(const Context&, uint64_t ino, std::string_view name,
                            StatusReply reply) {
  if (int e = check_xattr_namespace(name); e != 0) return reply.error(e);
  run(Script::kRemovexattr, {num(ino), std::string(name)},
      [reply = std::move(reply)](int error, const redisReply*) mutable {
        if (error != 0) return reply.error(error);
        reply.ok();
      });
}

// --- Locks ------------------------------------------------------------------

namespace {

// The store's numbers for a lock's range: Lua counts exactly up to 2^53, and
// anything past that is "to the end of the file" (-1) as OFFSET_MAX is.
constexpr uint64_t kExact = 1ull << 53;
std::string lock_end(uint64_t end) { return end >= kExact ? "-1" : std::to_string(end); }
constexpr auto kLease = std::chrono::seconds(15);
constexpr auto kHeartbeat = std::chrono::seconds(3);
constexpr auto kRetry = std::chrono::milliseconds(20);

}  // namespace

std::string KvBackend::lock_owner(uint64_t owner, LockFlavor flavor) const {
  return fmt::format("{}:{}:{}", device_, owner, flavor == LockFlavor::kPosix ? 'p' : 'f');
}

void KvBackend::heartbeat() {
  const auto expiry = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch() + kLease)
                          .count();
  const std::string key = prefix_ + "devices";
  send(key, {"ZADD", key, std::to_string(expiry), device_}, [](const redisReply*) {});
}

void KvBackend::getlk(const Context&, uint64_t ino, uint64_t fh, uint64_t owner, const Lock& lock,
                      LockReply reply) {
  if (!known_handle(ino, fh)) return reply.error(EBADF);
  if (lock.start >= kExact) return reply.error(EINVAL);
  run(Script::kGetlk,
      {num(ino), lock_owner(owner, LockFlavor::kPosix), "p", num(lock.start), lock_end(lock.end),
       num(lock.type)},
      [lock, reply = std::move(reply)](int error, const redisReply* r) mutable {
        if (error != 0) return reply.error(error);
        Lock out = lock;
        if (integer(elem(r, 1)) == -2) {
          out.type = F_UNLCK;
          return reply.ok(out);
        }
        out.start = uint64_t(integer(elem(r, 1)));
        const int64_t end = integer(elem(r, 2));
        out.end = end < 0 ? uint64_t(INT64_MAX) : uint64_t(end);
        out.type = uint32_t(integer(elem(r, 3)));
        out.pid = uint32_t(integer(elem(r, 4)));
        reply.ok(out);
      });
}

void KvBackend::setlk(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t owner,
                      const Lock& lock, LockWait wait, LockFlavor flavor, StatusReply reply) {
  if (!known_handle(ino, fh)) return reply.error(EBADF);
  if (lock.type != F_RDLCK && lock.type != F_WRLCK && lock.type != F_UNLCK) {
    return reply.error(EINVAL);
  }
  if (lock.start >= kExact || lock.end < lock.start) return reply.error(EINVAL);
  const std::string name = lock_owner(owner, flavor);
  if (lock.type != F_UNLCK) {
    std::lock_guard l(mu_);
    lockers_.emplace(ino, name);
    locked_ = true;
  }
  std::vector<std::string> args{num(ino),
                                name,
                                flavor == LockFlavor::kPosix ? "p" : "f",
                                num(lock.start),
                                lock_end(lock.end),
                                num(lock.type),
                                num(ctx.pid)};
  const bool may_wait = wait == LockWait::kWait && lock.type != F_UNLCK;
  auto attempt = [this, ino, fh, unique = ctx.unique, args, may_wait, reply = std::move(reply)](
                     int error, const redisReply*) mutable {
    if (error == EAGAIN && may_wait) {
      // Tried again by lock_loop() until granted, interrupted or released;
      // unless its INTERRUPT came while this first try was out.
      std::unique_lock l(wait_mu_);
      if (early_interrupts_.take(unique)) {
        l.unlock();
        return reply.error(EINTR);
      }
      Waiter w;
      w.id = next_waiter_++;
      w.ino = ino;
      w.fh = fh;
      w.unique = unique;
      w.args = std::move(args);
      w.reply = std::move(reply);
      waiters_.push_back(std::move(w));
      return;
    }
    if (error != 0) return reply.error(error);
    reply.ok();
  };
  run(Script::kSetlk, args, std::move(attempt));
}

void KvBackend::unlock_owner(uint64_t ino, uint64_t owner, LockFlavor flavor,
                             util::UniqueFunction<void()> then) {
  const std::string name = lock_owner(owner, flavor);
  bool took = false;
  {
    std::lock_guard l(mu_);
    took = lockers_.erase({ino, name}) != 0;
  }
  if (!took) return then();  // it took none here
  run(Script::kUnlockOwner, {num(ino), name},
      [then = std::move(then)](int, const redisReply*) mutable { then(); });
}

void KvBackend::interrupt(uint64_t unique) {
  if (unique == 0) return;
  StatusReply interrupted;
  {
    std::lock_guard l(wait_mu_);
    auto it = std::find_if(waiters_.begin(), waiters_.end(),
                           [unique](const Waiter& w) { return w.unique == unique; });
    if (it == waiters_.end()) {
      // Not waiting (yet): its first try may be on its way to the store.
      early_interrupts_.note(unique);
      return;
    }
    interrupted = std::move(it->reply);
    waiters_.erase(it);
  }
  interrupted.error(EINTR);
}

void KvBackend::answer_waiters(const std::function<bool(const Waiter&)>& pick, int error) {
  std::vector<StatusReply> answered;
  {
    std::lock_guard l(wait_mu_);
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (pick(*it)) {
        answered.push_back(std::move(it->reply));
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (StatusReply& r : answered) r.error(error);
}

void KvBackend::lock_loop() {
  std::unique_lock l(wait_mu_);
  auto next_beat = std::chrono::steady_clock::now() + kHeartbeat;
  while (!stop_) {
    wait_cv_.wait_for(l, kRetry);
    if (stop_) break;
    if (std::chrono::steady_clock::now() >= next_beat) {
      next_beat += kHeartbeat;
      heartbeat();
    }
    // Each waiting SETLKW once more (not one already out), sent outside
    // the mutex: the answers take it.
    std::vector<std::pair<uint64_t, std::vector<std::string>>> tries;
    for (Waiter& w : waiters_) {
      if (w.in_flight) continue;
      w.in_flight = true;
      tries.emplace_back(w.id, w.args);
    }
    l.unlock();
    for (auto& [id, args] : tries) {
      run(Script::kSetlk, std::move(args), [this, id = id](int error, const redisReply*) {
        StatusReply reply;
        {
          std::lock_guard g(wait_mu_);
          auto it = std::find_if(waiters_.begin(), waiters_.end(),
                                 [id](const Waiter& x) { return x.id == id; });
          if (it == waiters_.end()) return;  // answered meanwhile (interrupted)
          if (error == EAGAIN) {
            it->in_flight = false;
            return;
          }
          reply = std::move(it->reply);
          waiters_.erase(it);
        }
        if (error != 0) return reply.error(error);
        reply.ok();
      });
    }
    l.lock();
  }
}

void KvBackend::drop_device_locks() {
  {
    // Nothing to drop (and no store to wait for, when it is gone) unless a
    // lock was taken here since the last time.
    std::lock_guard l(mu_);
    if (!locked_) return;
    locked_ = false;
  }
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> f = done->get_future();
  run(Script::kDropDevice, {device_}, [done](int, const redisReply*) { done->set_value(); });
  const auto deadline = kv::Clock::now() + options_.url.timeout + std::chrono::seconds(1);
  // A worker that drives a lane (DESTROY comes on one) must drive it to
  // see the answer; anyone else waits for the lane's driver.
  const auto answered = [&f] {
    return f.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
  };
  if (!store_->drive_until(answered, deadline)) f.wait_until(deadline);
}

std::unique_ptr<WorkerHook> KvBackend::attach_worker() { return store_->adopt_lane(); }

void KvBackend::destroy() {
  answer_waiters([](const Waiter&) { return true; }, EIO);
  {
    std::lock_guard l(mu_);
    lockers_.clear();
  }
  drop_device_locks();
}

}  // namespace dpfs
