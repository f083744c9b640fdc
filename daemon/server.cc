#include "daemon/server.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <future>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "codec/status_macros.h"
#include "daemon/host_arena.h"
#include "daemon/io_uring_source.h"
#include "daemon/metrics.h"
#include "daemon/service.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/grpcpp.h"
#include "grpc/grpc.h"
#include "spdlog/spdlog.h"

namespace bigsmall::daemon {
namespace {

constexpr char kServiceName[] = "bigsmall.v1.BigSmall";

// True when something accepts connections on the socket path.
bool SocketInUse(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  bool in_use = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return in_use;
}

absl::Status PrepareSocketPath(const std::string& path) {
  if (path.size() >= sizeof(sockaddr_un::sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path too long: ", path));
  }
  std::string dir = path.substr(0, path.find_last_of('/'));
  if (!dir.empty() && ::mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create socket directory ", dir, ": ", std::strerror(errno)));
  }
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::AlreadyExistsError(absl::StrCat(path, " exists and is not a socket"));
    }
    if (SocketInUse(path)) {
      return absl::AlreadyExistsError(
          absl::StrCat("another daemon is listening on ", path));
    }
    ::unlink(path.c_str());  // stale socket of a dead daemon
  }
  return absl::OkStatus();
}

// Stops the server: no new calls, running calls of the service get up to
// `drain_seconds` to finish, then whatever is left is cancelled.
//
// Server::Shutdown(deadline) alone is not enough: it waits for every
// connection to close, and a graceful HTTP/2 shutdown (GOAWAY + PING, final
// GOAWAY on the PING ack) needs the client to read its socket. A client with
// no call in flight does that only when its backup poller runs (every 5 s by
// default) or never (poller disabled, process stopped), so a single idle
// channel kept the daemon up for the whole grace period with 0 sessions.
// Here the drain waits for the service's own calls (calls_in_flight: every
// method until OnDone) and, once none is left, cancels the rest at once: idle
// connections, health watches, reflection streams.
void DrainAndShutdown(grpc::Server* server, BigSmallService& service, double drain_seconds) {
  const auto start = std::chrono::steady_clock::now();
  const auto grace = std::chrono::milliseconds(static_cast<int64_t>(drain_seconds * 1000));
  // Shutdown blocks until the server is down; it refuses new calls at once
  // and cancels every call itself when the grace period ends.
  std::promise<void> stopped;
  std::future<void> stopped_future = stopped.get_future();
  std::thread stopper([&] {
    server->Shutdown(std::chrono::system_clock::now() + grace);
    stopped.set_value();
  });
  bool cancelled = false;
  while (true) {
    if (service.calls_in_flight.load() == 0) {
      if (!cancelled) {
        spdlog::info("no calls in flight after {} ms; closing connections",
                     std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::steady_clock::now() - start)
                         .count());
      }
      cancelled = true;
      // Idempotent; repeated in case it ran before Shutdown began refusing
      // new connections.
      grpc_server_cancel_all_calls(server->c_server());
    }
    auto wait = std::chrono::milliseconds(cancelled ? 50 : 10);
    if (stopped_future.wait_for(wait) == std::future_status::ready) break;
  }
  stopper.join();
}

}  // namespace

void BlockShutdownSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

absl::Status RunDaemon(const DaemonConfig& config) {
  ASSIGN_OR_RETURN(IoBackend backend, ParseIoBackend(config.io));
  if (backend == IoBackend::kIoUring && !IoUringAvailable()) {
    return absl::UnavailableError("--io io_uring: io_uring is refused here (use auto or pread)");
  }
  if (backend == IoBackend::kAuto && !IoUringAvailable()) {
    spdlog::warn("io_uring is not available; reading with pread");
  }
  ASSIGN_OR_RETURN(int gid, LookupGroup(config.socket_group));
  ASSIGN_OR_RETURN(std::string arena_dir, PrepareShmDir(config.shm_dir, config.socket_group));
  RETURN_IF_ERROR(PrepareSocketPath(config.socket));

  Metrics metrics;
  if (!config.metrics.empty()) {
    absl::Status st = metrics.Serve(config.metrics);
    if (!st.ok()) {
      RemoveShmDir(arena_dir);
      return st;
    }
    spdlog::info("metrics on http://{}/metrics", config.metrics);
  }

  absl::Status result;
  {
    auto service = std::make_unique<BigSmallService>(config, arena_dir, &metrics);
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder builder;
    builder.AddListeningPort("unix:" + config.socket, grpc::InsecureServerCredentials());
    int tcp_port = 0;
    if (!config.tcp.empty()) {
      builder.AddListeningPort(config.tcp, grpc::InsecureServerCredentials(), &tcp_port);
    }
    builder.RegisterService(service.get());
    builder.SetMaxReceiveMessageSize(4 << 20);
    builder.SetMaxSendMessageSize(64 << 20);
    // The socket appears with owner-only permissions; it is opened to the
    // group only once its mode and group are set.
    mode_t old_umask = umask(0177);
    std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
    umask(old_umask);
    if (server == nullptr) {
      RemoveShmDir(arena_dir);
      return absl::UnavailableError(absl::StrCat("cannot listen on unix:", config.socket,
                                                 config.tcp.empty() ? "" : " or ", config.tcp));
    }
    if (gid >= 0 && ::chown(config.socket.c_str(), static_cast<uid_t>(-1), gid) != 0) {
      spdlog::warn("chgrp {} {}: {}", config.socket_group, config.socket, std::strerror(errno));
    }
    ::chmod(config.socket.c_str(), config.socket_mode);
    server->GetHealthCheckService()->SetServingStatus(kServiceName, true);
    server->GetHealthCheckService()->SetServingStatus("", true);
    spdlog::info("bigsmalld {} listening on unix:{}{}; cache budget {} MiB, prefetch {}, io {}",
                 kVersion, config.socket,
                 config.tcp.empty() ? "" : absl::StrCat(" and ", config.tcp), config.cache_budget >> 20,
                 config.prefetch, config.io);

    // Wait for SIGTERM / SIGINT (blocked in every thread; taken here).
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    int sig = 0;
    while (sigwait(&set, &sig) != 0) {
    }
    spdlog::info("signal {}: draining {} sessions (up to {} s)", sig,
                 service->active_sessions.load(), config.drain_seconds);
    server->GetHealthCheckService()->SetServingStatus(kServiceName, false);
    server->GetHealthCheckService()->SetServingStatus("", false);
    DrainAndShutdown(server.get(), *service, config.drain_seconds);
    server->Wait();
    spdlog::info("server stopped; {} sessions left", service->active_sessions.load());
    server.reset();
    service.reset();
  }
  ::unlink(config.socket.c_str());
  RemoveShmDir(arena_dir);
  spdlog::info("bigsmalld stopped");
  return result;
}

}  // namespace bigsmall::daemon
