// The bigsmall.v1.BigSmall gRPC service (callback API): thin reactors over
// the model registry (daemon/registry.h), the session protocol core
// (daemon/session.h), the tensor copier (daemon/tensor_copy.h) and the load
// pipeline (daemon/pipeline.h) with its host and device backends; the admin
// calls (ListModels, Evict, GetStats) are in daemon/admin.cc.
//
// Caches: one LayerCache for host memory, and one per GPU (budget
// gpu_memory, the same admission rules) whose layers live in that GPU's
// device arenas; LayerKey.device is "host" or the GPU's UUID, so two
// sessions on one GPU share one copy of a layer.
#ifndef BIGSMALL_DAEMON_SERVICE_H_
#define BIGSMALL_DAEMON_SERVICE_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bigsmall/v1/bigsmall.grpc.pb.h"
#include "codec/thread_pool.h"
#include "daemon/config.h"
#include "daemon/device_backend.h"
#include "daemon/hub_models.h"
#include "daemon/layer_cache.h"
#include "daemon/metrics.h"
#include "daemon/model.h"
#include "daemon/pipeline.h"
#include "daemon/registry.h"
#include "daemon/session.h"

namespace bigsmall::daemon {

inline constexpr char kVersion[] = "0.1.0";

grpc::Status ToGrpcStatus(const absl::Status& status);

// One GPU the daemon decodes into.
struct GpuDevice {
  int ordinal = 0;
  std::string name;  // "cuda:N"
  std::shared_ptr<ArenaPool> arenas;
  std::unique_ptr<DeviceBackend> backend;
  std::unique_ptr<LayerCache> cache;  // destroyed first: its layers use the arenas
};

class BigSmallService final : public v1::BigSmall::CallbackService {
 public:
  // `arenas`: where decoded host layers live (MakeHostArenaPool over this
  // instance's ShmDir). `gpu`: the device runtime (MakeGpuApi), or null
  // with `gpu_unavailable` saying why there is none.
  BigSmallService(const DaemonConfig& config, std::shared_ptr<ArenaPool> arenas, Metrics* metrics,
                  std::unique_ptr<gpu::DeviceApi> gpu = nullptr,
                  std::string gpu_unavailable = "the daemon runs with --gpu-backend none");
  ~BigSmallService() override;

  grpc::ServerUnaryReactor* OpenModel(grpc::CallbackServerContext* ctx,
                                      const v1::OpenModelRequest* request,
                                      v1::OpenModelResponse* response) override;
  grpc::ServerUnaryReactor* DescribeModel(grpc::CallbackServerContext* ctx,
                                          const v1::DescribeModelRequest* request,
                                          v1::ModelDescription* response) override;
  grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse>* Session(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerWriteReactor<v1::TensorChunk>* GetTensors(
      grpc::CallbackServerContext* ctx, const v1::GetTensorsRequest* request) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* ctx,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* Evict(grpc::CallbackServerContext* ctx,
                                  const v1::EvictRequest* request,
                                  v1::EvictResponse* response) override;
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* ctx,
                                     const v1::GetStatsRequest* request,
                                     v1::StatsResponse* response) override;

  // In-process API (used by the RPCs and by unit tests).
  // `path`: an absolute path beneath a model directory, or a Hub model
  // ("owner/repo[@rev]", "hf://owner/repo[@rev]"; daemon/hub_models.h).
  absl::StatusOr<std::shared_ptr<Model>> Open(const std::string& path, bool* already_open);
  absl::StatusOr<std::shared_ptr<Model>> Find(const std::string& model_id);
  // Acquires a layer of a model through the cache of `device` (null: host
  // memory), async.
  void AcquireLayer(const std::shared_ptr<Model>& model, int32_t index,
                    LayerCache::Callback done, GpuDevice* device = nullptr);
  // Starts loading layers ahead without leasing them.
  void PrefetchLayer(const std::shared_ptr<Model>& model, int32_t index,
                     GpuDevice* device = nullptr);
  // The GPU a request names (Device.gpu_uuid, else Device.name "cuda:N"):
  // NOT_FOUND naming an unknown one; FAILED_PRECONDITION "no CUDA device
  // available: <why>" without a GPU backend.
  absl::StatusOr<GpuDevice*> ResolveGpu(const v1::Device& device);
  const std::vector<std::unique_ptr<GpuDevice>>& gpus() const { return gpus_; }
  const Pipeline& pipeline() const { return pipeline_; }
  void FillStats(v1::StatsResponse* stats);
  void RecordError(const absl::Status& status);

  // Session admission (max_sessions, max_total_window): RESOURCE_EXHAUSTED
  // when over; EndSession gives the slot back.
  absl::Status AdmitSession(uint32_t window);
  void EndSession(uint32_t window);
  // Sessions whose idle time is checked.
  void TrackSession(const std::shared_ptr<SessionCore>& core);

  const DaemonConfig& config() const { return config_; }
  LayerCache& cache() { return *cache_; }
  Metrics* metrics() { return metrics_; }
  // Started sessions (admitted, final status not decided yet).
  std::atomic<int32_t> active_sessions{0};
  // Calls of this service that have started and not reached OnDone (every
  // method, unary ones included). The SIGTERM drain waits for these only:
  // idle connections, health watches and reflection streams do not hold it.
  std::atomic<int32_t> calls_in_flight{0};
  std::atomic<uint64_t> next_lease_id{1};

 private:
  void FillSummary(const Model& model, v1::ModelSummary* summary);
  absl::StatusOr<ModelRegistry::Opened> OpenHub(const std::string& name);
  LayerCache::LoadFn Loader(const std::shared_ptr<Model>& model, int32_t index, GpuDevice* device);
  // Every cache: host first, then each GPU's.
  std::vector<LayerCache*> caches();
  void SetUpGpus(std::unique_ptr<gpu::DeviceApi> gpu);
  bool ModelBusy(const Model& model);
  void ModelDropped(const std::shared_ptr<Model>& model);
  void SweepIdleSessions();

  const DaemonConfig config_;
  const std::shared_ptr<ArenaPool> arenas_;
  Metrics* metrics_;
  ModelOptions model_options_;
  const std::chrono::steady_clock::time_point start_;
  // Destruction order matters: the cache waits for loads that run on
  // load_pool_ and decode on decode_pool_.
  ThreadPool decode_pool_;
  ThreadPool load_pool_;
  // The load pipeline and its backends outlive every cache (loads use them).
  Pipeline pipeline_;
  HostBackend host_backend_;
  std::unique_ptr<gpu::DeviceApi> gpu_api_;  // outlives the GPUs' arenas
  std::string gpu_unavailable_;
  std::vector<std::unique_ptr<GpuDevice>> gpus_;
  std::unique_ptr<LayerCache> cache_;
  std::unique_ptr<ModelRegistry> registry_;
  // Hugging Face Hub models (null: off, hub_unavailable_ says why).
  std::unique_ptr<HubModels> hub_;
  std::string hub_unavailable_;
  // OpenModel runs here, never on gRPC's threads; at most
  // max_pending_opens queued or running.
  std::atomic<uint32_t> pending_opens_{0};
  std::mutex admit_mu_;
  uint32_t sessions_ = 0;
  uint64_t total_window_ = 0;
  std::mutex sweep_mu_;
  std::condition_variable sweep_cv_;
  bool stopping_ = false;
  std::vector<std::weak_ptr<SessionCore>> sessions_tracked_;
  std::thread sweeper_;
  ThreadPool open_pool_;  // last: its tasks use everything above
};

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_SERVICE_H_
