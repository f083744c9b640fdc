// Host-side planning of a GPU decode (no CUDA here): the task lists, the
// plan image the kernels read, the zstd host prepass, the results check.
#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "codec/byte_io.h"
#include "codec/format.h"
#include "codec/rans_decode.h"
#include "codec/status_macros.h"
#include "codec/tensor_blob.h"
#include "codec/thread_pool.h"
#include "kernels/decode_step.h"
#include "kernels/gpu_decoder.h"

namespace bigsmall::gpu {
namespace {

// Decode tables of one plan (16 KiB each). A legitimate layer has a few per
// tensor (conditional planes up to 256); this bounds what a hostile group
// can make the planner allocate (4096 tables = 64 MiB).
constexpr uint64_t kMaxPlanTables = 4096;

uint64_t Align16(uint64_t v) { return (v + 15) & ~uint64_t{15}; }

absl::Status AddTable(const rans::Frequencies& freqs, DecodePlan& plan, uint32_t job) {
  if (plan.tables.size() / rans::kProbScale >= kMaxPlanTables) {
    return absl::ResourceExhaustedError(absl::StrCat("tensor job ", job, ": more than ", kMaxPlanTables,
                                                     " rANS tables in one GPU decode plan"));
  }
  rans::DecodeTable table;
  RETURN_IF_ERROR(rans::BuildDecodeTable(freqs, &table));
  plan.tables.insert(plan.tables.end(), table.slot.begin(), table.slot.end());
  return absl::OkStatus();
}

absl::Status PlanJob(absl::Span<const uint8_t> input, const TensorJob& job, uint32_t j, DecodePlan& plan) {
  if (job.blob_offset > input.size() || job.blob_size > input.size() - job.blob_offset) {
    return absl::DataLossError(absl::StrCat("tensor job ", j, ": blob outside the input"));
  }
  if (job.out_offset > std::numeric_limits<uint64_t>::max() - job.out_size) {
    return absl::InvalidArgumentError(absl::StrCat("tensor job ", j, ": output range overflows"));
  }
  plan.output_bytes = std::max(plan.output_bytes, job.out_offset + job.out_size);
  ASSIGN_OR_RETURN(ParsedBlob b, ParseTensorBlob(input.subspan(job.blob_offset, job.blob_size)));
  if (b.num_bytes != job.out_size) {
    return absl::DataLossError(absl::StrCat("tensor job ", j, ": blob holds ", b.num_bytes,
                                            " bytes, tensor has ", job.out_size));
  }
  JobTask jt;
  jt.out_offset = job.out_offset;
  jt.out_size = job.out_size;
  // The decode kernel sums the checksum terms of the words it writes; a word
  // straddling two chunks (chunk bytes not a multiple of 8) is left to the
  // verify kernel, which sums the tensor after the decode.
  const bool inline_checksum = b.form == kBlobFormFields || b.num_chunks <= 1 ||
                               (uint64_t{b.chunk_elements} * b.width) % 8 == 0;
  if (inline_checksum) jt.flags |= kJobInlineChecksum;
  plan.jobs.push_back(jt);
  if (b.form == kBlobFormFields) {
    // The kernels do not scatter records: the host prepass decodes the whole
    // tensor, and the kernels copy it as one raw plane in 1 MiB chunks
    // (checksumming as they write, like any other tensor).
    PrepassTask pre;
    pre.kind = PrepassKind::kWholeBlob;
    pre.in_offset = job.blob_offset;
    pre.in_size = job.blob_size;
    pre.out_offset = plan.prepass_bytes;
    pre.count = job.out_size;
    pre.job = j;
    plan.prepass.push_back(pre);
    for (uint64_t first = 0; first < job.out_size; first += kRawBlobChunk) {
      ChunkTask t;
      t.out_offset = job.out_offset + first;
      t.tensor_offset = first;
      t.count = static_cast<uint32_t>(std::min<uint64_t>(kRawBlobChunk, job.out_size - first));
      t.job = j;
      t.first_plane = static_cast<uint32_t>(plan.planes.size());
      t.split = static_cast<uint8_t>(PlaneSplit::kBytes);
      t.width = 1;
      t.num_planes = 1;
      PlaneTask pt;
      pt.kind = kPlaneRaw;
      pt.source = plan.prepass_offset + pre.out_offset + first;
      plan.planes.push_back(pt);
      plan.chunks.push_back(t);
    }
    plan.prepass_bytes += Align16(job.out_size);
    return absl::OkStatus();
  }

  const size_t np = b.planes.size();
  uint32_t plane_table[kMaxPlanes] = {};
  uint32_t plane_map[kMaxPlanes] = {};
  for (size_t p = 0; p < np; ++p) {
    const BlobPlane& plane = b.planes[p];
    if (plane.coder != PlaneCoder::kRans && plane.coder != PlaneCoder::kRansConditional) continue;
    plane_table[p] = static_cast<uint32_t>(plan.tables.size() / rans::kProbScale);
    for (const rans::Frequencies& f : plane.tables) RETURN_IF_ERROR(AddTable(f, plan, j));
    if (plane.coder == PlaneCoder::kRansConditional) {
      plane_map[p] = static_cast<uint32_t>(plan.maps.size() / 256);
      plan.maps.insert(plan.maps.end(), plane.context_map.begin(), plane.context_map.end());
    }
  }
  for (uint32_t c = 0; c < b.num_chunks; ++c) {
    const uint64_t first = uint64_t{c} * b.chunk_elements;
    const uint32_t count = static_cast<uint32_t>(b.ChunkCount(c));
    ChunkTask t;
    t.out_offset = job.out_offset + first * b.width;
    t.tensor_offset = first * b.width;
    t.count = count;
    t.job = j;
    t.first_plane = static_cast<uint32_t>(plan.planes.size());
    t.split = static_cast<uint8_t>(b.split);
    t.width = static_cast<uint8_t>(b.width);
    t.num_planes = static_cast<uint8_t>(np);
    for (size_t p = 0; p < np; ++p) {
      const BlobPlane& plane = b.planes[p];
      PlaneTask pt;
      const uint64_t begin = plane.chunk_offsets.empty() ? 0 : plane.chunk_offsets[c];
      const uint64_t size = plane.chunk_offsets.empty() ? 0 : plane.chunk_offsets[c + 1] - begin;
      switch (plane.coder) {
        case PlaneCoder::kRansSegmented:  // parsed as kRans + chunks_per_table
          return absl::InternalError("GPU plan: rans_segmented plane left undescribed by the parser");
        case PlaneCoder::kRaw:
          pt.kind = kPlaneRaw;
          pt.source = job.blob_offset + begin;
          break;
        case PlaneCoder::kConstant:
          pt.kind = kPlaneConstant;
          pt.value = plane.constant;
          break;
        case PlaneCoder::kRans:
        case PlaneCoder::kRansConditional:
          // Chunk sizes are u32 in the blob (docs/FORMAT.md §5.1).
          pt.kind = plane.coder == PlaneCoder::kRans ? kPlaneRans : kPlaneRansConditional;
          pt.source = job.blob_offset + begin;
          pt.in_size = static_cast<uint32_t>(size);
          pt.table = plane_table[p] + ChunkTable(plane, c);
          if (plane.coder == PlaneCoder::kRansConditional) {
            pt.num_tables = static_cast<uint32_t>(plane.tables.size());
            pt.map = plane_map[p];
            pt.context = static_cast<uint8_t>(plane.context_plane);
          }
          break;
        case PlaneCoder::kZstd: {
          PrepassTask pre;
          pre.in_offset = job.blob_offset + begin;
          pre.in_size = static_cast<uint32_t>(size);
          pre.out_offset = plan.prepass_bytes;
          pre.count = count;
          pre.job = j;
          pre.framing = plane.zstd_framing;
          plan.prepass.push_back(pre);
          pt.kind = kPlaneRaw;
          pt.source = plan.prepass_offset + pre.out_offset;
          plan.prepass_bytes += count;
          break;
        }
      }
      plan.planes.push_back(pt);
    }
    plan.chunks.push_back(t);
  }
  return absl::OkStatus();
}

template <class T>
void Put(std::vector<uint8_t>& image, uint64_t offset, const T* data, size_t count) {
  if (count != 0) std::memcpy(image.data() + offset, data, count * sizeof(T));
}

}  // namespace

absl::StatusOr<DecodePlan> PlanDecode(absl::Span<const uint8_t> input, const std::vector<TensorJob>& jobs) {
  if (jobs.size() > std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError("too many tensor jobs for one plan");
  }
  return NoThrowAlloc("GPU decode plan", [&]() -> absl::StatusOr<DecodePlan> {
    DecodePlan plan;
    plan.prepass_offset = input.size();
    for (uint32_t j = 0; j < jobs.size(); ++j) RETURN_IF_ERROR(PlanJob(input, jobs[j], j, plan));
    if (plan.chunks.size() > std::numeric_limits<uint32_t>::max() ||
        plan.planes.size() > std::numeric_limits<uint32_t>::max()) {
      return absl::ResourceExhaustedError("too many chunks for one GPU decode plan");
    }
    return plan;
  });
}

absl::Status RunHostPrepass(const DecodePlan& plan, absl::Span<const uint8_t> group,
                            absl::Span<uint8_t> staged_extra, ThreadPool* pool) {
  if (plan.prepass.empty()) return absl::OkStatus();
  if (group.size() != plan.prepass_offset) {
    return absl::InvalidArgumentError(absl::StrCat("prepass: group has ", group.size(), " bytes, the plan ",
                                                   plan.prepass_offset));
  }
  if (staged_extra.size() < plan.prepass_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("prepass: region of ", staged_extra.size(),
                                                   " bytes, the plan needs ", plan.prepass_bytes));
  }
  auto decode = [&](size_t i) -> absl::Status {
    const PrepassTask& t = plan.prepass[i];
    if (t.in_offset > group.size() || t.in_size > group.size() - t.in_offset ||
        t.out_offset > staged_extra.size() || t.count > staged_extra.size() - t.out_offset) {
      return absl::InternalError(absl::StrCat("prepass: task of tensor job ", t.job, " outside its buffers"));
    }
    if (t.kind == PrepassKind::kWholeBlob) {
      absl::Status st = DecodeTensorBlob(group.subspan(t.in_offset, t.in_size),
                                         staged_extra.subspan(t.out_offset, t.count));
      if (!st.ok()) return absl::DataLossError(absl::StrCat("tensor job ", t.job, ": ", st.message()));
      return absl::OkStatus();
    }
    absl::Status st = ZstdDecompressExact(group.subspan(t.in_offset, t.in_size), t.framing,
                                          staged_extra.subspan(t.out_offset, t.count));
    if (st.code() == absl::StatusCode::kDataLoss) {
      return absl::DataLossError(absl::StrCat("tensor job ", t.job, ": zstd chunk corrupt: ", st.message()));
    }
    return st;
  };
  if (pool != nullptr && plan.prepass.size() > 1) return pool->ParallelFor(plan.prepass.size(), decode);
  for (size_t i = 0; i < plan.prepass.size(); ++i) RETURN_IF_ERROR(decode(i));
  return absl::OkStatus();
}

absl::StatusOr<PlanImage> BuildPlanImage(const DecodePlan& plan, const std::vector<TensorJob>& jobs) {
  if (jobs.size() != plan.jobs.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("plan image: ", jobs.size(), " jobs given, the plan has ", plan.jobs.size()));
  }
  return NoThrowAlloc("GPU plan image", [&]() -> absl::StatusOr<PlanImage> {
    std::vector<JobTask> job_tasks = plan.jobs;
    std::vector<uint32_t> verify;
    for (uint32_t j = 0; j < jobs.size(); ++j) {
      JobTask& jt = job_tasks[j];
      if (jobs[j].out_offset != jt.out_offset || jobs[j].out_size != jt.out_size) {
        return absl::InvalidArgumentError(absl::StrCat("plan image: tensor job ", j, " differs from the plan's"));
      }
      jt.flags &= kJobInlineChecksum;
      if (jobs[j].has_checksum) {
        jt.flags |= kJobHasChecksum;
        jt.expected = jobs[j].checksum;
        if ((jt.flags & kJobInlineChecksum) == 0) verify.push_back(j);
      }
    }
    std::vector<ChunkTask> chunks = plan.chunks;
    std::stable_sort(chunks.begin(), chunks.end(), [](const ChunkTask& a, const ChunkTask& b) {
      return NpClass(a.num_planes) < NpClass(b.num_planes);
    });
    uint32_t class_end[kNumNpClasses] = {};
    for (const ChunkTask& t : chunks) ++class_end[NpClass(t.num_planes)];
    for (int c = 1; c < kNumNpClasses; ++c) class_end[c] += class_end[c - 1];
    for (ChunkTask& t : chunks) {
      const JobTask& jt = job_tasks[t.job];
      t.flags = (jt.flags & kJobHasChecksum) && (jt.flags & kJobInlineChecksum) ? kChunkChecksum : 0;
    }
    PlanHeader h;
    h.num_jobs = static_cast<uint32_t>(job_tasks.size());
    h.num_chunks = static_cast<uint32_t>(chunks.size());
    h.num_planes = static_cast<uint32_t>(plan.planes.size());
    h.num_tables = static_cast<uint32_t>(plan.tables.size() / rans::kProbScale);
    h.num_maps = static_cast<uint32_t>(plan.maps.size() / 256);
    h.num_verify = static_cast<uint32_t>(verify.size());
    for (int c = 0; c < kNumNpClasses; ++c) h.class_end[c] = class_end[c];
    h.input_bytes = plan.input_bytes();
    h.output_bytes = plan.output_bytes;
    uint64_t at = sizeof(PlanHeader);
    auto place = [&](uint64_t bytes) {
      const uint64_t offset = at;
      at = Align16(at + bytes);
      return offset;
    };
    h.jobs = place(job_tasks.size() * sizeof(JobTask));
    h.chunks = place(chunks.size() * sizeof(ChunkTask));
    h.planes = place(plan.planes.size() * sizeof(PlaneTask));
    h.tables = place(plan.tables.size() * sizeof(uint32_t));
    h.maps = place(plan.maps.size());
    h.verify = place(verify.size() * sizeof(uint32_t));
    h.image_bytes = at;
    PlanImage image;
    image.bytes.assign(at, 0);
    Put(image.bytes, 0, &h, 1);
    Put(image.bytes, h.jobs, job_tasks.data(), job_tasks.size());
    Put(image.bytes, h.chunks, chunks.data(), chunks.size());
    Put(image.bytes, h.planes, plan.planes.data(), plan.planes.size());
    Put(image.bytes, h.tables, plan.tables.data(), plan.tables.size());
    Put(image.bytes, h.maps, plan.maps.data(), plan.maps.size());
    Put(image.bytes, h.verify, verify.data(), verify.size());
    image.num_jobs = h.num_jobs;
    image.num_chunks = h.num_chunks;
    image.num_merges = 0;
    image.num_verify = h.num_verify;
    for (int c = 0; c < kNumNpClasses; ++c) image.class_end[c] = class_end[c];
    image.input_bytes = h.input_bytes;
    image.scratch_bytes = 0;
    image.output_bytes = h.output_bytes;
    image.results_bytes = ResultsBytes(h.num_jobs);
    return image;
  });
}

uint64_t FinishedChecksum(const uint8_t* results, uint32_t job) {
  uint64_t v;
  std::memcpy(&v, results + FinishedOffset(job), 8);
  return v;
}

absl::Status CheckDecodeResults(const uint8_t* results, const PlanImage& image) {
  DecodeResults r;
  std::memcpy(&r, results, sizeof(r));
  if (r.corrupt_chunks == 0 && r.mismatches == 0) return absl::OkStatus();
  if (r.corrupt_chunks != 0) {
    return absl::DataLossError(absl::StrCat("tensor job ", r.first_corrupt_job, ": rANS chunk corrupt (",
                                            r.corrupt_chunks, " corrupt chunk(s) in this decode)"));
  }
  std::string detail;
  if (r.first_mismatch_job < image.num_jobs && image.bytes.size() >= sizeof(PlanHeader)) {
    PlanHeader h;
    std::memcpy(&h, image.bytes.data(), sizeof(h));
    JobTask jt;
    const uint64_t at = h.jobs + uint64_t{r.first_mismatch_job} * sizeof(JobTask);
    if (at + sizeof(JobTask) <= image.bytes.size()) {
      std::memcpy(&jt, image.bytes.data() + at, sizeof(jt));
      detail = absl::StrCat(": decoded ", absl::Hex(FinishedChecksum(results, r.first_mismatch_job),
                                                    absl::kZeroPad16),
                            ", expected ", absl::Hex(jt.expected, absl::kZeroPad16));
    }
  }
  return absl::DataLossError(absl::StrCat("tensor job ", r.first_mismatch_job, ": device checksum mismatch",
                                          detail, " (", r.mismatches, " tensor(s) in this decode)"));
}

}  // namespace bigsmall::gpu
