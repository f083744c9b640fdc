#include "daemon/config.h"

#include <unistd.h>

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <type_traits>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "codec/status_macros.h"
#include "codec/status_util.h"
#include "daemon/io_uring_source.h"

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
    return absl::InvalidArgumentError(absl::StrCat("bad size '", EscapeForLog(text, 64), "'"));
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
    return absl::InvalidArgumentError(
        absl::StrCat("bad size unit in '", EscapeForLog(text, 64), "'"));
  }
  double bytes = value * mult;
  if (!(bytes <= 1.8e19)) {
    return absl::InvalidArgumentError(absl::StrCat("size too large: ", EscapeForLog(text, 64)));
  }
  return static_cast<uint64_t>(std::llround(bytes));
}

absl::StatusOr<uint32_t> ParseFileMode(const std::string& text) {
  absl::string_view digits = text;
  bool ok = !digits.empty() && digits.size() <= 4;
  uint32_t mode = 0;
  for (char ch : digits) {
    if (ch < '0' || ch > '7') {
      ok = false;
      break;
    }
    mode = mode * 8 + static_cast<uint32_t>(ch - '0');
  }
  if (!ok || mode > 0777) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad socket mode '", EscapeForLog(text, 64),
        "': expected octal permissions such as 0660 (at most 0777)"));
  }
  return mode;
}

absl::StatusOr<GpuBackendKind> ParseGpuBackend(const std::string& name) {
  if (name == "auto") return GpuBackendKind::kAuto;
  if (name == "cuda") return GpuBackendKind::kCuda;
  if (name == "emulated") return GpuBackendKind::kEmulated;
  if (name == "none") return GpuBackendKind::kNone;
  return absl::InvalidArgumentError(absl::StrCat("unknown GPU backend '", EscapeForLog(name, 64),
                                                 "' (auto, cuda, emulated, none)"));
}

absl::StatusOr<std::optional<int32_t>> ParseFaultStaging(const std::string& text) {
  if (text.empty()) return std::optional<int32_t>();
  int32_t layer = 0;
  if (!absl::SimpleAtoi(text, &layer) || layer < -1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", EscapeForLog(text, 64), "' is not a layer index (an integer >= -1)"));
  }
  return std::optional<int32_t>(layer);
}

absl::StatusOr<DecoderImpl> ParseDecoderImpl(const std::string& name) {
  for (DecoderImpl impl : {DecoderImpl::kAuto, DecoderImpl::kReference, DecoderImpl::kScalar,
                           DecoderImpl::kAvx2, DecoderImpl::kAvx512}) {
    if (name == DecoderImplName(impl)) return impl;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown decoder '", EscapeForLog(name, 64), "' (auto, reference, scalar, avx2, avx512)"));
}

namespace {

template <typename T>
absl::Status Get(const nlohmann::json& v, const std::string& key, T* out) {
  // Numbers strictly: no negative into unsigned, no fraction into an
  // integer, no silent wrap (nlohmann would convert all of these).
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) {
      return absl::InvalidArgumentError(absl::StrCat("config key '", key, "': expected true/false"));
    }
  } else if constexpr (std::is_integral_v<T>) {
    bool fits = false;
    if (v.is_number_unsigned()) {
      fits = v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<T>::max());
    } else if (v.is_number_integer()) {
      const int64_t x = v.get<int64_t>();
      fits = x >= static_cast<int64_t>(std::numeric_limits<T>::min()) &&
             (x < 0 || static_cast<uint64_t>(x) <= static_cast<uint64_t>(std::numeric_limits<T>::max()));
    }
    if (!fits) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config key '", key, "': expected an integer in ", std::numeric_limits<T>::min(), "..",
          std::numeric_limits<T>::max(), ", got ", EscapeForLog(v.dump(), 64)));
    }
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!v.is_number()) {
      return absl::InvalidArgumentError(absl::StrCat("config key '", key, "': expected a number"));
    }
  }
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
  auto size = ParseByteSize(v.get<std::string>());
  if (!size.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config key '", key, "': ", size.status().message()));
  }
  *out = *size;
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
      // A string only: JSON has no octal numbers, and 660 read as decimal
      // would be a different mode.
      if (!v.is_string()) {
        return absl::InvalidArgumentError(
            "config key 'socket_mode': expected an octal string such as \"0660\"");
      }
      auto mode = ParseFileMode(v.get<std::string>());
      if (!mode.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("config key 'socket_mode': ", mode.status().message()));
      }
      c->socket_mode = *mode;
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
    } else if (key == "model_dirs") {
      RETURN_IF_ERROR(Get(v, key, &c->model_dirs));
    } else if (key == "max_models") {
      RETURN_IF_ERROR(Get(v, key, &c->max_models));
    } else if (key == "max_description_bytes") {
      RETURN_IF_ERROR(GetSize(v, key, &c->max_description_bytes));
    } else if (key == "open_threads") {
      RETURN_IF_ERROR(Get(v, key, &c->open_threads));
    } else if (key == "max_pending_opens") {
      RETURN_IF_ERROR(Get(v, key, &c->max_pending_opens));
    } else if (key == "max_sessions") {
      RETURN_IF_ERROR(Get(v, key, &c->max_sessions));
    } else if (key == "max_total_window") {
      RETURN_IF_ERROR(Get(v, key, &c->max_total_window));
    } else if (key == "session_idle_seconds") {
      RETURN_IF_ERROR(Get(v, key, &c->session_idle_seconds));
    } else if (key == "arena_size") {
      RETURN_IF_ERROR(GetSize(v, key, &c->arena_size));
    } else if (key == "admission_timeout_seconds") {
      RETURN_IF_ERROR(Get(v, key, &c->admission_timeout_seconds));
    } else if (key == "admin_group") {
      RETURN_IF_ERROR(Get(v, key, &c->admin_group));
    } else if (key == "max_connections") {
      RETURN_IF_ERROR(Get(v, key, &c->max_connections));
    } else if (key == "max_connections_per_uid") {
      RETURN_IF_ERROR(Get(v, key, &c->max_connections_per_uid));
    } else if (key == "gpu_backend") {
      RETURN_IF_ERROR(Get(v, key, &c->gpu_backend));
    } else if (key == "gpu_memory") {
      RETURN_IF_ERROR(GetSize(v, key, &c->gpu_memory));
    } else if (key == "gpu_arena_size") {
      RETURN_IF_ERROR(GetSize(v, key, &c->gpu_arena_size));
    } else if (key == "pipeline_depth") {
      RETURN_IF_ERROR(Get(v, key, &c->pipeline_depth));
    } else if (key == "staging_bytes") {
      RETURN_IF_ERROR(GetSize(v, key, &c->staging_bytes));
    } else if (key == "fault_staging") {
      RETURN_IF_ERROR(Get(v, key, &c->fault_staging));
    } else if (key == "hub") {
      RETURN_IF_ERROR(Get(v, key, &c->hub));
    } else if (key == "hub_allow") {
      RETURN_IF_ERROR(Get(v, key, &c->hub_allow));
    } else if (key == "hub_endpoint") {
      RETURN_IF_ERROR(Get(v, key, &c->hub_endpoint));
    } else if (key == "hub_token_file") {
      RETURN_IF_ERROR(Get(v, key, &c->hub_token_file));
    } else if (key == "hub_cache") {
      RETURN_IF_ERROR(Get(v, key, &c->hub_cache));
    } else if (key == "hub_max_bandwidth") {
      RETURN_IF_ERROR(GetSize(v, key, &c->hub_max_bandwidth));
    } else if (key == "hub_concurrency") {
      RETURN_IF_ERROR(Get(v, key, &c->hub_concurrency));
    } else if (key == "hub_read_ahead") {
      RETURN_IF_ERROR(GetSize(v, key, &c->hub_read_ahead));
    } else if (key == "hub_max_model_bytes") {
      RETURN_IF_ERROR(GetSize(v, key, &c->hub_max_model_bytes));
    } else if (key == "hub_min_free_bytes") {
      RETURN_IF_ERROR(GetSize(v, key, &c->hub_min_free_bytes));
    } else if (key == "hub_offline") {
      RETURN_IF_ERROR(Get(v, key, &c->hub_offline));
    } else {
      return absl::InvalidArgumentError(absl::StrCat("config: unknown key '", EscapeForLog(key, 64), "'"));
    }
  }
  return absl::OkStatus();
}

bool ValidHubPattern(const std::string& pattern) {
  if (pattern.empty() || pattern.size() > 200) return false;
  std::vector<absl::string_view> parts = absl::StrSplit(pattern, '/');
  if (parts.size() > 2) return false;
  for (absl::string_view part : parts) {
    if (part.empty()) return false;
    for (char c : part) {
      if (!absl::ascii_isalnum(c) && c != '-' && c != '_' && c != '.' && c != '*' && c != '?') {
        return false;
      }
    }
  }
  return true;
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

namespace {

absl::Status Bad(absl::string_view key, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(key, " ", what));
}

bool KnownLogLevel(const std::string& level) {
  // spdlog's names (level::from_str silently turns anything else into off).
  for (const char* name : {"trace", "debug", "info", "warn", "warning", "error", "err",
                           "critical", "off"}) {
    if (level == name) return true;
  }
  return false;
}

}  // namespace

absl::Status FinalizeConfig(DaemonConfig* c) {
  if (c->socket.empty()) c->socket = DefaultSocketPath();
  if (c->shm_dir.empty()) c->shm_dir = absl::StrCat("/dev/shm/bigsmall-", geteuid());
  if (c->cache_budget == 0) {
    long pages = sysconf(_SC_PHYS_PAGES);
    long page = sysconf(_SC_PAGESIZE);
    c->cache_budget = pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * page / 2 : 8ull << 30;
  }
  if (auto io = ParseIoBackend(c->io); !io.ok()) return Bad("io:", io.status().message());
  if (auto d = ParseDecoderImpl(c->decoder); !d.ok()) return Bad("decoder:", d.status().message());
  if (!KnownLogLevel(c->log_level)) {
    return Bad("log_level", absl::StrCat("'", EscapeForLog(c->log_level, 64),
                                         "' is not one of trace, debug, info, warn, error, "
                                         "critical, off"));
  }
  if (c->socket_mode > 0777) return Bad("socket_mode", "must be octal <= 0777");
  if (c->prefetch > kMaxPrefetch) {
    return Bad("prefetch", absl::StrCat("must be in 0..", kMaxPrefetch, " (got ", c->prefetch, ")"));
  }
  if (c->max_window == 0 || c->max_window > kMaxWindow) {
    return Bad("max_window", absl::StrCat("must be in 1..", kMaxWindow, " (got ", c->max_window, ")"));
  }
  if (c->default_window == 0 || c->default_window > c->max_window) {
    return Bad("default_window (--window)",
               absl::StrCat("must be in 1..max_window (", c->max_window, "; got ",
                            c->default_window, ")"));
  }
  if (c->max_total_window < c->max_window) {
    return Bad("max_total_window", absl::StrCat("must be >= max_window (", c->max_window,
                                                "; got ", c->max_total_window, ")"));
  }
  if (c->decode_threads < 0 || c->decode_threads > kMaxThreads) {
    return Bad("decode_threads", absl::StrCat("must be in 0..", kMaxThreads, " (0: all cores; got ",
                                              c->decode_threads, ")"));
  }
  if (c->load_threads < 0 || c->load_threads > kMaxThreads) {
    return Bad("load_threads", absl::StrCat("must be in 0..", kMaxThreads,
                                            " (0: prefetch + 2; got ", c->load_threads, ")"));
  }
  if (c->load_threads == 0) c->load_threads = static_cast<int>(c->prefetch) + 2;
  if (c->uring_depth == 0 || c->uring_depth > 4096) {
    return Bad("uring_depth", "must be in 1..4096");
  }
  if (c->read_chunk < 4096 || c->read_chunk > (1u << 30)) {
    return Bad("read_chunk", "must be in 4 KiB..1 GiB");
  }
  if (static_cast<uint64_t>(c->uring_depth) * c->read_chunk > (1ull << 30)) {
    return Bad("uring_depth x read_chunk",
               "must be at most 1 GiB (each read in flight has its own bounce buffer)");
  }
  auto finite_non_negative = [](double v) { return std::isfinite(v) && v >= 0; };
  if (!finite_non_negative(c->drain_seconds)) return Bad("drain_seconds", "must be >= 0");
  if (c->max_models == 0) return Bad("max_models", "must be >= 1");
  if (c->open_threads == 0 || c->open_threads > static_cast<uint32_t>(kMaxThreads)) {
    return Bad("open_threads", absl::StrCat("must be in 1..", kMaxThreads));
  }
  if (c->max_pending_opens == 0) return Bad("max_pending_opens", "must be >= 1");
  if (c->max_sessions == 0) return Bad("max_sessions", "must be >= 1");
  if (c->max_connections == 0) return Bad("max_connections", "must be >= 1");
  if (c->max_connections_per_uid == 0) return Bad("max_connections_per_uid", "must be >= 1");
  if (!finite_non_negative(c->session_idle_seconds)) {
    return Bad("session_idle_seconds", "must be >= 0 (0: no idle timeout)");
  }
  if (c->arena_size < kMinArenaSize || c->arena_size > kMaxArenaSize ||
      c->arena_size % 4096 != 0) {
    return Bad("arena_size", absl::StrCat("must be a multiple of 4 KiB in 1 MiB..64 GiB (got ",
                                          c->arena_size, ")"));
  }
  if (auto g = ParseGpuBackend(c->gpu_backend); !g.ok()) {
    return Bad("gpu_backend:", g.status().message());
  }
  if (c->gpu_memory < kMinGpuMemory) {
    return Bad("gpu_memory", absl::StrCat("must be at least 16 MiB (got ", c->gpu_memory, ")"));
  }
  if (c->gpu_arena_size < kMinArenaSize || c->gpu_arena_size > kMaxArenaSize ||
      c->gpu_arena_size % 4096 != 0) {
    return Bad("gpu_arena_size", absl::StrCat("must be a multiple of 4 KiB in 1 MiB..64 GiB (got ",
                                              c->gpu_arena_size, ")"));
  }
  if (c->pipeline_depth == 0 || c->pipeline_depth > kMaxPipelineDepth) {
    return Bad("pipeline_depth", absl::StrCat("must be in 1..", kMaxPipelineDepth, " (got ",
                                              c->pipeline_depth, ")"));
  }
  if (c->staging_bytes < kMinStagingBytes || c->staging_bytes > kMaxStagingBytes) {
    return Bad("staging_bytes", absl::StrCat("must be in 1 MiB..64 GiB (got ", c->staging_bytes, ")"));
  }
  if (auto f = ParseFaultStaging(c->fault_staging); !f.ok()) {
    return Bad("fault_staging:", f.status().message());
  }
  for (const std::string& pattern : c->hub_allow) {
    if (!ValidHubPattern(pattern)) {
      return Bad("hub_allow", absl::StrCat("'", EscapeForLog(pattern, 64),
                                           "' is not a repo pattern (owner, owner/*, "
                                           "owner/name or *)"));
    }
  }
  if (!c->hub_endpoint.empty() && !absl::StartsWith(c->hub_endpoint, "http://") &&
      !absl::StartsWith(c->hub_endpoint, "https://")) {
    return Bad("hub_endpoint", "must start with http:// or https://");
  }
  if (c->hub_concurrency > kMaxHubConcurrency) {
    return Bad("hub_concurrency", absl::StrCat("must be in 0..", kMaxHubConcurrency, " (got ",
                                               c->hub_concurrency, ")"));
  }
  if (!std::isfinite(c->admission_timeout_seconds) || c->admission_timeout_seconds <= 0 ||
      c->admission_timeout_seconds > 86400) {
    return Bad("admission_timeout_seconds", "must be in (0, 86400]");
  }
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
          {"allowed_roots", c.allowed_roots},
          {"admin_group", c.admin_group},
          {"max_connections", c.max_connections},
          {"max_connections_per_uid", c.max_connections_per_uid},
          {"model_dirs", c.model_dirs},
          {"max_models", c.max_models},
          {"max_description_bytes", c.max_description_bytes},
          {"open_threads", c.open_threads},
          {"max_pending_opens", c.max_pending_opens},
          {"max_sessions", c.max_sessions},
          {"max_total_window", c.max_total_window},
          {"session_idle_seconds", c.session_idle_seconds},
          {"arena_size", c.arena_size},
          {"admission_timeout_seconds", c.admission_timeout_seconds},
          {"admin_group", c.admin_group},
          {"max_connections", c.max_connections},
          {"max_connections_per_uid", c.max_connections_per_uid},
          {"gpu_backend", c.gpu_backend},
          {"gpu_memory", c.gpu_memory},
          {"gpu_arena_size", c.gpu_arena_size},
          {"pipeline_depth", c.pipeline_depth},
          {"staging_bytes", c.staging_bytes},
          {"fault_staging", c.fault_staging},
          {"hub", c.hub},
          {"hub_allow", c.hub_allow},
          {"hub_endpoint", c.hub_endpoint},
          {"hub_token_file", c.hub_token_file},
          {"hub_cache", c.hub_cache},
          {"hub_max_bandwidth", c.hub_max_bandwidth},
          {"hub_concurrency", c.hub_concurrency},
          {"hub_read_ahead", c.hub_read_ahead},
          {"hub_max_model_bytes", c.hub_max_model_bytes},
          {"hub_min_free_bytes", c.hub_min_free_bytes},
          {"hub_offline", c.hub_offline}};
}

}  // namespace bigsmall::daemon
