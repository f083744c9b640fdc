#include "daemon/metrics.h"

#include <exception>

#include "absl/strings/str_cat.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"

namespace bigsmall::daemon {
namespace {

prometheus::Counter* NewCounter(prometheus::Registry& r, const std::string& name,
                                const std::string& help) {
  return &prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
}

prometheus::Gauge* NewGauge(prometheus::Registry& r, const std::string& name,
                            const std::string& help) {
  return &prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
}

}  // namespace

Metrics::Metrics() : registry_(std::make_shared<prometheus::Registry>()) {
  auto& r = *registry_;
  bytes_read_ = NewCounter(r, "bigsmall_bytes_read_total", "Compressed bytes read from sources");
  bytes_decoded_ = NewCounter(r, "bigsmall_bytes_decoded_total", "Tensor bytes decoded");
  decode_seconds_ = NewCounter(r, "bigsmall_decode_seconds_total",
                               "Wall seconds spent decoding layers (GB/s = rate(bytes)/rate(s))");
  layer_decodes_ = NewCounter(r, "bigsmall_layer_decodes_total", "Layers read and decoded");
  layers_served_ = NewCounter(r, "bigsmall_layers_served_total", "Layer handles sent to clients");
  cache_hits_ = NewCounter(r, "bigsmall_cache_hits_total", "Layer requests served from cache");
  cache_misses_ = NewCounter(r, "bigsmall_cache_misses_total", "Layer requests that loaded");
  cache_evictions_ = NewCounter(r, "bigsmall_cache_evictions_total", "Layers evicted");
  errors_ = &prometheus::BuildCounter()
                 .Name("bigsmall_errors_total")
                 .Help("Errors returned to clients, by gRPC code")
                 .Register(r);
  leases_ = NewGauge(r, "bigsmall_leases_active", "Layer leases held by clients");
  cache_bytes_ = NewGauge(r, "bigsmall_cache_bytes", "Bytes of decoded layers in the cache");
  cache_budget_ = NewGauge(r, "bigsmall_cache_budget_bytes", "Layer cache memory budget");
  sessions_ = NewGauge(r, "bigsmall_sessions_active", "Open streaming sessions");
  models_ = NewGauge(r, "bigsmall_models_open", "Open models");
  decode_gbps_ = NewGauge(r, "bigsmall_decode_gbps", "Decode throughput of the last layer, GB/s");
}

Metrics::~Metrics() = default;

absl::Status Metrics::Serve(const std::string& address) {
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(address);
    exposer_->RegisterCollectable(registry_);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("metrics on ", address, ": ", e.what()));
  }
  return absl::OkStatus();
}

void Metrics::AddBytesRead(uint64_t n) { bytes_read_->Increment(static_cast<double>(n)); }
void Metrics::AddDecode(uint64_t bytes, double seconds) {
  bytes_decoded_->Increment(static_cast<double>(bytes));
  decode_seconds_->Increment(seconds);
  layer_decodes_->Increment();
  if (seconds > 0) decode_gbps_->Set(static_cast<double>(bytes) / seconds / 1e9);
}
void Metrics::AddLayerServed() { layers_served_->Increment(); }
void Metrics::AddCacheHit() { cache_hits_->Increment(); }
void Metrics::AddCacheMiss() { cache_misses_->Increment(); }
void Metrics::AddEviction(uint64_t n) { cache_evictions_->Increment(static_cast<double>(n)); }
void Metrics::AddError(const std::string& code) {
  errors_->Add({{"code", code}}).Increment();
  errors_total_.fetch_add(1);
}
void Metrics::SetLeases(int64_t n) { leases_->Set(static_cast<double>(n)); }
void Metrics::SetCacheBytes(uint64_t n) { cache_bytes_->Set(static_cast<double>(n)); }
void Metrics::SetCacheBudget(uint64_t n) { cache_budget_->Set(static_cast<double>(n)); }
void Metrics::SetSessions(int64_t n) { sessions_->Set(static_cast<double>(n)); }
void Metrics::SetModels(int64_t n) { models_->Set(static_cast<double>(n)); }

uint64_t Metrics::bytes_read() const { return static_cast<uint64_t>(bytes_read_->Value()); }
uint64_t Metrics::bytes_decoded() const { return static_cast<uint64_t>(bytes_decoded_->Value()); }
uint64_t Metrics::layers_served() const { return static_cast<uint64_t>(layers_served_->Value()); }
uint64_t Metrics::layer_decodes() const { return static_cast<uint64_t>(layer_decodes_->Value()); }
uint64_t Metrics::cache_hits() const { return static_cast<uint64_t>(cache_hits_->Value()); }
uint64_t Metrics::cache_misses() const { return static_cast<uint64_t>(cache_misses_->Value()); }
uint64_t Metrics::cache_evictions() const {
  return static_cast<uint64_t>(cache_evictions_->Value());
}
double Metrics::decode_seconds() const { return decode_seconds_->Value(); }

}  // namespace bigsmall::daemon
