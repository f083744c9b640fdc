#include "codec/thread_pool.h"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <atomic>
#include <limits>
#include <exception>
#include <memory>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"

namespace bigsmall {
namespace {
const absl::Status& OutOfMemoryStatus();
const absl::Status& ThrewStatus();
bool BlockTerminationSignals(sigset_t* old_mask);
}  // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = DefaultThreads();
  OutOfMemoryStatus();
  ThrewStatus();
  workers_.reserve(static_cast<size_t>(threads));
  // Workers start with the termination signals blocked (a thread inherits
  // its creator's mask), so none can land on a worker even before it runs.
  sigset_t old_mask;
  const bool masked = BlockTerminationSignals(&old_mask);
  for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
  if (masked) pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  // Workers drain the queue before they exit, so every scheduled task runs.
  for (std::thread& worker : workers_) worker.join();
}

void ThreadPool::Schedule(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(task));
  }
  cv_.notify_one();
}

int ThreadPool::DefaultThreads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

bool ThreadPool::RunOne() {
  std::function<void()> task;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (queue_.empty()) return false;
    task = std::move(queue_.front());
    queue_.pop_front();
  }
  // Scheduled tasks must not throw (the header says so); if one does anyway,
  // the pool thread survives instead of taking the process down. Tasks that
  // report errors use ParallelFor, which turns an exception into a status.
  try {
    task();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bigsmall: a scheduled pool task threw (%s); dropped\n", e.what());
  } catch (...) {
    std::fputs("bigsmall: a scheduled pool task threw; dropped\n", stderr);
  }
  return true;
}

void ThreadPool::WorkerLoop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ and nothing left to run
    }
    RunOne();  // may find the queue emptied by another worker: harmless
  }
}

namespace {

// The task boundary: a task that throws (std::bad_alloc from a vector or a
// scratch buffer growing, anything else) fails its index with a status
// instead of unwinding into a pool thread (std::terminate).
// Made before any task runs: copying a status allocates nothing, so the
// handlers below cannot themselves throw when memory is short.
const absl::Status& OutOfMemoryStatus() {
  static const absl::Status* const status =
      new absl::Status(absl::ResourceExhaustedError("out of memory in a worker task"));
  return *status;
}
const absl::Status& ThrewStatus() {
  static const absl::Status* const status = new absl::Status(absl::InternalError("worker task threw"));
  return *status;
}

absl::Status RunTask(const std::function<absl::Status(size_t)>& fn, size_t i) noexcept {
  try {
    return fn(i);
  } catch (const std::bad_alloc&) {
    return OutOfMemoryStatus();
  } catch (const std::exception& e) {
    try {
      return absl::InternalError(absl::StrCat("worker task threw: ", e.what()));
    } catch (...) {
      return ThrewStatus();
    }
  } catch (...) {
    return ThrewStatus();
  }
}

// Worker threads leave SIGINT/SIGTERM/SIGHUP/SIGQUIT to the other threads,
// so a handler (the CLI's temp cleanup) runs on a thread that is not in the
// middle of pool work.
bool BlockTerminationSignals(sigset_t* old_mask) {
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) sigaddset(&set, sig);
  return pthread_sigmask(SIG_BLOCK, &set, old_mask) == 0;
}

// Shared by the calling thread and the helper tasks of one ParallelFor call.
// Helpers hold it by shared_ptr: a helper that starts after the call has
// returned finds no index left and never touches `fn`.
struct ParallelForState {
  ParallelForState(size_t n, const std::function<absl::Status(size_t)>* fn) : n(n), fn(fn) {}
  const size_t n;
  const std::function<absl::Status(size_t)>* const fn;
  std::atomic<size_t> next{0};
  // Lowest index that failed so far (n: none). Indices above it are skipped:
  // every lower index was claimed earlier and still runs, so the lowest-index
  // error is still found.
  std::atomic<size_t> first_error_index;
  std::mutex mu;
  std::condition_variable cv;
  size_t finished = 0;  // indices claimed and done (guarded by mu)
  absl::Status first_error;  // status at first_error_index (guarded by mu)

  // Claims and runs indices until none is left.
  void Drain() {
    size_t ran = 0;
    for (;;) {
      const size_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= n) break;
      ++ran;
      if (i > first_error_index.load(std::memory_order_relaxed)) continue;
      absl::Status status = RunTask(*fn, i);
      if (!status.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (i < first_error_index.load(std::memory_order_relaxed)) {
          first_error_index.store(i, std::memory_order_relaxed);
          first_error = std::move(status);
        }
      }
    }
    if (ran == 0) return;
    std::lock_guard<std::mutex> lock(mu);
    finished += ran;
    if (finished == n) cv.notify_all();
  }
};

}  // namespace

absl::Status ThreadPool::ParallelFor(size_t n, const std::function<absl::Status(size_t)>& fn) {
  if (n == 0) return absl::OkStatus();
  auto serial = [&]() -> absl::Status {
    for (size_t i = 0; i < n; ++i) {
      if (absl::Status s = RunTask(fn, i); !s.ok()) return s;
    }
    return absl::OkStatus();
  };
  if (n == 1 || workers_.empty()) return serial();
  std::shared_ptr<ParallelForState> state;
  try {
    state = std::make_shared<ParallelForState>(n, &fn);
  } catch (const std::bad_alloc&) {
    return serial();  // no memory for the shared state: run on this thread
  }
  state->first_error_index.store(n);
  // One helper per worker at most; the calling thread is the extra one. If
  // every worker is busy (e.g. we are a worker ourselves), the caller drains
  // all indices alone and the helpers later find nothing to do. A helper that
  // cannot be queued (no memory) is simply not there: the caller drains more.
  const size_t helpers = std::min(n - 1, workers_.size());
  for (size_t h = 0; h < helpers; ++h) {
    try {
      Schedule([state] { state->Drain(); });
    } catch (const std::bad_alloc&) {
      break;
    }
  }
  state->Drain();
  std::unique_lock<std::mutex> lock(state->mu);
  // Only indices already claimed by running helpers remain: they finish.
  state->cv.wait(lock, [&] { return state->finished == n; });
  return state->first_error;
}

absl::Status ThreadPool::OrderedBatches(size_t n, uint64_t max_bytes,
                                        const std::function<uint64_t(size_t)>& size,
                                        const std::function<absl::Status(size_t)>& work,
                                        const std::function<absl::Status(size_t)>& finish) {
  size_t begin = 0;
  while (begin < n) {
    size_t end = begin;
    uint64_t bytes = 0;
    while (end < n && (end == begin || bytes + size(end) <= max_bytes)) bytes += size(end++);
    absl::Status st = ParallelFor(end - begin, [&](size_t k) { return work(begin + k); });
    if (!st.ok()) return st;
    for (size_t i = begin; i < end; ++i) {
      st = RunTask(finish, i);
      if (!st.ok()) return st;
    }
    begin = end;
  }
  return absl::OkStatus();
}

}  // namespace bigsmall
