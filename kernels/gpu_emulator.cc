// CPU emulation of the GPU kernels: the plan image parsed as the kernels
// read it, and the kernels' own code (kernels/decode_step.h) run with the 32
// lanes of a warp held side by side and stepped in lockstep (HostWarp).
// Kernel order, as gpu_decoder.cu enqueues it: init results, decode (one
// warp per chunk task), verify (jobs without inline checksums), finish.
#include <algorithm>
#include <cstring>
#include <iterator>
#include <vector>

#include "absl/strings/str_cat.h"
#include "codec/byte_io.h"
#include "codec/format.h"
#include "codec/status_macros.h"
#include "kernels/decode_step.h"
#include "kernels/gpu_decoder.h"
#include "kernels/launch.h"
#include "kernels/xor_step.h"

namespace bigsmall::gpu {
namespace {

absl::Status Malformed(const std::string& what) {
  return absl::InternalError(absl::StrCat("malformed GPU decode launch: ", what));
}

bool RangeOk(uint64_t offset, uint64_t size, uint64_t limit) { return offset <= limit && size <= limit - offset; }

// The image's arrays, bounds-checked against the image and each other.
struct PlanView {
  PlanHeader h;
  const JobTask* jobs = nullptr;
  const ChunkTask* chunks = nullptr;
  const PlaneTask* planes = nullptr;
  const uint32_t* tables = nullptr;
  const uint8_t* maps = nullptr;
  const uint32_t* verify = nullptr;
};

absl::StatusOr<PlanView> ParsePlan(const uint8_t* plan, const PlanImage& image) {
  const uint64_t size = image.bytes.size();
  if (plan == nullptr || size < sizeof(PlanHeader)) return Malformed("no plan image");
  if ((reinterpret_cast<uintptr_t>(plan) & 15u) != 0) return Malformed("plan image not 16-byte aligned");
  PlanView v;
  std::memcpy(&v.h, plan, sizeof(PlanHeader));
  const PlanHeader& h = v.h;
  if (h.magic != kPlanMagic || h.version != kPlanVersion) return Malformed("bad plan magic or version");
  if (h.image_bytes != size) return Malformed("plan image size differs from its header's");
  if (h.num_jobs != image.num_jobs || h.num_chunks != image.num_chunks || h.num_verify != image.num_verify ||
      h.input_bytes != image.input_bytes || h.output_bytes != image.output_bytes ||
      image.results_bytes != ResultsBytes(h.num_jobs) ||
      !std::equal(std::begin(h.class_end), std::end(h.class_end), std::begin(image.class_end)) ||
      h.class_end[kNumNpClasses - 1] != h.num_chunks) {
    return Malformed("plan image header differs from the host view");
  }
  auto array = [&](uint64_t offset, uint64_t count, uint64_t elem, const char* what) -> absl::Status {
    if (offset % 16 != 0 || count > size / elem || !RangeOk(offset, count * elem, size)) {
      return Malformed(absl::StrCat(what, " outside the plan image"));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(array(h.jobs, h.num_jobs, sizeof(JobTask), "jobs"));
  RETURN_IF_ERROR(array(h.chunks, h.num_chunks, sizeof(ChunkTask), "chunks"));
  RETURN_IF_ERROR(array(h.planes, h.num_planes, sizeof(PlaneTask), "planes"));
  RETURN_IF_ERROR(array(h.tables, h.num_tables, 4ull * rans::kProbScale, "tables"));
  RETURN_IF_ERROR(array(h.maps, h.num_maps, 256, "context maps"));
  RETURN_IF_ERROR(array(h.verify, h.num_verify, 4, "verify list"));
  v.jobs = reinterpret_cast<const JobTask*>(plan + h.jobs);
  v.chunks = reinterpret_cast<const ChunkTask*>(plan + h.chunks);
  v.planes = reinterpret_cast<const PlaneTask*>(plan + h.planes);
  v.tables = reinterpret_cast<const uint32_t*>(plan + h.tables);
  v.maps = plan + h.maps;
  v.verify = reinterpret_cast<const uint32_t*>(plan + h.verify);
  for (uint32_t j = 0; j < h.num_jobs; ++j) {
    if (!RangeOk(v.jobs[j].out_offset, v.jobs[j].out_size, h.output_bytes)) {
      return Malformed(absl::StrCat("job ", j, " writes outside the output"));
    }
  }
  for (uint32_t i = 0; i < h.num_verify; ++i) {
    if (v.verify[i] >= h.num_jobs) return Malformed("verify list names no job");
  }
  for (uint32_t c = 0; c < h.num_chunks; ++c) {
    const ChunkTask& t = v.chunks[c];
    const std::string name = absl::StrCat("chunk task ", c);
    if (t.job >= h.num_jobs) return Malformed(name + " names no job");
    const int cls = NpClass(t.num_planes);
    if (c >= h.class_end[cls] || (cls > 0 && c < h.class_end[cls - 1])) {
      return Malformed(name + " outside its plane-count class");
    }
    if (t.width < 1 || t.width > kMaxPlanes || t.num_planes < 1 || t.num_planes > kMaxPlanes ||
        t.split > 2 || t.count > kMaxChunkElements ||
        t.num_planes != (t.split == 1 ? 2 : t.split == 2 ? 4 : t.width) || (t.split == 1 && t.width != 2) ||
        (t.split == 2 && t.width != 4)) {
      return Malformed(name + ": bad shape");
    }
    const JobTask& job = v.jobs[t.job];
    const uint64_t bytes = uint64_t{t.count} * t.width;
    if (!RangeOk(t.tensor_offset, bytes, job.out_size) || t.out_offset != job.out_offset + t.tensor_offset) {
      return Malformed(name + " writes outside its tensor");
    }
    if ((t.flags & kChunkChecksum) != 0 && t.tensor_offset % 8 != 0) {
      return Malformed(name + ": inline checksum of an unaligned chunk");
    }
    if (!RangeOk(t.first_plane, t.num_planes, h.num_planes)) return Malformed(name + ": planes outside the plan");
    for (uint32_t p = 0; p < t.num_planes; ++p) {
      const PlaneTask& pt = v.planes[t.first_plane + p];
      switch (pt.kind) {
        case kPlaneRaw:
          if (!RangeOk(pt.source, t.count, h.input_bytes)) return Malformed(name + ": raw plane outside the input");
          break;
        case kPlaneConstant:
          break;
        case kPlaneRans:
          if (!RangeOk(pt.source, pt.in_size, h.input_bytes) || pt.table >= h.num_tables) {
            return Malformed(name + ": rANS plane outside the input or the tables");
          }
          break;
        case kPlaneRansConditional: {
          if (!RangeOk(pt.source, pt.in_size, h.input_bytes) || pt.map >= h.num_maps || pt.num_tables == 0 ||
              !RangeOk(pt.table, pt.num_tables, h.num_tables) || pt.context >= p ||
              v.planes[t.first_plane + pt.context].kind == kPlaneRansConditional) {
            return Malformed(name + ": conditional plane outside the input, tables or planes");
          }
          const uint8_t* map = v.maps + uint64_t{pt.map} * 256;
          for (int s = 0; s < 256; ++s) {
            if (map[s] >= pt.num_tables) return Malformed(name + ": context map entry outside its tables");
          }
          break;
        }
        default:
          return Malformed(name + ": unknown plane kind");
      }
    }
  }
  return v;
}

uint64_t LoadU64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
void StoreU64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }
void StoreU32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }

// The results buffer as the kernels update it (atomics on the GPU; the
// emulator runs a launch on one thread).
struct Results {
  uint8_t* base;
  uint32_t num_jobs;
  DecodeResults r;
  void Init() {
    r = DecodeResults{};
    std::memset(base + kResultsHeaderBytes, 0, 16ull * num_jobs);
  }
  void AddSum(uint32_t job, uint64_t v) {
    uint8_t* at = base + SumOffset(num_jobs, job);
    StoreU64(at, LoadU64(at) + v);
  }
  uint64_t SumOf(uint32_t job) const { return LoadU64(base + SumOffset(num_jobs, job)); }
  void Flush() {
    StoreU32(base, r.corrupt_chunks);
    StoreU32(base + 4, r.first_corrupt_job);
    StoreU32(base + 8, r.mismatches);
    StoreU32(base + 12, r.first_mismatch_job);
  }
};

template <int NP>
ChunkResult RunChunk(HostWarp& warp, const ChunkTask& t, const PlanView& v, const uint8_t* input, uint8_t* output) {
  const PlaneTask* planes = v.planes + t.first_plane;
  const uint32_t* tables[NP] = {};
  const uint8_t* maps[NP] = {};
  for (uint32_t p = 0; p < t.num_planes; ++p) {
    if (IsRans(planes[p].kind)) tables[p] = v.tables + uint64_t{planes[p].table} * rans::kProbScale;
    if (planes[p].kind == kPlaneRansConditional) maps[p] = v.maps + uint64_t{planes[p].map} * 256;
  }
  return DecodeChunkFused<NP>(warp, t, planes, input, tables, maps, output + t.out_offset);
}

}  // namespace

absl::Status EmulateDecodeLaunch(const DecodeLaunch& launch) {
  if (launch.image == nullptr) return Malformed("no host view of the plan image");
  ASSIGN_OR_RETURN(PlanView v, ParsePlan(launch.plan, *launch.image));
  const PlanHeader& h = v.h;
  if (launch.results == nullptr || (h.input_bytes != 0 && launch.input == nullptr) ||
      (h.output_bytes != 0 && launch.output == nullptr)) {
    return Malformed("missing input, output or results buffer");
  }
  Results results{launch.results, h.num_jobs, {}};
  results.Init();
  // Decode kernel: one warp per chunk task.
  HostWarp warp;
  for (uint32_t c = 0; c < h.num_chunks; ++c) {
    const ChunkTask& t = v.chunks[c];
    ChunkResult r;
    // One kernel launch per class (gpu_decoder.cu), in class order.
    switch (NpClass(t.num_planes)) {
      case 0: r = RunChunk<1>(warp, t, v, launch.input, launch.output); break;
      case 1: r = RunChunk<2>(warp, t, v, launch.input, launch.output); break;
      case 2: r = RunChunk<4>(warp, t, v, launch.input, launch.output); break;
      default: r = RunChunk<8>(warp, t, v, launch.input, launch.output); break;
    }
    if (!r.ok) {
      ++results.r.corrupt_chunks;
      results.r.first_corrupt_job = std::min(results.r.first_corrupt_job, t.job);
    }
    if ((t.flags & kChunkChecksum) != 0) results.AddSum(t.job, r.sum);
  }
  // Verify kernel: the tensors whose sums the decode could not form.
  for (uint32_t i = 0; i < h.num_verify; ++i) {
    const uint32_t j = v.verify[i];
    const JobTask& job = v.jobs[j];
    uint64_t sum = 0;
    const uint64_t words = (job.out_size + 7) / 8;
    for (uint64_t k = 0; k < words; ++k) sum += ChecksumWordAt(launch.output + job.out_offset, job.out_size, k);
    results.AddSum(j, sum);
  }
  // Finish kernel.
  for (uint32_t j = 0; j < h.num_jobs; ++j) {
    uint64_t finished = 0;
    if (!FinishJob(v.jobs[j], results.SumOf(j), &finished)) {
      ++results.r.mismatches;
      results.r.first_mismatch_job = std::min(results.r.first_mismatch_job, j);
    }
    StoreU64(launch.results + FinishedOffset(j), finished);
  }
  results.Flush();
  return absl::OkStatus();
}

absl::Status EmulateChecksumLaunch(const uint8_t* data, uint64_t bytes, uint64_t* out) {
  if (out == nullptr || (bytes != 0 && data == nullptr)) return Malformed("checksum of a null buffer");
  uint64_t sum = 0;
  const uint64_t words = (bytes + 7) / 8;
  for (uint64_t k = 0; k < words; ++k) sum += ChecksumWordAt(data, bytes, k);
  *out = ChecksumFinish(sum, bytes);
  return absl::OkStatus();
}

absl::Status EmulateXorChecksumLaunch(uint8_t* data, const uint8_t* base, uint64_t bytes,
                                      uint64_t* out) {
  if (out == nullptr || (bytes != 0 && (data == nullptr || base == nullptr))) {
    return Malformed("XOR of a null buffer");
  }
  if (reinterpret_cast<uintptr_t>(data) % 8 != 0 || reinterpret_cast<uintptr_t>(base) % 8 != 0) {
    return Malformed("XOR launch: data and base must be 8-byte aligned");
  }
  uint64_t sum = 0;
  const uint64_t words = (bytes + 7) / 8;
  for (uint64_t k = 0; k < words; ++k) sum += XorChecksumWordAt(data, base, bytes, k);
  *out = ChecksumFinish(sum, bytes);
  return absl::OkStatus();
}

absl::Status EmulateDecode(absl::Span<const uint8_t> input, const std::vector<TensorJob>& jobs,
                           const DecodePlan& plan, absl::Span<uint8_t> output) {
  if (output.size() < plan.output_bytes) return absl::InvalidArgumentError("output buffer too small");
  if (input.size() != plan.prepass_offset) return absl::InvalidArgumentError("input differs from the plan's");
  return NoThrowAlloc("GPU decode emulation", [&]() -> absl::Status {
    ASSIGN_OR_RETURN(PlanImage image, BuildPlanImage(plan, jobs));
    // The device's buffers: staged input (group + prepass region), plan
    // copy (16-byte aligned), results.
    std::vector<uint8_t> staged(plan.input_bytes());
    if (!input.empty()) std::memcpy(staged.data(), input.data(), input.size());
    RETURN_IF_ERROR(RunHostPrepass(plan, input, absl::MakeSpan(staged).subspan(plan.prepass_offset)));
    std::vector<uint64_t> plan_copy((image.bytes.size() + 7) / 8 + 1);
    auto* plan_bytes = reinterpret_cast<uint8_t*>(plan_copy.data());
    plan_bytes += (16 - reinterpret_cast<uintptr_t>(plan_bytes) % 16) % 16;
    std::memcpy(plan_bytes, image.bytes.data(), image.bytes.size());
    std::vector<uint64_t> results(image.results_bytes / 8);
    DecodeLaunch launch;
    launch.input = staged.data();
    launch.plan = plan_bytes;
    launch.image = &image;
    launch.output = output.data();
    launch.results = reinterpret_cast<uint8_t*>(results.data());
    RETURN_IF_ERROR(EmulateDecodeLaunch(launch));
    return CheckDecodeResults(launch.results, image);
  });
}

}  // namespace bigsmall::gpu
