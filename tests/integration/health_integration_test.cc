// `bigsmall-client health` (grpc.health.v1.Health/Check over the socket), the
// probe the container HEALTHCHECK, the Kubernetes probes and start-up scripts
// use, against a real bigsmalld: its exit codes are a contract
// (0 SERVING, 2 NOT_SERVING, 3 unreachable, 4 unknown service, 1 other).
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/daemon_harness.h"

#ifndef BIGSMALL_CLIENT_PATH
#error "BIGSMALL_CLIENT_PATH must name the bigsmall-client binary"
#endif

namespace bigsmall::testing {
namespace {

constexpr int kServing = 0;
constexpr int kNotServing = 2;
constexpr int kUnreachable = 3;
constexpr int kUnknownService = 4;

struct HealthRun {
  int exit_code = -1;  // -1: did not exit in time (killed)
  std::string out, err;
  std::chrono::milliseconds took{0};
};

// Runs `bigsmall-client --socket SOCKET health ARGS...`, bounded by 30 s.
HealthRun Health(const std::string& socket, std::vector<std::string> args) {
  static std::atomic<int> n{0};
  int i = n.fetch_add(1);
  std::string out = absl::StrCat(g_dir, "/health", i, ".out");
  std::string err = absl::StrCat(g_dir, "/health", i, ".err");
  std::vector<std::string> argv = {BIGSMALL_CLIENT_PATH, "--socket", socket, "health"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto start = std::chrono::steady_clock::now();
  pid_t pid = Spawn(argv, out, err);
  int status = StopProcess(pid, 0, 30s);  // signal 0: just wait (killed after 30 s)
  HealthRun r;
  r.took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                 start);
  if (status >= 0 && WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  r.out = ReadFile(out);
  r.err = ReadFile(err);
  return r;
}

// The serving status (1 SERVING, 2 NOT_SERVING) a Check through an open
// `channel` returns, or -1 when the call fails (`code` gets its gRPC code).
int CheckThrough(const std::shared_ptr<grpc::Channel>& channel, grpc::StatusCode* code = nullptr) {
  // A completion queue drained on this thread (the callback API hands over
  // through gRPC's threads, which TSan cannot see).
  grpc::GenericStub generic(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 5s);
  std::string empty_request;  // HealthCheckRequest{service: ""}
  grpc::Slice slice(empty_request);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::CompletionQueue cq;
  grpc::Status status;
  auto call = generic.PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check", request, &cq);
  call->StartCall();
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  bool done = cq.Next(&tag, &ok);  // bounded by the call's deadline
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  if (!done) return -1;
  if (code != nullptr) *code = status.error_code();
  if (!status.ok()) return -1;
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return -1;
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  // HealthCheckResponse{status = 1 (varint)}: 0x08 <status>; empty: UNKNOWN (0).
  if (bytes.empty()) return 0;
  return bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : -1;
}

class HealthIntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(MakeSuiteDir("bigsmall_health"));
    small_ = new TestModel(MakeModel("small", {.layers = 6, .hidden = 64, .vocab = 128, .seed = 1}));
  }
  static void TearDownTestSuite() {
    delete small_;
    RemoveSuiteDir();
  }
  static TestModel* small_;
};
TestModel* HealthIntegrationTest::small_ = nullptr;

TEST_F(HealthIntegrationTest, ServingDaemonIsZero) {
  Daemon d;
  ASSERT_TRUE(d.ready()) << d.log();
  HealthRun r = Health(d.socket(), {});
  EXPECT_EQ(r.exit_code, kServing) << r.err;
  EXPECT_EQ(r.out, "SERVING\n");
  // The service itself, by name; JSON.
  r = Health(d.socket(), {"--service", "bigsmall.v1.BigSmall", "--json"});
  EXPECT_EQ(r.exit_code, kServing) << r.err;
  auto j = nlohmann::json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_EQ(j.value("status", ""), "SERVING");
  EXPECT_EQ(j.value("service", "?"), "bigsmall.v1.BigSmall");
  EXPECT_EQ(j.value("exit_code", -1), kServing);
  // --wait returns at once on a serving daemon.
  r = Health(d.socket(), {"--wait", "--timeout", "10"});
  EXPECT_EQ(r.exit_code, kServing) << r.err;
  EXPECT_LT(r.took.count(), 5000);
}

TEST_F(HealthIntegrationTest, UnknownServiceIsFour) {
  Daemon d;
  ASSERT_TRUE(d.ready()) << d.log();
  HealthRun r = Health(d.socket(), {"--service", "no.such.Service"});
  EXPECT_EQ(r.exit_code, kUnknownService) << r.err;
  EXPECT_NE(r.err.find("SERVICE_UNKNOWN"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

TEST_F(HealthIntegrationTest, NoDaemonIsUnreachable) {
  // No socket at all: at once, without --wait.
  HealthRun r = Health(g_dir + "/nobody-here.sock", {});
  EXPECT_EQ(r.exit_code, kUnreachable) << r.err;
  EXPECT_NE(r.err.find("UNREACHABLE"), std::string::npos) << r.err;
  EXPECT_LT(r.took.count(), 5000);
  // A daemon that was serving and is gone.
  std::string socket;
  {
    Daemon d;
    ASSERT_TRUE(d.ready()) << d.log();
    socket = d.socket();
    ASSERT_EQ(Health(socket, {}).exit_code, kServing);
    ASSERT_TRUE(d.Stop()) << d.log();
  }
  r = Health(socket, {"--json"});
  EXPECT_EQ(r.exit_code, kUnreachable) << r.err;
  auto j = nlohmann::json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_EQ(j.value("status", ""), "UNREACHABLE");
  // --wait gives up after --timeout.
  r = Health(socket, {"--wait", "--timeout", "1"});
  EXPECT_EQ(r.exit_code, kUnreachable) << r.err;
  EXPECT_GE(r.took.count(), 900);
  EXPECT_LT(r.took.count(), 6000);
}

// A peer that accepts the connection and never answers: the deadline is a
// failure (unreachable), reached within --timeout, not a hang.
TEST_F(HealthIntegrationTest, NoAnswerBeforeTheTimeoutIsUnreachable) {
  std::string path = g_dir + "/mute.sock";
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 16), 0);  // never accepted: the HTTP/2 handshake never ends
  HealthRun r = Health(path, {"--timeout", "1"});
  close(fd);
  EXPECT_EQ(r.exit_code, kUnreachable) << r.err;
  EXPECT_GE(r.took.count(), 900);
  EXPECT_LT(r.took.count(), 6000);
}

// --wait for start-up scripts: the check starts before the daemon does and
// returns SERVING once it serves.
TEST_F(HealthIntegrationTest, WaitSeesADaemonThatStartsLater) {
  std::string dir = g_dir + "/later";
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  std::string socket = dir + "/bigsmall.sock";
  std::string out = g_dir + "/later.out";
  pid_t check = Spawn({BIGSMALL_CLIENT_PATH, "--socket", socket, "health", "--wait", "--timeout",
                       "20"},
                      out, g_dir + "/later.err");
  pid_t daemon = Spawn({BIGSMALLD_PATH, "--socket", socket, "--shm-dir", dir + "/shm",
                        "--drain-seconds", "1", "--model-dir", g_dir},
                       "", dir + "/daemon.log");
  int status = StopProcess(check, 0, 30s);
  EXPECT_TRUE(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == kServing)
      << status << " " << ReadFile(g_dir + "/later.err") << ReadFile(dir + "/daemon.log");
  EXPECT_EQ(ReadFile(out), "SERVING\n");
  status = StopProcess(daemon, SIGTERM, 15s);
  EXPECT_TRUE(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << ReadFile(dir + "/daemon.log");
}

// SIGTERM with a stream in flight: the daemon drains for --drain-seconds.
// What it does today (daemon/server.cc): it sets its health to NOT_SERVING,
// but at the same moment stops accepting connections (listener->Stop()) and
// begins grpc::Server::Shutdown, which refuses every new call, on open
// connections too. So no Check ever answers NOT_SERVING during the drain: a
// probe (a new process, a new connection) finds the daemon unreachable, 3.
// Either way the probe fails, which is what a readiness probe needs.
TEST_F(HealthIntegrationTest, DrainingDaemonFailsTheProbe) {
  Daemon d({"--drain-seconds", "5"}, /*short_drain=*/false);
  ASSERT_TRUE(d.ready()) << d.log();
  ASSERT_EQ(CheckThrough(d.client().channel()), 1);
  auto desc = d.client().OpenModel(small_->bs);
  ASSERT_TRUE(desc.ok()) << desc.status();
  client::StreamOptions options;
  options.window = 1;
  auto stream = d.client().Stream(desc->model_id(), options);
  ASSERT_TRUE(stream.ok()) << stream.status();
  auto held = (*stream)->Next();
  ASSERT_TRUE(held.ok() && *held != nullptr) << held.status();
  auto sigterm = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(d.pid(), SIGTERM), 0);
  // Once the drain began, even the open connection gets no SERVING answer
  // (bounded wait for the signal to be taken).
  int seen = 1;
  grpc::StatusCode code = grpc::StatusCode::OK;
  for (int i = 0; i < 250 && (seen = CheckThrough(d.client().channel(), &code)) == 1; ++i) {
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_NE(seen, 1) << d.log();
  // The shutdown refuses the call: UNAVAILABLE or CANCELLED (the CLI maps
  // both to unreachable), or NOT_SERVING if it came before the shutdown.
  EXPECT_TRUE(seen == 2 || code == grpc::StatusCode::UNAVAILABLE ||
              code == grpc::StatusCode::CANCELLED)
      << seen << " " << code;
  HealthRun r = Health(d.socket(), {"--json"});
  ASSERT_LT(std::chrono::steady_clock::now() - sigterm, 4s) << "the drain ended too early";
  EXPECT_TRUE(d.alive());
  EXPECT_TRUE(r.exit_code == kUnreachable || r.exit_code == kNotServing) << r.out << r.err;
  EXPECT_EQ(r.exit_code, kUnreachable) << "a new connection now reaches a draining daemon: "
                                          "update this test and the probes' docs. "
                                       << r.out;
  (*held)->Release();
  held->reset();
  stream->reset();
  int status = d.WaitExit(15s);
  EXPECT_TRUE(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0) << d.log();
}

// NOT_SERVING is 2: a gRPC server on a Unix socket whose standard health
// service says NOT_SERVING (what a daemon that reports its drain to new
// connections would answer).
TEST_F(HealthIntegrationTest, NotServingIsTwo) {
  grpc::EnableDefaultHealthCheckService(true);
  std::string path = g_dir + "/not-serving.sock";
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + path, grpc::InsecureServerCredentials());
  // A sync service (every method unimplemented) so that the server polls
  // the health service's calls.
  v1::BigSmall::Service unimplemented;
  builder.RegisterService(&unimplemented);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  server->GetHealthCheckService()->SetServingStatus("", false);
  HealthRun r = Health(path, {});
  EXPECT_EQ(r.exit_code, kNotServing) << r.err;
  EXPECT_NE(r.err.find("NOT_SERVING"), std::string::npos) << r.err;
  // --wait keeps asking until --timeout, then reports what it saw last.
  r = Health(path, {"--wait", "--timeout", "1", "--json"});
  EXPECT_EQ(r.exit_code, kNotServing) << r.out << r.err;
  EXPECT_GE(r.took.count(), 900);
  auto j = nlohmann::json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_EQ(j.value("status", ""), "NOT_SERVING");
  // And SERVING once it flips.
  server->GetHealthCheckService()->SetServingStatus("", true);
  EXPECT_EQ(Health(path, {}).exit_code, kServing);
  server->Shutdown(std::chrono::system_clock::now() + 5s);
  server->Wait();
}

}  // namespace
}  // namespace bigsmall::testing
