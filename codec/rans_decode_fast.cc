// Fast rANS chunk decoders: an unrolled scalar decoder and AVX2 / AVX-512
// decoders picked at run time (the binary's baseline stays x86-64, so it
// runs on any CPU). All follow the schedule of the reference decoder in
// rans_decode.cc and must produce identical bytes and identical verdicts.
//
// Every decoder runs whole groups of 32 symbols on a fast path while at least
// 32 words remain (a group consumes at most 32), and hands the states to the
// checked scalar loop for the tail.
//
// Each decoder comes in two flavours: order-0 (one table) and conditional
// (symbol i uses tables[context_map[context[i]]], docs/FORMAT.md §5.1). The
// tables of a conditional plane lie back to back (DecodeTable is exactly
// kProbScale u32), so symbol i's slot is base[(table << 12) | (x & 4095)]:
// the SIMD decoders fetch (table << 12) for 16 (8) contexts with one gather
// from a 256-entry u32 map, off the state's dependency chain, and OR it into
// the slot index.
//
// One chunk has only 32 lanes, i.e. two (AVX-512) or four (AVX2) dependency
// chains of gather -> multiply -> renormalise, so a single stream is bound by
// latency, not throughput. DecodeChunkPair interleaves two independent
// streams (two planes of one chunk) to fill the gaps.
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "codec/byte_io.h"
#include "codec/rans_decode.h"
#include "codec/status_macros.h"

#if defined(__x86_64__)
// GCC 12 reports the _mm512_undefined_epi32() pass-through operand of
// AVX-512 intrinsics as "may be used uninitialized" once they are inlined
// into templates (GCC bug 105593); the operand is never read.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#endif

namespace bigsmall::rans {
namespace {

static_assert(sizeof(DecodeTable) == kProbScale * sizeof(uint32_t),
              "conditional decoders index tables back to back");

absl::Status StreamError(const char* what) {
  return absl::DataLossError(absl::StrCat("rANS chunk corrupt: ", what));
}

struct ChunkCursor {
  uint32_t x[kLanes];
  const uint8_t* words;
  size_t num_words;
  size_t next = 0;
};

absl::Status OpenChunk(absl::Span<const uint8_t> chunk, ChunkCursor* c) {
  if (chunk.size() < kChunkHeaderBytes || (chunk.size() - kChunkHeaderBytes) % 2 != 0) {
    return StreamError("bad chunk size");
  }
  for (int l = 0; l < kLanes; ++l) c->x[l] = LoadLe32(chunk.data() + 4 * l);
  c->words = chunk.data() + kChunkHeaderBytes;
  c->num_words = (chunk.size() - kChunkHeaderBytes) / 2;
  return absl::OkStatus();
}

// What a decoder needs to find symbol i's slot: slots[offset(i) | (x & 4095)].
// map32 == nullptr: order-0 (offset 0); otherwise offset(i) = map32[context[i]]
// with map32[c] = context_map[c] << kProbBits.
struct Lookup {
  const uint32_t* slots;
  const uint32_t* map32 = nullptr;
  const uint8_t* context = nullptr;
  uint32_t Offset(size_t i) const { return map32 == nullptr ? 0 : map32[context[i]]; }
};

// One chunk in flight: its lookup, its cursor and its output.
struct Job {
  Lookup lookup;
  ChunkCursor cursor;
  absl::Span<uint8_t> out;
  const uint8_t* map8 = nullptr;  // the context map (256 bytes)
  alignas(64) uint32_t map32[256];
};

// Sets up job (map32 from context_map when conditional).
absl::Status OpenJob(const ChunkJob& in, Job* job) {
  RETURN_IF_ERROR(CheckChunkJob(in));
  RETURN_IF_ERROR(OpenChunk(in.chunk, &job->cursor));
  job->out = in.out;
  job->lookup.slots = in.tables[0].slot.data();
  if (in.context_map != nullptr) {
    for (int c = 0; c < 256; ++c) job->map32[c] = uint32_t{in.context_map[c]} << kProbBits;
    job->lookup.map32 = job->map32;
    job->map8 = in.context_map;
    job->lookup.context = in.context.data();
  }
  return absl::OkStatus();
}

// Checked scalar loop for symbols [i, out.size()), then the end-of-chunk checks.
absl::Status FinishChunk(const Lookup& t, ChunkCursor* c, size_t i, absl::Span<uint8_t> out) {
  for (; i < out.size(); ++i) {
    const int lane = static_cast<int>(i % kLanes);
    const uint32_t slot = t.slots[t.Offset(i) | (c->x[lane] & (kProbScale - 1))];
    out[i] = static_cast<uint8_t>(SlotSymbol(slot));
    uint32_t x = DecodeAdvance(c->x[lane], slot);
    if (x < kRansLow) {
      if (c->next == c->num_words) return StreamError("ran out of words");
      x = (x << kWordBits) | LoadLe16(c->words + 2 * c->next);
      ++c->next;
    }
    c->x[lane] = x;
  }
  if (c->next != c->num_words) return StreamError("words left over");
  for (int l = 0; l < kLanes; ++l) {
    if (c->x[l] != kRansLow) return StreamError("final state mismatch");
  }
  return absl::OkStatus();
}

template <bool kCond>
absl::Status DecodeScalarT(Job& job) {
  ChunkCursor& c = job.cursor;
  const Lookup& t = job.lookup;
  const size_t groups = job.out.size() / kLanes;
  size_t g = 0;
  for (; g < groups && c.num_words - c.next >= kLanes; ++g) {
    uint8_t* o = job.out.data() + g * kLanes;
    const uint8_t* ctx = kCond ? t.context + g * kLanes : nullptr;
    const uint8_t* w = c.words + 2 * c.next;
    size_t used = 0;
    for (int l = 0; l < kLanes; ++l) {
      const uint32_t off = kCond ? t.map32[ctx[l]] : 0;
      const uint32_t slot = t.slots[off | (c.x[l] & (kProbScale - 1))];
      o[l] = static_cast<uint8_t>(slot);
      uint32_t x = DecodeAdvance(c.x[l], slot);
      const bool renorm = x < kRansLow;
      const uint32_t word = LoadLe16(w + 2 * used);
      x = renorm ? (x << kWordBits) | word : x;
      used += renorm;
      c.x[l] = x;
    }
    c.next += used;
  }
  return FinishChunk(t, &c, g * kLanes, job.out);
}

absl::Status DecodeScalarJob(Job& job) {
  return job.lookup.map32 == nullptr ? DecodeScalarT<false>(job) : DecodeScalarT<true>(job);
}

ChunkJob PlainJob(const DecodeTable& table, absl::Span<const uint8_t> chunk, absl::Span<uint8_t> out) {
  ChunkJob j;
  j.tables = &table;
  j.num_tables = 1;
  j.chunk = chunk;
  j.out = out;
  return j;
}

ChunkJob ConditionalJob(const DecodeTable* tables, size_t num_tables, const uint8_t* context_map,
                        absl::Span<const uint8_t> context, absl::Span<const uint8_t> chunk,
                        absl::Span<uint8_t> out) {
  ChunkJob j;
  j.tables = tables;
  j.num_tables = num_tables;
  j.context_map = context_map;
  j.context = context;
  j.chunk = chunk;
  j.out = out;
  return j;
}

}  // namespace

absl::Status DecodeChunkScalar(const DecodeTable& table, absl::Span<const uint8_t> chunk,
                               absl::Span<uint8_t> out) {
  Job job;
  RETURN_IF_ERROR(OpenJob(PlainJob(table, chunk, out), &job));
  return DecodeScalarJob(job);
}

absl::Status DecodeChunkConditionalScalar(const DecodeTable* tables, size_t num_tables,
                                          const uint8_t* context_map, absl::Span<const uint8_t> context,
                                          absl::Span<const uint8_t> chunk, absl::Span<uint8_t> out) {
  Job job;
  RETURN_IF_ERROR(OpenJob(ConditionalJob(tables, num_tables, context_map, context, chunk, out), &job));
  return DecodeScalarJob(job);
}

#if defined(__x86_64__)

bool CpuHasAvx2() { return __builtin_cpu_supports("avx2"); }
bool CpuHasAvx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}
bool CpuHasAvx512Vbmi() { return CpuHasAvx512() && __builtin_cpu_supports("avx512vbmi"); }

#define BIGSMALL_AVX2 __attribute__((target("avx2")))
#define BIGSMALL_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define BIGSMALL_INLINE inline __attribute__((always_inline))

namespace {

// ---------------------------------------------------------------- AVX2 ----

// For an 8-lane mask m: lane k takes word rank(k) = popcount(m & ((1<<k)-1)).
struct ExpandTable {
  alignas(32) int32_t idx[256][8];
  ExpandTable() {
    for (int m = 0; m < 256; ++m) {
      int r = 0;
      for (int k = 0; k < 8; ++k) {
        idx[m][k] = r;
        r += (m >> k) & 1;
      }
    }
  }
};
const ExpandTable& Expand8() {
  static const ExpandTable table;
  return table;
}

// State of one chunk in the AVX2 decoder: 4 vectors of 8 lanes.
struct Avx2Lanes {
  __m256i x[4];
  const uint8_t* wp;
  const uint8_t* wend;
};

// vpgatherdd merges into its destination, so it waits for whatever last
// wrote that register; GCC may pick one written at the end of the previous
// group, which chains the four vectors' gathers into one (measured: -18%).
// A zeroed source (vpxor, a dependency-breaking idiom) cuts that chain.
// (GCC folds a constant source of a full-mask gather away; the empty asm
// makes the zero opaque.)
BIGSMALL_AVX2 BIGSMALL_INLINE __m256i Gather256(const int* base, __m256i idx) {
  __m256i src = _mm256_setzero_si256();
  asm volatile("" : "+x"(src));
  return _mm256_mask_i32gather_epi32(src, base, idx, _mm256_set1_epi32(-1), 4);
}

// Decodes group g of 32 symbols (needs >= 32 words left at wp).
// kScalarLookup: load the 8 table slots with scalar loads instead of
// vpgatherdd, which is faster on AMD Zen (measured 1.2-1.4 vs 1.07 G symbols/s
// on this project's build machine); Intel's gather is fast.
template <bool kScalarLookup, bool kCond>
BIGSMALL_AVX2 BIGSMALL_INLINE void Avx2Group(const Lookup& t, const ExpandTable& expand, Avx2Lanes& s,
                                            size_t g, uint8_t* out) {
  const int* slots = reinterpret_cast<const int*>(t.slots);
  const __m256i kMask12 = _mm256_set1_epi32(kProbScale - 1);
  const __m256i kMask8 = _mm256_set1_epi32(0xff);
  const __m256i kMaskF = _mm256_set1_epi32(0xfff);
  const __m256i kOne = _mm256_set1_epi32(1);
  const __m256i kZero = _mm256_setzero_si256();
  // After packus_epi32 then packus_epi16, 32-bit group k of the result holds
  // lanes: 0-3, 8-11, 16-19, 24-27, 4-7, 12-15, 20-23, 28-31.
  const __m256i kOrder = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const uint8_t* ctx = kCond ? t.context + g * kLanes : nullptr;
  uint8_t* o = out + g * kLanes;
  __m256i sym[4];
  for (int v = 0; v < 4; ++v) {
    __m256i slot;
    if constexpr (kScalarLookup) {
      alignas(32) uint32_t idx[8];
      alignas(32) int32_t got[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(idx), _mm256_and_si256(s.x[v], kMask12));
      for (int k = 0; k < 8; ++k) got[k] = slots[idx[k] | (kCond ? t.map32[ctx[8 * v + k]] : 0)];
      slot = _mm256_load_si256(reinterpret_cast<const __m256i*>(got));
    } else {
      __m256i idx = _mm256_and_si256(s.x[v], kMask12);
      if constexpr (kCond) {
        const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(ctx + 8 * v)));
        idx = _mm256_or_si256(idx, Gather256(reinterpret_cast<const int*>(t.map32), c));
      }
      slot = Gather256(slots, idx);
    }
    sym[v] = _mm256_and_si256(slot, kMask8);
    const __m256i freq = _mm256_add_epi32(_mm256_and_si256(_mm256_srli_epi32(slot, 8), kMaskF), kOne);
    const __m256i cum = _mm256_srli_epi32(slot, 20);
    __m256i nx = _mm256_mullo_epi32(freq, _mm256_srli_epi32(s.x[v], kProbBits));
    nx = _mm256_sub_epi32(_mm256_add_epi32(nx, _mm256_and_si256(s.x[v], kMask12)), cum);
    const __m256i need = _mm256_cmpeq_epi32(_mm256_srli_epi32(nx, 16), kZero);
    const int m = _mm256_movemask_ps(_mm256_castsi256_ps(need));
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s.wp)));
    const __m256i wl = _mm256_permutevar8x32_epi32(
        w, _mm256_load_si256(reinterpret_cast<const __m256i*>(expand.idx[m])));
    const __m256i renormed = _mm256_or_si256(_mm256_slli_epi32(nx, 16), wl);
    s.x[v] = _mm256_blendv_epi8(nx, renormed, need);
    s.wp += 2 * __builtin_popcount(static_cast<unsigned>(m));
  }
  // 4 x 8 u32 symbols -> 32 bytes in lane order (packs work per 128-bit half,
  // the final permute restores the order).
  const __m256i p01 = _mm256_packus_epi32(sym[0], sym[1]);
  const __m256i p23 = _mm256_packus_epi32(sym[2], sym[3]);
  const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(p01, p23), kOrder);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), bytes);
}

BIGSMALL_AVX2 BIGSMALL_INLINE void Avx2Load(const ChunkCursor& c, Avx2Lanes* s) {
  for (int v = 0; v < 4; ++v) s->x[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c.x + 8 * v));
  s->wp = c.words + 2 * c.next;
  s->wend = c.words + 2 * c.num_words;
}

BIGSMALL_AVX2 BIGSMALL_INLINE void Avx2Store(const Avx2Lanes& s, ChunkCursor* c) {
  for (int v = 0; v < 4; ++v) _mm256_storeu_si256(reinterpret_cast<__m256i*>(c->x + 8 * v), s.x[v]);
  c->next = static_cast<size_t>(s.wp - c->words) / 2;
}

BIGSMALL_INLINE bool HasWordsForGroup(const uint8_t* wp, const uint8_t* wend) {
  return wend - wp >= 2 * kLanes;
}

// Fast groups of one job from group g on; then the checked tail.
template <bool kScalarLookup, bool kCond>
BIGSMALL_AVX2 absl::Status Avx2Run(Job& job, size_t g) {
  const ExpandTable& expand = Expand8();
  Avx2Lanes s;
  Avx2Load(job.cursor, &s);
  // Local copies: the output stores may alias anything reached through job.
  const Lookup t = job.lookup;
  uint8_t* const out = job.out.data();
  const size_t groups = job.out.size() / kLanes;
  for (; g < groups && HasWordsForGroup(s.wp, s.wend); ++g) {
    Avx2Group<kScalarLookup, kCond>(t, expand, s, g, out);
  }
  Avx2Store(s, &job.cursor);
  return FinishChunk(job.lookup, &job.cursor, g * kLanes, job.out);
}

template <bool kScalarLookup>
absl::Status Avx2RunJob(Job& job, size_t g) {
  return job.lookup.map32 == nullptr ? Avx2Run<kScalarLookup, false>(job, g)
                                     : Avx2Run<kScalarLookup, true>(job, g);
}

// Two jobs interleaved group by group while both have words for a group, b
// one group behind a (when b's contexts are a's output, they were stored a
// group earlier, off the dependency chain); then a to its end, then b.
template <bool kScalarLookup, bool kCondA, bool kCondB>
BIGSMALL_AVX2 absl::Status Avx2Pair(Job& a, Job& b) {
  const ExpandTable& expand = Expand8();
  Avx2Lanes sa, sb;
  Avx2Load(a.cursor, &sa);
  Avx2Load(b.cursor, &sb);
  const size_t groups = std::min(a.out.size(), b.out.size()) / kLanes;
  const Lookup ta = a.lookup, tb = b.lookup;
  uint8_t* const out_a = a.out.data();
  uint8_t* const out_b = b.out.data();
  size_t ga = 0, gb = 0;
  if (groups > 0 && HasWordsForGroup(sa.wp, sa.wend)) {
    Avx2Group<kScalarLookup, kCondA>(ta, expand, sa, 0, out_a);
    ga = 1;
  }
  for (; ga < groups && HasWordsForGroup(sa.wp, sa.wend) && HasWordsForGroup(sb.wp, sb.wend); ++ga, ++gb) {
    Avx2Group<kScalarLookup, kCondA>(ta, expand, sa, ga, out_a);
    Avx2Group<kScalarLookup, kCondB>(tb, expand, sb, gb, out_b);
  }
  Avx2Store(sa, &a.cursor);
  Avx2Store(sb, &b.cursor);
  RETURN_IF_ERROR((Avx2Run<kScalarLookup, kCondA>(a, ga)));
  return Avx2Run<kScalarLookup, kCondB>(b, gb);
}

template <bool kScalarLookup>
absl::Status Avx2PairJobs(Job& a, Job& b) {
  const bool ca = a.lookup.map32 != nullptr, cb = b.lookup.map32 != nullptr;
  if (!ca && !cb) return Avx2Pair<kScalarLookup, false, false>(a, b);
  if (!ca && cb) return Avx2Pair<kScalarLookup, false, true>(a, b);
  if (ca && !cb) return Avx2Pair<kScalarLookup, true, false>(a, b);
  return Avx2Pair<kScalarLookup, true, true>(a, b);
}

// ------------------------------------------------------------- AVX-512 ----

// How an AVX-512 decoder finds a symbol's table: order-0 (one table),
// conditional with the 16 offsets gathered from Lookup::map32, or
// conditional with AVX-512 VBMI: the 256-byte context map lives in four
// registers and vpermi2b maps 32 contexts to table numbers without loads
// (the gathers' loads are what bounds the conditional decoder).
enum Avx512Mode { kPlain512, kCondGather512, kCondVbmi512 };

struct Avx512Lanes {
  __m512i x0, x1;
  const uint8_t* wp;
  const uint8_t* wend;
  __m512i map[4];  // kCondVbmi512: context_map bytes 0-63, ..., 192-255
};

// _mm512_i32gather_epi32 into a freshly zeroed register, for the reason
// Gather256 gives (and GCC 12 warns that the plain intrinsic's undefined
// source "may be used uninitialized").
BIGSMALL_AVX512 BIGSMALL_INLINE __m512i Gather512(__m512i idx, const int* base) {
  __m512i src = _mm512_setzero_si512();
  asm volatile("" : "+v"(src));
  return _mm512_mask_i32gather_epi32(src, static_cast<__mmask16>(0xffff), idx, base, 4);
}

// One step of 16 lanes; `off` holds each lane's table offset (table << 12).
// Returns the 16 symbols.
template <bool kCond>
BIGSMALL_AVX512 BIGSMALL_INLINE __m128i Avx512Step(const int* slots, __m512i off, __m512i& x,
                                                  const uint8_t*& wp) {
  const __m512i kMask12 = _mm512_set1_epi32(kProbScale - 1);
  const __m512i kMask8 = _mm512_set1_epi32(0xff);
  const __m512i kMaskF = _mm512_set1_epi32(0xfff);
  const __m512i kOne = _mm512_set1_epi32(1);
  const __m512i kLow = _mm512_set1_epi32(kRansLow);
  __m512i idx = _mm512_and_si512(x, kMask12);
  if constexpr (kCond) idx = _mm512_or_si512(idx, off);
  const __m512i slot = Gather512(idx, slots);
  const __m512i freq = _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(slot, 8), kMaskF), kOne);
  const __m512i cum = _mm512_srli_epi32(slot, 20);
  __m512i nx = _mm512_mullo_epi32(freq, _mm512_srli_epi32(x, kProbBits));
  nx = _mm512_sub_epi32(_mm512_add_epi32(nx, _mm512_and_si512(x, kMask12)), cum);
  const __mmask16 need = _mm512_cmplt_epu32_mask(nx, kLow);
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp)));
  const __m512i wl = _mm512_maskz_expand_epi32(need, w);
  x = _mm512_mask_or_epi32(nx, need, _mm512_slli_epi32(nx, 16), wl);
  wp += 2 * __builtin_popcount(static_cast<unsigned>(need));
  return _mm512_cvtepi32_epi8(_mm512_and_si512(slot, kMask8));
}

// Two 16-byte stores per group (a single 32-byte store costs a vinserti on
// the busy shuffle port; a conditional stream of a pair reads these bytes
// back as its contexts one group later, when no forwarding stall remains).
BIGSMALL_AVX512 BIGSMALL_INLINE void Avx512StoreGroup(uint8_t* o, __m128i lo, __m128i hi) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(o), lo);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 16), hi);
}

#define BIGSMALL_AVX512_VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi")))

// kPlain512 and kCondGather512.
template <int kMode>
BIGSMALL_AVX512 BIGSMALL_INLINE void Avx512Group(const Lookup& t, Avx512Lanes& s, size_t g, uint8_t* out) {
  const int* slots = reinterpret_cast<const int*>(t.slots);
  uint8_t* o = out + g * kLanes;
  __m512i off0 = _mm512_setzero_si512(), off1 = _mm512_setzero_si512();
  if constexpr (kMode == kCondGather512) {
    const uint8_t* ctx = t.context + g * kLanes;
    const int* map32 = reinterpret_cast<const int*>(t.map32);
    off0 = Gather512(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ctx))), map32);
    off1 = Gather512(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ctx + 16))), map32);
  }
  const __m128i sym0 = Avx512Step<kMode != kPlain512>(slots, off0, s.x0, s.wp);
  const __m128i sym1 = Avx512Step<kMode != kPlain512>(slots, off1, s.x1, s.wp);
  Avx512StoreGroup(o, sym0, sym1);
}

// kCondVbmi512.
BIGSMALL_AVX512_VBMI BIGSMALL_INLINE void Avx512GroupVbmi(const Lookup& t, Avx512Lanes& s, size_t g,
                                                         uint8_t* out) {
  const int* slots = reinterpret_cast<const int*>(t.slots);
  uint8_t* o = out + g * kLanes;
  const __m512i c = _mm512_castsi256_si512(
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.context + g * kLanes)));
  const __m512i lo = _mm512_permutex2var_epi8(s.map[0], c, s.map[1]);
  const __m512i hi = _mm512_permutex2var_epi8(s.map[2], c, s.map[3]);
  const __m256i tbl = _mm512_castsi512_si256(_mm512_mask_blend_epi8(_mm512_movepi8_mask(c), lo, hi));
  const __m512i off0 = _mm512_slli_epi32(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(tbl)), kProbBits);
  const __m512i off1 = _mm512_slli_epi32(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(tbl, 1)), kProbBits);
  const __m128i sym0 = Avx512Step<true>(slots, off0, s.x0, s.wp);
  const __m128i sym1 = Avx512Step<true>(slots, off1, s.x1, s.wp);
  Avx512StoreGroup(o, sym0, sym1);
}

template <int kMode>
BIGSMALL_AVX512 BIGSMALL_INLINE void Avx512Load(const Job& job, Avx512Lanes* s) {
  const ChunkCursor& c = job.cursor;
  s->x0 = _mm512_loadu_si512(c.x);
  s->x1 = _mm512_loadu_si512(c.x + 16);
  s->wp = c.words + 2 * c.next;
  s->wend = c.words + 2 * c.num_words;
  if constexpr (kMode == kCondVbmi512) {
    for (int k = 0; k < 4; ++k) s->map[k] = _mm512_loadu_si512(job.map8 + 64 * k);
  }
}

BIGSMALL_AVX512 BIGSMALL_INLINE void Avx512Store(const Avx512Lanes& s, ChunkCursor* c) {
  _mm512_storeu_si512(c->x, s.x0);
  _mm512_storeu_si512(c->x + 16, s.x1);
  c->next = static_cast<size_t>(s.wp - c->words) / 2;
}

// The group loops, twice: without VBMI in their target (kPlain512,
// kCondGather512: these run on any AVX-512 F/BW/VL CPU) and with it (any
// job in kCondVbmi512), so that no VBMI instruction reaches the former.
#define BIGSMALL_AVX512_GROUP(kMode, t, s, g, out)                   \
  do {                                                               \
    if constexpr ((kMode) == kCondVbmi512) {                         \
      Avx512GroupVbmi(t, s, g, out);                                 \
    } else {                                                         \
      Avx512Group<((kMode) == kCondVbmi512 ? kPlain512 : (kMode))>(t, s, g, out); \
    }                                                                \
  } while (0)

#define BIGSMALL_AVX512_RUN_BODY                                         \
  Avx512Lanes s;                                                         \
  Avx512Load<kMode>(job, &s);                                            \
  const Lookup t = job.lookup;                                           \
  uint8_t* const out = job.out.data();                                   \
  const size_t groups = job.out.size() / kLanes;                         \
  for (; g < groups && HasWordsForGroup(s.wp, s.wend); ++g) {            \
    BIGSMALL_AVX512_GROUP(kMode, t, s, g, out);                          \
  }                                                                      \
  Avx512Store(s, &job.cursor);                                           \
  return FinishChunk(job.lookup, &job.cursor, g * kLanes, job.out);

template <int kMode>
BIGSMALL_AVX512 absl::Status Avx512Run(Job& job, size_t g) {
  static_assert(kMode != kCondVbmi512);
  BIGSMALL_AVX512_RUN_BODY
}
template <int kMode>
BIGSMALL_AVX512_VBMI absl::Status Avx512RunVbmi(Job& job, size_t g) {
  BIGSMALL_AVX512_RUN_BODY
}
template <int kMode>
absl::Status Avx512RunAny(Job& job, size_t g) {
  if constexpr (kMode == kCondVbmi512) {
    return Avx512RunVbmi<kMode>(job, g);
  } else {
    return Avx512Run<kMode>(job, g);
  }
}

#define BIGSMALL_AVX512_PAIR_BODY                                                                  \
  Avx512Lanes sa, sb;                                                                              \
  Avx512Load<kModeA>(a, &sa);                                                                      \
  Avx512Load<kModeB>(b, &sb);                                                                      \
  const size_t groups = std::min(a.out.size(), b.out.size()) / kLanes;                             \
  const Lookup ta = a.lookup, tb = b.lookup;                                                       \
  uint8_t* const out_a = a.out.data();                                                             \
  uint8_t* const out_b = b.out.data();                                                             \
  size_t ga = 0, gb = 0;                                                                           \
  if (groups > 0 && HasWordsForGroup(sa.wp, sa.wend)) {                                            \
    BIGSMALL_AVX512_GROUP(kModeA, ta, sa, 0, out_a);                                               \
    ga = 1;                                                                                        \
  }                                                                                                \
  for (; ga < groups && HasWordsForGroup(sa.wp, sa.wend) && HasWordsForGroup(sb.wp, sb.wend);      \
       ++ga, ++gb) {                                                                               \
    BIGSMALL_AVX512_GROUP(kModeA, ta, sa, ga, out_a);                                              \
    BIGSMALL_AVX512_GROUP(kModeB, tb, sb, gb, out_b);                                              \
  }                                                                                                \
  Avx512Store(sa, &a.cursor);                                                                      \
  Avx512Store(sb, &b.cursor);                                                                      \
  RETURN_IF_ERROR(Avx512RunAny<kModeA>(a, ga));                                                    \
  return Avx512RunAny<kModeB>(b, gb);

template <int kModeA, int kModeB>
BIGSMALL_AVX512 absl::Status Avx512PairPlain(Job& a, Job& b) {
  static_assert(kModeA != kCondVbmi512 && kModeB != kCondVbmi512);
  BIGSMALL_AVX512_PAIR_BODY
}
template <int kModeA, int kModeB>
BIGSMALL_AVX512_VBMI absl::Status Avx512PairVbmi(Job& a, Job& b) {
  BIGSMALL_AVX512_PAIR_BODY
}
template <int kModeA, int kModeB>
absl::Status Avx512Pair(Job& a, Job& b) {
  if constexpr (kModeA == kCondVbmi512 || kModeB == kCondVbmi512) {
    return Avx512PairVbmi<kModeA, kModeB>(a, b);
  } else {
    return Avx512PairPlain<kModeA, kModeB>(a, b);
  }
}

int Avx512ModeOf(const Job& job, bool vbmi) {
  if (job.lookup.map32 == nullptr) return kPlain512;
  return vbmi ? kCondVbmi512 : kCondGather512;
}

absl::Status Avx512RunJob(Job& job, bool vbmi) {
  switch (Avx512ModeOf(job, vbmi)) {
    case kPlain512: return Avx512Run<kPlain512>(job, 0);
    case kCondGather512: return Avx512Run<kCondGather512>(job, 0);
    default: return Avx512RunVbmi<kCondVbmi512>(job, 0);
  }
}

template <int kModeA>
absl::Status Avx512PairB(Job& a, Job& b, int mode_b) {
  switch (mode_b) {
    case kPlain512: return Avx512Pair<kModeA, kPlain512>(a, b);
    case kCondGather512: return Avx512Pair<kModeA, kCondGather512>(a, b);
    default: return Avx512Pair<kModeA, kCondVbmi512>(a, b);
  }
}

absl::Status Avx512PairJobs(Job& a, Job& b, bool vbmi) {
  const int mode_b = Avx512ModeOf(b, vbmi);
  switch (Avx512ModeOf(a, vbmi)) {
    case kPlain512: return Avx512PairB<kPlain512>(a, b, mode_b);
    case kCondGather512: return Avx512PairB<kCondGather512>(a, b, mode_b);
    default: return Avx512PairB<kCondVbmi512>(a, b, mode_b);
  }
}

}  // namespace

bool Avx2UsesScalarLoads() {
  static const bool scalar_lookup = __builtin_cpu_is("amd");
  return scalar_lookup;
}

absl::Status DecodeChunkAvx2Gather(const DecodeTable& table, absl::Span<const uint8_t> chunk,
                                   absl::Span<uint8_t> out) {
  if (!CpuHasAvx2()) return absl::UnimplementedError("this CPU has no AVX2");
  Job job;
  RETURN_IF_ERROR(OpenJob(PlainJob(table, chunk, out), &job));
  return Avx2RunJob<false>(job, 0);
}

absl::Status DecodeChunkAvx2ScalarLoad(const DecodeTable& table, absl::Span<const uint8_t> chunk,
                                       absl::Span<uint8_t> out) {
  if (!CpuHasAvx2()) return absl::UnimplementedError("this CPU has no AVX2");
  Job job;
  RETURN_IF_ERROR(OpenJob(PlainJob(table, chunk, out), &job));
  return Avx2RunJob<true>(job, 0);
}

absl::Status DecodeChunkAvx2(const DecodeTable& table, absl::Span<const uint8_t> chunk,
                             absl::Span<uint8_t> out) {
  return Avx2UsesScalarLoads() ? DecodeChunkAvx2ScalarLoad(table, chunk, out)
                               : DecodeChunkAvx2Gather(table, chunk, out);
}

absl::Status DecodeChunkAvx512(const DecodeTable& table, absl::Span<const uint8_t> chunk,
                               absl::Span<uint8_t> out) {
  if (!CpuHasAvx512()) return absl::UnimplementedError("this CPU has no AVX-512 F/BW/VL");
  Job job;
  RETURN_IF_ERROR(OpenJob(PlainJob(table, chunk, out), &job));
  return Avx512RunJob(job, false);
}

absl::Status DecodeChunkConditionalAvx2Gather(const DecodeTable* tables, size_t num_tables,
                                              const uint8_t* context_map,
                                              absl::Span<const uint8_t> context,
                                              absl::Span<const uint8_t> chunk, absl::Span<uint8_t> out) {
  if (!CpuHasAvx2()) return absl::UnimplementedError("this CPU has no AVX2");
  Job job;
  RETURN_IF_ERROR(OpenJob(ConditionalJob(tables, num_tables, context_map, context, chunk, out), &job));
  return Avx2RunJob<false>(job, 0);
}

absl::Status DecodeChunkConditionalAvx2ScalarLoad(const DecodeTable* tables, size_t num_tables,
                                                  const uint8_t* context_map,
                                                  absl::Span<const uint8_t> context,
                                                  absl::Span<const uint8_t> chunk,
                                                  absl::Span<uint8_t> out) {
  if (!CpuHasAvx2()) return absl::UnimplementedError("this CPU has no AVX2");
  Job job;
  RETURN_IF_ERROR(OpenJob(ConditionalJob(tables, num_tables, context_map, context, chunk, out), &job));
  return Avx2RunJob<true>(job, 0);
}

absl::Status DecodeChunkConditionalAvx2(const DecodeTable* tables, size_t num_tables,
                                        const uint8_t* context_map, absl::Span<const uint8_t> context,
                                        absl::Span<const uint8_t> chunk, absl::Span<uint8_t> out) {
  return Avx2UsesScalarLoads()
             ? DecodeChunkConditionalAvx2ScalarLoad(tables, num_tables, context_map, context, chunk, out)
             : DecodeChunkConditionalAvx2Gather(tables, num_tables, context_map, context, chunk, out);
}

absl::Status DecodeChunkConditionalAvx512Gather(const DecodeTable* tables, size_t num_tables,
                                                const uint8_t* context_map,
                                                absl::Span<const uint8_t> context,
                                                absl::Span<const uint8_t> chunk, absl::Span<uint8_t> out) {
  if (!CpuHasAvx512()) return absl::UnimplementedError("this CPU has no AVX-512 F/BW/VL");
  Job job;
  RETURN_IF_ERROR(OpenJob(ConditionalJob(tables, num_tables, context_map, context, chunk, out), &job));
  return Avx512RunJob(job, false);
}

absl::Status DecodeChunkConditionalAvx512Vbmi(const DecodeTable* tables, size_t num_tables,
                                              const uint8_t* context_map,
                                              absl::Span<const uint8_t> context,
                                              absl::Span<const uint8_t> chunk, absl::Span<uint8_t> out) {
  if (!CpuHasAvx512Vbmi()) return absl::UnimplementedError("this CPU has no AVX-512 VBMI");
  Job job;
  RETURN_IF_ERROR(OpenJob(ConditionalJob(tables, num_tables, context_map, context, chunk, out), &job));
  return Avx512RunJob(job, true);
}

absl::Status DecodeChunkConditionalAvx512(const DecodeTable* tables, size_t num_tables,
                                          const uint8_t* context_map, absl::Span<const uint8_t> context,
                                          absl::Span<const uint8_t> chunk, absl::Span<uint8_t> out) {
  return CpuHasAvx512Vbmi()
             ? DecodeChunkConditionalAvx512Vbmi(tables, num_tables, context_map, context, chunk, out)
             : DecodeChunkConditionalAvx512Gather(tables, num_tables, context_map, context, chunk, out);
}

namespace {
absl::Status PairSimd(DecoderImpl impl, Job& a, Job& b) {
  if (impl == DecoderImpl::kAvx512) return Avx512PairJobs(a, b, CpuHasAvx512Vbmi());
  return Avx2UsesScalarLoads() ? Avx2PairJobs<true>(a, b) : Avx2PairJobs<false>(a, b);
}
}  // namespace

#else  // !__x86_64__

bool CpuHasAvx2() { return false; }
bool CpuHasAvx512() { return false; }
bool CpuHasAvx512Vbmi() { return false; }
bool Avx2UsesScalarLoads() { return false; }

namespace {
absl::Status NoX86() { return absl::UnimplementedError("the AVX2 / AVX-512 decoders need x86-64"); }
absl::Status PairSimd(DecoderImpl, Job&, Job&) { return NoX86(); }
}  // namespace

absl::Status DecodeChunkAvx2Gather(const DecodeTable&, absl::Span<const uint8_t>, absl::Span<uint8_t>) {
  return NoX86();
}
absl::Status DecodeChunkAvx2ScalarLoad(const DecodeTable&, absl::Span<const uint8_t>, absl::Span<uint8_t>) {
  return NoX86();
}
absl::Status DecodeChunkAvx2(const DecodeTable&, absl::Span<const uint8_t>, absl::Span<uint8_t>) {
  return NoX86();
}
absl::Status DecodeChunkAvx512(const DecodeTable&, absl::Span<const uint8_t>, absl::Span<uint8_t>) {
  return NoX86();
}
absl::Status DecodeChunkConditionalAvx2Gather(const DecodeTable*, size_t, const uint8_t*,
                                              absl::Span<const uint8_t>, absl::Span<const uint8_t>,
                                              absl::Span<uint8_t>) {
  return NoX86();
}
absl::Status DecodeChunkConditionalAvx2ScalarLoad(const DecodeTable*, size_t, const uint8_t*,
                                                  absl::Span<const uint8_t>, absl::Span<const uint8_t>,
                                                  absl::Span<uint8_t>) {
  return NoX86();
}
absl::Status DecodeChunkConditionalAvx2(const DecodeTable*, size_t, const uint8_t*,
                                        absl::Span<const uint8_t>, absl::Span<const uint8_t>,
                                        absl::Span<uint8_t>) {
  return NoX86();
}
absl::Status DecodeChunkConditionalAvx512(const DecodeTable*, size_t, const uint8_t*,
                                          absl::Span<const uint8_t>, absl::Span<const uint8_t>,
                                          absl::Span<uint8_t>) {
  return NoX86();
}
absl::Status DecodeChunkConditionalAvx512Gather(const DecodeTable*, size_t, const uint8_t*,
                                                absl::Span<const uint8_t>, absl::Span<const uint8_t>,
                                                absl::Span<uint8_t>) {
  return NoX86();
}
absl::Status DecodeChunkConditionalAvx512Vbmi(const DecodeTable*, size_t, const uint8_t*,
                                              absl::Span<const uint8_t>, absl::Span<const uint8_t>,
                                              absl::Span<uint8_t>) {
  return NoX86();
}

#endif

absl::Status DecodeChunkPair(DecoderImpl impl, const ChunkJob& a, const ChunkJob& b) {
  if (impl == DecoderImpl::kAuto) impl = BestDecoderImpl();
  if (!DecoderImplAvailable(impl)) impl = DecoderImpl::kScalar;
  if (impl == DecoderImpl::kReference || impl == DecoderImpl::kScalar) {
    // One after the other (b's context may be a's output).
    RETURN_IF_ERROR(DecodeChunkJob(impl, a));
    return DecodeChunkJob(impl, b);
  }
  Job ja, jb;
  RETURN_IF_ERROR(OpenJob(a, &ja));
  // a's errors come first, as when the two are decoded one after the other.
  const absl::Status open_b = OpenJob(b, &jb);
  if (!open_b.ok()) {
    RETURN_IF_ERROR(DecodeChunkJob(impl, a));
    return open_b;
  }
  return PairSimd(impl, ja, jb);
}

}  // namespace bigsmall::rans
