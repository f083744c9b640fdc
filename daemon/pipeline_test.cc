// The load pipeline on the host backend: bit-exact layers, its depth and
// staging bounds, staging corruption caught by verification, pread when
// io_uring is refused.
#include "daemon/pipeline.h"

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "codec/thread_pool.h"
#include "daemon/device_arena.h"
#include "daemon/device_backend.h"
#include "daemon/fault_source.h"
#include "daemon/host_arena.h"
#include "daemon/io_uring_source.h"
#include "daemon/metrics.h"
#include "daemon/model.h"
#include "daemon/test_model_util.h"
#include "gtest/gtest.h"

namespace bigsmall::daemon {
namespace {

class PipelineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(model_dir_.status().ok()) << model_dir_.status();
    auto shm = ShmDir::Prepare(model_dir_.dir() + "/shm", "");
    ASSERT_TRUE(shm.ok()) << shm.status();
    arenas_ = MakeHostArenaPool(std::move(*shm));
  }

  std::shared_ptr<Model> Open(const ModelOptions& options = {}) {
    auto model = Model::Open(model_dir_.bs_path(), options);
    EXPECT_TRUE(model.ok()) << model.status();
    return model.ok() ? *model : nullptr;
  }

  void ExpectLayerMatches(const Model& model, int32_t index, const LayerData& data) {
    auto originals = model_dir_.by_name();
    const v1::LayerInfo& info =
        index < 0 ? model.description().non_layer() : model.description().layers(index);
    for (const auto& t : info.tensors()) {
      const auto& orig = originals.at(t.name());
      ASSERT_EQ(t.size(), orig.size());
      EXPECT_EQ(0, memcmp(data.arena->bytes().data() + t.offset(), orig.data(), t.size()))
          << t.name();
    }
  }

  testing::SyntheticModelDir model_dir_{{.layers = 6, .hidden = 64, .vocab = 96}};
  std::shared_ptr<ArenaPool> arenas_;
};

TEST_F(PipelineTest, LoadsEveryLayerBitExact) {
  auto model = Open();
  ASSERT_NE(model, nullptr);
  ThreadPool pool(2);
  Metrics metrics;
  Pipeline pipeline(PipelineOptions{}, &metrics);
  HostBackend backend(arenas_.get(), &pool, DecoderImpl::kAuto);
  for (int32_t i = -1; i < model->num_layers(); ++i) {
    auto data = pipeline.Load(*model, i, backend);
    ASSERT_TRUE(data.ok()) << data.status();
    ExpectLayerMatches(*model, i, **data);
  }
  EXPECT_EQ(pipeline.stats().layers, static_cast<uint64_t>(model->num_layers() + 1));
  EXPECT_EQ(pipeline.stats().in_flight, 0u);
  EXPECT_GT(metrics.bytes_read(), 0u);
}

TEST_F(PipelineTest, OutOfRangeLayerIsAnError) {
  auto model = Open();
  ASSERT_NE(model, nullptr);
  Pipeline pipeline(PipelineOptions{}, nullptr);
  HostBackend backend(arenas_.get(), nullptr, DecoderImpl::kAuto);
  EXPECT_EQ(pipeline.Load(*model, model->num_layers(), backend).status().code(),
            absl::StatusCode::kOutOfRange);
}

// Holds every decode until Open() is called.
class GateBackend final : public Backend {
 public:
  explicit GateBackend(Backend* inner) : inner_(inner) {}
  const std::string& device() const override { return inner_->device(); }
  absl::StatusOr<std::unique_ptr<StagingBuffer>> AllocateStaging(uint64_t bytes) override {
    return inner_->AllocateStaging(bytes);
  }
  absl::StatusOr<std::shared_ptr<LayerData>> Decode(const StagedLayer& layer) override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      ++entered_;
      entered_layers_.push_back(layer.plan->index);
      cv_.notify_all();
      cv_.wait_for(lock, std::chrono::seconds(10), [&] { return open_ || released_ > 0; });
      if (!open_ && released_ > 0) --released_;
    }
    return inner_->Decode(layer);
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  // Lets `n` decodes through.
  void Release(int n) {
    std::lock_guard<std::mutex> lock(mu_);
    released_ += n;
    cv_.notify_all();
  }
  std::vector<int32_t> entered_layers() {
    std::lock_guard<std::mutex> lock(mu_);
    return entered_layers_;
  }
  bool WaitEntered(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] { return entered_ >= n; });
  }

 private:
  Backend* const inner_;
  std::mutex mu_;
  std::condition_variable cv_;
  int entered_ = 0;
  std::vector<int32_t> entered_layers_;
  int released_ = 0;
  bool open_ = false;
};

// Waits (bounded) until `pred(stats)` holds.
bool WaitForStats(const Pipeline& pipeline, const std::function<bool(const Pipeline::Stats&)>& pred) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred(pipeline.stats())) return true;
    std::this_thread::yield();
  }
  return false;
}

TEST_F(PipelineTest, DepthBoundsLayersInFlight) {
  auto model = Open();
  ASSERT_NE(model, nullptr);
  PipelineOptions options;
  options.depth = 2;
  Pipeline pipeline(options, nullptr);
  HostBackend host(arenas_.get(), nullptr, DecoderImpl::kAuto);
  GateBackend backend(&host);
  std::vector<std::thread> threads;
  for (int32_t i = 0; i < model->num_layers(); ++i) {
    threads.emplace_back([&, i] { EXPECT_TRUE(pipeline.Load(*model, i, backend).ok()); });
  }
  // Six loads at once: the first goes alone (it found the pipeline empty),
  // five wait until it is decoded; then two are in the pipeline (read,
  // decoding), three wait.
  const uint32_t layers = static_cast<uint32_t>(model->num_layers());
  ASSERT_TRUE(backend.WaitEntered(1));
  EXPECT_TRUE(WaitForStats(pipeline,
                           [&](const Pipeline::Stats& s) { return s.waiting == layers - 1; }));
  EXPECT_EQ(pipeline.stats().in_flight, 1u);
  backend.Release(1);
  ASSERT_TRUE(backend.WaitEntered(1 + static_cast<int>(options.depth)));
  EXPECT_TRUE(WaitForStats(pipeline, [&](const Pipeline::Stats& s) {
    return s.waiting == layers - 1 - options.depth;
  }));
  EXPECT_EQ(pipeline.stats().in_flight, options.depth);
  backend.Open();
  for (auto& t : threads) t.join();
  EXPECT_EQ(pipeline.stats().max_in_flight, options.depth);
  EXPECT_EQ(pipeline.stats().in_flight, 0u);
  EXPECT_EQ(pipeline.stats().staged_bytes, 0u);
  EXPECT_EQ(pipeline.stats().layers, static_cast<uint64_t>(model->num_layers()));
  EXPECT_GE(pipeline.stats().leaders, 1u);
}

// The first layer into an empty pipeline goes alone until it is decoded
// (every core for it: the layers prefetched behind it neither read nor
// decode meanwhile); then the pipeline fills up to its depth.
TEST_F(PipelineTest, FirstLayerIntoAnEmptyPipelineGoesAloneUntilDecoded) {
  auto model = Open();
  ASSERT_NE(model, nullptr);
  PipelineOptions options;
  options.depth = 3;
  Pipeline pipeline(options, nullptr);
  HostBackend host(arenas_.get(), nullptr, DecoderImpl::kAuto);
  GateBackend backend(&host);
  std::thread first([&] { EXPECT_TRUE(pipeline.Load(*model, 0, backend).ok()); });
  ASSERT_TRUE(backend.WaitEntered(1));
  std::thread second([&] { EXPECT_TRUE(pipeline.Load(*model, 1, backend).ok()); });
  std::thread third([&] { EXPECT_TRUE(pipeline.Load(*model, 2, backend).ok()); });
  EXPECT_TRUE(WaitForStats(pipeline, [](const Pipeline::Stats& s) { return s.waiting == 2; }));
  EXPECT_EQ(pipeline.stats().in_flight, 1u);  // not 3: the first is alone
  backend.Release(1);
  first.join();
  ASSERT_TRUE(backend.WaitEntered(3));  // both behind it, together
  EXPECT_EQ(pipeline.stats().in_flight, 2u);
  backend.Open();
  second.join();
  third.join();
  EXPECT_EQ(pipeline.stats().max_in_flight, 2u);
  EXPECT_EQ(pipeline.stats().leaders, 1u);
}

TEST_F(PipelineTest, StagingBytesBoundTheBytesInFlight) {
  auto model = Open();
  ASSERT_NE(model, nullptr);
  const uint64_t l0 = model->layer(0)->stored_size, l1 = model->layer(1)->stored_size;
  PipelineOptions options;
  options.depth = 8;
  options.staging_bytes = std::max(l0, l1) + std::min(l0, l1) - 1;  // one layer, not two
  Pipeline pipeline(options, nullptr);
  HostBackend host(arenas_.get(), nullptr, DecoderImpl::kAuto);
  GateBackend backend(&host);
  std::thread a([&] { EXPECT_TRUE(pipeline.Load(*model, 0, backend).ok()); });
  ASSERT_TRUE(backend.WaitEntered(1));
  std::thread b([&] { EXPECT_TRUE(pipeline.Load(*model, 1, backend).ok()); });
  // Layer 1 waits for staging room while layer 0 decodes.
  EXPECT_TRUE(WaitForStats(pipeline, [](const Pipeline::Stats& s) { return s.waiting == 1; }));
  EXPECT_EQ(pipeline.stats().in_flight, 1u);
  backend.Open();
  a.join();
  b.join();
  EXPECT_LE(pipeline.stats().max_staged_bytes, options.staging_bytes);
  EXPECT_EQ(pipeline.stats().max_in_flight, 1u);
  EXPECT_EQ(pipeline.stats().layers, 2u);
  // A layer larger than the whole staging budget still loads (alone).
  PipelineOptions tiny;
  tiny.staging_bytes = 1;
  Pipeline small(tiny, nullptr);
  EXPECT_TRUE(small.Load(*model, 0, host).ok());
}

TEST_F(PipelineTest, StagingCorruptionIsDataLossAndNothingIsReturned) {
  auto model = Open();
  ASSERT_NE(model, nullptr);
  PipelineOptions options;
  options.fault_staging_layer = 2;
  Pipeline pipeline(options, nullptr);
  HostBackend backend(arenas_.get(), nullptr, DecoderImpl::kAuto);
  auto bad = pipeline.Load(*model, 2, backend);
  ASSERT_EQ(bad.status().code(), absl::StatusCode::kDataLoss) << bad.status();
  EXPECT_NE(bad.status().message().find("layer 2"), std::string::npos) << bad.status();
  EXPECT_EQ(pipeline.stats().faults_injected, 1u);
  EXPECT_EQ(pipeline.stats().errors, 1u);
  EXPECT_EQ(arenas_->stats().blocks, 0u);  // the block went back
  EXPECT_TRUE(pipeline.Load(*model, 1, backend).ok());  // other layers are fine
}

TEST_F(PipelineTest, DamagedGroupFailsTheCheckStage) {
  auto clean = Open();
  ASSERT_NE(clean, nullptr);
  const BsGroup& group = clean->shard(0).index().groups[clean->layer(1)->groups[0].second];
  ASSERT_TRUE(group.has_checksum) << "the encoder writes format 1.1 group checksums";
  ModelOptions options;
  options.fault_spec = absl::StrCat("flip=", group.offset + group.size / 2);
  auto model = Open(options);
  ASSERT_NE(model, nullptr);
  Pipeline pipeline(PipelineOptions{}, nullptr);
  HostBackend backend(arenas_.get(), nullptr, DecoderImpl::kAuto);
  auto bad = pipeline.Load(*model, 1, backend);
  ASSERT_EQ(bad.status().code(), absl::StatusCode::kDataLoss) << bad.status();
  EXPECT_NE(bad.status().message().find("group checksum"), std::string::npos) << bad.status();
  EXPECT_EQ(arenas_->stats().blocks, 0u);  // never decoded: no block was taken
}

// ReadBulk calls that went through io_uring straight into staging, summed
// over the model's shards (seen through a fault wrapper too).
uint64_t BulkReads(const Model& model, uint64_t* in_flight) {
  uint64_t reads = 0;
  *in_flight = 0;
  for (uint32_t s = 0; s < model.num_shards(); ++s) {
    auto* src = dynamic_cast<IoUringSource*>(&model.shard(s).source());
    if (src == nullptr) return 0;
    reads += src->bulk_reads();
    *in_flight += src->bulk_in_flight();
  }
  return reads;
}

uint64_t GroupsRead(const Model& model) {
  uint64_t groups = 0;
  for (int32_t i = -1; i < model.num_layers(); ++i) groups += model.layer(i)->groups.size();
  return groups;
}

TEST_F(PipelineTest, ReadStageReadsEveryGroupStraightIntoStagingWithIoUring) {
  if (!IoUringAvailable()) {
    GTEST_SKIP() << "io_uring refused in this process: " << IoUringStatus();
  }
  ModelOptions options;
  options.io.backend = IoBackend::kIoUring;
  options.io.split_bytes = 4096;  // several reads in flight per group
  options.io.queue_depth = 4;
  auto model = Open(options);
  ASSERT_NE(model, nullptr);
  Pipeline pipeline(PipelineOptions{}, nullptr);
  HostBackend backend(arenas_.get(), nullptr, DecoderImpl::kAuto);
  for (int32_t i = -1; i < model->num_layers(); ++i) {
    auto data = pipeline.Load(*model, i, backend);
    ASSERT_TRUE(data.ok()) << data.status();
    ExpectLayerMatches(*model, i, **data);
  }
  uint64_t in_flight = 0;
  EXPECT_GE(BulkReads(*model, &in_flight), GroupsRead(*model));
  EXPECT_EQ(in_flight, 0u);
}

TEST_F(PipelineTest, InjectedFaultsApplyToTheDirectReads) {
  // A fault source around the io_uring source: its short reads reassemble
  // bit-exact through ReadBulk, and an EIO on a group fails the load.
  ModelOptions options;
  options.io.split_bytes = 4096;
  options.fault_spec = "short=5000";
  auto model = Open(options);
  ASSERT_NE(model, nullptr);
  Pipeline pipeline(PipelineOptions{}, nullptr);
  HostBackend backend(arenas_.get(), nullptr, DecoderImpl::kAuto);
  for (int32_t i = -1; i < model->num_layers(); ++i) {
    auto data = pipeline.Load(*model, i, backend);
    ASSERT_TRUE(data.ok()) << data.status();
    ExpectLayerMatches(*model, i, **data);
  }
  auto* fault = dynamic_cast<FaultInjectingSource*>(&model->shard(0).source());
  ASSERT_NE(fault, nullptr);
  EXPECT_GE(fault->reads(), GroupsRead(*model));
  const BsGroup& group = model->shard(0).index().groups[model->layer(2)->groups[0].second];
  ModelOptions eio;
  eio.fault_spec = absl::StrCat("eio=", group.offset + group.size - 1);
  auto failing = Open(eio);
  ASSERT_NE(failing, nullptr);
  auto bad = pipeline.Load(*failing, 2, backend);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss) << bad.status();
  EXPECT_NE(bad.status().message().find("injected"), std::string::npos) << bad.status();
}

TEST_F(PipelineTest, DeviceBackendStagingIsReadDirectlyBitExact) {
  // The emulated device backend: groups read into its page-locked staging.
  const std::string mem = model_dir_.dir() + "/devmem";
  ASSERT_EQ(mkdir(mem.c_str(), 0700), 0);
  gpu::EmulatedDeviceOptions device;
  device.memory_dir = mem;
  auto api = gpu::MakeEmulatedDeviceApi(device);
  ASSERT_TRUE(api->DeviceCount().ok()) << api->DeviceCount().status();
  auto device_arenas = MakeDeviceArenaPool(api.get(), 0, 8ull << 20);
  auto backend = DeviceBackend::Create(api.get(), 0, device_arenas.get(), {});
  ASSERT_TRUE(backend.ok()) << backend.status();
  ModelOptions options;
  options.io.split_bytes = 4096;
  auto model = Open(options);
  ASSERT_NE(model, nullptr);
  auto originals = model_dir_.by_name();
  {
    Pipeline pipeline(PipelineOptions{}, nullptr);
    for (int32_t i = -1; i < model->num_layers(); ++i) {
      if (model->layer(i)->tensors.empty()) continue;
      auto data = pipeline.Load(*model, i, **backend);
      ASSERT_TRUE(data.ok()) << data.status();
      const Block& block = *(*data)->arena;
      std::vector<uint8_t> got(block.size());
      auto stream = api->CreateStream(0);
      ASSERT_TRUE(stream.ok()) << stream.status();
      ASSERT_TRUE(api->MemcpyAsync(got.data(), block.bytes().data(), block.size(),
                                   gpu::CopyKind::kDeviceToHost, *stream)
                      .ok());
      ASSERT_TRUE(api->StreamSynchronize(*stream).ok());
      ASSERT_TRUE(api->DestroyStream(*stream).ok());
      const v1::LayerInfo& info =
          i < 0 ? model->description().non_layer() : model->description().layers(i);
      for (const auto& t : info.tensors()) {
        const auto& orig = originals.at(t.name());
        ASSERT_EQ(t.size(), orig.size());
        EXPECT_EQ(0, memcmp(got.data() + t.offset(), orig.data(), t.size())) << t.name();
      }
    }
  }
  uint64_t in_flight = 0;
  if (IoUringAvailable()) EXPECT_GE(BulkReads(*model, &in_flight), GroupsRead(*model));
  EXPECT_EQ(in_flight, 0u);
  backend->reset();
  device_arenas.reset();
}

// Makes io_uring_setup fail with ENOSYS in this thread (as a seccomp
// profile that refuses io_uring does). x86-64 and arm64 syscall numbers.
bool RefuseIoUringSetup() {
  struct sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {static_cast<unsigned short>(sizeof(filter) / sizeof(filter[0])), filter};
  return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
         prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
}

TEST_F(PipelineTest, RefusedIoUringFallsBackToPread) {
  // In a child (gtest re-runs this test alone), io_uring is refused before
  // anything probes it: kAuto opens with pread and every layer loads exactly.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        if (!RefuseIoUringSetup()) _exit(3);
        if (IoUringAvailable()) _exit(4);
        ModelOptions options;
        options.io.split_bytes = 4096;
        auto model = Model::Open(model_dir_.bs_path(), options);
        if (!model.ok() || (*model)->io_backend() != IoBackend::kPread) _exit(5);
        Pipeline pipeline(PipelineOptions{}, nullptr);
        HostBackend backend(arenas_.get(), nullptr, DecoderImpl::kAuto);
        auto originals = model_dir_.by_name();
        for (int32_t i = -1; i < (*model)->num_layers(); ++i) {
          auto data = pipeline.Load(**model, i, backend);
          if (!data.ok()) _exit(6);
          const v1::LayerInfo& info = i < 0 ? (*model)->description().non_layer()
                                            : (*model)->description().layers(i);
          for (const auto& t : info.tensors()) {
            const auto& orig = originals.at(t.name());
            if (memcmp((*data)->arena->bytes().data() + t.offset(), orig.data(), t.size()) != 0) {
              _exit(7);
            }
          }
        }
        _exit(0);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST_F(PipelineTest, DescriptionCarriesDeviceChecksums) {
  auto model = Open();
  ASSERT_NE(model, nullptr);
  const v1::LayerInfo& info = model->description().layers(0);
  ASSERT_GT(info.tensors_size(), 0);
  for (int k = 0; k < info.tensors_size(); ++k) {
    const TensorPlan& tp = model->layer(0)->tensors[k];
    const BsTensor& t = model->shard(tp.shard).index().tensors[tp.tensor];
    ASSERT_TRUE(t.has_device_checksum) << "the encoder writes format 1.1";
    EXPECT_TRUE(info.tensors(k).has_device_checksum());
    EXPECT_EQ(info.tensors(k).device_checksum(), t.device_checksum);
  }
}

TEST_F(PipelineTest, PreadPathLoadsWhereIoUringIsRefused) {
  // Forced pread (what kAuto resolves to where io_uring is refused).
  ModelOptions pread;
  pread.io.backend = IoBackend::kPread;
  auto forced = Open(pread);
  ASSERT_NE(forced, nullptr);
  EXPECT_EQ(forced->io_backend(), IoBackend::kPread);
  ModelOptions automatic;
  auto model = Open(automatic);
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->io_backend(), IoUringAvailable() ? IoBackend::kIoUring : IoBackend::kPread);
  Pipeline pipeline(PipelineOptions{}, nullptr);
  HostBackend backend(arenas_.get(), nullptr, DecoderImpl::kAuto);
  for (const auto& m : {forced, model}) {
    for (int32_t i = -1; i < m->num_layers(); ++i) {
      auto data = pipeline.Load(*m, i, backend);
      ASSERT_TRUE(data.ok()) << data.status();
      ExpectLayerMatches(*m, i, **data);
    }
  }
}

// Recycled arena pages (issue 11): a layer decoded into the pages another
// layer of another model had (poisoned here, gaps included) shows none of
// their bytes: its block's pages equal those of the same layer decoded into
// fresh pages, byte for byte (tensors decoded whole and hash-checked, every
// other byte zeroed).
TEST_F(PipelineTest, RecycledBlocksShowNoByteOfTheLayerOrModelBefore) {
  // Tensors of 60 floats leave gaps between the 256-byte aligned tensors.
  testing::SyntheticModelDir dir_a{{.layers = 3, .hidden = 60, .vocab = 90, .seed = 3}};
  testing::SyntheticModelDir dir_b{{.layers = 3, .hidden = 60, .vocab = 90, .seed = 7}};
  ASSERT_TRUE(dir_a.status().ok() && dir_b.status().ok());
  auto a = Model::Open(dir_a.bs_path(), ModelOptions{});
  auto b = Model::Open(dir_b.bs_path(), ModelOptions{});
  ASSERT_TRUE(a.ok() && b.ok());
  auto shm = ShmDir::Prepare(model_dir_.dir() + "/shm-warm", "");
  ASSERT_TRUE(shm.ok()) << shm.status();
  std::shared_ptr<const ShmDir> dir = std::move(*shm);
  auto warm_pool = MakeHostArenaPool(dir, 1 << 20, /*warm_limit=*/64 << 20);
  auto fresh_pool = MakeHostArenaPool(dir, 1 << 20);
  ThreadPool pool(2);
  HostBackend warm(warm_pool.get(), &pool, DecoderImpl::kAuto);
  HostBackend fresh(fresh_pool.get(), &pool, DecoderImpl::kAuto);
  Pipeline pipeline(PipelineOptions{}, nullptr);
  uint64_t uncovered = 0, zeroed = 0, recycled = 0;
  for (int32_t i = -1; i < (*b)->num_layers(); ++i) {
    SCOPED_TRACE(i);
    ASSERT_EQ((*a)->layer(i)->size, (*b)->layer(i)->size);
    uint64_t covered = 0;
    for (const TensorPlan& tp : (*b)->layer(i)->tensors) covered += tp.size;
    const uint64_t gaps = ArenaCost((*b)->layer(i)->size) - covered;
    uncovered += gaps;
    auto old = pipeline.Load(**a, i, warm);  // into B's last layer's pages, after the first
    ASSERT_TRUE(old.ok()) << old.status();
    if ((*old)->arena->recycled()) {
      ++recycled;
      zeroed += gaps;
    }
    absl::Span<uint8_t> old_pages = (*old)->arena->pages();
    memset(old_pages.data(), 0xa5, old_pages.size());
    old->reset();  // its pages go warm
    auto data = pipeline.Load(**b, i, warm);
    ASSERT_TRUE(data.ok()) << data.status();
    EXPECT_TRUE((*data)->arena->recycled());
    ++recycled;
    zeroed += gaps;
    auto originals = dir_b.by_name();
    const v1::LayerInfo& info =
        i < 0 ? (*b)->description().non_layer() : (*b)->description().layers(i);
    for (const auto& t : info.tensors()) {
      EXPECT_EQ(0, memcmp((*data)->arena->bytes().data() + t.offset(),
                          originals.at(t.name()).data(), t.size()))
          << t.name();
    }
    auto ref = pipeline.Load(**b, i, fresh);
    ASSERT_TRUE(ref.ok()) << ref.status();
    EXPECT_FALSE((*ref)->arena->recycled());
    absl::Span<uint8_t> pages = (*data)->arena->pages();
    absl::Span<uint8_t> ref_pages = (*ref)->arena->pages();
    ASSERT_EQ(pages.size(), ref_pages.size());
    EXPECT_EQ(0, memcmp(pages.data(), ref_pages.data(), pages.size()));
  }
  EXPECT_GT(uncovered, 0u) << "the test model has no gaps: the test proves nothing";
  EXPECT_EQ(warm.stats().zeroed_bytes, zeroed);
  EXPECT_EQ(warm.stats().recycled_blocks, recycled);
  EXPECT_EQ(warm_pool->stats().recycled, recycled);
}

// Layers decode one at a time, each on the whole pool, however many loads
// are in flight (the first layer of a stream is not slowed down by the
// layers prefetched behind it).
TEST_F(PipelineTest, HostLayersDecodeOneAtATimeOnThePool) {
  auto model = Open();
  ASSERT_NE(model, nullptr);
  ThreadPool pool(2);
  PipelineOptions options;
  options.depth = 4;
  Pipeline pipeline(options, nullptr);
  HostBackend host(arenas_.get(), &pool, DecoderImpl::kAuto);
  GateBackend backend(&host);
  std::vector<std::thread> threads;
  std::vector<absl::StatusOr<std::shared_ptr<LayerData>>> results(
      static_cast<size_t>(model->num_layers()), absl::UnknownError("not run"));
  // On a failed ASSERT below, the gate opens and the loads finish before
  // the threads are destroyed (a joinable std::thread would terminate).
  struct Finish {
    GateBackend& gate;
    std::vector<std::thread>& threads;
    ~Finish() {
      gate.Open();
      for (auto& t : threads) {
        if (t.joinable()) t.join();
      }
    }
  } finish{backend, threads};
  for (int32_t i = 0; i < model->num_layers(); ++i) {
    threads.emplace_back([&, i] { results[i] = pipeline.Load(*model, i, backend); });
  }
  const uint32_t layers = static_cast<uint32_t>(model->num_layers());
  ASSERT_TRUE(backend.WaitEntered(1));  // the first goes alone
  // Every other load must be queued before the leader is let go: one that
  // arrives after the pipeline has drained leads a stream of its own (and
  // would sit at the gate alone: the ASan CI saw that once).
  ASSERT_TRUE(WaitForStats(pipeline, [&](const Pipeline::Stats& s) { return s.waiting == layers - 1; }));
  backend.Release(1);
  ASSERT_TRUE(backend.WaitEntered(1 + static_cast<int>(options.depth)));
  backend.Open();  // four decodes at once
  for (auto& t : threads) t.join();
  for (int32_t i = 0; i < model->num_layers(); ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i].status();
    ExpectLayerMatches(*model, i, **results[i]);
  }
  EXPECT_EQ(host.stats().max_concurrent_decodes, 1u);
}

// The host backend keeps idle staging (bounded) and reuses it: a streamed
// model's compressed bytes are read into pages already backed.
TEST_F(PipelineTest, HostStagingIsReusedWithinItsBound) {
  auto model = Open();
  ASSERT_NE(model, nullptr);
  Pipeline pipeline(PipelineOptions{}, nullptr);
  HostBackend host(arenas_.get(), nullptr, DecoderImpl::kAuto);
  for (int32_t i = 0; i < model->num_layers(); ++i) {
    auto data = pipeline.Load(*model, i, host);
    ASSERT_TRUE(data.ok()) << data.status();
    ExpectLayerMatches(*model, i, **data);
  }
  const uint64_t layers = static_cast<uint64_t>(model->num_layers());
  EXPECT_EQ(host.stats().staging_allocated, 1u);
  EXPECT_EQ(host.stats().staging_reused, layers - 1);
  EXPECT_GT(host.stats().idle_staging_bytes, 0u);
  HostBackend none(arenas_.get(), nullptr, DecoderImpl::kAuto, /*max_idle_staging=*/0);
  for (int32_t i = 0; i < 2; ++i) ASSERT_TRUE(pipeline.Load(*model, i, none).ok());
  EXPECT_EQ(none.stats().staging_reused, 0u);
  EXPECT_EQ(none.stats().idle_staging_bytes, 0u);
}

// Loads are admitted in arrival order: a layer asked first is never
// overtaken by prefetches that arrived after it while both waited.
TEST_F(PipelineTest, LoadsAreAdmittedInArrivalOrder) {
  auto model = Open();
  ASSERT_NE(model, nullptr);
  PipelineOptions options;
  options.depth = 1;
  Pipeline pipeline(options, nullptr);
  HostBackend host(arenas_.get(), nullptr, DecoderImpl::kAuto);
  GateBackend backend(&host);
  auto load = [&](int32_t i) {
    auto data = pipeline.Load(*model, i, backend);
    EXPECT_TRUE(data.ok()) << data.status();
  };
  std::thread first(load, 0);
  ASSERT_TRUE(backend.WaitEntered(1));
  std::vector<std::thread> later;
  for (int32_t i = 1; i < model->num_layers(); ++i) {
    later.emplace_back(load, i);
    // Each waits before the next arrives.
    ASSERT_TRUE(WaitForStats(pipeline, [&](const Pipeline::Stats& s) {
      return s.waiting == static_cast<uint32_t>(i);
    }));
  }
  backend.Open();
  first.join();
  for (auto& t : later) t.join();
  const std::vector<int32_t> order = backend.entered_layers();  // the decode stage's order
  ASSERT_EQ(order.size(), static_cast<size_t>(model->num_layers()));
  for (int32_t i = 0; i < model->num_layers(); ++i) EXPECT_EQ(order[i], i);
}

}  // namespace
}  // namespace bigsmall::daemon
