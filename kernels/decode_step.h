// The GPU kernels' code, written once. DecodeChunkFused is the whole body of
// a warp of the decode kernel (decode every plane of a chunk, merge, stage,
// store, checksum); ChecksumWordAt, the verify kernel's; FinishJob, the
// finish kernel's. All are BIGSMALL_HD (__host__ __device__ under nvcc,
// plain inline for the host compiler) and compiled twice: by nvcc in
// gpu_decoder.cu, where a `Warp` is the calling thread's lane of a real warp
// (DeviceWarp, defined there: one register per value, __ballot_sync,
// __shfl_sync, a shared-memory staging slice, 16-byte vector stores), and by
// the host compiler in gpu_emulator.cc with HostWarp below, which holds the
// 32 lanes' values side by side and steps them in lockstep. The emulator
// therefore runs the kernels' own code, so the CPU tests of the emulator
// (kernels/gpu_decoder_test.cc) test the kernels.
//
// A Warp provides:
//   template <class T> using Reg = ...;  one T per lane, indexed reg[lane]
//   ForLanes(f)        f(lane) for each lane this thread holds (GPU: its own)
//   Ballot(Reg<bool>)  bit l set when lane l's value is true (all lanes)
//   Shuffle(v, src, out)  out[l] = v[src[l] & 31] (Reg<uint32_t>s)
//   All(Reg<bool>)     true when every lane's value is true
//   Sum(Reg<uint64_t>) the lanes' sum mod 2^64, on every lane
//   Stage()            this warp's kStageBytes staging buffer (16-aligned)
//   SyncStage()        the warp's stage writes are visible to all its lanes
//   Store16(dst, src)  16 bytes from the stage to 16-aligned dst
// Values outside a Reg (base, pos, wbase, ballots) are warp-uniform: every
// lane computes the same one.
#ifndef BIGSMALL_KERNELS_DECODE_STEP_H_
#define BIGSMALL_KERNELS_DECODE_STEP_H_

#include <cstdint>
#include <cstring>

#include "codec/device_checksum.h"
#include "codec/rans.h"
#include "kernels/warp_rans.h"

namespace bigsmall::gpu {

// ---- The plan image (gpu_decoder.h PlanImage::bytes) ----
inline constexpr uint32_t kPlanMagic = 0x4e4c5042u;  // "BPLN"
inline constexpr uint32_t kPlanVersion = 2;

// At offset 0 of the image; every array offset is a multiple of 16.
struct PlanHeader {
  uint32_t magic = kPlanMagic;
  uint32_t version = kPlanVersion;
  uint32_t num_jobs = 0;
  uint32_t num_chunks = 0;
  uint32_t num_planes = 0;
  uint32_t num_tables = 0;
  uint32_t num_maps = 0;
  uint32_t num_verify = 0;
  uint64_t input_bytes = 0;   // staged input the tasks read: group bytes + prepass region
  uint64_t output_bytes = 0;  // output the tasks write
  uint64_t image_bytes = 0;
  uint64_t jobs = 0;    // JobTask[num_jobs]
  uint64_t chunks = 0;  // ChunkTask[num_chunks], ordered by job
  uint64_t planes = 0;  // PlaneTask[num_planes]
  uint64_t tables = 0;  // uint32_t[num_tables * 4096]
  uint64_t maps = 0;    // uint8_t[num_maps * 256]
  uint64_t verify = 0;  // uint32_t[num_verify]: jobs the verify kernel sums
  // Chunk tasks are grouped by plane-count class (kNpClasses: at most 1, 2,
  // 4, 8 planes; one kernel instantiation each, so a bf16 warp does not pay
  // an fp64 warp's registers): class c is chunks [class_end[c-1], class_end[c]),
  // ordered by job within the class.
  uint32_t class_end[4] = {};
  uint64_t reserved[1] = {};
};
static_assert(sizeof(PlanHeader) == 128, "plan image layout");

// ---- The results buffer (DecodeLaunch::results) ----
// [0, 16): DecodeResults (4 x u32); then num_jobs u64 finished checksums;
// then num_jobs u64 checksum sums (the kernels' accumulators).
inline constexpr uint64_t kResultsHeaderBytes = 16;
BIGSMALL_HD uint64_t ResultsBytes(uint64_t num_jobs) { return kResultsHeaderBytes + 16 * num_jobs; }
BIGSMALL_HD uint64_t FinishedOffset(uint64_t job) { return kResultsHeaderBytes + 8 * job; }
BIGSMALL_HD uint64_t SumOffset(uint64_t num_jobs, uint64_t job) {
  return kResultsHeaderBytes + 8 * num_jobs + 8 * job;
}

// Staging buffer per warp: merged bytes are written here lane by lane,
// then stored to the output 16 bytes per lane.
inline constexpr uint32_t kStageBytes = 512;

// Plane-count classes of chunk tasks and the compile-time plane bound of each.
inline constexpr int kNumNpClasses = 4;
inline constexpr int kNpClasses[kNumNpClasses] = {1, 2, 4, 8};
BIGSMALL_HD int NpClass(uint32_t num_planes) {
  return num_planes <= 1 ? 0 : num_planes <= 2 ? 1 : num_planes <= 4 ? 2 : 3;
}

// A chunk stream must hold the 32 lane states and whole 16-bit words.
BIGSMALL_HD bool ChunkSizeValid(uint32_t in_size) {
  return in_size >= rans::kChunkHeaderBytes && (in_size & 1u) == 0;
}

BIGSMALL_HD bool IsRans(uint8_t kind) { return kind == kPlaneRans || kind == kPlaneRansConditional; }

// Little-endian word of `valid` (1..8) bytes at p, zero-padded.
BIGSMALL_HD uint64_t LoadWordPadded(const uint8_t* p, uint32_t valid) {
  uint64_t w = 0;
  for (uint32_t b = 0; b < 8; ++b) {
    if (b < valid) w |= uint64_t{p[b]} << (8 * b);
  }
  return w;
}

// The checksum term of word k of a tensor of `size` bytes at `data` (the
// verify kernel: each thread sums the terms of the words it is given).
BIGSMALL_HD uint64_t ChecksumWordAt(const uint8_t* data, uint64_t size, uint64_t k) {
  const uint64_t off = 8 * k;
  const uint64_t rest = size - off;
  return ChecksumTerm(k, LoadWordPadded(data + off, rest < 8 ? static_cast<uint32_t>(rest) : 8u));
}

struct ChunkResult {
  bool ok = false;
  uint64_t sum = 0;  // checksum terms of the written bytes (when the task asks)
};

// Writes one merged element into the stage (offsets are multiples of width).
BIGSMALL_HD void StageElement(uint8_t* dst, uint64_t bits, uint32_t width) {
#if defined(__CUDA_ARCH__)
  switch (width) {
    case 1: *dst = static_cast<uint8_t>(bits); return;
    case 2: *reinterpret_cast<uint16_t*>(dst) = static_cast<uint16_t>(bits); return;
    case 4: *reinterpret_cast<uint32_t*>(dst) = static_cast<uint32_t>(bits); return;
    case 8: *reinterpret_cast<uint64_t*>(dst) = bits; return;
    default: break;
  }
#endif
  for (uint32_t b = 0; b < width; ++b) dst[b] = static_cast<uint8_t>(bits >> (8 * b));
}

// Decodes chunk task `t` on one warp (NP >= t.num_planes, a compile-time
// bound so the per-plane state lives in registers): `planes` are its
// t.num_planes plane tasks, `tables[p]` plane p's decode table (kPlaneRans)
// or its first table (conditional: symbol i uses tables[p] + 4096 *
// maps[p][context byte i]), `out` = output + t.out_offset. Returns ok=false
// (on every lane) when a stream is corrupt: a bad size, a word read past the
// end, final states other than the initial ones, unused words. The output
// of a corrupt chunk is garbage (but written only inside the chunk).
template <int NP, class Warp>
BIGSMALL_HD ChunkResult DecodeChunkFused(Warp& warp, const ChunkTask& t, const PlaneTask* planes,
                                         const uint8_t* input, const uint32_t* const* tables,
                                         const uint8_t* const* maps, uint8_t* out) {
  using U32 = typename Warp::template Reg<uint32_t>;
  using U64 = typename Warp::template Reg<uint64_t>;
  using Bool = typename Warp::template Reg<bool>;
  ChunkResult result;
  const uint32_t np = t.num_planes;
  const uint32_t count = t.count;
  const uint32_t width = t.width;
  const bool checksum = (t.flags & kChunkChecksum) != 0;
  U32 x[NP], w0[NP], w1[NP], sym[NP], k, src, v0, v1;
  Bool need, ok;
  U64 sum;
  uint32_t wbase[NP], pos[NP], num_words[NP];
  const uint8_t* data[NP];
  uint8_t kind[NP], context[NP];
BIGSMALL_UNROLL
  for (int p = 0; p < NP; ++p) {
    wbase[p] = 0;
    pos[p] = 0;
    num_words[p] = 0;
    kind[p] = kPlaneConstant;
    context[p] = 0;
    data[p] = nullptr;
    if (p >= static_cast<int>(np)) continue;
    kind[p] = planes[p].kind;
    context[p] = planes[p].context;
    data[p] = input + planes[p].source;
    if (IsRans(kind[p])) {
      if (!ChunkSizeValid(planes[p].in_size)) return result;
      num_words[p] = (planes[p].in_size - rans::kChunkHeaderBytes) / 2;
    }
  }
  warp.ForLanes([&](uint32_t l) {
    ok[l] = true;
    sum[l] = 0;
BIGSMALL_UNROLL
    for (int p = 0; p < NP; ++p) {
      sym[p][l] = p < static_cast<int>(np) && kind[p] == kPlaneConstant ? planes[p].value : 0u;
      if (!IsRans(kind[p])) continue;
      const uint8_t* words = data[p] + rans::kChunkHeaderBytes;
      x[p][l] = LoadU32(data[p] + 4 * l);
      w0[p][l] = l < num_words[p] ? LoadWord(words, l) : 0u;
      w1[p][l] = 32 + l < num_words[p] ? LoadWord(words, 32 + l) : 0u;
    }
  });
  uint8_t* stage = warp.Stage();
  const uint32_t per_flush = rans::kLanes * (kStageBytes / rans::kLanes / width);  // elements
  uint32_t flush_base = 0;
  for (uint32_t base = 0; base < count; base += rans::kLanes) {
BIGSMALL_UNROLL
    for (int p = 0; p < NP; ++p) {
      if (p >= static_cast<int>(np)) continue;
      if (kind[p] == kPlaneRaw) {
        warp.ForLanes([&](uint32_t l) { sym[p][l] = base + l < count ? data[p][base + l] : 0u; });
        continue;
      }
      if (!IsRans(kind[p])) continue;  // constant: set once
      const bool conditional = kind[p] == kPlaneRansConditional;
      warp.ForLanes([&](uint32_t l) {
        const uint32_t* table = tables[p];
        if (conditional) {
          uint32_t c = 0;
BIGSMALL_UNROLL
          for (int q = 0; q < NP; ++q) {
            if (q == context[p]) c = sym[q][l];
          }
          table += uint64_t{maps[p][c]} * rans::kProbScale;
        }
        uint32_t s = 0;
        need[l] = LaneDecode(x[p][l], base + l < count, table, &s);
        sym[p][l] = s;
      });
      const uint32_t ballot = warp.Ballot(need);
      if (ballot == 0) continue;
      warp.ForLanes([&](uint32_t l) {
        k[l] = pos[p] + PopCount(ballot & ((1u << l) - 1u));
        src[l] = (k[l] - wbase[p]) & 31u;  // k - wbase < 64
      });
      warp.Shuffle(w0[p], src, v0);
      warp.Shuffle(w1[p], src, v1);
      warp.ForLanes([&](uint32_t l) {
        if (need[l]) {
          ok[l] = ok[l] && k[l] < num_words[p];
          x[p][l] = (x[p][l] << rans::kWordBits) | (k[l] - wbase[p] < 32 ? v0[l] : v1[l]);
        }
      });
      pos[p] += PopCount(ballot);
      if (pos[p] - wbase[p] >= 32) {
        wbase[p] += 32;
        const uint8_t* words = data[p] + rans::kChunkHeaderBytes;
        warp.ForLanes([&](uint32_t l) {
          w0[p][l] = w1[p][l];
          const uint32_t next = wbase[p] + 32 + l;
          w1[p][l] = next < num_words[p] ? LoadWord(words, next) : 0u;
        });
      }
    }
    // Merge each lane's element in registers, into the stage.
    warp.ForLanes([&](uint32_t l) {
      const uint32_t i = base + l;
      if (i >= count) return;
      const uint64_t bits = MergeElementBits<NP>(t.split, t.width, [&](int q) -> uint32_t {
        uint32_t b = 0;
BIGSMALL_UNROLL
        for (int r = 0; r < NP; ++r) {
          if (r == q) b = sym[r][l];
        }
        return b & 0xffu;
      });
      StageElement(stage + (i - flush_base) * width, bits, width);
    });
    const uint32_t end = base + rans::kLanes < count ? base + rans::kLanes : count;
    if (end - flush_base < per_flush && end < count) continue;
    // Flush: lane l stores bytes [16 l, 16 l + 16) of the stage.
    warp.SyncStage();
    const uint32_t n_bytes = (end - flush_base) * width;
    uint8_t* dst = out + uint64_t{flush_base} * width;
    const bool vector = (reinterpret_cast<uintptr_t>(dst) & 15u) == 0;
    const uint64_t first_word = (t.tensor_offset + uint64_t{flush_base} * width) / 8;
    warp.ForLanes([&](uint32_t l) {
      const uint32_t piece = 16 * l;
      if (piece >= n_bytes) return;
      if (vector && piece + 16 <= n_bytes) {
        warp.Store16(dst + piece, stage + piece);
      } else {
        const uint32_t stop = piece + 16 < n_bytes ? piece + 16 : n_bytes;
        for (uint32_t b = piece; b < stop; ++b) dst[b] = stage[b];
      }
      if (!checksum) return;
      for (uint32_t h = piece; h < piece + 16 && h < n_bytes; h += 8) {
        const uint32_t valid = n_bytes - h < 8 ? n_bytes - h : 8u;
        sum[l] += ChecksumTerm(first_word + h / 8, LoadWordPadded(stage + h, valid));
      }
    });
    warp.SyncStage();
    flush_base = end;
  }
BIGSMALL_UNROLL
  for (int p = 0; p < NP; ++p) {
    if (!IsRans(kind[p])) continue;
    warp.ForLanes([&](uint32_t l) { ok[l] = ok[l] && x[p][l] == rans::kRansLow && pos[p] == num_words[p]; });
  }
  result.ok = warp.All(ok);
  result.sum = warp.Sum(sum);
  return result;
}

// The finish kernel's step for job j: finished checksum and verdict. The
// caller records a mismatch (an atomic on the GPU).
BIGSMALL_HD bool FinishJob(const JobTask& job, uint64_t sum, uint64_t* finished) {
  if ((job.flags & kJobHasChecksum) == 0) {
    *finished = 0;
    return true;
  }
  *finished = ChecksumFinish(sum, job.out_size);
  return *finished == job.expected;
}

// The 32 lanes of one warp on the CPU, stepped in lockstep.
struct HostWarp {
  template <class T>
  struct Reg {
    T v[rans::kLanes];
    T& operator[](uint32_t l) { return v[l]; }
    const T& operator[](uint32_t l) const { return v[l]; }
  };
  template <class F>
  void ForLanes(F&& f) {
    for (uint32_t l = 0; l < rans::kLanes; ++l) f(l);
  }
  uint32_t Ballot(const Reg<bool>& b) const {
    uint32_t bits = 0;
    for (uint32_t l = 0; l < rans::kLanes; ++l) bits |= uint32_t{b[l]} << l;
    return bits;
  }
  void Shuffle(const Reg<uint32_t>& v, const Reg<uint32_t>& src, Reg<uint32_t>& out) const {
    for (uint32_t l = 0; l < rans::kLanes; ++l) out[l] = v[src[l] & 31u];
  }
  bool All(const Reg<bool>& b) const {
    bool all = true;
    for (uint32_t l = 0; l < rans::kLanes; ++l) all = all && b[l];
    return all;
  }
  uint64_t Sum(const Reg<uint64_t>& s) const {
    uint64_t total = 0;
    for (uint32_t l = 0; l < rans::kLanes; ++l) total += s[l];
    return total;
  }
  uint8_t* Stage() { return stage; }
  void SyncStage() {}
  void Store16(uint8_t* dst, const uint8_t* src) { std::memcpy(dst, src, 16); }
  alignas(16) uint8_t stage[kStageBytes];
};

}  // namespace bigsmall::gpu

#endif  // BIGSMALL_KERNELS_DECODE_STEP_H_
