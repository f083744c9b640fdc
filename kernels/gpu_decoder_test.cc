#include "kernels/gpu_decoder.h"

#include <unistd.h>

#include <cstring>
#include <random>
#include <vector>

#include "codec/dtype.h"
#include "codec/planes.h"
#include "codec/tensor_codec.h"
#include "gtest/gtest.h"

namespace bigsmall::gpu {
namespace {

struct Group {
  std::vector<uint8_t> input;     // blobs back to back, like a layer group
  std::vector<TensorJob> jobs;
  std::vector<uint8_t> expected;  // the original tensors, back to back
};

std::vector<uint8_t> WeightLike(const std::string& dtype, size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0, 0.03f);
  std::vector<uint8_t> out;
  for (size_t i = 0; i < n; ++i) {
    float f = d(rng);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (dtype == "BF16") {
      out.push_back(static_cast<uint8_t>(u >> 16));
      out.push_back(static_cast<uint8_t>(u >> 24));
    } else if (dtype == "F32") {
      for (int b = 0; b < 4; ++b) out.push_back(static_cast<uint8_t>(u >> (8 * b)));
    } else if (dtype == "F16") {
      out.push_back(static_cast<uint8_t>(rng()));
      out.push_back(static_cast<uint8_t>(0x20 + rng() % 8));
    } else if (dtype == "I64") {
      for (int b = 0; b < 8; ++b) out.push_back(b == 0 ? static_cast<uint8_t>(i) : 0);
    } else {
      out.push_back(static_cast<uint8_t>(120 + rng() % 9));
    }
  }
  return out;
}

Group MakeGroup(Mode mode, uint32_t chunk_elements) {
  Group g;
  const std::vector<std::pair<std::string, size_t>> specs = {
      {"BF16", 70000}, {"BF16", 1}, {"F32", 5000}, {"F16", 3333}, {"F8_E4M3", 9000},
      {"U8", 64},      {"I64", 300}, {"BF16", 0},  {"BF16", 4097}};
  uint32_t seed = 1;
  for (const auto& [dtype, n] : specs) {
    auto bytes = WeightLike(dtype, n, seed++);
    if (dtype == "BF16" && n == 4097) std::fill(bytes.begin(), bytes.end(), 0);  // constant planes
    EncodeOptions eo;
    eo.mode = mode;
    eo.chunk_elements = chunk_elements;
    auto blob = EncodeTensorBlob(bytes, ResolveDtype(dtype), eo);
    EXPECT_TRUE(blob.ok());
    TensorJob job;
    job.blob_offset = g.input.size();
    job.blob_size = blob->size();
    job.out_offset = g.expected.size();
    job.out_size = bytes.size();
    g.jobs.push_back(job);
    g.input.insert(g.input.end(), blob->begin(), blob->end());
    g.expected.insert(g.expected.end(), bytes.begin(), bytes.end());
  }
  return g;
}

TEST(GpuPlan, EmulatedKernelsMatchTheCpuDecoder) {
  for (Mode mode : {Mode::kBalanced, Mode::kInference, Mode::kStorage}) {
    for (uint32_t ce : {64u, 1000u, 65536u}) {
      Group g = MakeGroup(mode, ce);
      auto plan = PlanDecode(g.input, g.jobs);
      ASSERT_TRUE(plan.ok()) << plan.status();
      EXPECT_EQ(plan->output_bytes, g.expected.size());
      if (mode == Mode::kInference) {
        EXPECT_TRUE(plan->cpu_fallback.empty());
      }
      if (ce >= 1000) {
        EXPECT_FALSE(plan->chunks.empty());  // tiny chunks may not pay for rANS
      }
      std::vector<uint8_t> out(plan->output_bytes, 0xEE);
      ASSERT_TRUE(EmulateDecode(g.input, g.jobs, *plan, absl::MakeSpan(out)).ok());
      EXPECT_EQ(out, g.expected) << ModeName(mode) << " chunk " << ce;
    }
  }
}

TEST(GpuPlan, EmulatedKernelsRejectCorruptStreams) {
  Group g = MakeGroup(Mode::kInference, 1000);
  auto plan = PlanDecode(g.input, g.jobs);
  ASSERT_TRUE(plan.ok());
  int caught = 0;
  for (const ChunkTask& t : plan->chunks) {
    auto bad = g.input;
    bad[t.in_offset + t.in_size / 2] ^= 0x5A;  // a word in the middle of this chunk
    std::vector<uint8_t> out(plan->output_bytes);
    caught += !EmulateDecode(bad, g.jobs, *plan, absl::MakeSpan(out)).ok();
  }
  // A changed word may still end in valid states, but almost never.
  EXPECT_GE(caught, static_cast<int>(plan->chunks.size()) - 1);
}

TEST(GpuPlan, RejectsBlobsOutsideTheInput) {
  Group g = MakeGroup(Mode::kBalanced, 1000);
  g.jobs[0].blob_size = g.input.size() + 1;
  EXPECT_EQ(PlanDecode(g.input, g.jobs).status().code(), absl::StatusCode::kDataLoss);
  Group h = MakeGroup(Mode::kBalanced, 1000);
  h.jobs[0].out_size += 2;
  EXPECT_EQ(PlanDecode(h.input, h.jobs).status().code(), absl::StatusCode::kDataLoss);
}

TEST(WarpRans, MergeElementMatchesTheCodec) {
  std::mt19937 rng(3);
  for (auto [split, width] : std::vector<std::pair<PlaneSplit, uint32_t>>{
           {PlaneSplit::kBf16, 2}, {PlaneSplit::kFp32, 4}, {PlaneSplit::kBytes, 1},
           {PlaneSplit::kBytes, 2}, {PlaneSplit::kBytes, 4}}) {
    const uint32_t np = split == PlaneSplit::kBf16 ? 2 : split == PlaneSplit::kFp32 ? 4 : width;
    const size_t n = 257;
    std::vector<std::vector<uint8_t>> planes(np, std::vector<uint8_t>(n));
    for (auto& p : planes)
      for (auto& b : p) b = static_cast<uint8_t>(rng());
    std::vector<const uint8_t*> ptrs;
    for (auto& p : planes) ptrs.push_back(p.data());
    std::vector<uint8_t> want(n * width), got(n * width);
    MergePlanes(split, width, ptrs.data(), n, want.data());
    for (size_t k = 0; k < n; ++k) {
      uint8_t v[4];
      for (uint32_t p = 0; p < np; ++p) v[p] = planes[p][k];
      MergeElement(static_cast<uint8_t>(split), static_cast<uint8_t>(width), v, got.data() + k * width);
    }
    EXPECT_EQ(got, want) << static_cast<int>(split) << "/" << width;
  }
}

#if defined(BIGSMALL_HAVE_CUDA)
// Whether this machine has the NVIDIA kernel driver loaded (the oracle the
// device count is checked against).
bool NvidiaDriverLoaded() { return access("/proc/driver/nvidia/version", F_OK) == 0; }
#endif

TEST(GpuDevice, CountAndItsReasonAgreeWithTheMachine) {
  absl::StatusOr<int> count = CountDevices();
  std::string why;
  const int n = DeviceCount(&why);
#if !defined(BIGSMALL_HAVE_CUDA)
  // A build without CUDA: no device, and it says so.
  ASSERT_FALSE(count.ok());
  EXPECT_EQ(count.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(count.status().message().find("built without CUDA"), std::string::npos)
      << count.status();
  EXPECT_EQ(n, 0);
  EXPECT_EQ(why, "built without CUDA");
  EXPECT_EQ(GpuDecoder::Create(0).status().code(), absl::StatusCode::kFailedPrecondition);
#else
  if (!NvidiaDriverLoaded()) {
    // CUDA build, no driver: 0 devices, FAILED_PRECONDITION naming the cause.
    ASSERT_FALSE(count.ok()) << "devices found without an NVIDIA driver: " << *count;
    EXPECT_EQ(count.status().code(), absl::StatusCode::kFailedPrecondition) << count.status();
    EXPECT_EQ(n, 0);
    EXPECT_FALSE(why.empty());
    EXPECT_EQ(why, count.status().message());
    auto decoder = GpuDecoder::Create(0);
    EXPECT_EQ(decoder.status().code(), absl::StatusCode::kFailedPrecondition) << decoder.status();
  } else {
    // The driver is loaded: at least one device, and the two calls agree.
    ASSERT_TRUE(count.ok()) << count.status();
    EXPECT_GE(*count, 1);
    EXPECT_EQ(n, *count);
    EXPECT_TRUE(why.empty()) << why;
  }
#endif
  EXPECT_EQ(DeviceCount(nullptr), n);
}

TEST(CudaStatus, ErrorsMapToTheirCodes) {
  EXPECT_TRUE(CudaErrorToStatus(kCudaSuccess, "x", "no error").ok());
  // Out of memory is not UNAVAILABLE.
  absl::Status oom = CudaErrorToStatus(kCudaErrorMemoryAllocation, "cudaMalloc", "out of memory");
  EXPECT_EQ(oom.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(oom.message(), "CUDA cudaMalloc: out of memory (error 2)");
  EXPECT_EQ(CudaErrorToStatusCode(kCudaErrorLaunchOutOfResources),
            absl::StatusCode::kResourceExhausted);
  for (int no_gpu : {kCudaErrorNoDevice, kCudaErrorInsufficientDriver, kCudaErrorInvalidDevice,
                     kCudaErrorStubLibrary, kCudaErrorCallRequiresNewerDriver,
                     kCudaErrorDevicesUnavailable, kCudaErrorNoKernelImageForDevice,
                     kCudaErrorUnsupportedPtxVersion, kCudaErrorInitializationError,
                     kCudaErrorSystemDriverMismatch, kCudaErrorCompatNotSupportedOnDevice,
                     kCudaErrorSystemNotReady}) {
    EXPECT_EQ(CudaErrorToStatusCode(no_gpu), absl::StatusCode::kFailedPrecondition) << no_gpu;
  }
  EXPECT_EQ(CudaErrorToStatusCode(kCudaErrorIllegalAddress), absl::StatusCode::kInternal);
  EXPECT_EQ(CudaErrorToStatusCode(kCudaErrorLaunchFailure), absl::StatusCode::kInternal);
  EXPECT_EQ(CudaErrorToStatusCode(1 /* cudaErrorInvalidValue */), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CudaErrorToStatusCode(999 /* cudaErrorUnknown */), absl::StatusCode::kUnavailable);
}

// Runs on a machine with a CUDA GPU; skipped (with the reason) elsewhere.
TEST(GpuDevice, DecodesBitExactOnTheGpu) {
  absl::StatusOr<int> count = CountDevices();
  if (!count.ok()) GTEST_SKIP() << "no usable CUDA GPU: " << count.status();
  auto decoder = GpuDecoder::Create(0);
  ASSERT_TRUE(decoder.ok()) << decoder.status();
  for (Mode mode : {Mode::kBalanced, Mode::kInference, Mode::kStorage}) {
    Group g = MakeGroup(mode, 1000);
    auto plan = PlanDecode(g.input, g.jobs);
    ASSERT_TRUE(plan.ok());
    auto out = DeviceBuffer::Allocate(0, plan->output_bytes);
    ASSERT_TRUE(out.ok()) << out.status();
    auto timing = (*decoder)->Decode(g.input, g.jobs, *plan, out->data());
    ASSERT_TRUE(timing.ok()) << timing.status();
    std::vector<uint8_t> host(plan->output_bytes);
    ASSERT_TRUE(out->CopyToHost(absl::MakeSpan(host)).ok());
    EXPECT_EQ(host, g.expected) << ModeName(mode);
  }
  // A corrupt stream is reported by the kernel.
  Group g = MakeGroup(Mode::kInference, 1000);
  auto plan = PlanDecode(g.input, g.jobs);
  ASSERT_TRUE(plan.ok());
  g.input[plan->chunks[0].in_offset + 4] ^= 0xFF;
  auto out = DeviceBuffer::Allocate(0, plan->output_bytes);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ((*decoder)->Decode(g.input, g.jobs, *plan, out->data()).status().code(),
            absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace bigsmall::gpu
