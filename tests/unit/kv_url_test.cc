#include "backend/kv/url.h"

#include <gtest/gtest.h>

#include <stdexcept>

namespace dpfs::kv {
namespace {

TEST(KvUrl, ServersNameAndTimeout) {
  KvUrl u = parse_kv_url("redis://10.0.0.1:7000,10.0.0.2,[::1]:7002/fs-1?timeout=2.5");
  ASSERT_EQ(u.servers.size(), 3u);
  EXPECT_EQ(u.servers[0], (Endpoint{"10.0.0.1", 7000}));
  EXPECT_EQ(u.servers[1], (Endpoint{"10.0.0.2", 6379}));
  EXPECT_EQ(u.servers[2], (Endpoint{"::1", 7002}));
  EXPECT_EQ(u.fsname, "fs-1");
  EXPECT_EQ(u.timeout.count(), 2500);
  EXPECT_EQ(parse_kv_url("redis://h/a.b_c").timeout.count(), 10000);
  EXPECT_TRUE(parse_kv_url("redis://h/x").shared_locks);
  EXPECT_FALSE(parse_kv_url("redis://h/x?locks=local").shared_locks);
  EXPECT_TRUE(parse_kv_url("redis://h/x?locks=shared").shared_locks);
  EXPECT_TRUE(parse_kv_url("redis://h/x?timeout=3&locks=shared").shared_locks);
  EXPECT_EQ(parse_kv_url("redis://h/x").durability, Durability::kNone);
  EXPECT_EQ(parse_kv_url("redis://h/x?durability=replica").durability, Durability::kReplica);
  EXPECT_EQ(parse_kv_url("redis://h/x?locks=shared&durability=local").durability,
            Durability::kLocal);
}

TEST(KvUrl, RefusesWhatItCannotUseNamingWhy) {
  auto why = [](const char* url) {
    try {
      parse_kv_url(url);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(why("nfs://h/x").find("redis://"), std::string::npos);
  EXPECT_NE(why("redis://h").find("no /FSNAME"), std::string::npos);
  EXPECT_NE(why("redis://h/").find("1 to 64"), std::string::npos);
  EXPECT_NE(why("redis://h/{x}").find("letters, digits"), std::string::npos)
      << "braces would change the hash tag";
  EXPECT_NE(why("redis://h:0/x").find("port"), std::string::npos);
  EXPECT_NE(why("redis://h:99999/x").find("port"), std::string::npos);
  EXPECT_NE(why("redis://:1/x").find("host"), std::string::npos);
  EXPECT_NE(why("redis://h/x?timeout=0").find("timeout"), std::string::npos);
  EXPECT_NE(why("redis://h/x?durability=all").find("none of none, local, replica"),
            std::string::npos);
  EXPECT_NE(why("redis://h/x?speed=max").find("unknown option 'speed'"), std::string::npos);
  EXPECT_NE(why("redis://h/x?locks=maybe").find("neither local nor shared"), std::string::npos);
}

TEST(KvUrl, KeysOfOneFileSystemShareTheMetadataSlotAndNotTheData) {
  EXPECT_EQ(meta_prefix("fs"), "dpfs:{fs}:");
  EXPECT_EQ(chunk_key("fs", 12, 3), "dpfs:fs:c:12:3");
}

}  // namespace
}  // namespace dpfs::kv
