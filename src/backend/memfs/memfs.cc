#include "backend/memfs/memfs.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/fuse.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace dpfs {
namespace {

using memfs::FileData;

constexpr uint64_t kBlockSize = 4096;  // statfs f_bsize and f_frsize
constexpr uint64_t kNameMax = 255;
constexpr size_t kXattrSizeMax = 64 * 1024;  // XATTR_SIZE_MAX
// tmpfs reports a directory's size as 20 bytes per entry, "." and ".." included.
constexpr uint64_t kBogoDirentSize = 20;
constexpr uint32_t kMaxLinks = UINT32_MAX - 1;  // fuse_attr.nlink is 32 bits
// readdir cookies: 0 starts, 1 follows ".", 2 follows ".."; entries from 3.
constexpr uint64_t kFirstSeq = 3;

timespec now() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts;
}

bool before_or_at(const timespec& a, const timespec& b) {
  return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec <= b.tv_nsec);
}

bool is_dot(std::string_view name) { return name == "." || name == ".."; }

// File capabilities: dropped on write, truncation and chown, as the VFS does.
constexpr char kCapabilityXattr[] = "security.capability";

// Set-user-ID goes; set-group-ID only with group execute (without it, it
// marks mandatory locking and stays), as Linux does on chown and write.
uint32_t kill_suid(uint32_t perm) {
  perm &= ~uint32_t(S_ISUID);
  if (perm & S_IXGRP) perm &= ~uint32_t(S_ISGID);
  return perm;
}

}  // namespace

struct Memfs::NewNode {
  uint32_t mode = 0;  // type and permission bits, umask applied
  uint32_t rdev = 0;
  std::string_view target;  // symlinks
  uint32_t open_flags = 0;  // when the node is opened as it is created
};

struct Memfs::Inode {
  struct Dirent {
    uint64_t ino;
    uint64_t seq;
    uint32_t type;  // S_IFMT bits
  };
  using Names = std::map<std::string, Dirent, std::less<>>;

  Inode(uint64_t ino, uint32_t type, memfs::Space& space) : ino(ino), type(type), data(space) {}

  bool is_dir() const { return type == S_IFDIR; }
  bool is_reg() const { return type == S_IFREG; }
  // REQUIRES: tree_mu_ held, and mu or tree_mu_ exclusive.
  bool unused() const { return ino != kRootIno && nlink == 0 && lookups == 0 && handles.empty(); }

  void add_entry(std::string_view name, const Inode& child) {
    const uint64_t seq = next_seq++;
    auto it = entries.emplace(std::string(name), Dirent{child.ino, seq, child.type}).first;
    by_seq.emplace(seq, it);
  }
  void remove_entry(Names::iterator it) {
    by_seq.erase(it->second.seq);
    entries.erase(it);
  }

  // REQUIRES: tree_mu_ held, and mu or tree_mu_ exclusive.
  struct stat attr() const {
    struct stat st {};
    st.st_ino = ino;
    st.st_mode = type | perm;
    st.st_nlink = nlink;
    st.st_uid = uid;
    st.st_gid = gid;
    st.st_rdev = rdev;
    st.st_blksize = kBlockSize;
    if (is_reg()) {
      st.st_size = off_t(data.size());
      st.st_blocks = blkcnt_t(data.blocks());
    } else if (is_dir()) {
      st.st_size = off_t((entries.size() + 2) * kBogoDirentSize);
    } else if (type == S_IFLNK) {
      st.st_size = off_t(target.size());
    }
    st.st_atim = atime;
    st.st_mtim = mtime;
    st.st_ctim = ctime;
    return st;
  }

  // relatime, the default of tmpfs mounts: atime moves when it is not newer
  // than mtime or ctime, or is a day old.
  void touch_atime(const timespec& t) {
    if (before_or_at(atime, mtime) || before_or_at(atime, ctime) ||
        t.tv_sec - atime.tv_sec >= 24 * 3600) {
      atime = t;
    }
  }

  // The open handle `fh` of this inode, or nullptr. REQUIRES: mu (or tree exclusive).
  const uint32_t* handle(uint64_t fh) const {
    auto it = handles.find(fh);
    return it == handles.end() ? nullptr : &it->second;
  }

  const uint64_t ino;
  const uint32_t type;  // S_IFMT bits; never change

  // --- The namespace: guarded by tree_mu_ (written exclusive, read shared).
  uint32_t nlink = 0;
  uint64_t parent = 0;    // directories: the directory that names it
  bool linkable = false;  // an O_TMPFILE never linked: link() may name it
  // Directories. An entry's seq is assigned in increasing order when the
  // entry is added and is the readdir cookie that follows it: a listing
  // resumes after the last seq it returned, so entries added or removed
  // meanwhile never make it skip or repeat the others.
  Names entries;
  std::map<uint64_t, Names::iterator> by_seq;
  uint64_t next_seq = kFirstSeq;
  std::string target;  // symlinks; set at creation

  // --- The rest: guarded by mu under tree_mu_ shared, or by tree_mu_ exclusive.
  mutable std::mutex mu;
  uint32_t perm = 0;  // 07777 bits
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t rdev = 0;
  timespec atime{};
  timespec mtime{};
  timespec ctime{};
  uint64_t lookups = 0;
  std::unordered_map<uint64_t, uint32_t> handles;  // fh -> open(2) flags
  FileData data;                                   // regular files
  std::map<std::string, std::vector<std::byte>, std::less<>> xattrs;
  uint64_t xattr_bytes = 0;  // names and values, charged to space_
};

// ---------------------------------------------------------------------------

Memfs::Memfs(MemfsOptions options) : options_(options), space_(options.capacity_bytes) {
  auto root = std::make_unique<Inode>(kRootIno, S_IFDIR, space_);
  root->perm = 0755;
  root->uid = geteuid();
  root->gid = getegid();
  root->nlink = 2;
  root->parent = kRootIno;
  root->atime = root->mtime = root->ctime = now();
  inodes_.emplace(kRootIno, std::move(root));
}

Memfs::~Memfs() {
  Completions done;
  locks_.clear(EIO, done);
}

Capabilities Memfs::capabilities() const {
  Capabilities caps;
  caps.posix_locks = true;
  caps.flock_locks = true;
  caps.readdirplus = true;
  caps.writeback_cache = false;
  caps.killpriv_v2 = true;
  return caps;
}

Memfs::Inode* Memfs::find(uint64_t ino) const {
  auto it = inodes_.find(ino);
  return it == inodes_.end() ? nullptr : it->second.get();
}

template <typename Fn>
int Memfs::with_inode(uint64_t ino, Fn&& fn) {
  util::ReaderLock tree(tree_mu_);
  Inode* node = find(ino);
  if (node == nullptr) return ESTALE;
  std::lock_guard lock(node->mu);
  return fn(node);
}

template <typename Fn>
int Memfs::with_handle(uint64_t ino, uint64_t fh, Fn&& fn) {
  return with_inode(ino, [&](Inode* node) {
    const uint32_t* open_flags = node->handle(fh);
    return open_flags == nullptr ? EBADF : fn(node, *open_flags);
  });
}

Memfs::Inode* Memfs::find_dir(uint64_t ino, int* error) const {
  Inode* dir = find(ino);
  if (dir == nullptr) {
    *error = ESTALE;
  } else if (!dir->is_dir()) {
    *error = ENOTDIR;
  } else if (dir->nlink == 0) {
    *error = ENOENT;  // removed: nothing may be created in it (Linux: IS_DEADDIR)
  } else {
    return dir;
  }
  return nullptr;
}

Entry Memfs::entry_of(Inode& node) const {
  Entry e;
  e.ino = node.ino;
  e.generation = 0;
  e.attr = node.attr();
  e.entry_timeout = options_.entry_timeout;
  e.attr_timeout = options_.attr_timeout;
  return e;
}

Entry Memfs::take_entry(Inode& node) const {
  ++node.lookups;
  return entry_of(node);
}

bool Memfs::erase_xattr(Inode* node, std::string_view name) {
  auto it = node->xattrs.find(name);
  if (it == node->xattrs.end()) return false;
  const uint64_t size = it->first.size() + it->second.size();
  node->xattrs.erase(it);
  node->xattr_bytes -= size;
  space_.release(size);
  return true;
}

void Memfs::drop_capability(Inode* node) {
  if (!node->xattrs.empty()) erase_xattr(node, kCapabilityXattr);
}

void Memfs::truncate_on_open(const Context& ctx, Inode* node) {
  node->data.truncate(0);
  node->mtime = node->ctime = now();
  if (ctx.kill_suidgid) node->perm = kill_suid(node->perm);
  drop_capability(node);
}

void Memfs::free_if_unused(Inode* node) {
  if (!node->unused()) return;
  space_.release(node->target.size() + node->xattr_bytes);
  locks_.forget_file(node->ino);
  inodes_.erase(node->ino);  // the chunks go back to space_ with the FileData
}

void Memfs::collect(uint64_t ino) {
  util::WriterLock tree(tree_mu_);
  if (Inode* node = find(ino)) free_if_unused(node);
}

int Memfs::make_node(const Context& ctx, uint64_t parent, std::string_view name,
                     const NewNode& spec, Entry* entry, uint64_t* fh) {
  int error = 0;
  Inode* dir = find_dir(parent, &error);
  if (dir == nullptr) return error;
  const bool named = !name.empty();
  if (named && (is_dot(name) || dir->entries.contains(name))) return EEXIST;
  const uint32_t type = spec.mode & S_IFMT;
  if (type == S_IFDIR && dir->nlink >= kMaxLinks) return EMLINK;
  if (inodes_.size() >= options_.max_inodes) return ENOSPC;
  if (!space_.reserve(name.size() + spec.target.size())) return ENOSPC;

  auto node = std::make_unique<Inode>(next_ino_++, type, space_);
  node->perm = spec.mode & 07777;
  node->uid = ctx.uid;
  node->gid = ctx.gid;
  // A set-group-ID directory gives its group to what is created in it, and
  // its set-group-ID bit to directories (the kernel already dropped S_ISGID
  // from a file whose creator is not in that group).
  if (dir->perm & S_ISGID) {
    node->gid = dir->gid;
    if (type == S_IFDIR) node->perm |= S_ISGID;
  }
  if (type == S_IFCHR || type == S_IFBLK) node->rdev = spec.rdev;
  node->target = std::string(spec.target);
  const timespec t = now();
  node->atime = node->mtime = node->ctime = t;
  node->lookups = 1;
  if (type == S_IFDIR) {
    node->nlink = 2;
    node->parent = dir->ino;
    ++dir->nlink;
  } else {
    node->nlink = named ? 1 : 0;
    node->linkable = !named;
  }
  if (fh != nullptr) {
    *fh = next_fh_.fetch_add(1, std::memory_order_relaxed);
    node->handles.emplace(*fh, spec.open_flags);
  }
  if (named) {
    dir->add_entry(name, *node);
    dir->mtime = dir->ctime = t;
  }
  *entry = entry_of(*node);
  const uint64_t ino = node->ino;
  inodes_.emplace(ino, std::move(node));
  return 0;
}

// --- Names ------------------------------------------------------------------
//
// Each operation works under its locks in a lambda returning 0 or an errno,
// and answers once the lambda has returned and the locks are released.

void Memfs::lookup(const Context&, uint64_t parent, std::string_view name, EntryReply reply) {
  if (int e = check_component(name); e != 0) return reply.error(e);
  Entry entry;
  const int error = [&] {
    util::ReaderLock tree(tree_mu_);
    int err = 0;
    Inode* dir = find_dir(parent, &err);
    if (dir == nullptr) return err;
    Inode* child = nullptr;
    if (name == ".") {
      child = dir;
    } else if (name == "..") {
      child = find(dir->parent);
    } else if (auto it = dir->entries.find(name); it != dir->entries.end()) {
      child = find(it->second.ino);
    }
    if (child == nullptr) return ENOENT;
    std::lock_guard lock(child->mu);
    entry = take_entry(*child);
    return 0;
  }();
  if (error != 0) return reply.error(error);
  reply.ok(entry);
}

void Memfs::forget(uint64_t ino, uint64_t nlookup) {
  if (ino == kRootIno) return;
  const bool unused = [&] {
    util::ReaderLock tree(tree_mu_);
    Inode* node = find(ino);
    if (node == nullptr) return false;
    std::lock_guard lock(node->mu);
    node->lookups -= std::min(nlookup, node->lookups);
    return node->unused();
  }();
  if (unused) collect(ino);
}

void Memfs::mknod(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
                  uint32_t rdev, uint32_t umask, EntryReply reply) {
  if (int e = check_component(name); e != 0) return reply.error(e);
  uint32_t type = mode & S_IFMT;
  if (type == 0) type = S_IFREG;  // mknod(2): no type is a regular file
  if (type != S_IFREG && type != S_IFCHR && type != S_IFBLK && type != S_IFIFO &&
      type != S_IFSOCK) {
    return reply.error(EINVAL);
  }
  Entry entry;
  const int error = [&] {
    util::WriterLock tree(tree_mu_);
    return make_node(ctx, parent, name, {type | (mode & 07777 & ~umask), rdev, {}, 0}, &entry,
                     nullptr);
  }();
  if (error != 0) return reply.error(error);
  reply.ok(entry);
}

void Memfs::mkdir(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
                  uint32_t umask, EntryReply reply) {
  if (int e = check_component(name); e != 0) return reply.error(e);
  Entry entry;
  const int error = [&] {
    util::WriterLock tree(tree_mu_);
    // mkdir(2) keeps the permission and sticky bits only.
    return make_node(ctx, parent, name, {S_IFDIR | (mode & 01777 & ~umask), 0, {}, 0}, &entry,
                     nullptr);
  }();
  if (error != 0) return reply.error(error);
  reply.ok(entry);
}

void Memfs::symlink(const Context& ctx, uint64_t parent, std::string_view name,
                    std::string_view target, EntryReply reply) {
  if (int e = check_component(name); e != 0) return reply.error(e);
  Entry entry;
  const int error = [&] {
    util::WriterLock tree(tree_mu_);
    return make_node(ctx, parent, name, {S_IFLNK | 0777, 0, target, 0}, &entry, nullptr);
  }();
  if (error != 0) return reply.error(error);
  reply.ok(entry);
}

void Memfs::create(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
                   uint32_t umask, uint32_t flags, CreateReply reply) {
  if (int e = check_component(name); e != 0) return reply.error(e);
  Entry entry;
  uint64_t fh = 0;
  const int error = [&] {
    util::WriterLock tree(tree_mu_);
    int err = 0;
    Inode* dir = find_dir(parent, &err);
    if (dir == nullptr) return err;
    auto it = dir->entries.find(name);
    if (it == dir->entries.end()) {
      return make_node(ctx, parent, name, {S_IFREG | (mode & 07777 & ~umask), 0, {}, flags}, &entry,
                       &fh);
    }
    // The name appeared since the kernel looked: open(2) semantics.
    Inode* node = find(it->second.ino);
    if (flags & O_EXCL) return EEXIST;
    if (node->is_dir()) return EISDIR;
    if (!node->is_reg()) return EEXIST;
    if (flags & O_TRUNC) truncate_on_open(ctx, node);
    fh = next_fh_.fetch_add(1, std::memory_order_relaxed);
    node->handles.emplace(fh, flags);
    entry = take_entry(*node);
    return 0;
  }();
  if (error != 0) return reply.error(error);
  reply.ok(entry, fh);
}

void Memfs::tmpfile(const Context& ctx, uint64_t parent, uint32_t mode, uint32_t umask,
                    uint32_t flags, CreateReply reply) {
  Entry entry;
  uint64_t fh = 0;
  const int error = [&] {
    util::WriterLock tree(tree_mu_);
    return make_node(ctx, parent, {}, {S_IFREG | (mode & 07777 & ~umask), 0, {}, flags}, &entry,
                     &fh);
  }();
  if (error != 0) return reply.error(error);
  reply.ok(entry, fh);
}

void Memfs::link(const Context&, uint64_t ino, uint64_t new_parent, std::string_view new_name,
                 EntryReply reply) {
  if (int e = check_component(new_name); e != 0) return reply.error(e);
  Entry entry;
  const int error = [&] {
    util::WriterLock tree(tree_mu_);
    Inode* node = find(ino);
    if (node == nullptr) return ESTALE;
    int err = 0;
    Inode* dir = find_dir(new_parent, &err);
    if (dir == nullptr) return err;
    if (node->is_dir()) return EPERM;
    if (is_dot(new_name) || dir->entries.contains(new_name)) return EEXIST;
    // Unlinked, and not an O_TMPFILE (Linux: I_LINKABLE).
    if (node->nlink == 0 && !node->linkable) return ENOENT;
    if (node->nlink >= kMaxLinks) return EMLINK;
    if (!space_.reserve(new_name.size())) return ENOSPC;
    const timespec t = now();
    ++node->nlink;
    node->linkable = false;
    node->ctime = t;
    dir->add_entry(new_name, *node);
    dir->mtime = dir->ctime = t;
    entry = take_entry(*node);
    return 0;
  }();
  if (error != 0) return reply.error(error);
  reply.ok(entry);
}

void Memfs::unlink(const Context&, uint64_t parent, std::string_view name, StatusReply reply) {
  if (int e = check_component(name); e != 0) return reply.error(e);
  const int error = [&] {
    util::WriterLock tree(tree_mu_);
    int err = 0;
    Inode* dir = find_dir(parent, &err);
    if (dir == nullptr) return err;
    auto it = dir->entries.find(name);
    if (it == dir->entries.end()) return is_dot(name) ? EISDIR : ENOENT;
    if (it->second.type == S_IFDIR) return EISDIR;
    Inode* node = find(it->second.ino);
    const timespec t = now();
    space_.release(it->first.size());
    dir->remove_entry(it);
    dir->mtime = dir->ctime = t;
    --node->nlink;
    node->ctime = t;
    free_if_unused(node);
    return 0;
  }();
  if (error != 0) return reply.error(error);
  reply.ok();
}

void Memfs::rmdir(const Context&, uint64_t parent, std::string_view name, StatusReply reply) {
  if (int e = check_component(name); e != 0) return reply.error(e);
  const int error = [&] {
    util::WriterLock tree(tree_mu_);
    int err = 0;
    Inode* dir = find_dir(parent, &err);
    if (dir == nullptr) return err;
    if (name == ".") return EINVAL;
    if (name == "..") return ENOTEMPTY;
    auto it = dir->entries.find(name);
    if (it == dir->entries.end()) return ENOENT;
    if (it->second.type != S_IFDIR) return ENOTDIR;
    Inode* node = find(it->second.ino);
    if (!node->entries.empty()) return ENOTEMPTY;
    const timespec t = now();
    space_.release(it->first.size());
    dir->remove_entry(it);
    --dir->nlink;  // the child's ".."
    dir->mtime = dir->ctime = t;
    node->nlink = 0;
    node->ctime = t;
    free_if_unused(node);
    return 0;
  }();
  if (error != 0) return reply.error(error);
  reply.ok();
}

void Memfs::rename(const Context&, uint64_t parent, std::string_view name, uint64_t new_parent,
                   std::string_view new_name, uint32_t flags, StatusReply reply) {
  if (int e = check_component(name); e != 0) return reply.error(e);
  if (int e = check_component(new_name); e != 0) return reply.error(e);
  if (flags & ~uint32_t(RENAME_NOREPLACE | RENAME_EXCHANGE)) return reply.error(EINVAL);
  if ((flags & RENAME_NOREPLACE) && (flags & RENAME_EXCHANGE)) return reply.error(EINVAL);
  if (is_dot(name) || is_dot(new_name)) return reply.error(EBUSY);
  const bool exchange = flags & RENAME_EXCHANGE;
  const int error = [&] {
    util::WriterLock tree(tree_mu_);
    int err = 0;
    Inode* from_dir = find_dir(parent, &err);
    if (from_dir == nullptr) return err;
    Inode* to_dir = find_dir(new_parent, &err);
    if (to_dir == nullptr) return err;
    auto from_it = from_dir->entries.find(name);
    if (from_it == from_dir->entries.end()) return ENOENT;
    auto to_it = to_dir->entries.find(new_name);
    Inode* node = find(from_it->second.ino);
    Inode* target = to_it != to_dir->entries.end() ? find(to_it->second.ino) : nullptr;

    if (exchange && target == nullptr) return ENOENT;
    if (target != nullptr && (flags & RENAME_NOREPLACE)) return EEXIST;
    // POSIX: two links to one file (or one name twice): nothing to do.
    if (target == node) return 0;
    // A directory cannot move below itself: walk up from where it would go.
    auto inside = [&](const Inode* dir, const Inode* ancestor) DPFS_REQUIRES_SHARED(tree_mu_) {
      for (const Inode* d = dir; d != nullptr; d = find(d->parent)) {
        if (d == ancestor) return true;
        if (d->ino == kRootIno) return false;
      }
      return false;
    };
    if (node->is_dir() && inside(to_dir, node)) return EINVAL;
    if (exchange && target->is_dir() && inside(from_dir, target)) return EINVAL;
    if (target != nullptr && !exchange) {
      if (node->is_dir() && !target->is_dir()) return ENOTDIR;
      if (!node->is_dir() && target->is_dir()) return EISDIR;
      if (target->is_dir() && !target->entries.empty()) return ENOTEMPTY;
    }
    if (node->is_dir() && from_dir != to_dir && to_dir->nlink >= kMaxLinks) return EMLINK;

    const timespec t = now();
    if (exchange) {
      std::swap(from_it->second.ino, to_it->second.ino);
      std::swap(from_it->second.type, to_it->second.type);
      if (from_dir != to_dir) {
        if (node->is_dir()) {
          node->parent = to_dir->ino;
          --from_dir->nlink;
          ++to_dir->nlink;
        }
        if (target->is_dir()) {
          target->parent = from_dir->ino;
          --to_dir->nlink;
          ++from_dir->nlink;
        }
      }
      target->ctime = t;
    } else {
      if (target != nullptr) {
        space_.release(to_it->first.size());
        to_dir->remove_entry(to_it);
        if (target->is_dir()) {
          target->nlink = 0;
          --to_dir->nlink;  // the target's ".."
        } else {
          --target->nlink;
        }
        target->ctime = t;
      }
      space_.release(from_it->first.size());
      from_dir->remove_entry(from_it);
      space_.charge(new_name.size());
      to_dir->add_entry(new_name, *node);
      if (node->is_dir() && from_dir != to_dir) {
        node->parent = to_dir->ino;
        --from_dir->nlink;
        ++to_dir->nlink;
      }
    }
    node->ctime = t;
    from_dir->mtime = from_dir->ctime = t;
    to_dir->mtime = to_dir->ctime = t;
    if (target != nullptr && !exchange) free_if_unused(target);
    return 0;
  }();
  if (error != 0) return reply.error(error);
  reply.ok();
}

// --- Attributes -------------------------------------------------------------

void Memfs::getattr(const Context&, uint64_t ino, std::optional<uint64_t>, AttrReply reply) {
  struct stat st;
  const int error = with_inode(ino, [&](Inode* node) {
    st = node->attr();
    return 0;
  });
  if (error != 0) return reply.error(error);
  reply.ok(st, options_.attr_timeout);
}

void Memfs::setattr(const Context&, uint64_t ino, const SetAttr& attr, AttrReply reply) {
  struct stat st;
  const int error = with_inode(ino, [&](Inode* node) {
    const uint32_t v = attr.valid;
    if (v & SetAttr::kSize) {
      if (node->is_dir()) return EISDIR;
      if (!node->is_reg()) return EINVAL;
      if (attr.size > FileData::kMaxSize) return EFBIG;
    }
    const timespec t = now();
    bool changed = false;
    if (v & SetAttr::kMode) {
      node->perm = attr.mode & 07777;
      changed = true;
    }
    if (v & (SetAttr::kUid | SetAttr::kGid)) {
      if (v & SetAttr::kUid) node->uid = attr.uid;
      if (v & SetAttr::kGid) node->gid = attr.gid;
      // chown(2) of a non-directory drops set-user-ID and set-group-ID
      // (FUSE_HANDLE_KILLPRIV_V2: the kernel leaves it to us).
      if (!(v & SetAttr::kMode) && !node->is_dir()) node->perm = kill_suid(node->perm);
      drop_capability(node);
      changed = true;
    }
    if (v & SetAttr::kKillSuidgid) {
      node->perm = kill_suid(node->perm);
      changed = true;
    }
    if (v & SetAttr::kSize) {
      drop_capability(node);
      node->data.truncate(attr.size);
      node->mtime = t;
      changed = true;
    }
    if (v & SetAttr::kAtime) {
      node->atime = attr.atime;
      changed = true;
    }
    if (v & SetAttr::kMtime) {
      node->mtime = attr.mtime;
      changed = true;
    }
    if (v & SetAttr::kCtime) {
      node->ctime = attr.ctime;
    } else if (changed) {
      node->ctime = t;
    }
    st = node->attr();
    return 0;
  });
  if (error != 0) return reply.error(error);
  reply.ok(st, options_.attr_timeout);
}

void Memfs::readlink(const Context&, uint64_t ino, ReadlinkReply reply) {
  std::string target;
  const int error = with_inode(ino, [&](Inode* node) {
    if (node->type != S_IFLNK) return EINVAL;
    target = node->target;
    return 0;
  });
  if (error != 0) return reply.error(error);
  reply.ok(target);
}

void Memfs::access(const Context& ctx, uint64_t ino, uint32_t mask, StatusReply reply) {
  const int error = with_inode(ino, [&](Inode* node) {
    if (mask == F_OK) return 0;
    if (ctx.uid == 0) {
      // Root reads and writes anything, and executes what anyone may
      // execute, and any directory (Linux: capable_wrt_inode_uidgid).
      const bool exec_ok = node->is_dir() || (node->perm & (S_IXUSR | S_IXGRP | S_IXOTH));
      return (mask & X_OK) && !exec_ok ? EACCES : 0;
    }
    uint32_t bits;
    if (ctx.uid == node->uid) {
      bits = (node->perm >> 6) & 7;
    } else if (ctx.gid == node->gid) {
      bits = (node->perm >> 3) & 7;
    } else {
      bits = node->perm & 7;
    }
    return (mask & bits) == mask ? 0 : EACCES;
  });
  if (error != 0) return reply.error(error);
  reply.ok();
}

void Memfs::statfs(const Context&, uint64_t, StatfsReply reply) {
  uint64_t inodes;
  {
    util::ReaderLock tree(tree_mu_);
    inodes = inodes_.size();
  }
  const uint64_t used = std::min(space_.used(), space_.capacity());
  struct statvfs st {};
  st.f_bsize = kBlockSize;
  st.f_frsize = kBlockSize;
  st.f_blocks = space_.capacity() / kBlockSize;
  st.f_bfree = (space_.capacity() - used) / kBlockSize;
  st.f_bavail = st.f_bfree;
  st.f_files = options_.max_inodes;
  st.f_ffree = options_.max_inodes - std::min(inodes, options_.max_inodes);
  st.f_favail = st.f_ffree;
  st.f_namemax = kNameMax;
  reply.ok(st);
}

// --- Extended attributes ----------------------------------------------------

void Memfs::setxattr(const Context&, uint64_t ino, std::string_view name,
                     std::span<const std::byte> value, uint32_t flags, StatusReply reply) {
  if (int e = check_xattr_key(name); e != 0) return reply.error(e);
  if (flags & ~uint32_t(XATTR_CREATE | XATTR_REPLACE)) return reply.error(EINVAL);
  if (int e = check_xattr_namespace(name)) return reply.error(e);
  if (value.size() > kXattrSizeMax) return reply.error(E2BIG);
  const int error = with_inode(ino, [&](Inode* node) {
    auto it = node->xattrs.find(name);
    const bool exists = it != node->xattrs.end();
    if (exists && (flags & XATTR_CREATE)) return EEXIST;
    if (!exists && (flags & XATTR_REPLACE)) return ENODATA;
    const uint64_t old_size = exists ? name.size() + it->second.size() : 0;
    const uint64_t new_size = name.size() + value.size();
    if (new_size > old_size && !space_.reserve(new_size - old_size)) return ENOSPC;
    if (new_size < old_size) space_.release(old_size - new_size);
    node->xattr_bytes = node->xattr_bytes - old_size + new_size;
    if (exists) {
      it->second.assign(value.begin(), value.end());
    } else {
      node->xattrs.emplace(std::string(name), std::vector<std::byte>(value.begin(), value.end()));
    }
    node->ctime = now();
    return 0;
  });
  if (error != 0) return reply.error(error);
  reply.ok();
}

void Memfs::getxattr(const Context&, uint64_t ino, std::string_view name, XattrReply reply) {
  if (int e = check_xattr_key(name); e != 0) return reply.error(e);
  if (int e = check_xattr_namespace(name)) return reply.error(e);
  std::vector<std::byte> value;
  const int error = with_inode(ino, [&](Inode* node) {
    auto it = node->xattrs.find(name);
    if (it == node->xattrs.end()) return ENODATA;
    value = it->second;
    return 0;
  });
  if (error != 0) return reply.error(error);
  reply.ok(std::span<const std::byte>(value));
}

void Memfs::listxattr(const Context& ctx, uint64_t ino, XattrReply reply) {
  std::string names;
  const int error = with_inode(ino, [&](Inode* node) {
    for (const auto& [name, value] : node->xattrs) {
      // trusted.* is for CAP_SYS_ADMIN only; root stands for it here.
      if (ctx.uid != 0 && name.starts_with("trusted.")) continue;
      names.append(name);
      names.push_back('\0');
    }
    return 0;
  });
  if (error != 0) return reply.error(error);
  reply.ok(std::string_view(names));
}

void Memfs::removexattr(const Context&, uint64_t ino, std::string_view name, StatusReply reply) {
  if (int e = check_xattr_key(name); e != 0) return reply.error(e);
  if (int e = check_xattr_namespace(name)) return reply.error(e);
  const int error = with_inode(ino, [&](Inode* node) {
    if (!erase_xattr(node, name)) return ENODATA;
    node->ctime = now();
    return 0;
  });
  if (error != 0) return reply.error(error);
  reply.ok();
}

// --- Open files -------------------------------------------------------------

void Memfs::open(const Context& ctx, uint64_t ino, uint32_t flags, OpenReply reply) {
  uint64_t fh = 0;
  const int error = with_inode(ino, [&](Inode* node) {
    if (node->is_dir()) return EISDIR;
    // O_TRUNC comes here with FUSE_ATOMIC_O_TRUNC. It updates mtime and
    // ctime even when the file was empty (POSIX open).
    if ((flags & O_TRUNC) && node->is_reg()) truncate_on_open(ctx, node);
    fh = next_fh_.fetch_add(1, std::memory_order_relaxed);
    node->handles.emplace(fh, flags);
    return 0;
  });
  if (error != 0) return reply.error(error);
  reply.ok(fh, 0);
}

void Memfs::read(const Context&, uint64_t ino, uint64_t fh, uint64_t offset, uint32_t size,
                 std::span<const iovec> dst, ReadReply reply) {
  size_t n = 0;
  const int error = with_handle(ino, fh, [&](Inode* node, uint32_t) {
    if (node->is_dir()) return EISDIR;
    if (!node->is_reg()) return EINVAL;
    n = node->data.read(offset, size, dst);
    node->touch_atime(now());
    return 0;
  });
  if (error != 0) return reply.error(error);
  reply.ok(n);
}

void Memfs::write(const Context&, uint64_t ino, uint64_t fh, uint64_t offset,
                  std::span<const iovec> src, uint32_t write_flags, WriteReply reply) {
  int64_t n = 0;
  const int error = with_handle(ino, fh, [&](Inode* node, uint32_t open_flags) {
    if ((open_flags & O_ACCMODE) == O_RDONLY) return EBADF;
    if (node->is_dir()) return EISDIR;
    if (!node->is_reg()) return EINVAL;
    n = node->data.write(offset, src);
    if (n < 0) return int(-n);
    node->mtime = node->ctime = now();
    if (write_flags & FUSE_WRITE_KILL_SUIDGID) node->perm = kill_suid(node->perm);
    drop_capability(node);
    return 0;
  });
  if (error != 0) return reply.error(error);
  reply.ok(size_t(n));
}

void Memfs::release(const Context&, uint64_t ino, uint64_t fh, uint32_t, uint64_t lock_owner,
                    ReleaseFlock flock, StatusReply reply) {
  Completions done;  // declared first: answered after the locks are released
  bool unused = false;
  const int error = with_inode(ino, [&](Inode* node) {
    if (node->handles.erase(fh) == 0) return EBADF;
    if (flock == ReleaseFlock::kUnlock)
      locks_.release_owner(ino, lock_owner, LockFlavor::kFlock, done);
    locks_.cancel_handle(ino, fh, done);
    unused = node->unused();
    return 0;
  });
  if (unused) collect(ino);
  if (error != 0) return reply.error(error);
  reply.ok();
}

void Memfs::flush(const Context&, uint64_t ino, uint64_t fh, uint64_t lock_owner,
                  StatusReply reply) {
  Completions done;
  const int error = with_handle(ino, fh, [&](Inode*, uint32_t) {
    // close(2) drops every POSIX lock the closing process holds on the file.
    locks_.release_owner(ino, lock_owner, LockFlavor::kPosix, done);
    return 0;
  });
  if (error != 0) return reply.error(error);
  reply.ok();
}

void Memfs::fsync(const Context&, uint64_t ino, uint64_t fh, SyncMode, StatusReply reply) {
  const int error = with_handle(ino, fh, [](Inode*, uint32_t) { return 0; });
  if (error != 0) return reply.error(error);
  reply.ok();
}

void Memfs::fsyncdir(const Context& ctx, uint64_t ino, uint64_t fh, SyncMode mode,
                     StatusReply reply) {
  fsync(ctx, ino, fh, mode, std::move(reply));
}

void Memfs::syncfs(const Context&, uint64_t, StatusReply reply) { reply.ok(); }

void Memfs::fallocate(const Context&, uint64_t ino, uint64_t fh, uint32_t mode, uint64_t offset,
                      uint64_t length, StatusReply reply) {
  const int error = with_handle(ino, fh, [&](Inode* node, uint32_t open_flags) {
    if ((open_flags & O_ACCMODE) == O_RDONLY) return EBADF;
    if (node->is_dir()) return EISDIR;
    if (!node->is_reg()) return ENODEV;
    if (int e = node->data.fallocate(mode, offset, length)) return -e;
    node->mtime = node->ctime = now();
    return 0;
  });
  if (error != 0) return reply.error(error);
  reply.ok();
}

void Memfs::lseek(const Context&, uint64_t ino, uint64_t fh, uint64_t offset, uint32_t whence,
                  LseekReply reply) {
  int64_t pos = 0;
  const int error = with_handle(ino, fh, [&](Inode* node, uint32_t) {
    if (!node->is_reg() || (whence != SEEK_DATA && whence != SEEK_HOLE)) return EINVAL;
    pos = node->data.seek(offset, int(whence));
    return pos < 0 ? int(-pos) : 0;
  });
  if (error != 0) return reply.error(error);
  reply.ok(uint64_t(pos));
}

void Memfs::copy_file_range(const Context& ctx, const CopyRange& range, WriteReply reply) {
  if (range.flags != 0) return reply.error(EINVAL);
  const uint64_t ino_in = range.ino_in;
  const uint64_t ino_out = range.ino_out;
  int64_t n = 0;
  const int error = [&] {
    util::ReaderLock tree(tree_mu_);
    Inode* in = find(ino_in);
    Inode* out = find(ino_out);
    if (in == nullptr || out == nullptr) return EBADF;
    if (in->is_dir() || out->is_dir()) return EISDIR;
    if (!in->is_reg() || !out->is_reg()) return EINVAL;
    // Two inode locks: in increasing ino order.
    std::unique_lock<std::mutex> first(ino_in <= ino_out ? in->mu : out->mu);
    std::unique_lock<std::mutex> second;
    if (in != out) second = std::unique_lock<std::mutex>(ino_in <= ino_out ? out->mu : in->mu);
    const uint32_t* out_flags = out->handle(range.fh_out);
    if (in->handle(range.fh_in) == nullptr || out_flags == nullptr ||
        (*out_flags & O_ACCMODE) == O_RDONLY) {
      return EBADF;
    }
    n = FileData::copy(in->data, range.off_in, out->data, range.off_out, range.len);
    if (n < 0) return int(-n);
    if (n > 0) {
      out->mtime = out->ctime = now();
      // Data written, as by WRITE (vfs_copy_file_range: file_remove_privs).
      if (ctx.kill_suidgid) out->perm = kill_suid(out->perm);
      drop_capability(out);
    }
    return 0;
  }();
  if (error != 0) return reply.error(error);
  reply.ok(size_t(n));
}

// --- Directories ------------------------------------------------------------

void Memfs::opendir(const Context&, uint64_t ino, uint32_t flags, OpenReply reply) {
  uint64_t fh = 0;
  const int error = with_inode(ino, [&](Inode* node) {
    if (!node->is_dir()) return ENOTDIR;
    fh = next_fh_.fetch_add(1, std::memory_order_relaxed);
    node->handles.emplace(fh, flags);
    return 0;
  });
  if (error != 0) return reply.error(error);
  reply.ok(fh, 0);
}

void Memfs::readdir(const Context&, uint64_t ino, uint64_t fh, uint64_t offset, DirReply reply) {
  // Entries are encoded into the tenant's buffer under the locks (add() only
  // copies); the reply is sent after.
  const int error = [&] {
    util::ReaderLock tree(tree_mu_);
    Inode* dir = find(ino);
    if (dir == nullptr) return ESTALE;
    if (!dir->is_dir()) return ENOTDIR;
    {
      std::lock_guard lock(dir->mu);
      if (dir->handle(fh) == nullptr) return EBADF;
      dir->touch_atime(now());
    }
    const bool plus = reply.plus();
    // "." and ".." carry attributes in READDIRPLUS but no lookup: the kernel
    // does not count them.
    auto add_dot = [&](std::string_view name, Inode* node, uint64_t next) {
      if (!plus) return reply.add(name, node->ino, DT_DIR, next);
      std::lock_guard lock(node->mu);
      return reply.add_plus(name, entry_of(*node), next);
    };
    if (offset < 1 && !add_dot(".", dir, 1)) return 0;
    if (offset < 2) {
      Inode* up = find(dir->parent);  // gone only for a removed directory
      if (!add_dot("..", up != nullptr ? up : dir, 2)) return 0;
    }
    for (auto it = dir->by_seq.upper_bound(std::max<uint64_t>(offset, kFirstSeq - 1));
         it != dir->by_seq.end(); ++it) {
      const auto& [name, dirent] = *it->second;
      if (!plus) {
        if (!reply.add(name, dirent.ino, dirent.type >> 12, it->first)) break;
        continue;
      }
      Inode* child = find(dirent.ino);
      std::lock_guard lock(child->mu);
      if (!reply.add_plus(name, entry_of(*child), it->first)) break;
      ++child->lookups;
    }
    return 0;
  }();
  if (error != 0) return reply.error(error);
  reply.done();
}

void Memfs::releasedir(const Context&, uint64_t ino, uint64_t fh, StatusReply reply) {
  bool unused = false;
  const int error = with_inode(ino, [&](Inode* node) {
    if (node->handles.erase(fh) == 0) return EBADF;
    unused = node->unused();
    return 0;
  });
  if (unused) collect(ino);
  if (error != 0) return reply.error(error);
  reply.ok();
}

// --- Locks ------------------------------------------------------------------

void Memfs::getlk(const Context&, uint64_t ino, uint64_t fh, uint64_t owner, const Lock& lock,
                  LockReply reply) {
  Lock result;
  const int error = with_handle(ino, fh, [&](Inode*, uint32_t) {
    result = locks_.test(ino, owner, lock);
    return 0;
  });
  if (error != 0) return reply.error(error);
  reply.ok(result);
}

void Memfs::setlk(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t owner, const Lock& lock,
                  LockWait wait, LockFlavor flavor, StatusReply reply) {
  Completions done;  // the answer (now or for a waiter: later), after the locks
  const int error = with_handle(ino, fh, [&](Inode*, uint32_t) {
    // Under the inode lock, so that a waiter never outlives its handle:
    // release() removes the handle and cancels its waiters under it too.
    locks_.set(ino, fh, owner, lock, wait, flavor, ctx.unique, std::move(reply), done);
    return 0;
  });
  if (error != 0) reply.error(error);
}

void Memfs::interrupt(uint64_t unique) {
  Completions done;
  locks_.interrupt(unique, done);
}

// --- Session ----------------------------------------------------------------

void Memfs::destroy() {
  // The kernel forgets every inode and closes every file when the session
  // ends (a FUSE unmount, a virtio-fs reset); the files stay for the next one.
  Completions done;
  util::WriterLock tree(tree_mu_);
  locks_.clear(EINTR, done);
  std::vector<Inode*> all;
  all.reserve(inodes_.size());
  for (auto& [ino, node] : inodes_) {
    node->lookups = 0;
    node->handles.clear();
    all.push_back(node.get());
  }
  for (Inode* node : all) free_if_unused(node);
}

}  // namespace dpfs
