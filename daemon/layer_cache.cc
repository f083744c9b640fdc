#include "daemon/layer_cache.h"

#include <algorithm>
#include <future>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
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

namespace {
LayerCache::Options BudgetOnly(uint64_t budget) {
  LayerCache::Options options;
  options.budget = budget;
  return options;
}
}  // namespace

LayerCache::LayerCache(uint64_t budget_bytes, Executor executor, Metrics* metrics)
    : LayerCache(BudgetOnly(budget_bytes), std::move(executor), metrics) {}

LayerCache::LayerCache(const Options& options, Executor executor, Metrics* metrics)
    : budget_(options.budget),
      options_(options),
      executor_(std::move(executor)),
      metrics_(metrics) {
  stats_.budget = budget_;
  if (metrics_ != nullptr) metrics_->SetCacheBudget(budget_);
  timer_ = std::thread([this] { TimerLoop(); });
}

LayerCache::~LayerCache() {
  std::vector<std::pair<std::vector<Callback>, absl::Status>> failed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    for (const auto& entry : queue_) {
      failed.push_back({std::move(entry->waiters),
                        absl::UnavailableError("the layer cache is shutting down")});
      entries_.erase(entry->key);
    }
    queue_.clear();
  }
  timer_cv_.notify_all();
  timer_.join();
  for (auto& [waiters, status] : failed) {
    for (auto& w : waiters) w(status, false);
  }
  WaitIdle();
}

uint64_t LayerCache::Cost(uint64_t size) const {
  const uint64_t g = std::max<uint64_t>(options_.granularity, 1);
  size = std::max<uint64_t>(size, 1);
  if (size > UINT64_MAX - (g - 1)) return UINT64_MAX;
  return (size + g - 1) / g * g;
}

void LayerCache::WaitIdle() {
  std::unique_lock<std::mutex> lock(mu_);
  idle_cv_.wait(lock, [&] { return loads_in_flight_ == 0; });
}

struct LayerCache::HereRunner {
  std::mutex mu;
  std::condition_variable cv;
  std::function<void()> task;  // a load to run on the waiting thread
  bool done = false;
  absl::StatusOr<Lease> result = absl::UnknownError("not acquired");
  bool hit = false;
};

void LayerCache::Acquire(const LayerKey& key, uint64_t size, LoadFn load, Callback done) {
  AcquireImpl(key, size, std::move(load), std::move(done), nullptr);
}

absl::StatusOr<LayerCache::Lease> LayerCache::AcquireHere(const LayerKey& key, uint64_t size,
                                                          LoadFn load, bool* hit) {
  auto runner = std::make_shared<HereRunner>();
  AcquireImpl(
      key, size, std::move(load),
      [runner](absl::StatusOr<Lease> lease, bool h) {
        std::lock_guard<std::mutex> lock(runner->mu);
        runner->result = std::move(lease);
        runner->hit = h;
        runner->done = true;
        runner->cv.notify_all();
      },
      runner);
  std::unique_lock<std::mutex> lock(runner->mu);
  while (true) {
    runner->cv.wait(lock, [&] { return runner->done || runner->task != nullptr; });
    if (runner->task == nullptr) break;
    std::function<void()> task = std::move(runner->task);
    runner->task = nullptr;
    lock.unlock();
    task();  // the load, then FinishLoad (which may post a retry)
    lock.lock();
  }
  if (hit != nullptr) *hit = runner->hit;
  absl::StatusOr<Lease> result = std::move(runner->result);
  runner->result = absl::UnknownError("taken");
  return result;
}

void LayerCache::AcquireImpl(const LayerKey& key, uint64_t size, LoadFn load, Callback done,
                             std::shared_ptr<HereRunner> here) {
  std::vector<std::shared_ptr<LayerData>> graveyard;
  std::shared_ptr<Entry> to_load;
  absl::Status refused;
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
    const uint64_t cost = Cost(size);
    if (cost > budget_ || stopping_) {
      refused = stopping_ ? absl::UnavailableError("the layer cache is shutting down")
                          : absl::ResourceExhaustedError(absl::StrCat(
                                "layer ", key.layer, " of model ", key.model, " needs ", cost,
                                " bytes, more than the whole cache budget of ", budget_,
                                " bytes (raise --cache-budget)"));
    } else if (queue_.empty() && MakeRoomLocked(cost, /*evict_unclaimed=*/true, &graveyard)) {
      to_load = NewLoadingEntryLocked(key, cost, std::move(load));
      to_load->here = std::move(here);
      to_load->waiters.push_back(std::move(done));
    } else {
      // No room now: wait for admission (in order), without blocking.
      auto entry = std::make_shared<Entry>();
      entry->key = key;
      entry->queued = true;
      entry->cost = cost;
      entry->load = std::move(load);
      entry->here = std::move(here);
      entry->deadline = std::chrono::steady_clock::now() + options_.admission_timeout;
      entry->waiters.push_back(std::move(done));
      entries_.emplace(key, entry);
      queue_.push_back(std::move(entry));
      ++stats_.admission_waits;
      timer_cv_.notify_all();
      return;
    }
  }
  graveyard.clear();
  if (!refused.ok()) {
    done(refused, false);
    return;
  }
  StartLoad(std::move(to_load));
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
    if (stopping_ || entries_.count(key) != 0) return false;
    // Demanded layers waiting for room come first.
    if (!queue_.empty()) return false;
    const uint64_t cost = Cost(size);
    if (cost > budget_) return false;
    if (!MakeRoomLocked(cost, /*evict_unclaimed=*/false, &graveyard)) return false;
    to_load = NewLoadingEntryLocked(key, cost, std::move(load));
  }
  graveyard.clear();
  StartLoad(std::move(to_load));
  return true;
}

std::shared_ptr<LayerCache::Entry> LayerCache::NewLoadingEntryLocked(const LayerKey& key,
                                                                     uint64_t cost, LoadFn load) {
  auto entry = std::make_shared<Entry>();
  entry->key = key;
  entry->cost = cost;
  entry->load = std::move(load);
  entries_.emplace(key, entry);
  ReserveLocked(entry.get());
  return entry;
}

void LayerCache::ReserveLocked(Entry* entry) {
  entry->queued = false;
  entry->reserved = entry->cost;
  stats_.bytes += entry->reserved;
  stats_.peak_bytes = std::max(stats_.peak_bytes, stats_.bytes);
  ++loads_in_flight_;
  UpdateGaugesLocked();
}

void LayerCache::AdmitLocked(std::vector<std::shared_ptr<Entry>>* to_start,
                             std::vector<std::shared_ptr<LayerData>>* graveyard) {
  while (!queue_.empty() && !stopping_) {
    Entry* head = queue_.front().get();
    if (!MakeRoomLocked(head->cost, /*evict_unclaimed=*/true, graveyard)) break;
    ReserveLocked(head);
    to_start->push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
}

void LayerCache::StartLoads(std::vector<std::shared_ptr<Entry>> entries) {
  for (auto& e : entries) StartLoad(std::move(e));
}

void LayerCache::StartLoad(std::shared_ptr<Entry> entry) {
  LoadFn load = entry->load;  // a copy: the entry keeps it for a retry
  std::shared_ptr<HereRunner> here = entry->here;
  std::function<void()> task = [this, entry = std::move(entry), load = std::move(load)]() mutable {
    absl::StatusOr<std::shared_ptr<LayerData>> result = load();
    if (result.ok() && *result == nullptr) {
      result = absl::InternalError("layer loader returned no data");
    }
    FinishLoad(entry, std::move(result));
  };
  if (here != nullptr) {
    // AcquireHere's thread waits for exactly this (its entry's load).
    std::lock_guard<std::mutex> lock(here->mu);
    here->task = std::move(task);
    here->cv.notify_all();
    return;
  }
  executor_(std::move(task));
}

void LayerCache::FinishLoad(const std::shared_ptr<Entry>& entry,
                            absl::StatusOr<std::shared_ptr<LayerData>> result) {
  std::vector<Callback> waiters;
  std::vector<std::shared_ptr<LayerData>> graveyard;
  std::vector<Lease> leases;
  std::vector<std::shared_ptr<Entry>> to_start;
  bool retry = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.loads;
    if (!result.ok() && IsAllocationFailure(result.status()) &&
        entry->attempts < options_.allocation_retries && !stopping_ &&
        EvictForAllocationLocked(entry->reserved, &graveyard) > 0) {
      // The memory (not the budget) ran out: room was made; try again.
      ++entry->attempts;
      ++stats_.allocation_retries;
      retry = true;
    } else if (!result.ok()) {
      // Not cached: the next request tries again (the error may be transient).
      waiters = std::move(entry->waiters);
      entry->waiters.clear();
      ++stats_.load_errors;
      stats_.bytes -= entry->reserved;
      entry->reserved = 0;
      entry->load = nullptr;
      entry->here = nullptr;
      entries_.erase(entry->key);
      AdmitLocked(&to_start, &graveyard);
    } else {
      waiters = std::move(entry->waiters);
      entry->waiters.clear();
      entry->load = nullptr;
      entry->here = nullptr;
      entry->data = std::move(*result);
      // Charged what admission reserved (a loader that used more is charged
      // more; Model::LoadLayer uses exactly the declared size).
      const uint64_t charge = std::max(entry->reserved, Cost(entry->data->bytes));
      stats_.bytes = stats_.bytes - entry->reserved + charge;
      entry->reserved = charge;
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
  graveyard.clear();  // frees the evicted layers' memory before a retry
  if (retry) {
    StartLoad(entry);  // still in flight: loads_in_flight_ unchanged
    return;
  }
  StartLoads(std::move(to_start));
  for (size_t i = 0; i < waiters.size(); ++i) {
    if (result.ok()) {
      waiters[i](std::move(leases[i]), i != 0);
    } else {
      waiters[i](result.status(), false);
    }
  }
  leases.clear();
  std::lock_guard<std::mutex> lock(mu_);
  --loads_in_flight_;
  // Under the lock: once WaitIdle sees 0 the cache may be destroyed, so
  // nothing here may touch it after the lock is released.
  idle_cv_.notify_all();
}

void LayerCache::Release(const std::shared_ptr<Entry>& entry) {
  std::vector<std::shared_ptr<LayerData>> graveyard;
  std::vector<std::shared_ptr<Entry>> to_start;
  {
    std::lock_guard<std::mutex> lock(mu_);
    --stats_.leases;
    if (--entry->refs == 0) {
      lru_.push_front(entry.get());
      entry->lru_it = lru_.begin();
      entry->in_lru = true;
      if (stats_.bytes > budget_) MakeRoomLocked(0, /*evict_unclaimed=*/false, &graveyard);
      AdmitLocked(&to_start, &graveyard);
    }
    UpdateGaugesLocked();
  }
  graveyard.clear();
  StartLoads(std::move(to_start));
}

void LayerCache::TimerLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    if (queue_.empty()) {
      timer_cv_.wait(lock);
      continue;
    }
    auto next = queue_.front()->deadline;
    for (const auto& e : queue_) next = std::min(next, e->deadline);
    if (std::chrono::steady_clock::now() < next) {
      timer_cv_.wait_until(lock, next);
      continue;
    }
    // Fail every request past its deadline.
    const auto now = std::chrono::steady_clock::now();
    std::vector<std::pair<std::vector<Callback>, absl::Status>> expired;
    for (auto it = queue_.begin(); it != queue_.end();) {
      if ((*it)->deadline > now) {
        ++it;
        continue;
      }
      absl::Status status = absl::ResourceExhaustedError(FullMessageLocked(**it));
      expired.push_back({std::move((*it)->waiters), status});
      ++stats_.admission_timeouts;
      entries_.erase((*it)->key);
      it = queue_.erase(it);
    }
    // The next in line may fit where the expired head did not.
    std::vector<std::shared_ptr<Entry>> to_start;
    std::vector<std::shared_ptr<LayerData>> graveyard;
    AdmitLocked(&to_start, &graveyard);
    UpdateGaugesLocked();
    lock.unlock();
    graveyard.clear();
    StartLoads(std::move(to_start));
    for (auto& [waiters, status] : expired) {
      for (auto& w : waiters) w(status, false);
    }
    lock.lock();
  }
}

std::string LayerCache::FullMessageLocked(const Entry& entry) const {
  uint64_t held = 0;
  for (const auto& [key, e] : entries_) {
    if (e->ready && e->refs > 0) held += e->reserved;
  }
  return absl::StrFormat(
      "layer cache full: layer %d of model %s needs %d bytes; budget %d bytes, %d in use, of "
      "which %d held by %d leases; no room within the admission timeout of %d ms (release "
      "layers sooner, use a smaller window, or raise --cache-budget)",
      entry.key.layer, entry.key.model, entry.cost, budget_, stats_.bytes, held, stats_.leases,
      options_.admission_timeout.count());
}

bool LayerCache::MakeRoomLocked(uint64_t extra, bool evict_unclaimed,
                                std::vector<std::shared_ptr<LayerData>>* graveyard) {
  auto fits = [&] { return stats_.bytes <= budget_ && extra <= budget_ - stats_.bytes; };
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

uint64_t LayerCache::EvictForAllocationLocked(uint64_t need,
                                              std::vector<std::shared_ptr<LayerData>>* graveyard) {
  uint64_t freed = 0;
  for (int pass = 0; pass < 2 && freed < need; ++pass) {
    std::vector<Entry*> candidates;  // least recently used first; read ones first
    for (auto it = lru_.rbegin(); it != lru_.rend(); ++it) {
      if ((pass == 0) == (*it)->claimed) candidates.push_back(*it);
    }
    for (Entry* e : candidates) {
      if (freed >= need) break;
      freed += e->reserved;
      EvictLocked(e, graveyard);
    }
  }
  return freed;
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
  std::vector<std::shared_ptr<Entry>> to_start;
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
    AdmitLocked(&to_start, &graveyard);
    UpdateGaugesLocked();
  }
  graveyard.clear();
  StartLoads(std::move(to_start));
  return result;
}

LayerCache::Stats LayerCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  Stats s = stats_;
  s.entries = 0;
  s.held_bytes = 0;
  for (const auto& [key, e] : entries_) {
    if (e->queued) continue;
    ++s.entries;
    if (e->ready && e->refs > 0) s.held_bytes += e->reserved;
  }
  s.queued = static_cast<uint32_t>(queue_.size());
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
  auto it = entries_.find(key);
  return it != entries_.end() && !it->second->queued;
}

void LayerCache::UpdateGaugesLocked() {
  if (metrics_ == nullptr) return;
  metrics_->SetCacheBytes(stats_.bytes);
  metrics_->SetLeases(static_cast<int64_t>(stats_.leases));
}

}  // namespace bigsmall::daemon
