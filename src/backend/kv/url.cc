#include "backend/kv/url.h"

#include <fmt/format.h>

#include <charconv>
#include <stdexcept>

namespace dpfs::kv {
namespace {

[[noreturn]] void refuse(std::string_view url, const std::string& why) {
  throw std::invalid_argument(fmt::format(
      "backend redis: '{}': {} (expected redis://HOST:PORT[,HOST:PORT...]/FSNAME)", url, why));
}

Endpoint parse_endpoint(std::string_view url, std::string_view text) {
  Endpoint e;
  std::string_view host = text;
  std::string_view port;
  if (!text.empty() && text.front() == '[') {  // [v6]:port
    const size_t close = text.find(']');
    if (close == std::string_view::npos) refuse(url, "an IPv6 address without ']'");
    host = text.substr(1, close - 1);
    std::string_view rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') refuse(url, "junk after ']'");
      port = rest.substr(1);
    }
  } else if (const size_t colon = text.rfind(':'); colon != std::string_view::npos) {
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  if (host.empty()) refuse(url, "a server without a host");
  e.host = std::string(host);
  if (!port.empty()) {
    int p = 0;
    const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
    if (ec != std::errc() || end != port.data() + port.size() || p < 1 || p > 65535) {
      refuse(url, fmt::format("port '{}' is not a number from 1 to 65535", port));
    }
    e.port = p;
  }
  return e;
}

}  // namespace

KvUrl parse_kv_url(std::string_view url) {
  constexpr std::string_view kScheme = "redis://";
  if (url.substr(0, kScheme.size()) != kScheme) refuse(url, "it does not start with redis://");
  std::string_view rest = url.substr(kScheme.size());
  std::string_view query;
  if (const size_t q = rest.find('?'); q != std::string_view::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
  }
  const size_t slash = rest.find('/');
  if (slash == std::string_view::npos) refuse(url, "no /FSNAME");
  KvUrl out;
  std::string_view servers = rest.substr(0, slash);
  while (!servers.empty()) {
    const size_t comma = servers.find(',');
    out.servers.push_back(parse_endpoint(url, servers.substr(0, comma)));
    if (comma == std::string_view::npos) break;
    servers = servers.substr(comma + 1);
  }
  if (out.servers.empty()) refuse(url, "no server");
  out.fsname = std::string(rest.substr(slash + 1));
  if (out.fsname.empty() || out.fsname.size() > 64)
    refuse(url, "FSNAME must be 1 to 64 characters");
  for (char c : out.fsname) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_' || c == '.';
    if (!ok) refuse(url, "FSNAME may hold only letters, digits, '-', '_' and '.'");
  }
  while (!query.empty()) {
    const size_t amp = query.find('&');
    const std::string_view kv = query.substr(0, amp);
    const size_t eq = kv.find('=');
    const std::string_view key = kv.substr(0, eq);
    const std::string_view value = eq == std::string_view::npos ? "" : kv.substr(eq + 1);
    if (key == "timeout") {
      double seconds = 0;
      const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), seconds);
      if (ec != std::errc() || end != value.data() + value.size() || !(seconds > 0) ||
          seconds > 3600) {
        refuse(url, fmt::format("timeout '{}' is not a number of seconds from 0 to 3600", value));
      }
      out.timeout = std::chrono::milliseconds(int64_t(seconds * 1000));
    } else if (key == "locks") {
      if (value != "local" && value != "shared") {
        refuse(url, fmt::format("locks '{}' is neither local nor shared", value));
      }
      out.shared_locks = value == "shared";
    } else if (key == "durability") {
      if (value == "none") {
        out.durability = Durability::kNone;
      } else if (value == "local") {
        out.durability = Durability::kLocal;
      } else if (value == "replica") {
        out.durability = Durability::kReplica;
      } else {
        refuse(url, fmt::format("durability '{}' is none of none, local, replica", value));
      }
    } else {
      refuse(url, fmt::format("unknown option '{}' (known: timeout, locks, durability)", key));
    }
    if (amp == std::string_view::npos) break;
    query = query.substr(amp + 1);
  }
  return out;
}

std::string meta_prefix(const std::string& fsname) { return "dpfs:{" + fsname + "}:"; }

std::string chunk_key(const std::string& fsname, uint64_t ino, uint64_t index) {
  return fmt::format("dpfs:{}:c:{}:{}", fsname, ino, index);
}

}  // namespace dpfs::kv
