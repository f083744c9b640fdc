#include "daemon/service.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "codec/status_macros.h"
#include "codec/status_util.h"
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

// Hands a reactor's state from the thread that starts a gRPC operation to
// the thread that runs its callback. gRPC orders the two, but inside
// uninstrumented libraries ThreadSanitizer cannot see it; Mark() on both
// sides (after construction, before every StartRead/StartWrite/Finish, and
// first in every callback) makes the order visible. An annotation, not a
// mutex: a mutex member's own first use in the callback thread would race
// with the allocation of the reactor. No-op outside TSan builds.
class Handoff {
 public:
  void Mark() {
    BIGSMALL_TSAN_ACQUIRE(this);
    BIGSMALL_TSAN_RELEASE(this);
  }
};

// A unary reactor that counts its call in `calls_in_flight` until OnDone,
// i.e. until the response and status have left (or the call was cancelled).
// Reply() is the one way to finish it.
class CountedUnaryReactor final : public grpc::ServerUnaryReactor {
 public:
  explicit CountedUnaryReactor(std::atomic<int32_t>* counter) : counter_(counter) {
    counter_->fetch_add(1);
    handoff_.Mark();
  }
  void Reply(const grpc::Status& status) {
    handoff_.Mark();
    Finish(status);  // OnDone may delete this: nothing after
  }
  void OnDone() override {
    handoff_.Mark();
    counter_->fetch_sub(1);
    delete this;
  }

 private:
  std::atomic<int32_t>* const counter_;
  Handoff handoff_;
};


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
    service_->AcquireLayer(model_, layer,
                           [done = std::move(done)](absl::StatusOr<LayerCache::Lease> lease,
                                                    bool hit) {
                             if (!lease.ok()) {
                               done(lease.status(), hit);
                               return;
                             }
                             done(std::unique_ptr<SessionLease>(new CacheLease(std::move(*lease))),
                                  hit);
                           });
  }

  void Prefetch(int32_t layer) override { service_->PrefetchLayer(model_, layer); }

  void FillHandle(int32_t layer, const SessionLease& lease, bool hit,
                  v1::LayerHandle* handle) override {
    const LayerData& data = static_cast<const CacheLease&>(lease).lease.data();
    handle->set_model_id(model_->id());
    *handle->mutable_layer() =
        layer < 0 ? model_->description().non_layer() : model_->description().layers(layer);
    FillHostMemory(data, handle->mutable_memory()->mutable_host());
    handle->set_lease_id(service_->next_lease_id.fetch_add(1));
    handle->set_cache_hit(hit);
    model_->layers_served.fetch_add(1);
    if (service_->metrics() != nullptr) service_->metrics()->AddLayerServed();
  }

 private:
  BigSmallService* const service_;
  std::shared_ptr<Model> model_;
  uint32_t window_ = 0;
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
                                 Metrics* metrics)
    : config_(config),
      arenas_(std::move(arenas)),
      metrics_(metrics),
      start_(std::chrono::steady_clock::now()),
      decode_pool_(config.decode_threads),
      load_pool_(config.load_threads),
      open_pool_(static_cast<int>(std::max<uint32_t>(config.open_threads, 1))) {
  auto backend = ParseIoBackend(config.io);
  model_options_.io.backend = backend.ok() ? *backend : IoBackend::kAuto;
  model_options_.io.direct = config.direct;
  model_options_.io.queue_depth = config.uring_depth;
  model_options_.io.chunk_bytes = static_cast<uint32_t>(config.read_chunk);
  // FinalizeConfig has checked the name; an unchecked config (tests) that
  // names no decoder we know decodes with the best one, and says so.
  auto impl = ParseDecoderImpl(config.decoder);
  if (!impl.ok()) spdlog::error("{}; decoding with the best decoder", impl.status().ToString());
  model_options_.impl = impl.ok() ? *impl : DecoderImpl::kAuto;
  model_options_.fault_spec = config.debug_fault;
  LayerCache::Options cache_options;
  cache_options.budget = config.cache_budget;
  cache_options.granularity = kArenaAlignment;  // a layer costs whole arena pages
  cache_options.admission_timeout = std::chrono::milliseconds(
      static_cast<int64_t>(config.admission_timeout_seconds * 1000));
  cache_ = std::make_unique<LayerCache>(
      cache_options, [this](std::function<void()> task) { load_pool_.Schedule(std::move(task)); },
      metrics_);
  RegistryOptions registry = MakeRegistryOptions(config_, model_options_);
  registry.busy = [this](const Model& m) { return ModelBusy(m); };
  registry.dropped = [this](const std::shared_ptr<Model>& m) { ModelDropped(m); };
  registry_ = std::make_unique<ModelRegistry>(std::move(registry));
  for (const std::string& root : registry_->root_paths()) {
    spdlog::info("serving models beneath {}", EscapeForLog(root));
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
  cache_->WaitIdle();
}

void BigSmallService::RecordError(const absl::Status& status) {
  if (metrics_ != nullptr) metrics_->AddError(absl::StatusCodeToString(status.code()));
}

bool BigSmallService::ModelBusy(const Model& model) {
  if (model.active_sessions.load() > 0 || model.active_calls.load() > 0) return true;
  return cache_->UsageOf(model.cache_key()).leases > 0;
}

void BigSmallService::ModelDropped(const std::shared_ptr<Model>& model) {
  // Its unleased layers go now; leased ones when their leases end.
  const std::string key = model->cache_key();
  cache_->Evict([&](const LayerKey& k) { return k.model == key; });
  if (metrics_ != nullptr) metrics_->SetModels(static_cast<int64_t>(registry_->size()));
}

absl::StatusOr<std::shared_ptr<Model>> BigSmallService::Open(const std::string& path,
                                                             bool* already_open) {
  *already_open = false;
  ASSIGN_OR_RETURN(ModelRegistry::Opened opened, registry_->Open(path));
  *already_open = opened.already_open;
  if (!opened.already_open) {
    const Model& model = *opened.model;
    if (metrics_ != nullptr) metrics_->SetModels(static_cast<int64_t>(registry_->size()));
    spdlog::info("opened model {} ({}): {} layers, {} tensors, io={}", model.id(),
                 EscapeForLog(model.path()), model.num_layers(),
                 model.description().num_tensors(), IoBackendName(model.io_backend()));
  }
  return opened.model;
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

LayerCache::LoadFn BigSmallService::Loader(const std::shared_ptr<Model>& model, int32_t index) {
  return [this, model, index]() -> absl::StatusOr<std::shared_ptr<LayerData>> {
    model->layer_decodes.fetch_add(1);
    auto data = model->LoadLayer(index, arenas_.get(), &decode_pool_, metrics_);
    if (!data.ok()) spdlog::warn("{}", data.status().ToString());
    return data;
  };
}

void BigSmallService::AcquireLayer(const std::shared_ptr<Model>& model, int32_t index,
                                   LayerCache::Callback done) {
  const LayerPlan* plan = model->layer(index);
  if (plan == nullptr) {
    done(absl::OutOfRangeError(absl::StrCat("layer ", index, " out of range")), false);
    return;
  }
  cache_->Acquire(LayerKey{model->cache_key(), index, "host"}, std::max<uint64_t>(plan->size, 1),
                  Loader(model, index), std::move(done));
}

void BigSmallService::PrefetchLayer(const std::shared_ptr<Model>& model, int32_t index) {
  const LayerPlan* plan = model->layer(index);
  if (plan == nullptr) return;
  cache_->Prefetch(LayerKey{model->cache_key(), index, "host"}, std::max<uint64_t>(plan->size, 1),
                   Loader(model, index));
}

void BigSmallService::FillSummary(const Model& model, v1::ModelSummary* s) {
  s->set_model_id(model.id());
  s->set_path(model.path());
  s->set_num_layers(static_cast<uint32_t>(model.num_layers()));
  s->set_original_bytes(model.description().original_bytes());
  s->set_stored_bytes(model.description().stored_bytes());
  LayerCache::Usage u = cache_->UsageOf(model.cache_key());
  s->set_cached_layers(u.entries);
  s->set_cached_bytes(u.bytes);
  s->set_active_leases(u.leases);
  s->set_active_sessions(static_cast<uint32_t>(std::max(0, model.active_sessions.load())));
  s->set_layer_decodes(model.layer_decodes.load());
  s->set_layers_served(model.layers_served.load());
}

void BigSmallService::FillStats(v1::StatsResponse* r) {
  r->set_version(kVersion);
  r->set_io_backend(IoBackendName([&] {
    auto b = ParseIoBackend(config_.io);
    if (!b.ok() || *b == IoBackend::kAuto) {
      return IoUringAvailable() ? IoBackend::kIoUring : IoBackend::kPread;
    }
    return *b;
  }()));
  r->set_uptime_seconds(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
  LayerCache::Stats c = cache_->stats();
  if (metrics_ != nullptr) {
    r->set_bytes_read(metrics_->bytes_read());
    r->set_bytes_decoded(metrics_->bytes_decoded());
    r->set_layers_served(metrics_->layers_served());
    r->set_layer_decodes(metrics_->layer_decodes());
    r->set_errors(metrics_->errors());
    r->set_decode_seconds(metrics_->decode_seconds());
    if (metrics_->decode_seconds() > 0) {
      r->set_decode_gbps(static_cast<double>(metrics_->bytes_decoded()) /
                         metrics_->decode_seconds() / 1e9);
    }
  }
  r->set_cache_hits(c.hits);
  r->set_cache_misses(c.misses);
  r->set_cache_evictions(c.evictions);
  r->set_cache_bytes(c.bytes);
  r->set_cache_budget_bytes(c.budget);
  r->set_cache_entries(c.entries);
  r->set_active_leases(c.leases);
  r->set_peak_cache_bytes(c.peak_bytes);
  r->set_active_sessions(static_cast<uint32_t>(std::max(0, active_sessions.load())));
  for (const auto& m : registry_->List()) FillSummary(*m, r->add_models());
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

grpc::ServerUnaryReactor* BigSmallService::ListModels(grpc::CallbackServerContext* ctx,
                                                      const v1::ListModelsRequest* request,
                                                      v1::ListModelsResponse* response) {
  for (const auto& m : registry_->List()) FillSummary(*m, response->add_models());
  auto* reactor = new CountedUnaryReactor(&calls_in_flight);
  reactor->Reply(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* BigSmallService::Evict(grpc::CallbackServerContext* ctx,
                                                 const v1::EvictRequest* request,
                                                 v1::EvictResponse* response) {
  auto* reactor = new CountedUnaryReactor(&calls_in_flight);
  // Admin call: the daemon's user, root or the admin group, over the Unix
  // socket only (daemon/peer.h).
  absl::Status allowed = AuthorizeAdmin(ctx, request->unload() ? "Evict (unload)" : "Evict");
  if (!allowed.ok()) {
    RecordError(allowed);
    reactor->Reply(ToGrpcStatus(allowed));
    return reactor;
  }
  std::string key;
  if (!request->model_id().empty()) {
    auto found = Find(request->model_id());
    if (!found.ok()) {
      RecordError(found.status());
      reactor->Reply(ToGrpcStatus(found.status()));
      return reactor;
    }
    key = (*found)->cache_key();
  }
  if (request->unload()) {
    // Admin call: unload. Dropped models have their unleased layers evicted
    // (ModelDropped); the layers of every other model are evicted below.
    auto unloaded = registry_->Unload(request->model_id());
    if (!unloaded.ok()) {
      RecordError(unloaded.status());
      reactor->Reply(ToGrpcStatus(unloaded.status()));
      return reactor;
    }
    response->set_models_unloaded(static_cast<uint32_t>(unloaded->size()));
  }
  LayerCache::EvictResult r =
      cache_->Evict([&](const LayerKey& k) { return key.empty() || k.model == key; });
  response->set_layers_evicted(r.layers);
  response->set_bytes_evicted(r.bytes);
  spdlog::info("evict {}: {} layers, {} bytes", key.empty() ? "all" : key, r.layers, r.bytes);
  reactor->Reply(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* BigSmallService::GetStats(grpc::CallbackServerContext* ctx,
                                                    const v1::GetStatsRequest* request,
                                                    v1::StatsResponse* response) {
  FillStats(response);
  auto* reactor = new CountedUnaryReactor(&calls_in_flight);
  reactor->Reply(grpc::Status::OK);
  return reactor;
}

}  // namespace bigsmall::daemon
