// What routes a command in a Redis Cluster: key slots, CLUSTER SLOTS
// replies and redirections, the last two fed as real RESP bytes through
// hiredis's reader (as they come from a store), hostile ones included.
#include "backend/kv/cluster.h"

#include <gtest/gtest.h>
#include <hiredis/hiredis.h>

#include <memory>
#include <string>

namespace dpfs::kv {
namespace {

struct ReplyFree {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyFree>;

// The reply `resp` encodes, or null when it is not one whole reply.
Reply parse(const std::string& resp) {
  std::unique_ptr<redisReader, decltype(&redisReaderFree)> reader(redisReaderCreate(),
                                                                  redisReaderFree);
  redisReaderFeed(reader.get(), resp.data(), resp.size());
  void* out = nullptr;
  if (redisReaderGetReply(reader.get(), &out) != REDIS_OK) return nullptr;
  return Reply(static_cast<redisReply*>(out));
}

// One CLUSTER SLOTS entry in RESP: [first, last, [host, port, id]].
std::string slots_entry(int first, int last, const std::string& host, int port) {
  return "*3\r\n:" + std::to_string(first) + "\r\n:" + std::to_string(last) + "\r\n*3\r\n$" +
         std::to_string(host.size()) + "\r\n" + host + "\r\n:" + std::to_string(port) +
         "\r\n$2\r\nid\r\n";
}

TEST(KvCluster, KeySlotsAreTheSpecificationsCrc16AndHashTags) {
  // The cluster specification's CRC16 check value: "123456789" -> 0x31C3.
  EXPECT_EQ(key_slot("123456789"), 0x31C3 % kSlots);
  EXPECT_EQ(key_slot("foo"), 12182);  // redis-cli cluster keyslot foo
  EXPECT_EQ(key_slot("{user1000}.following"), key_slot("{user1000}.followers"));
  EXPECT_EQ(key_slot("{user1000}.following"), key_slot("user1000"));
  // An empty tag hashes the whole key; only the first tag counts (values
  // from redis-server 7.0's CLUSTER KEYSLOT).
  EXPECT_EQ(key_slot("foo{}{bar}"), 8363);
  EXPECT_EQ(key_slot("foo{{bar}}zap"), 4015);
  EXPECT_EQ(key_slot("{bar"), 4015);
  EXPECT_EQ(key_slot("dpfs:{x}:format"), 16287);
  EXPECT_EQ(key_slot("dpfs:{fs}:i:1"), key_slot("dpfs:{fs}:format")) << "metadata in one slot";
}

TEST(KvCluster, ASlotsReplyGivesEveryMasterItsRanges) {
  Reply r = parse("*3\r\n" + slots_entry(0, 5460, "10.0.0.1", 7001) +
                  slots_entry(5461, 10922, "", 7002) + slots_entry(10923, 16383, "10.0.0.1", 7001));
  ASSERT_TRUE(r);
  std::optional<SlotMap> map = parse_cluster_slots(r.get(), Endpoint{"10.0.0.9", 7000});
  ASSERT_TRUE(map);
  ASSERT_EQ(map->masters.size(), 2u);
  EXPECT_EQ(map->masters[0], (Endpoint{"10.0.0.1", 7001}));
  EXPECT_EQ(map->masters[1], (Endpoint{"10.0.0.9", 7002})) << "an empty host is the asked node's";
  EXPECT_TRUE(map->complete());
  EXPECT_EQ(master_of(*map, 6000), (Endpoint{"10.0.0.9", 7002}));
  EXPECT_EQ(master_of(*map, 16383), (Endpoint{"10.0.0.1", 7001}));

  Reply part = parse("*1\r\n" + slots_entry(0, 100, "h", 1));
  ASSERT_TRUE(part);
  std::optional<SlotMap> partial = parse_cluster_slots(part.get(), Endpoint{"h", 1});
  ASSERT_TRUE(partial);
  EXPECT_FALSE(partial->complete());
}

TEST(KvCluster, HostileSlotsRepliesAreRefused) {
  const Endpoint asked{"h", 1};
  for (const std::string& resp : {
           std::string("-ERR no\r\n"), std::string("+OK\r\n"), std::string(":5\r\n"),
           "*1\r\n" + slots_entry(10, 5, "h", 1),     // first after last
           "*1\r\n" + slots_entry(0, 16384, "h", 1),  // past the last slot
           "*1\r\n" + slots_entry(-1, 5, "h", 1), "*1\r\n" + slots_entry(0, 5, "h", 0),  // port 0
           "*1\r\n" + slots_entry(0, 5, "h", 70000),
           "*1\r\n" + slots_entry(0, 5, "?", 7000),                 // unknown endpoint
           "*1\r\n" + slots_entry(0, 5, std::string(300, 'h'), 1),  // host too long
           std::string("*1\r\n*2\r\n:0\r\n:5\r\n"),                 // no master
           std::string("*1\r\n*3\r\n:0\r\n:5\r\n$1\r\nh\r\n"),      // master not an array
           std::string("*1\r\n*3\r\n$1\r\n0\r\n:5\r\n*2\r\n$1\r\nh\r\n:1\r\n"),  // string slot
           std::string("*1\r\n*3\r\n:0\r\n:5\r\n*2\r\n:1\r\n:1\r\n"),            // integer host
           std::string("*1\r\n*3\r\n:0\r\n:5\r\n*2\r\n$1\r\nh\r\n$1\r\n1\r\n"),  // string port
       }) {
    Reply r = parse(resp);
    ASSERT_TRUE(r) << resp;
    EXPECT_FALSE(parse_cluster_slots(r.get(), asked)) << resp;
  }
  EXPECT_FALSE(parse_cluster_slots(nullptr, asked));
}

TEST(KvCluster, RedirectionsNameSlotAndNode) {
  const Endpoint from{"10.0.0.5", 7005};
  std::optional<Redirect> moved = parse_redirect("MOVED 3999 127.0.0.1:6381", from);
  ASSERT_TRUE(moved);
  EXPECT_FALSE(moved->ask);
  EXPECT_EQ(moved->slot, 3999);
  EXPECT_EQ(moved->to, (Endpoint{"127.0.0.1", 6381}));
  std::optional<Redirect> ask = parse_redirect("ASK 1 ::1:7000", from);
  ASSERT_TRUE(ask);
  EXPECT_TRUE(ask->ask);
  EXPECT_EQ(ask->to, (Endpoint{"::1", 7000}));
  std::optional<Redirect> hostless = parse_redirect("MOVED 2 :7001", from);
  ASSERT_TRUE(hostless);
  EXPECT_EQ(hostless->to, (Endpoint{"10.0.0.5", 7001}));

  for (const char* bad : {"ERR wrong type", "MOVED", "MOVED 3999", "MOVED x 1.2.3.4:5",
                          "MOVED 16384 h:1", "MOVED -1 h:1", "MOVED 1 h", "MOVED 1 h:0",
                          "MOVED 1 h:65536", "MOVED 1 h:12x", "ASK 1x h:1", "MOVED  1 h:1"}) {
    EXPECT_FALSE(parse_redirect(bad, from)) << bad;
  }
}

}  // namespace
}  // namespace dpfs::kv
