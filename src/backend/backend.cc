#include "backend/backend.h"

#include <spdlog/spdlog.h>

namespace dpfs {

// --- Replies: the typed answers, handed to the protocol layer once ----------

Reply& Reply::operator=(Reply&& other) noexcept {
  if (this != &other) {
    if (target_ != nullptr) error(EIO);
    target_ = other.target_;
    other.target_ = nullptr;
  }
  return *this;
}

Reply::~Reply() {
  if (target_ != nullptr) {
    spdlog::error("backend dropped the reply to {} (unique {}); answering EIO",
                  target_->operation(), target_->request_id());
    error(EIO);
  }
}

ReplyTarget* Reply::take() {
  ReplyTarget* target = target_;
  target_ = nullptr;
  if (target == nullptr) spdlog::error("backend answered a request twice; ignored");
  return target;
}

void Reply::error(int errno_value) {
  ReplyTarget* target = take();
  if (target == nullptr) return;
  if (errno_value <= 0 || errno_value >= 4096) {
    spdlog::error("backend answered {} with invalid errno {}; answering EIO", target->operation(),
                  errno_value);
    errno_value = EIO;
  }
  target->answer_error(errno_value);
}

void StatusReply::ok() {
  if (ReplyTarget* t = take()) t->answer_status();
}
void EntryReply::ok(const Entry& entry) {
  if (ReplyTarget* t = take()) t->answer_entry(entry);
}
void AttrReply::ok(const struct stat& attr, double timeout) {
  if (ReplyTarget* t = take()) t->answer_attr(attr, timeout);
}
void OpenReply::ok(uint64_t fh, uint32_t open_flags, int host_fd) {
  if (ReplyTarget* t = take()) t->answer_open(fh, open_flags, host_fd);
}
void CreateReply::ok(const Entry& entry, uint64_t fh, uint32_t open_flags, int host_fd) {
  if (ReplyTarget* t = take()) t->answer_create(entry, fh, open_flags, host_fd);
}
void ReadReply::ok(size_t bytes) {
  if (ReplyTarget* t = take()) t->answer_read(bytes);
}
void WriteReply::ok(size_t bytes) {
  if (ReplyTarget* t = take()) t->answer_write(bytes);
}
void ReadlinkReply::ok(std::string_view target) {
  if (ReplyTarget* t = take()) t->answer_readlink(target);
}
void XattrReply::ok(std::span<const std::byte> value) {
  if (ReplyTarget* t = take()) t->answer_xattr(value);
}
void StatfsReply::ok(const struct statvfs& st) {
  if (ReplyTarget* t = take()) t->answer_statfs(st);
}
void LockReply::ok(const Lock& lock) {
  if (ReplyTarget* t = take()) t->answer_lock(lock);
}
void LseekReply::ok(uint64_t offset) {
  if (ReplyTarget* t = take()) t->answer_lseek(offset);
}
void DirReply::done() {
  if (ReplyTarget* t = take()) t->dir_done();
}

// --- Defaults: ENOSYS, except where the tenant needs another answer ---------

void Backend::lookup(const Context&, uint64_t, std::string_view, EntryReply r) { r.error(ENOSYS); }
void Backend::forget(uint64_t, uint64_t) {}
void Backend::getattr(const Context&, uint64_t, std::optional<uint64_t>, AttrReply r) {
  r.error(ENOSYS);
}
void Backend::setattr(const Context&, uint64_t, const SetAttr&, AttrReply r) { r.error(ENOSYS); }
void Backend::readlink(const Context&, uint64_t, ReadlinkReply r) { r.error(ENOSYS); }
void Backend::symlink(const Context&, uint64_t, std::string_view, std::string_view, EntryReply r) {
  r.error(ENOSYS);
}
void Backend::mknod(const Context&, uint64_t, std::string_view, uint32_t, uint32_t, uint32_t,
                    EntryReply r) {
  r.error(ENOSYS);
}
void Backend::mkdir(const Context&, uint64_t, std::string_view, uint32_t, uint32_t, EntryReply r) {
  r.error(ENOSYS);
}
void Backend::unlink(const Context&, uint64_t, std::string_view, StatusReply r) { r.error(ENOSYS); }
void Backend::rmdir(const Context&, uint64_t, std::string_view, StatusReply r) { r.error(ENOSYS); }
void Backend::rename(const Context&, uint64_t, std::string_view, uint64_t, std::string_view,
                     uint32_t, StatusReply r) {
  r.error(ENOSYS);
}
void Backend::link(const Context&, uint64_t, uint64_t, std::string_view, EntryReply r) {
  r.error(ENOSYS);
}
void Backend::open(const Context&, uint64_t, uint32_t, OpenReply r) { r.error(ENOSYS); }
void Backend::read(const Context&, uint64_t, uint64_t, uint64_t, uint32_t, std::span<const iovec>,
                   ReadReply r) {
  r.error(ENOSYS);
}
void Backend::write(const Context&, uint64_t, uint64_t, uint64_t, std::span<const iovec>, uint32_t,
                    WriteReply r) {
  r.error(ENOSYS);
}
void Backend::statfs(const Context&, uint64_t, StatfsReply r) { r.error(ENOSYS); }
void Backend::release(const Context&, uint64_t, uint64_t, uint32_t, uint64_t, ReleaseFlock,
                      StatusReply r) {
  r.ok();
}
void Backend::fsync(const Context&, uint64_t, uint64_t, SyncMode, StatusReply r) {
  r.error(ENOSYS);
}
void Backend::setxattr(const Context&, uint64_t, std::string_view, std::span<const std::byte>,
                       uint32_t, StatusReply r) {
  r.error(ENOSYS);
}
void Backend::getxattr(const Context&, uint64_t, std::string_view, XattrReply r) {
  r.error(ENOSYS);
}
void Backend::listxattr(const Context&, uint64_t, XattrReply r) { r.error(ENOSYS); }
void Backend::removexattr(const Context&, uint64_t, std::string_view, StatusReply r) {
  r.error(ENOSYS);
}
void Backend::flush(const Context&, uint64_t, uint64_t, uint64_t, StatusReply r) {
  r.error(ENOSYS);
}
void Backend::opendir(const Context&, uint64_t, uint32_t, OpenReply r) { r.error(ENOSYS); }
void Backend::readdir(const Context&, uint64_t, uint64_t, uint64_t, DirReply r) { r.error(ENOSYS); }
void Backend::releasedir(const Context&, uint64_t, uint64_t, StatusReply r) { r.ok(); }
void Backend::fsyncdir(const Context&, uint64_t, uint64_t, SyncMode, StatusReply r) {
  r.error(ENOSYS);
}
void Backend::getlk(const Context&, uint64_t, uint64_t, uint64_t, const Lock&, LockReply r) {
  r.error(ENOSYS);
}
void Backend::setlk(const Context&, uint64_t, uint64_t, uint64_t, const Lock&, LockWait, LockFlavor,
                    StatusReply r) {
  r.error(ENOSYS);
}
void Backend::access(const Context&, uint64_t, uint32_t, StatusReply r) { r.error(ENOSYS); }
void Backend::create(const Context&, uint64_t, std::string_view, uint32_t, uint32_t, uint32_t,
                     CreateReply r) {
  r.error(ENOSYS);
}
void Backend::interrupt(uint64_t) {}
void Backend::fallocate(const Context&, uint64_t, uint64_t, uint32_t, uint64_t, uint64_t,
                        StatusReply r) {
  r.error(ENOSYS);
}
void Backend::lseek(const Context&, uint64_t, uint64_t, uint64_t, uint32_t, LseekReply r) {
  r.error(ENOSYS);
}
void Backend::copy_file_range(const Context&, const CopyRange&, WriteReply r) { r.error(ENOSYS); }
void Backend::syncfs(const Context&, uint64_t, StatusReply r) { r.error(ENOSYS); }
void Backend::tmpfile(const Context&, uint64_t, uint32_t, uint32_t, uint32_t, CreateReply r) {
  r.error(ENOSYS);
}

}  // namespace dpfs
