#include "daemon/service.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "codec/status_macros.h"
#include "codec/status_util.h"
#include "daemon/admin.h"
#include "daemon/device_arena.h"
#include "daemon/host_arena.h"
#include "daemon/peer.h"
#include "daemon/tensor_copy.h"
#include "daemon/tsan_annotations.h"
#include "spdlog/spdlog.h"

namespace bigsmall::daemon {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl::StatusCode and grpc::StatusCode share their numbering.
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

namespace {

// ---------------------------------------------------------------------------
// Session: SessionCore (daemon/session.h) does the protocol; this adapts it
// to gRPC and to the layer cache.

class CacheLease final : public SessionLease {
 public:
  explicit CacheLease(LayerCache::Lease lease) : lease(std::move(lease)) {}
  LayerCache::Lease lease;
};

// The daemon side of one session; outlives the reactor while loads run.
class ServiceSessionEnv final : public SessionEnv {
 public:
  explicit ServiceSessionEnv(BigSmallService* service) : service_(service) {}

  absl::StatusOr<Begun> Begin(const v1::StartStream& start) override {
    ASSIGN_OR_RETURN(std::shared_ptr<Model> model, service_->Find(start.model_id()));
    if (start.device().kind() == v1::DEVICE_KIND_CUDA) {
      ASSIGN_OR_RETURN(device_, service_->ResolveGpu(start.device()));
    } else if (start.device().kind() != v1::DEVICE_KIND_HOST) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown device kind ", static_cast<int>(start.device().kind())));
    }
    const DaemonConfig& config = service_->config();
    uint32_t window = start.window() == 0 ? config.default_window : start.window();
    if (window > config.max_window) {
      return absl::InvalidArgumentError(
          absl::StrCat("window ", window, " exceeds the daemon's max_window ", config.max_window));
    }
    RETURN_IF_ERROR(service_->AdmitSession(window));
    model_ = std::move(model);
    window_ = window;
    model_->active_sessions.fetch_add(1);
    Begun begun;
    begun.num_layers = model_->num_layers();
    begun.has_non_layer = !model_->layer(-1)->tensors.empty();
    begun.window = window;
    return begun;
  }

  void End() override {
    model_->active_sessions.fetch_sub(1);
    service_->EndSession(window_);
  }

  void Acquire(int32_t layer, AcquireDone done) override {
    // Host and device leases alike: dropped by the session core when the
    // call ends (OnDone, also when the client dies).
    service_->AcquireLayer(
        model_, layer,
        [done = std::move(done)](absl::StatusOr<LayerCache::Lease> lease, bool hit) {
          if (!lease.ok()) {
            done(lease.status(), hit);
            return;
          }
          done(std::unique_ptr<SessionLease>(new CacheLease(std::move(*lease))), hit);
        },
        device_);
  }

  void Prefetch(int32_t layer) override { service_->PrefetchLayer(model_, layer, device_); }

  void FillHandle(int32_t layer, const SessionLease& lease, bool hit,
                  v1::LayerHandle* handle) override {
    const LayerData& data = static_cast<const CacheLease&>(lease).lease.data();
    handle->set_model_id(model_->id());
    *handle->mutable_layer() =
        layer < 0 ? model_->description().non_layer() : model_->description().layers(layer);
    if (device_ != nullptr) {
      FillCudaMemory(data, device_->backend->device(), device_->backend->emulated(),
                     handle->mutable_memory()->mutable_cuda());
      // The client may keep this arena's IPC mapping open until its call
      // ends; the arena must not be freed before that (device_arena.h).
      std::lock_guard<std::mutex> lock(arenas_mu_);
      handed_arenas_.emplace(data.arena->arena_id(), data.arena->shared_arena());
    } else {
      FillHostMemory(data, handle->mutable_memory()->mutable_host());
    }
    handle->set_lease_id(service_->next_lease_id.fetch_add(1));
    handle->set_cache_hit(hit);
    model_->layers_served.fetch_add(1);
    if (service_->metrics() != nullptr) service_->metrics()->AddLayerServed();
  }

 private:
  BigSmallService* const service_;
  std::shared_ptr<Model> model_;
  GpuDevice* device_ = nullptr;  // null: host memory
  uint32_t window_ = 0;
  // Device arenas handed to this session, kept allocated until it ends (the
  // env lives until the call and its loads are over).
  std::mutex arenas_mu_;
  std::map<uint64_t, std::shared_ptr<Arena>> handed_arenas_;
};

class SessionReactor final
    : public grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse>,
      public SessionSink {
 public:
  SessionReactor(BigSmallService* service, grpc::CallbackServerContext* ctx)
      : service_(service), ctx_(ctx) {
    service->calls_in_flight.fetch_add(1);
    SessionOptions options;
    options.prefetch = service->config().prefetch;
    options.idle_timeout = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(service->config().session_idle_seconds));
    core_ = std::make_shared<SessionCore>(std::make_shared<ServiceSessionEnv>(service), this,
                                          options);
    service->TrackSession(core_);
    handoff_.Mark();
    StartRead(&request_);
  }

  // gRPC events.
  void OnReadDone(bool ok) override {
    handoff_.Mark();
    if (!ok) {
      core_->OnHalfClose();  // half-close (or the call went away)
      return;
    }
    bool more = core_->OnRequest(request_);
    handoff_.Mark();
    if (more) StartRead(&request_);
  }
  void OnWriteDone(bool ok) override {
    handoff_.Mark();
    core_->OnWriteDone(ok);
  }
  void OnCancel() override {
    handoff_.Mark();
    core_->OnCancel();
  }
  void OnDone() override {
    handoff_.Mark();
    core_->OnDone();
    BigSmallService* service = service_;
    delete this;
    service->calls_in_flight.fetch_sub(1);
  }

  // SessionSink: one at a time, never under the core's lock.
  void Write(v1::SessionResponse response) override {
    response_ = std::move(response);
    handoff_.Mark();
    StartWrite(&response_);
  }
  void Finish(const absl::Status& status) override {
    if (!status.ok() && !absl::IsCancelled(status)) {
      service_->RecordError(status);
      spdlog::info("session ended: {}", status.ToString());
    }
    handoff_.Mark();
    ServerBidiReactor::Finish(ToGrpcStatus(status));
  }
  void Abort() override { ctx_->TryCancel(); }

 private:
  BigSmallService* const service_;
  grpc::CallbackServerContext* const ctx_;
  v1::SessionRequest request_;
  v1::SessionResponse response_;
  std::shared_ptr<SessionCore> core_;
  Handoff handoff_;
};

// ---------------------------------------------------------------------------
// GetTensors: copies tensors out in chunks, fully asynchronous: a layer is
// acquired through a cache callback and the next chunk is written from
// OnWriteDone, so a slow reader or a layer load never holds an RPC thread.
// One operation (a write or an acquire) is outstanding at a time.
class GetTensorsReactor final : public grpc::ServerWriteReactor<v1::TensorChunk> {
 public:
  GetTensorsReactor(BigSmallService* service, const v1::GetTensorsRequest& request)
      : service_(service) {
    service_->calls_in_flight.fetch_add(1);
    auto model = service_->Find(request.model_id());
    if (!model.ok()) {
      End(model.status());
      return;
    }
    model_ = std::move(*model);
    model_->active_calls.fetch_add(1);
    auto items = PlanTensorCopy(*model_, request);
    if (!items.ok()) {
      End(items.status());
      return;
    }
    copier_ = std::make_unique<TensorCopier>(std::move(*items),
                                             TensorChunkBytes(request.chunk_bytes()));
    Pump();
  }

  void OnWriteDone(bool ok) override {
    handoff_.Mark();
    if (!ok || cancelled_.load()) {
      End(absl::CancelledError("the client went away"));
      return;
    }
    Pump();
  }
  void OnCancel() override {
    handoff_.Mark();
    cancelled_.store(true);
  }
  void OnDone() override {
    handoff_.Mark();
    lease_.Reset();
    if (model_ != nullptr) model_->active_calls.fetch_sub(1);
    BigSmallService* service = service_;
    delete this;
    service->calls_in_flight.fetch_sub(1);
  }

 private:
  void Pump() {
    int32_t layer = 0;
    switch (copier_->Next(&message_, &layer)) {
      case TensorCopier::Step::kChunk:
        handoff_.Mark();
        StartWrite(&message_);
        return;
      case TensorCopier::Step::kDone:
        End(absl::OkStatus());
        return;
      case TensorCopier::Step::kNeedLayer:
        lease_.Reset();
        service_->AcquireLayer(model_, layer,
                               [this, layer](absl::StatusOr<LayerCache::Lease> lease, bool) {
                                 handoff_.Mark();  // a loader thread
                                 if (!lease.ok()) {
                                   End(lease.status());
                                   return;
                                 }
                                 if (cancelled_.load()) {
                                   End(absl::CancelledError("the client went away"));
                                   return;
                                 }
                                 lease_ = std::move(*lease);
                                 absl::Span<uint8_t> bytes = lease_.data().arena->bytes();
                                 copier_->SetLayer(layer, bytes.data(), bytes.size());
                                 Pump();
                               });
        return;
    }
  }
  void End(const absl::Status& status) {
    if (!status.ok() && !absl::IsCancelled(status)) service_->RecordError(status);
    lease_.Reset();
    handoff_.Mark();
    Finish(ToGrpcStatus(status));  // OnDone may delete this: nothing after
  }

  BigSmallService* const service_;
  std::shared_ptr<Model> model_;
  std::unique_ptr<TensorCopier> copier_;
  LayerCache::Lease lease_;
  std::atomic<bool> cancelled_{false};
  v1::TensorChunk message_;
  Handoff handoff_;
};

PipelineOptions MakePipelineOptions(const DaemonConfig& config) {
  PipelineOptions options;
  options.depth = config.pipeline_depth;
  options.staging_bytes = config.staging_bytes;
  // FinalizeConfig has checked it.
  auto fault = ParseFaultStaging(config.fault_staging);
  if (fault.ok()) options.fault_staging_layer = *fault;
  return options;
}

DecoderImpl DecoderFrom(const DaemonConfig& config) {
  // FinalizeConfig has checked the name; an unchecked config (tests) that
  // names no decoder we know decodes with the best one, and says so.
  auto impl = ParseDecoderImpl(config.decoder);
  if (!impl.ok()) spdlog::error("{}; decoding with the best decoder", impl.status().ToString());
  return impl.ok() ? *impl : DecoderImpl::kAuto;
}

RegistryOptions MakeRegistryOptions(const DaemonConfig& config, const ModelOptions& model_options) {
  RegistryOptions options;
  options.roots = config.allowed_roots.empty() ? config.model_dirs : config.allowed_roots;
  options.max_models = config.max_models;
  options.max_description_bytes = config.max_description_bytes;
  options.model_options = model_options;
  return options;
}

}  // namespace

// ---------------------------------------------------------------------------

BigSmallService::BigSmallService(const DaemonConfig& config, std::shared_ptr<ArenaPool> arenas,
                                 Metrics* metrics, std::unique_ptr<gpu::DeviceApi> gpu,
                                 std::string gpu_unavailable)
    : config_(config),
      arenas_(std::move(arenas)),
      metrics_(metrics),
      start_(std::chrono::steady_clock::now()),
      decode_pool_(config.decode_threads),
      load_pool_(config.load_threads),
      pipeline_(MakePipelineOptions(config), metrics),
      host_backend_(arenas_.get(), &decode_pool_, DecoderFrom(config)),
      gpu_unavailable_(std::move(gpu_unavailable)),
      open_pool_(static_cast<int>(std::max<uint32_t>(config.open_threads, 1))) {
  auto backend = ParseIoBackend(config.io);
  model_options_.io.backend = backend.ok() ? *backend : IoBackend::kAuto;
  model_options_.io.direct = config.direct;
  model_options_.io.queue_depth = config.uring_depth;
  model_options_.io.chunk_bytes = static_cast<uint32_t>(config.read_chunk);
  model_options_.impl = DecoderFrom(config);
  model_options_.fault_spec = config.debug_fault;
  LayerCache::Options cache_options;
  cache_options.budget = config.cache_budget;
  cache_options.granularity = kArenaAlignment;  // a layer costs whole arena pages
  cache_options.admission_timeout = std::chrono::milliseconds(
      static_cast<int64_t>(config.admission_timeout_seconds * 1000));
  cache_ = std::make_unique<LayerCache>(
      cache_options, [this](std::function<void()> task) { load_pool_.Schedule(std::move(task)); },
      metrics_);
  SetUpGpus(std::move(gpu));
  RegistryOptions registry = MakeRegistryOptions(config_, model_options_);
  registry.busy = [this](const Model& m) { return ModelBusy(m); };
  registry.dropped = [this](const std::shared_ptr<Model>& m) { ModelDropped(m); };
  registry_ = std::make_unique<ModelRegistry>(std::move(registry));
  for (const std::string& root : registry_->root_paths()) {
    spdlog::info("serving models beneath {}", EscapeForLog(root));
  }
  if (config_.hub) {
    auto hub = HubModels::Create(config_, metrics_);
    if (hub.ok()) {
      hub_ = std::move(*hub);
    } else {
      hub_unavailable_ = std::string(hub.status().message());
      spdlog::error("Hugging Face Hub models are off: {}", hub_unavailable_);
    }
  } else {
    hub_unavailable_ = "the daemon runs with --no-hub";
  }
  if (config_.session_idle_seconds > 0) {
    sweeper_ = std::thread([this] { SweepIdleSessions(); });
  }
}

BigSmallService::~BigSmallService() {
  {
    std::lock_guard<std::mutex> lock(sweep_mu_);
    stopping_ = true;
  }
  sweep_cv_.notify_all();
  if (sweeper_.joinable()) sweeper_.join();
  for (LayerCache* cache : caches()) cache->WaitIdle();
}

void BigSmallService::SetUpGpus(std::unique_ptr<gpu::DeviceApi> gpu) {
  gpu_api_ = std::move(gpu);
  if (gpu_api_ == nullptr) {
    spdlog::info("no GPU backend: {}; CUDA sessions are refused, host sessions work",
                 gpu_unavailable_);
    return;
  }
  absl::StatusOr<int> count = gpu_api_->DeviceCount();
  if (!count.ok()) {
    gpu_unavailable_ = std::string(count.status().message());
    spdlog::warn("GPU backend {}: {}", gpu_api_->name(), gpu_unavailable_);
    return;
  }
  DeviceBackendOptions backend_options;
  backend_options.max_idle_staging = config_.staging_bytes;
  for (int i = 0; i < *count; ++i) {
    auto gpu_device = std::make_unique<GpuDevice>();
    gpu_device->ordinal = i;
    gpu_device->name = absl::StrCat("cuda:", i);
    gpu_device->arenas = MakeDeviceArenaPool(gpu_api_.get(), i, config_.gpu_arena_size);
    auto backend = DeviceBackend::Create(gpu_api_.get(), i, gpu_device->arenas.get(), backend_options);
    if (!backend.ok()) {
      spdlog::warn("{}: not used: {}", gpu_device->name, backend.status().ToString());
      continue;
    }
    gpu_device->backend = std::move(*backend);
    const gpu::DeviceInfo& info = gpu_device->backend->info();
    LayerCache::Options cache_options;
    // The budget: gpu_memory, at most 90% of the device's memory.
    cache_options.budget = config_.gpu_memory;
    if (info.memory_bytes > 0) {
      cache_options.budget = std::min<uint64_t>(cache_options.budget, info.memory_bytes / 10 * 9);
    }
    cache_options.granularity = kArenaAlignment;
    cache_options.admission_timeout = std::chrono::milliseconds(
        static_cast<int64_t>(config_.admission_timeout_seconds * 1000));
    gpu_device->cache = std::make_unique<LayerCache>(
        cache_options, [this](std::function<void()> task) { load_pool_.Schedule(std::move(task)); },
        nullptr);
    spdlog::info("{} ({}, {}, {} MiB): {} backend, layer budget {} MiB, arenas of {} MiB",
                 gpu_device->name, EscapeForLog(info.name), info.uuid, info.memory_bytes >> 20,
                 gpu_api_->name(), cache_options.budget >> 20, config_.gpu_arena_size >> 20);
    gpus_.push_back(std::move(gpu_device));
  }
  if (gpus_.empty() && gpu_unavailable_.empty()) gpu_unavailable_ = "no usable GPU";
  if (!gpus_.empty()) gpu_unavailable_.clear();
}

std::vector<LayerCache*> BigSmallService::caches() {
  std::vector<LayerCache*> out = {cache_.get()};
  for (const auto& g : gpus_) out.push_back(g->cache.get());
  return out;
}

absl::StatusOr<GpuDevice*> BigSmallService::ResolveGpu(const v1::Device& device) {
  if (gpus_.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("no CUDA device available: ", gpu_unavailable_));
  }
  const std::string& name = device.gpu_uuid().empty() ? device.name() : device.gpu_uuid();
  if (name.empty()) {
    return absl::InvalidArgumentError(
        "a CUDA device needs Device.gpu_uuid or Device.name (\"cuda:N\")");
  }
  absl::StatusOr<int> ordinal = gpu::ResolveDevice(*gpu_api_, name);
  if (!ordinal.ok()) {
    return absl::Status(ordinal.status().code(),
                        absl::StrCat("device '", EscapeForLog(name, 128), "': ",
                                     ordinal.status().message()));
  }
  for (const auto& g : gpus_) {
    if (g->ordinal == *ordinal) return g.get();
  }
  return absl::NotFoundError(
      absl::StrCat("device '", EscapeForLog(name, 128), "' is not used by this daemon"));
}

void BigSmallService::RecordError(const absl::Status& status) {
  if (metrics_ != nullptr) metrics_->AddError(absl::StatusCodeToString(status.code()));
}

bool BigSmallService::ModelBusy(const Model& model) {
  if (model.active_sessions.load() > 0 || model.active_calls.load() > 0) return true;
  for (LayerCache* cache : caches()) {
    if (cache->UsageOf(model.cache_key()).leases > 0) return true;
  }
  return false;
}

void BigSmallService::ModelDropped(const std::shared_ptr<Model>& model) {
  // Its unleased layers go now; leased ones when their leases end.
  const std::string key = model->cache_key();
  for (LayerCache* cache : caches()) cache->Evict([&](const LayerKey& k) { return k.model == key; });
  if (metrics_ != nullptr) metrics_->SetModels(static_cast<int64_t>(registry_->size()));
}

absl::StatusOr<std::shared_ptr<Model>> BigSmallService::Open(const std::string& path,
                                                             bool* already_open) {
  *already_open = false;
  ASSIGN_OR_RETURN(ModelRegistry::Opened opened,
                   IsHubModelName(path) ? OpenHub(path) : registry_->Open(path));
  *already_open = opened.already_open;
  if (!opened.already_open) {
    const Model& model = *opened.model;
    if (metrics_ != nullptr) metrics_->SetModels(static_cast<int64_t>(registry_->size()));
    spdlog::info("opened model {} ({}): {} layers, {} tensors, io={}", model.id(),
                 EscapeForLog(model.path()), model.num_layers(),
                 model.description().num_tensors(),
                 IsHubModelName(path) ? "hub" : IoBackendName(model.io_backend()));
  }
  return opened.model;
}

absl::StatusOr<ModelRegistry::Opened> BigSmallService::OpenHub(const std::string& name) {
  if (hub_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("OpenModel: '", EscapeForLog(name),
                     "' names a Hugging Face Hub model, which this daemon does not serve: ",
                     hub_unavailable_));
  }
  ASSIGN_OR_RETURN(std::shared_ptr<const hub::RepoInfo> repo, hub_->Resolve(name));
  const std::string key = HubModels::ModelPath(*repo);
  ASSIGN_OR_RETURN(ModelRegistry::Opened opened,
                   registry_->OpenKeyed(key, repo->commit,
                                        [&] { return hub_->Open(repo, model_options_); }));
  // Also for a model already open: a fill that failed is tried again.
  hub_->Fill(repo);
  return opened;
}

absl::StatusOr<std::shared_ptr<Model>> BigSmallService::Find(const std::string& model_id) {
  return registry_->Find(model_id);
}

absl::Status BigSmallService::AdmitSession(uint32_t window) {
  std::lock_guard<std::mutex> lock(admit_mu_);
  if (sessions_ >= config_.max_sessions) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the daemon already streams ", sessions_, " sessions (max_sessions ",
        config_.max_sessions, "); retry later"));
  }
  if (total_window_ + window > config_.max_total_window) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "window ", window, " does not fit: started sessions hold windows of ", total_window_,
        " layers in all (max_total_window ", config_.max_total_window, "); retry later or ask less"));
  }
  ++sessions_;
  total_window_ += window;
  active_sessions.fetch_add(1);
  if (metrics_ != nullptr) metrics_->SetSessions(active_sessions.load());
  return absl::OkStatus();
}

void BigSmallService::EndSession(uint32_t window) {
  std::lock_guard<std::mutex> lock(admit_mu_);
  --sessions_;
  total_window_ -= window;
  active_sessions.fetch_sub(1);
  if (metrics_ != nullptr) metrics_->SetSessions(active_sessions.load());
}

void BigSmallService::TrackSession(const std::shared_ptr<SessionCore>& core) {
  if (config_.session_idle_seconds <= 0) return;
  std::lock_guard<std::mutex> lock(sweep_mu_);
  sessions_tracked_.push_back(core);
}

void BigSmallService::SweepIdleSessions() {
  const auto period = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::duration<double>(std::min(1.0, config_.session_idle_seconds / 4)));
  std::unique_lock<std::mutex> lock(sweep_mu_);
  while (!stopping_) {
    sweep_cv_.wait_for(lock, std::max(period, std::chrono::milliseconds(10)));
    if (stopping_) break;
    std::vector<std::shared_ptr<SessionCore>> live;
    std::vector<std::weak_ptr<SessionCore>> kept;
    for (auto& weak : sessions_tracked_) {
      if (auto core = weak.lock()) {
        live.push_back(std::move(core));
        kept.push_back(std::move(weak));
      }
    }
    sessions_tracked_.swap(kept);
    lock.unlock();
    for (const auto& core : live) core->CheckIdle();
    live.clear();
    lock.lock();
  }
}

LayerCache::LoadFn BigSmallService::Loader(const std::shared_ptr<Model>& model, int32_t index,
                                           GpuDevice* device) {
  return [this, model, index, device]() -> absl::StatusOr<std::shared_ptr<LayerData>> {
    model->layer_decodes.fetch_add(1);
    Backend& backend = device != nullptr ? static_cast<Backend&>(*device->backend)
                                         : static_cast<Backend&>(host_backend_);
    // Fine-tune deltas (issue 11, daemon/model.h BaseLayers): lease the
    // base's layers first, in the same cache (shared with the base's own
    // clients), loaded on this thread when absent (AcquireHere).
    BaseLayers base;
    const LayerPlan* plan = model->layer(index);
    if (model->base() != nullptr && plan != nullptr) {
      LayerCache& cache = device != nullptr ? *device->cache : *cache_;
      const std::string where = device != nullptr ? device->backend->device() : "host";
      for (int32_t b : plan->base_layers) {
        const LayerPlan* base_plan = model->base()->layer(b);
        if (base_plan == nullptr) return absl::InternalError("delta plan names no base layer");
        auto lease = cache.AcquireHere(LayerKey{model->base()->cache_key(), b, where},
                                       std::max<uint64_t>(base_plan->size, 1),
                                       Loader(model->base(), b, device));
        if (!lease.ok()) {
          absl::Status st(lease.status().code(),
                          absl::StrCat("model '", EscapeForLog(model->path()), "' layer ", index,
                                       ": its base layer: ", lease.status().message()));
          spdlog::warn("{}", st.ToString());
          return st;
        }
        base.layers.push_back(&lease->data());
        base.leases.push_back(std::move(*lease));
      }
    }
    auto data = pipeline_.Load(*model, index, backend, base.layers.empty() ? nullptr : &base);
    if (!data.ok()) spdlog::warn("{}", data.status().ToString());
    return data;
  };
}

void BigSmallService::AcquireLayer(const std::shared_ptr<Model>& model, int32_t index,
                                   LayerCache::Callback done, GpuDevice* device) {
  const LayerPlan* plan = model->layer(index);
  if (plan == nullptr) {
    done(absl::OutOfRangeError(absl::StrCat("layer ", index, " out of range")), false);
    return;
  }
  LayerCache& cache = device != nullptr ? *device->cache : *cache_;
  const std::string where = device != nullptr ? device->backend->device() : "host";
  cache.Acquire(LayerKey{model->cache_key(), index, where}, std::max<uint64_t>(plan->size, 1),
                Loader(model, index, device), std::move(done));
}

void BigSmallService::PrefetchLayer(const std::shared_ptr<Model>& model, int32_t index,
                                    GpuDevice* device) {
  const LayerPlan* plan = model->layer(index);
  if (plan == nullptr) return;
  LayerCache& cache = device != nullptr ? *device->cache : *cache_;
  const std::string where = device != nullptr ? device->backend->device() : "host";
  cache.Prefetch(LayerKey{model->cache_key(), index, where}, std::max<uint64_t>(plan->size, 1),
                 Loader(model, index, device));
}

grpc::ServerUnaryReactor* BigSmallService::OpenModel(grpc::CallbackServerContext* ctx,
                                                     const v1::OpenModelRequest* request,
                                                     v1::OpenModelResponse* response) {
  auto* reactor = new CountedUnaryReactor(&calls_in_flight);
  spdlog::info("OpenModel {} by {}", EscapeForLog(request->model()), PeerForLog(ctx));
  // Opening reads and checks the index: on OpenModel's own bounded pool,
  // never on gRPC's threads (and never blocking on a FIFO: O_NONBLOCK).
  if (pending_opens_.fetch_add(1) >= config_.max_pending_opens) {
    pending_opens_.fetch_sub(1);
    absl::Status busy = absl::ResourceExhaustedError(absl::StrCat(
        "the daemon is already opening ", config_.max_pending_opens, " models; retry later"));
    RecordError(busy);
    reactor->Reply(ToGrpcStatus(busy));
    return reactor;
  }
  open_pool_.Schedule([this, reactor, request, response] {
    bool already = false;
    auto model = Open(request->model(), &already);
    pending_opens_.fetch_sub(1);
    if (!model.ok()) {
      RecordError(model.status());
      spdlog::info("OpenModel {}: {}", EscapeForLog(request->model()), model.status().ToString());
      reactor->Reply(ToGrpcStatus(model.status()));
      return;
    }
    *response->mutable_model() = (*model)->description();
    response->set_already_open(already);
    reactor->Reply(grpc::Status::OK);
  });
  return reactor;
}

grpc::ServerUnaryReactor* BigSmallService::DescribeModel(grpc::CallbackServerContext* ctx,
                                                         const v1::DescribeModelRequest* request,
                                                         v1::ModelDescription* response) {
  auto* reactor = new CountedUnaryReactor(&calls_in_flight);
  auto model = Find(request->model_id());
  if (!model.ok()) {
    RecordError(model.status());
    reactor->Reply(ToGrpcStatus(model.status()));
  } else {
    *response = (*model)->description();
    reactor->Reply(grpc::Status::OK);
  }
  return reactor;
}

grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse>* BigSmallService::Session(
    grpc::CallbackServerContext* ctx) {
  spdlog::info("session by {}", PeerForLog(ctx));
  return new SessionReactor(this, ctx);
}

grpc::ServerWriteReactor<v1::TensorChunk>* BigSmallService::GetTensors(
    grpc::CallbackServerContext* ctx, const v1::GetTensorsRequest* request) {
  return new GetTensorsReactor(this, *request);
}

}  // namespace bigsmall::daemon
