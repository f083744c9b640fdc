#include "daemon/layer_cache.h"

#include <atomic>
#include <chrono>
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

TEST_F(LayerCacheTest, LeasedLayersAreNeverEvictedAndBudgetRecovers) {
  LayerCache cache(200, executor_, nullptr);
  std::atomic<int> loads{0};
  std::vector<LayerCache::Lease> held;
  for (int i = 0; i < 4; ++i) {
    auto lease = cache.AcquireSync(Key(i), 100, Loader(100, &loads));
    ASSERT_TRUE(lease.ok());
    held.push_back(std::move(*lease));
  }
  // A waiting reader always gets its layer: over budget while leased.
  EXPECT_EQ(cache.stats().bytes, 400u);
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(cache.Contains(Key(i)));
  held.clear();
  EXPECT_LE(cache.stats().bytes, 200u);
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

}  // namespace
}  // namespace bigsmall::daemon
