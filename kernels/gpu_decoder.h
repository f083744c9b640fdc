// GPU decoding of .bs tensor blobs: the CUDA-free interface. Host code
// includes only this header; the CUDA implementation lives in
// gpu_decoder.cu and is built only when nvcc is present (otherwise every
// call reports kFailedPrecondition, "built without CUDA"). CUDA errors map to
// codes as kernels/cuda_status.h says (out of memory: kResourceExhausted).
// The same plan also runs on the CPU through an exact emulation of the
// kernels (EmulateDecodeLaunch, kernels/launch.h), which is how the kernels'
// logic is tested on machines without a GPU. Design: docs/ARCHITECTURE.md
// "GPU decode".
#ifndef BIGSMALL_KERNELS_GPU_DECODER_H_
#define BIGSMALL_KERNELS_GPU_DECODER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "codec/zstd_frame.h"
#include "kernels/cuda_status.h"
#include "kernels/warp_rans.h"

namespace bigsmall {
class ThreadPool;
}  // namespace bigsmall

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

// A zstd chunk of a plane (the one coder the GPU does not run), decoded by
// the host prepass (RunHostPrepass) into the prepass region.
// What a prepass task decodes.
enum class PrepassKind : uint8_t {
  kZstdFrame = 0,  // one zstd chunk of a plane
  kWholeBlob = 1,  // a whole tensor blob the kernels do not decode (form 4,
                   // fields: docs/FORMAT.md §5.5), by the CPU decoder
};

struct PrepassTask {
  uint64_t in_offset = 0;   // the zstd frame (or blob), bytes into the group
  uint64_t out_offset = 0;  // bytes into the prepass region
  uint64_t in_size = 0;
  uint64_t count = 0;  // bytes it must decompress to
  uint32_t job = 0;
  PrepassKind kind = PrepassKind::kZstdFrame;
  ZstdFraming framing = ZstdFraming::kStandard;  // kZstdFrame: with or without the magic
};

// Everything the kernels need, built on the host from the blobs' headers
// (docs/ARCHITECTURE.md "GPU decode"). The staged input the kernels read is
// the group bytes, then (at prepass_offset = the group's size) the
// prepass_bytes that RunHostPrepass writes: zstd planes decoded on the host
// and read by the kernels as raw planes.
struct DecodePlan {
  std::vector<JobTask> jobs;      // out_offset/out_size as given; flags: kJobInlineChecksum when possible
  std::vector<ChunkTask> chunks;  // one per chunk of elements of each tensor, in job order
  std::vector<PlaneTask> planes;
  std::vector<uint32_t> tables;   // decode slot tables, 4096 entries each
  std::vector<uint8_t> maps;      // conditional rANS context maps, 256 bytes each
  std::vector<PrepassTask> prepass;
  uint64_t prepass_offset = 0;    // = the group's size
  uint64_t prepass_bytes = 0;
  uint64_t scratch_bytes = 0;     // 0: decode and merge are one pass (kept for callers' allocations)
  uint64_t output_bytes = 0;      // max(out_offset + out_size)
  // The staged input: group bytes + prepass region.
  uint64_t input_bytes() const { return prepass_offset + prepass_bytes; }
};

// Decodes the plan's zstd chunks on the CPU: `group` is the input PlanDecode
// saw, `staged_extra` the plan.prepass_bytes that the caller stages right
// after the group bytes (at plan.prepass_offset of the device input).
// DATA_LOSS naming the job for a frame that does not decode to its size.
// No-op when plan.prepass is empty (zstd planes are rare in --inference
// files: only where nothing else comes within its ratio budget, docs/FORMAT.md
// §5.6; balanced and --storage files have them for zero-heavy or
// near-incompressible planes). Fields blobs (form 4) decode here whole.
// With `pool`, chunks decompress in parallel (the first error by chunk order).
absl::Status RunHostPrepass(const DecodePlan& plan, absl::Span<const uint8_t> group,
                            absl::Span<uint8_t> staged_extra, ThreadPool* pool = nullptr);

// The plan as the kernels read it from device memory: one contiguous image
// (header, then the task arrays, tables and expected checksums, each 16-byte
// aligned; layout in kernels/decode_step.h PlanHeader) uploaded next to the
// group's bytes in the same staging buffer, so one H2D copy carries a
// layer's input and its plan. Sizes are for the launch grid and for the
// caller's allocations. Jobs from several groups decode in one launch when
// the caller concatenates the groups' bytes (blob offsets relative to the
// concatenation) and plans the concatenation.
struct PlanImage {
  std::vector<uint8_t> bytes;
  uint32_t num_jobs = 0;
  uint32_t num_chunks = 0;
  uint32_t num_merges = 0;     // always 0: the merge is fused into the decode kernel
  uint32_t num_verify = 0;     // jobs summed by the separate verify kernel
  // Chunk tasks of plane-count class c (at most 1, 2, 4, 8 planes) are
  // [class_end[c-1], class_end[c]) (class_end[-1] = 0): one kernel launch each.
  uint32_t class_end[4] = {};
  uint64_t input_bytes = 0;    // the staged input: group bytes + plan.prepass_bytes
  uint64_t scratch_bytes = 0;  // device scratch the kernels need (0)
  uint64_t output_bytes = 0;   // layer memory the kernels write
  uint64_t results_bytes = 0;  // DecodeResults + per-job finished checksums + per-job sums
};
// `jobs` must be the jobs the plan was made from (same offsets and sizes:
// INVALID_ARGUMENT otherwise); their has_checksum/checksum are compared on
// the device.
absl::StatusOr<PlanImage> BuildPlanImage(const DecodePlan& plan, const std::vector<TensorJob>& jobs);

// What the kernels report (at DecodeLaunch::results, little-endian): the
// number of corrupt rANS chunks and the smallest job having one, the number
// of tensors whose device checksum differs from the expected one and the
// smallest such job. Followed by num_jobs u64 finished checksums of what was
// written (0 for jobs without an expected checksum), then num_jobs u64 sums
// (the kernels' accumulators). The kernels initialise it themselves.
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
// The finished device checksum of job j from a results copy.
uint64_t FinishedChecksum(const uint8_t* results, uint32_t job);

// Parses every blob (bounds-checked: kDataLoss on corrupt input) and lays out
// the work. `input` is the buffer the blobs sit in (for example a layer group).
absl::StatusOr<DecodePlan> PlanDecode(absl::Span<const uint8_t> input, const std::vector<TensorJob>& jobs);

// Convenience for tests and fuzzers: runs the host prepass, builds the
// image and runs the emulated kernels (kernels/launch.h EmulateDecodeLaunch)
// on `input`, then CheckDecodeResults. `output` must hold plan.output_bytes.
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

// Timings of one GpuDecoder::Decode call, in seconds (CUDA events around
// each step on the stream).
struct DecodeTiming {
  double prepass = 0;  // host: zstd chunks (wall clock)
  double upload = 0;   // host -> device copy of the input and the plan image
  double decode = 0;   // the fused decode + merge + inline checksum kernel (one launch per plane-count class)
  double verify = 0;   // the separate checksum kernel (jobs whose chunks are not 8-byte aligned)
  double finish = 0;   // results init + checksum finish/compare kernels
  double kernels = 0;  // decode + verify + finish
  double total = 0;    // upload + kernels
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

// Bytes per second of a plain copy of `bytes` bytes: pinned host -> device
// (the PCIe roofline) or device -> device (counting bytes copied once; the
// HBM traffic is twice that). For benchmarks.
absl::StatusOr<double> MeasureCopyBandwidth(int device, uint64_t bytes, bool device_to_device);

// Decodes on one GPU: runs the host prepass, uploads `input` + the prepass
// region + the plan image (pinned staging inside), runs the kernels, writes
// the tensors into `device_output` (device memory of at least
// plan.output_bytes). A corrupt rANS stream or a device checksum mismatch
// (jobs with has_checksum) is kDataLoss naming the job. Jobs without a
// checksum are not verified here: the caller checks them.
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
