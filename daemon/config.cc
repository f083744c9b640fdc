#include "daemon/config.h"

#include <unistd.h>

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "codec/status_macros.h"

namespace bigsmall::daemon {

std::string DefaultSocketPath() {
  const char* env = std::getenv("BIGSMALL_SOCKET");
  if (env != nullptr && *env != '\0') return env;
  return kDefaultSocket;
}

absl::StatusOr<uint64_t> ParseByteSize(const std::string& text) {
  std::string s = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  size_t pos = 0;
  while (pos < s.size() && (std::isdigit(static_cast<unsigned char>(s[pos])) || s[pos] == '.')) {
    ++pos;
  }
  double value = 0;
  if (pos == 0 || !absl::SimpleAtod(s.substr(0, pos), &value) || value < 0) {
    return absl::InvalidArgumentError(absl::StrCat("bad size '", text, "'"));
  }
  std::string unit = s.substr(pos);
  double mult = 1;
  if (unit.empty() || unit == "b") {
    mult = 1;
  } else if (unit == "k" || unit == "kb" || unit == "kib") {
    mult = 1024.0;
  } else if (unit == "m" || unit == "mb" || unit == "mib") {
    mult = 1024.0 * 1024;
  } else if (unit == "g" || unit == "gb" || unit == "gib") {
    mult = 1024.0 * 1024 * 1024;
  } else if (unit == "t" || unit == "tb" || unit == "tib") {
    mult = 1024.0 * 1024 * 1024 * 1024;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("bad size unit in '", text, "'"));
  }
  double bytes = value * mult;
  if (bytes > 1.8e19) return absl::InvalidArgumentError(absl::StrCat("size too large: ", text));
  return static_cast<uint64_t>(std::llround(bytes));
}

namespace {

template <typename T>
absl::Status Get(const nlohmann::json& v, const std::string& key, T* out) {
  try {
    *out = v.get<T>();
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config key '", key, "': ", e.what()));
  }
  return absl::OkStatus();
}

absl::Status GetSize(const nlohmann::json& v, const std::string& key, uint64_t* out) {
  if (v.is_number_unsigned() || v.is_number_integer()) return Get(v, key, out);
  if (!v.is_string()) {
    return absl::InvalidArgumentError(absl::StrCat("config key '", key, "': expected a size"));
  }
  ASSIGN_OR_RETURN(*out, ParseByteSize(v.get<std::string>()));
  return absl::OkStatus();
}

}  // namespace

absl::Status ApplyConfigJson(const nlohmann::json& json, DaemonConfig* c,
                             const std::function<bool(const std::string&)>& overridden) {
  if (!json.is_object()) return absl::InvalidArgumentError("config: expected a JSON object");
  for (const auto& [key, v] : json.items()) {
    if (overridden && overridden(key)) continue;
    if (key == "socket") {
      RETURN_IF_ERROR(Get(v, key, &c->socket));
    } else if (key == "socket_group") {
      RETURN_IF_ERROR(Get(v, key, &c->socket_group));
    } else if (key == "socket_mode") {
      if (v.is_string()) {
        c->socket_mode = static_cast<uint32_t>(std::strtoul(v.get<std::string>().c_str(), nullptr, 8));
      } else {
        RETURN_IF_ERROR(Get(v, key, &c->socket_mode));
      }
    } else if (key == "tcp") {
      RETURN_IF_ERROR(Get(v, key, &c->tcp));
    } else if (key == "shm_dir") {
      RETURN_IF_ERROR(Get(v, key, &c->shm_dir));
    } else if (key == "cache_budget") {
      RETURN_IF_ERROR(GetSize(v, key, &c->cache_budget));
    } else if (key == "prefetch") {
      RETURN_IF_ERROR(Get(v, key, &c->prefetch));
    } else if (key == "default_window") {
      RETURN_IF_ERROR(Get(v, key, &c->default_window));
    } else if (key == "max_window") {
      RETURN_IF_ERROR(Get(v, key, &c->max_window));
    } else if (key == "decode_threads") {
      RETURN_IF_ERROR(Get(v, key, &c->decode_threads));
    } else if (key == "load_threads") {
      RETURN_IF_ERROR(Get(v, key, &c->load_threads));
    } else if (key == "io") {
      RETURN_IF_ERROR(Get(v, key, &c->io));
    } else if (key == "direct") {
      RETURN_IF_ERROR(Get(v, key, &c->direct));
    } else if (key == "uring_depth") {
      RETURN_IF_ERROR(Get(v, key, &c->uring_depth));
    } else if (key == "read_chunk") {
      RETURN_IF_ERROR(GetSize(v, key, &c->read_chunk));
    } else if (key == "decoder") {
      RETURN_IF_ERROR(Get(v, key, &c->decoder));
    } else if (key == "metrics") {
      RETURN_IF_ERROR(Get(v, key, &c->metrics));
    } else if (key == "log_level") {
      RETURN_IF_ERROR(Get(v, key, &c->log_level));
    } else if (key == "drain_seconds") {
      RETURN_IF_ERROR(Get(v, key, &c->drain_seconds));
    } else if (key == "allowed_roots") {
      RETURN_IF_ERROR(Get(v, key, &c->allowed_roots));
    } else {
      return absl::InvalidArgumentError(absl::StrCat("config: unknown key '", key, "'"));
    }
  }
  return absl::OkStatus();
}

absl::Status LoadConfigFile(const std::string& path, DaemonConfig* config,
                            const std::function<bool(const std::string&)>& overridden) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("config file ", path, " cannot be read"));
  nlohmann::json json = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false,
                                              /*ignore_comments=*/true);
  if (json.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat("config file ", path, " is not valid JSON"));
  }
  absl::Status st = ApplyConfigJson(json, config, overridden);
  if (!st.ok()) return absl::Status(st.code(), absl::StrCat(path, ": ", st.message()));
  return absl::OkStatus();
}

absl::Status FinalizeConfig(DaemonConfig* c) {
  if (c->socket.empty()) c->socket = DefaultSocketPath();
  if (c->shm_dir.empty()) c->shm_dir = absl::StrCat("/dev/shm/bigsmall-", geteuid());
  if (c->cache_budget == 0) {
    long pages = sysconf(_SC_PHYS_PAGES);
    long page = sysconf(_SC_PAGESIZE);
    c->cache_budget = pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * page / 2 : 8ull << 30;
  }
  if (c->default_window == 0) c->default_window = 1;
  if (c->max_window < c->default_window) c->max_window = c->default_window;
  if (c->load_threads <= 0) c->load_threads = static_cast<int>(c->prefetch) + 2;
  if (c->uring_depth == 0 || c->uring_depth > 4096) {
    return absl::InvalidArgumentError("uring_depth must be in 1..4096");
  }
  if (c->read_chunk < 4096 || c->read_chunk > (1u << 30)) {
    return absl::InvalidArgumentError("read_chunk must be in 4 KiB..1 GiB");
  }
  if (c->socket_mode > 0777) return absl::InvalidArgumentError("socket_mode must be octal <= 0777");
  if (c->drain_seconds < 0) return absl::InvalidArgumentError("drain_seconds must be >= 0");
  return absl::OkStatus();
}

nlohmann::json ConfigToJson(const DaemonConfig& c) {
  char mode[8];
  snprintf(mode, sizeof(mode), "0%o", c.socket_mode);
  return {{"socket", c.socket},
          {"socket_group", c.socket_group},
          {"socket_mode", mode},
          {"tcp", c.tcp},
          {"shm_dir", c.shm_dir},
          {"cache_budget", c.cache_budget},
          {"prefetch", c.prefetch},
          {"default_window", c.default_window},
          {"max_window", c.max_window},
          {"decode_threads", c.decode_threads},
          {"load_threads", c.load_threads},
          {"io", c.io},
          {"direct", c.direct},
          {"uring_depth", c.uring_depth},
          {"read_chunk", c.read_chunk},
          {"decoder", c.decoder},
          {"metrics", c.metrics},
          {"log_level", c.log_level},
          {"drain_seconds", c.drain_seconds},
          {"allowed_roots", c.allowed_roots}};
}

}  // namespace bigsmall::daemon
