// systemd integration: the notify protocol (sd_notify: READY=1, STATUS=,
// STOPPING=1, WATCHDOG=1) and socket activation (sd_listen_fds), both
// through libsystemd. Without NOTIFY_SOCKET (not started by systemd with
// Type=notify) every notification is a no-op; without LISTEN_FDS the daemon
// binds its own socket.
//
// The watchdog: when systemd sets WATCHDOG_USEC (WatchdogSec=), a thread
// runs a probe every WATCHDOG_USEC/3 and sends WATCHDOG=1 only when the
// probe succeeds. The daemon's probe is a real GetStats call over its own
// Unix socket (accept loop, gRPC, the service and its locks), so a daemon
// whose serving machinery is stuck stops pinging and systemd restarts it,
// instead of a timer thread that would keep a deadlocked daemon "alive".
#ifndef BIGSMALL_DAEMON_SD_NOTIFY_H_
#define BIGSMALL_DAEMON_SD_NOTIFY_H_

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace bigsmall::daemon {

// Sends `state` (newline-separated VAR=value assignments) to systemd.
// OK and a no-op when NOTIFY_SOCKET is unset; an error only when it is set
// and the message could not be sent.
absl::Status SdNotify(std::string_view state);

// The watchdog interval systemd asks for (WATCHDOG_USEC, for this pid), or
// nullopt when the watchdog is off. An error for a malformed WATCHDOG_USEC.
absl::StatusOr<std::optional<std::chrono::microseconds>> SdWatchdogInterval();

// A status line for STATUS=: one line (newlines and control characters
// become spaces).
std::string SdStatusLine(std::string_view text);

// Pings the systemd watchdog while `probe` succeeds (see above).
class SdWatchdog {
 public:
  // Starts the pinging thread: every interval/3, probe(deadline) and, if it
  // returned OK, WATCHDOG=1. A failing probe is logged (at most one line
  // per interval) and not pinged. `cancel`, if set, is called by Stop() to
  // end a probe in progress at once (any thread).
  SdWatchdog(std::chrono::microseconds interval,
             std::function<absl::Status(std::chrono::milliseconds deadline)> probe,
             std::function<void()> cancel = nullptr);
  ~SdWatchdog();  // Stop()
  SdWatchdog(const SdWatchdog&) = delete;
  SdWatchdog& operator=(const SdWatchdog&) = delete;

  // Stops and joins the thread (no probe runs after it returns; one in
  // progress is cancelled). Idempotent.
  void Stop();
  // Pings sent so far.
  uint64_t pings() const;

 private:
  void Loop();

  const std::chrono::microseconds period_;
  const std::function<absl::Status(std::chrono::milliseconds)> probe_;
  const std::function<void()> cancel_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  uint64_t pings_ = 0;
  std::thread thread_;
};

// Socket activation: the listening socket systemd passed (LISTEN_FDS=1 for
// this pid, fd 3), or -1 when none was passed. The variables are unset
// (nothing inherits them). An error when more than one fd was passed, or
// when fd 3 is not a listening AF_UNIX stream socket bound to `want_path`.
absl::StatusOr<int> TakeActivatedUnixSocket(const std::string& want_path);

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_SD_NOTIFY_H_
