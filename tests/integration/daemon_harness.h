// Test helper: models on disk (a synthetic or real safetensors file and its
// .bs, with the original bytes to compare against) and a real bigsmalld on
// a private socket and shm dir, for the integration tests.
#ifndef BIGSMALL_TESTS_INTEGRATION_DAEMON_HARNESS_H_
#define BIGSMALL_TESTS_INTEGRATION_DAEMON_HARNESS_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "codec/compress.h"
#include "codec/hash.h"
#include "codec/safetensors.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon_process.h"
#include "tests/integration/synthetic_model.h"

#ifndef BIGSMALLD_PATH
#error "BIGSMALLD_PATH must name the bigsmalld binary"
#endif

namespace bigsmall::testing {

using namespace std::chrono_literals;
using client::Client;

inline std::string g_dir;  // per-run temp dir (the test suite makes it)

// A suite's SetUpTestSuite makes g_dir (/tmp/<prefix>XXXXXX) and its
// TearDownTestSuite removes it with everything in it.
inline bool MakeSuiteDir(const std::string& prefix) {
  std::string tmpl = "/tmp/" + prefix + "XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) return false;
  g_dir = tmpl;
  return true;
}
inline void RemoveSuiteDir() {
  std::string cmd = "rm -rf " + g_dir;
  (void)system(cmd.c_str());
}

// A model on disk: the original safetensors (reference bytes) and its .bs.
struct TestModel {
  std::string safetensors;
  std::string bs;
  std::map<std::string, std::vector<uint8_t>> tensors;  // name -> original bytes
};

inline absl::Status LoadOriginal(const std::string& path, TestModel* m) {
  std::ifstream in(path, std::ios::binary);
  std::vector<uint8_t> all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (all.size() < 8) return absl::DataLossError("short safetensors");
  auto len = ParseSafetensorsHeaderLength({all.data(), 8}, all.size());
  if (!len.ok()) return len.status();
  auto header = ParseSafetensorsHeader({all.data(), 8 + *len}, all.size(), path);
  if (!header.ok()) return header.status();
  for (const auto& t : header->tensors) {
    const uint8_t* p = all.data() + header->header_bytes + t.begin;
    m->tensors[t.name] = std::vector<uint8_t>(p, p + t.size());
  }
  return absl::OkStatus();
}

inline TestModel MakeModel(const std::string& name, const testing::SyntheticModelSpec& spec) {
  TestModel m;
  m.safetensors = absl::StrCat(g_dir, "/", name, ".safetensors");
  m.bs = m.safetensors + ".bs";
  EXPECT_TRUE(testing::WriteSafetensors(m.safetensors, testing::MakeSyntheticTensors(spec)));
  CompressOptions options;
  options.threads = 2;
  auto st = CompressPath(m.safetensors, m.bs, options);
  EXPECT_TRUE(st.ok()) << st.status();
  EXPECT_TRUE(LoadOriginal(m.safetensors, &m).ok());
  return m;
}

class Daemon {
 public:
  // `short_drain`: --drain-seconds 1 (tests that stop the daemon while a
  // stream runs); false keeps the daemon's default grace period.
  explicit Daemon(std::vector<std::string> extra = {}, bool short_drain = true) {
    static std::atomic<int> n{0};
    dir_ = absl::StrCat(g_dir, "/d", n.fetch_add(1));
    mkdir(dir_.c_str(), 0700);
    socket_ = dir_ + "/bigsmall.sock";
    // The test models live in g_dir: the daemon serves models only beneath
    // its model directories.
    std::vector<std::string> args = {BIGSMALLD_PATH, "--socket",    socket_,     "--shm-dir",
                                     dir_ + "/shm",  "--log-level", "info",      "--model-dir",
                                     g_dir};
    if (short_drain) {
      args.push_back("--drain-seconds");
      args.push_back("1");
    }
    args.insert(args.end(), extra.begin(), extra.end());
    pid_ = testing::Spawn(args, "", dir_ + "/daemon.log");
    struct stat st;
    for (int i = 0; i < 300 && stat(socket_.c_str(), &st) != 0 && alive(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    auto c = Client::Connect(socket_);
    if (c.ok()) client_ = std::move(*c);
    ready_ = client_ != nullptr && client_->WaitReady(15s).ok();
  }
  ~Daemon() {
    Stop();
    client_.reset();
    if (std::getenv("BIGSMALL_SHOW_LOG")) std::cerr << log();
  }

  // SIGTERM; returns true on a clean exit with everything removed.
  // `took`, when set, receives how long the daemon took to exit.
  bool Stop(std::chrono::milliseconds* took = nullptr) {
    if (pid_ <= 0) return true;
    auto start = std::chrono::steady_clock::now();
    int status = testing::StopProcess(pid_, SIGTERM, 15s);
    if (took != nullptr) {
      *took = std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::steady_clock::now() - start);
    }
    pid_ = -1;
    struct stat st;
    bool socket_gone = stat(socket_.c_str(), &st) != 0;
    return status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0 && socket_gone;
  }
  // Waits for the daemon to exit by itself (after a signal sent with kill);
  // returns its wait status, or -1 if it is still running.
  int WaitExit(std::chrono::milliseconds timeout) {
    int status = testing::WaitFor(pid_, timeout);
    if (status >= 0) pid_ = -1;
    return status;
  }
  bool ready() const { return ready_; }
  bool alive() const { return pid_ > 0 && kill(pid_, 0) == 0; }
  pid_t pid() const { return pid_; }
  const std::string& socket() const { return socket_; }
  const std::string& dir() const { return dir_; }
  Client& client() { return *client_; }
  std::string log() const { return testing::ReadFile(dir_ + "/daemon.log"); }

 private:
  std::string dir_, socket_;
  pid_t pid_ = -1;
  std::unique_ptr<Client> client_;
  bool ready_ = false;
};

// Streams a model; checks every tensor against the originals. Returns the
// number of tensors compared, or an error.
inline absl::StatusOr<size_t> StreamAndCompare(Client& client, const TestModel& model,
                                        client::StreamOptions options = {},
                                        int delay_ms = 0) {
  auto desc = client.OpenModel(model.bs);
  if (!desc.ok()) return desc.status();
  options.include_non_layer = true;
  auto stream = client.Stream(desc->model_id(), options);
  if (!stream.ok()) return stream.status();
  size_t compared = 0;
  int32_t expect = options.from_layer;
  bool first = true;
  while (true) {
    auto layer = (*stream)->Next();
    if (!layer.ok()) return layer.status();
    if (*layer == nullptr) break;
    if (first && (*layer)->index() == -1) {
      first = false;
    } else {
      first = false;
      if ((*layer)->index() != expect) {
        return absl::InternalError(absl::StrCat("got layer ", (*layer)->index(), " expected ", expect));
      }
      ++expect;
    }
    for (const auto& t : (*layer)->tensors()) {
      auto it = model.tensors.find(t.name);
      if (it == model.tensors.end()) return absl::InternalError("unknown tensor " + t.name);
      if (it->second.size() != t.size || memcmp(it->second.data(), t.data, t.size) != 0) {
        return absl::DataLossError("bytes differ in " + t.name);
      }
      if (HashBytes128({t.data, t.size}) != t.hash) return absl::DataLossError("hash " + t.name);
      ++compared;
    }
    if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
  }
  return compared;
}

// The server ends a session (OnDone) just after its client saw the final
// status: waits (up to 2 s) until no session and no lease remains.
inline bool WaitIdle(Client& client) {
  for (int i = 0; i < 200; ++i) {
    auto stats = client.Stats();
    if (stats.ok() && stats->active_sessions() == 0 && stats->active_leases() == 0) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

// A TCP port on 127.0.0.1 that nothing listens on right now.
// A free TCP port on 127.0.0.1 (for --metrics).
inline int FreeTcpPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

// GET http://127.0.0.1:port/path; the response body, or an error.
inline absl::StatusOr<std::string> HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("connect 127.0.0.1:", port, " failed"));
  }
  std::string request =
      absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  if (write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::UnavailableError("short write");
  }
  std::string response;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) response.append(buf, static_cast<size_t>(n));
  close(fd);
  size_t body = response.find("\r\n\r\n");
  if (response.rfind("HTTP/1.", 0) != 0 || body == std::string::npos) {
    return absl::DataLossError("not an HTTP response: " + response.substr(0, 200));
  }
  if (response.find(" 200 ") == std::string::npos ||
      response.find(" 200 ") > response.find("\r\n")) {
    return absl::UnavailableError("HTTP status: " + response.substr(0, response.find("\r\n")));
  }
  return response.substr(body + 4);
}

}  // namespace bigsmall::testing

#endif  // BIGSMALL_TESTS_INTEGRATION_DAEMON_HARNESS_H_
