#include "daemon/server.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "codec/status_macros.h"
#include "daemon/device_backend.h"
#include "daemon/host_arena.h"
#include "daemon/io_uring_source.h"
#include "daemon/listener.h"
#include "daemon/metrics.h"
#include "daemon/peer.h"
#include "daemon/sd_notify.h"
#include "daemon/service.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/server_posix.h"
#include "grpc/grpc.h"
#include "spdlog/spdlog.h"

namespace bigsmall::daemon {
namespace {

constexpr char kServiceName[] = "bigsmall.v1.BigSmall";

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
// method until OnDone) and, once none is left or the grace period is over,
// cancels the rest at once: sessions still running, idle connections,
// health watches, reflection streams. `before_cancel` runs once, just
// before the first cancel (so before any session's leases are ended by the
// shutdown).
void DrainAndShutdown(grpc::Server* server, BigSmallService& service, double drain_seconds,
                      const std::function<void()>& before_cancel) {
  const auto start = std::chrono::steady_clock::now();
  const auto grace = std::chrono::milliseconds(static_cast<int64_t>(drain_seconds * 1000));
  // Shutdown blocks until the server is down; it refuses new calls at once.
  // The loop below cancels what is left when the grace period ends; gRPC's
  // own cancel at the Shutdown deadline, a little later, is a backstop.
  constexpr std::chrono::milliseconds kBackstop{2000};
  std::promise<void> stopped;
  std::future<void> stopped_future = stopped.get_future();
  std::thread stopper([&] {
    server->Shutdown(std::chrono::system_clock::now() + grace + kBackstop);
    stopped.set_value();
  });
  bool cancelled = false;
  while (true) {
    const int32_t in_flight = service.calls_in_flight.load();
    const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - start);
    if (in_flight == 0 || elapsed >= grace) {
      if (!cancelled) {
        if (in_flight == 0) {
          spdlog::info("no calls in flight after {} ms; closing connections", elapsed.count());
        } else {
          spdlog::info("drain period over after {} ms; cancelling {} calls", elapsed.count(),
                       in_flight);
        }
        before_cancel();
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

// The watchdog's probe: a GetStats over the daemon's own Unix socket (the
// accept loop, gRPC and the service's locks all take part). Sets STATUS=
// from the answer. Cancel() ends a call in progress and every later one (so
// the drain does not wait for a probe).
class WatchdogProbe {
 public:
  explicit WatchdogProbe(const std::string& socket)
      : socket_(socket),
        stub_(v1::BigSmall::NewStub(
            grpc::CreateChannel("unix:" + socket, grpc::InsecureChannelCredentials()))) {}

  absl::Status Probe(std::chrono::milliseconds deadline) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + deadline);
    ctx.set_wait_for_ready(true);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cancelled_) return absl::CancelledError("the watchdog is stopping");
      current_ = &ctx;
    }
    v1::GetStatsRequest request;
    v1::StatsResponse response;
    grpc::Status st = stub_->GetStats(&ctx, request, &response);
    {
      std::lock_guard<std::mutex> lock(mu_);
      current_ = nullptr;
    }
    if (!st.ok()) {
      return absl::UnavailableError(
          absl::StrCat("GetStats over unix:", socket_, ": ", st.error_message()));
    }
    std::string status = SdStatusLine(absl::StrCat("serving on unix:", socket_, "; ",
                                                   response.models_size(), " models open, ",
                                                   response.active_sessions(), " sessions"));
    if (status != last_status_) {  // only changes
      (void)SdNotify(absl::StrCat("STATUS=", status));
      last_status_ = std::move(status);
    }
    return absl::OkStatus();
  }

  void Cancel() {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    if (current_ != nullptr) current_->TryCancel();
  }

 private:
  const std::string socket_;
  const std::unique_ptr<v1::BigSmall::Stub> stub_;
  std::string last_status_;  // the watchdog thread's only
  std::mutex mu_;
  bool cancelled_ = false;
  grpc::ClientContext* current_ = nullptr;  // the call in progress
};

// Logs a notification that could not be sent (NOTIFY_SOCKET set but
// unreachable): the daemon serves on regardless.
void Notify(const std::string& state) {
  absl::Status st = SdNotify(state);
  if (!st.ok()) spdlog::warn("systemd notify: {}", st.ToString());
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
  ASSIGN_OR_RETURN(int admin_gid, LookupGroup(config.admin_group));
  SetAdminPolicy(AdminPolicy{::geteuid(), admin_gid >= 0 ? std::optional<gid_t>(admin_gid)
                                                         : std::nullopt});
  // The shm dir, held by fd (shm_dir.h); removed when the last reference
  // goes, so every error path below leaves no instance dir behind.
  ASSIGN_OR_RETURN(std::shared_ptr<ShmDir> arena_dir,
                   ShmDir::Prepare(config.shm_dir, config.socket_group));
  DaemonConfig effective = config;
  effective.cache_budget = HostCacheBudget(config.cache_budget, *arena_dir);
  // The Unix socket is ours, not gRPC's: it knows who connects (peer.h).
  // Bound now, before the service's threads exist (it sets the umask);
  // or, socket-activated, the one systemd passed (LISTEN_FDS).
  std::optional<std::chrono::microseconds> watchdog_interval;
  {
    absl::StatusOr<std::optional<std::chrono::microseconds>> wd = SdWatchdogInterval();
    if (!wd.ok()) {
      RemoveShmDir(arena_dir);
      return wd.status();
    }
    watchdog_interval = *wd;
  }
  absl::StatusOr<int> activated = TakeActivatedUnixSocket(config.socket);
  if (!activated.ok()) {
    RemoveShmDir(arena_dir);
    return activated.status();
  }
  ListenerOptions listen_options;
  listen_options.path = config.socket;
  listen_options.mode = config.socket_mode;
  listen_options.gid = gid;
  listen_options.max_connections = config.max_connections;
  listen_options.max_connections_per_uid = config.max_connections_per_uid;
  absl::StatusOr<std::unique_ptr<UnixListener>> bound =
      *activated >= 0 ? UnixListener::Adopt(*activated, listen_options)
                      : UnixListener::Bind(listen_options);
  if (!bound.ok()) {
    RemoveShmDir(arena_dir);
    return bound.status();
  }
  std::unique_ptr<UnixListener> listener = std::move(*bound);

  // The GPU path: real CUDA, the emulated device (its memory files in the
  // shm instance dir, under the same trust rules as the host arenas), or none.
  absl::StatusOr<GpuApiChoice> chosen = MakeGpuApi(config.gpu_backend, arena_dir->path());
  if (!chosen.ok()) {
    RemoveShmDir(arena_dir);
    return chosen.status();
  }
  GpuApiChoice gpu = std::move(*chosen);

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
    // Freed layers' pages are recycled (issue 11): at most
    // kDefaultHostWarmLimit warm, live + warm within the cache budget.
    std::shared_ptr<ArenaPool> host_arenas = MakeHostArenaPool(
        arena_dir, config.arena_size,
        std::min<uint64_t>(kDefaultHostWarmLimit, effective.cache_budget), effective.cache_budget);
    auto service = std::make_unique<BigSmallService>(effective, host_arenas, &metrics,
                                                     std::move(gpu.api), gpu.unavailable);
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder builder;
    // No listening port for the Unix socket: the listener hands each
    // accepted connection over (AddInsecureChannelFromFd). TCP, if asked,
    // is gRPC's own port; its peers are unidentified (no admin calls).
    int tcp_port = 0;
    if (!config.tcp.empty()) {
      builder.AddListeningPort(config.tcp, grpc::InsecureServerCredentials(), &tcp_port);
    }
    builder.RegisterService(service.get());
    builder.SetMaxReceiveMessageSize(4 << 20);
    builder.SetMaxSendMessageSize(64 << 20);
    std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
    if (server == nullptr) {
      listener.reset();
      RemoveShmDir(arena_dir);
      return absl::UnavailableError(
          absl::StrCat("cannot start the gRPC server", config.tcp.empty() ? "" : " on ",
                       config.tcp));
    }
    grpc::Server* raw_server = server.get();
    absl::Status started = listener->Start(
        &DaemonPeers(), [raw_server](int fd) { grpc::AddInsecureChannelFromFd(raw_server, fd); });
    if (!started.ok()) {
      server->Shutdown();
      server->Wait();
      listener.reset();
      RemoveShmDir(arena_dir);
      return started;
    }
    server->GetHealthCheckService()->SetServingStatus(kServiceName, true);
    server->GetHealthCheckService()->SetServingStatus("", true);
    spdlog::info("bigsmalld {} listening on unix:{}{}; cache budget {} MiB, prefetch {}, io {}",
                 kVersion, config.socket,
                 config.tcp.empty() ? "" : absl::StrCat(" and ", config.tcp), effective.cache_budget >> 20,
                 config.prefetch, config.io);
    if (*activated >= 0) spdlog::info("socket-activated: serving on the socket systemd passed");
    // The socket answers from now on: systemd may start what depends on us.
    Notify(absl::StrCat("READY=1\nSTATUS=",
                        SdStatusLine(absl::StrCat("serving on unix:", config.socket,
                                                  "; 0 models open, cache budget ",
                                                  effective.cache_budget >> 20, " MiB"))));
    // The probe outlives the watchdog (declared first, destroyed last).
    std::unique_ptr<WatchdogProbe> probe;
    std::unique_ptr<SdWatchdog> watchdog;
    if (watchdog_interval.has_value()) {
      spdlog::info("systemd watchdog every {} ms", watchdog_interval->count() / 1000);
      probe = std::make_unique<WatchdogProbe>(config.socket);
      WatchdogProbe* p = probe.get();
      watchdog = std::make_unique<SdWatchdog>(
          *watchdog_interval,
          [p](std::chrono::milliseconds deadline) { return p->Probe(deadline); },
          [p] { p->Cancel(); });
    }

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
    // systemd disarms the watchdog on STOPPING=1; TimeoutStopSec bounds
    // the drain from here. The watchdog stops first (a probe in progress is
    // cancelled): no WATCHDOG=1 or "serving" STATUS= after STOPPING=1, and
    // no probe counted as a call in flight by the drain.
    watchdog.reset();
    probe.reset();  // and its channel to our socket
    Notify(absl::StrCat("STOPPING=1\nSTATUS=",
                        SdStatusLine(absl::StrCat("draining ", service->active_sessions.load(),
                                                  " sessions (up to ", config.drain_seconds,
                                                  " s)"))));
    server->GetHealthCheckService()->SetServingStatus(kServiceName, false);
    server->GetHealthCheckService()->SetServingStatus("", false);
    // No new connections (connects are refused); connections already open
    // drain. The path stays until the end: streaming clients stat it.
    listener->Stop();
    // Before the shutdown ends any lease: from then on no arena range is
    // decommitted (zeroed) or reused, so a client that still holds a layer
    // when its session is cancelled, or after the daemon exited, reads the
    // bytes it was handed (ArenaPool::Retire).
    auto retire_arenas = [&] {
      host_arenas->Retire();
      for (const auto& gpu_device : service->gpus()) {
        if (gpu_device->arenas != nullptr) gpu_device->arenas->Retire();
      }
    };
    DrainAndShutdown(server.get(), *service, config.drain_seconds, retire_arenas);
    server->Wait();
    spdlog::info("server stopped; {} sessions left", service->active_sessions.load());
    Notify(absl::StrCat("STATUS=", SdStatusLine(absl::StrCat(
                                       "stopped; ", service->active_sessions.load(),
                                       " sessions left"))));
    server.reset();
    service.reset();
  }
  // Only if it is still ours: a new daemon may have taken the path meanwhile.
  listener->UnlinkIfOurs();
  listener.reset();
  DaemonPeers().Clear();
  RemoveShmDir(arena_dir);
  spdlog::info("bigsmalld stopped");
  return result;
}

}  // namespace bigsmall::daemon
