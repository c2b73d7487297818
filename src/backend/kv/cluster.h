// What a client of Redis Cluster must know to send each command to the
// node that serves its key: the key's hash slot, the slot map a node gives
// (CLUSTER SLOTS), and the redirections a node answers with when the map
// it was sent by is out of date (MOVED, ASK). The cluster specification
// defines all three; they are foreign bytes here and are read as such.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "backend/kv/url.h"

struct redisContext;
struct redisReply;

namespace dpfs::kv {

inline constexpr uint32_t kSlots = 16384;

// The slot of `key`: CRC16 (XMODEM) of the key, or of its hash tag (what
// is between the first '{' and the next '}', when that is not empty),
// modulo 16384.
uint16_t key_slot(std::string_view key);

// Which master serves which slots.
struct SlotMap {
  struct Range {
    uint16_t first = 0;
    uint16_t last = 0;  // inclusive
    uint32_t node = 0;  // index into masters
  };
  std::vector<Endpoint> masters;
  std::vector<Range> ranges;
  // True when every slot has a master.
  bool complete() const;
};

// The reply to CLUSTER SLOTS, or nothing when it is not one (a malformed,
// truncated or hostile reply). A master announced with an empty host ("":
// the node does not know its own address) is at `asked`'s host.
std::optional<SlotMap> parse_cluster_slots(const redisReply* reply, const Endpoint& asked);

// "MOVED 3999 127.0.0.1:6381" or "ASK 3999 127.0.0.1:6381".
struct Redirect {
  bool ask = false;  // ASK: this command only, sent after ASKING
  uint16_t slot = 0;
  Endpoint to;
};
// The redirection an error reply names, or nothing when it names none or
// is malformed. An empty host means the host of the node that answered.
std::optional<Redirect> parse_redirect(std::string_view error, const Endpoint& from);

}  // namespace dpfs::kv

namespace dpfs::kv {

// A blocking connection (start-up, the admin commands, map refreshes), with
// `timeout` for connecting and for each command: null and *why when `at`
// cannot be reached.
using BlockingContext = std::unique_ptr<redisContext, void (*)(redisContext*)>;
BlockingContext connect_blocking(const Endpoint& at, std::chrono::milliseconds timeout,
                                 std::string* why);

// What the node at `at` says to CLUSTER SLOTS.
struct SlotsAnswer {
  std::string problem;         // not reached, or no answer: "HOST:PORT: why"
  bool no_cluster = false;     // an error reply: cluster support disabled (one server)
  std::optional<SlotMap> map;  // else the map, when the reply was one
};
SlotsAnswer ask_slots(const Endpoint& at, std::chrono::milliseconds timeout);

// What the seeds of a URL are: one Redis server (`map` has it alone, all
// slots its own) or the masters of a cluster and their slots. Blocking, for
// start-up and the admin commands; throws std::runtime_error naming the
// seeds when none answers, or what is wrong with the cluster.
struct Topology {
  bool cluster = false;
  SlotMap map;
};
Topology discover(const KvUrl& url);

// The master that serves `slot`.
const Endpoint& master_of(const SlotMap& map, uint16_t slot);

}  // namespace dpfs::kv
