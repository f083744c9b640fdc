// The GPU decode's task records and lane functions, plain data and
// BIGSMALL_HD code shared by the planner (gpu_plan.cc), the CUDA kernels
// (gpu_decoder.cu) and their CPU emulator (gpu_emulator.cc).
//
// Work unit: one ChunkTask = one chunk of elements of one tensor, all its
// planes (docs/ARCHITECTURE.md "GPU decode"). One warp decodes the planes
// of the chunk in lockstep (32 elements at a time: lane l owns element
// base + l in every plane), merges the plane bytes of each element in
// registers, stages the merged bytes in shared memory and writes them with
// 16-byte stores, adding the device checksum terms of what it writes.
//
// Warp schedule of one rANS plane (docs/FORMAT.md §6): lane l holds state
// x[l]; for each group of 32 symbols every lane decodes its symbol, the lanes
// whose state fell below 2^16 form a ballot, and lane l takes word
// pos + popcount(ballot & lanes_below(l)); pos advances by popcount(ballot).
// That is exactly the order the reference decoder consumes words in.
#ifndef BIGSMALL_KERNELS_WARP_RANS_H_
#define BIGSMALL_KERNELS_WARP_RANS_H_

#include <cstdint>

#include "codec/rans.h"

#if defined(__CUDA_ARCH__)
#define BIGSMALL_UNROLL _Pragma("unroll")
#else
#define BIGSMALL_UNROLL
#endif

namespace bigsmall::gpu {

// How a ChunkTask gets one plane's bytes.
inline constexpr uint8_t kPlaneRaw = 0;       // bytes at input + source (raw, or zstd decoded by the host prepass)
inline constexpr uint8_t kPlaneConstant = 1;  // every byte = value
inline constexpr uint8_t kPlaneRans = 2;      // rANS stream at input + source, table `table`
// rANS stream whose symbol i uses table `table + map[context plane byte i]`.
inline constexpr uint8_t kPlaneRansConditional = 3;

// One plane of one chunk (32 bytes, part of the plan image).
struct PlaneTask {
  uint64_t source = 0;      // raw: input offset of the chunk's plane bytes; rANS: of its stream
  uint32_t in_size = 0;     // rANS: stream bytes
  uint32_t table = 0;       // rANS: decode table index (4096 slots each); conditional: its first table
  uint32_t num_tables = 0;  // conditional: tables it may select (every map entry is below)
  uint32_t map = 0;         // conditional: context map index (256 bytes each)
  uint8_t kind = kPlaneRaw;
  uint8_t value = 0;    // constant
  uint8_t context = 0;  // conditional: the context plane, < this plane's index, never conditional
  uint8_t reserved[5] = {};
};
static_assert(sizeof(PlaneTask) == 32, "plan image layout");

// ChunkTask::flags
inline constexpr uint8_t kChunkChecksum = 1;  // add the checksum terms of the written bytes to the job's sum

// One chunk of elements of one tensor (32 bytes, part of the plan image).
struct ChunkTask {
  uint64_t out_offset = 0;     // bytes into the output buffer
  uint64_t tensor_offset = 0;  // bytes into its tensor (the checksum's word positions)
  uint32_t count = 0;          // elements, <= 2^24
  uint32_t job = 0;            // the tensor job it belongs to
  uint32_t first_plane = 0;    // its planes are planes[first_plane, first_plane + num_planes)
  uint8_t split = 0;           // PlaneSplit
  uint8_t width = 1;           // bytes per element, 1..8
  uint8_t num_planes = 1;      // 1..8
  uint8_t flags = 0;
};
static_assert(sizeof(ChunkTask) == 32, "plan image layout");

// JobTask::flags
inline constexpr uint32_t kJobHasChecksum = 1;     // compare with `expected` on the device
inline constexpr uint32_t kJobInlineChecksum = 2;  // the decode kernel sums it (else the verify kernel)

// One tensor (32 bytes, part of the plan image).
struct JobTask {
  uint64_t out_offset = 0;
  uint64_t out_size = 0;
  uint64_t expected = 0;  // device checksum (codec/device_checksum.h)
  uint32_t flags = 0;
  uint32_t reserved = 0;
};
static_assert(sizeof(JobTask) == 32, "plan image layout");

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
BIGSMALL_HD bool LaneDecode(uint32_t& x, bool active, const uint32_t* table, uint32_t* out_symbol) {
  if (!active) return false;
  const uint32_t slot = table[x & (rans::kProbScale - 1)];
  *out_symbol = rans::SlotSymbol(slot);
  x = rans::DecodeAdvance(x, slot);
  return x < rans::kRansLow;
}

// One element rebuilt from its plane bytes v(0..num_planes) (docs/FORMAT.md
// §4), as a little-endian value of `width` bytes. `v(p)` gives plane p's
// byte (a register on the GPU; NP bounds p at compile time).
template <int NP, class V>
BIGSMALL_HD uint64_t MergeElementBits(uint8_t split, uint8_t width, V&& v) {
  if (split == 1) {  // bf16
    const uint32_t s = v(1);
    return ((s & 0x80u) << 8) | (uint32_t{v(0)} << 7) | (s & 0x7fu);
  }
  if (split == 2) {  // fp32
    const uint32_t s = v(1);
    return ((s & 0x80u) << 24) | (uint32_t{v(0)} << 23) | ((s & 0x7fu) << 16) | (uint32_t{v(2)} << 8) | v(3);
  }
  uint64_t bits = 0;  // bytes: plane p holds byte width-1-p
  BIGSMALL_UNROLL
  for (int p = 0; p < NP; ++p) {
    if (p < width) bits |= uint64_t{v(p)} << (8 * (width - 1 - p));
  }
  return bits;
}

// The same from an array of plane bytes, into `width` bytes at out.
BIGSMALL_HD void MergeElement(uint8_t split, uint8_t width, const uint8_t* v, uint8_t* out) {
  const uint64_t bits = MergeElementBits<8>(split, width, [&](int p) -> uint32_t { return p < 8 ? v[p] : 0u; });
  for (uint32_t b = 0; b < width; ++b) out[b] = static_cast<uint8_t>(bits >> (8 * b));
}

}  // namespace bigsmall::gpu

#endif  // BIGSMALL_KERNELS_WARP_RANS_H_
