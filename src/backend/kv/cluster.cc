#include "backend/kv/cluster.h"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <memory>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace dpfs::kv {
namespace {

// CRC16-CCITT as XMODEM computes it (polynomial 0x1021, initial value 0):
// the cluster specification's key hash.
constexpr std::array<uint16_t, 256> make_crc_table() {
  std::array<uint16_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint16_t crc = uint16_t(i << 8);
    for (int bit = 0; bit < 8; ++bit) {
      crc = (crc & 0x8000) != 0 ? uint16_t((crc << 1) ^ 0x1021) : uint16_t(crc << 1);
    }
    t[i] = crc;
  }
  return t;
}
constexpr std::array<uint16_t, 256> kCrcTable = make_crc_table();

uint16_t crc16(std::string_view s) {
  uint16_t crc = 0;
  for (const char c : s) crc = uint16_t((crc << 8) ^ kCrcTable[((crc >> 8) ^ uint8_t(c)) & 0xff]);
  return crc;
}

// A host and port as CLUSTER SLOTS gives them: [host, port, id, ...].
std::optional<Endpoint> node_of(const redisReply* r, const Endpoint& asked) {
  if (r == nullptr || r->type != REDIS_REPLY_ARRAY || r->elements < 2) return std::nullopt;
  const redisReply* host = r->element[0];
  const redisReply* port = r->element[1];
  if (host == nullptr || host->type != REDIS_REPLY_STRING || host->len > 255) return std::nullopt;
  if (port == nullptr || port->type != REDIS_REPLY_INTEGER || port->integer <= 0 ||
      port->integer > 65535) {
    return std::nullopt;
  }
  Endpoint e;
  e.host = host->len == 0 ? asked.host : std::string(host->str, host->len);
  if (e.host == "?") return std::nullopt;  // the node does not know where it is
  e.port = int(port->integer);
  return e;
}

}  // namespace

uint16_t key_slot(std::string_view key) {
  const size_t open = key.find('{');
  if (open != std::string_view::npos) {
    const size_t close = key.find('}', open + 1);
    if (close != std::string_view::npos && close > open + 1) {
      key = key.substr(open + 1, close - open - 1);
    }
  }
  return uint16_t(crc16(key) & (kSlots - 1));
}

bool SlotMap::complete() const {
  std::vector<bool> covered(kSlots, false);
  for (const Range& r : ranges) {
    for (uint32_t s = r.first; s <= r.last; ++s) covered[s] = true;
  }
  return std::all_of(covered.begin(), covered.end(), [](bool b) { return b; });
}

std::optional<SlotMap> parse_cluster_slots(const redisReply* reply, const Endpoint& asked) {
  if (reply == nullptr || reply->type != REDIS_REPLY_ARRAY || reply->elements > kSlots) {
    return std::nullopt;
  }
  SlotMap map;
  for (size_t i = 0; i < reply->elements; ++i) {
    const redisReply* e = reply->element[i];
    if (e == nullptr || e->type != REDIS_REPLY_ARRAY || e->elements < 3) return std::nullopt;
    const redisReply* first = e->element[0];
    const redisReply* last = e->element[1];
    if (first == nullptr || last == nullptr || first->type != REDIS_REPLY_INTEGER ||
        last->type != REDIS_REPLY_INTEGER || first->integer < 0 || first->integer > last->integer ||
        last->integer >= kSlots) {
      return std::nullopt;
    }
    const std::optional<Endpoint> master = node_of(e->element[2], asked);
    if (!master) return std::nullopt;
    auto at = std::find(map.masters.begin(), map.masters.end(), *master);
    if (at == map.masters.end()) at = map.masters.insert(map.masters.end(), *master);
    map.ranges.push_back(SlotMap::Range{uint16_t(first->integer), uint16_t(last->integer),
                                        uint32_t(at - map.masters.begin())});
  }
  return map;
}

std::optional<Redirect> parse_redirect(std::string_view error, const Endpoint& from) {
  Redirect r;
  if (error.starts_with("MOVED ")) {
    error.remove_prefix(6);
  } else if (error.starts_with("ASK ")) {
    r.ask = true;
    error.remove_prefix(4);
  } else {
    return std::nullopt;
  }
  const size_t space = error.find(' ');
  if (space == std::string_view::npos) return std::nullopt;
  unsigned slot = 0;
  const std::string_view slot_text = error.substr(0, space);
  auto [end, ec] = std::from_chars(slot_text.data(), slot_text.data() + slot_text.size(), slot);
  if (ec != std::errc() || end != slot_text.data() + slot_text.size() || slot >= kSlots) {
    return std::nullopt;
  }
  r.slot = uint16_t(slot);
  const std::string_view address = error.substr(space + 1);
  const size_t colon = address.rfind(':');  // an IPv6 host has colons of its own
  if (colon > 255) return std::nullopt;     // no colon (npos) or a host too long
  int port = 0;
  const std::string_view port_text = address.substr(colon + 1);
  auto [pend, pec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (pec != std::errc() || pend != port_text.data() + port_text.size() || port <= 0 ||
      port > 65535) {
    return std::nullopt;
  }
  r.to.host = colon == 0 ? from.host : std::string(address.substr(0, colon));
  r.to.port = port;
  return r;
}

const Endpoint& master_of(const SlotMap& map, uint16_t slot) {
  for (const SlotMap::Range& r : map.ranges) {
    if (slot >= r.first && slot <= r.last) return map.masters[r.node];
  }
  return map.masters.front();
}

BlockingContext connect_blocking(const Endpoint& at, std::chrono::milliseconds timeout,
                                 std::string* why) {
  const timeval tv{long(timeout.count() / 1000), long(timeout.count() % 1000) * 1000};
  BlockingContext c(redisConnectWithTimeout(at.host.c_str(), at.port, tv), redisFree);
  if (!c || c->err != 0) {
    *why = c ? c->errstr : "out of memory";
    return BlockingContext(nullptr, redisFree);
  }
  redisSetTimeout(c.get(), tv);
  return c;
}

SlotsAnswer ask_slots(const Endpoint& at, std::chrono::milliseconds timeout) {
  SlotsAnswer a;
  std::string why;
  BlockingContext c = connect_blocking(at, timeout, &why);
  if (!c) {
    a.problem = fmt::format("{}:{}: {}", at.host, at.port, why);
    return a;
  }
  std::unique_ptr<redisReply, decltype(&freeReplyObject)> r(
      static_cast<redisReply*>(redisCommand(c.get(), "CLUSTER SLOTS")), freeReplyObject);
  if (!r) {
    a.problem = fmt::format("{}:{}: {}", at.host, at.port, c->errstr);
  } else if (r->type == REDIS_REPLY_ERROR) {
    a.no_cluster = true;  // "ERR This instance has cluster support disabled"
  } else {
    a.map = parse_cluster_slots(r.get(), at);
  }
  return a;
}

Topology discover(const KvUrl& url) {
  std::string problems;
  for (const Endpoint& seed : url.servers) {
    SlotsAnswer a = ask_slots(seed, url.timeout);
    if (!a.problem.empty()) {
      problems += "; " + a.problem;
      continue;
    }
    Topology t;
    if (a.no_cluster) {
      t.map.masters.push_back(seed);
      t.map.ranges.push_back(SlotMap::Range{0, uint16_t(kSlots - 1), 0});
      return t;
    }
    if (!a.map || a.map->masters.empty()) {
      problems += fmt::format("; {}:{}: not a CLUSTER SLOTS reply", seed.host, seed.port);
      continue;
    }
    if (!a.map->complete()) {
      throw std::runtime_error(fmt::format(
          "redis cluster at {}:{} does not serve every slot (is it still being made, or lost a "
          "master with no replica?); check with: redis-cli -h {} -p {} cluster info",
          seed.host, seed.port, seed.host, seed.port));
    }
    t.cluster = true;
    t.map = std::move(*a.map);
    return t;
  }
  throw std::runtime_error(fmt::format("redis: cannot reach the store{}", problems));
}

}  // namespace dpfs::kv
