#include "daemon/sd_notify.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "codec/status_util.h"
#include "spdlog/spdlog.h"

namespace bigsmall::daemon {

absl::Status SdNotify(std::string_view state) {
  const char* socket = std::getenv("NOTIFY_SOCKET");
  if (socket == nullptr || *socket == '\0') return absl::OkStatus();
  const std::string message(state);
  int rc = sd_notify(/*unset_environment=*/0, message.c_str());
  if (rc < 0) {
    return ErrnoToStatus(-rc, absl::StrCat("sd_notify to ", EscapeForLog(socket)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<std::chrono::microseconds>> SdWatchdogInterval() {
  uint64_t usec = 0;
  int rc = sd_watchdog_enabled(/*unset_environment=*/0, &usec);
  if (rc < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "WATCHDOG_USEC / WATCHDOG_PID are malformed: ", std::strerror(-rc)));
  }
  if (rc == 0 || usec == 0) return std::optional<std::chrono::microseconds>();
  return std::optional<std::chrono::microseconds>(std::chrono::microseconds(usec));
}

std::string SdStatusLine(std::string_view text) {
  std::string line(text);
  for (char& c : line) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  return line;
}

SdWatchdog::SdWatchdog(std::chrono::microseconds interval,
                       std::function<absl::Status(std::chrono::milliseconds)> probe,
                       std::function<void()> cancel)
    : period_(std::max(interval / 3, std::chrono::microseconds(1000))),
      probe_(std::move(probe)),
      cancel_(std::move(cancel)) {
  thread_ = std::thread([this] { Loop(); });
}

SdWatchdog::~SdWatchdog() { Stop(); }

void SdWatchdog::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (cancel_ != nullptr) cancel_();
  if (thread_.joinable()) thread_.join();
}

uint64_t SdWatchdog::pings() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pings_;
}

void SdWatchdog::Loop() {
  // The probe may take up to one period; a ping every period then still
  // reaches systemd well within its interval (3 periods).
  const auto deadline =
      std::max(std::chrono::duration_cast<std::chrono::milliseconds>(period_),
               std::chrono::milliseconds(1));
  auto last_failure_log = std::chrono::steady_clock::time_point{};
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (stop_) return;
    }
    absl::Status probed = probe_(deadline);
    if (probed.ok()) {
      absl::Status sent = SdNotify("WATCHDOG=1");
      std::lock_guard<std::mutex> lock(mu_);
      if (sent.ok()) ++pings_;
    } else {
      auto now = std::chrono::steady_clock::now();
      if (now - last_failure_log >= period_ * 3) {
        spdlog::warn("watchdog: the health probe failed ({}); not pinging systemd",
                     probed.ToString());
        last_failure_log = now;
      }
    }
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, period_, [this] { return stop_; });
    if (stop_) return;
  }
}

absl::StatusOr<int> TakeActivatedUnixSocket(const std::string& want_path) {
  int n = sd_listen_fds(/*unset_environment=*/1);
  if (n < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("LISTEN_FDS / LISTEN_PID are malformed: ", std::strerror(-n)));
  }
  if (n == 0) return -1;
  if (n > 1) {
    for (int fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + n; ++fd) ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(
        "systemd passed ", n, " sockets (LISTEN_FDS); bigsmalld takes exactly one: a single "
        "ListenStream= of the Unix socket"));
  }
  const int fd = SD_LISTEN_FDS_START;
  int is_unix = sd_is_socket_unix(fd, SOCK_STREAM, /*listening=*/1, nullptr, 0);
  if (is_unix <= 0) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(
        "the socket systemd passed (fd ", fd,
        ") is not a listening AF_UNIX stream socket; use ListenStream=/path in the .socket unit",
        is_unix < 0 ? absl::StrCat(" (", std::strerror(-is_unix), ")") : ""));
  }
  sockaddr_un addr{};
  socklen_t len = sizeof(addr);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    absl::Status st = ErrnoToStatus(errno, "getsockname on the socket systemd passed");
    ::close(fd);
    return st;
  }
  const size_t path_len =
      len > offsetof(sockaddr_un, sun_path) ? len - offsetof(sockaddr_un, sun_path) : 0;
  std::string bound(addr.sun_path, strnlen(addr.sun_path, path_len));
  if (bound != want_path) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(
        "the socket systemd passed is bound to '", EscapeForLog(bound), "', but the daemon's "
        "socket is '", EscapeForLog(want_path), "'; make ListenStream= and --socket agree"));
  }
  // The accept loop polls it; accepted fds must not block.
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0 ||
      ::fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
    absl::Status st = ErrnoToStatus(errno, "fcntl on the socket systemd passed");
    ::close(fd);
    return st;
  }
  return fd;
}

}  // namespace bigsmall::daemon
