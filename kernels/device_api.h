// The device runtime as the daemon and the client use it: the handful of
// CUDA runtime verbs the GPU path needs (device memory, pinned host memory,
// IPC handles, streams, events, async copies, the decode and checksum
// kernels), behind a CUDA-free interface with two implementations:
//
//  * CudaDeviceApi (device_api_cuda.cu, built when nvcc is present): the
//    CUDA runtime itself, one call each.
//  * EmulatedDeviceApi (device_api_emulated.cc, always built): one device,
//    "cuda:0", whose memory is host memory in shared-memory files (so its
//    IPC handles open in another process), whose streams are in-order work
//    queues on their own threads (so stream order and event waits matter as
//    on a GPU), and whose kernels are the CUDA kernels' own decode functions
//    (kernels/decode_step.h) run by the CPU emulator.
//
// Everything above this interface (device arenas, staging, the load
// pipeline, the client's IPC cache, verification) is one code path, so
// machines without a GPU test the GPU path's whole logic.
//
// Errors: every call returns absl::Status with the codes of
// kernels/cuda_status.h (out of memory: RESOURCE_EXHAUSTED; no driver or no
// device: FAILED_PRECONDITION; a fault in a kernel: INTERNAL). An
// asynchronous error surfaces at the next synchronising call on the stream
// (EventSynchronize, StreamSynchronize), as with CUDA.
//
// Semantics both implementations share (the emulator mimics CUDA; where it
// is stricter, it says so):
//  * Malloc of 0 bytes is INVALID_ARGUMENT (cudaMalloc would return null).
//  * A bad device ordinal is FAILED_PRECONDITION (cudaErrorInvalidDevice);
//    invalid arguments (cudaErrorInvalidValue, a bad handle) are
//    INVALID_ARGUMENT; registering host memory twice ALREADY_EXISTS;
//    EventElapsedMs of an event not completed (or never recorded)
//    FAILED_PRECONDITION.
//  * StreamWaitEvent and EventSynchronize refer to the event's latest
//    record at the time of the call; an event never recorded does not
//    wait. StreamRef{nullptr} (CUDA's legacy default stream) is refused.
//  * IpcOpenMemHandle of a handle already open in this process returns the
//    same pointer and counts one more reference; IpcCloseMemHandle drops one
//    and unmaps at zero. A handle cannot be opened in the process (the
//    DeviceApi instance, for the emulator) that exported it. The emulator
//    keeps an importer's mapping valid after the exporter's Free; CUDA does
//    NOT promise that ("calling cudaFree on an exported memory region before
//    calling cudaIpcCloseMemHandle in the importing context will result in
//    undefined behavior", cudaIpcOpenMemHandle): an exporter must free only
//    memory that no importer still has open.
//  * The emulator only: an op whose device range lies outside every device
//    allocation fails (synchronously for copies and memsets,
//    INVALID_ARGUMENT; at execution for kernels, INTERNAL "illegal address",
//    as a GPU fault), imported IPC memory is mapped read-only (writing it is
//    INVALID_ARGUMENT: clients never write the daemon's layers), and an
//    async error is sticky for its stream (later ops on it are skipped and
//    every later sync of it returns the error; a stream waiting on an event
//    of the failed work inherits the error), not for the whole context as
//    a CUDA kernel fault is. Free and IpcCloseMemHandle first wait for all
//    work already enqueued (cudaFree synchronises too).
#ifndef BIGSMALL_KERNELS_DEVICE_API_H_
#define BIGSMALL_KERNELS_DEVICE_API_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include <sys/types.h>
#include <unistd.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/gpu_decoder.h"

namespace bigsmall::gpu {

// cudaIpcMemHandle_t is 64 opaque bytes; the emulated handle has the same size.
inline constexpr size_t kIpcHandleBytes = 64;
using IpcHandle = std::array<uint8_t, kIpcHandleBytes>;

// Opaque stream and event handles (cudaStream_t / cudaEvent_t, or the
// emulator's objects). Owned: destroyed with DestroyStream / DestroyEvent.
struct StreamRef {
  void* p = nullptr;
};
struct EventRef {
  void* p = nullptr;
};

enum class CopyKind { kHostToDevice, kDeviceToHost, kDeviceToDevice };

// Where the decode kernels find their inputs and put their outputs. All
// pointers are device pointers except `image`, the host view of the plan.
struct DecodeLaunch {
  const uint8_t* input = nullptr;  // the staged group bytes
  const uint8_t* plan = nullptr;   // device copy of image->bytes
  const PlanImage* image = nullptr;
  uint8_t* scratch = nullptr;  // image->scratch_bytes
  uint8_t* output = nullptr;   // the layer's memory (image->output_bytes)
  // image->results_bytes: written by the kernels (DecodeResults layout,
  // gpu_decoder.h); copy it back to read the verdict.
  uint8_t* results = nullptr;
};

class DeviceApi {
 public:
  virtual ~DeviceApi() = default;

  // "cuda" or "emulated".
  virtual const char* name() const = 0;
  // Devices this process can use (>= 1), or FAILED_PRECONDITION saying why
  // there is none (no CUDA in the build, no driver, no GPU).
  virtual absl::StatusOr<int> DeviceCount() = 0;
  virtual absl::StatusOr<DeviceInfo> Describe(int device) = 0;

  // Device memory (cudaMalloc / cudaFree). Freeing memory that another
  // process still has open through IPC is the caller's problem (CUDA keeps
  // it alive until every importer closed it; so does the emulator).
  virtual absl::StatusOr<uint8_t*> Malloc(int device, uint64_t bytes) = 0;
  virtual absl::Status Free(int device, uint8_t* ptr) = 0;
  // Page-locked host memory (cudaMallocHost), for staging.
  virtual absl::StatusOr<uint8_t*> MallocHost(uint64_t bytes) = 0;
  virtual absl::Status FreeHost(uint8_t* ptr) = 0;
  // Page-locks an existing mapping (cudaHostRegister; `read_only` adds
  // cudaHostRegisterReadOnly, needed for a read-only mapping).
  virtual absl::Status HostRegister(void* ptr, uint64_t bytes, bool read_only) = 0;
  virtual absl::Status HostUnregister(void* ptr) = 0;

  // IPC (cudaIpcGetMemHandle / OpenMemHandle / CloseMemHandle). `base` must
  // be a pointer Malloc returned. Opening is slow on real GPUs: cache it.
  virtual absl::StatusOr<IpcHandle> IpcGetMemHandle(int device, uint8_t* base) = 0;
  virtual absl::StatusOr<uint8_t*> IpcOpenMemHandle(int device, const IpcHandle& handle) = 0;
  virtual absl::Status IpcCloseMemHandle(int device, uint8_t* ptr) = 0;

  // Streams (non-blocking) and events (timing enabled).
  virtual absl::StatusOr<StreamRef> CreateStream(int device) = 0;
  virtual absl::Status DestroyStream(StreamRef stream) = 0;
  virtual absl::StatusOr<EventRef> CreateEvent(int device) = 0;
  virtual absl::Status DestroyEvent(EventRef event) = 0;
  virtual absl::Status EventRecord(EventRef event, StreamRef stream) = 0;
  // Later work on `stream` waits for the work before `event`'s last record.
  virtual absl::Status StreamWaitEvent(StreamRef stream, EventRef event) = 0;
  // Blocks until the work before the event's last record is done; returns
  // the first error of that stream's work (a kernel fault, a bad copy).
  virtual absl::Status EventSynchronize(EventRef event) = 0;
  // True when done (without blocking); errors as EventSynchronize.
  virtual absl::StatusOr<bool> EventQuery(EventRef event) = 0;
  // Milliseconds between two completed events.
  virtual absl::StatusOr<float> EventElapsedMs(EventRef start, EventRef end) = 0;
  virtual absl::Status StreamSynchronize(StreamRef stream) = 0;

  virtual absl::Status MemcpyAsync(void* dst, const void* src, uint64_t bytes, CopyKind kind,
                                   StreamRef stream) = 0;
  virtual absl::Status MemsetAsync(void* dst, int value, uint64_t bytes, StreamRef stream) = 0;

  // Enqueues the decode kernels of `launch` (and the on-device comparison of
  // every tensor's device checksum with the plan's expected one) on
  // `stream`. A corrupt chunk or a checksum mismatch is reported in
  // launch.results, never as a stream error.
  virtual absl::Status LaunchDecode(const DecodeLaunch& launch, StreamRef stream) = 0;
  // Enqueues the device checksum (codec/device_checksum.h) of `bytes` bytes
  // at `data` (8-byte aligned); the finished 64-bit checksum is written to
  // the device word `out`.
  virtual absl::Status LaunchChecksum(const uint8_t* data, uint64_t bytes, uint64_t* out,
                                      StreamRef stream) = 0;
  // Fine-tune deltas (docs/FORMAT.md §7): enqueues the XOR kernel, which
  // rebuilds `bytes` bytes at `data` in place as data XOR `base` (device
  // memory, both 8-byte aligned; `base` is the base tensor in its own
  // decoded layer) and writes the device checksum of the rebuilt bytes to
  // the device word `out` (the caller compares it with the tensor's). The
  // default (runtimes without it) is UNIMPLEMENTED.
  virtual absl::Status LaunchXorChecksum(uint8_t* data, const uint8_t* base, uint64_t bytes,
                                         uint64_t* out, StreamRef stream) {
    (void)data, (void)base, (void)bytes, (void)out, (void)stream;
    return absl::UnimplementedError("this device runtime has no XOR kernel");
  }
};

// The real CUDA runtime, or FAILED_PRECONDITION (built without CUDA, no
// driver, no GPU: the message says which).
absl::StatusOr<std::unique_ptr<DeviceApi>> MakeCudaDeviceApi();

struct EmulatedDeviceOptions {
  // Where device allocations live, as files (default: /dev/shm), created
  // O_EXCL | O_NOFOLLOW, mode 0600, relative to a descriptor of the
  // directory opened at construction (O_DIRECTORY | O_NOFOLLOW; when that
  // fails, DeviceCount and Malloc say why). Importers check each file's
  // owner and mode, not the directory's. A handle holds the file's absolute
  // path, which must fit in 59 bytes.
  std::string memory_dir = "/dev/shm";
  uint64_t memory_bytes = 80ull << 30;  // the device's reported memory
  std::string uuid = "GPU-00000000-0000-0000-0000-00000000e001";
  std::string device_name = "BigSmall emulated GPU";
  // IpcOpenMemHandle accepts only a regular file owned by this uid and not
  // writable by group or others (PERMISSION_DENIED otherwise): a client
  // sets the daemon's uid (the owner of its socket).
  uid_t expected_owner = ::geteuid();
  // Mode of the allocation files: 0600, or 0640 so that the memory dir's
  // group (the daemon's --shm-group) can import them. Any other bit is
  // refused (DeviceCount and Malloc say so).
  mode_t file_mode = 0600;
  // Tests: every stream operation is delayed this long before it runs, so
  // a missing event wait shows as a wrong result.
  uint32_t op_delay_us = 0;
};
std::unique_ptr<DeviceApi> MakeEmulatedDeviceApi(const EmulatedDeviceOptions& options = {});

// "cuda:N" -> N, or a GPU UUID -> the ordinal with that UUID; an unknown
// device is NOT_FOUND, a malformed name INVALID_ARGUMENT.
absl::StatusOr<int> ResolveDevice(DeviceApi& api, const std::string& name);

}  // namespace bigsmall::gpu

#endif  // BIGSMALL_KERNELS_DEVICE_API_H_
