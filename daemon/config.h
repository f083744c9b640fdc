// bigsmalld configuration: flags, an optional JSON config file (flags win),
// and the environment (BIGSMALL_SOCKET).
#ifndef BIGSMALL_DAEMON_CONFIG_H_
#define BIGSMALL_DAEMON_CONFIG_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "codec/tensor_codec.h"
#include "nlohmann/json.hpp"

namespace bigsmall::daemon {

inline constexpr char kDefaultSocket[] = "/run/bigsmall/bigsmall.sock";
inline constexpr char kDefaultModelDir[] = "/var/lib/bigsmall/models";

// Upper bounds FinalizeConfig enforces.
inline constexpr uint32_t kMaxPrefetch = 256;
inline constexpr uint32_t kMaxWindow = 65536;
inline constexpr int kMaxThreads = 1024;
inline constexpr uint64_t kMinArenaSize = 1ull << 20;
inline constexpr uint64_t kMaxArenaSize = 64ull << 30;
inline constexpr uint32_t kMaxPipelineDepth = 64;
inline constexpr uint64_t kMinStagingBytes = 1ull << 20;
inline constexpr uint64_t kMaxStagingBytes = 64ull << 30;
inline constexpr uint64_t kMinGpuMemory = 16ull << 20;

enum class GpuBackendKind { kAuto, kCuda, kEmulated, kNone };
// "auto" | "cuda" | "emulated" | "none"; anything else is kInvalidArgument.
absl::StatusOr<GpuBackendKind> ParseGpuBackend(const std::string& name);
// The layer index of config.fault_staging (nullopt when empty); a value that
// is not an integer >= -1 is kInvalidArgument.
absl::StatusOr<std::optional<int32_t>> ParseFaultStaging(const std::string& text);

struct DaemonConfig {
  std::string socket;            // Unix socket path
  std::string socket_group;      // group owning the socket and shm ("" = primary group)
  uint32_t socket_mode = 0660;
  std::string tcp;               // "host:port" to also listen on TCP ("" = off)
  std::string shm_dir;           // "" = /dev/shm/bigsmall-<uid>
  uint64_t cache_budget = 0;     // bytes; 0 = half of physical memory
  uint64_t arena_size = 256ull << 20;     // bytes per host arena file (a bigger layer: its own)
  double admission_timeout_seconds = 30;  // a load waits this long for room in the budget
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
  // Models are opened only beneath these directories (each opened once at
  // start; no symlinks followed beneath them). `allowed_roots`, when set,
  // replaces `model_dirs` as the set of roots (older configs).
  std::vector<std::string> model_dirs = {kDefaultModelDir};
  std::vector<std::string> allowed_roots;
  uint32_t max_models = 64;              // open models; idle ones are closed LRU
  uint64_t max_description_bytes = 60ull << 20;  // below the 64 MiB message limit
  uint32_t open_threads = 4;             // OpenModel's own pool
  uint32_t max_pending_opens = 64;       // queued + running OpenModel calls
  uint32_t max_sessions = 1024;          // started sessions at once
  uint64_t max_total_window = 16384;     // sum of the windows of started sessions
  double session_idle_seconds = 300;     // a session holding leases with no progress
  // Who is asking (docs/API.md "Peers, authorization and the socket").
  std::string admin_group;                // also may call Evict ("" = daemon's user and root only)
  uint32_t max_connections = 256;         // live Unix socket connections
  uint32_t max_connections_per_uid = 64;  // live Unix socket connections of one uid
  std::string debug_fault;       // tests: fault spec injected into every source
  // The GPU path (docs/API.md "Device sessions").
  //  gpu_backend: auto (real CUDA when a driver and a GPU exist, else none),
  //  cuda, emulated (one emulated device "cuda:0" whose memory files live in
  //  the shm instance dir: CI and machines without a GPU), none.
  std::string gpu_backend = "auto";
  // Device memory per GPU that decoded layers may occupy (the device
  // cache's budget; capped at 90% of the device's memory). 8 GiB: a 7B BF16
  // model (~14 GB) streams through it layer by layer and an 8B model's
  // working set of a few layers fits many times over, while leaving most of
  // a 24-80 GB GPU to the inference engine that imports the layers.
  uint64_t gpu_memory = 8ull << 30;
  uint64_t gpu_arena_size = 1ull << 30;  // bytes per device arena (a bigger layer: its own)
  // The load pipeline (daemon/pipeline.h): layers in flight at once, and
  // compressed bytes staged (read, not yet decoded) at once.
  uint32_t pipeline_depth = 3;
  uint64_t staging_bytes = 512ull << 20;
  // Tests: flip a byte of this layer index's staged groups after the check
  // stage ("" = off).
  std::string fault_staging;
  // Hugging Face Hub models (docs/API.md "Hugging Face Hub models"):
  // OpenModel{model: "owner/repo[@rev]"}. The hub_* values override the
  // environment huggingface_hub reads (HF_ENDPOINT, HF_TOKEN / its token
  // file, HF_HUB_CACHE / HF_HOME, HF_HUB_OFFLINE).
  bool hub = true;                     // false: Hub names are refused
  std::vector<std::string> hub_allow;  // repo patterns; empty: any public repo
  std::string hub_endpoint;            // "" = HF_ENDPOINT, else https://huggingface.co
  std::string hub_token_file;          // the daemon's token ("" = HF_TOKEN / token file)
  std::string hub_cache;               // "" = huggingface_hub's cache dir
  uint64_t hub_max_bandwidth = 0;      // bytes/s of the background fill (0: unlimited)
  uint32_t hub_concurrency = 2;        // files filled at once (0: no background fill)
  // A read of a file being filled that starts at most this far past the
  // fill's prefix waits for the fill (which then runs at full speed);
  // farther reads are ranged GETs of their own (whose bytes the fill then
  // appends instead of fetching them again).
  uint64_t hub_read_ahead = 8ull << 20;
  // A Hub model whose .bs shards are larger in all is RESOURCE_EXHAUSTED at
  // open (0: no limit): a bound on what a client can make the daemon fetch.
  uint64_t hub_max_model_bytes = 0;
  // The background fill leaves at least this much of the cache's file
  // system free: a file that would eat into it is not filled (its reads
  // stay ranged GETs), so no client fills the disk through the daemon.
  uint64_t hub_min_free_bytes = 1ull << 30;
  bool hub_offline = false;            // only what the cache holds (also HF_HUB_OFFLINE=1)
};

inline constexpr uint32_t kMaxHubConcurrency = 64;

// A hub_allow entry: "*" (any repo, private and gated ones included),
// "owner" or "owner/*" (every repo of owner), "owner/name"; each part made
// of [A-Za-z0-9._-] and the fnmatch wildcards '*' and '?'.
bool ValidHubPattern(const std::string& pattern);

// The socket default: $BIGSMALL_SOCKET, else kDefaultSocket.
std::string DefaultSocketPath();

// "8G", "512MiB", "1.5g", "4096" -> bytes (powers of 1024).
absl::StatusOr<uint64_t> ParseByteSize(const std::string& text);

// A permission mode in octal, strictly: 1 to 4 octal digits ("0660", "660",
// "0600"), at most 0777; anything else (letters, signs, spaces, 8 or 9,
// "0x..") is kInvalidArgument. The flag and the config key share it.
absl::StatusOr<uint32_t> ParseFileMode(const std::string& text);

// "auto" | "reference" | "scalar" | "avx2" | "avx512" (the codec's names);
// anything else is kInvalidArgument.
absl::StatusOr<DecoderImpl> ParseDecoderImpl(const std::string& name);

// Applies the keys of a JSON config object to `config`, skipping keys for
// which `overridden(key)` is true (set on the command line). Unknown keys and
// wrong types are errors naming the key.
absl::Status ApplyConfigJson(const nlohmann::json& json, DaemonConfig* config,
                             const std::function<bool(const std::string&)>& overridden);
absl::Status LoadConfigFile(const std::string& path, DaemonConfig* config,
                            const std::function<bool(const std::string&)>& overridden);

// Fills defaults that depend on the machine and checks every value: io,
// decoder and log_level names, and the ranges of the numbers (windows,
// prefetch, threads, depths, durations); the first bad one is
// kInvalidArgument naming its key. main() exits 2 on it.
absl::Status FinalizeConfig(DaemonConfig* config);

nlohmann::json ConfigToJson(const DaemonConfig& config);

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_CONFIG_H_
