// CUDA errors as absl::Status: a host-only mapper (no CUDA headers), so it
// is unit-tested in every build. The numbers are cudaError_t values;
// gpu_decoder.cu static_asserts each against the CUDA headers it builds with.
#ifndef BIGSMALL_KERNELS_CUDA_STATUS_H_
#define BIGSMALL_KERNELS_CUDA_STATUS_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace bigsmall::gpu {

inline constexpr int kCudaSuccess = 0;
inline constexpr int kCudaErrorMemoryAllocation = 2;
inline constexpr int kCudaErrorInitializationError = 3;
inline constexpr int kCudaErrorStubLibrary = 34;
inline constexpr int kCudaErrorInsufficientDriver = 35;
inline constexpr int kCudaErrorCallRequiresNewerDriver = 36;
inline constexpr int kCudaErrorDevicesUnavailable = 46;
inline constexpr int kCudaErrorNoDevice = 100;
inline constexpr int kCudaErrorInvalidDevice = 101;
inline constexpr int kCudaErrorNoKernelImageForDevice = 209;
inline constexpr int kCudaErrorUnsupportedPtxVersion = 222;
inline constexpr int kCudaErrorIllegalAddress = 700;
inline constexpr int kCudaErrorLaunchOutOfResources = 701;
inline constexpr int kCudaErrorLaunchFailure = 719;
inline constexpr int kCudaErrorNotSupported = 801;
inline constexpr int kCudaErrorSystemNotReady = 802;
inline constexpr int kCudaErrorSystemDriverMismatch = 803;
inline constexpr int kCudaErrorCompatNotSupportedOnDevice = 804;

// The code for a CUDA error:
//   out of memory (2), too many resources for a launch  -> RESOURCE_EXHAUSTED
//   no device, no or too old a driver, a stub libcuda,
//   devices busy/prohibited, an invalid ordinal, no
//   kernel image or PTX for this GPU, driver mismatch,
//   an operation this system does not support (801)    -> FAILED_PRECONDITION
//   a kernel that faulted (700..719 but 701: the
//   context is lost)                                    -> INTERNAL
//   anything else                                       -> UNAVAILABLE
// kOk for cudaSuccess.
absl::StatusCode CudaErrorToStatusCode(int cuda_error);

// "CUDA <what>: <message>" with that code (OK for cudaSuccess).
absl::Status CudaErrorToStatus(int cuda_error, absl::string_view what, absl::string_view message);

}  // namespace bigsmall::gpu

#endif  // BIGSMALL_KERNELS_CUDA_STATUS_H_
