// End-to-end tests: a real bigsmalld process on a real Unix socket, driven by
// the client library and the bigsmall-client CLI.
#include <fcntl.h>
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
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "codec/bs_reader.h"
#include "codec/compress.h"
#include "codec/safetensors.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/daemon_process.h"
#include "tests/integration/synthetic_model.h"

namespace bigsmall {
namespace {

using namespace std::chrono_literals;
using client::Client;

std::string g_dir;  // per-run temp dir

// A model on disk: the original safetensors (reference bytes) and its .bs.
struct TestModel {
  std::string safetensors;
  std::string bs;
  std::map<std::string, std::vector<uint8_t>> tensors;  // name -> original bytes
};

absl::Status LoadOriginal(const std::string& path, TestModel* m) {
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

TestModel MakeModel(const std::string& name, const testing::SyntheticModelSpec& spec) {
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
  explicit Daemon(std::vector<std::string> extra = {}) {
    static std::atomic<int> n{0};
    dir_ = absl::StrCat(g_dir, "/d", n.fetch_add(1));
    mkdir(dir_.c_str(), 0700);
    socket_ = dir_ + "/bigsmall.sock";
    std::vector<std::string> args = {BIGSMALLD_PATH, "--socket", socket_, "--shm-dir",
                                     dir_ + "/shm", "--log-level", "info", "--drain-seconds", "1"};
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
    if (std::getenv("BIGSMALL_SHOW_LOG")) std::cerr << log();
  }

  // SIGTERM; returns true on a clean exit with everything removed.
  bool Stop() {
    if (pid_ <= 0) return true;
    int status = testing::StopProcess(pid_, SIGTERM, 15s);
    pid_ = -1;
    struct stat st;
    bool socket_gone = stat(socket_.c_str(), &st) != 0;
    return status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0 && socket_gone;
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
absl::StatusOr<size_t> StreamAndCompare(Client& client, const TestModel& model,
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

class IntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/bigsmall_itestXXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    g_dir = tmpl;
    small_ = new TestModel(MakeModel("small", {.layers = 6, .hidden = 64, .vocab = 128, .seed = 1}));
    other_ = new TestModel(MakeModel("other", {.layers = 3, .hidden = 32, .vocab = 64, .seed = 2}));
  }
  static void TearDownTestSuite() {
    delete small_;
    delete other_;
    std::string cmd = "rm -rf " + g_dir;
    (void)system(cmd.c_str());
  }
  static TestModel* small_;
  static TestModel* other_;
};
TestModel* IntegrationTest::small_ = nullptr;
TestModel* IntegrationTest::other_ = nullptr;

TEST_F(IntegrationTest, StreamsEveryTensorExactlyWithIoUringAndPread) {
  for (const char* io : {"io_uring", "pread"}) {
    SCOPED_TRACE(io);
    Daemon d({"--io", io});
    if (!d.ready() && std::string(io) == "io_uring" &&
        d.log().find("io_uring") != std::string::npos) {
      GTEST_SKIP() << "io_uring refused here: " << d.log();
    }
    ASSERT_TRUE(d.ready()) << d.log();
    auto n = StreamAndCompare(d.client(), *small_);
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(*n, small_->tensors.size());
    auto stats = d.client().Stats();
    ASSERT_TRUE(stats.ok());
    EXPECT_EQ(stats->io_backend(), io);
    EXPECT_GT(stats->bytes_read(), 0u);
    // From the middle, and a second pass served from cache.
    client::StreamOptions from3;
    from3.from_layer = 3;
    ASSERT_TRUE(StreamAndCompare(d.client(), *small_, from3).ok());
    EXPECT_TRUE(d.Stop()) << d.log();
  }
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
    grpc::GenericStub generic(d.client().channel());
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 5s);
    std::string junk = "\xff\xff\xff\xff\x0f garbage \x01\x02";
    grpc::Slice slice(junk);
    grpc::ByteBuffer request(&slice, 1), response;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::Status status;
    generic.UnaryCall(&ctx, "/bigsmall.v1.BigSmall/OpenModel", grpc::StubOptions(), &request,
                      &response, [&](grpc::Status s) {
                        std::lock_guard<std::mutex> l(mu);
                        status = s;
                        done = true;
                        cv.notify_all();
                      });
    std::unique_lock<std::mutex> l(mu);
    ASSERT_TRUE(cv.wait_for(l, 10s, [&] { return done; }));
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
  EXPECT_TRUE(n.ok()) << n.status();
  // Unload refuses while streaming is impossible now (no session): works.
  auto ev = d.client().Evict(desc->model_id(), /*unload=*/true);
  ASSERT_TRUE(ev.ok()) << ev.status();
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
  Daemon d({"--cache-budget", std::to_string(budget), "--prefetch", "1", "--decode-threads", "2"});
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
  grpc::GenericStub generic(d.client().channel());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 5s);
  std::string service = "bigsmall.v1.BigSmall";
  std::string req = std::string("\x0a") + static_cast<char>(service.size()) + service;
  grpc::Slice slice(req);
  grpc::ByteBuffer request(&slice, 1), response;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  generic.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                    &response, [&](grpc::Status s) {
                      std::lock_guard<std::mutex> l(mu);
                      status = s;
                      done = true;
                      cv.notify_all();
                    });
  std::unique_lock<std::mutex> l(mu);
  ASSERT_TRUE(cv.wait_for(l, 10s, [&] { return done; }));
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
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

}  // namespace
}  // namespace bigsmall
