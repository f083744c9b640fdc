// Fine-tune deltas in the daemon (issue 11): a delta model's layers rebuilt
// as base XOR delta on the host and on the (emulated) device, the base found
// by the registry (open, or beside the delta) and checked tensor by tensor,
// a wrong or missing base refused with FAILED_PRECONDITION, and the cache's
// AcquireHere (a base layer loaded inside the delta's load, on its thread).
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <future>
#include <map>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "codec/device_checksum.h"
#include "codec/thread_pool.h"
#include "daemon/device_arena.h"
#include "daemon/device_backend.h"
#include "daemon/host_arena.h"
#include "daemon/layer_cache.h"
#include "daemon/metrics.h"
#include "daemon/model.h"
#include "daemon/pipeline.h"
#include "daemon/registry.h"
#include "gtest/gtest.h"
#include "kernels/device_api.h"
#include "tests/integration/delta_pair.h"

namespace bigsmall::daemon {
namespace {

using bigsmall::testing::kAddedTensor;

class DeltaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/bs_delta_testXXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ::chmod(dir_.c_str(), 0700);
    ASSERT_TRUE(bigsmall::testing::WriteDeltaPair(dir_, spec_, "base", "ft", &ft_).ok());
    // Another model of the same shapes: the wrong base.
    bigsmall::testing::SyntheticModelSpec other = spec_;
    other.seed = 99;
    ASSERT_TRUE(bigsmall::testing::WriteSafetensors(dir_ + "/other.safetensors",
                                                    bigsmall::testing::MakeSyntheticTensors(other)));
    CompressOptions options;
    options.threads = 2;
    ASSERT_TRUE(CompressPath(dir_ + "/other.safetensors", dir_ + "/other.safetensors.bs", options).ok());
    auto shm = ShmDir::Prepare(dir_ + "/shm", "");
    ASSERT_TRUE(shm.ok()) << shm.status();
    arenas_ = MakeHostArenaPool(std::move(*shm));
  }
  void TearDown() override {
    arenas_.reset();
    std::string cmd = "rm -rf '" + dir_ + "'";
    ASSERT_EQ(system(cmd.c_str()), 0);
  }
  std::string base_bs() const { return dir_ + "/base.safetensors.bs"; }
  std::string ft_bs() const { return dir_ + "/ft.safetensors.bs"; }
  std::string other_bs() const { return dir_ + "/other.safetensors.bs"; }
  // A subdirectory holding a copy of the delta (and, when `with_base`, a
  // copy of `base` named as the delta's base is named beside it).
  std::string Subdir(const std::string& name, const std::string& base = "") {
    const std::string sub = dir_ + "/" + name;
    EXPECT_EQ(::mkdir(sub.c_str(), 0700), 0);
    std::string cmd = absl::StrCat("cp '", ft_bs(), "' '", sub, "/ft.safetensors.bs'");
    if (!base.empty()) absl::StrAppend(&cmd, " && cp '", base, "' '", sub, "/base.safetensors.bs'");
    EXPECT_EQ(system(cmd.c_str()), 0);
    return sub;
  }

  // Every tensor of every layer of `model` (host load) equals the fine-tune.
  void ExpectFineTune(const Model& model) {
    ThreadPool pool(2);
    Metrics metrics;
    size_t seen = 0;
    for (int32_t i = -1; i < model.num_layers(); ++i) {
      auto data = model.LoadLayer(i, arenas_.get(), &pool, &metrics);
      ASSERT_TRUE(data.ok()) << data.status();
      const v1::LayerInfo& info = i < 0 ? model.description().non_layer() : model.description().layers(i);
      for (const auto& t : info.tensors()) {
        const std::vector<uint8_t>& want = ft_.at(t.name());
        ASSERT_EQ(t.size(), want.size());
        ASSERT_EQ(0, std::memcmp((*data)->arena->bytes().data() + t.offset(), want.data(), want.size()))
            << t.name();
        ++seen;
      }
    }
    EXPECT_EQ(seen, ft_.size());
  }

  RegistryOptions Registry(uint32_t max_models = 8) {
    RegistryOptions o;
    o.roots = {dir_};
    o.max_models = max_models;
    return o;
  }

  bigsmall::testing::SyntheticModelSpec spec_{.layers = 3, .hidden = 64, .vocab = 96};
  std::string dir_;
  std::map<std::string, std::vector<uint8_t>> ft_;
  std::shared_ptr<ArenaPool> arenas_;
};

TEST_F(DeltaTest, DeltaLayersAreRebuiltAsBaseXorDeltaOnTheHost) {
  auto ft = Model::Open(ft_bs(), {});
  ASSERT_TRUE(ft.ok()) << ft.status();  // before issue 11: FAILED_PRECONDITION
  EXPECT_TRUE((*ft)->is_delta());
  EXPECT_TRUE(absl::EndsWith((*ft)->base_name(), "base.safetensors")) << (*ft)->base_name();
  // No base attached: a layer with delta tensors cannot be rebuilt.
  ThreadPool pool(2);
  auto unattached = (*ft)->LoadLayer(0, arenas_.get(), &pool, nullptr);
  EXPECT_EQ(unattached.status().code(), absl::StatusCode::kFailedPrecondition) << unattached.status();
  auto base = Model::Open(base_bs(), {});
  ASSERT_TRUE(base.ok()) << base.status();
  ASSERT_TRUE((*ft)->AttachBase(*base).ok());
  EXPECT_EQ((*ft)->base(), *base);
  // The added tensor is decoded alone; the fine-tuned ones have a base.
  const TensorRef* added = (*ft)->FindTensor(kAddedTensor);
  ASSERT_NE(added, nullptr);
  EXPECT_EQ((*ft)->layer(added->layer)->tensors[added->index].base_slot, -1);
  const TensorRef* q = (*ft)->FindTensor("model.layers.1.self_attn.q_proj.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_GE((*ft)->layer(q->layer)->tensors[q->index].base_slot, 0);
  EXPECT_FALSE((*ft)->layer(q->layer)->base_layers.empty());
  ExpectFineTune(**ft);
}

TEST_F(DeltaTest, WrongBaseIsFailedPreconditionNamingTheModelAndTensor) {
  auto ft = Model::Open(ft_bs(), {});
  ASSERT_TRUE(ft.ok()) << ft.status();
  auto other = Model::Open(other_bs(), {});
  ASSERT_TRUE(other.ok()) << other.status();
  absl::Status st = (*ft)->AttachBase(*other);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_NE(st.message().find((*ft)->path()), std::string::npos) << st;
  EXPECT_NE(st.message().find("wrong base"), std::string::npos) << st;
  EXPECT_NE(st.message().find("base tensor 'model.layers.0."), std::string::npos) << st;
  EXPECT_EQ((*ft)->base(), nullptr);  // nothing changed
  for (const TensorPlan& tp : (*ft)->layer(0)->tensors) EXPECT_EQ(tp.base_slot, -1);
  // A delta is no base.
  auto again = Model::Open(ft_bs(), {});
  ASSERT_TRUE(again.ok());
  st = (*ft)->AttachBase(*again);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
}

TEST_F(DeltaTest, RegistryOpensTheBaseBesideTheDeltaAndSharesIt) {
  ModelRegistry registry(Registry());
  auto ft = registry.Open(ft_bs());
  ASSERT_TRUE(ft.ok()) << ft.status();
  ASSERT_NE(ft->model->base(), nullptr);
  EXPECT_EQ(registry.size(), 2u);  // the base is a model of its own
  auto base = registry.Open(base_bs());
  ASSERT_TRUE(base.ok()) << base.status();
  EXPECT_TRUE(base->already_open);
  EXPECT_EQ(base->model, ft->model->base());
  ExpectFineTune(*ft->model);
  // The base goes only with (after) its delta.
  auto refused = registry.Unload(base->model->id());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  ASSERT_TRUE(registry.Unload(ft->model->id()).ok());
  EXPECT_TRUE(registry.Unload(base->model->id()).ok());
}

TEST_F(DeltaTest, TheBaseOfAnOpenDeltaIsNotClosedForRoom) {
  ModelRegistry registry(Registry(/*max_models=*/2));
  auto ft = registry.Open(ft_bs());
  ASSERT_TRUE(ft.ok()) << ft.status();
  std::shared_ptr<Model> base = ft->model->base();
  ASSERT_EQ(registry.size(), 2u);
  // Room for a third: the idle delta goes (LRU), not its base.
  auto other = registry.Open(other_bs());
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_TRUE(registry.Find(base->id()).ok());
  EXPECT_FALSE(registry.Find(ft->model->id()).ok());
}

TEST_F(DeltaTest, RegistryUsesAnOpenModelWhoseHashesMatch) {
  // The base under another name, open; the delta's directory has no base.
  const std::string sub = Subdir("alone");
  ASSERT_EQ(system(absl::StrCat("cp '", base_bs(), "' '", dir_, "/renamed.bs'").c_str()), 0);
  ModelRegistry registry(Registry());
  ASSERT_TRUE(registry.Open(other_bs()).ok());
  auto renamed = registry.Open(dir_ + "/renamed.bs");
  ASSERT_TRUE(renamed.ok()) << renamed.status();
  auto ft = registry.Open(sub + "/ft.safetensors.bs");
  ASSERT_TRUE(ft.ok()) << ft.status();
  EXPECT_EQ(ft->model->base(), renamed->model);
  EXPECT_EQ(registry.size(), 3u);
}

TEST_F(DeltaTest, RegistryRefusesAMissingBase) {
  const std::string sub = Subdir("alone");
  ModelRegistry registry(Registry());
  auto ft = registry.Open(sub + "/ft.safetensors.bs");
  ASSERT_EQ(ft.status().code(), absl::StatusCode::kFailedPrecondition) << ft.status();
  EXPECT_NE(ft.status().message().find(sub + "/ft.safetensors.bs"), std::string::npos) << ft.status();
  EXPECT_NE(ft.status().message().find(sub + "/base.safetensors.bs"), std::string::npos) << ft.status();
  EXPECT_NE(ft.status().message().find("not available"), std::string::npos) << ft.status();
  EXPECT_EQ(registry.size(), 0u);
}

TEST_F(DeltaTest, RegistryRefusesAWrongBaseBesideTheDelta) {
  const std::string sub = Subdir("wrong", other_bs());
  ModelRegistry registry(Registry());
  auto ft = registry.Open(sub + "/ft.safetensors.bs");
  ASSERT_EQ(ft.status().code(), absl::StatusCode::kFailedPrecondition) << ft.status();
  EXPECT_NE(ft.status().message().find("wrong base"), std::string::npos) << ft.status();
  EXPECT_NE(ft.status().message().find("base tensor 'model.layers.0."), std::string::npos) << ft.status();
  // The wrong base itself was opened (a model like any other); the delta not.
  EXPECT_EQ(registry.size(), 1u);
}

TEST_F(DeltaTest, TheBaseBesideFollowsTheSafeOpenRules) {
  // A symlink named as the base, pointing at the real base: refused (no
  // symlinks beneath a root), so the base is missing.
  const std::string sub = Subdir("link");
  ASSERT_EQ(::symlink(base_bs().c_str(), (sub + "/base.safetensors.bs").c_str()), 0);
  ModelRegistry registry(Registry());
  auto ft = registry.Open(sub + "/ft.safetensors.bs");
  EXPECT_EQ(ft.status().code(), absl::StatusCode::kFailedPrecondition) << ft.status();
  EXPECT_EQ(registry.size(), 0u);
}

TEST_F(DeltaTest, ADirectoryOfDeltaShardsFindsTheCompressedBaseDirectoryBesideIt) {
  // A base directory of two shards and its fine-tune, split the other way
  // round (a delta shard's base tensors lie in either base shard).
  const auto base = bigsmall::testing::MakeSyntheticTensors(spec_);
  const auto ft = bigsmall::testing::FineTuneOf(base);
  ASSERT_EQ(::mkdir((dir_ + "/bdir").c_str(), 0700), 0);
  ASSERT_EQ(::mkdir((dir_ + "/fdir").c_str(), 0700), 0);
  const size_t half = base.size() / 2;
  ASSERT_TRUE(bigsmall::testing::WriteSafetensors(dir_ + "/bdir/a.safetensors", {base.begin(), base.begin() + half}));
  ASSERT_TRUE(bigsmall::testing::WriteSafetensors(dir_ + "/bdir/b.safetensors", {base.begin() + half, base.end()}));
  ASSERT_TRUE(bigsmall::testing::WriteSafetensors(dir_ + "/fdir/a.safetensors", {ft.begin(), ft.begin() + 3}));
  ASSERT_TRUE(bigsmall::testing::WriteSafetensors(dir_ + "/fdir/b.safetensors", {ft.begin() + 3, ft.end()}));
  CompressOptions options;
  options.threads = 2;
  ASSERT_TRUE(CompressPath(dir_ + "/bdir", dir_ + "/bdir.bs", options).ok());
  options.base = dir_ + "/bdir";
  ASSERT_TRUE(CompressPath(dir_ + "/fdir", dir_ + "/fdir.bs", options).ok());
  ModelRegistry registry(Registry());
  auto opened = registry.Open(dir_ + "/fdir.bs");
  ASSERT_TRUE(opened.ok()) << opened.status();
  ASSERT_NE(opened->model->base(), nullptr);
  EXPECT_EQ(opened->model->base()->path(), dir_ + "/bdir.bs");
  EXPECT_EQ(opened->model->num_shards(), 2u);
  ft_ = bigsmall::testing::ByName(ft);
  ExpectFineTune(*opened->model);
}

// ---- LayerCache::AcquireHere ----

LayerCache::LoadFn CountingLoader(uint64_t bytes, std::atomic<int>* count, std::thread::id* on) {
  return [=]() -> absl::StatusOr<std::shared_ptr<LayerData>> {
    count->fetch_add(1);
    if (on != nullptr) *on = std::this_thread::get_id();
    auto d = std::make_shared<LayerData>();
    d->bytes = bytes;
    return d;
  };
}

TEST(AcquireHereTest, LoadsOnTheCallingThreadEvenWhenTheExecutorNeverRuns) {
  // An executor whose threads are all busy (here: it never runs anything):
  // a load inside a load would wait forever on it.
  std::vector<std::function<void()>> never_run;
  std::mutex mu;
  LayerCache cache(1000, [&](std::function<void()> f) {
    std::lock_guard<std::mutex> lock(mu);
    never_run.push_back(std::move(f));
  }, nullptr);
  std::atomic<int> loads{0};
  std::thread::id on;
  bool hit = true;
  auto lease = cache.AcquireHere(LayerKey{"base", 0, "host"}, 100, CountingLoader(100, &loads, &on), &hit);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_FALSE(hit);
  EXPECT_EQ(on, std::this_thread::get_id());
  EXPECT_EQ(loads.load(), 1);
  // Shared like any layer: a second request is a hit, no load.
  auto again = cache.AcquireHere(LayerKey{"base", 0, "host"}, 100, CountingLoader(100, &loads, nullptr), &hit);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(hit);
  EXPECT_EQ(&again->data(), &lease->data());
  EXPECT_EQ(loads.load(), 1);
  EXPECT_TRUE(never_run.empty());
}

TEST(AcquireHereTest, AWaitForAdmissionStillLoadsOnTheCallingThread) {
  std::vector<std::function<void()>> never_run;
  std::mutex mu;
  LayerCache cache(100, [&](std::function<void()> f) {
    std::lock_guard<std::mutex> lock(mu);
    never_run.push_back(std::move(f));
  }, nullptr);
  std::atomic<int> loads{0};
  auto held = cache.AcquireHere(LayerKey{"m", 0, "host"}, 100, CountingLoader(100, &loads, nullptr));
  ASSERT_TRUE(held.ok());
  std::thread::id on;
  std::thread::id waiter_id;
  auto result = std::async(std::launch::async, [&] {
    waiter_id = std::this_thread::get_id();
    return cache.AcquireHere(LayerKey{"m", 1, "host"}, 100, CountingLoader(100, &loads, &on)).ok();
  });
  // Bounded wait until the second request queues, then make room.
  for (int i = 0; i < 500 && cache.stats().queued == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_EQ(cache.stats().queued, 1u);
  held->Reset();
  ASSERT_EQ(result.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_TRUE(result.get());
  EXPECT_EQ(on, waiter_id);
  EXPECT_EQ(loads.load(), 2);
  EXPECT_TRUE(never_run.empty());
}

// ---- The device path (emulated device: the CUDA path's code) ----

class DeviceDeltaTest : public DeltaTest {
 protected:
  void SetUp() override {
    DeltaTest::SetUp();
    gpu::EmulatedDeviceOptions options;
    options.memory_dir = dir_;
    api_ = gpu::MakeEmulatedDeviceApi(options);
    ASSERT_TRUE(api_->DeviceCount().ok()) << api_->DeviceCount().status();
    device_arenas_ = MakeDeviceArenaPool(api_.get(), 0, 8ull << 20);
    auto backend = DeviceBackend::Create(api_.get(), 0, device_arenas_.get(), {});
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(*backend);
  }
  void TearDown() override {
    backend_.reset();
    device_arenas_.reset();
    api_.reset();
    DeltaTest::TearDown();
  }
  std::vector<uint8_t> CopyBack(const uint8_t* device, uint64_t bytes) {
    std::vector<uint8_t> out(bytes);
    auto stream = api_->CreateStream(0);
    EXPECT_TRUE(stream.ok());
    EXPECT_TRUE(api_->MemcpyAsync(out.data(), device, bytes, gpu::CopyKind::kDeviceToHost, *stream).ok());
    EXPECT_TRUE(api_->StreamSynchronize(*stream).ok());
    EXPECT_TRUE(api_->DestroyStream(*stream).ok());
    return out;
  }
  std::unique_ptr<gpu::DeviceApi> api_;
  std::shared_ptr<ArenaPool> device_arenas_;
  std::unique_ptr<DeviceBackend> backend_;
};

TEST_F(DeviceDeltaTest, XorKernelRebuildsAndChecksumsTheRebuiltBytes) {
  for (uint64_t size : {0ull, 5ull, 8ull, 1003ull, 65536ull}) {
    SCOPED_TRACE(size);
    std::vector<uint8_t> delta(size), base(size), want(size);
    for (uint64_t i = 0; i < size; ++i) {
      delta[i] = static_cast<uint8_t>(i * 7 + 3);
      base[i] = static_cast<uint8_t>(i * 13 + 1);
      want[i] = delta[i] ^ base[i];
    }
    auto buf = api_->Malloc(0, 2 * size + 64);
    ASSERT_TRUE(buf.ok()) << buf.status();
    uint8_t* d = *buf;
    uint8_t* b = d + ((size + 7) / 8 * 8);
    uint64_t* out = reinterpret_cast<uint64_t*>(b + ((size + 7) / 8 * 8));
    auto stream = api_->CreateStream(0);
    ASSERT_TRUE(stream.ok());
    ASSERT_TRUE(api_->MemcpyAsync(d, delta.data(), size, gpu::CopyKind::kHostToDevice, *stream).ok());
    ASSERT_TRUE(api_->MemcpyAsync(b, base.data(), size, gpu::CopyKind::kHostToDevice, *stream).ok());
    ASSERT_TRUE(api_->LaunchXorChecksum(d, b, size, out, *stream).ok());
    uint64_t sum = 0;
    ASSERT_TRUE(api_->MemcpyAsync(&sum, out, 8, gpu::CopyKind::kDeviceToHost, *stream).ok());
    ASSERT_TRUE(api_->StreamSynchronize(*stream).ok());
    ASSERT_TRUE(api_->DestroyStream(*stream).ok());
    EXPECT_EQ(CopyBack(d, size), want);
    EXPECT_EQ(sum, DeviceChecksum(want.data(), want.size()));
    ASSERT_TRUE(api_->Free(0, d).ok());
  }
}

TEST_F(DeviceDeltaTest, DeltaLayersAreRebuiltOnTheDeviceFromTheBasesDeviceLayers) {
  auto ft = Model::Open(ft_bs(), {});
  ASSERT_TRUE(ft.ok()) << ft.status();
  auto base = Model::Open(base_bs(), {});
  ASSERT_TRUE(base.ok()) << base.status();
  ASSERT_TRUE((*ft)->AttachBase(*base).ok());
  Pipeline pipeline(PipelineOptions{}, nullptr);
  size_t seen = 0;
  for (int32_t i = -1; i < (*ft)->num_layers(); ++i) {
    const LayerPlan* plan = (*ft)->layer(i);
    // Without the base's device layers: refused, nothing published.
    if (!plan->base_layers.empty()) {
      auto alone = pipeline.Load(**ft, i, *backend_);
      EXPECT_EQ(alone.status().code(), absl::StatusCode::kFailedPrecondition) << alone.status();
    }
    BaseLayers layers;
    for (int32_t b : plan->base_layers) {
      auto data = pipeline.Load(**base, b, *backend_);
      ASSERT_TRUE(data.ok()) << data.status();
      layers.layers.push_back(data->get());
      layers.owned.push_back(std::move(*data));
    }
    auto data = pipeline.Load(**ft, i, *backend_, &layers);
    ASSERT_TRUE(data.ok()) << data.status();
    std::vector<uint8_t> got = CopyBack((*data)->arena->bytes().data(), (*data)->arena->size());
    const v1::LayerInfo& info = i < 0 ? (*ft)->description().non_layer() : (*ft)->description().layers(i);
    for (const auto& t : info.tensors()) {
      const std::vector<uint8_t>& want = ft_.at(t.name());
      ASSERT_EQ(0, std::memcmp(got.data() + t.offset(), want.data(), want.size())) << t.name();
      ++seen;
    }
  }
  EXPECT_EQ(seen, ft_.size());
  EXPECT_EQ(backend_->stats().verify_failures, 0u);
}

TEST_F(DeviceDeltaTest, ARebuiltTensorThatDiffersIsDataLoss) {
  // The right base model, but its device layer's bytes changed after it was
  // verified: the rebuilt tensor's device checksum (after the XOR) differs.
  auto ft = Model::Open(ft_bs(), {});
  ASSERT_TRUE(ft.ok());
  auto base = Model::Open(base_bs(), {});
  ASSERT_TRUE(base.ok());
  ASSERT_TRUE((*ft)->AttachBase(*base).ok());
  Pipeline pipeline(PipelineOptions{}, nullptr);
  const LayerPlan* plan = (*ft)->layer(1);
  ASSERT_FALSE(plan->base_layers.empty());
  BaseLayers layers;
  for (int32_t b : plan->base_layers) {
    auto data = pipeline.Load(**base, b, *backend_);
    ASSERT_TRUE(data.ok()) << data.status();
    layers.layers.push_back(data->get());
    layers.owned.push_back(std::move(*data));
  }
  auto stream = api_->CreateStream(0);
  ASSERT_TRUE(stream.ok());
  ASSERT_TRUE(api_->MemsetAsync(layers.owned[0]->arena->bytes().data(), 0x5a,
                                layers.owned[0]->arena->size(), *stream).ok());
  ASSERT_TRUE(api_->StreamSynchronize(*stream).ok());
  ASSERT_TRUE(api_->DestroyStream(*stream).ok());
  auto data = pipeline.Load(**ft, 1, *backend_, &layers);
  EXPECT_EQ(data.status().code(), absl::StatusCode::kDataLoss) << data.status();
  EXPECT_NE(data.status().message().find("rebuilt"), std::string::npos) << data.status();
}

}  // namespace
}  // namespace bigsmall::daemon
