// Built when CUDA is not: MakeCudaDeviceApi says so (the emulated device,
// device_api_emulated.cc, is always built).
#include "kernels/device_api.h"

namespace bigsmall::gpu {

absl::StatusOr<std::unique_ptr<DeviceApi>> MakeCudaDeviceApi() {
  return absl::FailedPreconditionError("no CUDA device API: built without CUDA (BIGSMALL_CUDA=OFF or no nvcc)");
}

}  // namespace bigsmall::gpu
