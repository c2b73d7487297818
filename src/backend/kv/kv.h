// The KV backend: a POSIX file system kept in Redis, shared by every dpfs
// device (on any host) that mounts the same FSNAME -- DPFS-KV grown up.
//
// Metadata (inodes, directories, symlinks, xattrs) lives under one Redis
// Cluster hash tag, and every change is one Lua script the store runs
// atomically (scripts.h; the layout in docs/kv.md). File data is in chunks
// of a size fixed at format time, one key each, without the tag: spread
// over a cluster's shards. Node ids are the store's inode numbers, never
// reused, so every device names a file the same way, and one that was
// removed elsewhere answers ESTALE.
//
// Consistency between devices is close-to-open, as NFS gives: nothing is
// cached here, so a READ sees every WRITE the store answered before it; the
// kernel caches names and attributes for the fuse timeouts.
//
// POSIX and flock locks hold between devices: they are kept in the store,
// each device holding a lease on its own (a device that dies loses them
// when the lease runs out); a SETLKW that conflicts is tried again every
// 20 ms until it is granted or interrupted.
//
// The store is one Redis server or a Redis Cluster (kv::Store routes each
// command to its slot's master).
//
// Not yet: a file removed on one device while another has it open (that
// one then gets ESTALE), READDIRPLUS, SEEK_DATA/SEEK_HOLE,
// O_TMPFILE.
//
// Safe for concurrent use by any number of workers. A worker adopts a lane
// of connections (attach_worker: one per worker while lanes last, see
// `connections`) and answers its own requests on itself; the rest are
// answered on the lanes' loop threads.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "backend/backend.h"
#include "backend/early_interrupts.h"
#include "backend/kv/scripts.h"
#include "backend/kv/store.h"
#include "backend/kv/url.h"
#include "util/rate_limited_log.h"
#include "util/unique_function.h"

namespace dpfs {

// A SETLKW waiting for a conflicting lock to go.
struct Waiter {
  uint64_t id = 0;
  uint64_t ino = 0;
  uint64_t fh = 0;
  uint64_t unique = 0;
  std::vector<std::string> args;  // kSetlk's
  bool in_flight = false;         // an attempt is out
  StatusReply reply;
};

struct KvOptions {
  kv::KvUrl url;
  unsigned connections = 2;  // per server: lanes (kv::Store), one for each worker to drive
  double entry_timeout = 1.0;
  double attr_timeout = 1.0;
};

class KvBackend final : public Backend {
 public:
  // Connects and checks the file system's format (blocking: start-up
  // only). Throws std::runtime_error with one line for the operator.
  explicit KvBackend(KvOptions options);
  ~KvBackend() override;

  Capabilities capabilities() const override;
  std::vector<std::string> stats() const override;
  std::unique_ptr<WorkerHook> attach_worker() override;
  void resumed() override;

  void lookup(const Context& ctx, uint64_t parent, std::string_view name,
              EntryReply reply) override;
  void forget(uint64_t ino, uint64_t nlookup) override;
  void getattr(const Context& ctx, uint64_t ino, std::optional<uint64_t> fh,
               AttrReply reply) override;
  void setattr(const Context& ctx, uint64_t ino, const SetAttr& attr, AttrReply reply) override;
  void readlink(const Context& ctx, uint64_t ino, ReadlinkReply reply) override;
  void symlink(const Context& ctx, uint64_t parent, std::string_view name, std::string_view target,
               EntryReply reply) override;
  void mknod(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
             uint32_t rdev, uint32_t umask, EntryReply reply) override;
  void mkdir(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
             uint32_t umask, EntryReply reply) override;
  void unlink(const Context& ctx, uint64_t parent, std::string_view name,
              StatusReply reply) override;
  void rmdir(const Context& ctx, uint64_t parent, std::string_view name,
             StatusReply reply) override;
  void rename(const Context& ctx, uint64_t parent, std::string_view name, uint64_t new_parent,
              std::string_view new_name, uint32_t flags, StatusReply reply) override;
  void link(const Context& ctx, uint64_t ino, uint64_t new_parent, std::string_view new_name,
            EntryReply reply) override;
  void statfs(const Context& ctx, uint64_t ino, StatfsReply reply) override;
  void open(const Context& ctx, uint64_t ino, uint32_t flags, OpenReply reply) override;
  void create(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
              uint32_t umask, uint32_t flags, CreateReply reply) override;
  void read(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset, uint32_t size,
            std::span<const iovec> dst, ReadReply reply) override;
  void write(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset,
             std::span<const iovec> src, uint32_t write_flags, WriteReply reply) override;
  void fallocate(const Context& ctx, uint64_t ino, uint64_t fh, uint32_t mode, uint64_t offset,
                 uint64_t length, StatusReply reply) override;
  void flush(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t lock_owner,
             StatusReply reply) override;
  void release(const Context& ctx, uint64_t ino, uint64_t fh, uint32_t flags, uint64_t lock_owner,
               ReleaseFlock flock, StatusReply reply) override;
  void fsync(const Context& ctx, uint64_t ino, uint64_t fh, SyncMode mode,
             StatusReply reply) override;
  void opendir(const Context& ctx, uint64_t ino, uint32_t flags, OpenReply reply) override;
  void readdir(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset,
               DirReply reply) override;
  void releasedir(const Context& ctx, uint64_t ino, uint64_t fh, StatusReply reply) override;
  void fsyncdir(const Context& ctx, uint64_t ino, uint64_t fh, SyncMode mode,
                StatusReply reply) override;
  void setxattr(const Context& ctx, uint64_t ino, std::string_view name,
                std::span<const std::byte> value, uint32_t flags, StatusReply reply) override;
  void getxattr(const Context& ctx, uint64_t ino, std::string_view name, XattrReply reply) override;
  void listxattr(const Context& ctx, uint64_t ino, XattrReply reply) override;
  void removexattr(const Context& ctx, uint64_t ino, std::string_view name,
                   StatusReply reply) override;
  void getlk(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t owner, const Lock& lock,
             LockReply reply) override;
  void setlk(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t owner, const Lock& lock,
             LockWait wait, LockFlavor flavor, StatusReply reply) override;
  void interrupt(uint64_t unique) override;
  void destroy() override;

  // A script's outcome: the errno, or 0 and the reply array.
  using Then = util::UniqueFunction<void(int error, const struct redisReply* r)>;

 private:
  // Lanes (kv::Store): commands to one node on one lane run in the order
  // sent. kAnyLane: the next in turn.
  static constexpr unsigned kAnyLane = ~0u;
  // Runs `script` with `args`; `then` gets the reply array's elements after
  // the status (or the errno: EIO when the store did not answer).
  void run(kv::Script script, std::vector<std::string> args, Then then, unsigned lane = kAnyLane);
  // EVALSHA of `script` on `key` (EVAL when the store forgot it).
  void eval(kv::Script script, std::string key, std::vector<std::string> args, kv::Done done,
            unsigned lane = kAnyLane);
  // A chunk script on chunk `index` of `ino`: then(error, bytes it grew).
  void run_chunk(kv::Script script, uint64_t ino, uint64_t index, std::vector<std::string> args,
                 util::UniqueFunction<void(int, int64_t)> then, unsigned lane = kAnyLane);
  // Runs `script` on each chunk of `ino` in `indexes` (args(c) its
  // arguments, asked at once) together; then(the first error, what they
  // grew in all).
  void run_chunks(kv::Script script, uint64_t ino, const std::vector<uint64_t>& indexes,
                  const std::function<std::vector<std::string>(uint64_t)>& args,
                  util::UniqueFunction<void(int, int64_t)> then, unsigned lane);
  // Sends `argv` on `key`'s node.
  void send(std::string key, std::vector<std::string> argv, kv::Done done,
            unsigned lane = kAnyLane);
  Entry entry_from(const struct redisReply* r, size_t at) const;
  // Deletes the chunks of `ino` with indexes in [first, last] (those its
  // chunk index lists, a batch at a time), then `then(error)`.
  void drop_chunks(uint64_t ino, uint64_t first, uint64_t last,
                   util::UniqueFunction<void(int)> then);
  struct DropWalk;
  void drop_batch(std::shared_ptr<DropWalk> walk);
  // Runs a chunk script on chunks [first, last] of `ino`, a batch at a time
  // (args(index) gives each one's arguments); then(error, bytes they grew).
  void each_chunk(kv::Script script, uint64_t ino, uint64_t first, uint64_t last,
                  std::function<std::vector<std::string>(uint64_t)> args,
                  util::UniqueFunction<void(int, int64_t)> then);
  struct ChunkWalk;
  void chunk_batch(std::shared_ptr<ChunkWalk> walk);
  // The store's memory, used and in all (every master's), in bytes.
  void memory(util::UniqueFunction<void(int, uint64_t used, uint64_t total)> then);
  // Zeroes the data of `ino` past `size`, then `then`.
  void clear_past(uint64_t ino, uint64_t size, uint64_t old_size,
                  util::UniqueFunction<void(int)> then);
  // The highest chunk index a file can have.
  uint64_t last_index() const;
  // The last name of `ino` went: frees it now, or once the kernel here
  // holds no lookup of it and no handle (as a local file system keeps an
  // unlinked inode its users still hold).
  void unlinked(uint64_t ino);
  void free_inode(uint64_t ino);
  // Answers `reply` with `entry`, one lookup of it counted first.
  void answer_entry(EntryReply& reply, const Entry& entry);
  uint64_t count_lookup(uint64_t ino);  // returns ino
  // A file handle of `ino` (open files, and directories).
  uint64_t add_handle(uint64_t ino);
  // Drops a handle; true if `ino` waits to be freed and this was the last
  // thing here that held it.
  bool drop_handle(uint64_t ino, uint64_t fh);
  bool known_handle(uint64_t ino, uint64_t fh);
  // Answers once what was written is as durable as the URL asks (FSYNC, and
  // a close after writes): with durability=replica, a replica has it.
  void sync_data(StatusReply reply);
  void set_size(const Context& ctx, uint64_t ino, uint64_t size, uint32_t valid, Then then);

  // Locks live in the store, under owner names unique to this device
  // ("DEVICE:OWNER:p|f"); the device keeps a lease on them (a heartbeat),
  // so the locks of a device that died go when its lease runs out.
  std::string lock_owner(uint64_t owner, LockFlavor flavor) const;
  // Drops `owner`'s locks on `ino` if it took any here, then `then`.
  void unlock_owner(uint64_t ino, uint64_t owner, LockFlavor flavor,
                    util::UniqueFunction<void()> then);
  // Drops every lock of this device (the session ended); waits for it.
  void drop_device_locks();
  void heartbeat();
  // The thread that keeps the lease and tries the waiting SETLKWs again.
  void lock_loop();
  // Answers the waiters that `pick` chooses with `error`.
  void answer_waiters(const std::function<bool(const struct Waiter&)>& pick, int error);

  const KvOptions options_;
  // What the store answers wrongly is logged here: a store gone bad must
  // not flood the operator's log.
  mutable util::RateLimitedLog log_{"kv"};
  const std::string prefix_;      // dpfs:{FSNAME}:
  const std::string format_key_;  // prefix_ + "format": routes every script
  uint64_t chunk_size_ = 0;
  std::unique_ptr<kv::Store> store_;
  std::atomic<uint64_t> next_fh_{1};

  std::mutex mu_;
  // What the kernel here holds of an inode: lookups (until FORGET) and
  // open handles.
  struct Held {
    uint64_t lookups = 0;
    uint32_t open = 0;
    bool doomed = false;  // no name left: freed when nothing holds it
    bool unused() const { return lookups == 0 && open == 0; }
  };
  // fh -> ino; guarded by mu_. A handle names its inode (ino << 24 | a
  // counter), so that a successor process can take the kernel's handles
  // over (resumed()); inodes from 2^39 on get handles with bit 63 set, which
  // cannot be.
  std::unordered_map<uint64_t, uint64_t> handles_;
  bool resumed_ = false;  // guarded by mu_
  // Handles written through since their last FSYNC or close (durability=replica).
  std::unordered_set<uint64_t> written_;     // guarded by mu_
  std::unordered_map<uint64_t, Held> held_;  // guarded by mu_
  // (ino, owner name) that took locks here: only those unlock on close.
  std::set<std::pair<uint64_t, std::string>> lockers_;  // guarded by mu_
  bool locked_ = false;  // a lock was taken since the device's were last dropped; mu_

  std::string device_;  // this device's name in lock owners
  std::mutex wait_mu_;
  std::condition_variable wait_cv_;
  std::list<Waiter> waiters_;  // SETLKWs that conflicted; guarded by wait_mu_
  // INTERRUPTs that found no waiter: their SETLKW's first try was still out
  // (or it was answered already). Guarded by wait_mu_.
  EarlyInterrupts early_interrupts_;
  uint64_t next_waiter_ = 1;  // guarded by wait_mu_
  bool stop_ = false;         // guarded by wait_mu_
  std::thread lock_thread_;
};

}  // namespace dpfs
