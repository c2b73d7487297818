// The address of a KV file system: redis://HOST:PORT[,HOST:PORT...]/FSNAME
// [?timeout=SECONDS][&locks=local|shared][&durability=none|local|replica]. The hosts are one Redis
// server, or seeds of a Redis Cluster; FSNAME names the file system inside it (many file systems
// may share one store).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dpfs::kv {

struct Endpoint {
  std::string host;
  int port = 6379;
  bool operator==(const Endpoint&) const = default;
};

// Where FSYNC, and the close of a file written through that handle, wait
// for its data to be.
enum class Durability {
  kNone,     // in the store's memory: they wait for nothing more
  kLocal,    // on each master's disk: every master must run appendonly yes and
             // appendfsync always (checked at start-up), which writes each
             // change to its AOF before answering
  kReplica,  // in the memory of a replica too (WAIT 1)
};

struct KvUrl {
  std::vector<Endpoint> servers;
  std::string fsname;
  std::chrono::milliseconds timeout{10000};  // a command unanswered this long fails (EIO)
  // POSIX and flock locks kept in the store, so that they hold between
  // devices (the default, ?locks=shared); with ?locks=local each device's kernel
  // keeps its tenant's locks itself.
  bool shared_locks = true;
  Durability durability = Durability::kNone;
  bool operator==(const KvUrl&) const = default;
};

// Throws std::invalid_argument naming what is wrong.
KvUrl parse_kv_url(std::string_view url);

// The prefix of every key of `fsname`'s metadata: "dpfs:{FSNAME}:". The
// braces make it a Redis Cluster hash tag: all metadata in one slot, so a
// script can change several keys atomically. File data ("dpfs:FSNAME:c:...")
// has no tag and spreads over the cluster.
std::string meta_prefix(const std::string& fsname);
std::string chunk_key(const std::string& fsname, uint64_t ino, uint64_t index);

}  // namespace dpfs::kv
