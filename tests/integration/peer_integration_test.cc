// Who is asking, the socket's lifecycle and the connection limits, against a
// real bigsmalld: admin calls by uid (a client process run as nobody), TCP
// peers, connections over the limit, a restart that replaces the socket
// while the old daemon drains, and the socket directory rules.
#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon_process.h"

namespace bigsmall {
namespace {

using namespace std::chrono_literals;
using client::Client;

constexpr uid_t kNobody = 65534;
constexpr gid_t kNogroup = 65534;

class PeerIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/bigsmall-peer-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    // Another uid (nobody) must be able to reach sockets below it.
    ASSERT_EQ(chmod(dir_.c_str(), 0755), 0);
  }
  void TearDown() override {
    for (pid_t pid : pids_) testing::StopProcess(pid, SIGKILL, 5s);
    if (std::getenv("BIGSMALL_SHOW_LOG")) {
      for (const auto& log : logs_) std::cerr << "== " << log << "\n" << testing::ReadFile(log);
    }
    std::string cmd = "rm -rf '" + dir_ + "'";
    (void)std::system(cmd.c_str());
  }

  // Starts bigsmalld on `socket`; returns its pid (its log: LogOf(pid)).
  pid_t StartDaemon(const std::string& socket, std::vector<std::string> extra = {}) {
    static std::atomic<int> n{0};
    int i = n.fetch_add(1);
    std::vector<std::string> args = {BIGSMALLD_PATH, "--socket", socket, "--shm-dir",
                                     absl::StrCat(dir_, "/shm", i), "--drain-seconds", "1"};
    args.insert(args.end(), extra.begin(), extra.end());
    if (std::find(args.begin(), args.end(), "--log-level") == args.end()) {
      args.insert(args.end(), {"--log-level", "info"});
    }
    std::string log = absl::StrCat(dir_, "/daemon", i, ".log");
    pid_t pid = testing::Spawn(args, "", log);
    pids_.push_back(pid);
    logs_.push_back(log);
    log_of_[pid] = log;
    return pid;
  }
  std::string LogOf(pid_t pid) { return testing::ReadFile(log_of_[pid]); }
  // Waits for the daemon to exit by itself; its wait status, or -1.
  int WaitExit(pid_t pid, std::chrono::milliseconds timeout) {
    int status = testing::WaitFor(pid, timeout);
    if (status >= 0) pids_.erase(std::find(pids_.begin(), pids_.end(), pid));
    return status;
  }

  std::string dir_;
  std::vector<pid_t> pids_;
  std::vector<std::string> logs_;
  std::map<pid_t, std::string> log_of_;
};

int ConnectRaw(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// 1: the server spoke (its HTTP/2 SETTINGS: the connection was handed to
// gRPC); 0: it closed the connection; -1: neither within `timeout`.
int ServerVerdict(int fd, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return -1;
  char buf[256];
  ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
  if (n > 0) return 1;
  return 0;
}

// Waits until the daemon serves gRPC on `socket` (a real call), bounded.
bool WaitServing(const std::string& socket, pid_t pid, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (kill(pid, 0) != 0) return false;
    struct stat st;
    if (lstat(socket.c_str(), &st) == 0) {
      auto c = Client::Connect(socket);
      if (c.ok() && (*c)->WaitReady(5s).ok() && (*c)->Stats().ok()) return true;
    }
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

// Runs bigsmall-client as `uid`/`gid` (no supplementary groups); returns its
// exit code (or -1) and its stdout in `out`.
int RunClientAs(uid_t uid, gid_t gid, const std::vector<std::string>& args,
                const std::string& out_path, std::string* out) {
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) _exit(126);
    dup2(fd, 1);
    dup2(fd, 2);
    if (setgroups(0, nullptr) != 0 || setresgid(gid, gid, gid) != 0 ||
        setresuid(uid, uid, uid) != 0) {
      _exit(125);
    }
    std::vector<std::string> full = {BIGSMALL_CLIENT_PATH};
    full.insert(full.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : full) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  int status = testing::WaitFor(pid, 30s);
  if (status == -1) testing::StopProcess(pid, SIGKILL, 2s);
  *out = testing::ReadFile(out_path);
  return status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST_F(PeerIntegrationTest, AdminCallsOnlyForTheDaemonsUserRootOrTheAdminGroup) {
  if (geteuid() != 0) {
    GTEST_SKIP() << "needs root: the test runs a client as another uid (nobody, 65534) with "
                    "setresuid; the same-uid and TCP cases run in other tests";
  }
  // The client binary must be reachable by nobody.
  ASSERT_EQ(access(BIGSMALL_CLIENT_PATH, X_OK), 0) << BIGSMALL_CLIENT_PATH << " is built with this test";
  const std::string run = dir_ + "/run";
  ASSERT_EQ(mkdir(run.c_str(), 0755), 0);  // root's, not writable by others
  const std::string socket = run + "/bigsmall.sock";
  pid_t d = StartDaemon(socket, {"--socket-mode", "0666"});
  ASSERT_TRUE(WaitServing(socket, d, 20s)) << LogOf(d);

  std::string out;
  // nobody can talk to the daemon (stats works) ...
  int rc = RunClientAs(kNobody, kNogroup, {"--socket", socket, "--json", "stats"},
                       dir_ + "/nobody-stats.out", &out);
  EXPECT_EQ(rc, 0) << out;
  // ... but not evict: PERMISSION_DENIED.
  rc = RunClientAs(kNobody, kNogroup, {"--socket", socket, "--json", "evict"},
                   dir_ + "/nobody-evict.out", &out);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("PERMISSION_DENIED"), std::string::npos) << out;
  rc = RunClientAs(kNobody, kNogroup, {"--socket", socket, "--json", "evict", "--unload"},
                   dir_ + "/nobody-unload.out", &out);
  EXPECT_NE(out.find("PERMISSION_DENIED"), std::string::npos) << out;
  // The daemon's own uid (root here) may.
  auto c = Client::Connect(socket);
  ASSERT_TRUE(c.ok()) << c.status();
  auto ev = (*c)->Evict("", /*unload=*/true);
  EXPECT_TRUE(ev.ok()) << ev.status();
  std::string log = LogOf(d);
  EXPECT_NE(log.find("uid 65534"), std::string::npos) << log;
  EXPECT_NE(log.find("Evict refused"), std::string::npos) << log;
  EXPECT_NE(log.find("Evict (unload) by uid 0 "), std::string::npos) << log;

  // With --admin-group nogroup, nobody (primary group nogroup) may.
  kill(d, SIGTERM);
  ASSERT_GE(WaitExit(d, 15s), 0);
  pid_t d2 = StartDaemon(socket, {"--socket-mode", "0666", "--admin-group",
                                  std::to_string(kNogroup)});
  ASSERT_TRUE(WaitServing(socket, d2, 20s)) << LogOf(d2);
  rc = RunClientAs(kNobody, kNogroup, {"--socket", socket, "--json", "evict"},
                   dir_ + "/nobody-evict2.out", &out);
  EXPECT_EQ(rc, 0) << out << LogOf(d2);
  EXPECT_NE(out.find("layers_evicted"), std::string::npos) << out;
}

int FreeTcpPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

TEST_F(PeerIntegrationTest, TcpPeersAreUnidentifiedAndGetNoAdminCalls) {
  const std::string socket = dir_ + "/bigsmall.sock";
  const std::string tcp = absl::StrCat("127.0.0.1:", FreeTcpPort());
  pid_t d = StartDaemon(socket, {"--tcp", tcp});
  ASSERT_TRUE(WaitServing(socket, d, 20s)) << LogOf(d);
  auto over_tcp = Client::Connect(tcp);
  ASSERT_TRUE(over_tcp.ok()) << over_tcp.status();
  ASSERT_TRUE((*over_tcp)->WaitReady(10s).ok()) << LogOf(d);
  EXPECT_TRUE((*over_tcp)->Stats().ok());
  auto denied = (*over_tcp)->Evict("", false);
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied) << denied.status();
  auto local = Client::Connect(socket);
  ASSERT_TRUE(local.ok());
  auto ok = (*local)->Evict("", false);
  EXPECT_TRUE(ok.ok()) << ok.status();
  std::string log = LogOf(d);
  EXPECT_NE(log.find("unidentified peer ipv4:127.0.0.1"), std::string::npos) << log;
}

TEST_F(PeerIntegrationTest, ConnectionsOverThePerUidLimitAreClosedAtAccept) {
  const std::string socket = dir_ + "/bigsmall.sock";
  pid_t d = StartDaemon(socket, {"--max-connections-per-uid", "2"});
  // The first connection doubles as the readiness probe (a probe that came
  // and went would count until the daemon notices it closed).
  int a = -1;
  for (int i = 0; i < 1000 && a < 0 && kill(d, 0) == 0; ++i) {
    a = ConnectRaw(socket);
    if (a < 0) std::this_thread::sleep_for(20ms);
  }
  ASSERT_GE(a, 0) << LogOf(d);
  EXPECT_EQ(ServerVerdict(a, 20s), 1) << LogOf(d);
  int b = ConnectRaw(socket);
  ASSERT_GE(b, 0);
  EXPECT_EQ(ServerVerdict(b, 10s), 1) << LogOf(d);
  int c = ConnectRaw(socket);
  ASSERT_GE(c, 0);
  EXPECT_EQ(ServerVerdict(c, 10s), 0) << "a third connection of one uid was served";
  std::string log = LogOf(d);
  EXPECT_NE(log.find("refusing a connection from uid"), std::string::npos) << log;
  EXPECT_NE(log.find("max_connections_per_uid 2"), std::string::npos) << log;
  // Closing one makes room, once gRPC has closed its end (a retry if the
  // daemon has not seen the close yet; bounded).
  close(a);
  close(c);
  int verdict = 0;
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (verdict != 1 && std::chrono::steady_clock::now() < deadline) {
    int d2 = ConnectRaw(socket);
    ASSERT_GE(d2, 0);
    verdict = ServerVerdict(d2, 5s);
    close(d2);
    if (verdict != 1) std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(verdict, 1) << LogOf(d);
  close(b);
}

TEST_F(PeerIntegrationTest, ADrainingDaemonLeavesTheSocketOfItsSuccessor) {
  const std::string socket = dir_ + "/bigsmall.sock";
  pid_t old_daemon = StartDaemon(socket);
  ASSERT_TRUE(WaitServing(socket, old_daemon, 20s)) << LogOf(old_daemon);
  // A restart: the new daemon takes the path while the old one still runs.
  ASSERT_EQ(unlink(socket.c_str()), 0);
  pid_t new_daemon = StartDaemon(socket);
  ASSERT_TRUE(WaitServing(socket, new_daemon, 20s)) << LogOf(new_daemon);
  struct stat before;
  ASSERT_EQ(lstat(socket.c_str(), &before), 0);
  kill(old_daemon, SIGTERM);
  int status = WaitExit(old_daemon, 15s);
  ASSERT_GE(status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << LogOf(old_daemon);
  struct stat after;
  ASSERT_EQ(lstat(socket.c_str(), &after), 0) << "the old daemon removed its successor's socket";
  EXPECT_EQ(after.st_ino, before.st_ino);
  auto c = Client::Connect(socket);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->WaitReady(5s).ok());
  EXPECT_TRUE((*c)->Stats().ok()) << LogOf(new_daemon);
  EXPECT_NE(LogOf(old_daemon).find("left in place"), std::string::npos) << LogOf(old_daemon);
  // The new daemon removes its own socket when it stops.
  kill(new_daemon, SIGTERM);
  ASSERT_GE(WaitExit(new_daemon, 15s), 0);
  EXPECT_NE(lstat(socket.c_str(), &after), 0);
}

TEST_F(PeerIntegrationTest, SocketDirectoryThatOthersCanWriteOrASymlinkIsRefused) {
  // World-writable without the sticky bit: anyone could swap the socket.
  const std::string open_dir = dir_ + "/open";
  ASSERT_EQ(mkdir(open_dir.c_str(), 0700), 0);
  ASSERT_EQ(chmod(open_dir.c_str(), 0777), 0);
  pid_t d = StartDaemon(open_dir + "/bigsmall.sock");
  int status = WaitExit(d, 15s);
  ASSERT_GE(status, 0) << "the daemon started in a world-writable socket directory";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0);
  EXPECT_NE(LogOf(d).find("sticky"), std::string::npos) << LogOf(d);
  struct stat st;
  EXPECT_NE(lstat((open_dir + "/bigsmall.sock").c_str(), &st), 0);

  // A symlink as the socket directory.
  const std::string real = dir_ + "/real";
  const std::string link = dir_ + "/link";
  ASSERT_EQ(mkdir(real.c_str(), 0700), 0);
  ASSERT_EQ(symlink(real.c_str(), link.c_str()), 0);
  pid_t d2 = StartDaemon(link + "/bigsmall.sock");
  status = WaitExit(d2, 15s);
  ASSERT_GE(status, 0) << "the daemon started in a symlinked socket directory";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0);
  EXPECT_NE(LogOf(d2).find("symlink"), std::string::npos) << LogOf(d2);
  EXPECT_NE(lstat((real + "/bigsmall.sock").c_str(), &st), 0);

  // Sticky and world-writable (like /tmp) is fine.
  const std::string sticky = dir_ + "/sticky";
  ASSERT_EQ(mkdir(sticky.c_str(), 0700), 0);
  ASSERT_EQ(chmod(sticky.c_str(), 01777), 0);
  pid_t d3 = StartDaemon(sticky + "/bigsmall.sock");
  EXPECT_TRUE(WaitServing(sticky + "/bigsmall.sock", d3, 20s)) << LogOf(d3);
}

TEST_F(PeerIntegrationTest, ACreatedSocketDirectoryBelongsToTheSocketGroup) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to give files to group nogroup (65534)";
  const std::string run = dir_ + "/newdir";
  const std::string socket = run + "/bigsmall.sock";
  pid_t d = StartDaemon(socket, {"--socket-group", std::to_string(kNogroup)});
  ASSERT_TRUE(WaitServing(socket, d, 20s)) << LogOf(d);
  struct stat st;
  ASSERT_EQ(lstat(run.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0750u);
  EXPECT_EQ(st.st_gid, kNogroup) << "group members could not reach the socket";
  ASSERT_EQ(lstat(socket.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  EXPECT_EQ(st.st_gid, kNogroup);
}

}  // namespace
}  // namespace bigsmall
