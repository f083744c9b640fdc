#include "hub/fake_hub_process.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

#ifndef BIGSMALL_SOURCE_DIR
#error "BIGSMALL_SOURCE_DIR must be defined (the repo root)"
#endif

namespace bigsmall::hub::testing {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

FakeHub::FakeHub(std::string data_dir, std::vector<std::string> tokens,
                 std::vector<std::string> extra_args)
    : data_dir_(std::move(data_dir)) {
  char tmpl[] = "/tmp/bigsmall-fakehub-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return;
  dir_ = tmpl;
  const std::string port_file = dir_ + "/port";
  const std::string log_file = dir_ + "/log";
  std::vector<std::string> args = {"/usr/bin/env", "python3",
                                   std::string(BIGSMALL_SOURCE_DIR) + "/tests/hub/fake_hub.py",
                                   "--data", data_dir_, "--port", "0", "--port-file", port_file};
  for (const auto& t : tokens) {
    args.push_back("--token");
    args.push_back(t);
  }
  for (const auto& a : extra_args) args.push_back(a);
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (!freopen(log_file.c_str(), "w", stderr)) _exit(126);
    if (!freopen("/dev/null", "w", stdout)) _exit(126);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  if (pid < 0) return;
  pid_ = pid;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return;
    }
    std::string text = ReadAll(port_file);
    int port = 0;
    if (!text.empty() && text.back() == '\n' && absl::SimpleAtoi(text, &port) && port > 0) {
      port_ = port;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

FakeHub::~FakeHub() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    int status = 0;
    for (int i = 0; i < 100 && waitpid(pid_, &status, WNOHANG) != pid_; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      if (i == 50) kill(pid_, SIGKILL);
    }
  }
  if (!dir_.empty()) {
    std::string cmd = "rm -rf '" + dir_ + "'";
    (void)std::system(cmd.c_str());
  }
}

const std::string& FakeHub::log() const {
  if (!dir_.empty()) log_ = ReadAll(dir_ + "/log");
  return log_;
}

std::string FakeHub::endpoint() const { return absl::StrCat("http://127.0.0.1:", port_); }

// A minimal HTTP/1.0 client for the control endpoints (plain sockets, so
// the tests of hub/http.h do not depend on the code under test).
absl::StatusOr<std::string> FakeHub::Control(const std::string& method, const std::string& path,
                                             const std::string& json_body) {
  if (port_ <= 0) return absl::FailedPreconditionError("fake hub is not running");
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port_));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return absl::UnavailableError("connect to the fake hub");
  }
  std::string req = absl::StrCat(method, " ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n",
                                 "Content-Type: application/json\r\nContent-Length: ",
                                 json_body.size(), "\r\n\r\n", json_body);
  size_t sent = 0;
  while (sent < req.size()) {
    ssize_t n = ::send(fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      ::close(fd);
      return absl::UnavailableError("send to the fake hub");
    }
    sent += static_cast<size_t>(n);
  }
  std::string answer;
  char buf[65536];
  while (true) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    answer.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  size_t sp = answer.find(' ');
  size_t body = answer.find("\r\n\r\n");
  if (sp == std::string::npos || body == std::string::npos) {
    return absl::InternalError("bad answer from the fake hub");
  }
  int status = std::atoi(answer.c_str() + sp + 1);
  std::string payload = answer.substr(body + 4);
  if (status < 200 || status >= 300) {
    return absl::InternalError(absl::StrCat("fake hub ", method, " ", path, ": ", status, " ",
                                            payload));
  }
  return payload;
}

absl::Status FakeHub::AddFaults(const std::string& rules_json) {
  return Control("POST", "/_fake/faults", rules_json).status();
}
absl::Status FakeHub::ClearFaults() { return Control("DELETE", "/_fake/faults").status(); }
absl::Status FakeHub::Throttle(uint64_t bytes_per_second) {
  return Control("POST", "/_fake/throttle",
                 absl::StrCat("{\"bytes_per_second\": ", bytes_per_second, "}"))
      .status();
}
absl::StatusOr<std::string> FakeHub::Stats() { return Control("GET", "/_fake/stats"); }
absl::Status FakeHub::ResetStats() { return Control("DELETE", "/_fake/stats").status(); }

}  // namespace bigsmall::hub::testing
