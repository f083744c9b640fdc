// Daemon counters and gauges, kept in a Prometheus registry (the single
// source of truth for both /metrics and the GetStats RPC).
#ifndef BIGSMALL_DAEMON_METRICS_H_
#define BIGSMALL_DAEMON_METRICS_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"

namespace prometheus {
class Counter;
class Gauge;
class Exposer;
class Registry;
template <typename T>
class Family;
}  // namespace prometheus

namespace bigsmall::daemon {

class Metrics {
 public:
  Metrics();
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Serves /metrics on `address` ("127.0.0.1:9464"). Call at most once.
  absl::Status Serve(const std::string& address);

  void AddBytesRead(uint64_t n);
  void AddDecode(uint64_t bytes, double seconds);
  void AddLayerServed();
  void AddCacheHit();
  void AddCacheMiss();
  void AddEviction(uint64_t n = 1);
  void AddError(const std::string& code);
  void SetLeases(int64_t n);
  void SetCacheBytes(uint64_t n);
  void SetCacheBudget(uint64_t n);
  void SetSessions(int64_t n);
  void SetModels(int64_t n);
  // Hugging Face Hub models (daemon/hub_models.h): body bytes received from
  // the Hub (API answers and file ranges, retried parts included), HTTP
  // retries, Hub operations that failed (resolve, a read, a fill), and what
  // the cache served: "open" (a model whose every file was cached) or
  // "read" (a shard read from a cached blob).
  void AddHubBytesFetched(uint64_t n);
  void AddHubRetries(uint64_t n);
  void AddHubFetchError();
  void AddHubCacheHit(const std::string& kind);

  uint64_t bytes_read() const;
  uint64_t bytes_decoded() const;
  uint64_t layers_served() const;
  uint64_t layer_decodes() const;
  uint64_t cache_hits() const;
  uint64_t cache_misses() const;
  uint64_t cache_evictions() const;
  uint64_t errors() const { return errors_total_.load(); }
  double decode_seconds() const;
  uint64_t hub_bytes_fetched() const;
  uint64_t hub_retries() const;
  uint64_t hub_fetch_errors() const;
  uint64_t hub_cache_hits(const std::string& kind) const;

  std::shared_ptr<prometheus::Registry> registry() { return registry_; }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::string address_;  // as given to Serve
  prometheus::Counter* bytes_read_;
  prometheus::Counter* bytes_decoded_;
  prometheus::Counter* decode_seconds_;
  prometheus::Counter* layer_decodes_;
  prometheus::Counter* layers_served_;
  prometheus::Counter* cache_hits_;
  prometheus::Counter* cache_misses_;
  prometheus::Counter* cache_evictions_;
  prometheus::Family<prometheus::Counter>* errors_;
  prometheus::Counter* hub_bytes_;
  prometheus::Counter* hub_retries_;
  prometheus::Counter* hub_errors_;
  prometheus::Counter* hub_cache_open_;
  prometheus::Counter* hub_cache_read_;
  prometheus::Gauge* leases_;
  prometheus::Gauge* cache_bytes_;
  prometheus::Gauge* cache_budget_;
  prometheus::Gauge* sessions_;
  prometheus::Gauge* models_;
  prometheus::Gauge* decode_gbps_;
  std::atomic<uint64_t> errors_total_{0};
};

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_METRICS_H_
