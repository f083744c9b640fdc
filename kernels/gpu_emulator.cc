// CPU emulation of the GPU kernels: the same tasks and the kernels' own
// decode loops (kernels/decode_step.h), with the 32 lanes of a warp held side
// by side and stepped in lockstep (HostWarp).
#include <cstring>

#include "absl/strings/str_cat.h"
#include "codec/status_macros.h"
#include "codec/tensor_codec.h"
#include "kernels/decode_step.h"
#include "kernels/gpu_decoder.h"

namespace bigsmall::gpu {
namespace {

absl::Status EmulateChunk(const uint8_t* input, const ChunkTask& t, const uint32_t* table, uint8_t* out) {
  if (!ChunkSizeValid(t.in_size)) return absl::DataLossError("rANS chunk corrupt: bad chunk size");
  HostWarp warp;
  if (!DecodeChunkOnWarp(warp, input + t.in_offset, t.in_size, t.count, table, out)) {
    return absl::DataLossError("rANS chunk corrupt (GPU schedule)");
  }
  return absl::OkStatus();
}

void EmulateMerge(const uint8_t* input, const uint8_t* scratch, const MergeTask& m, uint8_t* output) {
  for (uint32_t k = 0; k < m.count; ++k) MergeTaskElement(m, k, input, scratch, output);
}

}  // namespace

absl::Status EmulateDecode(absl::Span<const uint8_t> input, const std::vector<TensorJob>& jobs,
                           const DecodePlan& plan, absl::Span<uint8_t> output) {
  if (output.size() < plan.output_bytes) return absl::InvalidArgumentError("output buffer too small");
  std::vector<uint8_t> scratch(plan.scratch_bytes);
  for (const ChunkTask& t : plan.chunks) {
    uint8_t* target = t.target == kTargetOutput ? output.data() : scratch.data();
    RETURN_IF_ERROR(EmulateChunk(input.data(), t, plan.tables.data() + uint64_t{t.table} * rans::kProbScale,
                                 target + t.out_offset));
  }
  for (const MergeTask& m : plan.merges) EmulateMerge(input.data(), scratch.data(), m, output.data());
  for (uint32_t j : plan.cpu_fallback) {
    const TensorJob& job = jobs[j];
    RETURN_IF_ERROR(DecodeTensorBlob(input.subspan(job.blob_offset, job.blob_size),
                                     output.subspan(job.out_offset, job.out_size)));
  }
  return absl::OkStatus();
}

}  // namespace bigsmall::gpu
