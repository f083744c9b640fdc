// Built when CUDA is not: every GPU call is FAILED_PRECONDITION ("built
// without CUDA").
#include "absl/strings/str_cat.h"
#include "kernels/gpu_decoder.h"

namespace bigsmall::gpu {

absl::StatusOr<int> CountDevices() {
  return absl::FailedPreconditionError("no GPU: built without CUDA");
}
int DeviceCount(std::string* why) {
  if (why) *why = "built without CUDA";
  return 0;
}
absl::StatusOr<DeviceInfo> Describe(int) { return absl::FailedPreconditionError("built without CUDA"); }

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(int, uint64_t) {
  return absl::FailedPreconditionError("built without CUDA");
}
DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), size_(o.size_), device_(o.device_) {}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&&) noexcept { return *this; }
DeviceBuffer::~DeviceBuffer() = default;
absl::Status DeviceBuffer::CopyToHost(absl::Span<uint8_t>, uint64_t) const {
  return absl::FailedPreconditionError("built without CUDA");
}

absl::StatusOr<double> MeasureCopyBandwidth(int, uint64_t, bool) {
  return absl::FailedPreconditionError("built without CUDA");
}

struct GpuDecoder::State {};
GpuDecoder::GpuDecoder(int device) : device_(device) {}
GpuDecoder::~GpuDecoder() = default;
absl::StatusOr<std::unique_ptr<GpuDecoder>> GpuDecoder::Create(int) {
  return absl::FailedPreconditionError("built without CUDA");
}
absl::StatusOr<DecodeTiming> GpuDecoder::Decode(absl::Span<const uint8_t>, const std::vector<TensorJob>&,
                                                const DecodePlan&, void*) {
  return absl::FailedPreconditionError("built without CUDA");
}

}  // namespace bigsmall::gpu
