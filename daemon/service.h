// The bigsmall.v1.BigSmall gRPC service (callback API): model registry,
// streaming sessions with leases, and the admin calls.
#ifndef BIGSMALL_DAEMON_SERVICE_H_
#define BIGSMALL_DAEMON_SERVICE_H_

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bigsmall/v1/bigsmall.grpc.pb.h"
#include "codec/thread_pool.h"
#include "daemon/config.h"
#include "daemon/layer_cache.h"
#include "daemon/metrics.h"
#include "daemon/model.h"

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

  const DaemonConfig& config() const { return config_; }
  LayerCache& cache() { return *cache_; }
  Metrics* metrics() { return metrics_; }
  std::atomic<int32_t> active_sessions{0};
  // Calls of this service that have started and not reached OnDone (every
  // method, unary ones included). The SIGTERM drain waits for these only:
  // idle connections, health watches and reflection streams do not hold it.
  std::atomic<int32_t> calls_in_flight{0};
  std::atomic<uint64_t> next_lease_id{1};

 private:
  void FillSummary(const Model& model, v1::ModelSummary* summary);
  LayerCache::LoadFn Loader(const std::shared_ptr<Model>& model, int32_t index);

  const DaemonConfig config_;
  const std::shared_ptr<ArenaPool> arenas_;
  Metrics* metrics_;
  ModelOptions model_options_;
  const std::chrono::steady_clock::time_point start_;
  // Destruction order matters: the cache waits for loads that run on
  // load_pool_ and decode on decode_pool_; blocking RPC work (rpc_pool_)
  // may wait on the cache.
  ThreadPool decode_pool_;
  ThreadPool load_pool_;
  std::unique_ptr<LayerCache> cache_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Model>> by_path_;  // realpath -> model
  std::map<std::string, std::shared_ptr<Model>> by_id_;
  ThreadPool rpc_pool_;
};

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_SERVICE_H_
