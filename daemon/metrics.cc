#include "daemon/metrics.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <thread>

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
  hub_bytes_ = NewCounter(r, "bigsmall_hub_bytes_fetched_total",
                          "Bytes received from the Hugging Face Hub (API answers and file ranges)");
  hub_retries_ = NewCounter(r, "bigsmall_hub_retries_total", "HTTP retries of Hub requests");
  hub_errors_ = NewCounter(r, "bigsmall_hub_fetch_errors_total",
                           "Hub resolves, reads and cache fills that failed");
  auto& hub_cache = prometheus::BuildCounter()
                        .Name("bigsmall_hub_cache_hits_total")
                        .Help("Hub model opens (kind=open) and shard reads (kind=read) served "
                              "from the local Hub cache")
                        .Register(r);
  hub_cache_open_ = &hub_cache.Add({{"kind", "open"}});
  hub_cache_read_ = &hub_cache.Add({{"kind", "read"}});
  leases_ = NewGauge(r, "bigsmall_leases_active", "Layer leases held by clients");
  cache_bytes_ = NewGauge(r, "bigsmall_cache_bytes", "Bytes of decoded layers in the cache");
  cache_budget_ = NewGauge(r, "bigsmall_cache_budget_bytes", "Layer cache memory budget");
  sessions_ = NewGauge(r, "bigsmall_sessions_active", "Open streaming sessions");
  models_ = NewGauge(r, "bigsmall_models_open", "Open models");
  decode_gbps_ = NewGauge(r, "bigsmall_decode_gbps", "Decode throughput of the last layer, GB/s");
}

// Connects once to host:port of the exposer and hangs up.
static void Poke(const std::string& address, int port) {
  std::string host = address.substr(0, address.rfind(':'));
  if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  if (host.empty() || host == "0.0.0.0" || host == "*") host = "127.0.0.1";
  if (host == "::") host = "::1";
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0) return;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    bool connected = ::connect(fd, a->ai_addr, a->ai_addrlen) == 0;
    ::close(fd);
    if (connected) break;
  }
  freeaddrinfo(found);
}

Metrics::~Metrics() {
  if (exposer_ == nullptr) return;
  // civetweb's mg_stop waits for its listener thread, which only notices
  // the stop when its poll() returns: after up to 2 s, or at once when a
  // connection arrives. Connect until the exposer is gone.
  std::vector<int> ports = exposer_->GetListeningPorts();
  std::atomic<bool> stopped{false};
  std::thread waker([&] {
    while (!stopped.load()) {
      for (int port : ports) Poke(address_, port);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  exposer_.reset();
  stopped.store(true);
  waker.join();
}

absl::Status Metrics::Serve(const std::string& address) {
  address_ = address;
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

void Metrics::AddHubBytesFetched(uint64_t n) { hub_bytes_->Increment(static_cast<double>(n)); }
void Metrics::AddHubRetries(uint64_t n) { hub_retries_->Increment(static_cast<double>(n)); }
void Metrics::AddHubFetchError() { hub_errors_->Increment(); }
void Metrics::AddHubCacheHit(const std::string& kind) {
  (kind == "open" ? hub_cache_open_ : hub_cache_read_)->Increment();
}
uint64_t Metrics::hub_bytes_fetched() const { return static_cast<uint64_t>(hub_bytes_->Value()); }
uint64_t Metrics::hub_retries() const { return static_cast<uint64_t>(hub_retries_->Value()); }
uint64_t Metrics::hub_fetch_errors() const { return static_cast<uint64_t>(hub_errors_->Value()); }
uint64_t Metrics::hub_cache_hits(const std::string& kind) const {
  return static_cast<uint64_t>((kind == "open" ? hub_cache_open_ : hub_cache_read_)->Value());
}

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
