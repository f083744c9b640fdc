// The device backend and device arenas on the emulated DeviceApi (the same
// code runs on real CUDA): bit-exact layers against the CPU decoder on
// synthetic models, golden 1.0/1.1 files and the real corpus; corruption in
// staging caught by the on-device checksums (DATA_LOSS, never cached);
// admission, eviction and leases under a small device budget; IPC export.
#include "daemon/device_backend.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <cstdlib>
#include <cstring>
#include <map>

#include "absl/strings/str_cat.h"
#include "codec/compress.h"
#include "codec/thread_pool.h"
#include "daemon/device_arena.h"
#include "daemon/host_arena.h"
#include "daemon/layer_cache.h"
#include "daemon/model.h"
#include "daemon/pipeline.h"
#include "daemon/test_model_util.h"
#include "gtest/gtest.h"

namespace bigsmall::daemon {
namespace {

// A private directory for the emulated device's memory files.
std::string MakePrivateDir(const std::string& prefix) {
  std::string tmpl = "/tmp/" + prefix + "XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) return "";
  ::chmod(tmpl.c_str(), 0700);
  return tmpl;
}

std::vector<uint8_t> CopyBack(gpu::DeviceApi& api, const Block& block) {
  std::vector<uint8_t> out(block.size());
  auto stream = api.CreateStream(0);
  EXPECT_TRUE(stream.ok()) << stream.status();
  EXPECT_TRUE(api.MemcpyAsync(out.data(), block.bytes().data(), block.size(),
                              gpu::CopyKind::kDeviceToHost, *stream)
                  .ok());
  EXPECT_TRUE(api.StreamSynchronize(*stream).ok());
  EXPECT_TRUE(api.DestroyStream(*stream).ok());
  return out;
}

class DeviceBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    mem_dir_ = MakePrivateDir("bs_device_mem");
    ASSERT_FALSE(mem_dir_.empty());
    gpu::EmulatedDeviceOptions options;
    options.memory_dir = mem_dir_;
    api_ = gpu::MakeEmulatedDeviceApi(options);
    ASSERT_TRUE(api_->DeviceCount().ok()) << api_->DeviceCount().status();
    device_arenas_ = MakeDeviceArenaPool(api_.get(), 0, 8ull << 20);
    auto backend = DeviceBackend::Create(api_.get(), 0, device_arenas_.get(), {});
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(*backend);
    auto shm = ShmDir::Prepare(mem_dir_ + "/shm", "");
    ASSERT_TRUE(shm.ok()) << shm.status();
    host_arenas_ = MakeHostArenaPool(std::move(*shm));
  }
  void TearDown() override {
    backend_.reset();
    device_arenas_.reset();
    host_arenas_.reset();
    api_.reset();
    std::string cmd = "rm -rf '" + mem_dir_ + "'";
    ASSERT_EQ(system(cmd.c_str()), 0);
  }

  // Loads every layer of the model at `path` on the device and on the host
  // (CPU decoder, XXH3-verified) and compares them byte for byte.
  void ExpectDeviceMatchesCpu(const std::string& path, bool expect_host_verify) {
    auto model = Model::Open(path, {});
    ASSERT_TRUE(model.ok()) << model.status();
    ThreadPool pool(2);
    Pipeline pipeline(PipelineOptions{}, nullptr);
    HostBackend host(host_arenas_.get(), &pool, DecoderImpl::kAuto);
    for (int32_t i = -1; i < (*model)->num_layers(); ++i) {
      if ((*model)->layer(i)->tensors.empty()) continue;
      auto on_device = pipeline.Load(**model, i, *backend_);
      ASSERT_TRUE(on_device.ok()) << on_device.status();
      auto on_host = pipeline.Load(**model, i, host);
      ASSERT_TRUE(on_host.ok()) << on_host.status();
      std::vector<uint8_t> got = CopyBack(*api_, *(*on_device)->arena);
      absl::Span<const uint8_t> want = (*on_host)->arena->bytes();
      ASSERT_EQ(got.size(), want.size());
      for (const TensorPlan& tp : (*model)->layer(i)->tensors) {
        ASSERT_EQ(0, std::memcmp(got.data() + tp.offset, want.data() + tp.offset, tp.size))
            << "layer " << i << " tensor " << tp.tensor;
      }
    }
    EXPECT_EQ(backend_->stats().host_verified_tensors > 0, expect_host_verify);
  }

  std::string mem_dir_;
  std::unique_ptr<gpu::DeviceApi> api_;
  std::shared_ptr<ArenaPool> device_arenas_;
  std::shared_ptr<ArenaPool> host_arenas_;
  std::unique_ptr<DeviceBackend> backend_;
};

TEST_F(DeviceBackendTest, SyntheticModelIsBitExact) {
  testing::SyntheticModelDir dir({.layers = 4, .hidden = 64, .vocab = 96});
  ASSERT_TRUE(dir.status().ok()) << dir.status();
  ExpectDeviceMatchesCpu(dir.bs_path(), /*expect_host_verify=*/false);
  EXPECT_EQ(backend_->device(), "GPU-00000000-0000-0000-0000-00000000e001");
  EXPECT_GT(backend_->stats().uploaded_bytes, 0u);
}

TEST_F(DeviceBackendTest, GoldenFilesOfBothVersionsAreBitExact) {
  for (const char* name : {"bf16_llama.balanced.v1.1.bs", "bf16_llama.storage.v1.1.bs",
                           "mixed_dtypes.inference.v1.1.bs"}) {
    SCOPED_TRACE(name);
    ExpectDeviceMatchesCpu(absl::StrCat(BIGSMALL_GOLDEN_DIR, "/", name), false);
  }
  // 1.0: no device checksums, every tensor copied back and hashed.
  ExpectDeviceMatchesCpu(absl::StrCat(BIGSMALL_GOLDEN_DIR, "/bf16_llama.balanced.bs"), true);
}

TEST_F(DeviceBackendTest, RealCorpusIsBitExact) {
  const char* corpus = std::getenv("BIGSMALL_CORPUS_BF16");
  if (corpus == nullptr) GTEST_SKIP() << "BIGSMALL_CORPUS_BF16 is not set (the BF16 corpus file)";
  const std::string bs = mem_dir_ + "/corpus.bs";
  CompressOptions options;
  options.threads = 2;
  auto stats = CompressPath(corpus, bs, options);
  ASSERT_TRUE(stats.ok()) << stats.status();
  ExpectDeviceMatchesCpu(bs, false);
}

TEST_F(DeviceBackendTest, StagingCorruptionIsDataLossAndNeverCached) {
  testing::SyntheticModelDir dir({.layers = 3, .hidden = 64, .vocab = 96});
  ASSERT_TRUE(dir.status().ok()) << dir.status();
  auto model = Model::Open(dir.bs_path(), {});
  ASSERT_TRUE(model.ok()) << model.status();
  PipelineOptions options;
  options.fault_staging_layer = 1;  // after the group check: only the GPU path can see it
  Pipeline pipeline(options, nullptr);
  LayerCache::Options cache_options;
  cache_options.budget = 64ull << 20;
  cache_options.granularity = kArenaAlignment;
  LayerCache cache(cache_options, [](std::function<void()> task) { task(); }, nullptr);
  const LayerKey key{(*model)->cache_key(), 1, backend_->device()};
  auto lease = cache.AcquireSync(key, (*model)->layer(1)->size,
                                 [&] { return pipeline.Load(**model, 1, *backend_); });
  ASSERT_EQ(lease.status().code(), absl::StatusCode::kDataLoss) << lease.status();
  // Caught by the kernels' results (corrupt chunk or device checksum), not by parsing.
  EXPECT_NE(lease.status().message().find("tensor model.layers.1."), std::string::npos)
      << lease.status();
  EXPECT_NE(lease.status().message().find("failed verification on GPU-"), std::string::npos)
      << lease.status();
  EXPECT_NE(lease.status().message().find("layer 1"), std::string::npos) << lease.status();
  EXPECT_FALSE(cache.Contains(key));
  EXPECT_EQ(device_arenas_->stats().blocks, 0u);  // the block was freed
  EXPECT_EQ(backend_->stats().verify_failures, 1u);
  EXPECT_EQ(pipeline.stats().faults_injected, 1u);
  // Layer 0 is fine.
  auto ok = cache.AcquireSync(LayerKey{(*model)->cache_key(), 0, backend_->device()},
                              (*model)->layer(0)->size,
                              [&] { return pipeline.Load(**model, 0, *backend_); });
  EXPECT_TRUE(ok.ok()) << ok.status();
}

TEST_F(DeviceBackendTest, SmallDeviceBudgetAdmitsEvictsAndSharesLayers) {
  testing::SyntheticModelDir dir({.layers = 4, .hidden = 64, .vocab = 96});
  ASSERT_TRUE(dir.status().ok()) << dir.status();
  auto model = Model::Open(dir.bs_path(), {});
  ASSERT_TRUE(model.ok()) << model.status();
  Pipeline pipeline(PipelineOptions{}, nullptr);
  const uint64_t cost = ArenaCost((*model)->layer(0)->size);
  for (int32_t i = 0; i < 4; ++i) ASSERT_EQ(ArenaCost((*model)->layer(i)->size), cost);
  LayerCache::Options cache_options;
  cache_options.budget = 2 * cost;  // two layers
  cache_options.granularity = kArenaAlignment;
  cache_options.admission_timeout = std::chrono::milliseconds(200);
  ThreadPool loads(2);
  LayerCache cache(cache_options, [&](std::function<void()> task) { loads.Schedule(std::move(task)); },
                   nullptr);
  auto key = [&](int32_t i) { return LayerKey{(*model)->cache_key(), i, backend_->device()}; };
  auto load = [&](int32_t i) {
    return [&, i] { return pipeline.Load(**model, i, *backend_); };
  };
  bool hit = true;
  auto l0 = cache.AcquireSync(key(0), (*model)->layer(0)->size, load(0), &hit);
  ASSERT_TRUE(l0.ok()) << l0.status();
  EXPECT_FALSE(hit);
  // A second session on the same GPU shares the one copy.
  auto l0b = cache.AcquireSync(key(0), (*model)->layer(0)->size, load(0), &hit);
  ASSERT_TRUE(l0b.ok()) << l0b.status();
  EXPECT_TRUE(hit);
  EXPECT_EQ(l0->data().arena.get(), l0b->data().arena.get());
  auto l1 = cache.AcquireSync(key(1), (*model)->layer(1)->size, load(1), &hit);
  ASSERT_TRUE(l1.ok()) << l1.status();
  // Full of leased layers: a third waits and times out.
  auto l2 = cache.AcquireSync(key(2), (*model)->layer(2)->size, load(2), &hit);
  EXPECT_EQ(l2.status().code(), absl::StatusCode::kResourceExhausted) << l2.status();
  EXPECT_LE(cache.stats().peak_bytes, cache_options.budget);
  // Releasing layer 1 (no lease left) lets layer 2 in, evicting it; layer 0
  // is still leased twice and stays.
  const Block* block1 = l1->data().arena.get();
  (void)block1;
  l1->Reset();
  auto l2b = cache.AcquireSync(key(2), (*model)->layer(2)->size, load(2), &hit);
  ASSERT_TRUE(l2b.ok()) << l2b.status();
  EXPECT_FALSE(cache.Contains(key(1)));
  EXPECT_TRUE(cache.Contains(key(0)));
  EXPECT_GE(cache.stats().evictions, 1u);
  EXPECT_LE(cache.stats().peak_bytes, cache_options.budget);
  // The layers are right.
  std::vector<uint8_t> got = CopyBack(*api_, *l2b->data().arena);
  auto host = (*model)->LoadLayer(2, host_arenas_.get(), nullptr, nullptr);
  ASSERT_TRUE(host.ok()) << host.status();
  EXPECT_EQ(0, std::memcmp(got.data(), (*host)->arena->bytes().data(), got.size()));
  l0->Reset();
  l0b->Reset();
  l2b->Reset();
  cache.WaitIdle();
}

TEST_F(DeviceBackendTest, ArenaHandleOpensInAnotherDeviceApi) {
  testing::SyntheticModelDir dir({.layers = 2, .hidden = 64, .vocab = 96});
  ASSERT_TRUE(dir.status().ok()) << dir.status();
  auto model = Model::Open(dir.bs_path(), {});
  ASSERT_TRUE(model.ok()) << model.status();
  Pipeline pipeline(PipelineOptions{}, nullptr);
  auto data = pipeline.Load(**model, 1, *backend_);
  ASSERT_TRUE(data.ok()) << data.status();
  v1::CudaIpcMemory cuda;
  FillCudaMemory(**data, backend_->device(), backend_->emulated(), &cuda);
  EXPECT_TRUE(cuda.emulated());
  EXPECT_EQ(cuda.gpu_uuid(), backend_->device());
  EXPECT_EQ(cuda.ipc_handle().size(), gpu::kIpcHandleBytes);
  EXPECT_EQ(cuda.size(), (*model)->layer(1)->size);
  EXPECT_EQ(cuda.arena_size(), 8ull << 20);
  // Another process's view (a second emulated DeviceApi instance).
  gpu::EmulatedDeviceOptions options;
  options.memory_dir = mem_dir_;
  auto client = gpu::MakeEmulatedDeviceApi(options);
  gpu::IpcHandle handle;
  std::memcpy(handle.data(), cuda.ipc_handle().data(), handle.size());
  auto base = client->IpcOpenMemHandle(0, handle);
  ASSERT_TRUE(base.ok()) << base.status();
  std::vector<uint8_t> got(cuda.size());
  auto stream = client->CreateStream(0);
  ASSERT_TRUE(stream.ok());
  ASSERT_TRUE(client->MemcpyAsync(got.data(), *base + cuda.arena_offset(), got.size(),
                                  gpu::CopyKind::kDeviceToHost, *stream)
                  .ok());
  ASSERT_TRUE(client->StreamSynchronize(*stream).ok());
  EXPECT_EQ(got, CopyBack(*api_, *(*data)->arena));
  EXPECT_TRUE(client->DestroyStream(*stream).ok());
  EXPECT_TRUE(client->IpcCloseMemHandle(0, *base).ok());
}

}  // namespace
}  // namespace bigsmall::daemon
