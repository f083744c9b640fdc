// bigsmalld configuration: flags, an optional JSON config file (flags win),
// and the environment (BIGSMALL_SOCKET).
#ifndef BIGSMALL_DAEMON_CONFIG_H_
#define BIGSMALL_DAEMON_CONFIG_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace bigsmall::daemon {

inline constexpr char kDefaultSocket[] = "/run/bigsmall/bigsmall.sock";

struct DaemonConfig {
  std::string socket;            // Unix socket path
  std::string socket_group;      // group owning the socket and shm ("" = primary group)
  uint32_t socket_mode = 0660;
  std::string tcp;               // "host:port" to also listen on TCP ("" = off)
  std::string shm_dir;           // "" = /dev/shm/bigsmall-<uid>
  uint64_t cache_budget = 0;     // bytes; 0 = half of physical memory
  uint32_t prefetch = 2;         // layers read+decoded ahead of the slowest request
  uint32_t default_window = 4;   // unreleased layers per session when the client asks 0
  uint32_t max_window = 64;
  int decode_threads = 0;        // 0 = all cores
  int load_threads = 0;          // concurrent layer loads; 0 = prefetch + 2
  std::string io = "auto";       // auto | io_uring | pread
  bool direct = true;            // O_DIRECT for aligned reads
  uint32_t uring_depth = 8;
  uint64_t read_chunk = 1 << 20;
  std::string decoder = "auto";  // auto | reference | scalar | avx2 | avx512
  std::string metrics;           // "127.0.0.1:9464" to serve /metrics ("" = off)
  std::string log_level = "info";
  double drain_seconds = 10;     // SIGTERM: how long running streams may finish
  std::vector<std::string> allowed_roots;  // if set, models must live under one of these
  std::string debug_fault;       // tests: fault spec injected into every source
};

// The socket default: $BIGSMALL_SOCKET, else kDefaultSocket.
std::string DefaultSocketPath();

// "8G", "512MiB", "1.5g", "4096" -> bytes (powers of 1024).
absl::StatusOr<uint64_t> ParseByteSize(const std::string& text);

// Applies the keys of a JSON config object to `config`, skipping keys for
// which `overridden(key)` is true (set on the command line). Unknown keys and
// wrong types are errors naming the key.
absl::Status ApplyConfigJson(const nlohmann::json& json, DaemonConfig* config,
                             const std::function<bool(const std::string&)>& overridden);
absl::Status LoadConfigFile(const std::string& path, DaemonConfig* config,
                            const std::function<bool(const std::string&)>& overridden);

// Fills defaults that depend on the machine and checks ranges.
absl::Status FinalizeConfig(DaemonConfig* config);

nlohmann::json ConfigToJson(const DaemonConfig& config);

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_CONFIG_H_
