#include "util/endpoint.h"

#include <fmt/format.h>

#include <charconv>
#include <stdexcept>

namespace dpfs::util {

Endpoint parse_endpoint(std::string_view text, std::string_view scheme, bool allow_port_zero) {
  if (!text.starts_with(scheme)) {
    throw std::invalid_argument(fmt::format("must look like {}HOST:PORT, got '{}'", scheme, text));
  }
  std::string_view rest = text.substr(scheme.size());
  Endpoint e;
  std::string_view port;
  if (rest.starts_with('[')) {
    const size_t close = rest.find(']');
    if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':') {
      throw std::invalid_argument(
          fmt::format("must look like {}[IPV6]:PORT, got '{}'", scheme, text));
    }
    e.host = std::string(rest.substr(1, close - 1));
    port = rest.substr(close + 2);
  } else {
    const size_t colon = rest.rfind(':');
    if (colon == std::string_view::npos) {
      throw std::invalid_argument(fmt::format("needs a port: {}HOST:PORT, got '{}'", scheme, text));
    }
    e.host = std::string(rest.substr(0, colon));
    port = rest.substr(colon + 1);
  }
  if (e.host.empty()) throw std::invalid_argument(fmt::format("needs a host, got '{}'", text));
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (ec != std::errc() || end != port.data() + port.size() || port.empty() || value > 65535 ||
      (value == 0 && !allow_port_zero)) {
    throw std::invalid_argument(
        fmt::format("port must be {}..65535, got '{}'", allow_port_zero ? 0 : 1, port));
  }
  e.port = uint16_t(value);
  return e;
}

std::string format_endpoint(const Endpoint& e) {
  if (e.host.find(':') != std::string::npos) return fmt::format("[{}]:{}", e.host, e.port);
  return fmt::format("{}:{}", e.host, e.port);
}

}  // namespace dpfs::util
