// The real bigsmalld under systemd's protocols, without systemd: the test
// plays the service manager. The notify protocol (a datagram socket named by
// NOTIFY_SOCKET: READY=1 only once the gRPC socket answers, STATUS= lines,
// STOPPING=1 when SIGTERM starts the drain, WATCHDOG=1 while WATCHDOG_USEC
// is set) and socket activation (a listening socket passed as fd 3 with
// LISTEN_FDS=1 and LISTEN_PID=<the daemon's pid>).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "bigsmall/v1/bigsmall.grpc.pb.h"
#include "gtest/gtest.h"
#include "grpcpp/grpcpp.h"
#include "tests/integration/daemon_process.h"

#ifndef BIGSMALLD_PATH
#error "BIGSMALLD_PATH must name the bigsmalld binary"
#endif

namespace bigsmall {
namespace {

using namespace std::chrono_literals;

// One GetStats, without waiting for the daemon (wait_for_ready off): fails
// at once when nothing accepts on `socket`.
grpc::Status StatsNow(const std::string& socket, v1::StatsResponse* response) {
  auto stub = v1::BigSmall::NewStub(
      grpc::CreateChannel("unix:" + socket, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_wait_for_ready(false);
  ctx.set_deadline(std::chrono::system_clock::now() + 5s);
  v1::GetStatsRequest request;
  return stub->GetStats(&ctx, request, response);
}

sockaddr_un UnixAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  return addr;
}

class SystemdIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/bigsmall-systemd-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    socket_ = dir_ + "/run/bigsmall.sock";
    ASSERT_EQ(mkdir((dir_ + "/run").c_str(), 0750), 0);
    notify_path_ = dir_ + "/notify";
    notify_fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(notify_fd_, 0);
    sockaddr_un addr = UnixAddress(notify_path_);
    ASSERT_EQ(bind(notify_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  }
  void TearDown() override {
    if (pid_ > 0) testing::StopProcess(pid_, SIGKILL, 5s);
    if (notify_fd_ >= 0) close(notify_fd_);
    if (HasFailure() || std::getenv("BIGSMALL_SHOW_LOG")) std::cerr << Log();
    std::string cmd = "rm -rf '" + dir_ + "'";
    (void)std::system(cmd.c_str());
  }

  // Starts bigsmalld with `env` added to the test's environment. With
  // `listen_fd` >= 0 it becomes the child's fd 3 and LISTEN_FDS=1,
  // LISTEN_PID=<child pid> are set (as systemd does).
  void Start(std::vector<std::string> env, int listen_fd = -1,
             std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {BIGSMALLD_PATH,    "--socket",   socket_,
                                     "--shm-dir",       dir_ + "/shm", "--model-dir",
                                     dir_,              "--no-hub",   "--drain-seconds",
                                     "1",               "--log-level", "info"};
    args.insert(args.end(), extra.begin(), extra.end());
    for (char** e = environ; *e != nullptr; ++e) {
      if (!absl::StartsWith(*e, "NOTIFY_SOCKET=") && !absl::StartsWith(*e, "WATCHDOG_") &&
          !absl::StartsWith(*e, "LISTEN_")) {
        env.push_back(*e);
      }
    }
    if (listen_fd >= 0) env.push_back("LISTEN_FDS=1");
    // LISTEN_PID must be the child's own pid: written into this buffer in
    // the child, after fork, without allocating.
    char listen_pid[32] = "LISTEN_PID=";
    std::vector<char*> envp;
    for (auto& e : env) envp.push_back(e.data());
    if (listen_fd >= 0) envp.push_back(listen_pid);
    envp.push_back(nullptr);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string log = Logfile();
    int log_fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ASSERT_GE(log_fd, 0);
    pid_ = fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      dup2(log_fd, STDERR_FILENO);
      dup2(log_fd, STDOUT_FILENO);
      if (listen_fd >= 0) {
        if (listen_fd == 3) {
          fcntl(3, F_SETFD, 0);  // keep it across exec
        } else if (dup2(listen_fd, 3) != 3) {
          _exit(126);
        }
        char digits[16];
        int n = 0;
        for (pid_t p = getpid(); p > 0 && n < 15; p /= 10) digits[n++] = char('0' + p % 10);
        char* out = listen_pid + std::strlen(listen_pid);
        while (n > 0) *out++ = digits[--n];
        *out = '\0';
      }
      execve(argv[0], argv.data(), envp.data());
      _exit(127);
    }
    close(log_fd);
  }

  // The next notification, or "" if none came within `timeout`.
  std::string Next(std::chrono::milliseconds timeout) {
    pollfd p{notify_fd_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return "";
    char buf[4096];
    ssize_t n = recv(notify_fd_, buf, sizeof(buf), 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
  }
  // Waits (bounded) for a notification containing `what`; every message
  // seen on the way is appended to `seen`.
  bool WaitFor(const std::string& what, std::chrono::milliseconds timeout,
               std::vector<std::string>* seen = nullptr) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      std::string m = Next(std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now()));
      if (m.empty()) continue;
      if (seen != nullptr) seen->push_back(m);
      if (absl::StrContains(m, what)) return true;
    }
    return false;
  }
  // SIGTERM; the wait status (-1: did not exit in time).
  int Terminate() {
    kill(pid_, SIGTERM);
    int status = testing::WaitFor(pid_, 15s);
    if (status >= 0) pid_ = -1;
    return status;
  }
  std::string Logfile() const { return dir_ + "/daemon.log"; }
  std::string Log() const { return testing::ReadFile(Logfile()); }
  std::string NotifyEnv() const { return "NOTIFY_SOCKET=" + notify_path_; }

  std::string dir_, socket_, notify_path_;
  int notify_fd_ = -1;
  pid_t pid_ = -1;
};

// READY=1 is sent only once the socket serves: when it arrives, a GetStats
// that does not wait for the daemon succeeds at once.
TEST_F(SystemdIntegrationTest, ReadyOnlyOnceTheSocketAnswers) {
  Start({NotifyEnv()});
  std::vector<std::string> seen;
  ASSERT_TRUE(WaitFor("READY=1", 20s, &seen)) << "no READY=1; daemon log:\n" << Log();
  v1::StatsResponse stats;
  grpc::Status st = StatsNow(socket_, &stats);
  EXPECT_TRUE(st.ok()) << "READY=1 came before the socket answered: " << st.error_message();
  EXPECT_EQ(seen.size(), 1u) << "a notification before READY=1: " << seen.front();
  // READY=1 comes with a STATUS= line naming the socket.
  EXPECT_TRUE(absl::StrContains(seen.back(), "STATUS=serving on unix:" + socket_)) << seen.back();
  EXPECT_EQ(Terminate(), 0);
}

// SIGTERM: STOPPING=1 with a draining STATUS=, then a final STATUS= and a
// clean exit.
TEST_F(SystemdIntegrationTest, StoppingWhenTheDrainStarts) {
  Start({NotifyEnv()});
  ASSERT_TRUE(WaitFor("READY=1", 20s)) << Log();
  ASSERT_EQ(kill(pid_, SIGTERM), 0);
  std::vector<std::string> seen;
  ASSERT_TRUE(WaitFor("STOPPING=1", 15s, &seen)) << Log();
  EXPECT_TRUE(absl::StrContains(seen.back(), "STATUS=draining 0 sessions")) << seen.back();
  EXPECT_TRUE(WaitFor("STATUS=stopped", 15s)) << Log();
  int status = testing::WaitFor(pid_, 15s);
  pid_ = -1;
  ASSERT_GE(status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

// WATCHDOG_USEC set: WATCHDOG=1 keeps coming while the daemon serves (each
// after a GetStats over its own socket answered).
TEST_F(SystemdIntegrationTest, WatchdogPingsWhileServing) {
  Start({NotifyEnv(), "WATCHDOG_USEC=300000"});
  ASSERT_TRUE(WaitFor("READY=1", 20s)) << Log();
  int pings = 0;
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (pings < 3 && std::chrono::steady_clock::now() < deadline) {
    if (Next(1s) == "WATCHDOG=1") ++pings;
  }
  EXPECT_EQ(pings, 3) << Log();
  EXPECT_EQ(Terminate(), 0);
}

// Without WATCHDOG_USEC there is no ping at all.
TEST_F(SystemdIntegrationTest, NoWatchdogPingsUnlessAsked) {
  Start({NotifyEnv()});
  ASSERT_TRUE(WaitFor("READY=1", 20s)) << Log();
  for (std::string m = Next(700ms); !m.empty(); m = Next(700ms)) {
    EXPECT_FALSE(absl::StrContains(m, "WATCHDOG=1")) << m;
  }
  EXPECT_EQ(Terminate(), 0);
}

// A listening AF_UNIX stream socket made by the "service manager" (the
// test), passed as fd 3: the daemon serves on it, READY=1 follows, and at
// exit the path is left in place (it is systemd's, not the daemon's).
TEST_F(SystemdIntegrationTest, SocketActivationServesOnThePassedSocket) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr = UnixAddress(socket_);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(chmod(socket_.c_str(), 0660), 0);
  ASSERT_EQ(listen(fd, 16), 0);
  struct stat before;
  ASSERT_EQ(stat(socket_.c_str(), &before), 0);
  Start({NotifyEnv()}, fd);
  close(fd);
  ASSERT_TRUE(WaitFor("READY=1", 20s)) << Log();
  v1::StatsResponse stats;
  grpc::Status st = StatsNow(socket_, &stats);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_TRUE(absl::StrContains(Log(), "socket-activated")) << Log();
  EXPECT_EQ(Terminate(), 0);
  struct stat after;
  ASSERT_EQ(lstat(socket_.c_str(), &after), 0) << "the daemon removed systemd's socket";
  EXPECT_TRUE(S_ISSOCK(after.st_mode));
  EXPECT_EQ(after.st_ino, before.st_ino) << "the daemon replaced systemd's socket";
  EXPECT_EQ(after.st_mode & 0777, 0660u) << "the daemon changed the .socket unit's mode";
}

// A passed fd that is not a listening Unix stream socket: a clear startup
// error (exit 1), nothing served.
TEST_F(SystemdIntegrationTest, SocketActivationRefusesADatagramSocket) {
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  Start({}, fd);
  close(fd);
  int status = testing::WaitFor(pid_, 15s);
  ASSERT_GE(status, 0) << "the daemon kept running";
  pid_ = -1;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status;
  EXPECT_TRUE(absl::StrContains(Log(), "not a listening AF_UNIX stream socket")) << Log();
}

// A passed socket bound elsewhere than --socket: refused, naming both.
TEST_F(SystemdIntegrationTest, SocketActivationRefusesAnotherPath) {
  const std::string other = dir_ + "/run/other.sock";
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr = UnixAddress(other);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 16), 0);
  Start({}, fd);
  close(fd);
  int status = testing::WaitFor(pid_, 15s);
  ASSERT_GE(status, 0) << "the daemon kept running";
  pid_ = -1;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status;
  EXPECT_TRUE(absl::StrContains(Log(), other)) << Log();
  EXPECT_TRUE(absl::StrContains(Log(), "make ListenStream= and --socket agree")) << Log();
}

}  // namespace
}  // namespace bigsmall
