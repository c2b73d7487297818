#include "backend/kv/admin.h"

#include <fmt/format.h>
#include <hiredis/hiredis.h>

#include <ctime>
#include <memory>
#include <stdexcept>
#include <vector>

namespace dpfs::kv {
namespace {

struct Free {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Context = BlockingContext;
using Reply = std::unique_ptr<redisReply, Free>;

Context connect_to(const KvUrl& url, const Endpoint& e) {
  std::string why;
  BlockingContext c = connect_blocking(e, url.timeout, &why);
  if (!c)
    throw std::runtime_error(fmt::format("redis {}:{}: cannot connect: {}", e.host, e.port, why));
  return c;
}

// The server that keeps the file system's metadata: the one server, or the
// master of its hash tag's slot in a cluster.
Context connect(const KvUrl& url, const Topology& t) {
  return connect_to(url, master_of(t.map, key_slot(meta_prefix(url.fsname))));
}

Reply command(redisContext* c, const std::vector<std::string>& argv) {
  std::vector<const char*> a;
  std::vector<size_t> lens;
  for (const std::string& s : argv) {
    a.push_back(s.data());
    lens.push_back(s.size());
  }
  Reply r(static_cast<redisReply*>(redisCommandArgv(c, int(a.size()), a.data(), lens.data())));
  if (!r) throw std::runtime_error(fmt::format("redis: {}", c->errstr));
  if (r->type == REDIS_REPLY_ERROR) {
    throw std::runtime_error(fmt::format("redis {}: {}", argv.front(), r->str));
  }
  return r;
}

uint64_t number(const redisReply* r) {
  if (r == nullptr || r->type != REDIS_REPLY_STRING) return 0;
  return std::strtoull(r->str, nullptr, 10);
}

}  // namespace

uint64_t info_field(std::string_view info, std::string_view key) {
  const std::string text = "\n" + std::string(info);
  const std::string line = "\n" + std::string(key) + ":";
  const size_t at = text.find(line);
  return at == std::string::npos ? 0 : std::strtoull(text.c_str() + at + line.size(), nullptr, 10);
}

void format(const KvUrl& url, uint64_t chunk_size) {
  if (chunk_size < 4096 || chunk_size > (4u << 20) || (chunk_size & (chunk_size - 1)) != 0) {
    throw std::runtime_error(
        fmt::format("chunk size {} is not a power of two from 4K to 4M", chunk_size));
  }
  Context c = connect(url, discover(url));
  const std::string p = meta_prefix(url.fsname);
  const std::string now = std::to_string(std::time(nullptr));
  // One script: nothing is half made, and a second format finds the first.
  static const char kFormat[] = R"lua(
local p = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'magic', 'dpfs-kv', 'version', ARGV[2], 'chunk_size', ARGV[3],
           'created', ARGV[4])
redis.call('SET', p .. 'next', 1)
redis.call('HSET', p .. 'stats', 'inodes', 1)
redis.call('HSET', p .. 'i:1', 'mode', 16877, 'uid', 0, 'gid', 0, 'nlink', 2, 'size', 0,
           'rdev', 0, 'as', ARGV[4], 'an', 0, 'ms', ARGV[4], 'mn', 0, 'cs', ARGV[4], 'cn', 0,
           'parent', 1, 'seq', 0)
return 1
)lua";
  Reply r = command(c.get(), {"EVAL", kFormat, "1", p + "format", p, std::to_string(kFormatVersion),
                              std::to_string(chunk_size), now});
  if (r->type != REDIS_REPLY_INTEGER || r->integer != 1) {
    throw std::runtime_error(fmt::format(
        "{} is formatted already; dpfs kv format never overwrites a file system", url.fsname));
  }
}

FormatInfo read_format(const KvUrl& url) { return read_format(url, discover(url)); }

FormatInfo read_format(const KvUrl& url, const Topology& t) {
  Context c = connect(url, t);
  const std::string p = meta_prefix(url.fsname);
  Reply f = command(c.get(), {"HMGET", p + "format", "magic", "version", "chunk_size", "created"});
  if (f->type != REDIS_REPLY_ARRAY || f->elements != 4 ||
      f->element[0]->type != REDIS_REPLY_STRING) {
    throw std::runtime_error(fmt::format(
        "{}: no dpfs file system named '{}' in this store; make one with: dpfs kv format URL",
        url.servers.front().host, url.fsname));
  }
  if (std::string(f->element[0]->str) != "dpfs-kv") {
    throw std::runtime_error(fmt::format("{}: not a dpfs file system", url.fsname));
  }
  FormatInfo info;
  info.version = int(number(f->element[1]));
  info.chunk_size = number(f->element[2]);
  info.created = int64_t(number(f->element[3]));
  if (info.version > kFormatVersion) {
    throw std::runtime_error(
        fmt::format("{}: format version {} is newer than this dpfs reads ({}); upgrade dpfs",
                    url.fsname, info.version, kFormatVersion));
  }
  if (info.version < kOldestFormatVersion) {
    throw std::runtime_error(fmt::format(
        "{}: format version {} is older than this dpfs reads ({} to {}): its files have no "
        "chunk index; copy them into a file system made with this dpfs's `dpfs kv format`",
        url.fsname, info.version, kOldestFormatVersion, kFormatVersion));
  }
  if (info.chunk_size < 4096 || (info.chunk_size & (info.chunk_size - 1)) != 0) {
    throw std::runtime_error(fmt::format("{}: chunk size {} in its format record is not valid",
                                         url.fsname, info.chunk_size));
  }
  Reply s = command(c.get(), {"HGET", p + "stats", "inodes"});
  info.inodes = number(s.get());
  Reply n = command(c.get(), {"GET", p + "next"});
  info.next_ino = number(n.get());
  // A cluster's memory is its masters' together.
  info.masters = t.map.masters.size();
  info.cluster = t.cluster;
  for (const Endpoint& master : t.map.masters) {
    Context mc = connect_to(url, master);
    Reply m = command(mc.get(), {"INFO", "memory"});
    if (m->type == REDIS_REPLY_STRING || m->type == REDIS_REPLY_STATUS) {
      const std::string_view text(m->str, m->len);
      info.used_memory += info_field(text, "used_memory");
      info.max_memory += info_field(text, "maxmemory");
    }
  }
  return info;
}

std::string describe(const KvUrl& url, const FormatInfo& info) {
  char created[64] = "?";
  const time_t t = time_t(info.created);
  if (struct tm tm; gmtime_r(&t, &tm) != nullptr) {
    std::strftime(created, sizeof(created), "%Y-%m-%d %H:%M:%S UTC", &tm);
  }
  return fmt::format(
      "file system {} on {}{}:{}\n"
      "format version {} (this dpfs reads up to {})\n"
      "chunk size {} bytes\n"
      "inodes {} (last inode number {})\n"
      "store memory used {} bytes{}\n"
      "created {}\n",
      url.fsname,
      info.cluster ? fmt::format("a redis cluster of {} masters, seed ", info.masters)
                   : std::string("redis "),
      url.servers.front().host, url.servers.front().port, info.version, kFormatVersion,
      info.chunk_size, info.inodes, info.next_ino, info.used_memory,
      info.max_memory != 0 ? fmt::format(" of {} (maxmemory)", info.max_memory)
                           : std::string(" (no maxmemory set)"),
      created);
}

void check_local_durability(const KvUrl& url, const Topology& t) {
  for (const Endpoint& master : t.map.masters) {
    Context c = connect_to(url, master);
    for (const auto& [setting, want] :
         {std::pair{"appendonly", "yes"}, {"appendfsync", "always"}}) {
      std::unique_ptr<redisReply, Free> r(
          static_cast<redisReply*>(redisCommand(c.get(), "CONFIG GET %s", setting)));
      const bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                      r->element[1]->type == REDIS_REPLY_STRING &&
                      std::string_view(r->element[1]->str, r->element[1]->len) == want;
      if (!ok) {
        throw std::runtime_error(fmt::format(
            "durability=local needs every master to write each change to its disk before "
            "answering, and {}:{} does not say {} {} (set it: redis-cli -h {} -p {} config set {} "
            "{}; or choose durability=replica or none)",
            master.host, master.port, setting, want, master.host, master.port, setting, want));
      }
    }
  }
}

}  // namespace dpfs::kv
