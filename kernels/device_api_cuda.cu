// The CUDA runtime behind kernels/device_api.h: one runtime call per verb.
//
//  * Errors: CudaErrorToStatus (kernels/cuda_status.h), except the few
//    codes the interface names differently (LocalCode below), so callers
//    see the emulator's codes. After a failed call the runtime's per-thread
//    last error is cleared, so a later launch check does not see it.
//  * cudaSetDevice before every call that allocates or creates on a device;
//    streams and events remember their device (a small wrapper each), and a
//    kernel launch runs with its stream's device current.
//  * Streams are cudaStreamNonBlocking (no implicit sync with the legacy
//    default stream); events keep timing and use cudaEventBlockingSync, so
//    a daemon thread waiting on one sleeps instead of spinning a core.
//  * HostRegister(read_only): cudaHostRegisterPortable |
//    cudaHostRegisterReadOnly. Where the driver or device refuses the
//    read-only flag (cudaErrorNotSupported / cudaErrorInvalidValue, devices
//    without cudaDevAttrHostRegisterReadOnlySupported), it retries with
//    cudaHostRegisterPortable alone, which works for writable mappings; for
//    a PROT_READ mapping that retry fails too and the first error is
//    returned, with both CUDA messages.
//  * IPC opens with cudaIpcMemLazyEnablePeerAccess. IpcGetMemHandle must be
//    given the base of a Malloc allocation (CUDA documents only that; the
//    emulator refuses anything else).
#include <cuda_runtime.h>

#include <cstring>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "codec/status_macros.h"
#include "kernels/cuda_status.h"
#include "kernels/device_api.h"
#include "kernels/launch.h"

namespace bigsmall::gpu {
namespace {

// The interface's codes for errors whose generic mapping says less.
absl::Status LocalCode(cudaError_t err, const absl::Status& st) {
  switch (err) {
    case cudaErrorInvalidValue:
    case cudaErrorInvalidResourceHandle:
    case cudaErrorInvalidDevicePointer:
    case cudaErrorHostMemoryNotRegistered:
      return absl::InvalidArgumentError(st.message());
    case cudaErrorHostMemoryAlreadyRegistered:
      return absl::AlreadyExistsError(st.message());
    case cudaErrorNotReady:
    case cudaErrorDeviceUninitialized:  // "invalid device context", e.g. opening one's own IPC handle
      return absl::FailedPreconditionError(st.message());
    default:
      return st;
  }
}

absl::Status Check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();  // clear the thread's last (non-sticky) error
  return LocalCode(err, CudaErrorToStatus(static_cast<int>(err), what, cudaGetErrorString(err)));
}

#define CUDA_API_RETURN_IF_ERROR(call)                    \
  do {                                                    \
    absl::Status _cuda_st = Check((call), #call);         \
    if (!_cuda_st.ok()) return _cuda_st;                  \
  } while (0)

struct CudaStream {
  cudaStream_t stream = nullptr;
  int device = 0;
};
struct CudaEvent {
  cudaEvent_t event = nullptr;
  int device = 0;
};

CudaStream* AsStream(StreamRef s) { return static_cast<CudaStream*>(s.p); }
CudaEvent* AsEvent(EventRef e) { return static_cast<CudaEvent*>(e.p); }

absl::Status NullStream() {
  return absl::InvalidArgumentError("a null StreamRef (CUDA's legacy default stream) is not accepted");
}
absl::Status NullEvent() { return absl::InvalidArgumentError("a null EventRef"); }

cudaMemcpyKind ToCuda(CopyKind kind) {
  switch (kind) {
    case CopyKind::kHostToDevice:
      return cudaMemcpyHostToDevice;
    case CopyKind::kDeviceToHost:
      return cudaMemcpyDeviceToHost;
    case CopyKind::kDeviceToDevice:
      return cudaMemcpyDeviceToDevice;
  }
  return cudaMemcpyDefault;
}

class CudaDeviceApi final : public DeviceApi {
 public:
  explicit CudaDeviceApi(int count) : count_(count) {}

  const char* name() const override { return "cuda"; }
  absl::StatusOr<int> DeviceCount() override { return count_; }

  // gpu_decoder.h's Describe: name, "GPU-..." UUID, memory, SMs.
  absl::StatusOr<DeviceInfo> Describe(int device) override { return gpu::Describe(device); }

  absl::StatusOr<uint8_t*> Malloc(int device, uint64_t bytes) override {
    if (bytes == 0) return absl::InvalidArgumentError("cudaMalloc of 0 bytes");
    CUDA_API_RETURN_IF_ERROR(cudaSetDevice(device));
    void* p = nullptr;
    CUDA_API_RETURN_IF_ERROR(cudaMalloc(&p, bytes));
    return static_cast<uint8_t*>(p);
  }

  absl::Status Free(int device, uint8_t* ptr) override {
    CUDA_API_RETURN_IF_ERROR(cudaSetDevice(device));
    CUDA_API_RETURN_IF_ERROR(cudaFree(ptr));
    return absl::OkStatus();
  }

  absl::StatusOr<uint8_t*> MallocHost(uint64_t bytes) override {
    if (bytes == 0) return absl::InvalidArgumentError("cudaMallocHost of 0 bytes");
    void* p = nullptr;
    CUDA_API_RETURN_IF_ERROR(cudaHostAlloc(&p, bytes, cudaHostAllocPortable));
    return static_cast<uint8_t*>(p);
  }

  absl::Status FreeHost(uint8_t* ptr) override {
    CUDA_API_RETURN_IF_ERROR(cudaFreeHost(ptr));
    return absl::OkStatus();
  }

  absl::Status HostRegister(void* ptr, uint64_t bytes, bool read_only) override {
    if (ptr == nullptr || bytes == 0) return absl::InvalidArgumentError("cudaHostRegister of an empty range");
    if (!read_only) {
      CUDA_API_RETURN_IF_ERROR(cudaHostRegister(ptr, bytes, cudaHostRegisterPortable));
      return absl::OkStatus();
    }
    const cudaError_t err = cudaHostRegister(ptr, bytes, cudaHostRegisterPortable | cudaHostRegisterReadOnly);
    if (err == cudaSuccess) return absl::OkStatus();
    absl::Status first = Check(err, "cudaHostRegister(cudaHostRegisterPortable | cudaHostRegisterReadOnly)");
    if (err != cudaErrorNotSupported && err != cudaErrorInvalidValue) return first;
    const cudaError_t retry = cudaHostRegister(ptr, bytes, cudaHostRegisterPortable);
    if (retry == cudaSuccess) return absl::OkStatus();
    const absl::Status second = Check(retry, "cudaHostRegister(cudaHostRegisterPortable) retry");
    return absl::Status(first.code(), absl::StrCat(first.message(), "; ", second.message()));
  }

  absl::Status HostUnregister(void* ptr) override {
    CUDA_API_RETURN_IF_ERROR(cudaHostUnregister(ptr));
    return absl::OkStatus();
  }

  absl::StatusOr<IpcHandle> IpcGetMemHandle(int device, uint8_t* base) override {
    CUDA_API_RETURN_IF_ERROR(cudaSetDevice(device));
    cudaIpcMemHandle_t h;
    CUDA_API_RETURN_IF_ERROR(cudaIpcGetMemHandle(&h, base));
    static_assert(sizeof(h) == kIpcHandleBytes);
    IpcHandle out;
    std::memcpy(out.data(), &h, sizeof(h));
    return out;
  }

  absl::StatusOr<uint8_t*> IpcOpenMemHandle(int device, const IpcHandle& handle) override {
    CUDA_API_RETURN_IF_ERROR(cudaSetDevice(device));
    cudaIpcMemHandle_t h;
    std::memcpy(&h, handle.data(), sizeof(h));
    void* p = nullptr;
    CUDA_API_RETURN_IF_ERROR(cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess));
    return static_cast<uint8_t*>(p);
  }

  absl::Status IpcCloseMemHandle(int device, uint8_t* ptr) override {
    CUDA_API_RETURN_IF_ERROR(cudaSetDevice(device));
    CUDA_API_RETURN_IF_ERROR(cudaIpcCloseMemHandle(ptr));
    return absl::OkStatus();
  }

  absl::StatusOr<StreamRef> CreateStream(int device) override {
    CUDA_API_RETURN_IF_ERROR(cudaSetDevice(device));
    auto s = std::make_unique<CudaStream>();
    s->device = device;
    CUDA_API_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
    return StreamRef{s.release()};
  }

  absl::Status DestroyStream(StreamRef stream) override {
    if (stream.p == nullptr) return NullStream();
    std::unique_ptr<CudaStream> s(AsStream(stream));
    CUDA_API_RETURN_IF_ERROR(cudaStreamDestroy(s->stream));
    return absl::OkStatus();
  }

  absl::StatusOr<EventRef> CreateEvent(int device) override {
    CUDA_API_RETURN_IF_ERROR(cudaSetDevice(device));
    auto e = std::make_unique<CudaEvent>();
    e->device = device;
    CUDA_API_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e->event, cudaEventBlockingSync));
    return EventRef{e.release()};
  }

  absl::Status DestroyEvent(EventRef event) override {
    if (event.p == nullptr) return NullEvent();
    std::unique_ptr<CudaEvent> e(AsEvent(event));
    CUDA_API_RETURN_IF_ERROR(cudaEventDestroy(e->event));
    return absl::OkStatus();
  }

  absl::Status EventRecord(EventRef event, StreamRef stream) override {
    if (event.p == nullptr) return NullEvent();
    if (stream.p == nullptr) return NullStream();
    CUDA_API_RETURN_IF_ERROR(cudaEventRecord(AsEvent(event)->event, AsStream(stream)->stream));
    return absl::OkStatus();
  }

  absl::Status StreamWaitEvent(StreamRef stream, EventRef event) override {
    if (event.p == nullptr) return NullEvent();
    if (stream.p == nullptr) return NullStream();
    CUDA_API_RETURN_IF_ERROR(cudaStreamWaitEvent(AsStream(stream)->stream, AsEvent(event)->event, 0));
    return absl::OkStatus();
  }

  absl::Status EventSynchronize(EventRef event) override {
    if (event.p == nullptr) return NullEvent();
    CUDA_API_RETURN_IF_ERROR(cudaEventSynchronize(AsEvent(event)->event));
    return absl::OkStatus();
  }

  absl::StatusOr<bool> EventQuery(EventRef event) override {
    if (event.p == nullptr) return NullEvent();
    const cudaError_t err = cudaEventQuery(AsEvent(event)->event);
    if (err == cudaSuccess) return true;
    if (err == cudaErrorNotReady) {
      cudaGetLastError();
      return false;
    }
    return Check(err, "cudaEventQuery");
  }

  absl::StatusOr<float> EventElapsedMs(EventRef start, EventRef end) override {
    if (start.p == nullptr || end.p == nullptr) return NullEvent();
    float ms = 0;
    const cudaError_t err = cudaEventElapsedTime(&ms, AsEvent(start)->event, AsEvent(end)->event);
    if (err == cudaErrorInvalidResourceHandle) {
      // What CUDA says when either event was never recorded: the interface's
      // "not completed" (FAILED_PRECONDITION), as for cudaErrorNotReady.
      const absl::Status st = Check(err, "cudaEventElapsedTime");
      return absl::FailedPreconditionError(absl::StrCat(st.message(), " (an event never recorded?)"));
    }
    RETURN_IF_ERROR(Check(err, "cudaEventElapsedTime"));
    return ms;
  }

  absl::Status StreamSynchronize(StreamRef stream) override {
    if (stream.p == nullptr) return NullStream();
    CUDA_API_RETURN_IF_ERROR(cudaStreamSynchronize(AsStream(stream)->stream));
    return absl::OkStatus();
  }

  absl::Status MemcpyAsync(void* dst, const void* src, uint64_t bytes, CopyKind kind,
                           StreamRef stream) override {
    if (stream.p == nullptr) return NullStream();
    if (bytes == 0) return absl::OkStatus();
    CUDA_API_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, bytes, ToCuda(kind), AsStream(stream)->stream));
    return absl::OkStatus();
  }

  absl::Status MemsetAsync(void* dst, int value, uint64_t bytes, StreamRef stream) override {
    if (stream.p == nullptr) return NullStream();
    if (bytes == 0) return absl::OkStatus();
    CUDA_API_RETURN_IF_ERROR(cudaMemsetAsync(dst, value, bytes, AsStream(stream)->stream));
    return absl::OkStatus();
  }

  absl::Status LaunchDecode(const DecodeLaunch& launch, StreamRef stream) override {
    if (stream.p == nullptr) return NullStream();
    if (launch.image == nullptr) return absl::InvalidArgumentError("decode launch without a plan image");
    CUDA_API_RETURN_IF_ERROR(cudaSetDevice(AsStream(stream)->device));
    return CudaDecodeLaunch(launch, AsStream(stream)->stream);
  }

  absl::Status LaunchChecksum(const uint8_t* data, uint64_t bytes, uint64_t* out, StreamRef stream) override {
    if (stream.p == nullptr) return NullStream();
    if (reinterpret_cast<uintptr_t>(data) % 8 != 0 || reinterpret_cast<uintptr_t>(out) % 8 != 0) {
      return absl::InvalidArgumentError("checksum launch: data and out must be 8-byte aligned");
    }
    CUDA_API_RETURN_IF_ERROR(cudaSetDevice(AsStream(stream)->device));
    return CudaChecksumLaunch(data, bytes, out, AsStream(stream)->stream);
  }

  absl::Status LaunchXorChecksum(uint8_t* data, const uint8_t* base, uint64_t bytes, uint64_t* out,
                                 StreamRef stream) override {
    if (stream.p == nullptr) return NullStream();
    CUDA_API_RETURN_IF_ERROR(cudaSetDevice(AsStream(stream)->device));
    return CudaXorChecksumLaunch(data, base, bytes, out, AsStream(stream)->stream);
  }

 private:
  const int count_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceApi>> MakeCudaDeviceApi() {
  absl::StatusOr<int> n = CountDevices();  // gpu_decoder.h: FAILED_PRECONDITION saying why
  if (!n.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("no usable CUDA device: ", n.status().message()));
  }
  return std::unique_ptr<DeviceApi>(new CudaDeviceApi(*n));
}

}  // namespace bigsmall::gpu
