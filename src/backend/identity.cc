#include "backend/identity.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <stdexcept>

namespace dpfs {
namespace {

[[noreturn]] void refuse(const std::string& reason) { throw std::invalid_argument(reason); }

constexpr uint64_t kIdSpace = uint64_t(1) << 32;

uint32_t parse_id(std::string_view field, std::string_view rule) {
  uint32_t n = 0;
  const auto [end, ec] = std::from_chars(field.data(), field.data() + field.size(), n);
  if (field.empty() || ec != std::errc() || end != field.data() + field.size()) {
    refuse(fmt::format("'{}': '{}' is not a number from 0 to 4294967295", rule, field));
  }
  return n;
}

}  // namespace

IdRule IdRule::parse(std::string_view text) {
  const size_t colon = text.find(':');
  if (colon == std::string_view::npos) {
    refuse(
        fmt::format("'{}': expected KIND:ID:..., KIND one of map, guest, host, squash-guest, "
                    "squash-host, forbid-guest",
                    text));
  }
  const std::string_view kind = text.substr(0, colon);
  std::vector<uint32_t> fields;
  for (std::string_view rest = text.substr(colon + 1);;) {
    const size_t next = rest.find(':');
    fields.push_back(parse_id(rest.substr(0, next), text));
    if (next == std::string_view::npos) break;
    rest = rest.substr(next + 1);
  }
  IdRule rule;
  size_t want = 3;
  if (kind == "map") {
    rule.kind = Kind::kMap;
  } else if (kind == "guest") {
    rule.kind = Kind::kGuest;
  } else if (kind == "host") {
    rule.kind = Kind::kHost;
  } else if (kind == "squash-guest") {
    rule.kind = Kind::kSquashGuest;
  } else if (kind == "squash-host") {
    rule.kind = Kind::kSquashHost;
  } else if (kind == "forbid-guest") {
    rule.kind = Kind::kForbidGuest;
    want = 2;
  } else {
    refuse(
        fmt::format("'{}': unknown kind '{}' (map, guest, host, squash-guest, squash-host, "
                    "forbid-guest)",
                    text, kind));
  }
  if (fields.size() != want) {
    refuse(fmt::format("'{}': {} takes {} numbers, got {}", text, kind, want, fields.size()));
  }
  rule.from = fields[0];
  rule.to = want == 3 ? fields[1] : 0;
  rule.count = fields[want - 1];
  if (rule.count == 0) refuse(fmt::format("'{}': the count must be at least 1", text));
  // The source range, and for a 1:1 map the target range, within 32 bits.
  if (uint64_t(rule.from) + rule.count > kIdSpace) {
    refuse(
        fmt::format("'{}': {} + {} runs past the last id 4294967295", text, rule.from, rule.count));
  }
  const bool one_to_one =
      rule.kind == Kind::kMap || rule.kind == Kind::kGuest || rule.kind == Kind::kHost;
  if (one_to_one && uint64_t(rule.to) + rule.count > kIdSpace) {
    refuse(
        fmt::format("'{}': {} + {} runs past the last id 4294967295", text, rule.to, rule.count));
  }
  return rule;
}

std::string IdRule::to_string() const {
  switch (kind) {
    case Kind::kMap:
      return fmt::format("map:{}:{}:{}", from, to, count);
    case Kind::kGuest:
      return fmt::format("guest:{}:{}:{}", from, to, count);
    case Kind::kHost:
      return fmt::format("host:{}:{}:{}", from, to, count);
    case Kind::kSquashGuest:
      return fmt::format("squash-guest:{}:{}:{}", from, to, count);
    case Kind::kSquashHost:
      return fmt::format("squash-host:{}:{}:{}", from, to, count);
    case Kind::kForbidGuest:
      return fmt::format("forbid-guest:{}:{}", from, count);
  }
  return "?";
}

void IdMap::insert(std::vector<Range>& ranges, Range range, const IdRule& rule) {
  auto at = std::lower_bound(ranges.begin(), ranges.end(), range,
                             [](const Range& a, const Range& b) { return a.first < b.first; });
  const bool overlaps_next = at != ranges.end() && at->first < range.end;
  const bool overlaps_prev = at != ranges.begin() && std::prev(at)->end > range.first;
  if (overlaps_next || overlaps_prev) {
    refuse(fmt::format("'{}' overlaps an earlier rule of the same direction", rule.to_string()));
  }
  ranges.insert(at, range);
}

void IdMap::add(const IdRule& rule) {
  using K = IdRule::Kind;
  const uint64_t first = rule.from;
  const uint64_t end = first + rule.count;
  // Check both directions before changing either, so a refused rule leaves
  // the map as it was.
  std::vector<Range> g2h = guest_to_host_;
  std::vector<Range> h2g = host_to_guest_;
  switch (rule.kind) {
    case K::kMap:
      insert(g2h, {first, end, Range::Kind::kShift, rule.to}, rule);
      insert(h2g, {rule.to, uint64_t(rule.to) + rule.count, Range::Kind::kShift, rule.from}, rule);
      break;
    case K::kGuest:
      insert(g2h, {first, end, Range::Kind::kShift, rule.to}, rule);
      break;
    case K::kHost:
      insert(h2g, {first, end, Range::Kind::kShift, rule.to}, rule);
      break;
    case K::kSquashGuest:
      insert(g2h, {first, end, Range::Kind::kSquash, rule.to}, rule);
      break;
    case K::kSquashHost:
      insert(h2g, {first, end, Range::Kind::kSquash, rule.to}, rule);
      break;
    case K::kForbidGuest:
      insert(g2h, {first, end, Range::Kind::kForbid, 0}, rule);
      break;
  }
  guest_to_host_ = std::move(g2h);
  host_to_guest_ = std::move(h2g);
  rules_.push_back(rule);
}

void IdMap::add_all(std::string_view rules) {
  constexpr std::string_view kSeparators = ", \t\n";
  while (!rules.empty()) {
    const size_t start = rules.find_first_not_of(kSeparators);
    if (start == std::string_view::npos) break;
    rules = rules.substr(start);
    const size_t end = rules.find_first_of(kSeparators);
    add(IdRule::parse(rules.substr(0, end)));
    if (end == std::string_view::npos) break;
    rules = rules.substr(end);
  }
}

const IdMap::Range* IdMap::find(const std::vector<Range>& ranges, uint32_t id) {
  // The last range starting at or before `id`.
  auto at = std::upper_bound(ranges.begin(), ranges.end(), uint64_t(id),
                             [](uint64_t v, const Range& r) { return v < r.first; });
  if (at == ranges.begin()) return nullptr;
  const Range& r = *std::prev(at);
  return id < r.end ? &r : nullptr;
}

std::optional<uint32_t> IdMap::to_host(uint32_t guest) const {
  if (guest == kInvalidId) return std::nullopt;
  const Range* r = find(guest_to_host_, guest);
  if (r == nullptr) return guest;
  switch (r->kind) {
    case Range::Kind::kShift:
      return uint32_t(r->to + (guest - r->first));
    case Range::Kind::kSquash:
      return r->to;
    case Range::Kind::kForbid:
      return std::nullopt;
  }
  return std::nullopt;
}

uint32_t IdMap::to_guest(uint32_t host) const {
  const Range* r = find(host_to_guest_, host);
  if (r == nullptr) return host;
  return r->kind == Range::Kind::kShift ? uint32_t(r->to + (host - r->first)) : r->to;
}

Squash parse_squash(std::string_view text) {
  if (text == "none") return Squash::kNone;
  if (text == "root") return Squash::kRoot;
  if (text == "all") return Squash::kAll;
  refuse(fmt::format("must be none, root or all, got '{}'", text));
}

std::string_view squash_name(Squash squash) {
  switch (squash) {
    case Squash::kNone:
      return "none";
    case Squash::kRoot:
      return "root";
    case Squash::kAll:
      return "all";
  }
  return "?";
}

std::optional<uint32_t> Identity::to_host(const IdMap& map, uint32_t guest) const {
  const std::optional<uint32_t> host = map.to_host(guest);
  if (!host) return std::nullopt;
  switch (squash) {
    case Squash::kNone:
      return host;
    case Squash::kRoot:
      return *host == 0 ? squash_id : *host;
    case Squash::kAll:
      return squash_id;
  }
  return host;
}

}  // namespace dpfs
