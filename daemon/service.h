// The bigsmall.v1.BigSmall gRPC service (callback API): thin reactors over
// the model registry (daemon/registry.h), the session protocol core
// (daemon/session.h) and the tensor copier (daemon/tensor_copy.h), plus the
// admin calls.
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
#include "daemon/layer_cache.h"
#include "daemon/metrics.h"
#include "daemon/model.h"
#include "daemon/registry.h"
#include "daemon/session.h"

namespace bigsmall::daemon {

inline constexpr char kVersion[] = "0.1.0";

grpc::Status ToGrpcStatus(const absl::Status& status);

class BigSmallService final : public v1::BigSmall::CallbackService {
 public:
  // `arenas`: where decoded layers live (MakeHostArenaPool over this
  // instance's ShmDir).
  BigSmallService(const DaemonConfig& config, std::shared_ptr<ArenaPool> arenas, Metrics* metrics);
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
  absl::StatusOr<std::shared_ptr<Model>> Open(const std::string& path, bool* already_open);
  absl::StatusOr<std::shared_ptr<Model>> Find(const std::string& model_id);
  // Acquires a layer of a model through the cache (async).
  void AcquireLayer(const std::shared_ptr<Model>& model, int32_t index,
                    LayerCache::Callback done);
  // Starts loading layers ahead without leasing them.
  void PrefetchLayer(const std::shared_ptr<Model>& model, int32_t index);
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
  LayerCache::LoadFn Loader(const std::shared_ptr<Model>& model, int32_t index);
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
  std::unique_ptr<LayerCache> cache_;
  std::unique_ptr<ModelRegistry> registry_;
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
