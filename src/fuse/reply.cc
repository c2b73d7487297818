// The FUSE encoding of each typed reply (backend.h's ReplyTarget, which
// fuse::Request implements), into the tenant's reply buffer.
#include "fuse/reply.h"

#include <linux/fuse.h>
#include <linux/limits.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <string>

#include "fuse/session.h"

namespace dpfs::fuse {
namespace {

constexpr uint32_t kPageSize = 4096;

void split_timeout(double seconds, uint64_t* sec, uint32_t* nsec) {
  if (!(seconds > 0) || std::isnan(seconds)) {
    *sec = 0;
    *nsec = 0;
    return;
  }
  if (seconds > 1e15) seconds = 1e15;
  const double whole = std::floor(seconds);
  *sec = uint64_t(whole);
  *nsec = uint32_t(std::min(999999999.0, (seconds - whole) * 1e9));
}

void fill_attr(const struct stat& st, fuse_attr* a, const HostPolicy* policy) {
  *a = {};
  a->ino = st.st_ino;
  a->size = uint64_t(st.st_size);
  a->blocks = uint64_t(st.st_blocks);
  a->atime = uint64_t(st.st_atim.tv_sec);
  a->mtime = uint64_t(st.st_mtim.tv_sec);
  a->ctime = uint64_t(st.st_ctim.tv_sec);
  a->atimensec = uint32_t(st.st_atim.tv_nsec);
  a->mtimensec = uint32_t(st.st_mtim.tv_nsec);
  a->ctimensec = uint32_t(st.st_ctim.tv_nsec);
  a->mode = st.st_mode;
  a->nlink = uint32_t(st.st_nlink);
  a->uid = st.st_uid;
  a->gid = st.st_gid;
  if (policy != nullptr && policy->identity.translates_to_guest()) {
    a->uid = policy->identity.guest_uid(st.st_uid);
    a->gid = policy->identity.guest_gid(st.st_gid);
  }
  a->rdev = uint32_t(st.st_rdev);  // the kernel's 32-bit encoding, as MKNOD carried it
  a->blksize = st.st_blksize > 0 ? uint32_t(st.st_blksize) : kPageSize;
}

void fill_entry(const Entry& e, fuse_entry_out* out, const HostPolicy* policy) {
  *out = {};
  out->nodeid = e.ino;
  out->generation = e.generation;
  split_timeout(e.entry_timeout, &out->entry_valid, &out->entry_valid_nsec);
  split_timeout(e.attr_timeout, &out->attr_valid, &out->attr_valid_nsec);
  fill_attr(e.attr, &out->attr, policy);
}

const HostPolicy* policy_of(const Request& req) {
  return req.session_state.session->options().policy.get();
}

}  // namespace

size_t write_header(std::span<const iovec> out, uint64_t unique, int error, size_t payload) {
  fuse_out_header h{};
  h.len = uint32_t(sizeof(h) + payload);
  h.error = error;
  h.unique = unique;
  return iov_copy_in(out, &h, sizeof(h)) == sizeof(h) ? h.len : 0;
}

void send_written(Request& req, int error) {
  Request::SessionState& st = req.session_state;
  const size_t payload = error != 0 ? 0 : st.writer.written() - sizeof(fuse_out_header);
  const size_t len = write_header(req.out, st.unique, error, payload);
  st.session->finish(req, error);
  req.complete(len);
}

// A well-behaved kernel always gives room for its own replies: a reply that
// does not fit is the tenant's doing, logged on its session's limiter.
void send(Request& req, const void* payload, size_t len) {
  Request::SessionState& st = req.session_state;
  if (!st.writer.write(payload, len)) {
    util::RateLimitedLog& log = st.session->log();
    log.log_with(spdlog::level::warn, [&] {
      return fmt::format(
          "{}: malformed FUSE request: {} reply of {} bytes does not fit the reply buffer",
          st.session->options().name, opcode_name(st.opcode), len);
    });
    send_written(req, -EIO);
    return;
  }
  send_written(req, 0);
}

// --- fuse::Request as a ReplyTarget ------------------------------------------

uint64_t Request::request_id() const { return session_state.unique; }

const char* Request::operation() const { return opcode_name(session_state.opcode); }

void Request::answer_error(int errno_value) { send_written(*this, -errno_value); }

void Request::answer_status() { send_written(*this, 0); }

void Request::answer_entry(const Entry& entry) {
  fuse_entry_out out;
  fill_entry(entry, &out, policy_of(*this));
  send(*this, out);
}

void Request::answer_attr(const struct stat& attr, double timeout) {
  fuse_attr_out out{};
  split_timeout(timeout, &out.attr_valid, &out.attr_valid_nsec);
  fill_attr(attr, &out.attr, policy_of(*this));
  send(*this, out);
}

namespace {

// The open handle `fh` of `node`: FUSE passthrough to its host file, where
// the session negotiated it and the backend named the file.
void fill_open(Request& req, uint64_t node, uint64_t fh, uint32_t open_flags, int host_fd,
               fuse_open_out* out) {
  out->fh = fh;
  out->open_flags = open_flags;
  FuseSession* session = req.session_state.session;
  PassthroughFiles* files = session != nullptr ? session->passthrough_files() : nullptr;
  if (files == nullptr) return;
  const int id = files->attach(node, fh, host_fd, (open_flags & FOPEN_DIRECT_IO) != 0);
  if (id > 0) {
    out->open_flags |= passthrough_abi::kFopenPassthrough;
    passthrough_abi::set_backing_id(out, id);
  }
}

}  // namespace

void Request::answer_open(uint64_t fh, uint32_t open_flags, int host_fd) {
  fuse_open_out out{};
  fill_open(*this, captured.header().nodeid, fh, open_flags, host_fd, &out);
  send(*this, out);
}

void Request::answer_create(const Entry& entry, uint64_t fh, uint32_t open_flags, int host_fd) {
  struct {
    fuse_entry_out entry;
    fuse_open_out open;
  } out{};
  fill_entry(entry, &out.entry, policy_of(*this));
  fill_open(*this, entry.ino, fh, open_flags, host_fd, &out.open);
  send(*this, out);
}

void Request::answer_read(size_t bytes) {
  SessionState& st = session_state;
  if (bytes > st.limit) {
    spdlog::error("backend read {} bytes into a {}-byte buffer; answering EIO", bytes, st.limit);
    send_written(*this, -EIO);
    return;
  }
  st.writer.skip(bytes);  // the backend filled them through data_iov
  send_written(*this, 0);
}

void Request::answer_write(size_t bytes) {
  fuse_write_out out{};
  out.size = uint32_t(std::min<size_t>(bytes, UINT32_MAX));
  send(*this, out);
}

void Request::answer_readlink(std::string_view target) {
  send(*this, target.data(), target.size());
}

void Request::answer_xattr(std::span<const std::byte> value) {
  const HostPolicy* policy = policy_of(*this);
  thread_local std::string listed;
  if (policy != nullptr && session_state.opcode == FUSE_LISTXATTR) {
    // Only the names the tenant may use (HostPolicy::xattr_allowed).
    listed.clear();
    const std::string_view names(reinterpret_cast<const char*>(value.data()), value.size());
    for (size_t at = 0; at < names.size();) {
      size_t end = names.find('\0', at);
      if (end == std::string_view::npos) end = names.size();
      if (policy->xattr_allowed(names.substr(at, end - at))) {
        listed.append(names.substr(at, end - at));
        listed.push_back('\0');
      }
      at = end + 1;
    }
    value = std::as_bytes(std::span<const char>(listed.data(), listed.size()));
  }
  const uint32_t limit = session_state.limit;
  if (limit == 0) {  // a size probe
    fuse_getxattr_out out{};
    out.size = uint32_t(value.size());
    send(*this, out);
  } else if (value.size() > limit) {
    send_written(*this, -ERANGE);
  } else {
    send(*this, value.data(), value.size());
  }
}

void Request::answer_statfs(const struct statvfs& st) {
  fuse_statfs_out out{};
  out.st.blocks = st.f_blocks;
  out.st.bfree = st.f_bfree;
  out.st.bavail = st.f_bavail;
  out.st.files = st.f_files;
  out.st.ffree = st.f_ffree;
  out.st.bsize = uint32_t(st.f_bsize);
  out.st.namelen = uint32_t(st.f_namemax);
  out.st.frsize = uint32_t(st.f_frsize);
  send(*this, out);
}

void Request::answer_lock(const Lock& lock) {
  fuse_lk_out out{};
  out.lk.start = lock.start;
  out.lk.end = lock.end;
  out.lk.type = lock.type;
  out.lk.pid = lock.pid;
  send(*this, out);
}

void Request::answer_lseek(uint64_t offset) {
  fuse_lseek_out out{};
  out.offset = offset;
  send(*this, out);
}

bool Request::dir_plus() const { return session_state.plus; }

size_t Request::dir_size() const { return session_state.limit; }

// Appends one dirent record (optionally preceded by an entry_out) if it fits
// within the listing's limit.
bool Request::add_dirent(const fuse_entry_out* entry, std::string_view name, uint64_t ino,
                         uint32_t type, uint64_t next_offset) {
  if (name.empty() || name.size() > NAME_MAX) return false;
  SessionState& st = session_state;
  const size_t head = (entry ? sizeof(fuse_entry_out) : 0) + FUSE_NAME_OFFSET;
  const size_t record = FUSE_DIRENT_ALIGN(head + name.size());
  const size_t used = st.writer.written() - sizeof(fuse_out_header);
  if (used + record > st.limit || st.writer.remaining() < record) return false;
  if (entry) st.writer.write(*entry);
  fuse_dirent d{};
  d.ino = ino;
  d.off = next_offset;
  d.namelen = uint32_t(name.size());
  d.type = type;
  st.writer.write(&d, FUSE_NAME_OFFSET);
  st.writer.write(name.data(), name.size());
  static constexpr char kZeros[8] = {};
  st.writer.write(kZeros, record - head - name.size());
  return true;
}

bool Request::dir_add(std::string_view name, uint64_t ino, uint32_t type, uint64_t next_offset) {
  return add_dirent(nullptr, name, ino, type, next_offset);
}

bool Request::dir_add_plus(std::string_view name, const Entry& entry, uint64_t next_offset) {
  fuse_entry_out out;
  fill_entry(entry, &out, policy_of(*this));
  // d_ino is the inode number stat(2) shows (the kernel takes it from the
  // dirent, not from the node id): they differ for a backend whose node ids
  // are not the file's own inode numbers (nfs: the server's fileid;
  // passthrough: its node ids are its own).
  const uint64_t d_ino = entry.attr.st_ino != 0 ? entry.attr.st_ino : entry.ino;
  return add_dirent(&out, name, d_ino, (entry.attr.st_mode & S_IFMT) >> 12, next_offset);
}

void Request::dir_done() { send_written(*this, 0); }

}  // namespace dpfs::fuse
