// CPU emulation of the GPU kernels: same tasks, same lane functions, lanes
// stepped in lockstep with an explicit ballot.
#include <cstring>

#include "absl/strings/str_cat.h"
#include "codec/status_macros.h"
#include "codec/tensor_codec.h"
#include "kernels/gpu_decoder.h"

namespace bigsmall::gpu {
namespace {

absl::Status EmulateChunk(const uint8_t* input, const ChunkTask& t, const uint32_t* table, uint8_t* out) {
  const uint8_t* chunk = input + t.in_offset;
  if (t.in_size < rans::kChunkHeaderBytes || (t.in_size & 1u)) {
    return absl::DataLossError("rANS chunk corrupt: bad chunk size");
  }
  const uint8_t* words = chunk + rans::kChunkHeaderBytes;
  const uint32_t num_words = (t.in_size - rans::kChunkHeaderBytes) / 2;
  // Mirrors RansChunkKernel step for step, including its two-window word
  // cache (w0/w1 per lane) and the shuffles that read it.
  auto load = [&](uint32_t k) { return k < num_words ? LoadWord(words, k) : 0u; };
  uint32_t x[rans::kLanes], w0[rans::kLanes], w1[rans::kLanes];
  for (uint32_t l = 0; l < rans::kLanes; ++l) {
    x[l] = LoadU32(chunk + 4 * l);
    w0[l] = load(l);
    w1[l] = load(32 + l);
  }
  uint32_t wbase = 0;
  uint32_t pos = 0;
  bool bad = false;
  for (uint32_t base = 0; base < t.count; base += rans::kLanes) {
    bool need[rans::kLanes];
    uint32_t ballot = 0;
    for (uint32_t l = 0; l < rans::kLanes; ++l) {
      const uint32_t i = base + l;
      need[l] = LaneDecode(x[l], i < t.count, table, out + i);
      ballot |= uint32_t{need[l]} << l;
    }
    for (uint32_t l = 0; l < rans::kLanes; ++l) {
      const uint32_t k = pos + PopCount(ballot & ((1u << l) - 1u));
      const uint32_t rel = k - wbase;
      const uint32_t v0 = w0[rel & 31u];  // __shfl_sync(w0, rel & 31)
      const uint32_t v1 = w1[rel & 31u];
      if (need[l]) {
        bad |= k >= num_words;
        x[l] = (x[l] << rans::kWordBits) | (rel < 32 ? v0 : v1);
      }
    }
    pos += PopCount(ballot);
    if (pos - wbase >= 32) {
      wbase += 32;
      for (uint32_t l = 0; l < rans::kLanes; ++l) {
        w0[l] = w1[l];
        w1[l] = load(wbase + 32 + l);
      }
    }
  }
  for (uint32_t l = 0; l < rans::kLanes; ++l) bad |= x[l] != rans::kRansLow;
  bad |= pos != num_words;
  if (bad) return absl::DataLossError("rANS chunk corrupt (GPU schedule)");
  return absl::OkStatus();
}

void EmulateMerge(const uint8_t* input, const uint8_t* scratch, const MergeTask& m, uint8_t* output) {
  for (uint32_t k = 0; k < m.count; ++k) {
    uint8_t v[8];
    for (uint32_t p = 0; p < m.num_planes; ++p) {
      switch (m.kind[p]) {
        case kSourceInput: v[p] = input[m.source[p] + k]; break;
        case kSourceScratch: v[p] = scratch[m.source[p] + k]; break;
        default: v[p] = static_cast<uint8_t>(m.source[p]); break;
      }
    }
    MergeElement(m.split, m.width, v, output + m.out_offset + uint64_t{k} * m.width);
  }
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
