// The shared layer cache: one decoded copy per (model, layer, device),
// whoever asks. Concurrent requests for the same layer wait on the one load
// in flight; reference-counted leases keep a layer alive; unleased layers
// are evicted least-recently-used first whenever the cache is over budget.
//
// Budget policy: a prefetch only starts when the layer fits after evicting
// unleased layers; a demanded layer always loads (a reader is waiting), so
// the cache can exceed the budget by at most what clients hold leased, and
// shrinks back as soon as they release.
#ifndef BIGSMALL_DAEMON_LAYER_CACHE_H_
#define BIGSMALL_DAEMON_LAYER_CACHE_H_

#include <compare>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/host_arena.h"

namespace bigsmall::daemon {

class Metrics;

struct LayerKey {
  std::string model;  // model id plus generation
  int32_t layer = 0;  // layer index, -1 for the non-layer group
  std::string device = "host";
  auto operator<=>(const LayerKey&) const = default;
};

// One decoded layer. Immutable once published.
struct LayerData {
  std::unique_ptr<HostArena> arena;  // null in unit tests
  uint64_t bytes = 0;                // bytes accounted against the budget
  double decode_seconds = 0;
};

class LayerCache {
 private:
  struct Entry;

 public:
  using Executor = std::function<void(std::function<void()>)>;
  using LoadFn = std::function<absl::StatusOr<std::shared_ptr<LayerData>>()>;

  // Keeps one layer alive and readable. Move-only; releases on destruction.
  class Lease {
   public:
    Lease() = default;
    Lease(Lease&& other) noexcept;
    Lease& operator=(Lease&& other) noexcept;
    ~Lease();
    const LayerData& data() const;
    const LayerKey& key() const;
    explicit operator bool() const { return entry_ != nullptr; }
    void Reset();

   private:
    friend class LayerCache;
    Lease(LayerCache* cache, std::shared_ptr<Entry> entry)
        : cache_(cache), entry_(std::move(entry)) {}
    LayerCache* cache_ = nullptr;
    std::shared_ptr<Entry> entry_;
  };

  // `hit`: no new load was started for this request.
  using Callback = std::function<void(absl::StatusOr<Lease> lease, bool hit)>;

  // Loads run through `executor` (which must run every task it is given).
  LayerCache(uint64_t budget_bytes, Executor executor, Metrics* metrics);
  // Waits for loads in flight. Every lease must be gone first.
  ~LayerCache();

  // Calls `done` with a lease, now (cached) or when the load finishes (on
  // the loading thread). `size` is what the layer will occupy.
  void Acquire(const LayerKey& key, uint64_t size, LoadFn load, Callback done);
  // Blocking form of Acquire.
  absl::StatusOr<Lease> AcquireSync(const LayerKey& key, uint64_t size, LoadFn load,
                                    bool* hit = nullptr);
  // Starts loading `key` without leasing it, if absent and it fits the budget.
  // Returns true when a load was started.
  bool Prefetch(const LayerKey& key, uint64_t size, LoadFn load);

  struct EvictResult {
    uint32_t layers = 0;
    uint64_t bytes = 0;
  };
  // Evicts every unleased, loaded layer whose key matches.
  EvictResult Evict(const std::function<bool(const LayerKey&)>& match);

  struct Stats {
    uint64_t budget = 0;
    uint64_t bytes = 0;       // loaded + loading (reserved)
    uint64_t peak_bytes = 0;
    uint32_t entries = 0;
    uint64_t leases = 0;
    uint64_t loads = 0;
    uint64_t load_errors = 0;
    uint64_t hits = 0;
    uint64_t misses = 0;
    uint64_t evictions = 0;
  };
  Stats stats() const;

  struct Usage {
    uint32_t entries = 0;
    uint64_t bytes = 0;
    uint64_t leases = 0;
  };
  Usage UsageOf(const std::string& model) const;
  bool Contains(const LayerKey& key) const;
  uint64_t budget() const { return budget_; }
  // Blocks until no load is in flight.
  void WaitIdle();

 private:
  struct Entry {
    LayerKey key;
    bool ready = false;
    uint64_t reserved = 0;
    std::shared_ptr<LayerData> data;
    uint32_t refs = 0;
    bool claimed = false;  // leased at least once (prefetches are kept until then)
    std::vector<Callback> waiters;
    bool in_lru = false;
    std::list<Entry*>::iterator lru_it;
  };

  // Registers a new entry being loaded (reserving `size` bytes). mu_ held.
  std::shared_ptr<Entry> NewLoadingEntryLocked(const LayerKey& key, uint64_t size);
  void StartLoad(std::shared_ptr<Entry> entry, LoadFn load);
  void FinishLoad(const std::shared_ptr<Entry>& entry,
                  absl::StatusOr<std::shared_ptr<LayerData>> result);
  void Release(const std::shared_ptr<Entry>& entry);
  // Evicts LRU unleased entries until `extra` more bytes fit. With
  // `evict_unclaimed` false, prefetched layers nobody took yet are kept.
  // Returns true when it fits. Evicted data goes to `graveyard` so it is
  // destroyed outside the lock.
  bool MakeRoomLocked(uint64_t extra, bool evict_unclaimed,
                      std::vector<std::shared_ptr<LayerData>>* graveyard);
  void EvictLocked(Entry* entry, std::vector<std::shared_ptr<LayerData>>* graveyard);
  void UpdateGaugesLocked();

  const uint64_t budget_;
  Executor executor_;
  Metrics* metrics_;
  mutable std::mutex mu_;
  std::condition_variable idle_cv_;
  std::map<LayerKey, std::shared_ptr<Entry>> entries_;
  std::list<Entry*> lru_;  // unleased loaded entries, most recent first
  Stats stats_;
  uint64_t loads_in_flight_ = 0;
};

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_LAYER_CACHE_H_
