#include "backend/identity.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

namespace dpfs {
namespace {

using ::testing::HasSubstr;

std::string parse_error(std::string_view text) {
  try {
    IdRule::parse(text);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

IdMap map_of(std::string_view rules) {
  IdMap map;
  map.add_all(rules);
  return map;
}

std::string add_error(std::string_view rules) {
  try {
    map_of(rules);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

TEST(IdRule, ParsesVirtiofsdSyntax) {
  const IdRule map = IdRule::parse("map:0:100000:65536");
  EXPECT_EQ(map.kind, IdRule::Kind::kMap);
  EXPECT_EQ(map.from, 0u);
  EXPECT_EQ(map.to, 100000u);
  EXPECT_EQ(map.count, 65536u);
  EXPECT_EQ(IdRule::parse("forbid-guest:5:10").kind, IdRule::Kind::kForbidGuest);
  EXPECT_EQ(IdRule::parse("forbid-guest:5:10").count, 10u);
  for (const char* text : {"map:1:2:3", "guest:1:2:3", "host:1:2:3", "squash-guest:1:2:3",
                           "squash-host:1:2:3", "forbid-guest:1:3"}) {
    EXPECT_EQ(IdRule::parse(text).to_string(), text);
  }
  EXPECT_THAT(parse_error("squash-guest:0:1000:4294967296"), HasSubstr("is not a number"))
      << "a count does not fit 32 bits";
}

TEST(IdRule, RefusesMalformedRules) {
  EXPECT_THAT(parse_error("map"), HasSubstr("expected KIND:ID"));
  EXPECT_THAT(parse_error("mapp:1:2:3"), HasSubstr("unknown kind 'mapp'"));
  EXPECT_THAT(parse_error("map:1:2"), HasSubstr("takes 3 numbers, got 2"));
  EXPECT_THAT(parse_error("forbid-guest:1:2:3"), HasSubstr("takes 2 numbers, got 3"));
  EXPECT_THAT(parse_error("map:1:x:3"), HasSubstr("'x' is not a number"));
  EXPECT_THAT(parse_error("map:1::3"), HasSubstr("'' is not a number"));
  EXPECT_THAT(parse_error("map:-1:2:3"), HasSubstr("is not a number"));
  EXPECT_THAT(parse_error("map:1:2:0"), HasSubstr("at least 1"));
  EXPECT_THAT(parse_error("forbid-guest:2001:4294967295"), HasSubstr("runs past the last id"));
  EXPECT_THAT(parse_error("map:0:4294967295:2"), HasSubstr("runs past the last id"));
  EXPECT_EQ(parse_error("squash-guest:0:7:4294967295"), "") << "a squash target is one id";
}

TEST(IdRule, AcceptsARangeEndingAtTheLastId) {
  // Whole 32-bit space but one id: 0..4294967294.
  IdMap map = map_of("squash-guest:0:1000:4294967295");
  EXPECT_EQ(map.to_host(0), 1000u);
  EXPECT_EQ(map.to_host(4294967294u), 1000u);
}

TEST(IdMap, EmptyMapIsTheIdentity) {
  IdMap map;
  EXPECT_TRUE(map.empty());
  EXPECT_EQ(map.to_host(0), 0u);
  EXPECT_EQ(map.to_host(1234), 1234u);
  EXPECT_EQ(map.to_guest(0), 0u);
  EXPECT_EQ(map.to_guest(4294967294u), 4294967294u);
}

TEST(IdMap, InvalidIdIsAlwaysForbidden) {
  EXPECT_EQ(IdMap().to_host(kInvalidId), std::nullopt);
  EXPECT_EQ(map_of("squash-guest:0:7:4294967295").to_host(kInvalidId), std::nullopt);
}

TEST(IdMap, MapWorksBothWays) {
  IdMap map = map_of("map:0:100000:65536");
  EXPECT_EQ(map.to_host(0), 100000u);
  EXPECT_EQ(map.to_host(1000), 101000u);
  EXPECT_EQ(map.to_host(65535), 165535u);
  EXPECT_EQ(map.to_host(65536), 65536u) << "past the range: itself";
  EXPECT_EQ(map.to_guest(100000), 0u);
  EXPECT_EQ(map.to_guest(165535), 65535u);
  EXPECT_EQ(map.to_guest(99999), 99999u);
  EXPECT_EQ(map.to_guest(165536), 165536u);
}

TEST(IdMap, OneWayRules) {
  IdMap map = map_of("guest:10:20:5, host:500:0:1");
  EXPECT_EQ(map.to_host(12), 22u);
  EXPECT_EQ(map.to_guest(22), 22u) << "guest: rules do not translate back";
  EXPECT_EQ(map.to_guest(500), 0u);
  EXPECT_EQ(map.to_host(500), 500u) << "host: rules do not translate forth";
  EXPECT_FALSE(map.shows_host_ids());
  EXPECT_TRUE(map_of("guest:10:20:5").shows_host_ids());
}

TEST(IdMap, SquashRules) {
  IdMap map = map_of("squash-guest:0:1000:4294967295\nsquash-host:1000:0:1");
  EXPECT_EQ(map.to_host(0), 1000u);
  EXPECT_EQ(map.to_host(77), 1000u);
  EXPECT_EQ(map.to_guest(1000), 0u);
  EXPECT_EQ(map.to_guest(1001), 1001u);
}

TEST(IdMap, ForbidGuest) {
  IdMap map = map_of("forbid-guest:0:1000,map:1000:1000:1,forbid-guest:1001:4294966294");
  EXPECT_EQ(map.to_host(0), std::nullopt);
  EXPECT_EQ(map.to_host(999), std::nullopt);
  EXPECT_EQ(map.to_host(1000), 1000u);
  EXPECT_EQ(map.to_host(1001), std::nullopt);
  EXPECT_EQ(map.to_host(4294967294u), std::nullopt);
}

TEST(IdMap, OverlapsInOneDirectionAreRefused) {
  EXPECT_THAT(add_error("map:0:100:10,guest:5:1000:1"),
              HasSubstr("'guest:5:1000:1' overlaps an earlier rule"));
  EXPECT_THAT(add_error("map:0:100:10,host:109:0:1"), HasSubstr("overlaps"));
  EXPECT_THAT(add_error("guest:10:0:10,forbid-guest:0:11"), HasSubstr("overlaps"));
  // Adjacent ranges, and the same ids in the other direction, are fine.
  EXPECT_EQ(add_error("map:0:100:10,map:10:200:10"), "");
  EXPECT_EQ(add_error("guest:0:100:10,host:0:100:10"), "");
}

TEST(IdMap, RefusedRuleLeavesTheMapUnchanged) {
  IdMap map = map_of("guest:0:100:10");
  // Its host->guest half [5000, 5010) is free; its guest->host half [5, 15)
  // is not.
  EXPECT_THROW(map.add(IdRule::parse("map:5:5000:10")), std::invalid_argument);
  EXPECT_EQ(map.to_guest(5000), 5000u) << "the refused rule's other half is not kept";
  EXPECT_EQ(map.rules().size(), 1u);
}

TEST(Identity, SquashRootActsAsTheSquashIdForHostRootOnly) {
  Identity id;
  id.squash = Squash::kRoot;
  id.squash_id = 65534;
  EXPECT_EQ(id.host_uid(0), 65534u);
  EXPECT_EQ(id.host_gid(0), 65534u);
  EXPECT_EQ(id.host_uid(1000), 1000u);
  // A map that sends some other guest id to host root is squashed too.
  id.uids.add(IdRule::parse("guest:5:0:1"));
  EXPECT_EQ(id.host_uid(5), 65534u);
  // And a map away from 0 leaves guest root unsquashed: it is not host root.
  id.uids.add(IdRule::parse("guest:0:100000:1"));
  EXPECT_EQ(id.host_uid(0), 100000u);
  EXPECT_FALSE(id.is_identity());
}

TEST(Identity, SquashAll) {
  Identity id;
  id.squash = Squash::kAll;
  id.squash_id = 4242;
  EXPECT_EQ(id.host_uid(0), 4242u);
  EXPECT_EQ(id.host_uid(1000), 4242u);
  EXPECT_EQ(id.host_gid(100), 4242u);
  EXPECT_EQ(id.host_uid(kInvalidId), std::nullopt) << "a forbidden id stays forbidden";
  id.uids.add(IdRule::parse("forbid-guest:7:1"));
  EXPECT_EQ(id.host_uid(7), std::nullopt);
}

TEST(Identity, DefaultIsIdentity) {
  Identity id;
  EXPECT_TRUE(id.is_identity());
  EXPECT_FALSE(id.translates_to_guest());
  EXPECT_EQ(id.host_uid(0), 0u);
  EXPECT_EQ(id.guest_uid(0), 0u);
  EXPECT_EQ(parse_squash("root"), Squash::kRoot);
  EXPECT_THROW(parse_squash("nobody"), std::invalid_argument);
}

}  // namespace
}  // namespace dpfs
