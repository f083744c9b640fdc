#include "daemon/layer_cache.h"

#include <atomic>
#include <chrono>
#include <future>
#include <random>
#include <thread>

#include "codec/thread_pool.h"
#include "daemon/metrics.h"
#include "gtest/gtest.h"

namespace bigsmall::daemon {
namespace {

LayerCache::LoadFn Loader(uint64_t bytes, std::atomic<int>* count, int sleep_ms = 0) {
  return [=]() -> absl::StatusOr<std::shared_ptr<LayerData>> {
    count->fetch_add(1);
    if (sleep_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms));
    auto d = std::make_shared<LayerData>();
    d->bytes = bytes;
    return d;
  };
}

LayerKey Key(int32_t layer, const std::string& model = "m") { return LayerKey{model, layer, "host"}; }

class LayerCacheTest : public ::testing::Test {
 protected:
  ThreadPool pool_{4};
  LayerCache::Executor executor_ = [this](std::function<void()> f) { pool_.Schedule(std::move(f)); };
};

TEST_F(LayerCacheTest, SecondAcquireIsAHit) {
  Metrics metrics;
  LayerCache cache(1000, executor_, &metrics);
  std::atomic<int> loads{0};
  bool hit = true;
  auto a = cache.AcquireSync(Key(0), 100, Loader(100, &loads), &hit);
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(hit);
  auto b = cache.AcquireSync(Key(0), 100, Loader(100, &loads), &hit);
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(hit);
  EXPECT_EQ(loads.load(), 1);
  EXPECT_EQ(&a->data(), &b->data());
  EXPECT_EQ(cache.stats().leases, 2u);
  EXPECT_EQ(metrics.cache_hits(), 1u);
  EXPECT_EQ(metrics.cache_misses(), 1u);
}

TEST_F(LayerCacheTest, ConcurrentRequestsDecodeOnce) {
  LayerCache cache(1 << 20, executor_, nullptr);
  std::atomic<int> loads{0};
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 16; ++i) {
    threads.emplace_back([&] {
      auto lease = cache.AcquireSync(Key(3), 100, Loader(100, &loads, 50));
      if (lease.ok()) ok.fetch_add(1);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 16);
  EXPECT_EQ(loads.load(), 1);
  EXPECT_EQ(cache.stats().leases, 0u);
}

TEST_F(LayerCacheTest, EvictsLeastRecentlyUsedUnleasedLayers) {
  LayerCache cache(300, executor_, nullptr);
  std::atomic<int> loads{0};
  for (int i = 0; i < 6; ++i) {
    auto lease = cache.AcquireSync(Key(i), 100, Loader(100, &loads));
    ASSERT_TRUE(lease.ok());
    EXPECT_LE(cache.stats().bytes, 300u);
  }
  auto s = cache.stats();
  EXPECT_EQ(s.entries, 3u);
  EXPECT_EQ(s.evictions, 3u);
  EXPECT_FALSE(cache.Contains(Key(0)));
  EXPECT_TRUE(cache.Contains(Key(5)));
  EXPECT_LE(s.peak_bytes, 300u);
}

TEST_F(LayerCacheTest, LeasedLayersAreNeverEvictedAndTheBudgetHolds) {
  LayerCache cache(200, executor_, nullptr);
  std::atomic<int> loads{0};
  std::vector<LayerCache::Lease> held;
  for (int i = 0; i < 2; ++i) {
    auto lease = cache.AcquireSync(Key(i), 100, Loader(100, &loads));
    ASSERT_TRUE(lease.ok());
    held.push_back(std::move(*lease));
  }
  // A third reader waits for room instead of going over budget.
  std::promise<bool> done;
  cache.Acquire(Key(2), 100, Loader(100, &loads),
                [&](absl::StatusOr<LayerCache::Lease> lease, bool) { done.set_value(lease.ok()); });
  EXPECT_EQ(cache.stats().bytes, 200u);
  EXPECT_EQ(cache.stats().queued, 1u);
  for (int i = 0; i < 2; ++i) EXPECT_TRUE(cache.Contains(Key(i)));
  held.clear();
  auto f = done.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_TRUE(f.get());
  EXPECT_LE(cache.stats().peak_bytes, 200u);
}

TEST_F(LayerCacheTest, PrefetchRespectsBudgetAndCountsAsOneLoad) {
  LayerCache cache(250, executor_, nullptr);
  std::atomic<int> loads{0};
  EXPECT_TRUE(cache.Prefetch(Key(0), 100, Loader(100, &loads)));
  EXPECT_TRUE(cache.Prefetch(Key(1), 100, Loader(100, &loads)));
  EXPECT_FALSE(cache.Prefetch(Key(1), 100, Loader(100, &loads)));  // already there
  EXPECT_FALSE(cache.Prefetch(Key(2), 100, Loader(100, &loads)));  // would exceed the budget
  cache.WaitIdle();
  bool hit = false;
  auto lease = cache.AcquireSync(Key(0), 100, Loader(100, &loads), &hit);
  ASSERT_TRUE(lease.ok());
  EXPECT_TRUE(hit);
  EXPECT_EQ(loads.load(), 2);
}

TEST_F(LayerCacheTest, ErrorsAreReportedAndNotCached) {
  LayerCache cache(1000, executor_, nullptr);
  std::atomic<int> calls{0};
  auto failing = [&]() -> absl::StatusOr<std::shared_ptr<LayerData>> {
    calls.fetch_add(1);
    return absl::DataLossError("hash mismatch");
  };
  auto lease = cache.AcquireSync(Key(0), 100, failing);
  EXPECT_EQ(lease.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(cache.stats().bytes, 0u);
  EXPECT_FALSE(cache.Contains(Key(0)));
  std::atomic<int> loads{0};
  EXPECT_TRUE(cache.AcquireSync(Key(0), 100, Loader(100, &loads)).ok());
  EXPECT_EQ(cache.stats().load_errors, 1u);
}

TEST_F(LayerCacheTest, EvictByModel) {
  LayerCache cache(1000, executor_, nullptr);
  std::atomic<int> loads{0};
  ASSERT_TRUE(cache.AcquireSync(Key(0, "a"), 100, Loader(100, &loads)).ok());
  ASSERT_TRUE(cache.AcquireSync(Key(1, "a"), 100, Loader(100, &loads)).ok());
  auto held = cache.AcquireSync(Key(2, "a"), 100, Loader(100, &loads));
  ASSERT_TRUE(cache.AcquireSync(Key(0, "b"), 100, Loader(100, &loads)).ok());
  auto r = cache.Evict([](const LayerKey& k) { return k.model == "a"; });
  EXPECT_EQ(r.layers, 2u);  // the leased one stays
  EXPECT_EQ(r.bytes, 200u);
  EXPECT_TRUE(cache.Contains(Key(2, "a")));
  EXPECT_TRUE(cache.Contains(Key(0, "b")));
  EXPECT_EQ(cache.UsageOf("a").leases, 1u);
}


// ---------------------------------------------------------------------------
// Admission control (issue 6): the budget is a limit.

namespace admission {

using namespace std::chrono_literals;

// A loader that records the cache's bytes while it runs (the reservation of
// its own layer included) and the peak over every loader.
struct BudgetProbe {
  LayerCache* cache = nullptr;
  std::atomic<uint64_t> peak{0};
  void Observe() {
    uint64_t b = cache->stats().bytes;
    uint64_t p = peak.load();
    while (b > p && !peak.compare_exchange_weak(p, b)) {
    }
  }
};

TEST_F(LayerCacheTest, BudgetIsNeverExceededUnderConcurrentAcquires) {
  constexpr uint64_t kBudget = 1000;
  LayerCache cache(kBudget, executor_, nullptr);
  BudgetProbe probe;
  probe.cache = &cache;
  std::atomic<int> loads{0};
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(1234 + t);
      std::vector<LayerCache::Lease> held;
      for (int i = 0; i < 60; ++i) {
        int layer = static_cast<int>(rng() % 40);
        uint64_t size = 50 + layer * 7;  // 50..323 bytes; any 3 fit
        auto lease = cache.AcquireSync(
            Key(layer), size, [&, size]() -> absl::StatusOr<std::shared_ptr<LayerData>> {
              loads.fetch_add(1);
              probe.Observe();
              std::this_thread::sleep_for(std::chrono::microseconds(200));  // loads overlap
              auto d = std::make_shared<LayerData>();
              d->bytes = size;
              return d;
            });
        probe.Observe();
        if (lease.ok()) {
          ok.fetch_add(1);
          held.push_back(std::move(*lease));
        }
        // Two threads keep their last lease while acquiring the next (two
        // such leases plus any one layer fit, so some request can always be
        // admitted); the others release at once.
        if (!held.empty() && (t >= 2 || held.size() > 1)) held.erase(held.begin());
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 8 * 60);
  EXPECT_LE(probe.peak.load(), kBudget);
  EXPECT_LE(cache.stats().peak_bytes, kBudget);
  EXPECT_EQ(cache.stats().leases, 0u);
}

TEST_F(LayerCacheTest, WaiterIsAdmittedWhenALeaseIsReleased) {
  LayerCache cache(200, executor_, nullptr);
  std::atomic<int> loads{0};
  auto a = cache.AcquireSync(Key(0), 100, Loader(100, &loads));
  auto b = cache.AcquireSync(Key(1), 100, Loader(100, &loads));
  ASSERT_TRUE(a.ok() && b.ok());
  std::promise<absl::StatusOr<LayerCache::Lease>> promise;
  auto future = promise.get_future();
  cache.Acquire(Key(2), 100, Loader(100, &loads),
                [&](absl::StatusOr<LayerCache::Lease> lease, bool) { promise.set_value(std::move(lease)); });
  // No room while both leases live: the request waits (no thread blocked).
  EXPECT_EQ(future.wait_for(100ms), std::future_status::timeout);
  EXPECT_EQ(loads.load(), 2);
  EXPECT_LE(cache.stats().bytes, 200u);
  a->Reset();  // room: layer 0 is evicted and layer 2 admitted
  ASSERT_EQ(future.wait_for(10s), std::future_status::ready);
  auto c = future.get();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(loads.load(), 3);
  EXPECT_FALSE(cache.Contains(Key(0)));
  EXPECT_LE(cache.stats().peak_bytes, 200u);
}

TEST_F(LayerCacheTest, AllocationFailureEvictsUnleasedLayersAndRetries) {
  LayerCache cache(10000, executor_, nullptr);
  std::atomic<int> loads{0};
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(cache.AcquireSync(Key(i), 100, Loader(100, &loads)).ok());
  auto held = cache.AcquireSync(Key(3), 100, Loader(100, &loads));
  ASSERT_TRUE(held.ok());
  // The shm filesystem is full (other programs use it): the first try fails
  // with an allocation failure, the retry after evicting succeeds.
  std::atomic<int> tries{0};
  auto flaky = [&]() -> absl::StatusOr<std::shared_ptr<LayerData>> {
    if (tries.fetch_add(1) == 0) {
      return MarkAllocationFailure(absl::ResourceExhaustedError("reserve: No space left on device"));
    }
    auto d = std::make_shared<LayerData>();
    d->bytes = 100;
    return d;
  };
  auto lease = cache.AcquireSync(Key(9), 100, flaky);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(tries.load(), 2);
  EXPECT_FALSE(cache.Contains(Key(0)));  // unleased: evicted to make room
  EXPECT_TRUE(cache.Contains(Key(3)));   // leased: kept
  // With nothing left to evict, the failure is reported.
  auto full = [&]() -> absl::StatusOr<std::shared_ptr<LayerData>> {
    return MarkAllocationFailure(absl::ResourceExhaustedError("reserve: No space left on device"));
  };
  lease->Reset();
  held->Reset();
  cache.Evict([](const LayerKey&) { return true; });
  auto failed = cache.AcquireSync(Key(10), 100, full);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(cache.stats().bytes, 0u);
}

TEST_F(LayerCacheTest, WaiterTimesOutWithResourceExhausted) {
  LayerCache::Options options;
  options.budget = 200;
  options.admission_timeout = 50ms;
  LayerCache cache(options, executor_, nullptr);
  std::atomic<int> loads{0};
  auto a = cache.AcquireSync(Key(0), 150, Loader(150, &loads));
  ASSERT_TRUE(a.ok());
  auto start = std::chrono::steady_clock::now();
  auto b = cache.AcquireSync(Key(1), 100, Loader(100, &loads));
  auto waited = std::chrono::steady_clock::now() - start;
  ASSERT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted) << b.status();
  EXPECT_GE(waited, 50ms);
  EXPECT_NE(b.status().message().find("budget 200 bytes"), absl::string_view::npos) << b.status();
  EXPECT_NE(b.status().message().find("150 held by 1 leases"), absl::string_view::npos)
      << b.status();
  EXPECT_EQ(loads.load(), 1);
  EXPECT_FALSE(cache.Contains(Key(1)));
  auto s = cache.stats();
  EXPECT_EQ(s.admission_timeouts, 1u);
  EXPECT_EQ(s.queued, 0u);
  // A layer larger than the whole budget fails at once.
  auto huge = cache.AcquireSync(Key(2), 201, Loader(201, &loads));
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(loads.load(), 1);
}

TEST_F(LayerCacheTest, CostsAreRoundedToTheGranularity) {
  LayerCache::Options options;
  options.budget = 3 * 4096;
  options.granularity = 4096;
  options.admission_timeout = 20ms;
  LayerCache cache(options, executor_, nullptr);
  std::atomic<int> loads{0};
  std::vector<LayerCache::Lease> held;
  for (int i = 0; i < 3; ++i) {
    auto l = cache.AcquireSync(Key(i), 10, Loader(10, &loads));
    ASSERT_TRUE(l.ok());
    held.push_back(std::move(*l));
  }
  EXPECT_EQ(cache.stats().bytes, 3u * 4096);
  EXPECT_EQ(cache.AcquireSync(Key(3), 10, Loader(10, &loads)).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST_F(LayerCacheTest, PrefetchNeverEvictsLeasedLoadingOrUnreadLayers) {
  LayerCache cache(300, executor_, nullptr);
  std::atomic<int> loads{0};
  auto leased = cache.AcquireSync(Key(0), 100, Loader(100, &loads));
  ASSERT_TRUE(leased.ok());
  EXPECT_TRUE(cache.Prefetch(Key(1), 100, Loader(100, &loads)));  // unread prefetch
  // A load in flight (slow): its reservation counts.
  std::promise<void> release_loader;
  std::shared_future<void> gate = release_loader.get_future().share();
  std::promise<bool> slow_done;
  LayerCache::Lease slow_lease;
  cache.Acquire(Key(2), 100,
                [&, gate]() -> absl::StatusOr<std::shared_ptr<LayerData>> {
                  gate.wait();
                  auto d = std::make_shared<LayerData>();
                  d->bytes = 100;
                  return d;
                },
                [&](absl::StatusOr<LayerCache::Lease> l, bool) {
                  if (l.ok()) slow_lease = std::move(*l);
                  slow_done.set_value(l.ok());
                });
  // Full: leased + unread prefetch + loading. A prefetch must not evict any.
  EXPECT_FALSE(cache.Prefetch(Key(3), 100, Loader(100, &loads)));
  EXPECT_TRUE(cache.Contains(Key(0)));
  EXPECT_TRUE(cache.Contains(Key(1)));
  EXPECT_TRUE(cache.Contains(Key(2)));
  release_loader.set_value();
  EXPECT_TRUE(slow_done.get_future().get());
  cache.WaitIdle();
  EXPECT_LE(cache.stats().peak_bytes, 300u);
  // While a demanded layer waits for admission, prefetches are refused.
  auto read = cache.AcquireSync(Key(1), 100, Loader(100, &loads));
  ASSERT_TRUE(read.ok());
  std::promise<bool> waiter;
  cache.Acquire(Key(4), 100, Loader(100, &loads),
                [&](absl::StatusOr<LayerCache::Lease> l, bool) { waiter.set_value(l.ok()); });
  EXPECT_EQ(cache.stats().queued, 1u);
  EXPECT_FALSE(cache.Prefetch(Key(5), 100, Loader(100, &loads)));
  leased->Reset();  // layer 0 read and released: the waiter gets its room
  auto w = waiter.get_future();
  ASSERT_EQ(w.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_TRUE(w.get());
  EXPECT_FALSE(cache.Contains(Key(5)));
  EXPECT_LE(cache.stats().peak_bytes, 300u);
}

}  // namespace admission
}  // namespace
}  // namespace bigsmall::daemon
