// The emulated device of kernels/device_api.h: one GPU, "cuda:0", on the CPU.
//
//  * Device memory: each Malloc is a file in options.memory_dir (created
//    O_EXCL | O_NOFOLLOW relative to the directory's descriptor, mode
//    options.file_mode, fallocate'd so that a full filesystem is
//    RESOURCE_EXHAUSTED now rather than SIGBUS later), mapped shared. The
//    device's reported memory is a budget: an allocation over it is
//    RESOURCE_EXHAUSTED, as cudaMalloc's out of memory.
//  * IPC handle (64 bytes, as cudaIpcMemHandle_t): "BSE1", then the file's
//    absolute path, NUL-terminated, zero-padded. An importer opens the path
//    with O_NOFOLLOW, checks it is a regular file owned by
//    options.expected_owner and not writable by group or others, and maps it
//    read-only. The exporter's Free unlinks the file; the importer's mapping
//    lives until IpcCloseMemHandle, as with CUDA.
//  * Streams: an in-order queue with one worker thread each. Every op waits
//    options.op_delay_us first, so an ordering bug (a missing event wait)
//    shows as wrong bytes in tests. Events complete when the worker reaches
//    their record, with the steady clock's time then.
//  * Kernels: EmulateDecodeLaunch / EmulateChecksumLaunch (kernels/launch.h)
//    on the stream's worker, after checking their device ranges (a range
//    outside every allocation is an emulated GPU fault: INTERNAL, sticky).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "codec/status_macros.h"
#include "codec/status_util.h"
#include "kernels/cuda_status.h"
#include "kernels/device_api.h"
#include "kernels/launch.h"

namespace bigsmall::gpu {
namespace {

constexpr char kHandleMagic[4] = {'B', 'S', 'E', '1'};
// Path bytes a handle holds, its NUL excluded.
constexpr size_t kMaxHandlePath = kIpcHandleBytes - sizeof(kHandleMagic) - 1;

using Clock = std::chrono::steady_clock;

uint64_t PageSize() {
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return page;
}

absl::Status InvalidDevice(int device) {
  return CudaErrorToStatus(kCudaErrorInvalidDevice, "emulated device",
                           absl::StrCat("invalid device ordinal ", device, " (the emulator has cuda:0 only)"));
}

std::string PtrText(const void* p) { return absl::StrFormat("%p", p); }

// An event: the generation of its latest record, and of the latest record
// that completed, with that stream's status and the time then.
struct EventState {
  std::mutex mu;
  std::condition_variable cv;
  uint64_t recorded = 0;
  uint64_t completed = 0;
  absl::Status status;
  Clock::time_point time;
};

struct Op {
  enum Kind { kWork, kRecord, kWait };
  Kind kind = kWork;
  std::function<absl::Status()> work;
  std::shared_ptr<EventState> event;
  uint64_t gen = 0;
};

// One in-order queue and its worker. The first failing op's status is
// sticky: later work ops are skipped, later records complete with it.
class Stream {
 public:
  explicit Stream(uint32_t delay_us) : delay_us_(delay_us), worker_([this] { Run(); }) {}
  ~Stream() { Shutdown(); }

  absl::Status Enqueue(Op op) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return absl::InvalidArgumentError("emulated stream is being destroyed");
      queue_.push_back(std::move(op));
      ++enqueued_;
    }
    cv_.notify_all();
    return absl::OkStatus();
  }

  // Waits for the work enqueued before the call; returns the sticky status.
  absl::Status Synchronize() {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t target = enqueued_;
    cv_.wait(lock, [&] { return done_ >= target; });
    return sticky_;
  }

  // Runs what is queued, then stops the worker. Idempotent.
  void Shutdown() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
    }
    cv_.notify_all();
    std::lock_guard<std::mutex> join_lock(join_mu_);
    if (worker_.joinable()) worker_.join();
  }

 private:
  void Run() {
    for (;;) {
      Op op;
      absl::Status status;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return closed_ || !queue_.empty(); });
        if (queue_.empty()) return;  // closed and drained
        op = std::move(queue_.front());
        queue_.pop_front();
        status = sticky_;  // only this thread changes it
      }
      if (delay_us_ > 0) std::this_thread::sleep_for(std::chrono::microseconds(delay_us_));
      absl::Status result;
      switch (op.kind) {
        case Op::kWork:
          if (status.ok()) result = op.work();
          break;
        case Op::kRecord: {
          std::lock_guard<std::mutex> lock(op.event->mu);
          if (op.gen >= op.event->completed) {
            op.event->completed = op.gen;
            op.event->status = status;
            op.event->time = Clock::now();
          }
          op.event->cv.notify_all();
          break;
        }
        case Op::kWait: {
          std::unique_lock<std::mutex> lock(op.event->mu);
          op.event->cv.wait(lock, [&] { return op.event->completed >= op.gen; });
          result = op.event->status;  // the work waited for failed: so does this stream's
          break;
        }
      }
      op = Op();  // release captures before reporting completion
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!result.ok() && sticky_.ok()) sticky_ = result;
        ++done_;
      }
      cv_.notify_all();
    }
  }

  const uint32_t delay_us_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Op> queue_;
  uint64_t enqueued_ = 0;
  uint64_t done_ = 0;
  bool closed_ = false;
  absl::Status sticky_;
  std::mutex join_mu_;
  std::thread worker_;  // last: starts after the members it uses
};

class EmulatedDeviceApi final : public DeviceApi {
 public:
  explicit EmulatedDeviceApi(const EmulatedDeviceOptions& options) : options_(options) { Init(); }

  ~EmulatedDeviceApi() override {
    std::vector<std::shared_ptr<Stream>> streams;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [key, s] : streams_) streams.push_back(s);
      streams_.clear();
      events_.clear();
    }
    for (auto& s : streams) s->Shutdown();
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [base, a] : allocations_) {
      ::munmap(reinterpret_cast<void*>(base), a.size);
      ::unlinkat(dir_fd_, a.name.c_str(), 0);
    }
    for (auto& [base, m] : imports_) ::munmap(reinterpret_cast<void*>(base), m.size);
    for (auto& [base, size] : host_) ::munmap(reinterpret_cast<void*>(base), size);
    if (dir_fd_ >= 0) ::close(dir_fd_);
  }

  const char* name() const override { return "emulated"; }

  absl::StatusOr<int> DeviceCount() override {
    if (!init_status_.ok()) return init_status_;
    return 1;
  }

  absl::StatusOr<DeviceInfo> Describe(int device) override {
    if (!init_status_.ok()) return init_status_;
    if (device != 0) return InvalidDevice(device);
    DeviceInfo info;
    info.ordinal = 0;
    info.name = options_.device_name;
    info.uuid = options_.uuid;
    info.memory_bytes = options_.memory_bytes;
    info.sm_count = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    return info;
  }

  absl::StatusOr<uint8_t*> Malloc(int device, uint64_t bytes) override {
    if (!init_status_.ok()) return init_status_;
    if (device != 0) return InvalidDevice(device);
    if (bytes == 0) return absl::InvalidArgumentError("emulated cudaMalloc of 0 bytes");
    const uint64_t total = options_.memory_bytes;
    const uint64_t charged =
        bytes > total ? total + 1 : (bytes + PageSize() - 1) / PageSize() * PageSize();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (charged > total - used_) {
        return CudaErrorToStatus(kCudaErrorMemoryAllocation, "cudaMalloc (emulated)",
                                 absl::StrCat("out of memory: ", bytes, " bytes requested, ", total - used_,
                                              " of the device's ", total, " free"));
      }
      used_ += charged;  // reserved while the file is made
    }
    absl::StatusOr<uint8_t*> p = CreateAllocation(bytes, charged);
    if (!p.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      used_ -= charged;
    }
    return p;
  }

  absl::Status Free(int device, uint8_t* ptr) override {
    if (device != 0) return InvalidDevice(device);
    if (ptr == nullptr) return absl::OkStatus();
    SynchronizeAll();
    std::lock_guard<std::mutex> lock(mu_);
    auto it = allocations_.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == allocations_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("emulated cudaFree: ", PtrText(ptr), " is not a pointer Malloc returned"));
    }
    ::munmap(ptr, it->second.size);
    ::unlinkat(dir_fd_, it->second.name.c_str(), 0);
    used_ -= it->second.charged;
    allocations_.erase(it);
    return absl::OkStatus();
  }

  absl::StatusOr<uint8_t*> MallocHost(uint64_t bytes) override {
    if (bytes == 0) return absl::InvalidArgumentError("emulated cudaMallocHost of 0 bytes");
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      return ErrnoToStatus(errno, absl::StrCat("emulated cudaMallocHost of ", bytes, " bytes"));
    }
    std::lock_guard<std::mutex> lock(mu_);
    host_[reinterpret_cast<uintptr_t>(p)] = bytes;
    return static_cast<uint8_t*>(p);
  }

  absl::Status FreeHost(uint8_t* ptr) override {
    if (ptr == nullptr) return absl::OkStatus();
    std::lock_guard<std::mutex> lock(mu_);
    auto it = host_.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == host_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("emulated cudaFreeHost: ", PtrText(ptr), " is not a pointer MallocHost returned"));
    }
    ::munmap(ptr, it->second);
    host_.erase(it);
    return absl::OkStatus();
  }

  // Records the range after checking every page of it is mapped (mincore),
  // as cudaHostRegister refuses an unmapped range. `read_only` is accepted
  // either way: host memory is never written by the emulated device except
  // through copies the caller asks for.
  absl::Status HostRegister(void* ptr, uint64_t bytes, bool read_only) override {
    if (ptr == nullptr || bytes == 0) {
      return absl::InvalidArgumentError("emulated cudaHostRegister of an empty range");
    }
    const uintptr_t start = reinterpret_cast<uintptr_t>(ptr);
    if (bytes > UINTPTR_MAX - start) return absl::InvalidArgumentError("emulated cudaHostRegister: range wraps");
    RETURN_IF_ERROR(CheckMapped(start, bytes));
    std::lock_guard<std::mutex> lock(mu_);
    auto next = registered_.lower_bound(start);
    const bool overlaps_next = next != registered_.end() && next->first < start + bytes;
    const bool overlaps_prev = next != registered_.begin() && std::prev(next)->first + std::prev(next)->second > start;
    if (overlaps_next || overlaps_prev) {
      return absl::AlreadyExistsError(absl::StrCat("emulated cudaHostRegister: part of ", PtrText(ptr), " + ",
                                                   bytes, " is already registered"));
    }
    registered_[start] = bytes;
    return absl::OkStatus();
  }

  absl::Status HostUnregister(void* ptr) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = registered_.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == registered_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("emulated cudaHostUnregister: ", PtrText(ptr), " is not a registered range's start"));
    }
    registered_.erase(it);
    return absl::OkStatus();
  }

  absl::StatusOr<IpcHandle> IpcGetMemHandle(int device, uint8_t* base) override {
    if (device != 0) return InvalidDevice(device);
    std::lock_guard<std::mutex> lock(mu_);
    auto it = allocations_.find(reinterpret_cast<uintptr_t>(base));
    if (it == allocations_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("emulated cudaIpcGetMemHandle: ", PtrText(base),
                                                     " is not a base pointer Malloc returned"));
    }
    const std::string path = absl::StrCat(dir_path_, "/", it->second.name);
    if (path.size() > kMaxHandlePath) {
      return absl::InvalidArgumentError(absl::StrCat(
          "emulated cudaIpcGetMemHandle: the allocation's path ", EscapeForLog(path), " is ", path.size(),
          " bytes; at most ", kMaxHandlePath, " fit in a ", kIpcHandleBytes,
          "-byte IPC handle (use a shorter memory_dir)"));
    }
    IpcHandle handle{};
    std::memcpy(handle.data(), kHandleMagic, sizeof(kHandleMagic));
    std::memcpy(handle.data() + sizeof(kHandleMagic), path.data(), path.size());
    return handle;
  }

  absl::StatusOr<uint8_t*> IpcOpenMemHandle(int device, const IpcHandle& handle) override {
    if (device != 0) return InvalidDevice(device);
    if (std::memcmp(handle.data(), kHandleMagic, sizeof(kHandleMagic)) != 0) {
      return absl::InvalidArgumentError("emulated cudaIpcOpenMemHandle: not an emulated IPC handle (bad magic)");
    }
    const char* text = reinterpret_cast<const char*>(handle.data()) + sizeof(kHandleMagic);
    const size_t room = kIpcHandleBytes - sizeof(kHandleMagic);
    const size_t len = strnlen(text, room);
    if (len == room || len == 0 || text[0] != '/') {
      return absl::InvalidArgumentError(
          "emulated cudaIpcOpenMemHandle: the handle holds no absolute, NUL-terminated path");
    }
    const std::string path(text, len);
    const std::string shown = EscapeForLog(path);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) return ErrnoToStatus(errno, absl::StrCat("emulated cudaIpcOpenMemHandle: open ", shown));
    struct stat st;
    absl::Status bad;
    if (::fstat(fd, &st) != 0) {
      bad = ErrnoToStatus(errno, absl::StrCat("emulated cudaIpcOpenMemHandle: fstat ", shown));
    } else if (!S_ISREG(st.st_mode)) {
      bad = absl::PermissionDeniedError(absl::StrCat("emulated device memory ", shown,
                                                     " is not a regular file; refusing to map it"));
    } else if (st.st_uid != options_.expected_owner) {
      bad = absl::PermissionDeniedError(absl::StrCat("emulated device memory ", shown, " is owned by uid ",
                                                     st.st_uid, ", not by uid ", options_.expected_owner,
                                                     "; refusing to map it"));
    } else if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
      bad = absl::PermissionDeniedError(absl::StrCat("emulated device memory ", shown,
                                                     " is writable by group or others; refusing to map it"));
    } else if (st.st_size <= 0) {
      bad = absl::InvalidArgumentError(absl::StrCat("emulated device memory ", shown, " is empty"));
    }
    if (!bad.ok()) {
      ::close(fd);
      return bad;
    }
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [base, a] : allocations_) {
      if (a.dev == st.st_dev && a.ino == st.st_ino) {
        ::close(fd);
        return absl::FailedPreconditionError(
            "emulated cudaIpcOpenMemHandle: the handle was exported by this DeviceApi (CUDA refuses to open "
            "a handle in the process that exported it: invalid device context)");
      }
    }
    for (auto& [base, m] : imports_) {
      if (m.dev == st.st_dev && m.ino == st.st_ino) {
        ::close(fd);
        ++m.refs;
        return reinterpret_cast<uint8_t*>(base);
      }
    }
    const size_t size = static_cast<size_t>(st.st_size);
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    const int err = errno;
    ::close(fd);
    if (p == MAP_FAILED) return ErrnoToStatus(err, absl::StrCat("emulated cudaIpcOpenMemHandle: mmap ", shown));
    imports_[reinterpret_cast<uintptr_t>(p)] = Import{size, 1, st.st_dev, st.st_ino};
    return static_cast<uint8_t*>(p);
  }

  absl::Status IpcCloseMemHandle(int device, uint8_t* ptr) override {
    if (device != 0) return InvalidDevice(device);
    SynchronizeAll();
    std::lock_guard<std::mutex> lock(mu_);
    auto it = imports_.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == imports_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("emulated cudaIpcCloseMemHandle: ", PtrText(ptr),
                                                     " is not a pointer IpcOpenMemHandle returned"));
    }
    if (--it->second.refs == 0) {
      ::munmap(ptr, it->second.size);
      imports_.erase(it);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<StreamRef> CreateStream(int device) override {
    if (!init_status_.ok()) return init_status_;
    if (device != 0) return InvalidDevice(device);
    auto s = std::make_shared<Stream>(options_.op_delay_us);
    std::lock_guard<std::mutex> lock(mu_);
    streams_[s.get()] = s;
    return StreamRef{s.get()};
  }

  absl::Status DestroyStream(StreamRef stream) override {
    std::shared_ptr<Stream> s;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = streams_.find(stream.p);
      if (it == streams_.end()) return UnknownStream(stream);
      s = std::move(it->second);
      streams_.erase(it);
    }
    s->Shutdown();  // drains
    return absl::OkStatus();
  }

  absl::StatusOr<EventRef> CreateEvent(int device) override {
    if (!init_status_.ok()) return init_status_;
    if (device != 0) return InvalidDevice(device);
    auto e = std::make_shared<EventState>();
    std::lock_guard<std::mutex> lock(mu_);
    events_[e.get()] = e;
    return EventRef{e.get()};
  }

  // A record still queued completes later (its op holds the state).
  absl::Status DestroyEvent(EventRef event) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (events_.erase(event.p) == 0) return UnknownEvent(event);
    return absl::OkStatus();
  }

  absl::Status EventRecord(EventRef event, StreamRef stream) override {
    std::shared_ptr<EventState> e;
    std::shared_ptr<Stream> s;
    RETURN_IF_ERROR(Lookup(event, &e));
    RETURN_IF_ERROR(Lookup(stream, &s));
    // Held while enqueueing so that `recorded` only counts enqueued records
    // (the worker never holds its stream's lock while taking this one).
    std::lock_guard<std::mutex> lock(e->mu);
    Op op;
    op.kind = Op::kRecord;
    op.event = e;
    op.gen = e->recorded + 1;
    RETURN_IF_ERROR(s->Enqueue(std::move(op)));
    ++e->recorded;
    return absl::OkStatus();
  }

  absl::Status StreamWaitEvent(StreamRef stream, EventRef event) override {
    std::shared_ptr<EventState> e;
    std::shared_ptr<Stream> s;
    RETURN_IF_ERROR(Lookup(event, &e));
    RETURN_IF_ERROR(Lookup(stream, &s));
    uint64_t gen;
    {
      std::lock_guard<std::mutex> lock(e->mu);
      gen = e->recorded;
    }
    if (gen == 0) return absl::OkStatus();  // never recorded: nothing to wait for
    Op op;
    op.kind = Op::kWait;
    op.event = std::move(e);
    op.gen = gen;
    return s->Enqueue(std::move(op));
  }

  absl::Status EventSynchronize(EventRef event) override {
    std::shared_ptr<EventState> e;
    RETURN_IF_ERROR(Lookup(event, &e));
    std::unique_lock<std::mutex> lock(e->mu);
    const uint64_t target = e->recorded;
    if (target == 0) return absl::OkStatus();
    e->cv.wait(lock, [&] { return e->completed >= target; });
    return e->status;
  }

  absl::StatusOr<bool> EventQuery(EventRef event) override {
    std::shared_ptr<EventState> e;
    RETURN_IF_ERROR(Lookup(event, &e));
    std::lock_guard<std::mutex> lock(e->mu);
    if (e->recorded == 0) return true;
    if (e->completed < e->recorded) return false;
    if (!e->status.ok()) return e->status;
    return true;
  }

  absl::StatusOr<float> EventElapsedMs(EventRef start, EventRef end) override {
    std::shared_ptr<EventState> a;
    std::shared_ptr<EventState> b;
    RETURN_IF_ERROR(Lookup(start, &a));
    RETURN_IF_ERROR(Lookup(end, &b));
    Clock::time_point ta;
    Clock::time_point tb;
    for (auto [e, t] : {std::pair{a.get(), &ta}, std::pair{b.get(), &tb}}) {
      std::lock_guard<std::mutex> lock(e->mu);
      if (e->recorded == 0 || e->completed < e->recorded) {
        return absl::FailedPreconditionError(absl::StrCat(
            "emulated cudaEventElapsedTime: an event is ", e->recorded == 0 ? "never recorded" : "not completed"));
      }
      *t = e->time;
    }
    return std::chrono::duration<float, std::milli>(tb - ta).count();
  }

  absl::Status StreamSynchronize(StreamRef stream) override {
    std::shared_ptr<Stream> s;
    RETURN_IF_ERROR(Lookup(stream, &s));
    return s->Synchronize();
  }

  absl::Status MemcpyAsync(void* dst, const void* src, uint64_t bytes, CopyKind kind,
                           StreamRef stream) override {
    std::shared_ptr<Stream> s;
    RETURN_IF_ERROR(Lookup(stream, &s));
    if (bytes == 0) return absl::OkStatus();
    if (dst == nullptr || src == nullptr) return absl::InvalidArgumentError("emulated cudaMemcpyAsync: null pointer");
    const bool dst_device = kind != CopyKind::kDeviceToHost;
    const bool src_device = kind != CopyKind::kHostToDevice;
    if (dst_device) RETURN_IF_ERROR(CheckDeviceRange(dst, bytes, true, "cudaMemcpyAsync destination"));
    if (src_device) RETURN_IF_ERROR(CheckDeviceRange(src, bytes, false, "cudaMemcpyAsync source"));
    Op op;
    op.work = [dst, src, bytes] {
      std::memmove(dst, src, bytes);
      return absl::OkStatus();
    };
    return s->Enqueue(std::move(op));
  }

  absl::Status MemsetAsync(void* dst, int value, uint64_t bytes, StreamRef stream) override {
    std::shared_ptr<Stream> s;
    RETURN_IF_ERROR(Lookup(stream, &s));
    if (bytes == 0) return absl::OkStatus();
    RETURN_IF_ERROR(CheckDeviceRange(dst, bytes, true, "cudaMemsetAsync destination"));
    Op op;
    op.work = [dst, value, bytes] {
      std::memset(dst, value, bytes);
      return absl::OkStatus();
    };
    return s->Enqueue(std::move(op));
  }

  absl::Status LaunchDecode(const DecodeLaunch& launch, StreamRef stream) override {
    std::shared_ptr<Stream> s;
    RETURN_IF_ERROR(Lookup(stream, &s));
    if (launch.image == nullptr) return absl::InvalidArgumentError("emulated decode launch without a plan image");
    // What the CUDA launch refuses when enqueued (gpu_decoder.cu EnqueueDecode).
    if (launch.plan == nullptr || launch.results == nullptr) {
      return absl::InvalidArgumentError("decode launch without a plan image or results");
    }
    if (reinterpret_cast<uintptr_t>(launch.plan) % 16 != 0 || reinterpret_cast<uintptr_t>(launch.results) % 8 != 0) {
      return absl::InvalidArgumentError("decode launch: plan must be 16-byte aligned, results 8-byte aligned");
    }
    // The CUDA launch reads the host image only while launching: the caller
    // may drop it once LaunchDecode returns, so the op keeps a copy.
    auto image = std::make_shared<const PlanImage>(*launch.image);
    DecodeLaunch l = launch;
    l.image = image.get();
    Op op;
    op.work = [this, l, image]() -> absl::Status {
      const struct {
        const void* p;
        uint64_t bytes;
        bool write;
        const char* what;
      } ranges[] = {
          {l.input, image->input_bytes, false, "decode input"},
          {l.plan, image->bytes.size(), false, "decode plan"},
          {l.scratch, image->scratch_bytes, true, "decode scratch"},
          {l.output, image->output_bytes, true, "decode output"},
          {l.results, image->results_bytes, true, "decode results"},
      };
      for (const auto& r : ranges) {
        if (r.bytes == 0) continue;
        absl::Status st = CheckDeviceRange(r.p, r.bytes, r.write, r.what);
        if (!st.ok()) return Fault(st);
      }
      return EmulateDecodeLaunch(l);
    };
    return s->Enqueue(std::move(op));
  }

  absl::Status LaunchChecksum(const uint8_t* data, uint64_t bytes, uint64_t* out, StreamRef stream) override {
    std::shared_ptr<Stream> s;
    RETURN_IF_ERROR(Lookup(stream, &s));
    if (reinterpret_cast<uintptr_t>(data) % 8 != 0 || reinterpret_cast<uintptr_t>(out) % 8 != 0) {
      return absl::InvalidArgumentError("checksum launch: data and out must be 8-byte aligned");
    }
    // As CudaChecksumLaunch, when enqueued.
    if (out == nullptr || (bytes != 0 && data == nullptr)) {
      return absl::InvalidArgumentError("checksum of a null buffer");
    }
    Op op;
    op.work = [this, data, bytes, out]() -> absl::Status {
      if (bytes > 0) {
        absl::Status st = CheckDeviceRange(data, bytes, false, "checksum input");
        if (!st.ok()) return Fault(st);
      }
      absl::Status st = CheckDeviceRange(out, sizeof(uint64_t), true, "checksum output");
      if (!st.ok()) return Fault(st);
      return EmulateChecksumLaunch(data, bytes, out);
    };
    return s->Enqueue(std::move(op));
  }

  absl::Status LaunchXorChecksum(uint8_t* data, const uint8_t* base, uint64_t bytes, uint64_t* out,
                                 StreamRef stream) override {
    std::shared_ptr<Stream> s;
    RETURN_IF_ERROR(Lookup(stream, &s));
    if (reinterpret_cast<uintptr_t>(data) % 8 != 0 || reinterpret_cast<uintptr_t>(base) % 8 != 0 ||
        reinterpret_cast<uintptr_t>(out) % 8 != 0) {
      return absl::InvalidArgumentError("XOR launch: data, base and out must be 8-byte aligned");
    }
    if (out == nullptr || (bytes != 0 && (data == nullptr || base == nullptr))) {
      return absl::InvalidArgumentError("XOR of a null buffer");
    }
    Op op;
    op.work = [this, data, base, bytes, out]() -> absl::Status {
      if (bytes > 0) {
        absl::Status st = CheckDeviceRange(data, bytes, true, "XOR data");
        if (st.ok()) st = CheckDeviceRange(base, bytes, false, "XOR base");
        if (!st.ok()) return Fault(st);
      }
      absl::Status st = CheckDeviceRange(out, sizeof(uint64_t), true, "XOR checksum output");
      if (!st.ok()) return Fault(st);
      return EmulateXorChecksumLaunch(data, base, bytes, out);
    };
    return s->Enqueue(std::move(op));
  }

 private:
  struct Allocation {
    size_t size = 0;
    uint64_t charged = 0;
    std::string name;
    dev_t dev = 0;
    ino_t ino = 0;
  };
  struct Import {
    size_t size = 0;
    int refs = 0;
    dev_t dev = 0;
    ino_t ino = 0;
  };

  void Init() {
    std::string dir = options_.memory_dir;
    if ((options_.file_mode & ~static_cast<mode_t>(0640)) != 0 || (options_.file_mode & 0600) != 0600) {
      init_status_ = absl::InvalidArgumentError(absl::StrFormat(
          "emulated device: file_mode %04o is not 0600 or 0640", static_cast<unsigned>(options_.file_mode)));
      return;
    }
    if (dir.empty()) {
      init_status_ = absl::FailedPreconditionError("emulated device: no memory_dir");
      return;
    }
    if (dir[0] != '/') {
      char cwd[4096];
      if (::getcwd(cwd, sizeof(cwd)) == nullptr) {
        init_status_ = ErrnoToStatus(errno, "emulated device: getcwd");
        return;
      }
      dir = absl::StrCat(cwd, "/", dir);
    }
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    dir_path_ = dir;
    dir_fd_ = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dir_fd_ < 0) {
      const absl::Status st = ErrnoToStatus(errno, absl::StrCat("open ", EscapeForLog(dir)));
      init_status_ =
          absl::FailedPreconditionError(absl::StrCat("emulated device memory dir unusable: ", st.message()));
    }
  }

  absl::StatusOr<uint8_t*> CreateAllocation(uint64_t bytes, uint64_t charged) {
    std::string name;
    int fd = -1;
    for (int attempt = 0; attempt < 64 && fd < 0; ++attempt) {
      name = absl::StrFormat("bsemu-%x-%x", ::getpid(), next_name_++);
      fd = ::openat(dir_fd_, name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                    options_.file_mode);
      if (fd < 0 && errno != EEXIST) {
        return ErrnoToStatus(errno, absl::StrCat("emulated cudaMalloc: create ", EscapeForLog(name), " in ",
                                                 EscapeForLog(dir_path_)));
      }
    }
    if (fd < 0) return absl::InternalError("emulated cudaMalloc: no free file name after 64 tries");
    absl::Status st;
    struct stat sb;
    void* p = MAP_FAILED;
    if (::fchmod(fd, options_.file_mode) != 0) {
      st = ErrnoToStatus(errno, "emulated cudaMalloc: fchmod");
    } else if (::fallocate(fd, 0, 0, static_cast<off_t>(bytes)) != 0 &&
               (errno != EOPNOTSUPP || ::ftruncate(fd, static_cast<off_t>(bytes)) != 0)) {
      st = ErrnoToStatus(errno, absl::StrCat("emulated cudaMalloc: reserve ", bytes, " bytes in ",
                                             EscapeForLog(dir_path_)));
    } else if (::fstat(fd, &sb) != 0) {
      st = ErrnoToStatus(errno, "emulated cudaMalloc: fstat");
    } else {
      p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      if (p == MAP_FAILED) st = ErrnoToStatus(errno, "emulated cudaMalloc: mmap");
    }
    ::close(fd);
    if (!st.ok()) {
      ::unlinkat(dir_fd_, name.c_str(), 0);
      return st;
    }
    std::lock_guard<std::mutex> lock(mu_);
    allocations_[reinterpret_cast<uintptr_t>(p)] = Allocation{bytes, charged, name, sb.st_dev, sb.st_ino};
    return static_cast<uint8_t*>(p);
  }

  // [p, p + bytes) inside one allocation (or, for reads, one import).
  absl::Status CheckDeviceRange(const void* p, uint64_t bytes, bool write, const char* what) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    std::lock_guard<std::mutex> lock(mu_);
    auto inside = [&](const auto& regions) {
      auto it = regions.upper_bound(a);
      if (it == regions.begin()) return false;
      --it;
      const uint64_t off = a - it->first;
      return off < it->second.size && bytes <= it->second.size - off;
    };
    if (inside(allocations_)) return absl::OkStatus();
    if (inside(imports_)) {
      if (!write) return absl::OkStatus();
      return absl::InvalidArgumentError(absl::StrCat(
          "emulated device: ", what, " ", PtrText(p), " is imported IPC memory, which the emulator maps "
          "read-only"));
    }
    return absl::InvalidArgumentError(absl::StrCat("emulated device: ", what, " ", PtrText(p), " + ", bytes,
                                                   " is not inside one device allocation"));
  }

  static absl::Status Fault(const absl::Status& st) {
    return CudaErrorToStatus(kCudaErrorIllegalAddress, "kernel (emulated)",
                             absl::StrCat("an illegal memory access was encountered: ", st.message()));
  }

  static absl::Status CheckMapped(uintptr_t start, uint64_t bytes) {
    const uint64_t page = PageSize();
    const uintptr_t first = start / page * page;
    const uintptr_t end = start + bytes;
    constexpr uint64_t kWindowPages = 1 << 16;  // 256 MiB of 4 KiB pages per mincore call
    std::vector<unsigned char> vec(kWindowPages);
    for (uintptr_t at = first; at < end;) {
      const uint64_t len = std::min<uint64_t>(end - at, kWindowPages * page);
      if (::mincore(reinterpret_cast<void*>(at), len, vec.data()) != 0) {
        if (errno == ENOMEM) {
          return absl::InvalidArgumentError(absl::StrCat("emulated cudaHostRegister: ", PtrText(
                                                             reinterpret_cast<void*>(start)),
                                                         " + ", bytes, " is not all mapped memory"));
        }
        return ErrnoToStatus(errno, "emulated cudaHostRegister: mincore");
      }
      at += len;
    }
    return absl::OkStatus();
  }

  void SynchronizeAll() {
    std::vector<std::shared_ptr<Stream>> streams;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [key, s] : streams_) streams.push_back(s);
    }
    for (auto& s : streams) s->Synchronize().IgnoreError();
  }

  static absl::Status UnknownStream(StreamRef s) {
    return absl::InvalidArgumentError(
        absl::StrCat("emulated device: ", PtrText(s.p), " is not a live stream of this DeviceApi"));
  }
  static absl::Status UnknownEvent(EventRef e) {
    return absl::InvalidArgumentError(
        absl::StrCat("emulated device: ", PtrText(e.p), " is not a live event of this DeviceApi"));
  }
  absl::Status Lookup(StreamRef ref, std::shared_ptr<Stream>* out) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = streams_.find(ref.p);
    if (it == streams_.end()) return UnknownStream(ref);
    *out = it->second;
    return absl::OkStatus();
  }
  absl::Status Lookup(EventRef ref, std::shared_ptr<EventState>* out) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = events_.find(ref.p);
    if (it == events_.end()) return UnknownEvent(ref);
    *out = it->second;
    return absl::OkStatus();
  }

  const EmulatedDeviceOptions options_;
  absl::Status init_status_;
  std::string dir_path_;
  int dir_fd_ = -1;
  std::mutex mu_;
  uint64_t used_ = 0;
  std::atomic<uint64_t> next_name_{0};
  std::map<uintptr_t, Allocation> allocations_;
  std::map<uintptr_t, Import> imports_;
  std::map<uintptr_t, uint64_t> host_;
  std::map<uintptr_t, uint64_t> registered_;
  std::map<void*, std::shared_ptr<Stream>> streams_;
  std::map<void*, std::shared_ptr<EventState>> events_;
};

}  // namespace

std::unique_ptr<DeviceApi> MakeEmulatedDeviceApi(const EmulatedDeviceOptions& options) {
  return std::make_unique<EmulatedDeviceApi>(options);
}

}  // namespace bigsmall::gpu
