// A fixed-size worker pool with a ParallelFor helper. Tasks should not throw;
// if a ParallelFor/OrderedBatches task does (std::bad_alloc from a growing
// buffer), its index fails with RESOURCE_EXHAUSTED (INTERNAL for other
// exceptions) instead of std::terminate. A Schedule() task that throws is
// dropped with a line on stderr (no std::terminate): such a task must catch
// what it can throw itself if someone waits for it to finish.
#ifndef BIGSMALL_CODEC_THREAD_POOL_H_
#define BIGSMALL_CODEC_THREAD_POOL_H_

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"

namespace bigsmall {

class ThreadPool {
 public:
  // threads <= 0: one per hardware thread.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()); }
  void Schedule(std::function<void()> task);

  // Runs fn(i) for i in [0, n) on the pool and the calling thread; returns
  // the first error (by index order) or OK. Safe to call from a pool thread
  // (the caller helps, so nested calls cannot deadlock).
  absl::Status ParallelFor(size_t n, const std::function<absl::Status(size_t)>& fn);

  static int DefaultThreads();

  // Splits items [0, n) into consecutive batches of at most `max_bytes`
  // (by size(i); an item larger than that is a batch of its own), runs
  // work(i) for a batch's items in parallel, then finish(i) for them in
  // order, batch after batch. Bounds memory to one batch while keeping every
  // thread busy on many small items. Stops at the first error.
  absl::Status OrderedBatches(size_t n, uint64_t max_bytes, const std::function<uint64_t(size_t)>& size,
                              const std::function<absl::Status(size_t)>& work,
                              const std::function<absl::Status(size_t)>& finish);

 private:
  void WorkerLoop();
  bool RunOne();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_THREAD_POOL_H_
