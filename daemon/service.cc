#include "daemon/service.h"

#include <climits>
#include <cstdlib>
#include <deque>
#include <future>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "codec/status_macros.h"
#include "daemon/host_arena.h"
#include "codec/status_util.h"
#include "daemon/peer.h"
#include "spdlog/spdlog.h"

namespace bigsmall::daemon {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl::StatusCode and grpc::StatusCode share their numbering.
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

namespace {

DecoderImpl ParseDecoder(const std::string& name) {
  if (name == "reference") return DecoderImpl::kReference;
  if (name == "scalar") return DecoderImpl::kScalar;
  if (name == "avx2") return DecoderImpl::kAvx2;
  if (name == "avx512") return DecoderImpl::kAvx512;
  return DecoderImpl::kAuto;
}

bool UnderRoot(const std::string& path, const std::string& root) {
  char resolved[PATH_MAX];
  std::string r = realpath(root.c_str(), resolved) != nullptr ? resolved : root;
  if (r == "/") return true;
  return path == r || absl::StartsWith(path, r + "/");
}

// A unary reactor that counts its call in `calls_in_flight` until OnDone,
// i.e. until the response and status have left (or the call was cancelled).
class CountedUnaryReactor final : public grpc::ServerUnaryReactor {
 public:
  explicit CountedUnaryReactor(std::atomic<int32_t>* counter) : counter_(counter) {
    counter_->fetch_add(1);
  }
  void OnDone() override {
    counter_->fetch_sub(1);
    delete this;
  }

 private:
  std::atomic<int32_t>* const counter_;
};

// ---------------------------------------------------------------------------
// Session: the streaming loader call. One StartStream, then Release
// messages; layers go out in order with at most `window` unreleased. Every
// lease of the call is dropped when the call ends, whatever the reason.
class SessionReactor final : public grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse> {
 public:
  SessionReactor(BigSmallService* service)
      : service_(service), core_(std::make_shared<Core>(service, this)) {
    service->calls_in_flight.fetch_add(1);
    service->active_sessions.fetch_add(1);
    if (service->metrics() != nullptr) service->metrics()->SetSessions(service->active_sessions);
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      core_->ClientDone();
      return;
    }
    bool keep_reading = core_->Handle(request_);
    if (keep_reading) StartRead(&request_);
  }
  void OnWriteDone(bool ok) override { core_->WriteDone(ok); }
  void OnCancel() override { core_->Fail(absl::CancelledError("cancelled by the client")); }
  void OnDone() override {
    core_->Done();
    BigSmallService* service = service_;
    delete this;
    service->calls_in_flight.fetch_sub(1);
  }

 private:
  // Shared with cache callbacks, which may outlive the reactor.
  class Core : public std::enable_shared_from_this<Core> {
   public:
    Core(BigSmallService* service, SessionReactor* reactor)
        : service_(service), reactor_(reactor) {}

    // Returns whether to keep reading.
    bool Handle(const v1::SessionRequest& request) {
      std::vector<int32_t> to_acquire, to_prefetch;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (finished_) return false;
        absl::Status st;
        if (request.has_start()) {
          st = StartLocked(request.start());
        } else if (request.has_release()) {
          st = ReleaseLocked(request.release());
        } else {
          st = absl::InvalidArgumentError("empty session message");
        }
        if (!st.ok()) {
          FailLocked(st);
          return false;
        }
        PlanLocked(&to_acquire, &to_prefetch);
      }
      Acquire(to_acquire, to_prefetch);
      return true;
    }

    void ClientDone() {
      // The client half-closed (or went away): the session is over, its
      // leases go when the call completes.
      std::lock_guard<std::mutex> lock(mu_);
      client_done_ = true;
      if (!write_in_flight_) FinishLocked(absl::OkStatus());
    }

    void WriteDone(bool ok) {
      std::lock_guard<std::mutex> lock(mu_);
      write_in_flight_ = false;
      if (!queue_.empty()) queue_.pop_front();
      if (!ok) {
        FinishLocked(absl::CancelledError("client stream broken"));
        return;
      }
      if (!error_.ok()) {
        if (drain_queue_ && !queue_.empty()) {
          WriteLocked();
          return;
        }
        FinishLocked(error_);
        return;
      }
      if (client_done_) {
        FinishLocked(absl::OkStatus());
        return;
      }
      WriteLocked();
    }

    void Fail(const absl::Status& status) {
      std::lock_guard<std::mutex> lock(mu_);
      FailLocked(status);
    }

    void Done() {
      std::map<int32_t, LayerCache::Lease> held;
      std::map<size_t, LayerCache::Lease> ready;
      {
        std::lock_guard<std::mutex> lock(mu_);
        finished_ = true;
        reactor_ = nullptr;
        held.swap(held_);
        ready.swap(ready_);
        EndCountsLocked();
      }
      if (!held.empty()) {
        spdlog::debug("session ended holding {} leases; released", held.size());
      }
      held.clear();
      ready.clear();
    }

   private:
    absl::Status StartLocked(const v1::StartStream& start) {
      if (started_) return absl::FailedPreconditionError("session already started");
      ASSIGN_OR_RETURN(model_, service_->Find(start.model_id()));
      model_->active_sessions.fetch_add(1);
      started_ = true;
      if (start.device().kind() != v1::DEVICE_KIND_HOST) {
        return absl::UnimplementedError("CUDA arenas are not available in this daemon build");
      }
      int32_t n = model_->num_layers();
      int32_t from = start.from_layer();
      int32_t to = start.to_layer() == 0 ? n : start.to_layer();
      if (from < 0 || from > n) {
        return absl::OutOfRangeError(absl::StrCat("from_layer ", from, " is out of range: model ",
                                                  model_->id(), " has ", n, " layers"));
      }
      if (to < from || to > n) {
        return absl::OutOfRangeError(absl::StrCat("to_layer ", to, " is out of range [", from,
                                                  ", ", n, "]"));
      }
      const DaemonConfig& config = service_->config();
      window_ = start.window() == 0 ? config.default_window : start.window();
      if (window_ > config.max_window) {
        return absl::InvalidArgumentError(
            absl::StrCat("window ", window_, " exceeds the daemon's max_window ", config.max_window));
      }
      if (start.include_non_layer() && !model_->layer(-1)->tensors.empty()) {
        order_.push_back(-1);
      }
      for (int32_t i = from; i < to; ++i) order_.push_back(i);
      if (order_.empty()) QueueEndLocked();
      return absl::OkStatus();
    }

    absl::Status ReleaseLocked(const v1::Release& release) {
      if (!started_) return absl::FailedPreconditionError("release before start");
      for (int32_t layer : release.layers()) {
        auto it = held_.find(layer);
        if (it == held_.end()) {
          return absl::InvalidArgumentError(
              absl::StrCat("release of layer ", layer, ", which this session does not hold"));
        }
        graveyard_.push_back(std::move(it->second));
        held_.erase(it);
      }
      return absl::OkStatus();
    }

    // Chooses layers to acquire now that the window has room.
    void PlanLocked(std::vector<int32_t>* to_acquire, std::vector<int32_t>* to_prefetch) {
      if (!started_ || finished_ || !error_.ok() || !failed_.empty()) return;
      while (next_acquire_ < order_.size() &&
             held_.size() + ready_.size() + pending_ < window_) {
        to_acquire->push_back(static_cast<int32_t>(next_acquire_));
        ++next_acquire_;
        ++pending_;
      }
      // Read and decode ahead of the window.
      size_t ahead = std::min(order_.size(), next_acquire_ + service_->config().prefetch);
      for (size_t pos = next_acquire_; pos < ahead; ++pos) to_prefetch->push_back(order_[pos]);
    }

    // Outside the lock: cache callbacks may run inline.
    void Acquire(const std::vector<int32_t>& positions, const std::vector<int32_t>& prefetch) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        graveyard_.clear();
      }
      if (model_ == nullptr) return;
      auto self = shared_from_this();
      for (int32_t pos : positions) {
        int32_t layer = order_[pos];
        service_->AcquireLayer(model_, layer,
                               [self, pos](absl::StatusOr<LayerCache::Lease> lease, bool hit) {
                                 self->Acquired(static_cast<size_t>(pos), std::move(lease), hit);
                               });
      }
      for (int32_t layer : prefetch) service_->PrefetchLayer(model_, layer);
    }

    void Acquired(size_t pos, absl::StatusOr<LayerCache::Lease> lease, bool hit) {
      LayerCache::Lease drop;
      std::lock_guard<std::mutex> lock(mu_);
      --pending_;
      if (finished_) {
        if (lease.ok()) drop = std::move(*lease);
        return;
      }
      if (lease.ok()) {
        hits_[pos] = hit;
        ready_.emplace(pos, std::move(*lease));
      } else {
        // Reported in order: the layers before this one still go out first
        // (loads finish out of order; the client must not lose them).
        failed_.emplace(pos, lease.status());
      }
      // Hand out, in order, every layer that is ready.
      while (true) {
        if (!failed_.empty() && failed_.begin()->first == next_send_) {
          FailAfterQueuedLocked(failed_.begin()->second);
          return;
        }
        if (ready_.empty() || ready_.begin()->first != next_send_) break;
        LayerCache::Lease l = std::move(ready_.begin()->second);
        ready_.erase(ready_.begin());
        int32_t layer = order_[next_send_];
        v1::SessionResponse response;
        v1::LayerHandle* handle = response.mutable_layer();
        handle->set_model_id(model_->id());
        *handle->mutable_layer() = layer < 0 ? model_->description().non_layer()
                                             : model_->description().layers(layer);
        const LayerData& data = l.data();
        FillHostMemory(data, handle->mutable_memory()->mutable_host());
        handle->set_lease_id(service_->next_lease_id.fetch_add(1));
        handle->set_cache_hit(hits_[next_send_]);
        hits_.erase(next_send_);
        held_.emplace(layer, std::move(l));
        queue_.push_back(std::move(response));
        ++next_send_;
        ++sent_;
        model_->layers_served.fetch_add(1);
        if (service_->metrics() != nullptr) service_->metrics()->AddLayerServed();
      }
      if (next_send_ == order_.size()) QueueEndLocked();
      WriteLocked();
    }

    void QueueEndLocked() {
      if (end_queued_) return;
      end_queued_ = true;
      v1::SessionResponse response;
      response.mutable_end()->set_layers_sent(sent_);
      queue_.push_back(std::move(response));
    }

    void WriteLocked() {
      if (write_in_flight_ || queue_.empty() || finished_ || reactor_ == nullptr) return;
      write_in_flight_ = true;
      reactor_->StartWrite(&queue_.front());
    }

    void FailLocked(const absl::Status& status) {
      if (finished_) return;
      if (error_.ok()) {
        error_ = status;
        if (!absl::IsCancelled(status)) service_->RecordError(status);
        spdlog::info("session{}: {}", model_ != nullptr ? " on " + model_->id() : "",
                     status.ToString());
      }
      // Drop queued (unsent) handles; the one being written completes first.
      while (queue_.size() > (write_in_flight_ ? 1u : 0u)) queue_.pop_back();
      if (!write_in_flight_ || absl::IsCancelled(status)) FinishLocked(error_);
    }

    // A load failed at the position next to send: the handles already
    // queued are written, then the call ends with `status`.
    void FailAfterQueuedLocked(const absl::Status& status) {
      if (finished_ || !error_.ok()) return;
      error_ = status;
      drain_queue_ = true;
      service_->RecordError(status);
      spdlog::info("session on {}: {}", model_->id(), status.ToString());
      if (!write_in_flight_ && queue_.empty()) {
        FinishLocked(error_);
      } else {
        WriteLocked();
      }
    }

    // The session stops counting as active (for the model: Evict's unload
    // check; for the daemon: stats, metrics) once its final status is
    // decided, i.e. before the client can see it, not when gRPC gets round
    // to OnDone. Once only.
    void EndCountsLocked() {
      if (counts_ended_) return;
      counts_ended_ = true;
      if (model_ != nullptr) model_->active_sessions.fetch_sub(1);
      service_->active_sessions.fetch_sub(1);
      if (service_->metrics() != nullptr) {
        service_->metrics()->SetSessions(service_->active_sessions);
      }
    }

    void FinishLocked(const absl::Status& status) {
      if (finished_) return;
      finished_ = true;
      EndCountsLocked();
      if (reactor_ != nullptr) reactor_->Finish(ToGrpcStatus(status));
    }

    BigSmallService* const service_;
    std::mutex mu_;
    SessionReactor* reactor_;
    std::shared_ptr<Model> model_;
    bool started_ = false;
    bool finished_ = false;
    bool client_done_ = false;
    bool end_queued_ = false;
    absl::Status error_;
    uint32_t window_ = 1;
    std::vector<int32_t> order_;  // layer indexes in sending order
    size_t next_acquire_ = 0;     // position in order_
    size_t next_send_ = 0;
    size_t pending_ = 0;          // acquisitions in flight
    uint32_t sent_ = 0;
    std::map<size_t, LayerCache::Lease> ready_;  // position -> lease, not yet sent
    std::map<size_t, bool> hits_;
    std::map<size_t, absl::Status> failed_;      // position -> load error, not yet reported
    bool drain_queue_ = false;  // error_ is sent after the queued handles
    bool counts_ended_ = false;
    std::map<int32_t, LayerCache::Lease> held_;  // layer -> lease, sent and unreleased
    std::vector<LayerCache::Lease> graveyard_;   // released, dropped outside the lock
    std::deque<v1::SessionResponse> queue_;
    bool write_in_flight_ = false;
  };

  BigSmallService* const service_;
  v1::SessionRequest request_;
  std::shared_ptr<Core> core_;
};

// ---------------------------------------------------------------------------
// GetTensors: copies tensors out in chunks. Runs on the RPC pool (it may
// wait for a layer load); one write in flight at a time.
class GetTensorsReactor final : public grpc::ServerWriteReactor<v1::TensorChunk> {
 public:
  GetTensorsReactor(BigSmallService* service, const v1::GetTensorsRequest& request)
      : service_(service), request_(request) {
    service_->calls_in_flight.fetch_add(1);
  }

  void Run() {
    absl::Status st = RunImpl();
    if (!st.ok() && !absl::IsCancelled(st)) service_->RecordError(st);
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return !write_in_flight_ || broken_; });
    }
    Finish(ToGrpcStatus(st));  // OnDone may delete this: nothing after
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    write_in_flight_ = false;
    if (!ok) broken_ = true;
    cv_.notify_all();
  }
  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    broken_ = true;
    cv_.notify_all();
  }
  void OnDone() override {
    BigSmallService* service = service_;
    delete this;
    service->calls_in_flight.fetch_sub(1);
  }

 private:
  absl::Status RunImpl() {
    ASSIGN_OR_RETURN(auto model, service_->Find(request_.model_id()));
    std::vector<std::pair<int32_t, const TensorPlan*>> wanted;
    if (request_.names().empty()) {
      for (const TensorPlan& tp : model->layer(-1)->tensors) wanted.push_back({-1, &tp});
    } else {
      for (const std::string& name : request_.names()) {
        int32_t layer = 0;
        const TensorPlan* plan = nullptr;
        if (!model->FindTensor(name, &layer, &plan)) {
          return absl::NotFoundError(
              absl::StrCat("model ", model->id(), " has no tensor '", name, "'"));
        }
        wanted.push_back({layer, plan});
      }
    }
    uint64_t chunk = request_.chunk_bytes() == 0 ? (1u << 20) : request_.chunk_bytes();
    chunk = std::min<uint64_t>(std::max<uint64_t>(chunk, 4096), 4u << 20);
    for (const auto& [layer, plan] : wanted) {
      const v1::LayerInfo& info =
          layer < 0 ? model->description().non_layer() : model->description().layers(layer);
      const v1::TensorInfo* tinfo = nullptr;
      for (const auto& t : info.tensors()) {
        if (t.offset() == plan->offset) tinfo = &t;
      }
      std::promise<absl::StatusOr<LayerCache::Lease>> promise;
      auto future = promise.get_future();
      service_->AcquireLayer(model, layer, [&promise](absl::StatusOr<LayerCache::Lease> l, bool) {
        promise.set_value(std::move(l));
      });
      ASSIGN_OR_RETURN(LayerCache::Lease lease, future.get());
      const uint8_t* base = lease.data().arena->bytes().data() + plan->offset;
      uint64_t pos = 0;
      do {
        uint64_t len = std::min<uint64_t>(chunk, plan->size - pos);
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !write_in_flight_ || broken_; });
        if (broken_) return absl::CancelledError("client went away");
        message_.Clear();
        if (pos == 0 && tinfo != nullptr) *message_.mutable_info() = *tinfo;
        message_.set_name(tinfo != nullptr ? tinfo->name() : "");
        message_.set_offset(pos);
        message_.set_data(reinterpret_cast<const char*>(base + pos), len);
        write_in_flight_ = true;
        StartWrite(&message_);
        pos += len;
      } while (pos < plan->size);
      // The lease may go once the last chunk is written.
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return !write_in_flight_ || broken_; });
    }
    return absl::OkStatus();
  }

  BigSmallService* const service_;
  const v1::GetTensorsRequest request_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool write_in_flight_ = false;
  bool broken_ = false;
  v1::TensorChunk message_;
};

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
      rpc_pool_(4) {
  auto backend = ParseIoBackend(config.io);
  model_options_.io.backend = backend.ok() ? *backend : IoBackend::kAuto;
  model_options_.io.direct = config.direct;
  model_options_.io.queue_depth = config.uring_depth;
  model_options_.io.chunk_bytes = static_cast<uint32_t>(config.read_chunk);
  model_options_.impl = ParseDecoder(config.decoder);
  model_options_.fault_spec = config.debug_fault;
  LayerCache::Options cache_options;
  cache_options.budget = config.cache_budget;
  cache_options.granularity = kArenaAlignment;  // a layer costs whole arena pages
  cache_ = std::make_unique<LayerCache>(
      cache_options, [this](std::function<void()> task) { load_pool_.Schedule(std::move(task)); },
      metrics_);
}

BigSmallService::~BigSmallService() {
  cache_->WaitIdle();
}

void BigSmallService::RecordError(const absl::Status& status) {
  if (metrics_ != nullptr) metrics_->AddError(absl::StatusCodeToString(status.code()));
}

absl::StatusOr<std::shared_ptr<Model>> BigSmallService::Open(const std::string& path,
                                                             bool* already_open) {
  *already_open = false;
  if (path.empty()) return absl::InvalidArgumentError("OpenModel: empty model path");
  char resolved[PATH_MAX];
  if (realpath(path.c_str(), resolved) == nullptr) {
    return absl::NotFoundError(absl::StrCat("model '", path, "' not found"));
  }
  std::string real = resolved;
  if (!config_.allowed_roots.empty()) {
    bool ok = false;
    for (const std::string& root : config_.allowed_roots) ok = ok || UnderRoot(real, root);
    if (!ok) {
      return absl::PermissionDeniedError(
          absl::StrCat("model '", path, "' is outside the daemon's allowed_roots"));
    }
  }
  std::shared_ptr<Model> existing;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_path_.find(real);
    if (it != by_path_.end()) existing = it->second;
  }
  ASSIGN_OR_RETURN(auto model, Model::Open(real, model_options_));
  if (existing != nullptr && existing->fingerprint() == model->fingerprint()) {
    *already_open = true;
    return existing;
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = by_path_.find(real);
  if (it != by_path_.end() && it->second->fingerprint() == model->fingerprint()) {
    *already_open = true;
    return it->second;
  }
  if (it != by_path_.end()) {
    // Changed on disk: new generation; the old one's unleased layers go now.
    std::string old_key = it->second->cache_key();
    cache_->Evict([&](const LayerKey& k) { return k.model == old_key; });
    spdlog::info("model {} changed on disk; reopened", real);
  }
  by_path_[real] = model;
  by_id_[model->id()] = model;
  if (metrics_ != nullptr) metrics_->SetModels(static_cast<int64_t>(by_id_.size()));
  spdlog::info("opened model {} ({}): {} layers, {} tensors, io={}", model->id(), real,
               model->num_layers(), model->description().num_tensors(),
               IoBackendName(model->io_backend()));
  return model;
}

absl::StatusOr<std::shared_ptr<Model>> BigSmallService::Find(const std::string& model_id) {
  if (model_id.empty()) return absl::InvalidArgumentError("model_id is empty");
  std::lock_guard<std::mutex> lock(mu_);
  auto it = by_id_.find(model_id);
  if (it == by_id_.end()) {
    return absl::NotFoundError(absl::StrCat("unknown model id '", model_id,
                                            "' (OpenModel first)"));
  }
  return it->second;
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
  std::vector<std::shared_ptr<Model>> models;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [id, m] : by_id_) models.push_back(m);
  }
  for (const auto& m : models) FillSummary(*m, r->add_models());
}

grpc::ServerUnaryReactor* BigSmallService::OpenModel(grpc::CallbackServerContext* ctx,
                                                     const v1::OpenModelRequest* request,
                                                     v1::OpenModelResponse* response) {
  grpc::ServerUnaryReactor* reactor = new CountedUnaryReactor(&calls_in_flight);
  spdlog::info("OpenModel {} by {}", EscapeForLog(request->model()), PeerForLog(ctx));
  // Opening reads and checks the index: off the gRPC threads.
  rpc_pool_.Schedule([this, reactor, request, response] {
    bool already = false;
    auto model = Open(request->model(), &already);
    if (!model.ok()) {
      RecordError(model.status());
      spdlog::info("OpenModel {}: {}", request->model(), model.status().ToString());
      reactor->Finish(ToGrpcStatus(model.status()));
      return;
    }
    *response->mutable_model() = (*model)->description();
    response->set_already_open(already);
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

grpc::ServerUnaryReactor* BigSmallService::DescribeModel(grpc::CallbackServerContext* ctx,
                                                         const v1::DescribeModelRequest* request,
                                                         v1::ModelDescription* response) {
  grpc::ServerUnaryReactor* reactor = new CountedUnaryReactor(&calls_in_flight);
  auto model = Find(request->model_id());
  if (!model.ok()) {
    RecordError(model.status());
    reactor->Finish(ToGrpcStatus(model.status()));
  } else {
    *response = (*model)->description();
    reactor->Finish(grpc::Status::OK);
  }
  return reactor;
}

grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse>* BigSmallService::Session(
    grpc::CallbackServerContext* ctx) {
  spdlog::info("session by {}", PeerForLog(ctx));
  return new SessionReactor(this);
}

grpc::ServerWriteReactor<v1::TensorChunk>* BigSmallService::GetTensors(
    grpc::CallbackServerContext* ctx, const v1::GetTensorsRequest* request) {
  auto* reactor = new GetTensorsReactor(this, *request);
  rpc_pool_.Schedule([reactor] { reactor->Run(); });
  return reactor;
}

grpc::ServerUnaryReactor* BigSmallService::ListModels(grpc::CallbackServerContext* ctx,
                                                      const v1::ListModelsRequest* request,
                                                      v1::ListModelsResponse* response) {
  std::vector<std::shared_ptr<Model>> models;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [id, m] : by_id_) models.push_back(m);
  }
  for (const auto& m : models) FillSummary(*m, response->add_models());
  grpc::ServerUnaryReactor* reactor = new CountedUnaryReactor(&calls_in_flight);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* BigSmallService::Evict(grpc::CallbackServerContext* ctx,
                                                 const v1::EvictRequest* request,
                                                 v1::EvictResponse* response) {
  grpc::ServerUnaryReactor* reactor = new CountedUnaryReactor(&calls_in_flight);
  // Admin call: the daemon's user, root or the admin group, over the Unix
  // socket only (daemon/peer.h).
  absl::Status allowed = AuthorizeAdmin(ctx, request->unload() ? "Evict (unload)" : "Evict");
  if (!allowed.ok()) {
    RecordError(allowed);
    reactor->Finish(ToGrpcStatus(allowed));
    return reactor;
  }
  std::string key;
  std::shared_ptr<Model> model;
  if (!request->model_id().empty()) {
    auto found = Find(request->model_id());
    if (!found.ok()) {
      RecordError(found.status());
      reactor->Finish(ToGrpcStatus(found.status()));
      return reactor;
    }
    model = *found;
    key = model->cache_key();
  }
  if (request->unload()) {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::shared_ptr<Model>> victims;
    for (const auto& [id, m] : by_id_) {
      if (model != nullptr && m != model) continue;
      if (m->active_sessions.load() > 0) {
        reactor->Finish(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                     absl::StrCat("model ", m->id(), " has ",
                                                  m->active_sessions.load(),
                                                  " active sessions; not unloaded")));
        return reactor;
      }
      victims.push_back(m);
    }
    for (const auto& m : victims) {
      by_id_.erase(m->id());
      by_path_.erase(m->path());
    }
    response->set_models_unloaded(static_cast<uint32_t>(victims.size()));
    if (metrics_ != nullptr) metrics_->SetModels(static_cast<int64_t>(by_id_.size()));
  }
  LayerCache::EvictResult r =
      cache_->Evict([&](const LayerKey& k) { return key.empty() || k.model == key; });
  response->set_layers_evicted(r.layers);
  response->set_bytes_evicted(r.bytes);
  spdlog::info("evict {}: {} layers, {} bytes", key.empty() ? "all" : key, r.layers, r.bytes);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* BigSmallService::GetStats(grpc::CallbackServerContext* ctx,
                                                    const v1::GetStatsRequest* request,
                                                    v1::StatsResponse* response) {
  FillStats(response);
  grpc::ServerUnaryReactor* reactor = new CountedUnaryReactor(&calls_in_flight);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace bigsmall::daemon
