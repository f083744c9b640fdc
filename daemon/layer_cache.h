// The shared layer cache: one decoded copy per (model, layer, device),
// whoever asks. Concurrent requests for the same layer wait on the one load
// in flight; reference-counted leases keep a layer alive; unleased layers
// are evicted least-recently-used first to make room.
//
// The budget is a limit (admission control). A layer's cost (its size
// rounded up to Options::granularity: the arena page for host layers) is
// reserved when its load is admitted, so loaded + loading bytes never exceed
// the budget (peak_bytes <= budget, exactly). A demanded layer that does not
// fit after evicting every unleased layer waits, in FIFO order, without
// blocking any thread: it is admitted when a lease is released (or a load
// fails, or an Evict frees room), and fails RESOURCE_EXHAUSTED, naming the
// budget and the bytes held, after Options::admission_timeout. A layer larger
// than the whole budget fails at once. A load that fails with an allocation
// failure (IsAllocationFailure: the shm filesystem is full, no mapping left)
// evicts unleased layers and is retried; with nothing left to evict it fails
// RESOURCE_EXHAUSTED. A prefetch starts only when nobody waits for admission
// and the layer fits after evicting unleased layers that were already read
// (claimed); it never evicts a leased layer, a layer being loaded or waited
// for, or another prefetched layer nobody has read yet.
#ifndef BIGSMALL_DAEMON_LAYER_CACHE_H_
#define BIGSMALL_DAEMON_LAYER_CACHE_H_

#include <chrono>
#include <compare>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/arena_allocator.h"

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
  // The layer's block in an arena (host: a range of a shared-memory file).
  // Null in unit tests.
  std::unique_ptr<Block> arena;
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

  struct Options {
    uint64_t budget = 0;  // bytes
    // How long a demanded layer may wait for room before RESOURCE_EXHAUSTED.
    std::chrono::milliseconds admission_timeout{30000};
    // Costs are sizes rounded up to this (host arenas: kArenaAlignment).
    uint64_t granularity = 1;
    // Retries of a load that failed to allocate, each after evicting.
    int allocation_retries = 3;
  };

  // Loads run through `executor` (which must run every task it is given).
  LayerCache(const Options& options, Executor executor, Metrics* metrics);
  LayerCache(uint64_t budget_bytes, Executor executor, Metrics* metrics);
  // Fails requests still waiting for admission (UNAVAILABLE), then waits for
  // loads in flight. Every lease must be gone first.
  ~LayerCache();

  // Calls `done` with a lease, now (cached) or when the load finishes (on
  // the loading thread), or with an error (on the loading thread, or on the
  // cache's timer thread for an admission timeout). `size` is what the layer
  // will occupy.
  void Acquire(const LayerKey& key, uint64_t size, LoadFn load, Callback done);
  // Blocking form of Acquire.
  absl::StatusOr<Lease> AcquireSync(const LayerKey& key, uint64_t size, LoadFn load,
                                    bool* hit = nullptr);
  // AcquireSync for a load that runs inside another load (a fine-tune
  // delta's layer needs its base's layer first): when this request has to
  // start the load, the load runs on the calling thread, not on the
  // executor, also after waiting for admission or for an allocation retry,
  // so a load thread never blocks on a task queued behind it (one load
  // thread cannot deadlock). A layer already cached or being loaded by
  // someone else is shared as with Acquire.
  absl::StatusOr<Lease> AcquireHere(const LayerKey& key, uint64_t size, LoadFn load,
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
    uint64_t held_bytes = 0;  // of layers with at least one lease
    uint32_t queued = 0;      // requests waiting for admission
    uint64_t admission_waits = 0;
    uint64_t admission_timeouts = 0;
    uint64_t allocation_retries = 0;
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
  // The calling thread of AcquireHere: where its entry's load runs.
  struct HereRunner;
  struct Entry {
    LayerKey key;
    bool ready = false;
    bool queued = false;  // waiting for admission (nothing reserved yet)
    uint64_t cost = 0;    // what admission reserves
    uint64_t reserved = 0;
    LoadFn load;          // kept while queued and for allocation retries
    int attempts = 0;
    std::chrono::steady_clock::time_point deadline;
    std::shared_ptr<LayerData> data;
    uint32_t refs = 0;
    bool claimed = false;  // leased at least once (prefetches are kept until then)
    std::vector<Callback> waiters;
    bool in_lru = false;
    std::list<Entry*>::iterator lru_it;
    // Set by AcquireHere: StartLoad hands the load to that thread.
    std::shared_ptr<HereRunner> here;
  };

  void AcquireImpl(const LayerKey& key, uint64_t size, LoadFn load, Callback done,
                   std::shared_ptr<HereRunner> here);

  // Registers a new entry being loaded (reserving `cost` bytes). mu_ held.
  std::shared_ptr<Entry> NewLoadingEntryLocked(const LayerKey& key, uint64_t cost, LoadFn load);
  // Moves an admitted entry from the queue to loading. mu_ held.
  void ReserveLocked(Entry* entry);
  // Admits queued entries, in order, while they fit. mu_ held; the loads to
  // start are appended to `to_start` (started outside the lock).
  void AdmitLocked(std::vector<std::shared_ptr<Entry>>* to_start,
                   std::vector<std::shared_ptr<LayerData>>* graveyard);
  void StartLoads(std::vector<std::shared_ptr<Entry>> entries);
  void StartLoad(std::shared_ptr<Entry> entry);
  void TimerLoop();
  uint64_t Cost(uint64_t size) const;
  std::string FullMessageLocked(const Entry& entry) const;
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
  // After an allocation failure: evicts unleased layers (read ones first)
  // until `need` bytes are freed or none is left. Returns the bytes freed.
  uint64_t EvictForAllocationLocked(uint64_t need,
                                    std::vector<std::shared_ptr<LayerData>>* graveyard);
  void UpdateGaugesLocked();

  const uint64_t budget_;
  const Options options_;
  Executor executor_;
  Metrics* metrics_;
  mutable std::mutex mu_;
  std::condition_variable idle_cv_;
  std::map<LayerKey, std::shared_ptr<Entry>> entries_;
  std::list<Entry*> lru_;  // unleased loaded entries, most recent first
  std::list<std::shared_ptr<Entry>> queue_;  // waiting for admission, FIFO
  Stats stats_;
  uint64_t loads_in_flight_ = 0;
  bool stopping_ = false;
  std::condition_variable timer_cv_;
  std::thread timer_;  // fails queued requests at their deadline
};

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_LAYER_CACHE_H_
