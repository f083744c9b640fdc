#include "daemon/sd_notify.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace bigsmall::daemon {
namespace {

using namespace std::chrono_literals;

// A NOTIFY_SOCKET listener: a bound AF_UNIX datagram socket in a temp dir,
// exported as NOTIFY_SOCKET for the test's lifetime.
class NotifySocket {
 public:
  NotifySocket() {
    char tmpl[] = "/tmp/sd_notify_testXXXXXX";
    dir_ = mkdtemp(tmpl);
    path_ = dir_ + "/notify";
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
    ok_ = fd_ >= 0 && bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    setenv("NOTIFY_SOCKET", path_.c_str(), 1);
  }
  ~NotifySocket() {
    unsetenv("NOTIFY_SOCKET");
    if (fd_ >= 0) close(fd_);
    unlink(path_.c_str());
    rmdir(dir_.c_str());
  }
  bool ok() const { return ok_; }
  // The next datagram, or "" after `timeout`.
  std::string Next(std::chrono::milliseconds timeout) {
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return "";
    char buf[4096];
    ssize_t n = recv(fd_, buf, sizeof(buf), 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
  }

 private:
  std::string dir_, path_;
  int fd_ = -1;
  bool ok_ = false;
};

TEST(SdNotifyTest, WithoutNotifySocketIsANoOp) {
  unsetenv("NOTIFY_SOCKET");
  EXPECT_TRUE(SdNotify("READY=1").ok());
}

TEST(SdNotifyTest, SendsTheStateToNotifySocket) {
  NotifySocket listener;
  ASSERT_TRUE(listener.ok());
  ASSERT_TRUE(SdNotify("READY=1\nSTATUS=serving").ok());
  EXPECT_EQ(listener.Next(5s), "READY=1\nSTATUS=serving");
}

TEST(SdNotifyTest, AnUnreachableNotifySocketIsAnError) {
  setenv("NOTIFY_SOCKET", "/nonexistent-dir/notify", 1);
  absl::Status st = SdNotify("READY=1");
  unsetenv("NOTIFY_SOCKET");
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("/nonexistent-dir/notify"), std::string::npos) << st;
}

TEST(SdNotifyTest, StatusLineIsOneLine) {
  EXPECT_EQ(SdStatusLine("a\nb\tc\x7f"), "a b c ");
  EXPECT_EQ(SdStatusLine("serving on unix:/run/x"), "serving on unix:/run/x");
}

TEST(SdNotifyTest, WatchdogIntervalFollowsTheEnvironment) {
  unsetenv("WATCHDOG_USEC");
  unsetenv("WATCHDOG_PID");
  auto off = SdWatchdogInterval();
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_FALSE(off->has_value());

  setenv("WATCHDOG_USEC", "2000000", 1);
  auto on = SdWatchdogInterval();
  ASSERT_TRUE(on.ok()) << on.status();
  ASSERT_TRUE(on->has_value());
  EXPECT_EQ(on->value(), 2s);

  // Meant for another process (WATCHDOG_PID): off for us.
  setenv("WATCHDOG_PID", absl::StrCat(getpid() + 1).c_str(), 1);
  auto other = SdWatchdogInterval();
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_FALSE(other->has_value());

  unsetenv("WATCHDOG_PID");
  setenv("WATCHDOG_USEC", "soon", 1);
  EXPECT_FALSE(SdWatchdogInterval().ok());
  unsetenv("WATCHDOG_USEC");
}

// The watchdog pings only while its probe succeeds: a stuck daemon (probe
// failing) stops pinging, so systemd restarts it.
TEST(SdWatchdogTest, PingsOnlyWhileTheProbeSucceeds) {
  NotifySocket listener;
  ASSERT_TRUE(listener.ok());
  std::atomic<bool> healthy{false};
  std::atomic<int> probes{0};
  SdWatchdog watchdog(30ms, [&](std::chrono::milliseconds deadline) {
    EXPECT_GT(deadline.count(), 0);
    probes.fetch_add(1);
    return healthy.load() ? absl::OkStatus() : absl::UnavailableError("stuck");
  });
  // Unhealthy: probes run, nothing is sent.
  for (int i = 0; i < 500 && probes.load() < 5; ++i) std::this_thread::sleep_for(5ms);
  ASSERT_GE(probes.load(), 5);
  EXPECT_EQ(listener.Next(50ms), "");
  EXPECT_EQ(watchdog.pings(), 0u);
  // Healthy: WATCHDOG=1 arrives.
  healthy = true;
  EXPECT_EQ(listener.Next(5s), "WATCHDOG=1");
  EXPECT_EQ(listener.Next(5s), "WATCHDOG=1");
  watchdog.Stop();
  const int after_stop = probes.load();
  while (!listener.Next(50ms).empty()) {
  }
  EXPECT_EQ(listener.Next(100ms), "");
  EXPECT_EQ(probes.load(), after_stop);
  EXPECT_GE(watchdog.pings(), 2u);
}

// Stop() cancels a probe in progress instead of waiting for its deadline
// (the drain starts at once after a SIGTERM).
TEST(SdWatchdogTest, StopCancelsAProbeInProgress) {
  std::mutex mu;
  std::condition_variable cv;
  bool cancelled = false, probing = false;
  SdWatchdog watchdog(
      30s,
      [&](std::chrono::milliseconds) {
        std::unique_lock<std::mutex> lock(mu);
        probing = true;
        cv.notify_all();
        // Bounded: a probe that is never cancelled fails the test below.
        cv.wait_for(lock, 20s, [&] { return cancelled; });
        return cancelled ? absl::CancelledError("cancelled") : absl::OkStatus();
      },
      [&] {
        std::lock_guard<std::mutex> lock(mu);
        cancelled = true;
        cv.notify_all();
      });
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, 10s, [&] { return probing; }));
  }
  auto start = std::chrono::steady_clock::now();
  watchdog.Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_EQ(watchdog.pings(), 0u);
}

TEST(SdActivationTest, WithoutListenFdsNothingIsTaken) {
  unsetenv("LISTEN_FDS");
  unsetenv("LISTEN_PID");
  auto fd = TakeActivatedUnixSocket("/run/bigsmall/bigsmall.sock");
  ASSERT_TRUE(fd.ok()) << fd.status();
  EXPECT_EQ(*fd, -1);
}

TEST(SdActivationTest, FdsMeantForAnotherProcessAreIgnored) {
  setenv("LISTEN_FDS", "1", 1);
  setenv("LISTEN_PID", absl::StrCat(getpid() + 1).c_str(), 1);
  auto fd = TakeActivatedUnixSocket("/run/bigsmall/bigsmall.sock");
  unsetenv("LISTEN_FDS");
  unsetenv("LISTEN_PID");
  ASSERT_TRUE(fd.ok()) << fd.status();
  EXPECT_EQ(*fd, -1);
}

}  // namespace
}  // namespace bigsmall::daemon
