// CUDA implementation of kernels/gpu_decoder.h. Kernels: one warp per rANS
// chunk (RansChunkKernel), then one block per chunk of elements to rebuild
// them from their planes (MergeKernel). Their decode loops are in
// decode_step.h, compiled here and (as the CPU emulator) by the host compiler.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "codec/tensor_codec.h"
#include "kernels/decode_step.h"
#include "kernels/gpu_decoder.h"

namespace bigsmall::gpu {
namespace {

// The codes CudaErrorToStatusCode (gpu_plan.cc, host-only) maps by number.
static_assert(cudaErrorMemoryAllocation == kCudaErrorMemoryAllocation);
static_assert(cudaErrorInitializationError == kCudaErrorInitializationError);
static_assert(cudaErrorStubLibrary == kCudaErrorStubLibrary);
static_assert(cudaErrorInsufficientDriver == kCudaErrorInsufficientDriver);
static_assert(cudaErrorCallRequiresNewerDriver == kCudaErrorCallRequiresNewerDriver);
static_assert(cudaErrorDevicesUnavailable == kCudaErrorDevicesUnavailable);
static_assert(cudaErrorNoDevice == kCudaErrorNoDevice);
static_assert(cudaErrorInvalidDevice == kCudaErrorInvalidDevice);
static_assert(cudaErrorNoKernelImageForDevice == kCudaErrorNoKernelImageForDevice);
static_assert(cudaErrorUnsupportedPtxVersion == kCudaErrorUnsupportedPtxVersion);
static_assert(cudaErrorIllegalAddress == kCudaErrorIllegalAddress);
static_assert(cudaErrorLaunchOutOfResources == kCudaErrorLaunchOutOfResources);
static_assert(cudaErrorLaunchFailure == kCudaErrorLaunchFailure);
static_assert(cudaErrorSystemNotReady == kCudaErrorSystemNotReady);
static_assert(cudaErrorSystemDriverMismatch == kCudaErrorSystemDriverMismatch);
static_assert(cudaErrorCompatNotSupportedOnDevice == kCudaErrorCompatNotSupportedOnDevice);

absl::Status CudaError(cudaError_t err, const char* what) {
  return CudaErrorToStatus(static_cast<int>(err), what, cudaGetErrorString(err));
}

#define CUDA_RETURN_IF_ERROR(call)                 \
  do {                                             \
    cudaError_t _err = (call);                     \
    if (_err != cudaSuccess) return CudaError(_err, #call); \
  } while (0)

constexpr int kWarpsPerBlock = 8;

// The calling thread's lane of a full warp, for DecodeChunkOnWarp
// (kernels/decode_step.h): one register per lane value, warp intrinsics for
// the cross-lane steps. All 32 lanes must call every member together.
struct DeviceWarp {
  uint32_t lane;
  template <class T>
  struct Reg {
    T v;
    __device__ __forceinline__ T& operator[](uint32_t) { return v; }
    __device__ __forceinline__ const T& operator[](uint32_t) const { return v; }
  };
  template <class F>
  __device__ __forceinline__ void ForLanes(F&& f) {
    f(lane);
  }
  __device__ __forceinline__ uint32_t Ballot(const Reg<bool>& b) const {
    return __ballot_sync(0xffffffffu, b.v);
  }
  __device__ __forceinline__ void Shuffle(const Reg<uint32_t>& v, const Reg<uint32_t>& src,
                                          Reg<uint32_t>& out) const {
    out.v = __shfl_sync(0xffffffffu, v.v, src.v);
  }
  __device__ __forceinline__ bool All(const Reg<bool>& b) const {
    return __all_sync(0xffffffffu, b.v);
  }
};

// One warp per chunk. Tasks are ordered by table (the planner appends the
// chunks of one plane together), so most blocks decode chunks of a single
// plane: they stage its 16 KiB slot table in shared memory, where the
// 32 lanes' random lookups are far cheaper than L1 gathers from global.
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    RansChunkKernel(const uint8_t* __restrict__ input, const ChunkTask* __restrict__ tasks, uint32_t num_tasks,
                    const uint32_t* __restrict__ tables, uint8_t* __restrict__ scratch,
                    uint8_t* __restrict__ output, uint32_t* __restrict__ error) {
  __shared__ uint32_t shared_table[rans::kProbScale];
  const uint32_t first = blockIdx.x * kWarpsPerBlock;
  const uint32_t last = min(first + kWarpsPerBlock, num_tasks) - 1;
  const uint32_t block_table = tasks[first].table;
  const bool uniform = tasks[last].table == block_table;
  if (uniform) {
    const uint32_t* src = tables + uint64_t{block_table} * rans::kProbScale;
    for (uint32_t k = threadIdx.x; k < rans::kProbScale; k += blockDim.x) shared_table[k] = src[k];
  }
  __syncthreads();
  const uint32_t warp_index = first + threadIdx.x / 32;
  if (warp_index >= num_tasks) return;  // whole warps: num_tasks is warp-uniform
  const ChunkTask t = tasks[warp_index];
  const uint32_t* table = uniform ? shared_table : tables + uint64_t{t.table} * rans::kProbScale;
  uint8_t* out = (t.target == kTargetOutput ? output : scratch) + t.out_offset;
  DeviceWarp warp{threadIdx.x & 31u};
  const bool ok = DecodeChunkOnWarp(warp, input + t.in_offset, t.in_size, t.count, table, out);
  if (!ok && warp.lane == 0) atomicOr(error, 1u);
}

__global__ void MergeKernel(const uint8_t* __restrict__ input, const uint8_t* __restrict__ scratch,
                            const MergeTask* __restrict__ tasks, uint8_t* __restrict__ output) {
  const MergeTask m = tasks[blockIdx.x];
  for (uint32_t k = threadIdx.x; k < m.count; k += blockDim.x) {
    MergeTaskElement(m, k, input, scratch, output);
  }
}

// A device allocation that only grows.
struct Growable {
  void* ptr = nullptr;
  uint64_t size = 0;
  absl::Status Reserve(uint64_t bytes) {
    if (bytes <= size) return absl::OkStatus();
    if (ptr) cudaFree(ptr);
    ptr = nullptr;
    size = 0;
    CUDA_RETURN_IF_ERROR(cudaMalloc(&ptr, std::max<uint64_t>(bytes, 1)));
    size = bytes;
    return absl::OkStatus();
  }
  ~Growable() {
    if (ptr) cudaFree(ptr);
  }
};

std::string FormatUuid(const cudaUUID_t& u) {
  const auto* b = reinterpret_cast<const unsigned char*>(u.bytes);
  char s[64];
  std::snprintf(s, sizeof(s), "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
                b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
  return s;
}

}  // namespace

absl::StatusOr<int> CountDevices() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    // No driver (cudaErrorInsufficientDriver, 35), no device (100) ...: "no GPU here".
    cudaGetLastError();
    const absl::Status st = CudaError(err, "cudaGetDeviceCount");
    if (st.code() == absl::StatusCode::kFailedPrecondition) return st;
    return absl::FailedPreconditionError(st.message());  // no usable GPU, whatever the cause
  }
  if (n <= 0) return absl::FailedPreconditionError("no CUDA device");
  return n;
}

int DeviceCount(std::string* why) {
  absl::StatusOr<int> n = CountDevices();
  if (!n.ok()) {
    if (why) *why = std::string(n.status().message());
    return 0;
  }
  return *n;
}

absl::StatusOr<DeviceInfo> Describe(int device) {
  cudaDeviceProp prop;
  CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
  DeviceInfo info;
  info.ordinal = device;
  info.name = prop.name;
  info.uuid = FormatUuid(prop.uuid);
  info.memory_bytes = prop.totalGlobalMem;
  info.sm_count = prop.multiProcessorCount;
  return info;
}

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(int device, uint64_t bytes) {
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  DeviceBuffer b;
  CUDA_RETURN_IF_ERROR(cudaMalloc(&b.ptr_, std::max<uint64_t>(bytes, 1)));
  b.size_ = bytes;
  b.device_ = device;
  return b;
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), size_(o.size_), device_(o.device_) {
  o.ptr_ = nullptr;
  o.size_ = 0;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = o.ptr_;
    size_ = o.size_;
    device_ = o.device_;
    o.ptr_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);
}

absl::Status DeviceBuffer::CopyToHost(absl::Span<uint8_t> out, uint64_t offset) const {
  if (offset > size_ || out.size() > size_ - offset) return absl::OutOfRangeError("copy past buffer end");
  CUDA_RETURN_IF_ERROR(cudaMemcpy(out.data(), static_cast<uint8_t*>(ptr_) + offset, out.size(),
                                  cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}

absl::StatusOr<double> MeasureCopyBandwidth(int device, uint64_t bytes, bool device_to_device) {
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  bytes = std::max<uint64_t>(bytes, 1 << 20);
  void* src = nullptr;
  void* dst = nullptr;
  if (device_to_device) {
    CUDA_RETURN_IF_ERROR(cudaMalloc(&src, bytes));
  } else {
    CUDA_RETURN_IF_ERROR(cudaMallocHost(&src, bytes));
    std::memset(src, 1, bytes);
  }
  cudaError_t err = cudaMalloc(&dst, bytes);
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  float best = 1e30f;
  for (int r = 0; r < 5 && err == cudaSuccess; ++r) {
    cudaEventRecord(a);
    err = cudaMemcpy(dst, src, bytes, device_to_device ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice);
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    best = std::min(best, ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  if (dst) cudaFree(dst);
  if (device_to_device) cudaFree(src); else cudaFreeHost(src);
  if (err != cudaSuccess) return CudaError(err, "memcpy");
  return bytes / (best / 1e3);
}

struct GpuDecoder::State {
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, uploaded = nullptr, done = nullptr;
  Growable input, scratch, chunks, merges, tables, error;
  uint8_t* pinned = nullptr;
  uint64_t pinned_size = 0;
  ~State() {
    if (pinned) cudaFreeHost(pinned);
    if (start) cudaEventDestroy(start);
    if (uploaded) cudaEventDestroy(uploaded);
    if (done) cudaEventDestroy(done);
    if (stream) cudaStreamDestroy(stream);
  }
};

GpuDecoder::GpuDecoder(int device) : device_(device), state_(std::make_unique<State>()) {}
GpuDecoder::~GpuDecoder() = default;

absl::StatusOr<std::unique_ptr<GpuDecoder>> GpuDecoder::Create(int device) {
  std::string why;
  const int n = DeviceCount(&why);
  if (device < 0 || device >= n) {
    return absl::FailedPreconditionError(absl::StrCat("no CUDA device ", device, " (", n, " found",
                                                      why.empty() ? "" : ": " + why, ")"));
  }
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  std::unique_ptr<GpuDecoder> d(new GpuDecoder(device));
  CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&d->state_->stream, cudaStreamNonBlocking));
  CUDA_RETURN_IF_ERROR(cudaEventCreate(&d->state_->start));
  CUDA_RETURN_IF_ERROR(cudaEventCreate(&d->state_->uploaded));
  CUDA_RETURN_IF_ERROR(cudaEventCreate(&d->state_->done));
  return d;
}

absl::StatusOr<DecodeTiming> GpuDecoder::Decode(absl::Span<const uint8_t> input, const std::vector<TensorJob>& jobs,
                                                const DecodePlan& plan, void* device_output) {
  State& s = *state_;
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  if (input.size() > s.pinned_size) {
    if (s.pinned) cudaFreeHost(s.pinned);
    s.pinned = nullptr;
    s.pinned_size = 0;
    CUDA_RETURN_IF_ERROR(cudaMallocHost(&s.pinned, std::max<size_t>(input.size(), 1)));
    s.pinned_size = input.size();
  }
  std::memcpy(s.pinned, input.data(), input.size());
  if (auto st = s.input.Reserve(input.size()); !st.ok()) return st;
  if (auto st = s.scratch.Reserve(plan.scratch_bytes); !st.ok()) return st;
  if (auto st = s.chunks.Reserve(plan.chunks.size() * sizeof(ChunkTask)); !st.ok()) return st;
  if (auto st = s.merges.Reserve(plan.merges.size() * sizeof(MergeTask)); !st.ok()) return st;
  if (auto st = s.tables.Reserve(plan.tables.size() * 4); !st.ok()) return st;
  if (auto st = s.error.Reserve(4); !st.ok()) return st;

  CUDA_RETURN_IF_ERROR(cudaEventRecord(s.start, s.stream));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.input.ptr, s.pinned, input.size(), cudaMemcpyHostToDevice, s.stream));
  CUDA_RETURN_IF_ERROR(cudaEventRecord(s.uploaded, s.stream));
  // Small plan arrays: pageable copies are fine.
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.chunks.ptr, plan.chunks.data(), plan.chunks.size() * sizeof(ChunkTask),
                                       cudaMemcpyHostToDevice, s.stream));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.merges.ptr, plan.merges.data(), plan.merges.size() * sizeof(MergeTask),
                                       cudaMemcpyHostToDevice, s.stream));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.tables.ptr, plan.tables.data(), plan.tables.size() * 4,
                                       cudaMemcpyHostToDevice, s.stream));
  CUDA_RETURN_IF_ERROR(cudaMemsetAsync(s.error.ptr, 0, 4, s.stream));
  const auto* in = static_cast<const uint8_t*>(s.input.ptr);
  auto* out = static_cast<uint8_t*>(device_output);
  auto* scratch = static_cast<uint8_t*>(s.scratch.ptr);
  if (!plan.chunks.empty()) {
    const uint32_t n = static_cast<uint32_t>(plan.chunks.size());
    RansChunkKernel<<<(n + kWarpsPerBlock - 1) / kWarpsPerBlock, 32 * kWarpsPerBlock, 0, s.stream>>>(
        in, static_cast<const ChunkTask*>(s.chunks.ptr), n, static_cast<const uint32_t*>(s.tables.ptr), scratch,
        out, static_cast<uint32_t*>(s.error.ptr));
    CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  if (!plan.merges.empty()) {
    MergeKernel<<<static_cast<uint32_t>(plan.merges.size()), 256, 0, s.stream>>>(
        in, scratch, static_cast<const MergeTask*>(s.merges.ptr), out);
    CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  CUDA_RETURN_IF_ERROR(cudaEventRecord(s.done, s.stream));
  // Tensors with coders the kernels do not run are decoded on the CPU meanwhile.
  for (uint32_t j : plan.cpu_fallback) {
    const TensorJob& job = jobs[j];
    std::vector<uint8_t> host(job.out_size);
    if (auto st = DecodeTensorBlob(input.subspan(job.blob_offset, job.blob_size), absl::MakeSpan(host)); !st.ok()) {
      return st;
    }
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out + job.out_offset, host.data(), host.size(), cudaMemcpyHostToDevice,
                                         s.stream));
    CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s.stream));
  }
  uint32_t error = 0;
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(&error, s.error.ptr, 4, cudaMemcpyDeviceToHost, s.stream));
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s.stream));
  if (error != 0) return absl::DataLossError("rANS chunk corrupt (GPU decode)");
  float upload_ms = 0, total_ms = 0;
  cudaEventElapsedTime(&upload_ms, s.start, s.uploaded);
  cudaEventElapsedTime(&total_ms, s.start, s.done);
  DecodeTiming t;
  t.upload = upload_ms / 1e3;
  t.total = total_ms / 1e3;
  t.kernels = t.total - t.upload;
  return t;
}

}  // namespace bigsmall::gpu
