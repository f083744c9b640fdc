// End-to-end tests: a real bigsmalld process on a real Unix socket, driven by
// the client library and the bigsmall-client CLI.
#include <sys/mman.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "codec/bs_reader.h"
#include "codec/compress.h"
#include "codec/safetensors.h"
#include "daemon/tsan_annotations.h"  // BIGSMALL_HAVE_TSAN
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/unknown_field_set.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/daemon_process.h"
#include "tests/integration/daemon_harness.h"
#include "tests/integration/synthetic_model.h"

namespace bigsmall {
namespace {

using namespace std::chrono_literals;
using client::Client;

using testing::Daemon;
using testing::g_dir;
using testing::LoadOriginal;
using testing::MakeModel;
using testing::StreamAndCompare;
using testing::TestModel;
using testing::WaitIdle;
using testing::FreeTcpPort;
using testing::HttpGet;

// The value of an unlabelled sample in Prometheus text, or -1 if absent.
double MetricValue(const std::string& text, const std::string& name) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.size() > name.size() && line.substr(0, name.size()) == name &&
        line[name.size()] == ' ') {
      return std::strtod(std::string(line.substr(name.size() + 1)).c_str(), nullptr);
    }
  }
  return -1;
}

// The bytes of a received message.
bool ByteBufferToString(const grpc::ByteBuffer& buffer, std::string* out) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return false;
  for (const auto& sl : slices) out->append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  return true;
}

// A unary call with raw request bytes through the generic stub (for garbage
// payloads and for services whose client stubs are not installed). Returns
// the status and fills `response_bytes`; DEADLINE_EXCEEDED if no answer in 10 s.
grpc::Status RawUnaryCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                          const std::string& request_bytes, std::string* response_bytes) {
  grpc::GenericStub generic(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 5s);
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1), response;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  generic.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response, [&](grpc::Status s) {
    std::lock_guard<std::mutex> l(mu);
    status = s;
    done = true;
    cv.notify_all();
  });
  std::unique_lock<std::mutex> l(mu);
  if (!cv.wait_for(l, 10s, [&] { return done; })) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "no answer");
  }
  if (status.ok() && response_bytes != nullptr && !ByteBufferToString(response, response_bytes)) {
    return grpc::Status(grpc::StatusCode::DATA_LOSS, "bad response");
  }
  return status;
}

// One grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo exchange
// through the generic stub (the reflection client stubs are not installed):
// sends `request` (a serialized ServerReflectionRequest), returns the
// serialized response.
absl::StatusOr<std::string> ReflectionCall(const std::shared_ptr<grpc::Channel>& channel,
                                           const std::string& request) {
  grpc::GenericStub generic(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 10s);
  grpc::CompletionQueue cq;
  auto call = generic.PrepareCall(
      &ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  auto step = [&](intptr_t want) {
    void* tag = nullptr;
    bool ok = false;
    auto r = cq.AsyncNext(&tag, &ok, std::chrono::system_clock::now() + 10s);
    return r == grpc::CompletionQueue::GOT_EVENT && reinterpret_cast<intptr_t>(tag) == want && ok;
  };
  grpc::Slice slice(request);
  grpc::ByteBuffer out(&slice, 1), in;
  grpc::Status status;
  call->StartCall(reinterpret_cast<void*>(1));
  bool ok = step(1);
  if (ok) {
    call->Write(out, reinterpret_cast<void*>(2));
    ok = step(2);
  }
  if (ok) {
    call->Read(&in, reinterpret_cast<void*>(3));
    ok = step(3);
  }
  if (ok) {
    call->WritesDone(reinterpret_cast<void*>(4));
    ok = step(4);
  }
  call->Finish(&status, reinterpret_cast<void*>(5));
  void* tag;
  bool fin_ok;
  cq.AsyncNext(&tag, &fin_ok, std::chrono::system_clock::now() + 10s);
  cq.Shutdown();
  while (cq.Next(&tag, &fin_ok)) {
  }
  if (!status.ok()) return client::FromGrpc(status);
  if (!ok) return absl::UnavailableError("reflection call failed");
  std::string bytes;
  if (!ByteBufferToString(in, &bytes)) return absl::DataLossError("bad reflection response");
  return bytes;
}

// Field `number` of a serialized message, as raw length-delimited values.
std::vector<std::string> Fields(const std::string& bytes, int number) {
  google::protobuf::UnknownFieldSet set;
  std::vector<std::string> out;
  if (!set.ParseFromString(bytes)) return out;
  for (int i = 0; i < set.field_count(); ++i) {
    const auto& f = set.field(i);
    if (f.number() == number && f.type() == google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) {
      out.push_back(f.length_delimited());
    }
  }
  return out;
}

class IntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(testing::MakeSuiteDir("bigsmall_itest"));
    small_ = new TestModel(MakeModel("small", {.layers = 6, .hidden = 64, .vocab = 128, .seed = 1}));
    other_ = new TestModel(MakeModel("other", {.layers = 3, .hidden = 32, .vocab = 64, .seed = 2}));
  }
  static void TearDownTestSuite() {
    delete small_;
    delete other_;
    testing::RemoveSuiteDir();
  }
  static TestModel* small_;
  static TestModel* other_;
};
TestModel* IntegrationTest::small_ = nullptr;
TestModel* IntegrationTest::other_ = nullptr;

// Streams every tensor with one io backend, then from the middle, then a
// second pass from the cache.
void StreamEveryTensorWith(const char* io, const TestModel& model) {
  Daemon d({"--io", io});
  ASSERT_TRUE(d.ready()) << d.log();
  auto n = StreamAndCompare(d.client(), model);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, model.tensors.size());
  auto stats = d.client().Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->io_backend(), io);
  EXPECT_GT(stats->bytes_read(), 0u);
  client::StreamOptions from3;
  from3.from_layer = 3;
  ASSERT_TRUE(StreamAndCompare(d.client(), model, from3).ok());
  EXPECT_TRUE(d.Stop()) << d.log();
}

TEST_F(IntegrationTest, StreamsEveryTensorExactlyWithPread) {
  StreamEveryTensorWith("pread", *small_);
}

TEST_F(IntegrationTest, StreamsEveryTensorExactlyWithIoUring) {
  // Its own test, so the pread pass above runs whether or not this can.
  {
    Daemon probe({"--io", "io_uring"});
    if (!probe.ready() && probe.log().find("io_uring is refused") != std::string::npos) {
      GTEST_SKIP() << "io_uring is refused here: " << probe.log();
    }
    ASSERT_TRUE(probe.ready()) << probe.log();
    EXPECT_TRUE(probe.Stop()) << probe.log();
  }
  StreamEveryTensorWith("io_uring", *small_);
}

TEST_F(IntegrationTest, RealCorpusModelWhenAvailable) {
  const char* corpus = std::getenv("BIGSMALL_CORPUS");
  if (corpus == nullptr || *corpus == '\0') GTEST_SKIP() << "BIGSMALL_CORPUS not set";
  TestModel m;
  m.safetensors = corpus;
  m.bs = g_dir + "/corpus.safetensors.bs";
  CompressOptions options;
  options.threads = 2;
  ASSERT_TRUE(CompressPath(m.safetensors, m.bs, options).ok());
  ASSERT_TRUE(LoadOriginal(m.safetensors, &m).ok());
  Daemon d;
  ASSERT_TRUE(d.ready()) << d.log();
  auto n = StreamAndCompare(d.client(), m);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, m.tensors.size());
}

TEST_F(IntegrationTest, EightClientsShareOneDecodePerLayer) {
  Daemon d({"--cache-budget", "1G"});
  ASSERT_TRUE(d.ready()) << d.log();
  std::vector<std::thread> threads;
  std::vector<absl::Status> results(8);
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      auto c = Client::Connect(d.socket());
      if (!c.ok()) {
        results[i] = c.status();
        return;
      }
      client::StreamOptions options;
      options.window = 2;
      auto n = StreamAndCompare(**c, *small_, options, /*delay_ms=*/i % 3);
      results[i] = n.ok() ? absl::OkStatus() : n.status();
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 8; ++i) EXPECT_TRUE(results[i].ok()) << i << ": " << results[i];
  auto stats = d.client().Stats();
  ASSERT_TRUE(stats.ok());
  ASSERT_EQ(stats->models_size(), 1);
  const auto& m = stats->models(0);
  // Every layer plus the non-layer group, decoded exactly once.
  EXPECT_EQ(m.layer_decodes(), m.num_layers() + 1u);
  EXPECT_EQ(m.layers_served(), 8u * (m.num_layers() + 1));
  EXPECT_EQ(stats->active_leases(), 0u);
  EXPECT_EQ(stats->cache_evictions(), 0u);
}

TEST_F(IntegrationTest, KilledClientReleasesItsLeases) {
  Daemon d;
  ASSERT_TRUE(d.ready()) << d.log();
  ASSERT_TRUE(d.client().OpenModel(small_->bs).ok());
  pid_t child = testing::Spawn({BIGSMALL_CLIENT_PATH, "--socket", d.socket(), "stream",
                                small_->bs, "--window", "3", "--delay-ms", "5000"},
                               d.dir() + "/child.out", d.dir() + "/child.err");
  // Wait until the child holds a lease.
  bool holding = false;
  for (int i = 0; i < 200 && !holding; ++i) {
    auto s = d.client().Stats();
    holding = s.ok() && s->active_leases() > 0;
    if (!holding) std::this_thread::sleep_for(50ms);
  }
  ASSERT_TRUE(holding) << testing::ReadFile(d.dir() + "/child.err");
  // Another client streams meanwhile.
  absl::Status other;
  std::thread t([&] {
    auto c = Client::Connect(d.socket());
    auto n = StreamAndCompare(**c, *small_, {}, 20);
    other = n.ok() ? absl::OkStatus() : n.status();
  });
  std::this_thread::sleep_for(100ms);
  kill(child, SIGKILL);
  EXPECT_NE(testing::WaitFor(child, 5s), -1);
  t.join();
  EXPECT_TRUE(other.ok()) << other;
  bool released = false;
  for (int i = 0; i < 200 && !released; ++i) {
    auto s = d.client().Stats();
    released = s.ok() && s->active_leases() == 0 && s->active_sessions() == 0;
    if (!released) std::this_thread::sleep_for(50ms);
  }
  EXPECT_TRUE(released) << "leases of a SIGKILLed client were not released";
  EXPECT_TRUE(d.alive());
}

TEST_F(IntegrationTest, CorruptTruncatedAndMissingShardsAreClearErrors) {
  Daemon d;
  ASSERT_TRUE(d.ready()) << d.log();
  // Corrupt: flip bytes in the middle of layer 2's group.
  std::string corrupt = g_dir + "/corrupt.safetensors.bs";
  ASSERT_EQ(system(absl::StrCat("cp ", small_->bs, " ", corrupt).c_str()), 0);
  {
    auto reader = BsReader::OpenFile(corrupt);
    ASSERT_TRUE(reader.ok());
    const BsGroup* target = nullptr;
    for (const auto& g : (*reader)->index().groups) {
      if (g.layer == 2) target = &g;
    }
    ASSERT_NE(target, nullptr);
    int fd = open(corrupt.c_str(), O_RDWR);
    uint64_t at = target->offset + target->size / 2;
    for (int i = 0; i < 16; ++i) {
      uint8_t b;
      ASSERT_EQ(pread(fd, &b, 1, at + i), 1);
      b ^= 0x5a;
      ASSERT_EQ(pwrite(fd, &b, 1, at + i), 1);
    }
    close(fd);
  }
  auto desc = d.client().OpenModel(corrupt);
  ASSERT_TRUE(desc.ok()) << desc.status();  // the index is intact
  auto stream = d.client().Stream(desc->model_id(), {});
  ASSERT_TRUE(stream.ok());
  absl::Status error;
  int good = 0;
  while (true) {
    auto layer = (*stream)->Next();
    if (!layer.ok()) {
      error = layer.status();
      break;
    }
    if (*layer == nullptr) break;
    ++good;
  }
  EXPECT_EQ(error.code(), absl::StatusCode::kDataLoss) << error;
  EXPECT_NE(error.message().find("layer 2"), std::string::npos) << error;
  EXPECT_EQ(good, 2);
  // Truncated file.
  std::string cut = g_dir + "/cut.safetensors.bs";
  ASSERT_EQ(system(absl::StrCat("head -c 5000 ", small_->bs, " > ", cut).c_str()), 0);
  auto t = d.client().OpenModel(cut);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kDataLoss) << t.status();
  // Missing file, and a sharded directory missing a shard.
  EXPECT_EQ(d.client().OpenModel(g_dir + "/nope.bs").status().code(),
            absl::StatusCode::kNotFound);
  std::string sharded = g_dir + "/sharded.bs";
  ASSERT_EQ(system(absl::StrCat("mkdir -p ", sharded, " && cp ", small_->bs, " ", sharded,
                                "/model-00001-of-00002.safetensors.bs").c_str()),
            0);
  std::ofstream(sharded + "/model.safetensors.index.json")
      << R"({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})";
  EXPECT_EQ(d.client().OpenModel(sharded).status().code(), absl::StatusCode::kNotFound);
  // The daemon keeps serving other models.
  auto n = StreamAndCompare(d.client(), *other_);
  EXPECT_TRUE(n.ok()) << n.status();
  auto stats = d.client().Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_GT(stats->errors(), 0u);
  EXPECT_EQ(stats->active_leases(), 0u);
  EXPECT_TRUE(d.Stop()) << d.log();
}

TEST_F(IntegrationTest, BadRequestsGetClearErrors) {
  Daemon d({"--max-window", "8"});
  ASSERT_TRUE(d.ready()) << d.log();
  auto desc = d.client().OpenModel(small_->bs);
  ASSERT_TRUE(desc.ok());
  EXPECT_EQ(d.client().Describe("m000000000000").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(d.client().OpenModel("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(d.client().GetTensors(desc->model_id(), {"no.such.tensor"}).status().code(),
            absl::StatusCode::kNotFound);
  auto first_error = [&](const std::string& id, client::StreamOptions o) {
    auto s = d.client().Stream(id, o);
    if (!s.ok()) return s.status();
    while (true) {
      auto l = (*s)->Next();
      if (!l.ok()) return l.status();
      if (*l == nullptr) return absl::OkStatus();
    }
  };
  EXPECT_EQ(first_error("m000000000000", {}).code(), absl::StatusCode::kNotFound);
  client::StreamOptions bad_from;
  bad_from.from_layer = 99;
  EXPECT_EQ(first_error(desc->model_id(), bad_from).code(), absl::StatusCode::kOutOfRange);
  client::StreamOptions bad_range;
  bad_range.from_layer = 3;
  bad_range.to_layer = 2;
  EXPECT_EQ(first_error(desc->model_id(), bad_range).code(), absl::StatusCode::kOutOfRange);
  client::StreamOptions huge_window;
  huge_window.window = 1000;
  EXPECT_EQ(first_error(desc->model_id(), huge_window).code(),
            absl::StatusCode::kInvalidArgument);
  // Protocol misuse on a raw session: release before start, release of a
  // layer not held.
  {
    grpc::ClientContext ctx;
    auto rw = d.client().stub().Session(&ctx);
    v1::SessionRequest r;
    r.mutable_release()->add_layers(0);
    rw->Write(r);
    v1::SessionResponse resp;
    while (rw->Read(&resp)) {
    }
    EXPECT_EQ(rw->Finish().error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  {
    grpc::ClientContext ctx;
    auto rw = d.client().stub().Session(&ctx);
    v1::SessionRequest r;
    r.mutable_start()->set_model_id(desc->model_id());
    r.mutable_start()->set_window(1);
    rw->Write(r);
    v1::SessionRequest rel;
    rel.mutable_release()->add_layers(5);
    rw->Write(rel);
    v1::SessionResponse resp;
    while (rw->Read(&resp)) {
    }
    EXPECT_EQ(rw->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  // Garbage: a protobuf-invalid payload on a real method, and raw bytes on the socket.
  {
    const std::string junk = "\xff\xff\xff\xff\x0f garbage \x01\x02";
    grpc::Status status = RawUnaryCall(d.client().channel(), "/bigsmall.v1.BigSmall/OpenModel", junk, nullptr);
    EXPECT_NE(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
    EXPECT_FALSE(status.ok());
  }
  {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    strncpy(addr.sun_path, d.socket().c_str(), sizeof(addr.sun_path) - 1);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    std::string junk(4096, '\x7f');
    (void)!write(fd, junk.data(), junk.size());
    close(fd);
  }
  // Still alive and serving.
  EXPECT_TRUE(d.alive());
  auto n = StreamAndCompare(d.client(), *small_);
  // The daemon's log on failure: this failed once under TSan (2026-12-01,
  // "Socket closed", then the Evict below timed out), not reproduced since.
  EXPECT_TRUE(n.ok()) << n.status() << "\n" << d.log();
  // Unload refuses while streaming is impossible now (no session): works.
  auto ev = d.client().Evict(desc->model_id(), /*unload=*/true);
  ASSERT_TRUE(ev.ok()) << ev.status() << "\n" << d.log();
  EXPECT_EQ(ev->models_unloaded(), 1u);
  EXPECT_EQ(d.client().Describe(desc->model_id()).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(IntegrationTest, BudgetBelowModelSizeStillStreamsWithBoundedMemory) {
  // ~3 MiB per layer, 24 layers: ~70 MiB of decoded weights through an 8 MiB cache.
  TestModel big = MakeModel("big", {.layers = 24, .hidden = 384, .vocab = 256, .seed = 3});
  uint64_t total = 0;
  for (const auto& [n, b] : big.tensors) total += b.size();
  ASSERT_GT(total, 60u << 20);
  const uint64_t budget = 8u << 20;
  // Under ASan, freed memory waits in a 256 MiB quarantine: the daemon
  // child gets a small one so its RSS measures the daemon, not ASan.
  const char* asan = std::getenv("ASAN_OPTIONS");
  const std::string saved = asan != nullptr ? asan : "";
  setenv("ASAN_OPTIONS", (saved + (saved.empty() ? "" : ":") + "quarantine_size_mb=4").c_str(), 1);
  Daemon d({"--cache-budget", std::to_string(budget), "--prefetch", "1", "--decode-threads", "2"});
  if (asan != nullptr) {
    setenv("ASAN_OPTIONS", saved.c_str(), 1);
  } else {
    unsetenv("ASAN_OPTIONS");
  }
  ASSERT_TRUE(d.ready()) << d.log();
  long base_kb = testing::ProcStatusKb(d.pid(), "VmRSS");
  client::StreamOptions options;
  options.window = 1;
  auto n = StreamAndCompare(d.client(), big, options);
  ASSERT_TRUE(n.ok()) << n.status();
  auto stats = d.client().Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_GT(stats->cache_evictions(), 0u);
  EXPECT_LE(stats->cache_bytes(), budget);
#if defined(BIGSMALL_HAVE_TSAN)
  GTEST_SKIP() << "streamed within the budget; the RSS bound is not checked under TSan "
                  "(its shadow memory and allocator dominate the daemon's RSS)";
#endif
  long hwm_kb = testing::ProcStatusKb(d.pid(), "VmHWM");
  // Fixed overhead: compressed read buffers and decode scratch for the
  // layers in flight, allocator slack. Far below the model's 70 MiB.
  const long overhead_kb = 32 * 1024;
  EXPECT_LE(hwm_kb, base_kb + static_cast<long>(budget / 1024) + overhead_kb)
      << "base " << base_kb << " kB, peak " << hwm_kb << " kB, model " << total / 1024 << " kB";
}

TEST_F(IntegrationTest, CliStreamVerifyLsStatsEvict) {
  Daemon d;
  ASSERT_TRUE(d.ready()) << d.log();
  std::string out = d.dir() + "/cli.out";
  auto run = [&](std::vector<std::string> args) {
    std::vector<std::string> full = {BIGSMALL_CLIENT_PATH, "--socket", d.socket()};
    full.insert(full.end(), args.begin(), args.end());
    pid_t pid = testing::Spawn(full, out, d.dir() + "/cli.err");
    int status = testing::WaitFor(pid, 60s);
    if (status == -1) {
      kill(pid, SIGKILL);
      testing::WaitFor(pid, 5s);
    }
    return status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  ASSERT_EQ(run({"stream", small_->bs, "--verify", "--json", "--non-layer"}), 0)
      << testing::ReadFile(d.dir() + "/cli.err");
  std::vector<std::string> lines =
      absl::StrSplit(testing::ReadFile(out), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 6u + 1 + 1);  // layers, non-layer group, summary
  auto summary = nlohmann::json::parse(lines.back())["summary"];
  EXPECT_EQ(summary["mismatches"], 0);
  EXPECT_EQ(summary["verified_tensors"], small_->tensors.size());
  ASSERT_EQ(run({"ls", "--json"}), 0);
  auto ls = nlohmann::json::parse(testing::ReadFile(out));
  ASSERT_EQ(ls["models"].size(), 1u);
  EXPECT_EQ(ls["models"][0]["num_layers"], 6);
  ASSERT_EQ(run({"stats", "--json"}), 0);
  auto stats = nlohmann::json::parse(testing::ReadFile(out));
  EXPECT_EQ(stats["layers_served"], 7);
  // A local model: the Hub counters are there, and zero.
  EXPECT_EQ(stats["hub_bytes_fetched"], 0) << stats.dump();
  EXPECT_EQ(stats["hub_cache_hit_reads"], 0) << stats.dump();
  ASSERT_EQ(run({"evict", "--json"}), 0);
  auto ev = nlohmann::json::parse(testing::ReadFile(out));
  EXPECT_EQ(ev["layers_evicted"], 7);
  EXPECT_NE(run({"stream", g_dir + "/missing.bs"}), 0);
  EXPECT_NE(testing::ReadFile(d.dir() + "/cli.err").find("NOT_FOUND"), std::string::npos);
}

TEST_F(IntegrationTest, HealthServiceAndSocketPermissions) {
  Daemon d;
  ASSERT_TRUE(d.ready()) << d.log();
  struct stat st;
  ASSERT_EQ(stat(d.socket().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  // grpc.health.v1.Health/Check {service: "bigsmall.v1.BigSmall"} -> SERVING (1).
  const std::string service = "bigsmall.v1.BigSmall";
  const std::string req = std::string("\x0a") + static_cast<char>(service.size()) + service;
  std::string bytes;
  grpc::Status status = RawUnaryCall(d.client().channel(), "/grpc.health.v1.Health/Check", req, &bytes);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(bytes, std::string("\x08\x01"));
  // A second daemon on the same socket refuses to start.
  pid_t second = testing::Spawn({BIGSMALLD_PATH, "--socket", d.socket(), "--shm-dir",
                                 d.dir() + "/shm2"}, "", d.dir() + "/second.log");
  int s2 = testing::WaitFor(second, 10s);
  EXPECT_TRUE(s2 >= 0 && WIFEXITED(s2) && WEXITSTATUS(s2) != 0);
  if (s2 == -1) testing::StopProcess(second, SIGKILL, 2s);
  EXPECT_NE(testing::ReadFile(d.dir() + "/second.log").find("another daemon"), std::string::npos);
  EXPECT_TRUE(d.Stop()) << d.log();
  if (std::getenv("BIGSMALL_SHOW_LOG")) std::cerr << d.log();
}


TEST_F(IntegrationTest, GetTensorsReturnsOriginalBytes) {
  Daemon d;
  ASSERT_TRUE(d.ready()) << d.log();
  auto desc = d.client().OpenModel(small_->bs);
  ASSERT_TRUE(desc.ok()) << desc.status();
  // Default: every non-layer tensor.
  auto all = d.client().GetTensors(desc->model_id(), {});
  ASSERT_TRUE(all.ok()) << all.status();
  std::set<std::string> names;
  for (const auto& t : *all) {
    names.insert(t.info.name());
    auto it = small_->tensors.find(t.info.name());
    ASSERT_NE(it, small_->tensors.end()) << t.info.name();
    EXPECT_EQ(t.info.size(), it->second.size()) << t.info.name();
    EXPECT_TRUE(t.bytes == it->second) << "bytes differ in " << t.info.name();
    EXPECT_EQ(t.info.layer(), -1) << t.info.name();
    EXPECT_FALSE(t.info.dtype().empty());
    EXPECT_EQ(HashBytes128({t.bytes.data(), t.bytes.size()}),
              [&] {
                Hash128 h{};
                if (t.info.hash().size() == h.size()) memcpy(h.data(), t.info.hash().data(), 16);
                return h;
              }())
        << t.info.name();
  }
  EXPECT_EQ(names, (std::set<std::string>{"model.embed_tokens.weight", "model.norm.weight",
                                          "lm_head.weight"}));
  // Named tensors, from layers too, in the order asked.
  std::vector<std::string> wanted = {"model.layers.3.mlp.down_proj.weight", "lm_head.weight",
                                     "model.layers.0.input_layernorm.weight"};
  auto some = d.client().GetTensors(desc->model_id(), wanted);
  ASSERT_TRUE(some.ok()) << some.status();
  ASSERT_EQ(some->size(), wanted.size());
  for (size_t i = 0; i < wanted.size(); ++i) {
    EXPECT_EQ((*some)[i].info.name(), wanted[i]);
    EXPECT_TRUE((*some)[i].bytes == small_->tensors.at(wanted[i])) << wanted[i];
  }
  EXPECT_EQ((*some)[0].info.layer(), 3);
  EXPECT_EQ((*some)[0].info.dtype(), "F32");
  // Small chunks: a tensor arrives in several, reassembled exactly.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 10s);
    v1::GetTensorsRequest request;
    request.set_model_id(desc->model_id());
    request.add_names("model.embed_tokens.weight");
    request.set_chunk_bytes(4096);
    auto reader = d.client().stub().GetTensors(&ctx, request);
    v1::TensorChunk chunk;
    std::string bytes;
    int chunks = 0;
    while (reader->Read(&chunk)) {
      EXPECT_EQ(chunk.offset(), bytes.size());
      EXPECT_EQ(chunk.has_info(), chunks == 0);
      EXPECT_EQ(chunk.name(), "model.embed_tokens.weight");
      bytes += chunk.data();
      ++chunks;
    }
    ASSERT_TRUE(reader->Finish().ok());
    const auto& original = small_->tensors.at("model.embed_tokens.weight");
    EXPECT_EQ(chunks, static_cast<int>((original.size() + 4095) / 4096));
    EXPECT_TRUE(bytes == std::string(original.begin(), original.end()));
  }
  // No lease remains.
  auto stats = d.client().Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->active_leases(), 0u);
  EXPECT_EQ(stats->active_sessions(), 0u);
  EXPECT_TRUE(d.Stop()) << d.log();
}

TEST_F(IntegrationTest, MetricsOverHttpMoveWithStreaming) {
  int port = FreeTcpPort();
  ASSERT_GT(port, 0);
  Daemon d({"--metrics", absl::StrCat("127.0.0.1:", port)});
  ASSERT_TRUE(d.ready()) << d.log();
  auto before = HttpGet(port, "/metrics");
  ASSERT_TRUE(before.ok()) << before.status();
  for (const char* name :
       {"bigsmall_bytes_read_total", "bigsmall_bytes_decoded_total", "bigsmall_layers_served_total",
        "bigsmall_cache_hits_total", "bigsmall_cache_misses_total", "bigsmall_leases_active",
        "bigsmall_sessions_active", "bigsmall_models_open", "bigsmall_cache_budget_bytes"}) {
    EXPECT_GE(MetricValue(*before, name), 0) << name << " missing:\n" << *before;
  }
  EXPECT_EQ(MetricValue(*before, "bigsmall_bytes_read_total"), 0);
  EXPECT_EQ(MetricValue(*before, "bigsmall_layers_served_total"), 0);
  EXPECT_EQ(MetricValue(*before, "bigsmall_cache_misses_total"), 0);

  const double groups = 6 + 1;  // layers + the non-layer group
  auto n = StreamAndCompare(d.client(), *small_);
  ASSERT_TRUE(n.ok()) << n.status();
  ASSERT_TRUE(WaitIdle(d.client()));
  auto first = HttpGet(port, "/metrics");
  ASSERT_TRUE(first.ok()) << first.status();
  double read1 = MetricValue(*first, "bigsmall_bytes_read_total");
  double misses1 = MetricValue(*first, "bigsmall_cache_misses_total");
  double hits1 = MetricValue(*first, "bigsmall_cache_hits_total");
  uint64_t total = 0;
  for (const auto& [name, bytes] : small_->tensors) total += bytes.size();
  struct stat st;
  ASSERT_EQ(stat(small_->bs.c_str(), &st), 0);
  EXPECT_GT(read1, 0);
  EXPECT_LE(read1, static_cast<double>(st.st_size));
  EXPECT_GE(MetricValue(*first, "bigsmall_bytes_decoded_total"), static_cast<double>(total));
  EXPECT_EQ(MetricValue(*first, "bigsmall_layers_served_total"), groups);
  EXPECT_EQ(MetricValue(*first, "bigsmall_layer_decodes_total"), groups);
  EXPECT_GT(misses1, 0);
  EXPECT_EQ(misses1 + hits1, groups) << *first;  // every acquire is one or the other
  EXPECT_EQ(MetricValue(*first, "bigsmall_models_open"), 1);
  EXPECT_EQ(MetricValue(*first, "bigsmall_leases_active"), 0);
  EXPECT_EQ(MetricValue(*first, "bigsmall_sessions_active"), 0);
  EXPECT_GT(MetricValue(*first, "bigsmall_cache_bytes"), 0);

  // Again: everything from cache; nothing read or decoded.
  ASSERT_TRUE(StreamAndCompare(d.client(), *small_).ok());
  auto second = HttpGet(port, "/metrics");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(MetricValue(*second, "bigsmall_layers_served_total"), 2 * groups);
  EXPECT_EQ(MetricValue(*second, "bigsmall_cache_hits_total"), hits1 + groups);
  EXPECT_EQ(MetricValue(*second, "bigsmall_cache_misses_total"), misses1);
  EXPECT_EQ(MetricValue(*second, "bigsmall_bytes_read_total"), read1);
  EXPECT_EQ(MetricValue(*second, "bigsmall_layer_decodes_total"), groups);
  // GetStats reports the same counters.
  auto stats = d.client().Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(static_cast<double>(stats->layers_served()), 2 * groups);
  EXPECT_EQ(static_cast<double>(stats->bytes_read()), read1);
  EXPECT_EQ(static_cast<double>(stats->cache_hits()), hits1 + groups);
  // Errors are counted by code.
  EXPECT_FALSE(d.client().OpenModel(g_dir + "/nope.bs").ok());
  auto third = HttpGet(port, "/metrics");
  ASSERT_TRUE(third.ok());
  EXPECT_NE(third->find("bigsmall_errors_total{code=\"NOT_FOUND\"} 1"), std::string::npos)
      << *third;
  EXPECT_TRUE(d.Stop()) << d.log();
}

TEST_F(IntegrationTest, ServerReflectionListsAndDescribesTheService) {
  Daemon d;
  ASSERT_TRUE(d.ready()) << d.log();
  // ServerReflectionRequest{list_services (7): ""}
  auto listed = ReflectionCall(d.client().channel(), std::string("\x3a\x00", 2));
  ASSERT_TRUE(listed.ok()) << listed.status();
  // ServerReflectionResponse.list_services_response (6) -> service (1) -> name (1)
  std::set<std::string> services;
  for (const auto& list : Fields(*listed, 6)) {
    for (const auto& service : Fields(list, 1)) {
      for (const auto& name : Fields(service, 1)) services.insert(name);
    }
  }
  EXPECT_TRUE(services.count("bigsmall.v1.BigSmall")) << services.size();
  EXPECT_TRUE(services.count("grpc.health.v1.Health"));
  // ServerReflectionRequest{file_containing_symbol (4): "bigsmall.v1.BigSmall"}
  std::string symbol = "bigsmall.v1.BigSmall";
  auto file = ReflectionCall(d.client().channel(), std::string("\x22") +
                                                       static_cast<char>(symbol.size()) + symbol);
  ASSERT_TRUE(file.ok()) << file.status();
  // file_descriptor_response (4) -> file_descriptor_proto (1)
  bool found = false;
  for (const auto& response : Fields(*file, 4)) {
    for (const auto& proto : Fields(response, 1)) {
      google::protobuf::FileDescriptorProto fd;
      ASSERT_TRUE(fd.ParseFromString(proto));
      if (fd.package() != "bigsmall.v1") continue;
      for (const auto& service : fd.service()) {
        if (service.name() != "BigSmall") continue;
        found = true;
        std::map<std::string, std::pair<bool, bool>> methods;
        for (const auto& m : service.method()) {
          methods[m.name()] = {m.client_streaming(), m.server_streaming()};
        }
        for (const char* m : {"OpenModel", "DescribeModel", "Session", "GetTensors",
                              "ListModels", "Evict", "GetStats"}) {
          EXPECT_TRUE(methods.count(m)) << m;
        }
        EXPECT_EQ(methods["Session"], std::make_pair(true, true));
        EXPECT_EQ(methods["GetTensors"], std::make_pair(false, true));
        EXPECT_EQ(methods["OpenModel"], std::make_pair(false, false));
      }
    }
  }
  EXPECT_TRUE(found) << "no FileDescriptorProto with service bigsmall.v1.BigSmall";
  EXPECT_TRUE(d.Stop()) << d.log();
}

TEST_F(IntegrationTest, MultiShardDirectoryWithLayersSplitAcrossShards) {
  // Two shards; layer 2's attention in the first, its MLP in the second;
  // the embeddings in the first, the final norm and head in the second.
  auto tensors = testing::MakeSyntheticTensors({.layers = 4, .hidden = 64, .vocab = 128, .seed = 7});
  std::vector<testing::SyntheticTensor> first, second;
  bool in_second = false;
  for (auto& t : tensors) {
    if (t.name == "model.layers.2.mlp.up_proj.weight") in_second = true;
    (in_second ? second : first).push_back(std::move(t));
  }
  std::string dir = g_dir + "/sharded_ok";
  ASSERT_EQ(mkdir(dir.c_str(), 0755), 0);
  const std::string shard1 = "model-00001-of-00002.safetensors";
  const std::string shard2 = "model-00002-of-00002.safetensors";
  ASSERT_TRUE(testing::WriteSafetensors(dir + "/" + shard1, first));
  ASSERT_TRUE(testing::WriteSafetensors(dir + "/" + shard2, second));
  nlohmann::json index;
  index["metadata"] = {{"total_size", 0}};
  for (const auto& t : first) index["weight_map"][t.name] = shard1;
  for (const auto& t : second) index["weight_map"][t.name] = shard2;
  std::ofstream(dir + "/model.safetensors.index.json") << index.dump();
  TestModel m;
  m.safetensors = dir;
  m.bs = dir + ".bs";
  CompressOptions options;
  options.threads = 2;
  auto compressed = CompressPath(dir, m.bs, options);
  ASSERT_TRUE(compressed.ok()) << compressed.status();
  ASSERT_TRUE(LoadOriginal(dir + "/" + shard1, &m).ok());
  ASSERT_TRUE(LoadOriginal(dir + "/" + shard2, &m).ok());
  ASSERT_EQ(m.tensors.size(), 1 + 4 * 7 + 2u);

  Daemon d;
  ASSERT_TRUE(d.ready()) << d.log();
  auto desc = d.client().OpenModel(m.bs);
  ASSERT_TRUE(desc.ok()) << desc.status();
  EXPECT_EQ(desc->num_layers(), 4u);
  EXPECT_EQ(desc->shards_size(), 2);
  std::set<std::string> layer2_shards;
  for (const auto& t : desc->layers(2).tensors()) layer2_shards.insert(t.shard());
  EXPECT_EQ(layer2_shards.size(), 2u) << "layer 2 should span both shards";
  std::set<std::string> non_layer_shards;
  for (const auto& t : desc->non_layer().tensors()) non_layer_shards.insert(t.shard());
  EXPECT_EQ(non_layer_shards.size(), 2u);
  // Every tensor, streamed, byte for byte; with io_uring (auto) and window 1.
  client::StreamOptions narrow;
  narrow.window = 1;
  auto n = StreamAndCompare(d.client(), m, narrow);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, m.tensors.size());
  // Again from the cache, wider window.
  n = StreamAndCompare(d.client(), m);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, m.tensors.size());
  // Non-layer tensors from both shards through GetTensors.
  auto nl = d.client().GetTensors(desc->model_id(), {});
  ASSERT_TRUE(nl.ok()) << nl.status();
  EXPECT_EQ(nl->size(), 3u);
  for (const auto& t : *nl) EXPECT_TRUE(t.bytes == m.tensors.at(t.info.name())) << t.info.name();
  auto stats = d.client().Stats();
  ASSERT_TRUE(stats.ok());
  ASSERT_EQ(stats->models_size(), 1);
  EXPECT_EQ(stats->models(0).layer_decodes(), 4u + 1);
  EXPECT_EQ(stats->active_leases(), 0u);
  EXPECT_TRUE(d.Stop()) << d.log();
}

// A client that holds a layer and never finishes: the grace period ends,
// its call is cancelled, the daemon exits cleanly and the client sees an
// error rather than hanging.
TEST_F(IntegrationTest, SigtermCancelsAStuckStreamAfterTheGracePeriod) {
  Daemon d({"--drain-seconds", "1"}, /*short_drain=*/false);
  ASSERT_TRUE(d.ready()) << d.log();
  auto desc = d.client().OpenModel(small_->bs);
  ASSERT_TRUE(desc.ok()) << desc.status();
  client::StreamOptions options;
  options.window = 1;
  auto stream = d.client().Stream(desc->model_id(), options);
  ASSERT_TRUE(stream.ok());
  auto held = (*stream)->Next();
  ASSERT_TRUE(held.ok() && *held != nullptr) << held.status();
  auto sigterm = std::chrono::steady_clock::now();
  kill(d.pid(), SIGTERM);
  int status = d.WaitExit(10s);
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - sigterm);
  EXPECT_TRUE(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0) << d.log();
  EXPECT_GE(took.count(), 900) << "the stream did not get its grace period";
  EXPECT_LT(took.count(), 4000) << d.log();
  // The call is gone: releasing and asking for more gives an error, not a hang.
  (*held)->Release();
  auto next = (*stream)->Next();
  EXPECT_FALSE(next.ok());
}

// SIGTERM with the default --drain-seconds (10 s) after a client streamed,
// fetched tensors and kept its channel open: nothing is in flight, so the
// daemon must not sit out the grace period.
TEST_F(IntegrationTest, SigtermAfterStreamingExitsPromptly) {
  Daemon d({}, /*short_drain=*/false);
  ASSERT_TRUE(d.ready()) << d.log();
  auto n = StreamAndCompare(d.client(), *small_);
  ASSERT_TRUE(n.ok()) << n.status();
  // Nothing at all in flight.
  EXPECT_TRUE(WaitIdle(d.client()));
  // GetTensors too, then the channel stays open and idle.
  auto desc = d.client().OpenModel(small_->bs);
  ASSERT_TRUE(desc.ok());
  ASSERT_TRUE(d.client().GetTensors(desc->model_id(), {}).ok());
  std::chrono::milliseconds took{0};
  EXPECT_TRUE(d.Stop(&took)) << d.log();
  EXPECT_LT(took.count(), 2000) << d.log();
}

// SIGTERM while a slow client streams: the stream gets the grace period and
// completes; the daemon exits as soon as it has, not when the grace period
// (default 10 s) ends.
TEST_F(IntegrationTest, SigtermDrainsARunningStreamThenExitsAtOnce) {
  Daemon d({}, /*short_drain=*/false);
  ASSERT_TRUE(d.ready()) << d.log();
  absl::Status streamed = absl::UnknownError("not run");
  std::chrono::steady_clock::time_point stream_end;
  std::thread t([&] {
    auto c = Client::Connect(d.socket());
    if (!c.ok()) {
      streamed = c.status();
      return;
    }
    client::StreamOptions options;
    options.window = 1;
    auto n = StreamAndCompare(**c, *small_, options, /*delay_ms=*/150);
    stream_end = std::chrono::steady_clock::now();
    streamed = n.ok() ? absl::OkStatus() : n.status();
  });
  bool holding = false;
  for (int i = 0; i < 200 && !holding; ++i) {
    auto s = d.client().Stats();
    holding = s.ok() && s->active_leases() > 0;
    if (!holding) std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(holding);
  auto sigterm = std::chrono::steady_clock::now();
  kill(d.pid(), SIGTERM);
  t.join();
  EXPECT_TRUE(streamed.ok()) << streamed << "\n" << d.log();
  int status = d.WaitExit(15s);
  auto exited = std::chrono::steady_clock::now();
  EXPECT_TRUE(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0) << d.log();
  EXPECT_LT(std::chrono::duration_cast<std::chrono::milliseconds>(exited - stream_end).count(),
            2000)
      << d.log();
  EXPECT_LT(std::chrono::duration_cast<std::chrono::milliseconds>(exited - sigterm).count(), 8000)
      << d.log();
}

// ---------------------------------------------------------------------------
// Issue 6 (service, registry, session protocol, GetTensors, client).

// Runs bigsmall-client with `args`; its exit status (-1: still running
// after `timeout`, then killed).
int RunClient(const std::vector<std::string>& args, std::chrono::milliseconds timeout,
              const std::string& out = "", const std::string& err = "") {
  std::vector<std::string> argv = {BIGSMALL_CLIENT_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  pid_t pid = testing::Spawn(argv, out, err);
  int status = testing::WaitFor(pid, timeout);
  if (status == -1) {
    testing::StopProcess(pid, SIGKILL, 5s);
    return -1;
  }
  return status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -2;
}

TEST_F(IntegrationTest, ModelPathsOutsideTheModelDirsAreOnePermissionDenied) {
  Daemon d;  // --model-dir g_dir
  ASSERT_TRUE(d.ready()) << d.log();
  char tmpl[] = "/tmp/bigsmall_outsideXXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string outside = tmpl;
  ASSERT_EQ(system(("cp " + other_->bs + " " + outside + "/m.bs").c_str()), 0);
  const std::string link = g_dir + "/escape.bs";
  unlink(link.c_str());
  ASSERT_EQ(symlink((outside + "/m.bs").c_str(), link.c_str()), 0);
  std::string first_message;
  for (const std::string& path :
       {outside + "/m.bs", outside + "/missing.bs", std::string("/etc/passwd"),
        std::string("/nonexistent/x.bs"), g_dir + "/../" + outside.substr(5) + "/m.bs", link}) {
    auto st = d.client().OpenModel(path).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied) << path << ": " << st;
    if (first_message.empty()) first_message = std::string(st.message());
    EXPECT_EQ(st.message(), first_message) << path;
  }
  EXPECT_NE(first_message.find("outside the daemon's model directories"), std::string::npos);
  EXPECT_EQ(d.client().OpenModel(g_dir + "/missing.bs").status().code(),
            absl::StatusCode::kNotFound);
  // NUL, 1 MB and newline paths: INVALID_ARGUMENT / escaped, small log lines.
  std::string nul = small_->bs;
  nul.push_back('\0');
  nul += "x";
  EXPECT_EQ(d.client().OpenModel(nul).status().code(), absl::StatusCode::kInvalidArgument);
  std::string huge = g_dir + "/" + std::string(1 << 20, 'a');
  auto st = d.client().OpenModel(huge).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st.message().substr(0, 200);
  EXPECT_LT(st.message().size(), 1000u);
  EXPECT_FALSE(d.client().OpenModel(g_dir + "/x\nERROR forged.bs").ok());
  std::string log = d.log();
  EXPECT_EQ(log.find("\nERROR forged"), std::string::npos) << log;
  for (absl::string_view line : absl::StrSplit(log, '\n')) EXPECT_LT(line.size(), 4096u);
  unlink(link.c_str());
  (void)system(("rm -rf " + outside).c_str());
}

// A thread swaps a directory beneath the model dir for a symlink to an
// outside directory (holding another model of the same name) in a loop;
// no OpenModel may return the outside model.
TEST_F(IntegrationTest, SymlinkSwapRaceNeverOpensAnOutsideModel) {
  Daemon d;
  ASSERT_TRUE(d.ready()) << d.log();
  char tmpl[] = "/tmp/bigsmall_outsideXXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string outside = tmpl, race = g_dir + "/race", sub = race + "/sub",
                    parked = race + "/parked";
  ASSERT_EQ(system(("mkdir -p " + sub + " && cp " + small_->bs + " " + sub + "/m.bs && cp " +
                    other_->bs + " " + outside + "/m.bs")
                       .c_str()),
            0);
  std::atomic<bool> stop{false};
  std::thread swapper([&] {
    while (!stop.load()) {
      if (rename(sub.c_str(), parked.c_str()) != 0) continue;
      if (symlink(outside.c_str(), sub.c_str()) == 0) {
        std::this_thread::yield();
        unlink(sub.c_str());
      }
      rename(parked.c_str(), sub.c_str());
    }
  });
  int inside = 0, escaped = 0;
  auto until = std::chrono::steady_clock::now() + 2s;
  while (std::chrono::steady_clock::now() < until) {
    auto desc = d.client().OpenModel(sub + "/m.bs");
    if (!desc.ok()) continue;
    if (desc->num_layers() == 6) ++inside;
    if (desc->num_layers() == 3) ++escaped;
    (void)d.client().Evict(desc->model_id(), /*unload=*/true);  // a full open next time
  }
  stop = true;
  swapper.join();
  EXPECT_EQ(escaped, 0) << "opened the outside model " << escaped << " times (" << inside
                        << " inside)";
  EXPECT_GT(inside, 0);
  (void)system(("rm -rf " + outside + " " + race).c_str());
}

// OpenModel of FIFOs returns promptly (open used to block forever on the
// RPC pool), other clients are served, and SIGTERM still exits.
TEST_F(IntegrationTest, FifoModelsFailPromptlyAndSigtermStillExits) {
  Daemon d;
  ASSERT_TRUE(d.ready()) << d.log();
  const std::string fifo = g_dir + "/fifo.bs";
  unlink(fifo.c_str());
  ASSERT_EQ(mkfifo(fifo.c_str(), 0644), 0);
  std::vector<std::thread> threads;
  std::atomic<int> failed{0};
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&] {
      auto c = Client::Connect(d.socket(), {.rpc_timeout = 5s});
      if (c.ok() && !(*c)->OpenModel(fifo).ok()) failed.fetch_add(1);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failed.load(), 6);
  EXPECT_TRUE(StreamAndCompare(d.client(), *other_).ok());
  std::chrono::milliseconds took{};
  EXPECT_TRUE(d.Stop(&took)) << d.log();
  EXPECT_LT(took.count(), 5000);
  unlink(fifo.c_str());
}

// `stream --from N` with N == num_layers and `--from 3 --to 3` used to
// never end (StreamEnd queued, never written).
TEST_F(IntegrationTest, EmptyStreamRangesEndWithStreamEnd) {
  Daemon d;
  ASSERT_TRUE(d.ready()) << d.log();
  for (const std::vector<std::string>& range :
       {std::vector<std::string>{"--from", "6"}, std::vector<std::string>{"--from", "3", "--to", "3"}}) {
    std::vector<std::string> args = {"--socket", d.socket(), "stream", small_->bs};
    args.insert(args.end(), range.begin(), range.end());
    EXPECT_EQ(RunClient(args, 10s), 0) << absl::StrJoin(range, " ");
  }
  auto desc = d.client().OpenModel(small_->bs);
  ASSERT_TRUE(desc.ok());
  auto s = d.client().Stream(desc->model_id(), {.from_layer = 6});
  ASSERT_TRUE(s.ok());
  auto end = (*s)->Next();
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_EQ(*end, nullptr);
}

// Half-closing right after StartStream: every call that ends OK carries
// StreamEnd (it used to end OK with 0-4 layers and no StreamEnd).
TEST_F(IntegrationTest, HalfCloseAfterStartNeverEndsOkWithoutStreamEnd) {
  Daemon d;
  ASSERT_TRUE(d.ready()) << d.log();
  auto desc = d.client().OpenModel(small_->bs);
  ASSERT_TRUE(desc.ok());
  for (uint32_t window : {8u, 2u}) {
    SCOPED_TRACE(window);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 10s);
    auto rw = d.client().stub().Session(&ctx);
    v1::SessionRequest r;
    r.mutable_start()->set_model_id(desc->model_id());
    r.mutable_start()->set_window(window);
    ASSERT_TRUE(rw->Write(r));
    rw->WritesDone();
    v1::SessionResponse resp;
    int layers = 0;
    bool end = false;
    while (rw->Read(&resp)) {
      if (resp.has_layer()) ++layers;
      if (resp.has_end()) end = true;
    }
    grpc::Status st = rw->Finish();
    if (window >= 6) {
      EXPECT_TRUE(st.ok()) << st.error_message();
      EXPECT_TRUE(end);
      EXPECT_EQ(layers, 6);
    } else {
      EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
      EXPECT_FALSE(end);
      EXPECT_EQ(layers, 2);
    }
  }
  EXPECT_TRUE(WaitIdle(d.client()));
}

// GetTensors looked a tensor's info up by offset: a zero-size tensor was
// reported under the next tensor's name, dtype and shape.
TEST_F(IntegrationTest, GetTensorsOfAZeroSizeTensorKeepsItsOwnInfo) {
  std::vector<testing::SyntheticTensor> ts;
  ts.push_back({"model.embed_tokens.weight", "F32", {4, 4}, std::vector<uint8_t>(64, 1)});
  ts.push_back({"model.empty_bias", "BF16", {0, 3}, {}});
  ts.push_back({"model.norm.weight", "F32", {4}, std::vector<uint8_t>(16, 2)});
  const std::string st = g_dir + "/empty.safetensors";
  ASSERT_TRUE(testing::WriteSafetensors(st, ts));
  CompressOptions options;
  ASSERT_TRUE(CompressPath(st, st + ".bs", options).ok());
  Daemon d;
  ASSERT_TRUE(d.ready()) << d.log();
  auto desc = d.client().OpenModel(st + ".bs");
  ASSERT_TRUE(desc.ok()) << desc.status();
  auto got = d.client().GetTensors(desc->model_id(), {"model.empty_bias", "model.norm.weight"});
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 2u);
  EXPECT_EQ((*got)[0].info.name(), "model.empty_bias");
  EXPECT_EQ((*got)[0].info.dtype(), "BF16");
  EXPECT_EQ((*got)[0].info.shape_size(), 2);
  EXPECT_TRUE((*got)[0].bytes.empty());
  EXPECT_EQ((*got)[1].info.name(), "model.norm.weight");
  EXPECT_EQ((*got)[1].bytes, std::vector<uint8_t>(16, 2));
}

// GetTensors blocked an RPC-pool thread per call on slow readers: 4 such
// calls stalled every OpenModel. Now nothing blocks a thread.
TEST_F(IntegrationTest, SlowGetTensorsReadersDoNotStallOtherClients) {
  std::vector<testing::SyntheticTensor> ts;
  std::mt19937 rng(5);
  ts.push_back({"model.embed_tokens.weight", "F32", {1024, 1024},
                testing::RandomWeights("F32", 1024 * 1024, rng, 0.02f)});
  ts.push_back({"model.layers.0.mlp.weight", "F32", {4}, std::vector<uint8_t>(16, 3)});
  const std::string st = g_dir + "/wide.safetensors";
  ASSERT_TRUE(testing::WriteSafetensors(st, ts));
  CompressOptions options;
  options.threads = 2;
  ASSERT_TRUE(CompressPath(st, st + ".bs", options).ok());
  Daemon d;
  ASSERT_TRUE(d.ready()) << d.log();
  auto desc = d.client().OpenModel(st + ".bs");
  ASSERT_TRUE(desc.ok()) << desc.status();
  // Six clients ask for 4 MiB x 64 each and never read.
  struct Slow {
    std::unique_ptr<Client> client;
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReader<v1::TensorChunk>> reader;
  };
  std::vector<std::unique_ptr<Slow>> slow;
  for (int i = 0; i < 6; ++i) {
    auto s = std::make_unique<Slow>();
    auto c = Client::Connect(d.socket());
    ASSERT_TRUE(c.ok());
    s->client = std::move(*c);
    v1::GetTensorsRequest request;
    request.set_model_id(desc->model_id());
    for (int k = 0; k < 64; ++k) request.add_names("model.embed_tokens.weight");
    s->reader = s->client->stub().GetTensors(&s->ctx, request);
    slow.push_back(std::move(s));
  }
  std::this_thread::sleep_for(500ms);  // let them fill their flow-control windows
  auto start = std::chrono::steady_clock::now();
  auto c = Client::Connect(d.socket(), {.rpc_timeout = 10s});
  ASSERT_TRUE(c.ok());
  auto n = StreamAndCompare(**c, *other_);
  EXPECT_TRUE(n.ok()) << n.status();
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - start);
  EXPECT_LT(took.count(), 5000);
  for (auto& s : slow) s->ctx.TryCancel();
  for (auto& s : slow) {
    v1::TensorChunk chunk;
    while (s->reader->Read(&chunk)) {
    }
    s->reader->Finish();
  }
  EXPECT_TRUE(WaitIdle(d.client()));
}

// The client started before the daemon: its call waits for the daemon (up
// to --timeout) instead of failing after ~100 ms.
TEST_F(IntegrationTest, ClientStartedBeforeTheDaemonWaitsForIt) {
  const std::string dir = g_dir + "/late";
  mkdir(dir.c_str(), 0700);
  const std::string socket = dir + "/bigsmall.sock";
  pid_t client = testing::Spawn(
      {BIGSMALL_CLIENT_PATH, "--socket", socket, "--timeout", "20", "stats"}, dir + "/out",
      dir + "/err");
  std::this_thread::sleep_for(1s);
  pid_t daemon = testing::Spawn({BIGSMALLD_PATH, "--socket", socket, "--shm-dir", dir + "/shm",
                                 "--model-dir", g_dir, "--drain-seconds", "1"},
                                "", dir + "/daemon.log");
  int status = testing::WaitFor(client, 20s);
  EXPECT_TRUE(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << status << " " << testing::ReadFile(dir + "/err");
  if (status == -1) testing::StopProcess(client, SIGKILL, 5s);
  EXPECT_GE(testing::StopProcess(daemon, SIGTERM, 10s), 0);
}

// A stopped (SIGSTOP) daemon: the stream fails within the client's idle
// timeout instead of waiting forever.
TEST_F(IntegrationTest, StoppedDaemonFailsTheStreamWithinTheIdleTimeout) {
  Daemon d;
  ASSERT_TRUE(d.ready()) << d.log();
  const std::string err = d.dir() + "/client.err";
  pid_t client = testing::Spawn({BIGSMALL_CLIENT_PATH, "--socket", d.socket(), "--idle-timeout",
                                 "1", "stream", small_->bs, "--window", "1", "--delay-ms", "300"},
                                "", err);
  std::this_thread::sleep_for(400ms);
  kill(d.pid(), SIGSTOP);
  int status = testing::WaitFor(client, 10s);
  kill(d.pid(), SIGCONT);
  if (status == -1) testing::StopProcess(client, SIGKILL, 5s);
  EXPECT_TRUE(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) != 0)
      << status << " " << testing::ReadFile(err);
  EXPECT_NE(testing::ReadFile(err).find("DEADLINE_EXCEEDED"), std::string::npos)
      << testing::ReadFile(err);
}

// The daemon ends a session that holds leases without releasing or reading.
TEST_F(IntegrationTest, IdleSessionHoldingLeasesIsEnded) {
  Daemon d({"--session-idle-seconds", "1"});
  ASSERT_TRUE(d.ready()) << d.log();
  auto desc = d.client().OpenModel(small_->bs);
  ASSERT_TRUE(desc.ok());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 15s);
  auto rw = d.client().stub().Session(&ctx);
  v1::SessionRequest r;
  r.mutable_start()->set_model_id(desc->model_id());
  r.mutable_start()->set_window(2);
  ASSERT_TRUE(rw->Write(r));
  v1::SessionResponse resp;
  int layers = 0;
  auto start = std::chrono::steady_clock::now();
  while (rw->Read(&resp)) layers += resp.has_layer() ? 1 : 0;
  grpc::Status st = rw->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << st.error_message();
  EXPECT_EQ(layers, 2);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 8s);
  EXPECT_TRUE(WaitIdle(d.client()));
}

TEST_F(IntegrationTest, SessionAndModelLimitsAreClearErrors) {
  Daemon d({"--max-sessions", "1", "--max-window", "4", "--max-total-window", "4",
            "--max-models", "1"});
  ASSERT_TRUE(d.ready()) << d.log();
  auto desc = d.client().OpenModel(small_->bs);
  ASSERT_TRUE(desc.ok());
  auto held = d.client().Stream(desc->model_id(), {.window = 2});
  ASSERT_TRUE(held.ok());
  auto first = (*held)->Next();  // started and holding a layer
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = d.client().Stream(desc->model_id(), {.window = 1});
  ASSERT_TRUE(second.ok());
  EXPECT_EQ((*second)->Next().status().code(), absl::StatusCode::kResourceExhausted);
  // max_models 1, the only model busy: another cannot open.
  EXPECT_EQ(d.client().OpenModel(other_->bs).status().code(),
            absl::StatusCode::kResourceExhausted);
  first->reset();
  held->reset();
  ASSERT_TRUE(WaitIdle(d.client()));
  // Idle now: the next model closes it (LRU).
  auto other = d.client().OpenModel(other_->bs);
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(d.client().Describe(desc->model_id()).status().code(), absl::StatusCode::kNotFound);
  auto ls = d.client().ListModels();
  ASSERT_TRUE(ls.ok());
  EXPECT_EQ(ls->models_size(), 1);
}

TEST_F(IntegrationTest, OversizedDescriptionIsRefusedAndNotRegistered) {
  Daemon d({"--max-description-bytes", "1000"});
  ASSERT_TRUE(d.ready()) << d.log();
  EXPECT_EQ(d.client().OpenModel(small_->bs).status().code(),
            absl::StatusCode::kResourceExhausted);
  auto ls = d.client().ListModels();
  ASSERT_TRUE(ls.ok());
  EXPECT_EQ(ls->models_size(), 0);
}


// Issue 6 (arenas): cached layers are ranges of a few arena files, not one
// file and one mapping each.
int CountEntries(const std::string& dir) {
  int n = 0;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
    closedir(d);
  }
  return n;
}

int CountMappingsOf(pid_t pid, const std::string& dir) {
  std::ifstream maps(absl::StrCat("/proc/", pid, "/maps"));
  std::string line;
  int n = 0;
  while (std::getline(maps, line)) n += line.find(dir + "/") != std::string::npos;
  return n;
}

TEST_F(IntegrationTest, CachedLayersShareOneArenaFileAndMapping) {
  Daemon d;
  ASSERT_TRUE(d.ready()) << d.log();
  auto desc = d.client().OpenModel(small_->bs);
  ASSERT_TRUE(desc.ok()) << desc.status();
  client::StreamOptions options;
  options.include_non_layer = true;
  options.window = 8;
  auto stream = d.client().Stream(desc->model_id(), options);
  ASSERT_TRUE(stream.ok());
  std::vector<std::unique_ptr<client::Layer>> held;
  std::set<uint64_t> offsets;
  std::set<std::string> paths;
  while (true) {
    auto layer = (*stream)->Next();
    ASSERT_TRUE(layer.ok()) << layer.status();
    if (*layer == nullptr) break;
    const v1::HostMemory& host = (*layer)->handle().memory().host();
    EXPECT_EQ(host.offset() % 4096, 0u);
    offsets.insert(host.offset());
    paths.insert(host.path());
    held.push_back(std::move(*layer));
  }
  EXPECT_EQ(held.size(), 7u);  // 6 layers and the non-layer group
  EXPECT_EQ(offsets.size(), 7u);
  EXPECT_EQ(paths.size(), 1u);
  std::string instance = absl::StrCat(d.dir(), "/shm/d", d.pid());
  EXPECT_EQ(CountEntries(instance), 1) << instance;
  EXPECT_EQ(CountMappingsOf(d.pid(), instance), 1);
  EXPECT_EQ(CountMappingsOf(getpid(), instance), 1);  // the client maps the arena once
  held.clear();
}

// Issue 6 (shm dir): the base swapped after start for an attacker's 0777
// dir holding a forged arena file: clients refuse it, and the daemon keeps
// working in (and at exit removes) its own directory through its fds.
TEST_F(IntegrationTest, SwappedShmDirServesNoForgedBytes) {
  Daemon d;
  ASSERT_TRUE(d.ready()) << d.log();
  auto desc = d.client().OpenModel(small_->bs);
  ASSERT_TRUE(desc.ok()) << desc.status();
  std::string arena;
  uint64_t arena_size = 0;
  {
    auto stream = d.client().Stream(desc->model_id(), {.from_layer = 0, .to_layer = 1});
    ASSERT_TRUE(stream.ok());
    auto layer = (*stream)->Next();
    ASSERT_TRUE(layer.ok() && *layer != nullptr) << layer.status();
    arena = (*layer)->handle().memory().host().path();
    struct stat st;
    ASSERT_EQ(stat(arena.c_str(), &st), 0);
    arena_size = static_cast<uint64_t>(st.st_size);
  }
  const std::string base = d.dir() + "/shm";
  const std::string instance = absl::StrCat(base, "/d", d.pid());
  ASSERT_EQ(rename(base.c_str(), (base + ".real").c_str()), 0);
  ASSERT_EQ(mkdir(base.c_str(), 0777), 0);
  ASSERT_EQ(chmod(base.c_str(), 0777), 0);
  ASSERT_EQ(mkdir(instance.c_str(), 0777), 0);
  {
    int fd = open(arena.c_str(), O_CREAT | O_EXCL | O_RDWR, 0644);
    ASSERT_GE(fd, 0) << arena;
    ASSERT_EQ(ftruncate(fd, static_cast<off_t>(arena_size)), 0);
    std::vector<uint8_t> junk(1 << 16, 0xff);
    for (uint64_t off = 0; off < std::min<uint64_t>(arena_size, 1 << 20); off += junk.size()) {
      ASSERT_GT(pwrite(fd, junk.data(), std::min<uint64_t>(junk.size(), arena_size - off), off), 0);
    }
    // Not the daemon's: another user's file (as root), else a writable one.
    if (geteuid() == 0) {
      ASSERT_EQ(fchown(fd, 65534, 65534), 0);
    } else {
      ASSERT_EQ(fchmod(fd, 0666), 0);
    }
    close(fd);
  }
  // The cached layer 0 now resolves to the forged file: refused.
  {
    auto stream = d.client().Stream(desc->model_id(), {.from_layer = 0, .to_layer = 1});
    ASSERT_TRUE(stream.ok());
    auto layer = (*stream)->Next();
    ASSERT_FALSE(layer.ok()) << "mapped forged layer memory";
    EXPECT_EQ(layer.status().code(), absl::StatusCode::kPermissionDenied) << layer.status();
  }
  // New layers still go to the daemon's own directory.
  {
    auto stream = d.client().Stream(desc->model_id(), {.from_layer = 3, .to_layer = 4});
    ASSERT_TRUE(stream.ok());
    auto layer = (*stream)->Next();
    EXPECT_FALSE(layer.ok());  // the path now names the attacker's dir
  }
  EXPECT_EQ(CountEntries(instance), 1);  // only the forged file
  const std::string real_instance = absl::StrCat(base, ".real/d", d.pid());
  EXPECT_EQ(CountEntries(real_instance), 1);  // the daemon's arena
  EXPECT_TRUE(d.Stop()) << d.log();
  EXPECT_NE(access(real_instance.c_str(), F_OK), 0);  // removed through its fd
  EXPECT_EQ(access(arena.c_str(), F_OK), 0);  // the attacker's file untouched
}

// A client that still holds layers when the daemon stops (SIGTERM: the drain
// expires, the session is cancelled, the daemon frees its cache and exits)
// keeps reading the bytes it was handed: a stopping daemon unlinks its arena
// files but never punches holes in them nor reuses their ranges (the pages
// go with the client's last mapping).
TEST_F(IntegrationTest, HeldLayersKeepTheirBytesAfterTheDaemonExits) {
  Daemon d;  // --drain-seconds 1
  ASSERT_TRUE(d.ready()) << d.log();
  auto desc = d.client().OpenModel(small_->bs);
  ASSERT_TRUE(desc.ok()) << desc.status();
  client::StreamOptions options;
  options.window = 3;
  options.include_non_layer = true;
  auto stream = d.client().Stream(desc->model_id(), options);
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::vector<std::unique_ptr<client::Layer>> held;
  for (int i = 0; i < 3; ++i) {
    auto layer = (*stream)->Next();
    ASSERT_TRUE(layer.ok() && *layer != nullptr) << layer.status();
    ASSERT_TRUE((*layer)->handle().memory().has_host());
    held.push_back(std::move(*layer));
  }
  kill(d.pid(), SIGTERM);
  const int status = d.WaitExit(15s);
  ASSERT_TRUE(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0) << d.log();
  size_t compared = 0;
  for (const auto& layer : held) {
    // The files are gone; the mappings hold the pages.
    EXPECT_NE(access(layer->handle().memory().host().path().c_str(), F_OK), 0);
    EXPECT_TRUE(layer->Verify().ok()) << "layer " << layer->name()
                                      << " changed after the daemon exited";
    for (const client::Tensor& t : layer->tensors()) {
      const std::vector<uint8_t>& want = small_->tensors.at(t.name);
      ASSERT_EQ(want.size(), t.size) << t.name;
      EXPECT_EQ(memcmp(want.data(), t.data, t.size), 0)
          << "bytes of " << t.name << " changed after the daemon exited";
      ++compared;
    }
  }
  EXPECT_GT(compared, 3u);
}


// Pages of a released host layer leave the client's resident set, though the
// arena stays mapped for the layers still held (without it, a client that
// streams a model keeps every touched page of it resident: shared pages, but
// counted in its RSS and its container's memory). The bytes stay readable by
// a later lease of the same layer.
TEST_F(IntegrationTest, ReleasedHostLayersLeaveTheClientsResidentSet) {
  Daemon d;
  ASSERT_TRUE(d.ready()) << d.log();
  auto desc = d.client().OpenModel(small_->bs);
  ASSERT_TRUE(desc.ok()) << desc.status();
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  // This process's resident bytes of the mapping holding `p` (its smaps Rss:
  // pages in its page tables; mincore would say whether the shm file's pages
  // are in memory at all, which they stay).
  auto mapping_rss = [](const void* p) -> uint64_t {
    std::ifstream smaps("/proc/self/smaps");
    std::string line;
    bool in = false;
    const uintptr_t addr = reinterpret_cast<uintptr_t>(p);
    while (std::getline(smaps, line)) {
      uintptr_t lo = 0, hi = 0;
      if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') > line.find('-')) {
        in = addr >= lo && addr < hi;
        continue;
      }
      unsigned long kb = 0;
      if (in && std::sscanf(line.c_str(), "Rss: %lu kB", &kb) == 1) return uint64_t{kb} << 10;
    }
    ADD_FAILURE() << "no mapping holds " << p;
    return 0;
  };
  client::StreamOptions options;
  options.window = 4;
  auto stream = d.client().Stream(desc->model_id(), options);
  ASSERT_TRUE(stream.ok()) << stream.status();
  auto first = (*stream)->Next();
  auto second = (*stream)->Next();
  ASSERT_TRUE(first.ok() && *first != nullptr && second.ok() && *second != nullptr);
  ASSERT_TRUE((*first)->handle().memory().has_host());
  const auto& a = (*first)->handle().memory().host();
  const auto& b = (*second)->handle().memory().host();
  const uint8_t* data = (*first)->tensors().front().data - (*first)->handle().layer().tensors(0).offset();
  const uint64_t size = (*first)->size();
  ASSERT_GE(size, 4 * page) << "the test model's layers are too small to tell";
  volatile uint8_t sink = 0;  // volatile: the reads are not optimised away
  for (uint64_t i = 0; i < size; i += page) sink = data[i];  // fault every page in
  (void)sink;
  const uint64_t touched = mapping_rss(data);
  EXPECT_GE(touched, size - 2 * page);
  (*first)->Release();
  EXPECT_LE(mapping_rss(data), touched - (size - 2 * page))
      << "the released layer's pages stayed resident";
  if (a.path() == b.path()) {
    EXPECT_TRUE((*second)->Verify().ok());  // the arena is still mapped and intact
  }
  // The same layer again (a new lease): its bytes are intact.
  client::StreamOptions again;
  again.from_layer = 0;
  again.to_layer = 1;
  auto stream2 = d.client().Stream(desc->model_id(), again);
  ASSERT_TRUE(stream2.ok()) << stream2.status();
  auto replay = (*stream2)->Next();
  ASSERT_TRUE(replay.ok() && *replay != nullptr) << replay.status();
  EXPECT_TRUE((*replay)->Verify().ok());
  for (const client::Tensor& t : (*replay)->tensors()) {
    const std::vector<uint8_t>& want = small_->tensors.at(t.name);
    ASSERT_EQ(want.size(), t.size) << t.name;
    EXPECT_EQ(memcmp(want.data(), t.data, t.size), 0) << t.name;
  }
}

}  // namespace
}  // namespace bigsmall
