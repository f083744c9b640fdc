// GPU decoding of .bs tensor blobs: the CUDA-free interface. Host code
// includes only this header; the CUDA implementation lives in
// gpu_decoder.cu and is built only when nvcc is present (otherwise every
// call reports kFailedPrecondition, "built without CUDA"). CUDA errors map to
// codes as kernels/cuda_status.h says (out of memory: kResourceExhausted). The same plan also runs on the CPU through an
// exact emulation of the kernels (EmulateDecode), which is how the kernels'
// logic is tested on machines without a GPU.
#ifndef BIGSMALL_KERNELS_GPU_DECODER_H_
#define BIGSMALL_KERNELS_GPU_DECODER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/cuda_status.h"
#include "kernels/warp_rans.h"

namespace bigsmall::gpu {

// One tensor to decode: its blob inside the input buffer and its place in the output buffer.
struct TensorJob {
  uint64_t blob_offset = 0;
  uint64_t blob_size = 0;
  uint64_t out_offset = 0;  // a multiple of 16 (tensors are 256-aligned in a layer)
  uint64_t out_size = 0;
  // The tensor's device checksum (codec/device_checksum.h) from a 1.1 index;
  // the kernels compare it on the device. Without one (1.0 files) the caller
  // must verify the tensor another way (copy back and XXH3-128).
  bool has_checksum = false;
  uint64_t checksum = 0;
};

// Everything the kernels need, built on the host from the blobs' headers.
struct DecodePlan {
  std::vector<ChunkTask> chunks;
  std::vector<MergeTask> merges;
  std::vector<uint32_t> tables;        // decode slot tables, 4096 entries each
  uint64_t scratch_bytes = 0;          // decoded planes awaiting their merge
  std::vector<uint32_t> cpu_fallback;  // jobs with coders the GPU does not run (zstd, conditional)
  uint64_t output_bytes = 0;           // max(out_offset + out_size)
};

// The plan as the kernels read it from device memory: one contiguous image
// (header, then the task arrays, tables and expected checksums, each 16-byte
// aligned) uploaded next to the group's bytes in the same staging buffer, so
// one H2D copy carries a layer's input and its plan. Sizes are for the
// launch grid and for the caller's allocations.
struct PlanImage {
  std::vector<uint8_t> bytes;
  uint32_t num_jobs = 0;
  uint32_t num_chunks = 0;
  uint32_t num_merges = 0;
  uint64_t scratch_bytes = 0;  // device scratch the kernels need
  uint64_t output_bytes = 0;   // layer memory the kernels write
  uint64_t results_bytes = 0;  // DecodeResults + per-job sums
};
absl::StatusOr<PlanImage> BuildPlanImage(const DecodePlan& plan, const std::vector<TensorJob>& jobs);

// What the kernels report (at DecodeLaunch::results, little-endian): the
// first corrupt rANS chunk and the first tensor whose device checksum
// differs from the expected one. Followed by num_jobs u64 finished
// checksums of what was written (0 for jobs without an expected checksum).
struct DecodeResults {
  uint32_t corrupt_chunks = 0;
  uint32_t first_corrupt_job = 0xffffffffu;
  uint32_t mismatches = 0;
  uint32_t first_mismatch_job = 0xffffffffu;
};
// DATA_LOSS naming the job ("tensor job J: ...") when the results say a
// chunk was corrupt or a checksum differed; OK otherwise. `results` is a
// host copy of image.results_bytes bytes.
absl::Status CheckDecodeResults(const uint8_t* results, const PlanImage& image);

// Parses every blob (bounds-checked: kDataLoss on corrupt input) and lays out
// the work. `input` is the buffer the blobs sit in (for example a layer group).
absl::StatusOr<DecodePlan> PlanDecode(absl::Span<const uint8_t> input, const std::vector<TensorJob>& jobs);

// Runs `plan` on the CPU exactly as the kernels do (warp by warp, lane by lane).
// Jobs in plan.cpu_fallback are decoded with the CPU codec. `output` must hold
// plan.output_bytes.
absl::Status EmulateDecode(absl::Span<const uint8_t> input, const std::vector<TensorJob>& jobs,
                           const DecodePlan& plan, absl::Span<uint8_t> output);

struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  std::string uuid;  // "GPU-xxxxxxxx-..." as nvidia-smi prints it
  uint64_t memory_bytes = 0;
  int sm_count = 0;
};

// The number of usable CUDA devices (>= 1), or FAILED_PRECONDITION saying
// why there is none: the build has no CUDA, no driver is installed ("driver
// version is insufficient"), no GPU exists.
absl::StatusOr<int> CountDevices();
// The same as a count: 0 (not an error) when there is none, with the reason
// in `why` (optional).
int DeviceCount(std::string* why = nullptr);
absl::StatusOr<DeviceInfo> Describe(int device);

// Timings of one DecodeOnDevice call, in seconds.
struct DecodeTiming {
  double upload = 0;   // host -> device copy of the input
  double kernels = 0;  // rANS + merge kernels
  double total = 0;
};

// Device memory owned by this process (RAII).
class DeviceBuffer {
 public:
  static absl::StatusOr<DeviceBuffer> Allocate(int device, uint64_t bytes);
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  ~DeviceBuffer();
  void* data() const { return ptr_; }
  uint64_t size() const { return size_; }
  absl::Status CopyToHost(absl::Span<uint8_t> out, uint64_t offset = 0) const;

 private:
  void* ptr_ = nullptr;
  uint64_t size_ = 0;
  int device_ = 0;
};

// Decodes on one GPU: uploads `input` (pinned staging inside), runs the plan,
// writes the tensors into `output` (device memory of at least
// plan.output_bytes). Fallback jobs are decoded on the CPU and uploaded.
// A corrupt rANS stream is kDataLoss. Tensor hashes are NOT checked here: the
// caller checks them (see docs/ARCHITECTURE.md, GPU verification).
// Bytes per second of a plain copy of `bytes` bytes: pinned host -> device
// (the PCIe roofline) or device -> device (counting bytes copied once; the
// HBM traffic is twice that). For benchmarks.
absl::StatusOr<double> MeasureCopyBandwidth(int device, uint64_t bytes, bool device_to_device);

class GpuDecoder {
 public:
  static absl::StatusOr<std::unique_ptr<GpuDecoder>> Create(int device);
  ~GpuDecoder();
  absl::StatusOr<DecodeTiming> Decode(absl::Span<const uint8_t> input, const std::vector<TensorJob>& jobs,
                                      const DecodePlan& plan, void* device_output);
  int device() const { return device_; }

 private:
  explicit GpuDecoder(int device);
  struct State;
  int device_;
  std::unique_ptr<State> state_;
};

}  // namespace bigsmall::gpu

#endif  // BIGSMALL_KERNELS_GPU_DECODER_H_
