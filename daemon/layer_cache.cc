#include "daemon/layer_cache.h"

#include <future>
#include <utility>

#include "daemon/metrics.h"

namespace bigsmall::daemon {

LayerCache::Lease::Lease(Lease&& other) noexcept
    : cache_(std::exchange(other.cache_, nullptr)), entry_(std::move(other.entry_)) {}

LayerCache::Lease& LayerCache::Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    Reset();
    cache_ = std::exchange(other.cache_, nullptr);
    entry_ = std::move(other.entry_);
  }
  return *this;
}

LayerCache::Lease::~Lease() { Reset(); }

void LayerCache::Lease::Reset() {
  if (entry_ != nullptr) {
    cache_->Release(entry_);
    entry_.reset();
    cache_ = nullptr;
  }
}

const LayerData& LayerCache::Lease::data() const { return *entry_->data; }
const LayerKey& LayerCache::Lease::key() const { return entry_->key; }

LayerCache::LayerCache(uint64_t budget_bytes, Executor executor, Metrics* metrics)
    : budget_(budget_bytes), executor_(std::move(executor)), metrics_(metrics) {
  stats_.budget = budget_;
  if (metrics_ != nullptr) metrics_->SetCacheBudget(budget_);
}

LayerCache::~LayerCache() { WaitIdle(); }

void LayerCache::WaitIdle() {
  std::unique_lock<std::mutex> lock(mu_);
  idle_cv_.wait(lock, [&] { return loads_in_flight_ == 0; });
}

void LayerCache::Acquire(const LayerKey& key, uint64_t size, LoadFn load, Callback done) {
  std::vector<std::shared_ptr<LayerData>> graveyard;
  std::shared_ptr<Entry> to_load;
  {
    std::unique_lock<std::mutex> lock(mu_);
    auto it = entries_.find(key);
    if (it != entries_.end()) {
      std::shared_ptr<Entry> entry = it->second;
      ++stats_.hits;
      if (metrics_ != nullptr) metrics_->AddCacheHit();
      if (!entry->ready) {
        entry->waiters.push_back(std::move(done));
        return;
      }
      if (entry->in_lru) {
        lru_.erase(entry->lru_it);
        entry->in_lru = false;
      }
      ++entry->refs;
      entry->claimed = true;
      ++stats_.leases;
      UpdateGaugesLocked();
      lock.unlock();
      done(Lease(this, std::move(entry)), true);
      return;
    }
    ++stats_.misses;
    if (metrics_ != nullptr) metrics_->AddCacheMiss();
    // A reader is waiting: load even when nothing more can be evicted.
    MakeRoomLocked(size, /*evict_unclaimed=*/true, &graveyard);
    to_load = NewLoadingEntryLocked(key, size);
    to_load->waiters.push_back(std::move(done));
  }
  graveyard.clear();
  StartLoad(std::move(to_load), std::move(load));
}

absl::StatusOr<LayerCache::Lease> LayerCache::AcquireSync(const LayerKey& key, uint64_t size,
                                                          LoadFn load, bool* hit) {
  std::promise<std::pair<absl::StatusOr<Lease>, bool>> promise;
  auto future = promise.get_future();
  Acquire(key, size, std::move(load), [&promise](absl::StatusOr<Lease> lease, bool h) {
    promise.set_value({std::move(lease), h});
  });
  auto result = future.get();
  if (hit != nullptr) *hit = result.second;
  return std::move(result.first);
}

bool LayerCache::Prefetch(const LayerKey& key, uint64_t size, LoadFn load) {
  std::vector<std::shared_ptr<LayerData>> graveyard;
  std::shared_ptr<Entry> to_load;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (entries_.count(key) != 0) return false;
    if (!MakeRoomLocked(size, /*evict_unclaimed=*/false, &graveyard)) return false;
    to_load = NewLoadingEntryLocked(key, size);
  }
  graveyard.clear();
  StartLoad(std::move(to_load), std::move(load));
  return true;
}

std::shared_ptr<LayerCache::Entry> LayerCache::NewLoadingEntryLocked(const LayerKey& key, uint64_t size) {
  auto entry = std::make_shared<Entry>();
  entry->key = key;
  entry->reserved = size;
  entries_.emplace(key, entry);
  stats_.bytes += size;
  stats_.peak_bytes = std::max(stats_.peak_bytes, stats_.bytes);
  ++loads_in_flight_;
  UpdateGaugesLocked();
  return entry;
}

void LayerCache::StartLoad(std::shared_ptr<Entry> entry, LoadFn load) {
  executor_([this, entry = std::move(entry), load = std::move(load)]() mutable {
    absl::StatusOr<std::shared_ptr<LayerData>> result = load();
    if (result.ok() && *result == nullptr) {
      result = absl::InternalError("layer loader returned no data");
    }
    FinishLoad(entry, std::move(result));
  });
}

void LayerCache::FinishLoad(const std::shared_ptr<Entry>& entry,
                            absl::StatusOr<std::shared_ptr<LayerData>> result) {
  std::vector<Callback> waiters;
  std::vector<std::shared_ptr<LayerData>> graveyard;
  std::vector<Lease> leases;
  {
    std::lock_guard<std::mutex> lock(mu_);
    waiters = std::move(entry->waiters);
    entry->waiters.clear();
    ++stats_.loads;
    if (!result.ok()) {
      // Not cached: the next request tries again (the error may be transient).
      ++stats_.load_errors;
      stats_.bytes -= entry->reserved;
      entries_.erase(entry->key);
    } else {
      entry->data = std::move(*result);
      stats_.bytes = stats_.bytes - entry->reserved + entry->data->bytes;
      entry->reserved = entry->data->bytes;
      stats_.peak_bytes = std::max(stats_.peak_bytes, stats_.bytes);
      entry->ready = true;
      entry->refs = static_cast<uint32_t>(waiters.size());
      stats_.leases += waiters.size();
      if (!waiters.empty()) {
        entry->claimed = true;
      } else {
        lru_.push_front(entry.get());
        entry->lru_it = lru_.begin();
        entry->in_lru = true;
      }
      for (size_t i = 0; i < waiters.size(); ++i) leases.push_back(Lease(this, entry));
      if (stats_.bytes > budget_) MakeRoomLocked(0, /*evict_unclaimed=*/false, &graveyard);
    }
    UpdateGaugesLocked();
  }
  graveyard.clear();
  for (size_t i = 0; i < waiters.size(); ++i) {
    if (result.ok()) {
      waiters[i](std::move(leases[i]), i != 0);
    } else {
      waiters[i](result.status(), false);
    }
  }
  leases.clear();
  {
    std::lock_guard<std::mutex> lock(mu_);
    --loads_in_flight_;
  }
  idle_cv_.notify_all();
}

void LayerCache::Release(const std::shared_ptr<Entry>& entry) {
  std::vector<std::shared_ptr<LayerData>> graveyard;
  {
    std::lock_guard<std::mutex> lock(mu_);
    --stats_.leases;
    if (--entry->refs == 0) {
      lru_.push_front(entry.get());
      entry->lru_it = lru_.begin();
      entry->in_lru = true;
      if (stats_.bytes > budget_) MakeRoomLocked(0, /*evict_unclaimed=*/false, &graveyard);
    }
    UpdateGaugesLocked();
  }
}

bool LayerCache::MakeRoomLocked(uint64_t extra, bool evict_unclaimed,
                                std::vector<std::shared_ptr<LayerData>>* graveyard) {
  auto fits = [&] { return stats_.bytes + extra <= budget_; };
  for (int pass = 0; pass < (evict_unclaimed ? 2 : 1) && !fits(); ++pass) {
    std::vector<Entry*> candidates;  // least recently used first
    for (auto it = lru_.rbegin(); it != lru_.rend(); ++it) {
      if (pass == 1 || (*it)->claimed) candidates.push_back(*it);
    }
    for (Entry* e : candidates) {
      if (fits()) break;
      EvictLocked(e, graveyard);
    }
  }
  return fits();
}

void LayerCache::EvictLocked(Entry* entry, std::vector<std::shared_ptr<LayerData>>* graveyard) {
  if (entry->in_lru) {
    lru_.erase(entry->lru_it);
    entry->in_lru = false;
  }
  stats_.bytes -= entry->reserved;
  ++stats_.evictions;
  if (metrics_ != nullptr) metrics_->AddEviction();
  graveyard->push_back(std::move(entry->data));
  entries_.erase(entry->key);  // may destroy *entry
}

LayerCache::EvictResult LayerCache::Evict(const std::function<bool(const LayerKey&)>& match) {
  EvictResult result;
  std::vector<std::shared_ptr<LayerData>> graveyard;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Entry*> victims;
    for (Entry* e : lru_) {
      if (match(e->key)) victims.push_back(e);
    }
    for (Entry* e : victims) {
      ++result.layers;
      result.bytes += e->reserved;
      EvictLocked(e, &graveyard);
    }
    UpdateGaugesLocked();
  }
  return result;
}

LayerCache::Stats LayerCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  Stats s = stats_;
  s.entries = static_cast<uint32_t>(entries_.size());
  return s;
}

LayerCache::Usage LayerCache::UsageOf(const std::string& model) const {
  std::lock_guard<std::mutex> lock(mu_);
  Usage u;
  for (const auto& [key, e] : entries_) {
    if (key.model != model || !e->ready) continue;
    ++u.entries;
    u.bytes += e->reserved;
    u.leases += e->refs;
  }
  return u;
}

bool LayerCache::Contains(const LayerKey& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.count(key) != 0;
}

void LayerCache::UpdateGaugesLocked() {
  if (metrics_ == nullptr) return;
  metrics_->SetCacheBytes(stats_.bytes);
  metrics_->SetLeases(static_cast<int64_t>(stats_.leases));
}

}  // namespace bigsmall::daemon
