// CUDA implementation of kernels/gpu_decoder.h and kernels/launch.h.
// Kernels, in stream order: InitResultsKernel, DecodeKernel (one warp per
// chunk task: every plane of a chunk of elements decoded in lockstep, merged
// in registers, staged in shared memory, written with 16-byte stores, device
// checksum terms summed as written), VerifyKernel (checksum sums of the
// tensors whose chunks are not 8-byte aligned), FinishKernel (finished
// checksums compared with the expected ones). Their code is in
// decode_step.h, compiled here and (as the CPU emulator) by the host
// compiler; only the Warp type (DeviceWarp) and the atomics differ.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "codec/status_macros.h"
#include "codec/tensor_codec.h"
#include "kernels/decode_step.h"
#include "kernels/gpu_decoder.h"
#include "kernels/launch.h"
#include "kernels/xor_step.h"

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
static_assert(cudaErrorNotSupported == kCudaErrorNotSupported);

absl::Status CudaError(cudaError_t err, const char* what) {
  return CudaErrorToStatus(static_cast<int>(err), what, cudaGetErrorString(err));
}

// A failed call also sets the thread's last error; it is cleared here (as
// device_api_cuda.cu's Check does), or the cudaGetLastError() after the next
// kernel launch on this thread would report it as that launch's failure.
#define CUDA_RETURN_IF_ERROR(call)                 \
  do {                                             \
    cudaError_t _err = (call);                     \
    if (_err != cudaSuccess) {                     \
      (void)cudaGetLastError();                    \
      return CudaError(_err, #call);               \
    }                                              \
  } while (0)

// Before a launch whose errors are read with cudaGetLastError(): drops a
// non-sticky error left by an earlier runtime call of this thread (one
// already reported through its own return value), so that it is not blamed
// on this launch. A sticky error (a faulted context) stays and fails the
// launch as it should.
void ClearStaleLaunchError() { (void)cudaGetLastError(); }

constexpr int kWarpsPerBlock = 8;
constexpr int kBlockThreads = 32 * kWarpsPerBlock;
// rANS tables a block stages in shared memory (16 KiB each): the tables of
// the plain rANS planes of its tensor when all its warps decode one tensor
// (bf16: exponent + sign/mantissa; fp32: up to two of its four planes).
constexpr int kSharedTables = 2;

// The calling thread's lane of a full warp, for DecodeChunkFused
// (kernels/decode_step.h): one register per lane value, warp intrinsics for
// the cross-lane steps, a shared-memory stage. All 32 lanes must call every
// member together.
struct DeviceWarp {
  uint32_t lane;
  uint8_t* stage;
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
  __device__ __forceinline__ bool All(const Reg<bool>& b) const { return __all_sync(0xffffffffu, b.v); }
  __device__ __forceinline__ uint64_t Sum(const Reg<uint64_t>& s) const {
    uint64_t v = s.v;
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
  }
  __device__ __forceinline__ uint8_t* Stage() { return stage; }
  __device__ __forceinline__ void SyncStage() { __syncwarp(); }
  __device__ __forceinline__ void Store16(uint8_t* dst, const uint8_t* src) {
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
  }
};

struct DevicePlan {
  const PlanHeader* h;
  const JobTask* jobs;
  const ChunkTask* chunks;
  const PlaneTask* planes;
  const uint32_t* tables;
  const uint8_t* maps;
  const uint32_t* verify;
};

__device__ __forceinline__ DevicePlan ViewPlan(const uint8_t* plan) {
  DevicePlan v;
  v.h = reinterpret_cast<const PlanHeader*>(plan);
  v.jobs = reinterpret_cast<const JobTask*>(plan + v.h->jobs);
  v.chunks = reinterpret_cast<const ChunkTask*>(plan + v.h->chunks);
  v.planes = reinterpret_cast<const PlaneTask*>(plan + v.h->planes);
  v.tables = reinterpret_cast<const uint32_t*>(plan + v.h->tables);
  v.maps = plan + v.h->maps;
  v.verify = reinterpret_cast<const uint32_t*>(plan + v.h->verify);
  return v;
}

__device__ __forceinline__ DecodeResults* ResultsOf(uint8_t* results) {
  return reinterpret_cast<DecodeResults*>(results);
}
__device__ __forceinline__ unsigned long long* SumOf(uint8_t* results, uint32_t num_jobs, uint32_t job) {
  return reinterpret_cast<unsigned long long*>(results + SumOffset(num_jobs, job));
}

// Results: verdicts cleared, finished checksums and sums zero.
__global__ void InitResultsKernel(uint8_t* __restrict__ results, uint32_t num_jobs) {
  const uint64_t words = 2ull * num_jobs;
  uint64_t* w = reinterpret_cast<uint64_t*>(results + kResultsHeaderBytes);
  for (uint64_t i = blockIdx.x * uint64_t{blockDim.x} + threadIdx.x; i < words; i += uint64_t{gridDim.x} * blockDim.x) {
    w[i] = 0;
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) *ResultsOf(results) = DecodeResults{};
}

template <int NP>
__device__ __forceinline__ ChunkResult RunChunk(DeviceWarp& warp, const ChunkTask& t, const DevicePlan& v,
                                                const uint8_t* input, uint8_t* output,
                                                const uint32_t* staged_index, const uint32_t* shared_tables) {
  const PlaneTask* planes = v.planes + t.first_plane;
  const uint32_t* tables[NP];
  const uint8_t* maps[NP];
  BIGSMALL_UNROLL
  for (int p = 0; p < NP; ++p) {
    tables[p] = nullptr;
    maps[p] = nullptr;
    if (p >= t.num_planes) continue;
    const PlaneTask& pt = planes[p];
    if (!IsRans(pt.kind)) continue;
    tables[p] = v.tables + uint64_t{pt.table} * rans::kProbScale;
    if (pt.kind == kPlaneRansConditional) {
      maps[p] = v.maps + uint64_t{pt.map} * 256;
      continue;
    }
    BIGSMALL_UNROLL
    for (int s = 0; s < kSharedTables; ++s) {
      if (staged_index[s] == pt.table) tables[p] = shared_tables + s * rans::kProbScale;
    }
  }
  return DecodeChunkFused<NP>(warp, t, planes, input, tables, maps, output + t.out_offset);
}

// One warp per chunk task (all planes of one chunk of elements: decode,
// merge, stage, 16-byte stores, checksum terms). Tasks are ordered by job,
// so most blocks decode chunks of one tensor: they stage its rANS tables in
// shared memory, where the 32 lanes' random lookups are far cheaper than
// L1 gathers from global.
template <int NP>
__global__ void __launch_bounds__(kBlockThreads, NP <= 2 ? 3 : NP <= 4 ? 2 : 1)
    DecodeKernel(const uint8_t* __restrict__ plan, const uint8_t* __restrict__ input, uint8_t* __restrict__ output,
                 uint8_t* __restrict__ results, uint32_t begin, uint32_t end) {
  // 16-byte aligned: filled with uint4 stores (a uint32_t array alone is
  // only 4-aligned, and where the compiler places it is not ours to assume).
  __shared__ __align__(16) uint32_t shared_tables[kSharedTables * rans::kProbScale];
  __shared__ __align__(16) uint8_t stages[kWarpsPerBlock][kStageBytes];
  __shared__ uint32_t staged_index[kSharedTables];
  const DevicePlan v = ViewPlan(plan);
  const uint32_t num_chunks = end;
  const uint32_t first = begin + blockIdx.x * kWarpsPerBlock;
  if (first >= num_chunks) return;  // the whole block
  const uint32_t last = min(first + kWarpsPerBlock, num_chunks) - 1;
  if (threadIdx.x == 0) {
    const ChunkTask& t0 = v.chunks[first];
    int n = 0;
    for (int s = 0; s < kSharedTables; ++s) staged_index[s] = 0xffffffffu;
    if (v.chunks[last].job == t0.job) {
      for (uint32_t p = 0; p < t0.num_planes && n < kSharedTables; ++p) {
        const PlaneTask& pt = v.planes[t0.first_plane + p];
        if (pt.kind == kPlaneRans && (n == 0 || staged_index[0] != pt.table)) staged_index[n++] = pt.table;
      }
    }
  }
  __syncthreads();
  for (int s = 0; s < kSharedTables; ++s) {
    const uint32_t index = staged_index[s];
    if (index == 0xffffffffu) continue;
    const uint4* src = reinterpret_cast<const uint4*>(v.tables + uint64_t{index} * rans::kProbScale);
    uint4* dst = reinterpret_cast<uint4*>(shared_tables + s * rans::kProbScale);
    for (uint32_t k = threadIdx.x; k < rans::kProbScale / 4; k += blockDim.x) dst[k] = src[k];
  }
  __syncthreads();
  const uint32_t warp_index = first + threadIdx.x / 32;
  if (warp_index >= num_chunks) return;  // whole warps: the bound is warp-uniform
  const ChunkTask t = v.chunks[warp_index];
  DeviceWarp warp{threadIdx.x & 31u, stages[threadIdx.x / 32]};
  const ChunkResult r = RunChunk<NP>(warp, t, v, input, output, staged_index, shared_tables);
  if (warp.lane != 0) return;
  if (!r.ok) {
    atomicAdd(&ResultsOf(results)->corrupt_chunks, 1u);
    atomicMin(&ResultsOf(results)->first_corrupt_job, t.job);
  }
  if (t.flags & kChunkChecksum) atomicAdd(SumOf(results, v.h->num_jobs, t.job), r.sum);
}

// Block sum of one value per thread (kBlockThreads threads), on thread 0.
__device__ __forceinline__ uint64_t BlockSum(uint64_t v) {
  __shared__ uint64_t partial[kWarpsPerBlock];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  if ((threadIdx.x & 31u) == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  uint64_t total = 0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kWarpsPerBlock; ++w) total += partial[w];
  }
  return total;
}

// The checksum sums of the jobs the decode kernel could not sum inline
// (blockIdx.y strides over the verify list; blocks stride over its words).
__global__ void __launch_bounds__(kBlockThreads)
    VerifyKernel(const uint8_t* __restrict__ plan, const uint8_t* __restrict__ output, uint8_t* __restrict__ results) {
  const DevicePlan v = ViewPlan(plan);
  for (uint32_t i = blockIdx.y; i < v.h->num_verify; i += gridDim.y) {
    const uint32_t j = v.verify[i];
    const JobTask job = v.jobs[j];
    const uint64_t words = (job.out_size + 7) / 8;
    uint64_t sum = 0;
    for (uint64_t k = blockIdx.x * uint64_t{blockDim.x} + threadIdx.x; k < words;
         k += uint64_t{gridDim.x} * blockDim.x) {
      sum += ChecksumWordAt(output + job.out_offset, job.out_size, k);
    }
    sum = BlockSum(sum);
    if (threadIdx.x == 0 && sum != 0) atomicAdd(SumOf(results, v.h->num_jobs, j), sum);
    __syncthreads();  // BlockSum's shared partials are reused by the next entry
  }
}

__global__ void FinishKernel(const uint8_t* __restrict__ plan, uint8_t* __restrict__ results) {
  const DevicePlan v = ViewPlan(plan);
  const uint32_t num_jobs = v.h->num_jobs;
  for (uint32_t j = blockIdx.x * blockDim.x + threadIdx.x; j < num_jobs; j += gridDim.x * blockDim.x) {
    uint64_t finished = 0;
    const bool ok = FinishJob(v.jobs[j], *SumOf(results, num_jobs, j), &finished);
    *reinterpret_cast<uint64_t*>(results + FinishedOffset(j)) = finished;
    if (!ok) {
      atomicAdd(&ResultsOf(results)->mismatches, 1u);
      atomicMin(&ResultsOf(results)->first_mismatch_job, j);
    }
  }
}

// The device checksum of a buffer: sum kernel (atomicAdd into *out, zeroed
// first), then finish.
__global__ void __launch_bounds__(kBlockThreads)
    ChecksumSumKernel(const uint8_t* __restrict__ data, uint64_t bytes, unsigned long long* out) {
  const uint64_t words = (bytes + 7) / 8;
  uint64_t sum = 0;
  for (uint64_t k = blockIdx.x * uint64_t{blockDim.x} + threadIdx.x; k < words;
       k += uint64_t{gridDim.x} * blockDim.x) {
    sum += ChecksumWordAt(data, bytes, k);
  }
  sum = BlockSum(sum);
  if (threadIdx.x == 0 && sum != 0) atomicAdd(out, sum);
}
__global__ void ChecksumFinishKernel(uint64_t* out, uint64_t bytes) { *out = ChecksumFinish(*out, bytes); }

// Fine-tune deltas: data ^= base in place, summing the rebuilt words'
// checksum terms (kernels/xor_step.h), then ChecksumFinishKernel.
__global__ void __launch_bounds__(kBlockThreads)
    XorChecksumSumKernel(uint8_t* __restrict__ data, const uint8_t* __restrict__ base, uint64_t bytes,
                         unsigned long long* out) {
  const uint64_t words = (bytes + 7) / 8;
  uint64_t sum = 0;
  for (uint64_t k = blockIdx.x * uint64_t{blockDim.x} + threadIdx.x; k < words;
       k += uint64_t{gridDim.x} * blockDim.x) {
    sum += XorChecksumWordAt(data, base, bytes, k);
  }
  sum = BlockSum(sum);
  if (threadIdx.x == 0 && sum != 0) atomicAdd(out, sum);
}

uint32_t GridFor(uint64_t items, uint32_t per_block, uint32_t cap) {
  const uint64_t blocks = (items + per_block - 1) / per_block;
  return static_cast<uint32_t>(std::max<uint64_t>(1, std::min<uint64_t>(blocks, cap)));
}

// Events recorded between the kernels (any may be null): before init,
// after init, after decode, after verify, after finish.
struct LaunchEvents {
  cudaEvent_t e[5] = {};
};

absl::Status EnqueueDecode(const DecodeLaunch& launch, cudaStream_t stream, const LaunchEvents* events) {
  if (launch.image == nullptr || launch.plan == nullptr || launch.results == nullptr) {
    return absl::InvalidArgumentError("decode launch without a plan image or results");
  }
  if ((reinterpret_cast<uintptr_t>(launch.plan) & 15u) != 0 || (reinterpret_cast<uintptr_t>(launch.results) & 7u) != 0) {
    return absl::InvalidArgumentError("decode launch: plan must be 16-byte aligned, results 8-byte aligned");
  }
  const PlanImage& image = *launch.image;
  ClearStaleLaunchError();
  auto mark = [&](int k) -> absl::Status {
    if (events != nullptr && events->e[k] != nullptr) CUDA_RETURN_IF_ERROR(cudaEventRecord(events->e[k], stream));
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(mark(0));
  InitResultsKernel<<<GridFor(2ull * image.num_jobs, kBlockThreads, 1024), kBlockThreads, 0, stream>>>(
      launch.results, image.num_jobs);
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  RETURN_IF_ERROR(mark(1));
  // One launch per plane-count class, all on `stream` (they write disjoint chunks).
  for (int c = 0; c < kNumNpClasses; ++c) {
    const uint32_t begin = c == 0 ? 0 : image.class_end[c - 1];
    const uint32_t end = image.class_end[c];
    if (begin >= end) continue;
    const uint32_t grid = GridFor(end - begin, kWarpsPerBlock, 0x7fffffffu);
    const uint8_t* plan = launch.plan;
    switch (c) {
      case 0: DecodeKernel<1><<<grid, kBlockThreads, 0, stream>>>(plan, launch.input, launch.output, launch.results, begin, end); break;
      case 1: DecodeKernel<2><<<grid, kBlockThreads, 0, stream>>>(plan, launch.input, launch.output, launch.results, begin, end); break;
      case 2: DecodeKernel<4><<<grid, kBlockThreads, 0, stream>>>(plan, launch.input, launch.output, launch.results, begin, end); break;
      default: DecodeKernel<8><<<grid, kBlockThreads, 0, stream>>>(plan, launch.input, launch.output, launch.results, begin, end); break;
    }
    CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  RETURN_IF_ERROR(mark(2));
  if (image.num_verify != 0) {
    // Enough blocks per tensor to stream it at full bandwidth, at most 256.
    const uint32_t per_job = GridFor(image.output_bytes / 8 / std::max(1u, image.num_verify), kBlockThreads * 16, 256);
    VerifyKernel<<<dim3(per_job, std::min(image.num_verify, 65535u)), kBlockThreads, 0, stream>>>(
        launch.plan, launch.output, launch.results);
    CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  RETURN_IF_ERROR(mark(3));
  FinishKernel<<<GridFor(image.num_jobs, kBlockThreads, 1024), kBlockThreads, 0, stream>>>(launch.plan,
                                                                                            launch.results);
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return mark(4);
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
  cudaEvent_t a = nullptr, b = nullptr;
  if (err == cudaSuccess) err = cudaEventCreate(&a);
  if (err == cudaSuccess) err = cudaEventCreate(&b);
  float best = 1e30f;
  for (int r = 0; r < 5 && err == cudaSuccess; ++r) {
    err = cudaEventRecord(a);
    if (err == cudaSuccess) {
      err = cudaMemcpy(dst, src, bytes, device_to_device ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice);
    }
    if (err == cudaSuccess) err = cudaEventRecord(b);
    if (err == cudaSuccess) err = cudaEventSynchronize(b);
    float ms = 0;
    if (err == cudaSuccess) err = cudaEventElapsedTime(&ms, a, b);
    if (err == cudaSuccess) best = std::min(best, ms);
  }
  if (a) cudaEventDestroy(a);
  if (b) cudaEventDestroy(b);
  if (dst) cudaFree(dst);
  if (device_to_device) cudaFree(src); else cudaFreeHost(src);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return CudaError(err, "copy bandwidth measurement");
  }
  return bytes / (best / 1e3);
}

absl::Status CudaDecodeLaunch(const DecodeLaunch& launch, void* stream) {
  return EnqueueDecode(launch, static_cast<cudaStream_t>(stream), nullptr);
}

absl::Status CudaChecksumLaunch(const uint8_t* data, uint64_t bytes, uint64_t* out, void* stream) {
  if (out == nullptr || (bytes != 0 && data == nullptr)) return absl::InvalidArgumentError("checksum of a null buffer");
  if ((reinterpret_cast<uintptr_t>(data) & 7u) != 0 || (reinterpret_cast<uintptr_t>(out) & 7u) != 0) {
    return absl::InvalidArgumentError("checksum launch: data and out must be 8-byte aligned");
  }
  auto s = static_cast<cudaStream_t>(stream);
  ClearStaleLaunchError();
  CUDA_RETURN_IF_ERROR(cudaMemsetAsync(out, 0, sizeof(uint64_t), s));
  if (bytes != 0) {
    ChecksumSumKernel<<<GridFor((bytes + 7) / 8, kBlockThreads * 16, 4096), kBlockThreads, 0, s>>>(
        data, bytes, reinterpret_cast<unsigned long long*>(out));
    CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  ChecksumFinishKernel<<<1, 1, 0, s>>>(out, bytes);
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status CudaXorChecksumLaunch(uint8_t* data, const uint8_t* base, uint64_t bytes, uint64_t* out,
                                   void* stream) {
  if (out == nullptr || (bytes != 0 && (data == nullptr || base == nullptr))) {
    return absl::InvalidArgumentError("XOR of a null buffer");
  }
  if ((reinterpret_cast<uintptr_t>(data) & 7u) != 0 || (reinterpret_cast<uintptr_t>(base) & 7u) != 0 ||
      (reinterpret_cast<uintptr_t>(out) & 7u) != 0) {
    return absl::InvalidArgumentError("XOR launch: data, base and out must be 8-byte aligned");
  }
  auto s = static_cast<cudaStream_t>(stream);
  ClearStaleLaunchError();
  CUDA_RETURN_IF_ERROR(cudaMemsetAsync(out, 0, sizeof(uint64_t), s));
  if (bytes != 0) {
    XorChecksumSumKernel<<<GridFor((bytes + 7) / 8, kBlockThreads * 16, 4096), kBlockThreads, 0, s>>>(
        data, base, bytes, reinterpret_cast<unsigned long long*>(out));
    CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  ChecksumFinishKernel<<<1, 1, 0, s>>>(out, bytes);
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

struct GpuDecoder::State {
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, uploaded = nullptr;
  LaunchEvents events;
  Growable input, results;
  uint8_t* pinned = nullptr;
  uint64_t pinned_size = 0;
  uint8_t* pinned_results = nullptr;
  uint64_t pinned_results_size = 0;
  ~State() {
    if (pinned) cudaFreeHost(pinned);
    if (pinned_results) cudaFreeHost(pinned_results);
    if (start) cudaEventDestroy(start);
    if (uploaded) cudaEventDestroy(uploaded);
    for (cudaEvent_t e : events.e) {
      if (e) cudaEventDestroy(e);
    }
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
  State& s = *d->state_;
  CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
  CUDA_RETURN_IF_ERROR(cudaEventCreate(&s.start));
  CUDA_RETURN_IF_ERROR(cudaEventCreate(&s.uploaded));
  for (cudaEvent_t& e : s.events.e) CUDA_RETURN_IF_ERROR(cudaEventCreate(&e));
  return d;
}

namespace {
absl::Status GrowPinned(uint8_t*& ptr, uint64_t& size, uint64_t bytes) {
  if (bytes <= size) return absl::OkStatus();
  if (ptr) cudaFreeHost(ptr);
  ptr = nullptr;
  size = 0;
  CUDA_RETURN_IF_ERROR(cudaMallocHost(&ptr, std::max<uint64_t>(bytes, 16)));
  size = bytes;
  return absl::OkStatus();
}
double Seconds(cudaEvent_t a, cudaEvent_t b) {
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  return ms / 1e3;
}
}  // namespace

absl::StatusOr<DecodeTiming> GpuDecoder::Decode(absl::Span<const uint8_t> input, const std::vector<TensorJob>& jobs,
                                                const DecodePlan& plan, void* device_output) {
  State& s = *state_;
  DecodeTiming timing;
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  if (input.size() != plan.prepass_offset) return absl::InvalidArgumentError("input differs from the plan's");
  auto image = BuildPlanImage(plan, jobs);
  if (!image.ok()) return image.status();
  // One staging buffer, one copy: group bytes, prepass region, plan image.
  const uint64_t plan_at = (plan.input_bytes() + 15) / 16 * 16;
  const uint64_t staged = plan_at + image->bytes.size();
  if (auto st = GrowPinned(s.pinned, s.pinned_size, staged); !st.ok()) return st;
  if (auto st = GrowPinned(s.pinned_results, s.pinned_results_size, image->results_bytes); !st.ok()) return st;
  if (!input.empty()) std::memcpy(s.pinned, input.data(), input.size());
  const auto t0 = std::chrono::steady_clock::now();
  if (auto st = RunHostPrepass(plan, input, absl::MakeSpan(s.pinned + plan.prepass_offset, plan.prepass_bytes));
      !st.ok()) {
    return st;
  }
  timing.prepass = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::memcpy(s.pinned + plan_at, image->bytes.data(), image->bytes.size());
  if (auto st = s.input.Reserve(staged); !st.ok()) return st;
  if (auto st = s.results.Reserve(image->results_bytes); !st.ok()) return st;

  // Once something is enqueued, an error returns only after the stream is
  // idle: the pinned buffers (and s.input) are rewritten or freed by the
  // next Decode, which must not race an H2D copy still reading them.
  auto enqueue = [&]() -> absl::Status {
    CUDA_RETURN_IF_ERROR(cudaEventRecord(s.start, s.stream));
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.input.ptr, s.pinned, staged, cudaMemcpyHostToDevice, s.stream));
    CUDA_RETURN_IF_ERROR(cudaEventRecord(s.uploaded, s.stream));
    auto* base = static_cast<uint8_t*>(s.input.ptr);
    DecodeLaunch launch;
    launch.input = base;
    launch.plan = base + plan_at;
    launch.image = &*image;
    launch.output = static_cast<uint8_t*>(device_output);
    launch.results = static_cast<uint8_t*>(s.results.ptr);
    RETURN_IF_ERROR(EnqueueDecode(launch, s.stream, &s.events));
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.pinned_results, s.results.ptr, image->results_bytes,
                                         cudaMemcpyDeviceToHost, s.stream));
    return absl::OkStatus();
  };
  if (absl::Status st = enqueue(); !st.ok()) {
    (void)cudaStreamSynchronize(s.stream);
    (void)cudaGetLastError();
    return st;
  }
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s.stream));
  const cudaEvent_t* e = s.events.e;
  timing.upload = Seconds(s.start, s.uploaded);
  timing.decode = Seconds(e[1], e[2]);
  timing.verify = Seconds(e[2], e[3]);
  timing.finish = Seconds(e[0], e[1]) + Seconds(e[3], e[4]);
  timing.kernels = Seconds(e[0], e[4]);
  timing.total = Seconds(s.start, e[4]);
  if (auto st = CheckDecodeResults(s.pinned_results, *image); !st.ok()) return st;
  return timing;
}

}  // namespace bigsmall::gpu
