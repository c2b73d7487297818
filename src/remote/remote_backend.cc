#include "remote/remote_backend.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/fuse.h>
#include <linux/limits.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <variant>

#include "fuse/request.h"
#include "fuse/session.h"
#include "util/iov.h"

namespace dpfs::remote {
namespace {

// What we ask the server's session for at INIT; it grants what its backend
// can do. SETXATTR_EXT and MAX_PAGES change how requests are encoded.
constexpr uint64_t kWantedFlags = FUSE_ASYNC_READ | FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS |
                                  FUSE_BIG_WRITES | FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO |
                                  FUSE_WRITEBACK_CACHE | FUSE_MAX_PAGES | FUSE_HANDLE_KILLPRIV_V2 |
                                  FUSE_INIT_EXT | FUSE_SETXATTR_EXT;

// Reply payloads that hold no bulk data fit in this; READLINK, xattrs and
// listings ask for more.
constexpr size_t kSmallReply = 256;
static_assert(sizeof(fuse_entry_out) + sizeof(fuse_open_out) <= kSmallReply);
static_assert(sizeof(fuse_init_out) <= kSmallReply);

// The largest xattr value or name list the kernel moves (XATTR_SIZE_MAX,
// XATTR_LIST_MAX): the whole of it is fetched; the tenant's session answers
// the size probe and ERANGE from it.
constexpr uint32_t kXattrMax = 65536;

double join_timeout(uint64_t sec, uint32_t nsec) {
  return double(sec) + double(std::min<uint32_t>(nsec, 999999999)) / 1e9;
}

struct stat to_stat(const fuse_attr& a) {
  struct stat st {};
  st.st_ino = a.ino;
  st.st_size = off_t(std::min<uint64_t>(a.size, INT64_MAX));
  st.st_blocks = blkcnt_t(std::min<uint64_t>(a.blocks, INT64_MAX));
  st.st_atim = {time_t(a.atime), long(std::min<uint32_t>(a.atimensec, 999999999))};
  st.st_mtim = {time_t(a.mtime), long(std::min<uint32_t>(a.mtimensec, 999999999))};
  st.st_ctim = {time_t(a.ctime), long(std::min<uint32_t>(a.ctimensec, 999999999))};
  st.st_mode = a.mode;
  st.st_nlink = a.nlink;
  st.st_uid = a.uid;
  st.st_gid = a.gid;
  st.st_rdev = a.rdev;
  st.st_blksize = a.blksize;
  return st;
}

Entry to_entry(const fuse_entry_out& e) {
  Entry entry;
  entry.ino = e.nodeid;
  entry.generation = e.generation;
  entry.attr = to_stat(e.attr);
  entry.entry_timeout = join_timeout(e.entry_valid, e.entry_valid_nsec);
  entry.attr_timeout = join_timeout(e.attr_valid, e.attr_valid_nsec);
  return entry;
}

// The errno a reply header answers: 0 for success, -1 for a value no
// errno has (a server's mistake).
int reply_errno(const fuse_out_header& h) {
  if (h.error == 0) return 0;
  return h.error < 0 && h.error > -4096 ? -h.error : -1;
}

// Reads a whole reply struct: exactly sizeof(T) bytes of payload.
template <class T>
bool take(std::span<const char> payload, T* out) {
  if (payload.size() != sizeof(T)) return false;
  std::memcpy(out, payload.data(), sizeof(T));
  return true;
}

// Answers whichever typed reply awaits with `error` (none: nothing).
void error_reply(TypedReply& reply, int error) {
  std::visit(
      [error](auto& r) {
        if constexpr (!std::is_same_v<std::decay_t<decltype(r)>, std::monostate>) r.error(error);
      },
      reply);
}

// A reply's typed answer, if the request awaits that type (it always does
// unless this side mixed up its own requests).
constexpr const char* kWrongType = "a reply of another type than the request's";
template <class R, class Fn>
const char* answer(TypedReply& reply, Fn&& fn) {
  R* r = std::get_if<R>(&reply);
  if (r == nullptr) return kWrongType;
  fn(*r);
  return nullptr;
}

}  // namespace

// --- Call ----------------------------------------------------------------------

// One request in flight to the server: the FUSE request this side encoded
// (in its own buffer: the server sees exactly what was decided here), the
// reply buffer, and the typed reply it will answer. Pooled: its buffers keep
// their capacity from one request to the next.
class RemoteBackend::Call final : public fuse::Request {
 public:
  // A caller that waits for the answer (INIT, DESTROY).
  struct Waiter {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    int error = 0;
    std::vector<char> payload;
  };

  explicit Call(RemoteBackend& backend) : backend_(backend) {}

  void begin(uint32_t opcode, uint64_t nodeid, const Context& ctx) {
    begin(opcode, nodeid, ctx.unique != 0 ? ctx.unique : backend_.fresh_unique());
    header_.uid = ctx.uid;
    header_.gid = ctx.gid;
    header_.pid = ctx.pid;
  }
  void begin(uint32_t opcode, uint64_t nodeid, uint64_t unique) {
    opcode_ = opcode;
    header_ = {};
    header_.opcode = opcode;
    header_.nodeid = nodeid;
    header_.unique = unique;
    in_buf_.resize(sizeof(fuse_in_header));
    asked_ = 0;
    plus_ = false;
    waiter_ = nullptr;  // typed_ is empty: complete() left it so
  }
  template <class T>
  void put(const T& arg) {
    put_bytes(&arg, sizeof(arg));
  }
  void put_bytes(const void* p, size_t n) {
    const size_t at = in_buf_.size();
    in_buf_.resize(at + n);
    if (n != 0) std::memcpy(in_buf_.data() + at, p, n);
  }
  void put_name(std::string_view name) {
    put_bytes(name.data(), name.size());
    in_buf_.push_back('\0');
  }
  // Sends the request, to be answered through `reply`.
  template <class R>
  void send(R reply, size_t capacity, std::span<const iovec> write_src = {},
            std::span<const iovec> read_dst = {}) {
    typed_.emplace<R>(std::move(reply));
    send(capacity, write_src, read_dst);
  }
  void expect(uint32_t asked) { asked_ = asked; }
  void set_plus(bool plus) { plus_ = plus; }
  void set_waiter(Waiter* w) { waiter_ = w; }

  // Sends the request with room for `capacity` reply bytes after the
  // header; `write_src`: a WRITE's payload; `read_dst`: a READ's
  // destination, which takes the reply's data in place. A request that
  // takes no reply (FORGET, INTERRUPT) is sent without a typed reply.
  void send(size_t capacity, std::span<const iovec> write_src = {},
            std::span<const iovec> read_dst = {}) {
    header_.len = uint32_t(in_buf_.size() + iov_length(write_src));
    std::memcpy(in_buf_.data(), &header_, sizeof(header_));
    in_iov_.clear();
    in_iov_.push_back({in_buf_.data(), in_buf_.size()});
    in_iov_.insert(in_iov_.end(), write_src.begin(), write_src.end());
    out_buf_.resize(sizeof(fuse_out_header) + (read_dst.empty() ? capacity : 0));
    out_iov_.clear();
    out_iov_.push_back({out_buf_.data(), out_buf_.size()});
    out_iov_.insert(out_iov_.end(), read_dst.begin(), read_dst.end());
    in = in_iov_;
    out = out_iov_;
    in_is_private = true;  // our own buffer (a WRITE payload is never decided from)
    backend_.forwarder_.forward(*this);
  }

  void complete(size_t reply_len) override;

 private:
  void decode(size_t reply_len);
  RemoteBackend& backend_;
  fuse_in_header header_{};
  uint32_t opcode_ = 0;
  uint32_t asked_ = 0;  // READ size, WRITE length, COPY_FILE_RANGE length
  bool plus_ = false;
  Waiter* waiter_ = nullptr;
  TypedReply typed_;
  std::vector<char> in_buf_, out_buf_;
  std::vector<iovec> in_iov_, out_iov_;
};

void RemoteBackend::Call::complete(size_t reply_len) {
  std::unique_ptr<Call> self(this);
  decode(reply_len);
  typed_ = std::monostate{};
  backend_.give_back(std::move(self));
}

void RemoteBackend::Call::decode(size_t reply_len) {
  if (!opcode_takes_reply(opcode_)) return;
  fuse_out_header h{};
  // The forwarder answers every failure with a header of its own.
  if (reply_len >= sizeof(h)) {
    std::memcpy(&h, out_buf_.data(), sizeof(h));
  } else {
    h.error = -EIO;
  }
  const size_t length = reply_len >= sizeof(h) ? reply_len - sizeof(h) : 0;
  // The payload in our buffer (none of a READ's data, which went to `dst`).
  const std::span<const char> payload(out_buf_.data() + sizeof(h),
                                      std::min(length, out_buf_.size() - sizeof(h)));
  if (waiter_ != nullptr) {
    std::lock_guard lock(waiter_->mu);
    const int error = reply_errno(h);
    waiter_->error = error < 0 ? EIO : error;
    waiter_->payload.assign(payload.begin(), payload.end());
    waiter_->done = true;
    waiter_->cv.notify_all();
    return;
  }
  std::vector<uint64_t> unlisted;
  if (const char* bad =
          decode_reply({opcode_, asked_, plus_}, h, length, payload, typed_, &unlisted)) {
    backend_.peer_log_.warn("remote: a malformed {} reply from the server ({}); answering EIO",
                            fuse::opcode_name(opcode_), bad);
    error_reply(typed_, EIO);
  }
  // Entries the server counted but the tenant's buffer had no room for:
  // the tenant never saw them, so the server forgets them.
  for (uint64_t ino : unlisted) backend_.forget(ino, 1);
}

const char* decode_reply(const ReplyShape& shape, const fuse_out_header& h, size_t length,
                         std::span<const char> payload, TypedReply& reply,
                         std::vector<uint64_t>* unlisted) {
  if (std::holds_alternative<std::monostate>(reply)) return "no request awaits it";
  if (const int error = reply_errno(h); error != 0) {
    if (error < 0) return "an errno out of range";
    if (length != 0) return "a payload with an error";
    error_reply(reply, error);
    return nullptr;
  }
  switch (shape.opcode) {
    case FUSE_LOOKUP:
    case FUSE_SYMLINK:
    case FUSE_MKNOD:
    case FUSE_MKDIR:
    case FUSE_LINK: {
      fuse_entry_out e;
      if (!take(payload, &e)) return "entry size";
      return answer<EntryReply>(reply, [&](EntryReply& r) { r.ok(to_entry(e)); });
    }
    case FUSE_GETATTR:
    case FUSE_SETATTR: {
      fuse_attr_out a;
      if (!take(payload, &a)) return "attr size";
      return answer<AttrReply>(reply, [&](AttrReply& r) {
        r.ok(to_stat(a.attr), join_timeout(a.attr_valid, a.attr_valid_nsec));
      });
    }
    case FUSE_OPEN:
    case FUSE_OPENDIR: {
      fuse_open_out o;
      if (!take(payload, &o)) return "open size";
      return answer<OpenReply>(reply, [&](OpenReply& r) { r.ok(o.fh, o.open_flags); });
    }
    case FUSE_CREATE:
    case FUSE_TMPFILE: {
      struct {
        fuse_entry_out e;
        fuse_open_out o;
      } c;
      static_assert(sizeof(c) == sizeof(fuse_entry_out) + sizeof(fuse_open_out));
      if (!take(payload, &c)) return "create size";
      return answer<CreateReply>(
          reply, [&](CreateReply& r) { r.ok(to_entry(c.e), c.o.fh, c.o.open_flags); });
    }
    case FUSE_READ:
      // The data is in the destination already (READ's payload is not ours).
      if (length > shape.asked) return "more data than asked for";
      return answer<ReadReply>(reply, [&](ReadReply& r) { r.ok(length); });
    case FUSE_WRITE:
    case FUSE_COPY_FILE_RANGE: {
      fuse_write_out w;
      if (!take(payload, &w)) return "write size";
      if (w.size > shape.asked) return "more bytes written than sent";
      return answer<WriteReply>(reply, [&](WriteReply& r) { r.ok(w.size); });
    }
    case FUSE_READLINK:
      if (payload.empty() || payload.size() > PATH_MAX) return "link target size";
      return answer<ReadlinkReply>(
          reply, [&](ReadlinkReply& r) { r.ok(std::string_view(payload.data(), payload.size())); });
    case FUSE_GETXATTR:
    case FUSE_LISTXATTR:
      if (payload.size() > kXattrMax) return "xattr size";
      return answer<XattrReply>(reply, [&](XattrReply& r) { r.ok(std::as_bytes(payload)); });
    case FUSE_STATFS: {
      fuse_statfs_out s;
      if (!take(payload, &s)) return "statfs size";
      struct statvfs st {};
      st.f_blocks = s.st.blocks;
      st.f_bfree = s.st.bfree;
      st.f_bavail = s.st.bavail;
      st.f_files = s.st.files;
      st.f_ffree = s.st.ffree;
      st.f_favail = s.st.ffree;
      st.f_bsize = s.st.bsize;
      st.f_frsize = s.st.frsize;
      st.f_namemax = s.st.namelen;
      return answer<StatfsReply>(reply, [&](StatfsReply& r) { r.ok(st); });
    }
    case FUSE_GETLK: {
      fuse_lk_out l;
      if (!take(payload, &l)) return "lock size";
      return answer<LockReply>(reply, [&](LockReply& r) {
        r.ok(Lock{l.lk.start, l.lk.end, l.lk.type, l.lk.pid});
      });
    }
    case FUSE_LSEEK: {
      fuse_lseek_out l;
      if (!take(payload, &l)) return "lseek size";
      return answer<LseekReply>(reply, [&](LseekReply& r) { r.ok(l.offset); });
    }
    case FUSE_READDIR:
    case FUSE_READDIRPLUS: {
      DirReply* dir = std::get_if<DirReply>(&reply);
      if (dir == nullptr) return kWrongType;
      if (!decode_dirents(payload, shape.plus, *dir, unlisted)) return "dirent";
      dir->done();
      return nullptr;
    }
    default:  // every other opcode answers a bare status
      if (length != 0) return "a payload where none belongs";
      return answer<StatusReply>(reply, [](StatusReply& r) { r.ok(); });
  }
}

bool decode_dirents(std::span<const char> payload, bool plus, DirReply& reply,
                    std::vector<uint64_t>* unlisted) {
  const size_t entry_size = plus ? sizeof(fuse_entry_out) : 0;
  const size_t head = entry_size + FUSE_NAME_OFFSET;
  // Each record, or false at the first malformed one.
  auto next = [&](size_t at, fuse_entry_out* e, fuse_dirent* d, std::string_view* name) {
    if (payload.size() - at < head) return false;
    if (plus) std::memcpy(e, payload.data() + at, sizeof(*e));
    std::memcpy(d, payload.data() + at + entry_size, FUSE_NAME_OFFSET);
    if (d->namelen == 0 || d->namelen > NAME_MAX) return false;
    if (payload.size() - at < FUSE_DIRENT_ALIGN(head + size_t(d->namelen))) return false;
    *name = std::string_view(payload.data() + at + head, d->namelen);
    return name->find('\0') == std::string_view::npos && name->find('/') == std::string_view::npos;
  };
  fuse_entry_out e{};
  fuse_dirent d{};
  std::string_view name;
  // The whole listing is checked before any of it is added: a malformed
  // one adds nothing.
  for (size_t at = 0; at < payload.size(); at += FUSE_DIRENT_ALIGN(head + size_t(d.namelen))) {
    if (!next(at, &e, &d, &name)) return false;
  }
  bool room = true;
  for (size_t at = 0; at < payload.size(); at += FUSE_DIRENT_ALIGN(head + size_t(d.namelen))) {
    next(at, &e, &d, &name);
    if (room) {
      if (plus) {
        Entry entry = to_entry(e);
        entry.attr.st_ino = d.ino;
        room = reply.add_plus(name, entry, d.off);
      } else {
        room = reply.add(name, d.ino, d.type, d.off);
      }
    }
    // The kernel counts no lookup for "." and ".." (nor does the server).
    if (!room && plus && e.nodeid != 0 && name != "." && name != "..") {
      unlisted->push_back(e.nodeid);
    }
  }
  return true;
}

// --- RemoteBackend -----------------------------------------------------------------

RemoteBackend::RemoteBackend(ForwarderOptions options) : forwarder_(std::move(options)) {}

RemoteBackend::~RemoteBackend() { forwarder_.stop(); }

std::unique_ptr<RemoteBackend::Call> RemoteBackend::take_call() {
  {
    util::MutexLock lock(pool_mu_);
    if (!pool_.empty()) {
      std::unique_ptr<Call> call = std::move(pool_.back());
      pool_.pop_back();
      return call;
    }
  }
  return std::make_unique<Call>(*this);
}

RemoteBackend::Call* RemoteBackend::start(uint32_t opcode, uint64_t nodeid, const Context& ctx) {
  Call* call = take_call().release();  // the forwarder's until complete()
  call->begin(opcode, nodeid, ctx);
  return call;
}

RemoteBackend::Call* RemoteBackend::start(uint32_t opcode, uint64_t nodeid, uint64_t unique) {
  Call* call = take_call().release();
  call->begin(opcode, nodeid, unique);
  return call;
}

void RemoteBackend::give_back(std::unique_ptr<Call> call) {
  util::MutexLock lock(pool_mu_);
  pool_.push_back(std::move(call));
}

uint64_t RemoteBackend::fresh_unique() {
  return next_unique_.fetch_add(1, std::memory_order_relaxed);
}

RemoteBackend::Negotiated RemoteBackend::negotiated() const {
  util::MutexLock lock(state_mu_);
  return negotiated_;
}

// Sends `opcode` (INIT or DESTROY) and waits for the server's answer;
// returns its errno and, for INIT, its payload.
int RemoteBackend::exchange(uint32_t opcode, std::vector<char>* payload) {
  Call::Waiter waiter;
  Call* call = start(opcode, 0, fresh_unique());
  call->set_waiter(&waiter);
  if (opcode == FUSE_INIT) {
    fuse_init_in in{};
    in.major = FUSE_KERNEL_VERSION;
    in.minor = FUSE_KERNEL_MINOR_VERSION;
    in.max_readahead = 1u << 20;
    in.flags = uint32_t(kWantedFlags);
    in.flags2 = uint32_t(kWantedFlags >> 32);
    call->put(in);
  }
  call->send(kSmallReply);
  std::unique_lock lock(waiter.mu);
  waiter.cv.wait(lock, [&] { return waiter.done; });
  if (payload != nullptr) *payload = std::move(waiter.payload);
  return waiter.error;
}

void RemoteBackend::negotiate() {
  std::lock_guard once(negotiate_mu_);
  if (negotiated().done) return;
  std::vector<char> payload;
  const int error = exchange(FUSE_INIT, &payload);
  fuse_init_out out{};
  const bool whole =
      payload.size() == sizeof(out) || payload.size() == FUSE_COMPAT_22_INIT_OUT_SIZE;
  if (error != 0 || !whole) {
    spdlog::warn(
        "remote: the server did not negotiate ({}); offering the tenant no locks and no "
        "writeback cache until it does",
        error != 0 ? std::strerror(error) : "a malformed INIT reply");
    return;
  }
  std::memcpy(&out, payload.data(), payload.size());
  uint64_t flags = out.flags;
  if (payload.size() == sizeof(out) && (out.flags & FUSE_INIT_EXT)) {
    flags |= uint64_t(out.flags2) << 32;
  }
  if (out.major != FUSE_KERNEL_VERSION) {
    spdlog::warn("remote: the server speaks FUSE {}.{}; offering the tenant the least", out.major,
                 out.minor);
    return;
  }
  util::MutexLock lock(state_mu_);
  negotiated_ = {true, flags, out.max_write};
}

Capabilities RemoteBackend::capabilities() const {
  // Logically const: the server's grant is what the answer is made of.
  const_cast<RemoteBackend*>(this)->negotiate();
  const Negotiated n = negotiated();
  Capabilities caps;
  caps.posix_locks = (n.flags & FUSE_POSIX_LOCKS) != 0;
  caps.flock_locks = (n.flags & FUSE_FLOCK_LOCKS) != 0;
  caps.readdirplus = !n.done || (n.flags & FUSE_DO_READDIRPLUS) != 0;
  caps.writeback_cache = (n.flags & FUSE_WRITEBACK_CACHE) != 0;
  caps.killpriv_v2 = (n.flags & FUSE_HANDLE_KILLPRIV_V2) != 0;
  caps.max_write = n.max_write;
  return caps;
}

void RemoteBackend::destroy() {
  std::lock_guard once(negotiate_mu_);
  if (const int error = exchange(FUSE_DESTROY, nullptr)) {
    spdlog::warn("remote: DESTROY on the server: {}", std::strerror(error));
  }
  util::MutexLock lock(state_mu_);
  negotiated_ = {};
}

std::vector<std::string> RemoteBackend::stats() const {
  const Forwarder::Counters& c = forwarder_.counters();
  return {fmt::format("remote: {} requests forwarded, {} resent, {} failed, {} connections made",
                      c.forwarded.load(), c.resent.load(), c.failed.load(), c.connects.load())};
}

// --- Operations --------------------------------------------------------------
// Each encodes the FUSE request the server's session decodes (fuse/session.cc).

namespace {

constexpr size_t kEntryReply = sizeof(fuse_entry_out);

}  // namespace

void RemoteBackend::lookup(const Context& ctx, uint64_t parent, std::string_view name,
                           EntryReply reply) {
  Call* call = start(FUSE_LOOKUP, parent, ctx);
  call->put_name(name);
  call->send(std::move(reply), kEntryReply);
}

void RemoteBackend::forget(uint64_t ino, uint64_t nlookup) {
  Call* call = start(FUSE_FORGET, ino, fresh_unique());
  call->put(fuse_forget_in{nlookup});
  call->send(0);
}

void RemoteBackend::symlink(const Context& ctx, uint64_t parent, std::string_view name,
                            std::string_view target, EntryReply reply) {
  Call* call = start(FUSE_SYMLINK, parent, ctx);
  call->put_name(name);
  call->put_name(target);
  call->send(std::move(reply), kEntryReply);
}

void RemoteBackend::mknod(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
                          uint32_t rdev, uint32_t umask, EntryReply reply) {
  Call* call = start(FUSE_MKNOD, parent, ctx);
  fuse_mknod_in a{};
  a.mode = mode;
  a.rdev = rdev;
  a.umask = umask;
  call->put(a);
  call->put_name(name);
  call->send(std::move(reply), kEntryReply);
}

void RemoteBackend::mkdir(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
                          uint32_t umask, EntryReply reply) {
  Call* call = start(FUSE_MKDIR, parent, ctx);
  fuse_mkdir_in a{};
  a.mode = mode;
  a.umask = umask;
  call->put(a);
  call->put_name(name);
  call->send(std::move(reply), kEntryReply);
}

void RemoteBackend::link(const Context& ctx, uint64_t ino, uint64_t new_parent,
                         std::string_view new_name, EntryReply reply) {
  Call* call = start(FUSE_LINK, new_parent, ctx);
  call->put(fuse_link_in{ino});
  call->put_name(new_name);
  call->send(std::move(reply), kEntryReply);
}

void RemoteBackend::unlink(const Context& ctx, uint64_t parent, std::string_view name,
                           StatusReply reply) {
  Call* call = start(FUSE_UNLINK, parent, ctx);
  call->put_name(name);
  call->send(std::move(reply), 0);
}

void RemoteBackend::rmdir(const Context& ctx, uint64_t parent, std::string_view name,
                          StatusReply reply) {
  Call* call = start(FUSE_RMDIR, parent, ctx);
  call->put_name(name);
  call->send(std::move(reply), 0);
}

void RemoteBackend::rename(const Context& ctx, uint64_t parent, std::string_view name,
                           uint64_t new_parent, std::string_view new_name, uint32_t flags,
                           StatusReply reply) {
  Call* call = start(FUSE_RENAME2, parent, ctx);
  fuse_rename2_in a{};
  a.newdir = new_parent;
  a.flags = flags;
  call->put(a);
  call->put_name(name);
  call->put_name(new_name);
  call->send(std::move(reply), 0);
}

void RemoteBackend::getattr(const Context& ctx, uint64_t ino, std::optional<uint64_t> fh,
                            AttrReply reply) {
  Call* call = start(FUSE_GETATTR, ino, ctx);
  fuse_getattr_in a{};
  if (fh) {
    a.getattr_flags = FUSE_GETATTR_FH;
    a.fh = *fh;
  }
  call->put(a);
  call->send(std::move(reply), sizeof(fuse_attr_out));
}

void RemoteBackend::setattr(const Context& ctx, uint64_t ino, const SetAttr& attr,
                            AttrReply reply) {
  Call* call = start(FUSE_SETATTR, ino, ctx);
  // SetAttr's bits are FATTR_*'s (the session passes them through).
  static_assert(SetAttr::kMode == FATTR_MODE && SetAttr::kKillSuidgid == FATTR_KILL_SUIDGID &&
                SetAttr::kCtime == FATTR_CTIME && SetAttr::kAtimeNow == FATTR_ATIME_NOW);
  fuse_setattr_in a{};
  a.valid = attr.valid;
  a.fh = attr.fh;
  a.size = attr.size;
  a.lock_owner = attr.lock_owner;
  a.atime = uint64_t(attr.atime.tv_sec);
  a.mtime = uint64_t(attr.mtime.tv_sec);
  a.ctime = uint64_t(attr.ctime.tv_sec);
  a.atimensec = uint32_t(attr.atime.tv_nsec);
  a.mtimensec = uint32_t(attr.mtime.tv_nsec);
  a.ctimensec = uint32_t(attr.ctime.tv_nsec);
  a.mode = attr.mode;
  a.uid = attr.uid;
  a.gid = attr.gid;
  call->put(a);
  call->send(std::move(reply), sizeof(fuse_attr_out));
}

void RemoteBackend::readlink(const Context& ctx, uint64_t ino, ReadlinkReply reply) {
  Call* call = start(FUSE_READLINK, ino, ctx);
  call->send(std::move(reply), PATH_MAX);
}

void RemoteBackend::access(const Context& ctx, uint64_t ino, uint32_t mask, StatusReply reply) {
  Call* call = start(FUSE_ACCESS, ino, ctx);
  fuse_access_in a{};
  a.mask = mask;
  call->put(a);
  call->send(std::move(reply), 0);
}

void RemoteBackend::statfs(const Context& ctx, uint64_t ino, StatfsReply reply) {
  Call* call = start(FUSE_STATFS, ino, ctx);
  call->send(std::move(reply), sizeof(fuse_statfs_out));
}

void RemoteBackend::open(const Context& ctx, uint64_t ino, uint32_t flags, OpenReply reply) {
  Call* call = start(FUSE_OPEN, ino, ctx);
  fuse_open_in a{};
  a.flags = flags;
  if (ctx.kill_suidgid) a.open_flags = FUSE_OPEN_KILL_SUIDGID;
  call->put(a);
  call->send(std::move(reply), sizeof(fuse_open_out));
}

void RemoteBackend::create(const Context& ctx, uint64_t parent, std::string_view name,
                           uint32_t mode, uint32_t umask, uint32_t flags, CreateReply reply) {
  Call* call = start(FUSE_CREATE, parent, ctx);
  fuse_create_in a{};
  a.flags = flags;
  a.mode = mode;
  a.umask = umask;
  if (ctx.kill_suidgid) a.open_flags = FUSE_OPEN_KILL_SUIDGID;
  call->put(a);
  call->put_name(name);
  call->send(std::move(reply), sizeof(fuse_entry_out) + sizeof(fuse_open_out));
}

void RemoteBackend::tmpfile(const Context& ctx, uint64_t parent, uint32_t mode, uint32_t umask,
                            uint32_t flags, CreateReply reply) {
  Call* call = start(FUSE_TMPFILE, parent, ctx);
  fuse_create_in a{};
  a.flags = flags;
  a.mode = mode;
  a.umask = umask;
  call->put(a);
  call->put_name("/");  // as the kernel sends it
  call->send(std::move(reply), sizeof(fuse_entry_out) + sizeof(fuse_open_out));
}

void RemoteBackend::read(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset,
                         uint32_t size, std::span<const iovec> dst, ReadReply reply) {
  Call* call = start(FUSE_READ, ino, ctx);
  fuse_read_in a{};
  a.fh = fh;
  a.offset = offset;
  a.size = size;
  call->put(a);
  call->expect(size);
  call->send(std::move(reply), 0, {}, dst);
}

void RemoteBackend::write(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset,
                          std::span<const iovec> src, uint32_t write_flags, WriteReply reply) {
  Call* call = start(FUSE_WRITE, ino, ctx);
  const size_t size = iov_length(src);
  fuse_write_in a{};
  a.fh = fh;
  a.offset = offset;
  a.size = uint32_t(size);
  a.write_flags = write_flags;
  call->put(a);
  call->expect(uint32_t(size));
  call->send(std::move(reply), sizeof(fuse_write_out), src);
}

void RemoteBackend::flush(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t lock_owner,
                          StatusReply reply) {
  Call* call = start(FUSE_FLUSH, ino, ctx);
  fuse_flush_in a{};
  a.fh = fh;
  a.lock_owner = lock_owner;
  call->put(a);
  call->send(std::move(reply), 0);
}

void RemoteBackend::release(const Context& ctx, uint64_t ino, uint64_t fh, uint32_t flags,
                            uint64_t lock_owner, ReleaseFlock flock, StatusReply reply) {
  Call* call = start(FUSE_RELEASE, ino, ctx);
  fuse_release_in a{};
  a.fh = fh;
  a.flags = flags;
  a.lock_owner = lock_owner;
  if (flock == ReleaseFlock::kUnlock) a.release_flags = FUSE_RELEASE_FLOCK_UNLOCK;
  call->put(a);
  call->send(std::move(reply), 0);
}

namespace {

fuse_fsync_in fsync_in(uint64_t fh, SyncMode mode) {
  fuse_fsync_in a{};
  a.fh = fh;
  if (mode == SyncMode::kDataOnly) a.fsync_flags = FUSE_FSYNC_FDATASYNC;
  return a;
}

}  // namespace

void RemoteBackend::fsync(const Context& ctx, uint64_t ino, uint64_t fh, SyncMode mode,
                          StatusReply reply) {
  Call* call = start(FUSE_FSYNC, ino, ctx);
  call->put(fsync_in(fh, mode));
  call->send(std::move(reply), 0);
}

void RemoteBackend::fallocate(const Context& ctx, uint64_t ino, uint64_t fh, uint32_t mode,
                              uint64_t offset, uint64_t length, StatusReply reply) {
  Call* call = start(FUSE_FALLOCATE, ino, ctx);
  fuse_fallocate_in a{};
  a.fh = fh;
  a.offset = offset;
  a.length = length;
  a.mode = mode;
  call->put(a);
  call->send(std::move(reply), 0);
}

void RemoteBackend::lseek(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset,
                          uint32_t whence, LseekReply reply) {
  Call* call = start(FUSE_LSEEK, ino, ctx);
  fuse_lseek_in a{};
  a.fh = fh;
  a.offset = offset;
  a.whence = whence;
  call->put(a);
  call->send(std::move(reply), sizeof(fuse_lseek_out));
}

void RemoteBackend::copy_file_range(const Context& ctx, const CopyRange& range, WriteReply reply) {
  Call* call = start(FUSE_COPY_FILE_RANGE, range.ino_in, ctx);
  fuse_copy_file_range_in a{};
  a.fh_in = range.fh_in;
  a.off_in = range.off_in;
  a.nodeid_out = range.ino_out;
  a.fh_out = range.fh_out;
  a.off_out = range.off_out;
  a.len = range.len;
  a.flags = range.flags;
  call->put(a);
  call->expect(uint32_t(std::min<uint64_t>(range.len, UINT32_MAX)));
  call->send(std::move(reply), sizeof(fuse_write_out));
}

void RemoteBackend::opendir(const Context& ctx, uint64_t ino, uint32_t flags, OpenReply reply) {
  Call* call = start(FUSE_OPENDIR, ino, ctx);
  fuse_open_in a{};
  a.flags = flags;
  call->put(a);
  call->send(std::move(reply), sizeof(fuse_open_out));
}

void RemoteBackend::readdir(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset,
                            DirReply reply) {
  const bool plus = reply.plus();
  // As much as the tenant's listing can take: the server fills about what
  // fits here.
  const uint32_t size = uint32_t(std::min<size_t>(reply.size(), 1u << 20));
  Call* call = start(plus ? FUSE_READDIRPLUS : FUSE_READDIR, ino, ctx);
  fuse_read_in a{};
  a.fh = fh;
  a.offset = offset;
  a.size = size;
  call->put(a);
  call->set_plus(plus);
  call->send(std::move(reply), size);
}

void RemoteBackend::releasedir(const Context& ctx, uint64_t ino, uint64_t fh, StatusReply reply) {
  Call* call = start(FUSE_RELEASEDIR, ino, ctx);
  fuse_release_in a{};
  a.fh = fh;
  call->put(a);
  call->send(std::move(reply), 0);
}

void RemoteBackend::fsyncdir(const Context& ctx, uint64_t ino, uint64_t fh, SyncMode mode,
                             StatusReply reply) {
  Call* call = start(FUSE_FSYNCDIR, ino, ctx);
  call->put(fsync_in(fh, mode));
  call->send(std::move(reply), 0);
}

void RemoteBackend::setxattr(const Context& ctx, uint64_t ino, std::string_view name,
                             std::span<const std::byte> value, uint32_t flags, StatusReply reply) {
  Call* call = start(FUSE_SETXATTR, ino, ctx);
  fuse_setxattr_in a{};
  a.size = uint32_t(value.size());
  a.flags = flags;
  // The server's session reads the longer argument only if it granted
  // SETXATTR_EXT.
  const bool ext = (negotiated().flags & FUSE_SETXATTR_EXT) != 0;
  call->put_bytes(&a, ext ? sizeof(a) : FUSE_COMPAT_SETXATTR_IN_SIZE);
  call->put_name(name);
  call->put_bytes(value.data(), value.size());
  call->send(std::move(reply), 0);
}

void RemoteBackend::getxattr(const Context& ctx, uint64_t ino, std::string_view name,
                             XattrReply reply) {
  Call* call = start(FUSE_GETXATTR, ino, ctx);
  fuse_getxattr_in a{};
  a.size = kXattrMax;
  call->put(a);
  call->put_name(name);
  call->send(std::move(reply), kXattrMax);
}

void RemoteBackend::listxattr(const Context& ctx, uint64_t ino, XattrReply reply) {
  Call* call = start(FUSE_LISTXATTR, ino, ctx);
  fuse_getxattr_in a{};
  a.size = kXattrMax;
  call->put(a);
  call->send(std::move(reply), kXattrMax);
}

void RemoteBackend::removexattr(const Context& ctx, uint64_t ino, std::string_view name,
                                StatusReply reply) {
  Call* call = start(FUSE_REMOVEXATTR, ino, ctx);
  call->put_name(name);
  call->send(std::move(reply), 0);
}

namespace {

fuse_lk_in lk_in(uint64_t fh, uint64_t owner, const Lock& lock) {
  fuse_lk_in a{};
  a.fh = fh;
  a.owner = owner;
  a.lk.start = lock.start;
  a.lk.end = lock.end;
  a.lk.type = lock.type;
  a.lk.pid = lock.pid;
  return a;
}

}  // namespace

void RemoteBackend::getlk(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t owner,
                          const Lock& lock, LockReply reply) {
  Call* call = start(FUSE_GETLK, ino, ctx);
  call->put(lk_in(fh, owner, lock));
  call->send(std::move(reply), sizeof(fuse_lk_out));
}

void RemoteBackend::setlk(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t owner,
                          const Lock& lock, LockWait wait, LockFlavor flavor, StatusReply reply) {
  Call* call = start(wait == LockWait::kWait ? FUSE_SETLKW : FUSE_SETLK, ino, ctx);
  fuse_lk_in a = lk_in(fh, owner, lock);
  if (flavor == LockFlavor::kFlock) a.lk_flags = FUSE_LK_FLOCK;
  call->put(a);
  call->send(std::move(reply), 0);
}

void RemoteBackend::interrupt(uint64_t unique) {
  // The server's session names its requests by the unique we sent, which
  // for a tenant's request is the tenant's (Context::unique).
  Call* call = start(FUSE_INTERRUPT, 0, fresh_unique());
  call->put(fuse_interrupt_in{unique});
  call->send(0);
}

void RemoteBackend::syncfs(const Context& ctx, uint64_t ino, StatusReply reply) {
  Call* call = start(FUSE_SYNCFS, ino, ctx);
  call->put(fuse_syncfs_in{});
  call->send(std::move(reply), 0);
}

}  // namespace dpfs::remote
