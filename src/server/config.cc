#include "server/config.h"

#include <fmt/format.h>
#include <toml++/toml.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <variant>

namespace dpfs::server {
namespace {

// A value as given: typed from TOML, always a string from a flag. Each
// setting accepts the forms that make sense for it ("1G" and 1073741824).
using Value = std::variant<int64_t, double, bool, std::string>;

std::string_view kind_of(const Value& v) {
  switch (v.index()) {
    case 0:
      return "an integer";
    case 1:
      return "a number";
    case 2:
      return "a boolean";
    default:
      return "a string";
  }
}

[[noreturn]] void refuse(const std::string& reason) { throw std::invalid_argument(reason); }

int64_t as_integer(const Value& v) {
  if (const auto* i = std::get_if<int64_t>(&v)) return *i;
  if (const auto* s = std::get_if<std::string>(&v)) {
    int64_t n = 0;
    const auto [end, ec] = std::from_chars(s->data(), s->data() + s->size(), n);
    if (ec == std::errc() && end == s->data() + s->size() && !s->empty()) return n;
    refuse(fmt::format("must be an integer, got '{}'", *s));
  }
  refuse(fmt::format("must be an integer, got {}", kind_of(v)));
}

uint64_t as_size(const Value& v) {
  if (const auto* i = std::get_if<int64_t>(&v)) {
    if (*i < 0) refuse(fmt::format("must be a size, got {}", *i));
    return uint64_t(*i);
  }
  if (const auto* s = std::get_if<std::string>(&v)) return parse_size(*s);
  refuse(fmt::format("must be a size (bytes, or a string such as \"64K\" or \"1G\"), got {}",
                     kind_of(v)));
}

double as_seconds(const Value& v) {
  double d = 0;
  if (const auto* f = std::get_if<double>(&v)) {
    d = *f;
  } else if (const auto* i = std::get_if<int64_t>(&v)) {
    d = double(*i);
  } else if (const auto* s = std::get_if<std::string>(&v)) {
    const auto [end, ec] = std::from_chars(s->data(), s->data() + s->size(), d);
    if (ec != std::errc() || end != s->data() + s->size() || s->empty()) {
      refuse(fmt::format("must be a number of seconds, got '{}'", *s));
    }
  } else {
    refuse(fmt::format("must be a number of seconds, got {}", kind_of(v)));
  }
  if (!std::isfinite(d) || d < 0) refuse(fmt::format("must be 0 or more seconds, got {}", d));
  return d;
}

bool as_bool(const Value& v) {
  if (const auto* b = std::get_if<bool>(&v)) return *b;
  if (const auto* s = std::get_if<std::string>(&v)) {
    if (*s == "true" || *s == "yes" || *s == "on" || *s == "1") return true;
    if (*s == "false" || *s == "no" || *s == "off" || *s == "0") return false;
    refuse(fmt::format("must be true or false, got '{}'", *s));
  }
  refuse(fmt::format("must be true or false, got {}", kind_of(v)));
}

const std::string& as_string(const Value& v) {
  if (const auto* s = std::get_if<std::string>(&v)) return *s;
  refuse(fmt::format("must be a string, got {}", kind_of(v)));
}

constexpr std::array<std::pair<std::string_view, spdlog::level::level_enum>, 5> kLogLevels{{
    {"trace", spdlog::level::trace},
    {"debug", spdlog::level::debug},
    {"info", spdlog::level::info},
    {"warn", spdlog::level::warn},
    {"error", spdlog::level::err},
}};

constexpr uint64_t kPage = 4096;
constexpr uint64_t kMinMaxWrite = uint64_t(4) << 10;
constexpr uint64_t kMaxMaxWrite = uint64_t(1) << 20;  // 256 pages: the kernel's FUSE_MAX_MAX_PAGES
constexpr uint64_t kMinMemfsCapacity = uint64_t(1) << 20;
constexpr uint64_t kMaxFileSize = uint64_t(INT64_MAX);  // loff_t

struct Setting {
  SettingInfo info;
  void (*set)(Config& cfg, const Value& v);
};

// The order here is the order of --help and of docs/configuration.md.
const Setting kSettings[] = {
    {{"threads", "--threads", "N", "worker threads serving requests (1..256; default 2)"},
     [](Config& cfg, const Value& v) {
       const int64_t n = as_integer(v);
       if (n < int64_t(Config::kMinThreads) || n > int64_t(Config::kMaxThreads)) {
         refuse(fmt::format("must be between {} and {}, got {}", Config::kMinThreads,
                            Config::kMaxThreads, n));
       }
       cfg.threads = unsigned(n);
     }},
    {{"log_level", "--log-level", "LEVEL", "trace, debug, info, warn or error (default info)"},
     [](Config& cfg, const Value& v) {
       const std::string& s = as_string(v);
       for (const auto& [name, level] : kLogLevels) {
         if (s == name) {
           cfg.log_level = level;
           return;
         }
       }
       refuse(fmt::format("must be one of trace, debug, info, warn, error; got '{}'", s));
     }},
    {{"backend.type", "--backend", "TYPE[:ARG]", "the file system to serve (default memfs)"},
     [](Config& cfg, const Value& v) { parse_backend_spec(as_string(v), &cfg.backend); }},
    {{"backend.memfs.capacity", "--memfs-capacity", "SIZE",
      "memfs: bytes of file data it may hold (default 1G)"},
     [](Config& cfg, const Value& v) {
       const uint64_t n = as_size(v);
       if (n < kMinMemfsCapacity) {
         refuse(fmt::format("must be at least {}, got {}", format_size(kMinMemfsCapacity),
                            format_size(n)));
       }
       cfg.backend.memfs.capacity_bytes = n;
     }},
    {{"backend.memfs.max_inodes", "--memfs-max-inodes", "N",
      "memfs: most files, directories and links it may hold (default 1048576)"},
     [](Config& cfg, const Value& v) {
       const int64_t n = as_integer(v);
       if (n < 1) refuse(fmt::format("must be at least 1, got {}", n));
       cfg.backend.memfs.max_inodes = uint64_t(n);
     }},
    {{"backend.null.file_size", "--null-file-size", "SIZE",
      "null: size of its one file, \"zero\" (default 1T)"},
     [](Config& cfg, const Value& v) {
       const uint64_t n = as_size(v);
       if (n > kMaxFileSize) refuse(fmt::format("must be at most 2^63-1 bytes, got {}", n));
       cfg.backend.null.file_size = n;
     }},
    {{"backend.null.direct_io", "--null-direct-io", "BOOL",
      "null: open \"zero\" with FOPEN_DIRECT_IO, bypassing the page cache (default false)"},
     [](Config& cfg, const Value& v) { cfg.backend.null.direct_io = as_bool(v); }},
    {{"fuse.mount", "--fuse-mount", "DIR",
      "mount point of the FUSE file system (default /tmp/dpfs, created if missing)"},
     [](Config& cfg, const Value& v) {
       const std::string& s = as_string(v);
       if (s.empty()) refuse("must not be empty");
       if (s.find('\0') != std::string::npos) refuse("must not contain NUL");
       cfg.fuse.mount = s;
     }},
    {{"fuse.max_write", "--max-write", "SIZE",
      "largest READ/WRITE payload, 4K..1M in whole 4K pages (default 1M)"},
     [](Config& cfg, const Value& v) {
       const uint64_t n = as_size(v);
       if (n < kMinMaxWrite || n > kMaxMaxWrite) {
         refuse(fmt::format("must be between {} and {}, got {}", format_size(kMinMaxWrite),
                            format_size(kMaxMaxWrite), format_size(n)));
       }
       if (n % kPage != 0) refuse(fmt::format("must be a multiple of 4K, got {}", n));
       cfg.fuse.max_write = uint32_t(n);
     }},
    {{"fuse.entry_timeout", "--entry-timeout", "SECONDS",
      "how long the kernel may cache a name (default 1.0)"},
     [](Config& cfg, const Value& v) { cfg.fuse.entry_timeout = as_seconds(v); }},
    {{"fuse.attr_timeout", "--attr-timeout", "SECONDS",
      "how long the kernel may cache attributes (default 1.0)"},
     [](Config& cfg, const Value& v) { cfg.fuse.attr_timeout = as_seconds(v); }},
    {{"fuse.writeback_cache", "--writeback-cache", "BOOL",
      "let the kernel cache writes and send them later, in bulk (default false)"},
     [](Config& cfg, const Value& v) { cfg.fuse.writeback_cache = as_bool(v); }},
};

const Setting* find_setting(std::string_view key) {
  for (const Setting& s : kSettings) {
    if (s.info.key == key) return &s;
  }
  return nullptr;
}

// A table is any proper prefix of a setting's key ("backend", "backend.memfs").
bool is_table(std::string_view key) {
  for (const Setting& s : kSettings) {
    if (s.info.key.size() > key.size() && s.info.key.starts_with(key) &&
        s.info.key[key.size()] == '.') {
      return true;
    }
  }
  return false;
}

std::string_view toml_kind(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::date:
    case toml::node_type::time:
    case toml::node_type::date_time:
      return "a date or time";
    default:
      return "a value";
  }
}

void apply_table(Config& cfg, const toml::table& table, const std::string& prefix,
                 std::string_view source) {
  for (auto&& [k, node] : table) {
    const std::string key =
        prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str());
    auto fail = [&](std::string_view reason) {
      return ConfigError(fmt::format("config {}: {}: {}", source, key, reason));
    };
    if (is_table(key)) {
      const toml::table* sub = node.as_table();
      if (sub == nullptr) throw fail("must be a table ([" + key + "])");
      apply_table(cfg, *sub, key, source);
      continue;
    }
    const Setting* setting = find_setting(key);
    if (setting == nullptr) {
      throw ConfigError(fmt::format("config {}: unknown key '{}'", source, key));
    }
    Value value;
    if (node.is_integer()) {
      value = node.as_integer()->get();
    } else if (node.is_floating_point()) {
      value = node.as_floating_point()->get();
    } else if (node.is_boolean()) {
      value = node.as_boolean()->get();
    } else if (node.is_string()) {
      value = node.as_string()->get();
    } else {
      throw fail(fmt::format("expected a single value, got {}", toml_kind(node)));
    }
    try {
      setting->set(cfg, value);
    } catch (const std::invalid_argument& e) {
      throw fail(e.what());
    }
  }
}

}  // namespace

std::span<const SettingInfo> settings() {
  static const auto infos = [] {
    std::array<SettingInfo, std::size(kSettings)> out;
    for (size_t i = 0; i < out.size(); ++i) out[i] = kSettings[i].info;
    return out;
  }();
  return infos;
}

void apply_toml(Config& cfg, std::string_view text, std::string_view source) {
  toml::table table;
  try {
    table = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    throw ConfigError(fmt::format("config {}:{}:{}: {}", source, e.source().begin.line,
                                  e.source().begin.column, e.description()));
  }
  apply_table(cfg, table, "", source);
}

void apply_toml_file(Config& cfg, const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw ConfigError(fmt::format("config {}: {}", path, std::strerror(errno)));
  std::ostringstream text;
  text << file.rdbuf();
  if (file.bad()) throw ConfigError(fmt::format("config {}: read error", path));
  apply_toml(cfg, text.str(), path);
}

void apply_flag(Config& cfg, std::string_view key, std::string_view value) {
  const Setting* setting = find_setting(key);
  if (setting == nullptr) throw std::logic_error(fmt::format("no setting '{}'", key));
  try {
    setting->set(cfg, std::string(value));
  } catch (const std::invalid_argument& e) {
    throw ConfigError(fmt::format("{}: {}", setting->info.flag, e.what()));
  }
}

void apply_switch(Config& cfg, std::string_view key, bool value) {
  const Setting* setting = find_setting(key);
  if (setting == nullptr) throw std::logic_error(fmt::format("no setting '{}'", key));
  try {
    setting->set(cfg, value);
  } catch (const std::invalid_argument& e) {
    throw ConfigError(fmt::format("{}: {}", setting->info.flag, e.what()));
  }
}

void finish(Config& cfg) {
  if (cfg.fuse.mount.empty()) {
    cfg.fuse.mount = Config::kDefaultMount;
    cfg.fuse.mount_is_default = true;
  }
  cfg.backend.entry_timeout = cfg.fuse.entry_timeout;
  cfg.backend.attr_timeout = cfg.fuse.attr_timeout;
}

uint64_t parse_size(std::string_view text) {
  auto bad = [&] { refuse(fmt::format("must be a size such as 4096, 64K or 1G, got '{}'", text)); };
  uint64_t n = 0;
  const char* begin = text.data();
  const char* end = text.data() + text.size();
  const auto [p, ec] = std::from_chars(begin, end, n);
  if (p == begin) bad();
  if (ec == std::errc::result_out_of_range) refuse(fmt::format("size '{}' is too large", text));
  unsigned shift = 0;
  if (p != end) {
    if (end - p != 1) bad();
    switch (*p) {
      case 'k':
      case 'K':
        shift = 10;
        break;
      case 'm':
      case 'M':
        shift = 20;
        break;
      case 'g':
      case 'G':
        shift = 30;
        break;
      case 't':
      case 'T':
        shift = 40;
        break;
      default:
        bad();
    }
  }
  if (shift != 0 && n > (UINT64_MAX >> shift)) {
    refuse(fmt::format("size '{}' is too large", text));
  }
  return n << shift;
}

std::string format_size(uint64_t bytes) {
  static constexpr std::pair<unsigned, char> kUnits[] = {
      {40, 'T'}, {30, 'G'}, {20, 'M'}, {10, 'K'}};
  for (const auto& [shift, unit] : kUnits) {
    const uint64_t size = uint64_t(1) << shift;
    if (bytes >= size && bytes % size == 0) return fmt::format("{}{}", bytes >> shift, unit);
  }
  return fmt::format("{}", bytes);
}

std::string_view log_level_name(spdlog::level::level_enum level) {
  for (const auto& [name, l] : kLogLevels) {
    if (l == level) return name;
  }
  return "info";
}

}  // namespace dpfs::server
