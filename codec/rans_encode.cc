#include "codec/rans_encode.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "codec/byte_io.h"

#if defined(__x86_64__)
// GCC 12 reports the undefined pass-through operand of AVX-512 intrinsics
// as "may be used uninitialized" once inlined (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#endif

namespace bigsmall::rans {

Counts CountSymbols(absl::Span<const uint8_t> symbols) {
  // Eight u32 histograms, eight bytes per load: a run of one symbol (common
  // in exponent planes) increments eight different counters in turn instead
  // of waiting on one counter's store-to-load chain. Blocks of at most 2^31
  // bytes keep the u32 counters from overflowing.
  Counts c{};
  alignas(64) uint32_t h[8][256];
  const uint8_t* p = symbols.data();
  size_t left = symbols.size();
  while (left > 0) {
    const size_t block = std::min<size_t>(left, size_t{1} << 31);
    std::memset(h, 0, sizeof(h));
    size_t i = 0;
    for (; i + 8 <= block; i += 8) {
      uint64_t v;
      std::memcpy(&v, p + i, 8);
      ++h[0][v & 0xff];
      ++h[1][(v >> 8) & 0xff];
      ++h[2][(v >> 16) & 0xff];
      ++h[3][(v >> 24) & 0xff];
      ++h[4][(v >> 32) & 0xff];
      ++h[5][(v >> 40) & 0xff];
      ++h[6][(v >> 48) & 0xff];
      ++h[7][v >> 56];
    }
    for (; i < block; ++i) ++h[0][p[i]];
    for (int s = 0; s < 256; ++s) {
      uint64_t sum = 0;
      for (int k = 0; k < 8; ++k) sum += h[k][s];
      c[s] += sum;
    }
    p += block;
    left -= block;
  }
  return c;
}

Frequencies NormalizeFrequencies(const Counts& counts) {
  Frequencies f{};
  uint64_t total = 0;
  for (uint64_t c : counts) total += c;
  if (total == 0) {
    f[0] = kProbScale;
    return f;
  }
  // Proportional first guess, every present symbol at least 1.
  int64_t sum = 0;
  for (int s = 0; s < 256; ++s) {
    if (counts[s] == 0) continue;
    // Round to nearest: leaves only a small residual for the loop below.
    const uint64_t q = (counts[s] * kProbScale * 2 + total) / (2 * total);
    f[s] = static_cast<uint16_t>(std::clamp<uint64_t>(q, 1, kProbScale));
    sum += f[s];
  }
  // The proportional guess is off by at most a few hundred units (floors and
  // the >= 1 floor for rare symbols). Fix it one unit at a time where that
  // costs the fewest coded bits (or saves the most): near optimal for order-0.
  while (sum != static_cast<int64_t>(kProbScale)) {
    const int step = sum < static_cast<int64_t>(kProbScale) ? 1 : -1;
    int best = -1;
    double best_cost = 0;
    for (int s = 0; s < 256; ++s) {
      if (counts[s] == 0 || (step < 0 && f[s] <= 1)) continue;
      const double a = f[s];
      const double cost = static_cast<double>(counts[s]) * (std::log2(a) - std::log2(a + step));
      if (best < 0 || cost < best_cost) {
        best = s;
        best_cost = cost;
      }
    }
    f[best] = static_cast<uint16_t>(f[best] + step);
    sum += step;
  }
  return f;
}

double EstimateBits(const Counts& counts, const Frequencies& freqs) {
  double bits = 0;
  for (int s = 0; s < 256; ++s) {
    if (counts[s] == 0) continue;
    bits += static_cast<double>(counts[s]) * (kProbBits - std::log2(static_cast<double>(freqs[s])));
  }
  return bits;
}

size_t SerializedFrequenciesSize(const Frequencies& freqs) {
  size_t present = 0;
  for (uint16_t f : freqs) present += f != 0;
  return 32 + 2 * present;
}

void AppendFrequencies(const Frequencies& freqs, std::vector<uint8_t>* out) {
  uint8_t bitmap[32] = {};
  for (int s = 0; s < 256; ++s) {
    if (freqs[s]) bitmap[s >> 3] |= static_cast<uint8_t>(1u << (s & 7));
  }
  ByteWriter w(out);
  w.Bytes(absl::MakeConstSpan(bitmap, 32));
  for (int s = 0; s < 256; ++s) {
    if (freqs[s]) w.U16(static_cast<uint16_t>(freqs[s] - 1));
  }
}

namespace {

// Encoder-side symbol (ryg_rans's RansEncSymbol, for 32-bit states): the
// step x -> (x / freq) << 12 | (x % freq) + cum is computed without a divide
// or a branch as
//   q = high 64 bits of x * rcp;  x' = x + bias + q * cmpl
// with cmpl = 4096 - freq. For freq >= 2, rcp = ceil(2^64 / freq), and
// q = x / freq exactly for every 32-bit x (Granlund-Montgomery), bias = cum.
// For freq == 1, rcp = 2^64 - 1 gives q = x - 1 (x >= 1 always), and
// bias = cum + 4095 makes x' = 4096 x + cum: the same value. Byte-identical
// to the divide (docs/FORMAT.md §6; EncodeMatchesTheSpecEncoder tests it).
struct EncSymbol {
  uint64_t rcp = 0;
  uint32_t bias = 0;
  uint16_t freq = 0;  // renormalise first when (x >> 20) >= freq, i.e. x >= 2^20 * freq
  uint16_t cmpl = 0;
};
static_assert(sizeof(EncSymbol) == 16);

using EncTable = std::array<EncSymbol, 256>;

EncTable MakeEncTable(const Frequencies& freqs) {
  EncTable t{};
  uint32_t cum = 0;
  for (int s = 0; s < 256; ++s) {
    const uint32_t f = freqs[s];
    EncSymbol& e = t[s];
    e.freq = static_cast<uint16_t>(f);
    e.cmpl = static_cast<uint16_t>(kProbScale - f);
    if (f >= 2) {
      e.rcp = ~uint64_t{0} / f + 1;
      e.bias = cum;
    } else if (f == 1) {
      e.rcp = ~uint64_t{0};
      e.bias = cum + kProbScale - 1;
    }
    cum += f;
  }
  return t;
}

// x must shed a word before taking a symbol when x >= 2^20 * freq
// (EncodeNeedsWord in rans.h).
constexpr int kRenormShift = 20;
static_assert((uint64_t{1} << kRenormShift) == (uint64_t{(kRansLow >> kProbBits) << kWordBits}));

// Runs the decoder's schedule backwards. `table_of(i)` gives symbol i's
// table. Words are written backwards from the end of a buffer as they are
// produced (so they end in decode order) without branches: every symbol
// stores a word below the cursor and moves the cursor only when it needed
// one. The words are u16 (not bytes, which may alias anything and would make
// the compiler reload the tables and states after every store). A symbol
// whose frequency is 0 cannot be encoded: callers pass tables built from the
// symbols' counts.
// The SIMD encoder's tables (struct of arrays, table t's symbol s at
// t * 256 + s): freq | cum << 16, and 1.0 / freq.
struct SimdTables {
  std::vector<uint32_t> fc;
  std::vector<double> inv;
  const uint8_t* context = nullptr;  // conditional: table offset ctx_off[context[i]]
  uint32_t ctx_off[256] = {};
};

void AddSimdTable(const Frequencies& freqs, SimdTables* t) {
  uint32_t cum = 0;
  for (int s = 0; s < 256; ++s) {
    t->fc.push_back(freqs[s] | (cum << 16));
    t->inv.push_back(freqs[s] != 0 ? 1.0 / freqs[s] : 0.0);
    cum += freqs[s];
  }
}

bool EncoderHasAvx512() {
#if defined(__x86_64__)
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl");
  return has;
#else
  return false;
#endif
}

#if defined(__x86_64__)
// Whole groups [0, groups) of 32 symbols, last group first, as the scalar
// loop does: per group lanes 16-31 (their words land above), then 0-15.
// x / freq is computed in double (x * (1 / freq), exact to within one below,
// then corrected with the remainder), so the states and words are exactly
// the scalar encoder's.
__attribute__((target("avx512f,avx512bw,avx512vl"))) void EncodeGroupsAvx512(
    const uint8_t* sym, size_t groups, const SimdTables& t, uint32_t* state, uint16_t** wp) {
  const int* fc = reinterpret_cast<const int*>(t.fc.data());
  const double* inv = t.inv.data();
  const int* ctx_off = reinterpret_cast<const int*>(t.ctx_off);
  const __m512i kFreq = _mm512_set1_epi32(0xffff);
  const __m512i kOne = _mm512_set1_epi32(1);
  __m512i xs[2] = {_mm512_loadu_si512(state), _mm512_loadu_si512(state + 16)};
  uint16_t* w = *wp;
  for (size_t g = groups; g-- > 0;) {
    for (int h = 1; h >= 0; --h) {
      const size_t k = g * kLanes + 16 * h;
      __m512i x = xs[h];
      __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sym + k)));
      if (t.context != nullptr) {
        const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t.context + k)));
        idx = _mm512_or_si512(idx, _mm512_i32gather_epi32(c, ctx_off, 4));
      }
      const __m512i e = _mm512_i32gather_epi32(idx, fc, 4);
      const __m512i freq = _mm512_and_si512(e, kFreq);
      const __m512i cum = _mm512_srli_epi32(e, 16);
      const __mmask16 m = _mm512_cmpge_epu32_mask(_mm512_srli_epi32(x, kRenormShift), freq);
      const int pc = __builtin_popcount(static_cast<unsigned>(m));
      w -= pc;
      const __m256i words = _mm512_cvtepi32_epi16(_mm512_maskz_compress_epi32(m, x));
      _mm256_mask_storeu_epi16(w, static_cast<__mmask16>((1u << pc) - 1), words);
      x = _mm512_mask_srli_epi32(x, m, x, kWordBits);
      const __m512d xl = _mm512_cvtepu32_pd(_mm512_castsi512_si256(x));
      const __m512d xh = _mm512_cvtepu32_pd(_mm512_extracti64x4_epi64(x, 1));
      const __m512d il = _mm512_i32gather_pd(_mm512_castsi512_si256(idx), inv, 8);
      const __m512d ih = _mm512_i32gather_pd(_mm512_extracti64x4_epi64(idx, 1), inv, 8);
      const __m256i ql = _mm512_cvttpd_epu32(_mm512_mul_pd(xl, il));
      const __m256i qh = _mm512_cvttpd_epu32(_mm512_mul_pd(xh, ih));
      __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(ql), qh, 1);
      __m512i r = _mm512_sub_epi32(x, _mm512_mullo_epi32(q, freq));
      const __mmask16 fix = _mm512_cmpge_epu32_mask(r, freq);
      q = _mm512_mask_add_epi32(q, fix, q, kOne);
      r = _mm512_mask_sub_epi32(r, fix, r, freq);
      xs[h] = _mm512_add_epi32(_mm512_add_epi32(_mm512_slli_epi32(q, kProbBits), r), cum);
    }
  }
  _mm512_storeu_si512(state, xs[0]);
  _mm512_storeu_si512(state + 16, xs[1]);
  *wp = w;
}
#else
void EncodeGroupsAvx512(const uint8_t*, size_t, const SimdTables&, uint32_t*, uint16_t**) {}
#endif

template <typename TableOf>
void EncodeLanes(absl::Span<const uint8_t> symbols, TableOf table_of, const SimdTables* simd,
                 std::vector<uint8_t>* out) {
  const size_t n = symbols.size();
  uint32_t state[kLanes];
  for (auto& x : state) x = kRansLow;
  // Up to one word per symbol, plus one slot of slack below for the
  // unconditional store. Kept per thread: a fresh 128 KiB buffer per chunk
  // is an mmap, page faults and a munmap each time (glibc's threshold).
  thread_local std::vector<uint16_t> buffer;
  if (buffer.size() < n + 1) buffer.resize(n + 1);
  uint16_t* const end = buffer.data() + n + 1;
  uint16_t* w = end;
  const uint8_t* const sym = symbols.data();
  size_t i = n;
  // The tail (the last, partial group) first, then whole groups of 32 with
  // constant lane numbers.
  auto step = [&state, &w, sym, &table_of](size_t k, int lane) __attribute__((always_inline)) {
    const EncSymbol e = table_of(k)[sym[k]];
    uint32_t x = state[lane];
    const bool renorm = (x >> kRenormShift) >= e.freq;
    w[-1] = static_cast<uint16_t>(x);
    w -= renorm;
    x = renorm ? x >> kWordBits : x;
    const uint32_t q = static_cast<uint32_t>((static_cast<unsigned __int128>(x) * e.rcp) >> 64);
    state[lane] = x + e.bias + q * e.cmpl;
  };
  while (i % kLanes != 0) {
    --i;
    step(i, static_cast<int>(i % kLanes));
  }
  if (simd != nullptr && i > 0) {
    EncodeGroupsAvx512(sym, i / kLanes, *simd, state, &w);
    i = 0;
  }
  while (i > 0) {
    i -= kLanes;
    for (int lane = kLanes - 1; lane >= 0; --lane) step(i + lane, lane);
  }
  const size_t num_words = static_cast<size_t>(end - w);
  const size_t base = out->size();
  out->resize(base + kChunkHeaderBytes + 2 * num_words);
  uint8_t* p = out->data() + base;
  for (int l = 0; l < kLanes; ++l) StoreLe32(p + 4 * l, state[l]);
  std::memcpy(p + kChunkHeaderBytes, w, 2 * num_words);  // the format is LE, as the hosts are
}

}  // namespace

namespace {

void EncodeChunkImpl(bool use_simd, const Frequencies& freqs, absl::Span<const uint8_t> symbols,
                     std::vector<uint8_t>* out) {
  const EncTable table = MakeEncTable(freqs);
  SimdTables simd;
  use_simd = use_simd && symbols.size() >= kLanes;
  if (use_simd) AddSimdTable(freqs, &simd);
  EncodeLanes(symbols, [&](size_t) -> const EncSymbol* { return table.data(); }, use_simd ? &simd : nullptr,
              out);
}

void EncodeChunkConditionalImpl(bool use_simd, const Frequencies* tables, const uint8_t* context_map,
                                absl::Span<const uint8_t> context, absl::Span<const uint8_t> symbols,
                                std::vector<uint8_t>* out) {
  int num_tables = 0;
  for (int c = 0; c < 256; ++c) num_tables = std::max(num_tables, context_map[c] + 1);
  std::vector<EncTable> enc(num_tables);
  for (int t = 0; t < num_tables; ++t) enc[t] = MakeEncTable(tables[t]);
  const EncSymbol* of_context[256];
  for (int c = 0; c < 256; ++c) of_context[c] = enc[context_map[c]].data();
  const uint8_t* ctx = context.data();
  SimdTables simd;
  use_simd = use_simd && symbols.size() >= kLanes;
  if (use_simd) {
    for (int t = 0; t < num_tables; ++t) AddSimdTable(tables[t], &simd);
    for (int c = 0; c < 256; ++c) simd.ctx_off[c] = uint32_t{context_map[c]} << 8;
    simd.context = ctx;
  }
  EncodeLanes(symbols, [&](size_t i) -> const EncSymbol* { return of_context[ctx[i]]; },
              use_simd ? &simd : nullptr, out);
}

}  // namespace

void EncodeChunk(const Frequencies& freqs, absl::Span<const uint8_t> symbols,
                 std::vector<uint8_t>* out) {
  EncodeChunkImpl(EncoderHasAvx512(), freqs, symbols, out);
}

void EncodeChunkConditional(const Frequencies* tables, const uint8_t* context_map,
                            absl::Span<const uint8_t> context, absl::Span<const uint8_t> symbols,
                            std::vector<uint8_t>* out) {
  EncodeChunkConditionalImpl(EncoderHasAvx512(), tables, context_map, context, symbols, out);
}

void EncodeChunkScalar(const Frequencies& freqs, absl::Span<const uint8_t> symbols,
                       std::vector<uint8_t>* out) {
  EncodeChunkImpl(false, freqs, symbols, out);
}

void EncodeChunkConditionalScalar(const Frequencies* tables, const uint8_t* context_map,
                                  absl::Span<const uint8_t> context, absl::Span<const uint8_t> symbols,
                                  std::vector<uint8_t>* out) {
  EncodeChunkConditionalImpl(false, tables, context_map, context, symbols, out);
}

}  // namespace bigsmall::rans
