// Who a tenant's request acts as on the host: uid/gid translation and squash.
//
// The tenant's kernel names a uid and a gid in every FUSE request header, and
// the tenant chooses both: they are a claim, not an identity. The host's
// operator decides what each claim becomes on the host (the credentials the
// backend acts with, the owner a chown sets) and what host ids look like to
// the tenant (the attributes it is shown), with virtiofsd's rules
// (virtiofsd --translate-uid/--translate-gid, src/soft_idmap):
//
//   map:GUEST:HOST:COUNT            both ways, COUNT ids from GUEST and HOST
//   guest:GUEST:HOST:COUNT          guest -> host only
//   host:HOST:GUEST:COUNT           host -> guest only
//   squash-guest:GUEST:HOST:COUNT   COUNT guest ids from GUEST all become HOST
//   squash-host:HOST:GUEST:COUNT    COUNT host ids from HOST all appear as GUEST
//   forbid-guest:GUEST:COUNT        requests by these guest ids answer EPERM
//
// An id no rule names is itself (the identity map). The rules of one
// direction must not overlap (virtiofsd refuses that too); a range must end
// at or below 2^32. The guest id 4294967295 ((uid_t)-1, which chown(2) takes
// as "unchanged" and setfsuid(2) ignores) is always forbidden.
//
// Squash, applied after the rules: `root` makes every request that would act
// as host uid 0 (or gid 0) act as the squash id instead -- so no tenant acts
// as the host's root, whatever its maps say; `all` makes every request act as
// the squash id.
//
// Immutable once built; safe for concurrent use.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dpfs {

// The guest id that is never a valid identity: (uid_t)-1.
constexpr uint32_t kInvalidId = UINT32_MAX;
// nobody/nogroup on most distributions.
constexpr uint32_t kDefaultSquashId = 65534;

// One rule of --translate-uid / --translate-gid, as written.
struct IdRule {
  enum class Kind { kMap, kGuest, kHost, kSquashGuest, kSquashHost, kForbidGuest };
  Kind kind = Kind::kMap;
  uint32_t from = 0;   // first id of the source range (guest, or host for kHost/kSquashHost)
  uint32_t to = 0;     // first target id (or the one target of a squash); unused for forbid
  uint32_t count = 0;  // ids in the source range, at least 1

  // "map:0:100000:65536". Throws std::invalid_argument with the reason.
  static IdRule parse(std::string_view text);
  std::string to_string() const;
  bool operator==(const IdRule&) const = default;
};

// The uids (or the gids) of one tenant, both ways.
class IdMap {
 public:
  // Adds `rule`. Throws std::invalid_argument if it overlaps an earlier rule
  // of the same direction.
  void add(const IdRule& rule);
  // A list of rules separated by commas or white space (a config value, or
  // the repeated flags joined). Throws std::invalid_argument.
  void add_all(std::string_view rules);

  // The host id for a guest id, or nullopt when the guest id is forbidden.
  std::optional<uint32_t> to_host(uint32_t guest) const;
  // The guest id a host id is shown as.
  uint32_t to_guest(uint32_t host) const;
  // No rules: every id is itself.
  bool empty() const { return guest_to_host_.empty() && host_to_guest_.empty(); }
  // No host -> guest rule: the tenant is shown host ids as they are.
  bool shows_host_ids() const { return host_to_guest_.empty(); }
  const std::vector<IdRule>& rules() const { return rules_; }

  bool operator==(const IdMap&) const = default;

 private:
  // [first, end) of source ids; a shift (target = to + id - first), a squash
  // (target = to) or a refusal. Sorted by `first`, disjoint.
  struct Range {
    uint64_t first = 0;
    uint64_t end = 0;
    enum class Kind { kShift, kSquash, kForbid } kind = Kind::kShift;
    uint32_t to = 0;
    bool operator==(const Range&) const = default;
  };
  static void insert(std::vector<Range>& ranges, Range range, const IdRule& rule);
  static const Range* find(const std::vector<Range>& ranges, uint32_t id);

  std::vector<Range> guest_to_host_;
  std::vector<Range> host_to_guest_;
  std::vector<IdRule> rules_;
};

enum class Squash { kNone, kRoot, kAll };

// "none", "root", "all". Throws std::invalid_argument.
Squash parse_squash(std::string_view text);
std::string_view squash_name(Squash squash);

// A tenant's identity policy: its uid and gid maps and the squash.
struct Identity {
  IdMap uids;
  IdMap gids;
  Squash squash = Squash::kNone;
  uint32_t squash_id = kDefaultSquashId;  // the uid and the gid squashed callers act as

  // The host uid / gid a guest uid / gid acts as (or is given by chown);
  // nullopt when the policy forbids it (the request answers EPERM).
  std::optional<uint32_t> host_uid(uint32_t guest) const { return to_host(uids, guest); }
  std::optional<uint32_t> host_gid(uint32_t guest) const { return to_host(gids, guest); }
  // What the tenant is shown for a host uid / gid.
  uint32_t guest_uid(uint32_t host) const { return uids.to_guest(host); }
  uint32_t guest_gid(uint32_t host) const { return gids.to_guest(host); }
  // Nothing to translate either way: requests act as the ids they claim.
  bool is_identity() const { return squash == Squash::kNone && uids.empty() && gids.empty(); }
  // Host ids differ from guest ids somewhere on the way back to the tenant.
  bool translates_to_guest() const { return !uids.shows_host_ids() || !gids.shows_host_ids(); }

  bool operator==(const Identity&) const = default;

 private:
  std::optional<uint32_t> to_host(const IdMap& map, uint32_t guest) const;
};

}  // namespace dpfs
