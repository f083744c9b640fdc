// End-to-end tests of device sessions: a real bigsmalld with its emulated
// GPU (--gpu-backend emulated: the CUDA backend's whole logic on the CPU,
// device memory in shared-memory files) and real clients (the library, and
// bigsmall-client processes) receiving layers as IPC handles, checked bit
// for bit and verified on the (emulated) device. Machines without a GPU run
// all of this; scripts/gpu_check.sh runs the real-CUDA counterpart.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "codec/compress.h"
#include "gtest/gtest.h"
#include "kernels/device_api.h"
#include "nlohmann/json.hpp"
#include "tests/integration/daemon_harness.h"
#include "tests/integration/daemon_process.h"

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

const std::vector<std::string> kEmulated = {"--gpu-backend", "emulated"};

std::vector<std::string> Emulated(std::vector<std::string> more = {}) {
  std::vector<std::string> args = kEmulated;
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

struct DeviceStreamResult {
  size_t tensors = 0;     // compared bit for bit and verified on the device
  size_t layers = 0;
  size_t cache_hits = 0;
  std::set<uint64_t> arena_ids;
  std::string gpu_uuid;
};

// Streams `model` to a device session and checks every layer: in device
// memory, verified on the device (Layer::Verify), and every tensor copied
// back equal to the original bytes. Layers are released one by one.
absl::StatusOr<DeviceStreamResult> StreamToDevice(Client& client, const TestModel& model,
                                                  const std::string& device = "cuda:0",
                                                  client::StreamOptions options = {}) {
  auto desc = client.OpenModel(model.bs);
  if (!desc.ok()) return desc.status();
  options.include_non_layer = true;
  options.device = device;
  auto stream = client.Stream(desc->model_id(), options);
  if (!stream.ok()) return stream.status();
  DeviceStreamResult r;
  while (true) {
    auto layer = (*stream)->Next();
    if (!layer.ok()) return layer.status();
    if (*layer == nullptr) break;
    const client::Layer& l = **layer;
    if (!l.on_device() || !l.handle().memory().has_cuda()) {
      return absl::InternalError(absl::StrCat("layer ", l.index(), " is not in device memory"));
    }
    const v1::CudaIpcMemory& cuda = l.handle().memory().cuda();
    if (!cuda.emulated()) return absl::InternalError("the emulated daemon sent a real handle");
    r.arena_ids.insert(cuda.arena_id());
    r.gpu_uuid = cuda.gpu_uuid();
    ++r.layers;
    r.cache_hits += l.cache_hit() ? 1 : 0;
    if (absl::Status v = l.Verify(); !v.ok()) return v;
    for (const auto& t : l.tensors()) {
      if (t.device != l.device()) return absl::InternalError("tensor device differs from layer's");
      auto it = model.tensors.find(t.name);
      if (it == model.tensors.end()) return absl::InternalError("unknown tensor " + t.name);
      auto bytes = l.CopyToHost(t);
      if (!bytes.ok()) return bytes.status();
      if (*bytes != it->second) return absl::DataLossError("bytes differ in " + t.name);
      ++r.tensors;
    }
  }
  return r;
}

// Runs bigsmall-client with `args` (after --socket); its exit code, or -1.
int RunCli(const Daemon& d, std::vector<std::string> args, const std::string& out,
           const std::string& err) {
  std::vector<std::string> full = {BIGSMALL_CLIENT_PATH, "--socket", d.socket()};
  full.insert(full.end(), args.begin(), args.end());
  pid_t pid = testing::Spawn(full, out, err);
  int status = testing::WaitFor(pid, 120s);
  if (status == -1) {
    kill(pid, SIGKILL);
    testing::WaitFor(pid, 5s);
  }
  return status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::vector<nlohmann::json> JsonLines(const std::string& path) {
  std::vector<nlohmann::json> out;
  for (absl::string_view line : absl::StrSplit(testing::ReadFile(path), '\n', absl::SkipEmpty())) {
    out.push_back(nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false));
  }
  return out;
}

// Polls `done` (bounded: up to 10 s).
template <typename F>
bool Eventually(F done) {
  for (int i = 0; i < 500; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

class DeviceIntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(testing::MakeSuiteDir("bigsmall_dtest"));
    small_ = new TestModel(MakeModel("small", {.layers = 6, .hidden = 64, .vocab = 128, .seed = 1}));
    // ~5 MiB layers: three fill the smallest device budget (16 MiB).
    big_ = new TestModel(MakeModel("big", {.layers = 6, .hidden = 512, .vocab = 256, .seed = 3}));
  }
  static void TearDownTestSuite() {
    delete small_;
    delete big_;
    testing::RemoveSuiteDir();
  }
  static TestModel* small_;
  static TestModel* big_;
};
TestModel* DeviceIntegrationTest::small_ = nullptr;
TestModel* DeviceIntegrationTest::big_ = nullptr;

TEST_F(DeviceIntegrationTest, EmulatedDeviceStreamsEveryTensorBitExactlyAndVerified) {
  Daemon d(Emulated());
  ASSERT_TRUE(d.ready()) << d.log();
  const client::DeviceArenaCounts before = client::GetDeviceArenaCounts();
  auto first = StreamToDevice(d.client(), *small_);
  ASSERT_TRUE(first.ok()) << first.status() << "\n" << d.log();
  EXPECT_EQ(first->tensors, small_->tensors.size());
  EXPECT_EQ(first->layers, 6u + 1);
  // Each arena was opened once for the whole stream (not once per layer),
  // and closed once nothing of it was held any more.
  const client::DeviceArenaCounts after = client::GetDeviceArenaCounts();
  if (first->arena_ids.size() <= client::LayerStream::kRecentArenas) {
    EXPECT_EQ(after.opens - before.opens, first->arena_ids.size());
  }
  EXPECT_LT(after.opens - before.opens, first->layers);
  EXPECT_EQ(after.open, before.open);
  // A second pass comes from the device cache.
  auto second = StreamToDevice(d.client(), *small_);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->cache_hits, second->layers);
  EXPECT_EQ(second->arena_ids, first->arena_ids);
  ASSERT_TRUE(WaitIdle(d.client()));
  auto stats = d.client().Stats();
  ASSERT_TRUE(stats.ok());
  ASSERT_EQ(stats->models_size(), 1);
  EXPECT_EQ(stats->models(0).layer_decodes(), 6u + 1);
  // Host sessions keep working next to device ones.
  auto host = StreamAndCompare(d.client(), *small_);
  ASSERT_TRUE(host.ok()) << host.status();
  EXPECT_TRUE(d.Stop()) << d.log();
}

TEST_F(DeviceIntegrationTest, RealCorpusModelOnTheEmulatedDevice) {
  const char* dir = std::getenv("BIGSMALL_CORPUS_DIR");
  const char* file = std::getenv("BIGSMALL_CORPUS");
  TestModel m;
  if (dir != nullptr && *dir != '\0') {
    // A model directory (safetensors + tokenizer files): the daemon serves
    // the compressed directory of .bs shards.
    m.safetensors = absl::StrCat(dir, "/model.safetensors");
    m.bs = g_dir + "/corpus-dir.bs";
    CompressOptions options;
    options.threads = 2;
    auto st = CompressPath(dir, m.bs, options);
    ASSERT_TRUE(st.ok()) << st.status();
  } else if (file != nullptr && *file != '\0') {
    m.safetensors = file;
    m.bs = g_dir + "/corpus.safetensors.bs";
    CompressOptions options;
    options.threads = 2;
    auto st = CompressPath(m.safetensors, m.bs, options);
    ASSERT_TRUE(st.ok()) << st.status();
  } else {
    GTEST_SKIP() << "neither BIGSMALL_CORPUS_DIR nor BIGSMALL_CORPUS is set";
  }
  ASSERT_TRUE(LoadOriginal(m.safetensors, &m).ok());
  Daemon d(Emulated());
  ASSERT_TRUE(d.ready()) << d.log();
  auto r = StreamToDevice(d.client(), m);
  ASSERT_TRUE(r.ok()) << r.status() << "\n" << d.log();
  EXPECT_EQ(r->tensors, m.tensors.size());
}

TEST_F(DeviceIntegrationTest, CliStreamsToTheDeviceAndVerifiesEveryTensor) {
  Daemon d(Emulated());
  ASSERT_TRUE(d.ready()) << d.log();
  const std::string out = d.dir() + "/cli.out", err = d.dir() + "/cli.err";
  ASSERT_EQ(RunCli(d, {"stream", small_->bs, "--device", "cuda:0", "--verify", "--json",
                       "--non-layer"},
                   out, err),
            0)
      << testing::ReadFile(err) << d.log();
  auto lines = JsonLines(out);
  ASSERT_EQ(lines.size(), 6u + 1 + 1);
  for (size_t i = 0; i + 1 < lines.size(); ++i) {
    EXPECT_EQ(lines[i]["device"], 0) << lines[i].dump();
    EXPECT_EQ(lines[i]["verified"], true) << lines[i].dump();
  }
  auto summary = lines.back()["summary"];
  EXPECT_EQ(summary["mismatches"], 0);
  EXPECT_EQ(summary["verified_tensors"], small_->tensors.size());
  EXPECT_EQ(summary["device"], "cuda:0");
  EXPECT_GT(summary["gbps"].get<double>(), 0);
  // The text form says where the layers are.
  ASSERT_EQ(RunCli(d, {"stream", small_->bs, "--device", "cuda:0", "--verify"}, out, err), 0)
      << testing::ReadFile(err);
  const std::string text = testing::ReadFile(out);
  EXPECT_NE(text.find("cuda:0"), std::string::npos) << text;
  EXPECT_NE(text.find("tensors verified, 0 mismatches"), std::string::npos) << text;
}

TEST_F(DeviceIntegrationTest, DeviceByUuidAndUnknownDevicesAreNotFound) {
  Daemon d(Emulated());
  ASSERT_TRUE(d.ready()) << d.log();
  auto by_name = StreamToDevice(d.client(), *small_, "cuda:0");
  ASSERT_TRUE(by_name.ok()) << by_name.status();
  ASSERT_FALSE(by_name->gpu_uuid.empty());
  auto by_uuid = StreamToDevice(d.client(), *small_, by_name->gpu_uuid);
  ASSERT_TRUE(by_uuid.ok()) << by_uuid.status();
  EXPECT_EQ(by_uuid->cache_hits, by_uuid->layers);  // the same (model, layer, device)
  for (const std::string bad : {"cuda:7", "GPU-ffffffff-ffff-ffff-ffff-ffffffffffff"}) {
    auto r = StreamToDevice(d.client(), *small_, bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound) << bad << ": " << r.status();
  }
  EXPECT_TRUE(d.alive());
}

TEST_F(DeviceIntegrationTest, WithoutAGpuBackendCudaIsFailedPreconditionAndHostStillWorks) {
  // --gpu-backend none, and auto on a machine without a GPU driver: the
  // same clear refusal (auto is skipped where a real GPU answers).
  std::vector<std::vector<std::string>> configs = {{"--gpu-backend", "none"}};
  std::string why;
  if (gpu::DeviceCount(&why) == 0) configs.push_back({"--gpu-backend", "auto"});
  for (const auto& args : configs) {
    Daemon d(args);
    ASSERT_TRUE(d.ready()) << args[1] << ": " << d.log();
    auto r = StreamToDevice(d.client(), *small_);
    ASSERT_FALSE(r.ok()) << args[1];
    EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition)
        << args[1] << ": " << r.status();
    auto host = StreamAndCompare(d.client(), *small_);
    EXPECT_TRUE(host.ok()) << args[1] << ": " << host.status();
    EXPECT_TRUE(d.Stop()) << d.log();
  }
}

TEST_F(DeviceIntegrationTest, CorruptedStagingIsDataLossAndTheLayerIsNeverPublished) {
  Daemon d(Emulated({"--fault-staging", "2"}));
  ASSERT_TRUE(d.ready()) << d.log();
  auto desc = d.client().OpenModel(small_->bs);
  ASSERT_TRUE(desc.ok()) << desc.status();
  for (int pass = 0; pass < 2; ++pass) {
    auto stream = d.client().Stream(desc->model_id(), {.device = "cuda:0"});
    ASSERT_TRUE(stream.ok());
    int32_t delivered = 0;
    absl::Status end;
    while (true) {
      auto layer = (*stream)->Next();
      if (!layer.ok()) {
        end = layer.status();
        break;
      }
      if (*layer == nullptr) break;
      if ((*layer)->index() == 2) {
        // Only a fault injected once may let a later load succeed: then it
        // is a fresh decode, never the corrupt one from the cache.
        ASSERT_EQ(pass, 1) << "the corrupted layer was handed out";
        EXPECT_FALSE((*layer)->cache_hit());
        EXPECT_TRUE((*layer)->Verify().ok());
      }
      ++delivered;
    }
    if (pass == 0 || !end.ok()) {
      EXPECT_EQ(end.code(), absl::StatusCode::kDataLoss) << end;
      EXPECT_NE(end.message().find("model.layers.2"), std::string::npos) << end;
      EXPECT_EQ(delivered, 2);  // layers 0 and 1 come first, in order
    }
  }
  ASSERT_TRUE(WaitIdle(d.client()));
  auto stats = d.client().Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_GT(stats->errors(), 0u);
  ASSERT_EQ(stats->devices_size(), 1);
  EXPECT_GE(stats->devices(0).verify_failures(), 1u);  // refused by the on-device check
  EXPECT_TRUE(d.alive());
}

TEST_F(DeviceIntegrationTest, TwoClientProcessesShareOneEmulatedArena) {
  Daemon d(Emulated());
  ASSERT_TRUE(d.ready()) << d.log();
  ASSERT_TRUE(d.client().OpenModel(small_->bs).ok());
  // Both hold their layers a while, so both have the arenas open at once.
  std::vector<pid_t> pids;
  for (int i = 0; i < 2; ++i) {
    pids.push_back(testing::Spawn(
        {BIGSMALL_CLIENT_PATH, "--socket", d.socket(), "stream", small_->bs, "--device", "cuda:0",
         "--verify", "--json", "--window", "2", "--delay-ms", "50"},
        absl::StrCat(d.dir(), "/c", i, ".out"), absl::StrCat(d.dir(), "/c", i, ".err")));
  }
  std::vector<std::map<int, uint64_t>> arena_of(2);  // layer -> arena id
  for (int i = 0; i < 2; ++i) {
    int status = testing::WaitFor(pids[i], 60s);
    ASSERT_TRUE(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << testing::ReadFile(absl::StrCat(d.dir(), "/c", i, ".err")) << d.log();
    for (const auto& line : JsonLines(absl::StrCat(d.dir(), "/c", i, ".out"))) {
      if (line.contains("layer")) arena_of[i][line["layer"]] = line["arena_id"];
      if (line.contains("summary")) EXPECT_EQ(line["summary"]["mismatches"], 0);
    }
  }
  ASSERT_EQ(arena_of[0].size(), 6u);
  EXPECT_EQ(arena_of[0], arena_of[1]);  // the same arenas: one copy on the device
  ASSERT_TRUE(WaitIdle(d.client()));
  auto stats = d.client().Stats();
  ASSERT_TRUE(stats.ok());
  ASSERT_EQ(stats->models_size(), 1);
  EXPECT_EQ(stats->models(0).layer_decodes(), 6u);  // decoded once per layer
  EXPECT_EQ(stats->models(0).layers_served(), 12u);
  ASSERT_EQ(stats->devices_size(), 1);
  EXPECT_EQ(stats->devices(0).layers_decoded(), 6u);
  EXPECT_TRUE(stats->devices(0).emulated());
  // The CLI shows the device.
  const std::string out = d.dir() + "/stats.out", err = d.dir() + "/stats.err";
  ASSERT_EQ(RunCli(d, {"stats", "--json"}, out, err), 0) << testing::ReadFile(err);
  auto j = nlohmann::json::parse(testing::ReadFile(out));
  EXPECT_EQ(j["gpu_backend"], "emulated");
  ASSERT_EQ(j["devices"].size(), 1u);
  EXPECT_EQ(j["devices"][0]["name"], "cuda:0");
  EXPECT_EQ(j["devices"][0]["layers_decoded"], 6);
}

TEST_F(DeviceIntegrationTest, SmallDeviceMemoryEvictsAndAdmitsWithinItsBudget) {
  // About three of big_'s layers fit.
  Daemon d(Emulated({"--gpu-memory", "16M", "--gpu-arena-size", "8M",
                     "--admission-timeout-seconds", "1"}));
  ASSERT_TRUE(d.ready()) << d.log();
  // Streaming one layer at a time fits: older layers are evicted.
  client::StreamOptions one;
  one.window = 1;
  auto r = StreamToDevice(d.client(), *big_, "cuda:0", one);
  ASSERT_TRUE(r.ok()) << r.status() << "\n" << d.log();
  EXPECT_EQ(r->tensors, big_->tensors.size());
  auto stats = d.client().Stats();
  ASSERT_TRUE(stats.ok());
  ASSERT_EQ(stats->devices_size(), 1);
  EXPECT_GT(stats->devices(0).cache_evictions(), 0u);
  EXPECT_LE(stats->devices(0).peak_cache_bytes(), stats->devices(0).cache_budget_bytes());
  EXPECT_EQ(stats->devices(0).cache_budget_bytes(), 16u << 20);
  // Holding every layer cannot fit: the layer past the budget waits for
  // room, then fails RESOURCE_EXHAUSTED; the held ones stay valid.
  auto desc = d.client().OpenModel(big_->bs);
  ASSERT_TRUE(desc.ok());
  auto stream = d.client().Stream(desc->model_id(), {.window = 6, .device = "cuda:0"});
  ASSERT_TRUE(stream.ok());
  std::vector<std::unique_ptr<client::Layer>> held;
  absl::Status end;
  while (true) {
    auto layer = (*stream)->Next();
    if (!layer.ok()) {
      end = layer.status();
      break;
    }
    if (*layer == nullptr) break;
    held.push_back(std::move(*layer));
  }
  EXPECT_EQ(end.code(), absl::StatusCode::kResourceExhausted) << end;
  EXPECT_GE(held.size(), 1u);
  EXPECT_LT(held.size(), 6u);
  for (const auto& l : held) EXPECT_TRUE(l->Verify().ok()) << l->index();
  held.clear();
  stream->reset();
  ASSERT_TRUE(WaitIdle(d.client()));
  // With the leases gone, the whole model streams again.
  auto again = StreamToDevice(d.client(), *big_, "cuda:0", one);
  EXPECT_TRUE(again.ok()) << again.status();
}

// CUDA leaves cudaFree of exported memory that an importer still has open
// undefined, and the daemon cannot see a client's cudaIpcCloseMemHandle. So
// an empty device arena stays allocated until every session it was handed
// to has ended (the client closes its arenas before its call ends). The
// emulated device's allocations are files: count them.
TEST_F(DeviceIntegrationTest, ArenasOutliveTheSessionsTheyWereHandedTo) {
  Daemon d(Emulated({"--gpu-memory", "64M", "--gpu-arena-size", "8M"}));
  ASSERT_TRUE(d.ready()) << d.log();
  auto arenas = [&] {
    size_t n = 0;
    std::error_code ec;
    for (auto it = std::filesystem::recursive_directory_iterator(d.dir(), ec);
         !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
      if (it->path().filename().string().rfind("bsemu-", 0) == 0) ++n;
    }
    return n;
  };
  auto desc = d.client().OpenModel(big_->bs);
  ASSERT_TRUE(desc.ok()) << desc.status();
  auto stream = d.client().Stream(desc->model_id(), {.window = 6, .device = "cuda:0"});
  ASSERT_TRUE(stream.ok()) << stream.status();
  size_t layers = 0;
  while (true) {
    auto layer = (*stream)->Next();  // released at once (destroyed)
    ASSERT_TRUE(layer.ok()) << layer.status();
    if (*layer == nullptr) break;
    ++layers;
  }
  ASSERT_EQ(layers, 6u);
  const size_t used = arenas();
  // Each 5 MiB layer has an 8 MiB arena of its own (all six stay cached);
  // the backend's work buffers are allocations (files) too.
  ASSERT_GE(used, 6u);
  // Every layer unleased: evicting them empties the arenas. The session is
  // still open, so none of them may be freed yet. The last release travels
  // on the session's stream and Evict on a call of its own: wait until the
  // daemon has seen every release (CI once evicted 5 of 6 under TSan).
  ASSERT_TRUE(Eventually([&] {
    auto s = d.client().Stats();
    return s.ok() && s->active_leases() == 0 && s->devices_size() == 1 &&
           s->devices(0).active_leases() == 0;
  })) << "the layers were not all released";
  auto ev = d.client().Evict(desc->model_id(), /*unload=*/false);
  ASSERT_TRUE(ev.ok()) << ev.status();
  EXPECT_EQ(ev->layers_evicted(), 6u);
  EXPECT_EQ(arenas(), used);
  // The session ends: the empty arenas go, but for one spare.
  stream->reset();
  EXPECT_TRUE(Eventually([&] { return arenas() <= used - 5; }))
      << arenas() << " allocations left of " << used;
}

TEST_F(DeviceIntegrationTest, KilledClientReleasesItsDeviceLeases) {
  Daemon d(Emulated());
  ASSERT_TRUE(d.ready()) << d.log();
  ASSERT_TRUE(d.client().OpenModel(small_->bs).ok());
  pid_t child = testing::Spawn({BIGSMALL_CLIENT_PATH, "--socket", d.socket(), "stream",
                                small_->bs, "--device", "cuda:0", "--window", "3", "--delay-ms",
                                "5000"},
                               d.dir() + "/child.out", d.dir() + "/child.err");
  ASSERT_TRUE(Eventually([&] {
    auto s = d.client().Stats();
    return s.ok() && s->devices_size() == 1 && s->devices(0).active_leases() > 0;
  })) << testing::ReadFile(d.dir() + "/child.err");
  kill(child, SIGKILL);
  EXPECT_NE(testing::WaitFor(child, 5s), -1);
  EXPECT_TRUE(Eventually([&] {
    auto s = d.client().Stats();
    return s.ok() && s->active_leases() == 0 && s->active_sessions() == 0 &&
           s->devices_size() == 1 && s->devices(0).active_leases() == 0;
  })) << "device leases of a SIGKILLed client were not released";
  // The daemon serves the layers it had leased to it.
  auto r = StreamToDevice(d.client(), *small_);
  EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(d.alive());
}

TEST_F(DeviceIntegrationTest, PinnedHostModeNeedsCudaAndPinsWithAnEmulatedRuntime) {
  Daemon d(Emulated());
  ASSERT_TRUE(d.ready()) << d.log();
  std::string why;
  if (gpu::DeviceCount(&why) == 0) {
    // No CUDA here: a clear FAILED_PRECONDITION, from the library and the CLI.
    auto desc = d.client().OpenModel(small_->bs);
    ASSERT_TRUE(desc.ok());
    auto s = d.client().Stream(desc->model_id(), {.pin_host_memory = true});
    EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << s.status();
    EXPECT_NE(s.status().message().find("pin_host_memory"), std::string::npos) << s.status();
    const std::string out = d.dir() + "/pin.out", err = d.dir() + "/pin.err";
    EXPECT_NE(RunCli(d, {"stream", small_->bs, "--pin"}, out, err), 0);
    EXPECT_NE(testing::ReadFile(err).find("FAILED_PRECONDITION"), std::string::npos)
        << testing::ReadFile(err);
  }
  // With the emulated runtime: every arena mapping is registered once
  // (registering one twice would be ALREADY_EXISTS), the bytes are intact.
  client::ClientOptions options;
  options.pin_host_memory = true;
  options.pin_api = gpu::MakeEmulatedDeviceApi();
  auto pinned = Client::Connect(d.socket(), options);
  ASSERT_TRUE(pinned.ok());
  auto n = StreamAndCompare(**pinned, *small_);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, small_->tensors.size());
}

TEST_F(DeviceIntegrationTest, VerifyOnTheDeviceCatchesCorruptedDeviceMemory) {
  Daemon d(Emulated());
  ASSERT_TRUE(d.ready()) << d.log();
  auto desc = d.client().OpenModel(small_->bs);
  ASSERT_TRUE(desc.ok());
  std::string victim;
  {
    auto stream = d.client().Stream(desc->model_id(), {.to_layer = 1, .device = "cuda:0"});
    ASSERT_TRUE(stream.ok());
    auto layer = (*stream)->Next();
    ASSERT_TRUE(layer.ok() && *layer != nullptr) << layer.status();
    ASSERT_TRUE((*layer)->Verify().ok());
    // The emulated handle names the arena's file ("BSE1" + path): flip one
    // byte of the cached layer's second tensor there, as a device fault would.
    const v1::CudaIpcMemory& cuda = (*layer)->handle().memory().cuda();
    const std::string path(cuda.ipc_handle().c_str() + 4);
    const client::Tensor& t = (*layer)->tensors().at(1);
    victim = t.name;
    int fd = open(path.c_str(), O_RDWR);
    ASSERT_GE(fd, 0) << path;
    ASSERT_GT(t.size, 3u);
    const off_t at =
        static_cast<off_t>(cuda.arena_offset() + (*layer)->handle().layer().tensors(1).offset() + 3);
    uint8_t byte = 0;
    ASSERT_EQ(pread(fd, &byte, 1, at), 1);
    byte ^= 0x10;
    ASSERT_EQ(pwrite(fd, &byte, 1, at), 1);
    close(fd);
  }
  // The same cached layer again: Verify names the tensor.
  auto stream = d.client().Stream(desc->model_id(), {.to_layer = 1, .device = "cuda:0"});
  ASSERT_TRUE(stream.ok());
  auto layer = (*stream)->Next();
  ASSERT_TRUE(layer.ok() && *layer != nullptr) << layer.status();
  EXPECT_TRUE((*layer)->cache_hit());
  std::vector<std::string> bad;
  absl::Status v = (*layer)->Verify(&bad);
  EXPECT_EQ(v.code(), absl::StatusCode::kDataLoss) << v;
  EXPECT_NE(v.message().find(victim), std::string::npos) << v;
  EXPECT_EQ(bad, std::vector<std::string>{victim});
  layer->reset();
  stream->reset();
  // The CLI reports it and exits 3.
  const std::string out = d.dir() + "/cli.out", err = d.dir() + "/cli.err";
  EXPECT_EQ(RunCli(d, {"stream", small_->bs, "--device", "cuda:0", "--verify", "--to", "1"}, out,
                   err),
            3);
  EXPECT_NE(testing::ReadFile(err).find(victim + ": checksum mismatch"), std::string::npos)
      << testing::ReadFile(err);
}

TEST_F(DeviceIntegrationTest, Format10FilesVerifyOnTheDeviceByCopyingBack) {
  // A golden 1.0 file: no device checksums, so Verify copies each tensor
  // back and checks its XXH3-128.
  const std::string golden = std::string(BIGSMALL_SOURCE_DIR) + "/tests/golden/valid/";
  TestModel m;
  m.safetensors = golden + "bf16_llama.safetensors";
  m.bs = g_dir + "/golden10.bs";
  ASSERT_EQ(system(absl::StrCat("cp ", golden, "bf16_llama.balanced.bs ", m.bs).c_str()), 0);
  ASSERT_TRUE(LoadOriginal(m.safetensors, &m).ok());
  Daemon d(Emulated());
  ASSERT_TRUE(d.ready()) << d.log();
  auto desc = d.client().OpenModel(m.bs);
  ASSERT_TRUE(desc.ok()) << desc.status();
  for (const auto& l : desc->layers()) {
    for (const auto& t : l.tensors()) ASSERT_FALSE(t.has_device_checksum()) << t.name();
  }
  auto r = StreamToDevice(d.client(), m);
  ASSERT_TRUE(r.ok()) << r.status() << "\n" << d.log();
  EXPECT_EQ(r->tensors, m.tensors.size());
}

}  // namespace
}  // namespace bigsmall
