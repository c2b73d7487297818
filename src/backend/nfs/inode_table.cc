#include "backend/nfs/inode_table.h"

#include "backend/backend.h"

namespace dpfs::nfs {

InodeTable::InodeTable(std::string root_fh) {
  Node root;
  root.fh = std::move(root_fh);
  root.lookups = 1;  // never forgotten
  by_fh_.emplace(root.fh, kRootIno);
  nodes_.emplace(kRootIno, std::move(root));
}

uint64_t InodeTable::remember(const std::string& fh, mode_t mode, gid_t gid) {
  util::MutexLock lock(mu_);
  uint64_t ino;
  if (auto it = by_fh_.find(fh); it != by_fh_.end()) {
    ino = it->second;
  } else {
    ino = next_ino_++;
    by_fh_.emplace(fh, ino);
    nodes_[ino].fh = fh;
  }
  Node& node = nodes_[ino];
  if (ino != kRootIno) ++node.lookups;
  node.mode = mode;
  node.gid = gid;
  return ino;
}

bool InodeTable::find(uint64_t ino, std::string* fh) const {
  util::MutexLock lock(mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end()) return false;
  *fh = it->second.fh;
  return true;
}

bool InodeTable::attributes(uint64_t ino, mode_t* mode, gid_t* gid) const {
  util::MutexLock lock(mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end() || it->second.mode == 0) return false;
  *mode = it->second.mode;
  *gid = it->second.gid;
  return true;
}

void InodeTable::update(uint64_t ino, mode_t mode, gid_t gid) {
  util::MutexLock lock(mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end()) return;
  it->second.mode = mode;
  it->second.gid = gid;
}

std::optional<InodeTable::Hidden> InodeTable::forget(uint64_t ino, uint64_t n) {
  if (ino == kRootIno) return std::nullopt;
  util::MutexLock lock(mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end()) return std::nullopt;
  Node& node = it->second;
  node.lookups = n >= node.lookups ? 0 : node.lookups - n;
  std::optional<Hidden> hidden;
  if (node.lookups == 0 && node.opens == 0) hidden.swap(node.hidden);
  drop_if_unused(ino, node);
  return hidden;
}

uint64_t InodeTable::open(uint64_t ino, std::function<void()> retry) {
  util::MutexLock lock(mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end()) return 0;
  if (auto d = doomed_.find(it->second.fh); d != doomed_.end() && retry) {
    d->second.waiting.push_back(std::move(retry));
    return kWaiting;
  }
  ++it->second.opens;
  const uint64_t handle = next_handle_++;
  handles_.emplace(handle, ino);
  return handle;
}

bool InodeTable::has_handle(uint64_t ino, uint64_t handle) const {
  util::MutexLock lock(mu_);
  auto it = handles_.find(handle);
  return it != handles_.end() && it->second == ino;
}

bool InodeTable::close(uint64_t ino, uint64_t handle, std::optional<Hidden>* hidden) {
  util::MutexLock lock(mu_);
  auto h = handles_.find(handle);
  if (h == handles_.end() || h->second != ino) return false;
  handles_.erase(h);
  auto it = nodes_.find(ino);
  if (it == nodes_.end() || it->second.opens == 0) return true;
  if (--it->second.opens == 0 && it->second.lookups == 0) hidden->swap(it->second.hidden);
  drop_if_unused(ino, it->second);
  return true;
}

uint64_t InodeTable::open_id(const std::string& fh) const {
  util::MutexLock lock(mu_);
  auto it = by_fh_.find(fh);
  if (it == by_fh_.end()) return 0;
  return nodes_.at(it->second).opens > 0 ? it->second : 0;
}

InodeTable::Fate InodeTable::doom(const std::string& fh, bool keep_if_held, uint64_t* ino) {
  util::MutexLock lock(mu_);
  if (auto it = by_fh_.find(fh); it != by_fh_.end()) {
    const Node& node = nodes_.at(it->second);
    *ino = it->second;
    if (node.opens > 0) return Fate::kOpen;
    if (keep_if_held && node.lookups > 0) return Fate::kHeld;
  }
  ++doomed_[fh].count;
  return Fate::kGoes;
}

std::vector<std::function<void()>> InodeTable::undoom(const std::string& fh) {
  util::MutexLock lock(mu_);
  auto it = doomed_.find(fh);
  if (it == doomed_.end() || --it->second.count > 0) return {};
  std::vector<std::function<void()>> waiting = std::move(it->second.waiting);
  doomed_.erase(it);
  return waiting;
}

bool InodeTable::hide(uint64_t ino, Hidden where) {
  util::MutexLock lock(mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end() || (it->second.opens == 0 && it->second.lookups == 0)) return false;
  it->second.hidden = std::move(where);
  return true;
}

bool InodeTable::hidden(uint64_t ino) const {
  util::MutexLock lock(mu_);
  auto it = nodes_.find(ino);
  return it != nodes_.end() && it->second.hidden.has_value();
}

void InodeTable::drop_if_unused(uint64_t ino, Node& node) {
  if (ino == kRootIno || node.lookups > 0 || node.opens > 0 || !node.unstable.empty()) return;
  by_fh_.erase(node.fh);
  nodes_.erase(ino);
}

void InodeTable::add_unstable(uint64_t ino, UnstableWrite write) {
  util::MutexLock lock(mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end()) return;
  unstable_bytes_ += write.data.size();
  it->second.unstable.push_back(std::move(write));
}

std::vector<UnstableWrite> InodeTable::take_unstable(uint64_t ino) {
  util::MutexLock lock(mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end()) return {};
  std::vector<UnstableWrite> out;
  out.swap(it->second.unstable);
  for (const UnstableWrite& w : out) unstable_bytes_ -= w.data.size();
  drop_if_unused(ino, it->second);
  return out;
}

void InodeTable::restore_unstable(uint64_t ino, std::vector<UnstableWrite> writes) {
  util::MutexLock lock(mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end()) return;
  auto& list = it->second.unstable;
  for (UnstableWrite& w : writes) unstable_bytes_ += w.data.size();
  // Older writes first, so a resend replays them in order.
  list.insert(list.begin(), std::make_move_iterator(writes.begin()),
              std::make_move_iterator(writes.end()));
}

void InodeTable::truncate_unstable(uint64_t ino, uint64_t size) {
  util::MutexLock lock(mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end()) return;
  auto& list = it->second.unstable;
  for (UnstableWrite& w : list) {
    if (w.offset + w.data.size() <= size) continue;
    const uint64_t keep = w.offset >= size ? 0 : size - w.offset;
    unstable_bytes_ -= w.data.size() - keep;
    w.data.resize(keep);
  }
  std::erase_if(list, [](const UnstableWrite& w) { return w.data.empty(); });
}

uint64_t InodeTable::unstable_bytes() const {
  util::MutexLock lock(mu_);
  return unstable_bytes_;
}

size_t InodeTable::size() const {
  util::MutexLock lock(mu_);
  return nodes_.size();
}

}  // namespace dpfs::nfs
