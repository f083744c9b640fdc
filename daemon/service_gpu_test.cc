// BigSmallService's GPU wiring in process: the runtime chosen per
// --gpu-backend, devices resolved by name and UUID, device layers through
// the per-GPU cache, and their stats.
#include <future>

#include "absl/strings/str_cat.h"
#include "daemon/device_backend.h"
#include "daemon/host_arena.h"
#include "daemon/service.h"
#include "daemon/test_model_util.h"
#include "gtest/gtest.h"

namespace bigsmall::daemon {
namespace {

class ServiceGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(model_dir_.status().ok()) << model_dir_.status();
    config_.model_dirs = {model_dir_.dir()};
    config_.shm_dir = model_dir_.dir() + "/shm";
    config_.session_idle_seconds = 0;
    config_.gpu_memory = 64ull << 20;
    config_.gpu_arena_size = 4ull << 20;
    ASSERT_TRUE(FinalizeConfig(&config_).ok());
    auto shm = ShmDir::Prepare(config_.shm_dir, "");
    ASSERT_TRUE(shm.ok()) << shm.status();
    shm_ = std::move(*shm);
  }

  std::unique_ptr<BigSmallService> MakeService(const std::string& backend) {
    auto gpu = MakeGpuApi(backend, shm_->path());
    EXPECT_TRUE(gpu.ok()) << gpu.status();
    if (!gpu.ok()) return nullptr;
    return std::make_unique<BigSmallService>(config_, MakeHostArenaPool(shm_), nullptr,
                                             std::move(gpu->api), gpu->unavailable);
  }

  static v1::Device Cuda(const std::string& name, const std::string& uuid = "") {
    v1::Device d;
    d.set_kind(v1::DEVICE_KIND_CUDA);
    d.set_name(name);
    d.set_gpu_uuid(uuid);
    return d;
  }

  testing::SyntheticModelDir model_dir_{{.layers = 3, .hidden = 64, .vocab = 96}};
  DaemonConfig config_;
  std::shared_ptr<ShmDir> shm_;
};

TEST_F(ServiceGpuTest, GpuBackendChoices) {
  auto none = MakeGpuApi("none", shm_->path());
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->api, nullptr);
  EXPECT_NE(none->unavailable.find("none"), std::string::npos);
  auto emulated = MakeGpuApi("emulated", shm_->path());
  ASSERT_TRUE(emulated.ok()) << emulated.status();
  ASSERT_NE(emulated->api, nullptr);
  EXPECT_STREQ(emulated->api->name(), "emulated");
  auto automatic = MakeGpuApi("auto", shm_->path());
  ASSERT_TRUE(automatic.ok()) << automatic.status();
  auto cuda = MakeGpuApi("cuda", shm_->path());
  if (automatic->api == nullptr) {
    // No CUDA here: auto is none (saying why), an explicit cuda an error.
    EXPECT_FALSE(automatic->unavailable.empty());
    EXPECT_FALSE(cuda.ok());
    EXPECT_NE(cuda.status().message().find("--gpu-backend cuda"), std::string::npos);
  } else {
    EXPECT_STREQ(automatic->api->name(), "cuda");
    EXPECT_TRUE(cuda.ok()) << cuda.status();
  }
  EXPECT_FALSE(MakeGpuApi("metal", shm_->path()).ok());
}

TEST_F(ServiceGpuTest, WithoutAGpuCudaIsFailedPrecondition) {
  auto service = MakeService("none");
  ASSERT_NE(service, nullptr);
  auto gpu = service->ResolveGpu(Cuda("cuda:0"));
  EXPECT_EQ(gpu.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(gpu.status().message().find("no CUDA device available: "), std::string::npos)
      << gpu.status();
  v1::StatsResponse stats;
  service->FillStats(&stats);
  EXPECT_EQ(stats.gpu_backend(), "none");
  EXPECT_EQ(stats.devices_size(), 0);
}

TEST_F(ServiceGpuTest, DevicesResolveByNameAndUuidAndServeLayers) {
  auto service = MakeService("emulated");
  ASSERT_NE(service, nullptr);
  ASSERT_EQ(service->gpus().size(), 1u);
  auto by_name = service->ResolveGpu(Cuda("cuda:0"));
  ASSERT_TRUE(by_name.ok()) << by_name.status();
  const std::string uuid = (*by_name)->backend->device();
  auto by_uuid = service->ResolveGpu(Cuda("", uuid));
  ASSERT_TRUE(by_uuid.ok()) << by_uuid.status();
  EXPECT_EQ(*by_uuid, *by_name);
  for (const std::string bad : {"cuda:3", "GPU-ffffffff-ffff-ffff-ffff-ffffffffffff"}) {
    auto r = service->ResolveGpu(Cuda(bad));
    EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound) << bad;
    EXPECT_NE(r.status().message().find(bad), std::string::npos) << r.status();
  }
  EXPECT_EQ(service->ResolveGpu(Cuda("")).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(service->ResolveGpu(Cuda("gpu0")).status().code(), absl::StatusCode::kInvalidArgument);

  bool already = false;
  auto model = service->Open(model_dir_.bs_path(), &already);
  ASSERT_TRUE(model.ok()) << model.status();
  auto acquire = [&](GpuDevice* device) {
    std::promise<absl::StatusOr<LayerCache::Lease>> done;
    service->AcquireLayer(*model, 1, [&](absl::StatusOr<LayerCache::Lease> lease, bool) {
      done.set_value(std::move(lease));
    }, device);
    return done.get_future().get();
  };
  auto on_device = acquire(*by_name);
  ASSERT_TRUE(on_device.ok()) << on_device.status();
  EXPECT_EQ(on_device->key().device, uuid);
  auto on_host = acquire(nullptr);
  ASSERT_TRUE(on_host.ok()) << on_host.status();
  EXPECT_EQ(on_host->key().device, "host");
  v1::StatsResponse stats;
  service->FillStats(&stats);
  EXPECT_EQ(stats.gpu_backend(), "emulated");
  ASSERT_EQ(stats.devices_size(), 1);
  EXPECT_EQ(stats.devices(0).name(), "cuda:0");
  EXPECT_EQ(stats.devices(0).gpu_uuid(), uuid);
  EXPECT_TRUE(stats.devices(0).emulated());
  EXPECT_EQ(stats.devices(0).cache_entries(), 1u);
  EXPECT_EQ(stats.devices(0).active_leases(), 1u);
  EXPECT_EQ(stats.devices(0).cache_budget_bytes(), config_.gpu_memory);
  EXPECT_EQ(stats.devices(0).layers_decoded(), 1u);
  EXPECT_EQ(stats.active_leases(), 2u);  // host + device
  EXPECT_EQ(stats.cache_entries(), 2u);
  EXPECT_EQ(stats.pipeline_depth(), config_.pipeline_depth);
  ASSERT_EQ(stats.models_size(), 1);
  EXPECT_EQ(stats.models(0).active_leases(), 2u);
  on_device->Reset();
  on_host->Reset();
  stats.Clear();
  service->FillStats(&stats);
  EXPECT_EQ(stats.active_leases(), 0u);
}

}  // namespace
}  // namespace bigsmall::daemon
