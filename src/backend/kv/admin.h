// Making and inspecting a KV file system: `dpfs kv format` and `dpfs kv
// info`, and the check a backend makes before it serves one. Blocking
// (hiredis's synchronous API): start-up and the command line only.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "backend/kv/cluster.h"
#include "backend/kv/url.h"

namespace dpfs::kv {

// The on-store format this build writes and reads (docs/kv.md).
// 2: every file has a chunk index (P k:INO). Version 1 had none, and this
// dpfs does not read it.
constexpr int kFormatVersion = 2;
constexpr int kOldestFormatVersion = 2;
constexpr uint64_t kDefaultChunkSize = 64 * 1024;

struct FormatInfo {
  int version = 0;
  uint64_t chunk_size = 0;
  uint64_t inodes = 0;
  uint64_t next_ino = 0;
  int64_t created = 0;       // seconds since the epoch
  uint64_t used_memory = 0;  // the store's, all file systems together
  uint64_t max_memory = 0;   // 0: no limit set
  bool cluster = false;      // a Redis Cluster (memory: its masters' together)
  size_t masters = 1;
};

// Creates the file system `url` names: its format record and an empty root
// directory owned by root, mode 0755. Refuses (std::runtime_error) one that
// exists. `chunk_size`: a power of two from 4 KiB to 4 MiB.
void format(const KvUrl& url, uint64_t chunk_size);

// What `url` holds; throws std::runtime_error if it is not a dpfs file
// system, or one of a newer format than this build reads.
FormatInfo read_format(const KvUrl& url);
// The same in a store already discovered.
FormatInfo read_format(const KvUrl& url, const Topology& store);

// A number of INFO's text ("used_memory:123" -> 123); 0 if it has none.
uint64_t info_field(std::string_view info, std::string_view key);

// `dpfs kv info`'s lines.
std::string describe(const KvUrl& url, const FormatInfo& info);

// Throws std::runtime_error, saying what to set, unless every master writes
// each change to its append-only file before answering (appendonly yes,
// appendfsync always): what ?durability=local promises.
void check_local_durability(const KvUrl& url, const Topology& store);

}  // namespace dpfs::kv
