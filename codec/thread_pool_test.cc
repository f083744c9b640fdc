#include "codec/thread_pool.h"

#include <atomic>
#include <chrono>
#include <mutex>
#include <new>
#include <stdexcept>
#include <set>
#include <thread>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace bigsmall {
namespace {

TEST(ThreadPoolTest, DefaultThreadsIsPositive) {
  EXPECT_GE(ThreadPool::DefaultThreads(), 1);
  ThreadPool pool(0);
  EXPECT_EQ(pool.size(), ThreadPool::DefaultThreads());
}

TEST(ThreadPoolTest, ScheduleRunsEveryTaskBeforeDestruction) {
  std::atomic<int> count{0};
  {
    ThreadPool pool(3);
    for (int i = 0; i < 1000; ++i) pool.Schedule([&] { count.fetch_add(1); });
  }
  EXPECT_EQ(count.load(), 1000);
}

TEST(ThreadPoolTest, ParallelForRunsEveryIndexOnce) {
  ThreadPool pool(4);
  for (size_t n : {size_t{0}, size_t{1}, size_t{2}, size_t{7}, size_t{10000}}) {
    std::vector<std::atomic<int>> hits(n);
    ASSERT_TRUE(pool.ParallelFor(n, [&](size_t i) {
                      hits[i].fetch_add(1);
                      return absl::OkStatus();
                    }).ok());
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n=" << n << " i=" << i;
  }
}

TEST(ThreadPoolTest, ParallelForUsesWorkersAndCaller) {
  ThreadPool pool(2);
  std::mutex mu;
  std::set<std::thread::id> ids;
  ASSERT_TRUE(pool.ParallelFor(64, [&](size_t) {
                    std::this_thread::sleep_for(std::chrono::milliseconds(2));
                    std::lock_guard<std::mutex> lock(mu);
                    ids.insert(std::this_thread::get_id());
                    return absl::OkStatus();
                  }).ok());
  EXPECT_GE(ids.size(), 2u);
  EXPECT_LE(ids.size(), 3u);
}

TEST(ThreadPoolTest, ParallelForReturnsLowestIndexError) {
  ThreadPool pool(4);
  for (int trial = 0; trial < 20; ++trial) {
    absl::Status s = pool.ParallelFor(1000, [](size_t i) {
      if (i % 100 == 37) return absl::InternalError(absl::StrCat("fail ", i));
      return absl::OkStatus();
    });
    EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
    EXPECT_EQ(s.message(), "fail 37");
  }
}

TEST(ThreadPoolTest, ErrorAtLastIndexIsReported) {
  ThreadPool pool(2);
  absl::Status s = pool.ParallelFor(50, [](size_t i) {
    return i == 49 ? absl::DataLossError("last") : absl::OkStatus();
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
}

TEST(ThreadPoolTest, NestedParallelForDoesNotDeadlock) {
  ThreadPool pool(2);
  std::atomic<int> count{0};
  ASSERT_TRUE(pool.ParallelFor(8, [&](size_t) {
                    return pool.ParallelFor(8, [&](size_t) {
                      return pool.ParallelFor(4, [&](size_t) {
                        count.fetch_add(1);
                        return absl::OkStatus();
                      });
                    });
                  }).ok());
  EXPECT_EQ(count.load(), 8 * 8 * 4);
}

TEST(ThreadPoolTest, ParallelForFromScheduledTaskDoesNotDeadlock) {
  ThreadPool pool(1);  // the only worker calls ParallelFor: it must drain alone
  std::atomic<int> count{0};
  std::atomic<bool> done{false};
  absl::Status inner;
  pool.Schedule([&] {
    inner = pool.ParallelFor(100, [&](size_t) {
      count.fetch_add(1);
      return absl::OkStatus();
    });
    done = true;
  });
  for (int i = 0; i < 5000 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_TRUE(done.load());
  EXPECT_TRUE(inner.ok());
  EXPECT_EQ(count.load(), 100);
}

TEST(ThreadPoolTest, ManyCallersShareOnePool) {
  ThreadPool pool(3);
  std::atomic<int> count{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      for (int r = 0; r < 50; ++r) {
        EXPECT_TRUE(pool.ParallelFor(20, [&](size_t) {
                          count.fetch_add(1);
                          return absl::OkStatus();
                        }).ok());
      }
    });
  }
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(count.load(), 4 * 50 * 20);
}

// Regression: a task that throws std::bad_alloc (a scratch buffer or vector
// growing) used to unwind into a pool thread: std::terminate. Every index may
// land on a worker or on the caller; both paths must give a status.
TEST(ThreadPoolTest, ThrowingTaskIsResourceExhaustedNotTerminate) {
  ThreadPool pool(3);
  for (size_t n : {size_t{1}, size_t{2}, size_t{64}}) {
    absl::Status st = pool.ParallelFor(n, [&](size_t i) -> absl::Status {
      if (i == n - 1) throw std::bad_alloc();
      std::this_thread::sleep_for(std::chrono::microseconds(50));  // let workers take some
      return absl::OkStatus();
    });
    EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << "n=" << n << ": " << st;
  }
  absl::Status st = pool.ParallelFor(8, [](size_t) -> absl::Status { throw std::runtime_error("boom"); });
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << st;
  EXPECT_NE(st.message().find("boom"), absl::string_view::npos) << st;
  // OrderedBatches: work and finish both at the boundary.
  st = pool.OrderedBatches(
      4, 1, [](size_t) { return uint64_t{1}; }, [](size_t) { return absl::OkStatus(); },
      [](size_t i) -> absl::Status {
        if (i == 2) throw std::bad_alloc();
        return absl::OkStatus();
      });
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  // A plain scheduled task that throws does not take the process down.
  std::atomic<int> after{0};
  pool.Schedule([] { throw std::bad_alloc(); });
  pool.Schedule([&] { after.fetch_add(1); });
  // The pool still works afterwards.
  EXPECT_TRUE(pool.ParallelFor(100, [](size_t) { return absl::OkStatus(); }).ok());
  {
    ThreadPool drained(1);
    drained.Schedule([] { throw std::runtime_error("x"); });
    drained.Schedule([&] { after.fetch_add(1); });
  }  // the destructor runs every task
  EXPECT_GE(after.load(), 1);  // the second pool ran its task after the throwing one
}

}  // namespace
}  // namespace bigsmall
