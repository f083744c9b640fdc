// The admin calls: ListModels, Evict (authorized: daemon/peer.h), GetStats.
#include "daemon/admin.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "codec/status_util.h"
#include "daemon/peer.h"
#include "daemon/service.h"
#include "spdlog/spdlog.h"

namespace bigsmall::daemon {

void BigSmallService::FillSummary(const Model& model, v1::ModelSummary* s) {
  s->set_model_id(model.id());
  s->set_path(model.path());
  s->set_num_layers(static_cast<uint32_t>(model.num_layers()));
  s->set_original_bytes(model.description().original_bytes());
  s->set_stored_bytes(model.description().stored_bytes());
  // Every cache: host and devices.
  LayerCache::Usage u;
  for (LayerCache* cache : caches()) {
    LayerCache::Usage c = cache->UsageOf(model.cache_key());
    u.entries += c.entries;
    u.bytes += c.bytes;
    u.leases += c.leases;
  }
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
    r->set_hub_bytes_fetched(metrics_->hub_bytes_fetched());
    r->set_hub_retries(metrics_->hub_retries());
    r->set_hub_fetch_errors(metrics_->hub_fetch_errors());
    r->set_hub_cache_hit_opens(metrics_->hub_cache_hits("open"));
    r->set_hub_cache_hit_reads(metrics_->hub_cache_hits("read"));
    r->set_decode_seconds(metrics_->decode_seconds());
    if (metrics_->decode_seconds() > 0) {
      r->set_decode_gbps(static_cast<double>(metrics_->bytes_decoded()) /
                         metrics_->decode_seconds() / 1e9);
    }
  }
  // Counters and leases of every cache; bytes of the host cache (each
  // device's below).
  uint64_t hits = c.hits, misses = c.misses, evictions = c.evictions, leases = c.leases;
  uint32_t entries = c.entries;
  r->set_gpu_backend(gpu_api_ != nullptr && !gpus_.empty() ? gpu_api_->name() : "none");
  r->set_gpu_unavailable(gpu_unavailable_);
  for (const auto& g : gpus_) {
    LayerCache::Stats d = g->cache->stats();
    ArenaPool::Stats a = g->arenas->stats();
    DeviceBackend::Stats b = g->backend->stats();
    v1::DeviceStats* ds = r->add_devices();
    ds->set_name(g->name);
    ds->set_gpu_uuid(g->backend->device());
    ds->set_emulated(g->backend->emulated());
    ds->set_cache_bytes(d.bytes);
    ds->set_cache_budget_bytes(d.budget);
    ds->set_peak_cache_bytes(d.peak_bytes);
    ds->set_cache_entries(d.entries);
    ds->set_active_leases(d.leases);
    ds->set_cache_hits(d.hits);
    ds->set_cache_misses(d.misses);
    ds->set_cache_evictions(d.evictions);
    ds->set_arenas(a.arenas);
    ds->set_arena_bytes(a.arena_bytes);
    ds->set_layers_decoded(b.layers);
    ds->set_verify_failures(b.verify_failures);
    ds->set_host_verified_tensors(b.host_verified_tensors);
    ds->set_uploaded_bytes(b.uploaded_bytes);
    hits += d.hits;
    misses += d.misses;
    evictions += d.evictions;
    leases += d.leases;
    entries += d.entries;
  }
  r->set_cache_hits(hits);
  r->set_cache_misses(misses);
  r->set_cache_evictions(evictions);
  r->set_cache_bytes(c.bytes);
  r->set_cache_budget_bytes(c.budget);
  r->set_cache_entries(entries);
  r->set_active_leases(leases);
  r->set_peak_cache_bytes(c.peak_bytes);
  Pipeline::Stats p = pipeline_.stats();
  r->set_pipeline_depth(pipeline_.options().depth);
  r->set_staging_bytes(pipeline_.options().staging_bytes);
  r->set_pipeline_max_in_flight(p.max_in_flight);
  r->set_pipeline_max_staged_bytes(p.max_staged_bytes);
  r->set_active_sessions(static_cast<uint32_t>(std::max(0, active_sessions.load())));
  for (const auto& m : registry_->List()) FillSummary(*m, r->add_models());
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
  LayerCache::EvictResult r;
  for (LayerCache* cache : caches()) {
    LayerCache::EvictResult one =
        cache->Evict([&](const LayerKey& k) { return key.empty() || k.model == key; });
    r.layers += one.layers;
    r.bytes += one.bytes;
  }
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
