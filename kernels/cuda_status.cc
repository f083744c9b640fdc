#include "kernels/cuda_status.h"

#include "absl/strings/str_cat.h"

namespace bigsmall::gpu {

absl::StatusCode CudaErrorToStatusCode(int cuda_error) {
  switch (cuda_error) {
    case kCudaSuccess:
      return absl::StatusCode::kOk;
    case kCudaErrorMemoryAllocation:
    case kCudaErrorLaunchOutOfResources:
      return absl::StatusCode::kResourceExhausted;
    case kCudaErrorInitializationError:
    case kCudaErrorStubLibrary:
    case kCudaErrorInsufficientDriver:
    case kCudaErrorCallRequiresNewerDriver:
    case kCudaErrorDevicesUnavailable:
    case kCudaErrorNoDevice:
    case kCudaErrorInvalidDevice:
    case kCudaErrorNoKernelImageForDevice:
    case kCudaErrorUnsupportedPtxVersion:
    case kCudaErrorSystemNotReady:
    case kCudaErrorSystemDriverMismatch:
    case kCudaErrorCompatNotSupportedOnDevice:
    case kCudaErrorNotSupported:
      return absl::StatusCode::kFailedPrecondition;
    default:
      break;
  }
  if (cuda_error >= kCudaErrorIllegalAddress && cuda_error <= kCudaErrorLaunchFailure) {
    return absl::StatusCode::kInternal;
  }
  return absl::StatusCode::kUnavailable;
}

absl::Status CudaErrorToStatus(int cuda_error, absl::string_view what, absl::string_view message) {
  const absl::StatusCode code = CudaErrorToStatusCode(cuda_error);
  if (code == absl::StatusCode::kOk) return absl::OkStatus();
  return absl::Status(code, absl::StrCat("CUDA ", what, ": ", message, " (error ", cuda_error, ")"));
}

}  // namespace bigsmall::gpu
