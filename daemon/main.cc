// bigsmalld: the streaming loader daemon.
#include <cstdio>
#include <iostream>
#include <string>
#include <tuple>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "daemon/config.h"
#include "daemon/hub_models.h"
#include "daemon/server.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

int main(int argc, char** argv) {
  using bigsmall::daemon::DaemonConfig;
  DaemonConfig config;
  std::string config_file, cache_budget, read_chunk, socket_mode = "0660";
  bool print_config = false;

  CLI::App app{"bigsmalld: serves model layers decoded from .bs files to local clients"};
  app.set_version_flag("--version", "bigsmalld 0.1.0");
  app.add_option("--config", config_file, "JSON config file (flags override it)");
  app.add_option("--socket", config.socket,
                 "Unix socket path (default $BIGSMALL_SOCKET, else /run/bigsmall/bigsmall.sock)");
  app.add_option("--socket-group", config.socket_group, "group owning the socket and shm files");
  app.add_option("--socket-mode", socket_mode, "socket permissions, octal")->capture_default_str();
  app.add_option("--tcp", config.tcp, "also listen on TCP host:port (no authentication!)");
  app.add_option("--shm-dir", config.shm_dir, "directory for layer memory (tmpfs)");
  app.add_option("--cache-budget", cache_budget, "host memory for decoded layers, e.g. 16G");
  std::string arena_size;
  app.add_option("--arena-size", arena_size,
                 "bytes per host arena file, e.g. 256M (a larger layer gets its own)");
  app.add_option("--admission-timeout-seconds", config.admission_timeout_seconds,
                 "how long a layer load waits for room in the cache budget")
      ->capture_default_str();
  app.add_option("--prefetch", config.prefetch, "layers read and decoded ahead")
      ->capture_default_str();
  app.add_option("--window", config.default_window, "default unreleased layers per session")
      ->capture_default_str();
  app.add_option("--max-window", config.max_window, "largest window a client may ask for")
      ->capture_default_str();
  app.add_option("--decode-threads", config.decode_threads, "decode threads (0: all cores)");
  app.add_option("--load-threads", config.load_threads, "concurrent layer loads (0: prefetch+2)");
  app.add_option("--io", config.io, "auto | io_uring | pread")->capture_default_str();
  app.add_flag("!--no-direct", config.direct, "do not use O_DIRECT");
  app.add_option("--uring-depth", config.uring_depth, "reads in flight per request")
      ->capture_default_str();
  app.add_option("--read-chunk", read_chunk, "bytes per read, e.g. 1M");
  app.add_option("--decoder", config.decoder, "auto | reference | scalar | avx2 | avx512")
      ->capture_default_str();
  app.add_option("--metrics", config.metrics, "serve Prometheus /metrics on host:port");
  app.add_option("--log-level", config.log_level, "trace|debug|info|warn|error")
      ->capture_default_str();
  app.add_option("--drain-seconds", config.drain_seconds, "SIGTERM grace period")
      ->capture_default_str();
  app.add_option("--allowed-root", config.allowed_roots, "only open models under these dirs");
  app.add_option("--model-dir", config.model_dirs,
                 "directory models are opened beneath (repeatable; default "
                 "/var/lib/bigsmall/models)");
  app.add_option("--max-models", config.max_models, "open models (idle ones closed LRU)")
      ->capture_default_str();
  app.add_option("--max-sessions", config.max_sessions, "started sessions at once")
      ->capture_default_str();
  app.add_option("--max-total-window", config.max_total_window,
                 "sum of the windows of all started sessions")
      ->capture_default_str();
  app.add_option("--session-idle-seconds", config.session_idle_seconds,
                 "end a session that holds leases without progress this long (0: never)")
      ->capture_default_str();
  app.add_option("--max-description-bytes", config.max_description_bytes,
                 "refuse models whose description is larger")
      ->capture_default_str();
  app.add_option("--admin-group", config.admin_group,
                 "group whose members may also call Evict (besides the daemon's user and root)");
  app.add_option("--max-connections", config.max_connections,
                 "most open Unix socket connections")->capture_default_str();
  app.add_option("--max-connections-per-uid", config.max_connections_per_uid,
                 "most open Unix socket connections of one uid")->capture_default_str();
  app.add_option("--debug-fault", config.debug_fault, "(tests) inject faults into every read")
      ->group("");
  std::string gpu_memory, gpu_arena_size, staging_bytes;
  app.add_option("--gpu-backend", config.gpu_backend,
                 "GPU path: auto (CUDA when a GPU and driver exist, else none) | cuda | emulated "
                 "(one emulated device cuda:0, for CI) | none")
      ->capture_default_str();
  app.add_option("--gpu-memory", gpu_memory,
                 "device memory per GPU for decoded layers, e.g. 8G (default 8G)");
  app.add_option("--gpu-arena-size", gpu_arena_size,
                 "bytes per device arena, e.g. 1G (a larger layer gets its own)");
  app.add_option("--pipeline-depth", config.pipeline_depth, "layers in the load pipeline at once")
      ->capture_default_str();
  app.add_option("--staging-bytes", staging_bytes,
                 "compressed bytes staged by the load pipeline at once, e.g. 512M");
  app.add_option("--fault-staging", config.fault_staging,
                 "(tests) flip a staged byte of this layer index after the check stage")
      ->group("");
  std::string hub_max_bandwidth;
  std::string hub_read_ahead;
  std::string hub_max_model_bytes;
  std::string hub_min_free_bytes;
  app.add_flag("--hub,!--no-hub", config.hub,
               "serve Hugging Face Hub models, OpenModel(\"owner/repo[@rev]\") (default on)");
  app.add_option("--hub-allow", config.hub_allow,
                 "Hub repos that may be opened: owner/name, owner/* (or owner), * (repeatable; "
                 "default: any public repo; private and gated repos only when listed)");
  app.add_option("--hub-endpoint", config.hub_endpoint,
                 "the Hub's URL (default $HF_ENDPOINT, else https://huggingface.co)");
  app.add_option("--hub-token-file", config.hub_token_file,
                 "file holding the daemon's Hub token (default $HF_TOKEN, else "
                 "huggingface_hub's token file)");
  app.add_option("--hub-cache", config.hub_cache,
                 "huggingface_hub cache directory (default $HF_HUB_CACHE, else $HF_HOME/hub, "
                 "else ~/.cache/huggingface/hub)");
  app.add_option("--hub-max-bandwidth", hub_max_bandwidth,
                 "bytes per second of the background cache fill, e.g. 50M (default unlimited)");
  app.add_option("--hub-concurrency", config.hub_concurrency,
                 "Hub files downloaded into the cache at once (0: no background fill)")
      ->capture_default_str();
  app.add_option("--hub-read-ahead", hub_read_ahead,
                 "a read at most this far past the cache fill's progress waits for the fill "
                 "instead of fetching its own range, e.g. 64M (default 8M)");
  app.add_option("--hub-max-model-bytes", hub_max_model_bytes,
                 "a Hub model whose .bs shards are larger in all is refused, e.g. 500G "
                 "(default 0: no limit)");
  app.add_option("--hub-min-free-bytes", hub_min_free_bytes,
                 "the cache fill keeps this much of the cache's file system free; a file that "
                 "does not fit is streamed by ranged GETs only (default 1G)");
  app.add_flag("--hub-offline", config.hub_offline,
               "no network: Hub models only from the cache (also HF_HUB_OFFLINE=1)");
  app.add_flag("--print-config", print_config, "print the effective config as JSON and exit");
  // A bad flag (unknown, missing value, unparsable number) exits 2 with
  // CLI11's message, like every bad value below; --help and --version exit 0.
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }

  auto fail = [](const std::string& msg) {
    std::fprintf(stderr, "bigsmalld: %s\n", msg.c_str());
    return 2;
  };
  if (!config_file.empty()) {
    // Flags given on the command line win over the file.
    auto overridden = [&](const std::string& key) {
      std::string flag = "--" + key;
      for (char& c : flag) c = c == '_' ? '-' : c;
      if (key == "default_window") flag = "--window";
      if (key == "direct") flag = "--no-direct";
      if (key == "allowed_roots") flag = "--allowed-root";
      if (key == "model_dirs") flag = "--model-dir";
      const CLI::Option* opt = app.get_option_no_throw(flag);
      return opt != nullptr && opt->count() > 0;
    };
    absl::Status st = bigsmall::daemon::LoadConfigFile(config_file, &config, overridden);
    if (!st.ok()) return fail(std::string(st.message()));
  }
  if (!cache_budget.empty()) {
    auto v = bigsmall::daemon::ParseByteSize(cache_budget);
    if (!v.ok()) return fail(absl::StrCat("--cache-budget: ", v.status().message()));
    config.cache_budget = *v;
  }
  if (!arena_size.empty()) {
    auto v = bigsmall::daemon::ParseByteSize(arena_size);
    if (!v.ok()) return fail(absl::StrCat("--arena-size: ", v.status().message()));
    config.arena_size = *v;
  }
  for (auto [text, flag, out] :
       {std::tuple{&gpu_memory, "--gpu-memory", &config.gpu_memory},
        std::tuple{&gpu_arena_size, "--gpu-arena-size", &config.gpu_arena_size},
        std::tuple{&staging_bytes, "--staging-bytes", &config.staging_bytes}}) {
    if (text->empty()) continue;
    auto v = bigsmall::daemon::ParseByteSize(*text);
    if (!v.ok()) return fail(absl::StrCat(flag, ": ", v.status().message()));
    *out = *v;
  }
  if (!hub_max_bandwidth.empty()) {
    auto v = bigsmall::daemon::ParseByteSize(hub_max_bandwidth);
    if (!v.ok()) return fail(absl::StrCat("--hub-max-bandwidth: ", v.status().message()));
    config.hub_max_bandwidth = *v;
  }
  if (!hub_max_model_bytes.empty()) {
    auto v = bigsmall::daemon::ParseByteSize(hub_max_model_bytes);
    if (!v.ok()) return fail(absl::StrCat("--hub-max-model-bytes: ", v.status().message()));
    config.hub_max_model_bytes = *v;
  }
  if (!hub_min_free_bytes.empty()) {
    auto v = bigsmall::daemon::ParseByteSize(hub_min_free_bytes);
    if (!v.ok()) return fail(absl::StrCat("--hub-min-free-bytes: ", v.status().message()));
    config.hub_min_free_bytes = *v;
  }
  if (!hub_read_ahead.empty()) {
    auto v = bigsmall::daemon::ParseByteSize(hub_read_ahead);
    if (!v.ok()) return fail(absl::StrCat("--hub-read-ahead: ", v.status().message()));
    config.hub_read_ahead = *v;
  }
  if (!read_chunk.empty()) {
    auto v = bigsmall::daemon::ParseByteSize(read_chunk);
    if (!v.ok()) return fail(absl::StrCat("--read-chunk: ", v.status().message()));
    config.read_chunk = *v;
  }
  if (app.get_option("--socket-mode")->count() > 0) {
    auto mode = bigsmall::daemon::ParseFileMode(socket_mode);
    if (!mode.ok()) return fail(absl::StrCat("--socket-mode: ", mode.status().message()));
    config.socket_mode = *mode;
  }
  absl::Status st = bigsmall::daemon::FinalizeConfig(&config);
  if (!st.ok()) return fail(std::string(st.message()));
  if (config.hub) {
    // A bad endpoint or an unreadable token file stops the daemon here.
    auto hub = bigsmall::daemon::HubConfigFor(config);
    if (!hub.ok()) return fail(std::string(hub.status().message()));
  }
  if (print_config) {
    std::cout << bigsmall::daemon::ConfigToJson(config).dump(2) << "\n";
    return 0;
  }

  auto logger = spdlog::stderr_color_mt("bigsmalld");
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::from_str(config.log_level));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");

  bigsmall::daemon::BlockShutdownSignals();  // before any thread starts
  st = bigsmall::daemon::RunDaemon(config);
  if (!st.ok()) {
    spdlog::error("{}", st.ToString());
    return 1;
  }
  return 0;
}
