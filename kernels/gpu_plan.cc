// Host-side planning of a GPU decode (no CUDA here).
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "codec/rans_decode.h"
#include "codec/status_macros.h"
#include "codec/tensor_blob.h"
#include "kernels/gpu_decoder.h"

namespace bigsmall::gpu {

absl::StatusOr<DecodePlan> PlanDecode(absl::Span<const uint8_t> input, const std::vector<TensorJob>& jobs) {
  DecodePlan plan;
  for (uint32_t j = 0; j < jobs.size(); ++j) {
    const TensorJob& job = jobs[j];
    if (job.blob_offset > input.size() || job.blob_size > input.size() - job.blob_offset) {
      return absl::DataLossError(absl::StrCat("tensor job ", j, ": blob outside the input"));
    }
    plan.output_bytes = std::max(plan.output_bytes, job.out_offset + job.out_size);
    const auto blob = input.subspan(job.blob_offset, job.blob_size);
    ASSIGN_OR_RETURN(ParsedBlob b, ParseTensorBlob(blob));
    if (b.num_bytes != job.out_size) {
      return absl::DataLossError(absl::StrCat("tensor job ", j, ": blob holds ", b.num_bytes,
                                              " bytes, tensor has ", job.out_size));
    }
    bool gpu_ok = b.planes.size() <= 8;
    for (const BlobPlane& p : b.planes) {
      gpu_ok &= p.coder == PlaneCoder::kRaw || p.coder == PlaneCoder::kConstant || p.coder == PlaneCoder::kRans;
    }
    if (!gpu_ok) {
      plan.cpu_fallback.push_back(j);
      continue;
    }
    const size_t np = b.planes.size();
    const bool direct = np == 1 && b.planes[0].coder == PlaneCoder::kRans;  // decode straight to output
    uint64_t plane_scratch[8] = {};
    uint32_t plane_table[8] = {};
    for (size_t p = 0; p < np; ++p) {
      if (b.planes[p].coder != PlaneCoder::kRans) continue;
      rans::DecodeTable table;
      RETURN_IF_ERROR(rans::BuildDecodeTable(b.planes[p].tables[0], &table));
      plane_table[p] = static_cast<uint32_t>(plan.tables.size() / rans::kProbScale);
      plan.tables.insert(plan.tables.end(), table.slot.begin(), table.slot.end());
      if (!direct) {
        plane_scratch[p] = plan.scratch_bytes;
        plan.scratch_bytes += b.num_elements;
      }
    }
    // Chunk tasks are appended plane by plane, so the chunks of one table
    // are adjacent (the kernel stages a block's table in shared memory).
    std::vector<ChunkTask> plane_tasks[8];
    for (uint32_t c = 0; c < b.num_chunks; ++c) {
      const uint64_t first = uint64_t{c} * b.chunk_elements;
      const uint32_t count = static_cast<uint32_t>(b.ChunkCount(c));
      MergeTask m;
      m.out_offset = job.out_offset + first * b.width;
      m.count = count;
      m.split = static_cast<uint8_t>(b.split);
      m.width = static_cast<uint8_t>(b.width);
      m.num_planes = static_cast<uint8_t>(np);
      for (size_t p = 0; p < np; ++p) {
        const BlobPlane& plane = b.planes[p];
        const uint64_t begin = plane.chunk_offsets.empty() ? 0 : plane.chunk_offsets[c];
        switch (plane.coder) {
          case PlaneCoder::kRaw:
            m.kind[p] = kSourceInput;
            m.source[p] = job.blob_offset + begin;
            break;
          case PlaneCoder::kConstant:
            m.kind[p] = kSourceConstant;
            m.source[p] = plane.constant;
            break;
          default: {
            ChunkTask t;
            t.in_offset = job.blob_offset + begin;
            t.in_size = static_cast<uint32_t>(plane.chunk_offsets[c + 1] - begin);
            t.count = count;
            t.table = plane_table[p];
            t.target = direct ? kTargetOutput : kTargetScratch;
            t.out_offset = direct ? job.out_offset + first : plane_scratch[p] + first;
            plane_tasks[p].push_back(t);
            m.kind[p] = kSourceScratch;
            m.source[p] = plane_scratch[p] + first;
            break;
          }
        }
      }
      if (!direct) plan.merges.push_back(m);
    }
    for (size_t p = 0; p < np; ++p) {
      plan.chunks.insert(plan.chunks.end(), plane_tasks[p].begin(), plane_tasks[p].end());
    }
  }
  return plan;
}

}  // namespace bigsmall::gpu
