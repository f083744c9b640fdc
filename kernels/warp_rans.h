// The GPU decode algorithm, written once as host+device functions: the CUDA
// kernels (gpu_decoder.cu) run them with one warp per rANS chunk, and the CPU
// emulator (gpu_emulator.cc) runs the very same steps with an explicit lane
// loop, so the kernels' logic is tested on machines without a GPU.
//
// Warp schedule for one chunk (docs/FORMAT.md §6): lane l holds state x[l];
// for each group of 32 symbols every lane decodes its symbol, the lanes whose
// state fell below 2^16 form a ballot, and lane l takes word
// pos + popcount(ballot & lanes_below(l)); pos advances by popcount(ballot).
// That is exactly the order the reference decoder consumes words in. The
// kernel reads words from a two-window register cache (32 words per window,
// one lane each, refilled a window ahead) with shuffles; the emulator mirrors
// that cache lane by lane.
#ifndef BIGSMALL_KERNELS_WARP_RANS_H_
#define BIGSMALL_KERNELS_WARP_RANS_H_

#include <cstdint>

#include "codec/rans.h"

namespace bigsmall::gpu {

// One rANS chunk of one plane.
struct ChunkTask {
  uint64_t in_offset = 0;   // chunk stream, bytes into the input (group) buffer
  uint64_t out_offset = 0;  // where its symbols go, bytes into the target buffer
  uint32_t in_size = 0;     // stream bytes
  uint32_t count = 0;       // symbols
  uint32_t table = 0;       // decode table index (4096 slots each)
  uint32_t target = 0;      // kTargetScratch or kTargetOutput
};

inline constexpr uint32_t kTargetScratch = 0;
inline constexpr uint32_t kTargetOutput = 1;

// Where a merge reads a plane from.
inline constexpr uint8_t kSourceInput = 0;     // raw plane bytes in the input buffer
inline constexpr uint8_t kSourceScratch = 1;   // decoded plane in scratch
inline constexpr uint8_t kSourceConstant = 2;  // every byte = source[p] (the value)

// Rebuilds `count` elements of one chunk from its planes (up to 8: FP64/I64).
struct MergeTask {
  uint64_t out_offset = 0;  // bytes into the output buffer
  uint64_t source[8] = {};
  uint32_t count = 0;  // elements
  uint8_t split = 0;   // PlaneSplit
  uint8_t width = 1;
  uint8_t num_planes = 1;
  uint8_t kind[8] = {};
};

BIGSMALL_HD uint32_t LoadU32(const uint8_t* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}
BIGSMALL_HD uint32_t LoadWord(const uint8_t* words, uint32_t k) {
  return uint32_t{words[2 * k]} | (uint32_t{words[2 * k + 1]} << 8);
}

BIGSMALL_HD uint32_t PopCount(uint32_t v) {
#if defined(__CUDA_ARCH__)
  return __popc(v);
#else
  return static_cast<uint32_t>(__builtin_popcount(v));
#endif
}

// Lane step: decode this lane's symbol (if active); returns whether the lane
// needs a renormalisation word.
BIGSMALL_HD bool LaneDecode(uint32_t& x, bool active, const uint32_t* table, uint8_t* out_symbol) {
  if (!active) return false;
  const uint32_t slot = table[x & (rans::kProbScale - 1)];
  *out_symbol = static_cast<uint8_t>(rans::SlotSymbol(slot));
  x = rans::DecodeAdvance(x, slot);
  return x < rans::kRansLow;
}

// Byte b of element k, rebuilt from its plane bytes v[0..num_planes).
BIGSMALL_HD void MergeElement(uint8_t split, uint8_t width, const uint8_t* v, uint8_t* out) {
  if (split == 1) {  // bf16
    const uint32_t s = v[1];
    const uint32_t e = v[0];
    const uint32_t bits = ((s & 0x80u) << 8) | (e << 7) | (s & 0x7fu);
    out[0] = static_cast<uint8_t>(bits);
    out[1] = static_cast<uint8_t>(bits >> 8);
  } else if (split == 2) {  // fp32
    const uint32_t s = v[1];
    const uint32_t bits = ((s & 0x80u) << 24) | (uint32_t{v[0]} << 23) | ((s & 0x7fu) << 16) |
                          (uint32_t{v[2]} << 8) | v[3];
    out[0] = static_cast<uint8_t>(bits);
    out[1] = static_cast<uint8_t>(bits >> 8);
    out[2] = static_cast<uint8_t>(bits >> 16);
    out[3] = static_cast<uint8_t>(bits >> 24);
  } else {  // bytes: plane p holds byte width-1-p
    for (uint32_t p = 0; p < width; ++p) out[width - 1 - p] = v[p];
  }
}

}  // namespace bigsmall::gpu

#endif  // BIGSMALL_KERNELS_WARP_RANS_H_
