// Fast rANS chunk decoders: an unrolled scalar decoder and AVX2 / AVX-512
// decoders picked at run time (the binary's baseline stays x86-64, so it
// runs on any CPU). All follow the schedule of the reference decoder in
// rans_decode.cc and must produce identical bytes and identical verdicts.
//
// Every decoder runs whole groups of 32 symbols on a fast path while at least
// 32 words remain (a group consumes at most 32), and hands the states to the
// checked scalar loop for the tail.
#include <cstring>

#include "absl/strings/str_cat.h"
#include "codec/byte_io.h"
#include "codec/rans_decode.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace bigsmall::rans {
namespace {

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

// Checked scalar loop for symbols [i, out.size()), then the end-of-chunk checks.
absl::Status FinishChunk(const DecodeTable& table, ChunkCursor* c, size_t i,
                         absl::Span<uint8_t> out) {
  for (; i < out.size(); ++i) {
    const int lane = static_cast<int>(i % kLanes);
    const uint32_t slot = table.slot[c->x[lane] & (kProbScale - 1)];
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

}  // namespace

absl::Status DecodeChunkScalar(const DecodeTable& table, absl::Span<const uint8_t> chunk,
                               absl::Span<uint8_t> out) {
  ChunkCursor c;
  absl::Status st = OpenChunk(chunk, &c);
  if (!st.ok()) return st;
  const size_t groups = out.size() / kLanes;
  size_t g = 0;
  const uint32_t* slots = table.slot.data();
  for (; g < groups && c.num_words - c.next >= kLanes; ++g) {
    uint8_t* o = out.data() + g * kLanes;
    const uint8_t* w = c.words + 2 * c.next;
    size_t used = 0;
    for (int l = 0; l < kLanes; ++l) {
      const uint32_t slot = slots[c.x[l] & (kProbScale - 1)];
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
  return FinishChunk(table, &c, g * kLanes, out);
}

#if defined(__x86_64__)

bool CpuHasAvx2() { return __builtin_cpu_supports("avx2"); }
bool CpuHasAvx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}

namespace {
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
};

// Decodes one group of 32 symbols (needs >= 32 words left at wp).
// kScalarLookup: load the 8 table slots with scalar loads instead of
// vpgatherdd, which is faster on AMD Zen (measured 1.2-1.4 vs 1.07 G symbols/s
// on this project's build machine); Intel's gather is fast.
template <bool kScalarLookup>
__attribute__((target("avx2"), always_inline)) inline void Avx2Group(const int* slots, const ExpandTable& expand,
                                                                     Avx2Lanes& s, uint8_t* out) {
  const __m256i kMask12 = _mm256_set1_epi32(kProbScale - 1);
  const __m256i kMask8 = _mm256_set1_epi32(0xff);
  const __m256i kMaskF = _mm256_set1_epi32(0xfff);
  const __m256i kOne = _mm256_set1_epi32(1);
  const __m256i kZero = _mm256_setzero_si256();
  // After packus_epi32 then packus_epi16, 32-bit group k of the result holds
  // lanes: 0-3, 8-11, 16-19, 24-27, 4-7, 12-15, 20-23, 28-31.
  const __m256i kOrder = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256i sym[4];
  for (int v = 0; v < 4; ++v) {
    __m256i slot;
    if constexpr (kScalarLookup) {
      alignas(32) uint32_t idx[8];
      alignas(32) int32_t got[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(idx), _mm256_and_si256(s.x[v], kMask12));
      for (int k = 0; k < 8; ++k) got[k] = slots[idx[k]];
      slot = _mm256_load_si256(reinterpret_cast<const __m256i*>(got));
    } else {
      slot = _mm256_i32gather_epi32(slots, _mm256_and_si256(s.x[v], kMask12), 4);
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
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), bytes);
}

__attribute__((target("avx2"))) void Avx2Load(const ChunkCursor& c, Avx2Lanes* s) {
  for (int v = 0; v < 4; ++v) s->x[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c.x + 8 * v));
  s->wp = c.words + 2 * c.next;
}

__attribute__((target("avx2"))) void Avx2Store(const Avx2Lanes& s, ChunkCursor* c) {
  for (int v = 0; v < 4; ++v) _mm256_storeu_si256(reinterpret_cast<__m256i*>(c->x + 8 * v), s.x[v]);
  c->next = static_cast<size_t>(s.wp - c->words) / 2;
}

bool HasWordsForGroup(const ChunkCursor& c, const Avx2Lanes& s) {
  return (c.words + 2 * c.num_words) - s.wp >= 2 * kLanes;
}

}  // namespace

template <bool kScalarLookup>
__attribute__((target("avx2"))) absl::Status DecodeChunkAvx2Variant(const DecodeTable& table,
                                                                    absl::Span<const uint8_t> chunk,
                                                                    absl::Span<uint8_t> out) {
  ChunkCursor c;
  absl::Status st = OpenChunk(chunk, &c);
  if (!st.ok()) return st;
  const ExpandTable& expand = Expand8();
  const int* slots = reinterpret_cast<const int*>(table.slot.data());
  Avx2Lanes s;
  Avx2Load(c, &s);
  const size_t groups = out.size() / kLanes;
  size_t g = 0;
  for (; g < groups && HasWordsForGroup(c, s); ++g) {
    Avx2Group<kScalarLookup>(slots, expand, s, out.data() + g * kLanes);
  }
  Avx2Store(s, &c);
  return FinishChunk(table, &c, g * kLanes, out);
}

bool Avx2UsesScalarLoads() {
  static const bool scalar_lookup = __builtin_cpu_is("amd");
  return scalar_lookup;
}

absl::Status DecodeChunkAvx2Gather(const DecodeTable& table, absl::Span<const uint8_t> chunk,
                                   absl::Span<uint8_t> out) {
  return DecodeChunkAvx2Variant<false>(table, chunk, out);
}

absl::Status DecodeChunkAvx2ScalarLoad(const DecodeTable& table, absl::Span<const uint8_t> chunk,
                                       absl::Span<uint8_t> out) {
  return DecodeChunkAvx2Variant<true>(table, chunk, out);
}

absl::Status DecodeChunkAvx2(const DecodeTable& table, absl::Span<const uint8_t> chunk,
                             absl::Span<uint8_t> out) {
  return Avx2UsesScalarLoads() ? DecodeChunkAvx2ScalarLoad(table, chunk, out)
                               : DecodeChunkAvx2Gather(table, chunk, out);
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) absl::Status DecodeChunkAvx512(
    const DecodeTable& table, absl::Span<const uint8_t> chunk, absl::Span<uint8_t> out) {
  ChunkCursor c;
  absl::Status st = OpenChunk(chunk, &c);
  if (!st.ok()) return st;
  const int* slots = reinterpret_cast<const int*>(table.slot.data());
  __m512i x0 = _mm512_loadu_si512(c.x);
  __m512i x1 = _mm512_loadu_si512(c.x + 16);
  const __m512i kMask12 = _mm512_set1_epi32(kProbScale - 1);
  const __m512i kMask8 = _mm512_set1_epi32(0xff);
  const __m512i kMaskF = _mm512_set1_epi32(0xfff);
  const __m512i kOne = _mm512_set1_epi32(1);
  const __m512i kLow = _mm512_set1_epi32(kRansLow);
  const size_t groups = out.size() / kLanes;
  size_t g = 0;
  const uint8_t* wp = c.words + 2 * c.next;
  const uint8_t* const wend = c.words + 2 * c.num_words;
  auto step = [&](__m512i& x, uint8_t* o) __attribute__((target("avx512f,avx512bw,avx512vl"))) {
    const __m512i slot = _mm512_i32gather_epi32(_mm512_and_si512(x, kMask12), slots, 4);
    const __m512i freq = _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(slot, 8), kMaskF), kOne);
    const __m512i cum = _mm512_srli_epi32(slot, 20);
    __m512i nx = _mm512_mullo_epi32(freq, _mm512_srli_epi32(x, kProbBits));
    nx = _mm512_sub_epi32(_mm512_add_epi32(nx, _mm512_and_si512(x, kMask12)), cum);
    const __mmask16 need = _mm512_cmplt_epu32_mask(nx, kLow);
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp)));
    const __m512i wl = _mm512_maskz_expand_epi32(need, w);
    x = _mm512_mask_or_epi32(nx, need, _mm512_slli_epi32(nx, 16), wl);
    wp += 2 * __builtin_popcount(static_cast<unsigned>(need));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm512_cvtepi32_epi8(_mm512_and_si512(slot, kMask8)));
  };
  for (; g < groups && (wend - wp) >= 2 * kLanes; ++g) {
    uint8_t* o = out.data() + g * kLanes;
    step(x0, o);
    step(x1, o + 16);
  }
  _mm512_storeu_si512(c.x, x0);
  _mm512_storeu_si512(c.x + 16, x1);
  c.next = static_cast<size_t>(wp - c.words) / 2;
  return FinishChunk(table, &c, g * kLanes, out);
}

#else  // !__x86_64__

bool CpuHasAvx2() { return false; }
bool CpuHasAvx512() { return false; }
bool Avx2UsesScalarLoads() { return false; }
absl::Status DecodeChunkAvx2Gather(const DecodeTable&, absl::Span<const uint8_t>, absl::Span<uint8_t>) {
  return absl::UnimplementedError("the AVX2 decoders need x86-64");
}
absl::Status DecodeChunkAvx2ScalarLoad(const DecodeTable&, absl::Span<const uint8_t>, absl::Span<uint8_t>) {
  return absl::UnimplementedError("the AVX2 decoders need x86-64");
}
absl::Status DecodeChunkAvx2(const DecodeTable& table, absl::Span<const uint8_t> chunk,
                             absl::Span<uint8_t> out) {
  return DecodeChunkScalar(table, chunk, out);
}
absl::Status DecodeChunkAvx512(const DecodeTable& table, absl::Span<const uint8_t> chunk,
                               absl::Span<uint8_t> out) {
  return DecodeChunkScalar(table, chunk, out);
}

#endif

}  // namespace bigsmall::rans
