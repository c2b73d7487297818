// The [policy] settings, their flags, and [device.policy] over [policy].
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "daemon/cli.h"
#include "daemon/config.h"

namespace dpfs::daemon {
namespace {

using ::testing::HasSubstr;

std::string toml_error(const std::string& toml) {
  Config cfg;
  try {
    apply_toml(cfg, toml, "test.toml");
    finish(cfg);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(PolicyConfig, DefaultsAreRestrictive) {
  Config cfg;
  finish(cfg);
  EXPECT_TRUE(cfg.policy.identity.is_identity());
  EXPECT_FALSE(cfg.policy.allow_device_nodes);
  EXPECT_EQ(cfg.policy.xattr_namespaces, HostPolicy::kXattrUser);
  EXPECT_FALSE(cfg.fuse.allow_suid);
  EXPECT_FALSE(cfg.fuse.allow_dev);
  EXPECT_EQ(cfg.vhost_user.socket_gid, -1);
}

TEST(PolicyConfig, FromToml) {
  Config cfg;
  apply_toml(cfg, R"(
[policy]
translate_uid = ["map:0:100000:65536", "forbid-guest:65536:10"]
translate_gid = "map:0:100000:65536"
squash = "root"
squash_id = 777
allow_device_nodes = true
xattr_namespaces = "user,trusted"
[fuse]
allow_suid = true
allow_dev = true
[vhost_user]
socket = "/tmp/x.sock"
socket_group = 4242
)",
             "test.toml");
  finish(cfg);
  EXPECT_EQ(cfg.policy.identity.host_uid(5), 100005u);
  EXPECT_EQ(cfg.policy.identity.host_uid(65536), std::nullopt);
  EXPECT_EQ(cfg.policy.identity.host_gid(5), 100005u);
  EXPECT_EQ(cfg.policy.identity.squash, Squash::kRoot);
  EXPECT_EQ(cfg.policy.identity.squash_id, 777u);
  EXPECT_TRUE(cfg.policy.allow_device_nodes);
  EXPECT_EQ(cfg.policy.xattr_namespaces, HostPolicy::kXattrUser | HostPolicy::kXattrTrusted);
  EXPECT_TRUE(cfg.fuse.allow_suid);
  EXPECT_TRUE(cfg.fuse.allow_dev);
  ASSERT_EQ(cfg.devices.size(), 1u);
  EXPECT_EQ(cfg.devices[0].socket_gid, 4242);
  EXPECT_EQ(cfg.devices[0].policy.identity.squash_id, 777u) << "the [vhost_user] device";
}

TEST(PolicyConfig, RefusedValuesNameTheKey) {
  EXPECT_THAT(toml_error("[policy]\ntranslate_uid = \"map:0:1\""),
              HasSubstr("policy.translate_uid: 'map:0:1': map takes 3 numbers, got 2"));
  EXPECT_THAT(toml_error("[policy]\ntranslate_uid = [\"map:0:100:10\", \"guest:5:1:1\"]"),
              HasSubstr("overlaps an earlier rule"));
  EXPECT_THAT(toml_error("[policy]\nsquash = \"nobody\""),
              HasSubstr("policy.squash: must be none, root or all"));
  EXPECT_THAT(toml_error("[policy]\nxattr_namespaces = \"user,acl\""),
              HasSubstr("unknown xattr namespace 'acl'"));
  EXPECT_THAT(toml_error("[vhost_user]\nsocket_group = \"no-such-group-here\""),
              HasSubstr("no group named 'no-such-group-here'"));
  EXPECT_THAT(toml_error("[[device]]\nsocket = \"/tmp/a\"\n[device.policy]\nsquash = 1"),
              HasSubstr("device[0].policy.squash: must be a string"));
  EXPECT_THAT(toml_error("[[device]]\nsocket = \"/tmp/a\"\n[device.policy]\nnope = 1"),
              HasSubstr("unknown key 'device[0].policy.nope'"));
}

TEST(PolicyConfig, DevicesInheritPolicyAndOverrideTheirOwn) {
  Config cfg;
  apply_toml(cfg, R"(
[[device]]
socket = "/tmp/a.sock"
socket_group = "0"
[device.policy]
translate_uid = ["map:0:200000:65536"]
allow_device_nodes = true

[[device]]
socket = "/tmp/b.sock"

[policy]
translate_uid = "map:0:100000:65536"
squash = "root"
)",
             "test.toml");
  finish(cfg);
  ASSERT_EQ(cfg.devices.size(), 2u);
  const HostPolicy& a = cfg.devices[0].policy;
  const HostPolicy& b = cfg.devices[1].policy;
  EXPECT_EQ(cfg.devices[0].socket_gid, 0);
  EXPECT_EQ(a.identity.host_uid(5), 200005u) << "its own rules replace [policy]'s";
  EXPECT_EQ(a.identity.uids.rules().size(), 1u);
  EXPECT_EQ(a.identity.squash, Squash::kRoot) << "what it does not set comes from [policy]";
  EXPECT_TRUE(a.allow_device_nodes);
  EXPECT_EQ(b.identity.host_uid(5), 100005u);
  EXPECT_FALSE(b.allow_device_nodes);
  EXPECT_EQ(cfg.devices[1].socket_gid, -1);
}

TEST(PolicyConfig, RepeatedFlagsAddUp) {
  const Invocation inv =
      parse_command_line({"serve", "--translate-uid", "map:0:100000:10", "--translate-uid",
                          "forbid-guest:10:5,host:7:7:1", "--squash", "all", "--squash-id", "9",
                          "--allow-device-nodes", "--xattr-namespaces", "user,security",
                          "--fuse-allow-suid", "--socket-group", "5"});
  const HostPolicy& p = inv.config.policy;
  EXPECT_EQ(p.identity.uids.rules().size(), 3u);
  EXPECT_EQ(p.identity.uids.to_host(10), std::nullopt);
  EXPECT_EQ(p.identity.host_uid(1), 9u) << "squash all after the map";
  EXPECT_TRUE(p.allow_device_nodes);
  EXPECT_EQ(p.xattr_namespaces, HostPolicy::kXattrUser | HostPolicy::kXattrSecurity);
  EXPECT_TRUE(inv.config.fuse.allow_suid);
  EXPECT_FALSE(inv.config.fuse.allow_dev);
  EXPECT_EQ(inv.config.vhost_user.socket_gid, 5);
  EXPECT_THROW(
      parse_command_line({"serve", "--translate-uid", "map:0:1:1", "--translate-uid", "map:0:2:1"}),
      ConfigError);
}

}  // namespace
}  // namespace dpfs::daemon
