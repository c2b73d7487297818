// HOST:PORT addresses, as the remote transport's flags and URLs write them
// ("tcp://HOST:PORT", "remote://[V6]:PORT").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace dpfs::util {

struct Endpoint {
  std::string host;  // a name or a literal; without IPv6 brackets
  uint16_t port = 0;
};

// Parses "HOST:PORT" or "[V6]:PORT" after `scheme` ("tcp://"). Port 0 is
// allowed only when `allow_port_zero` (a listener: any free port). Throws
// std::invalid_argument with the reason.
Endpoint parse_endpoint(std::string_view text, std::string_view scheme, bool allow_port_zero);
std::string format_endpoint(const Endpoint& e);

}  // namespace dpfs::util
