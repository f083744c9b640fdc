#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "codec/byte_io.h"
#include "codec/planes.h"
#include "codec/rans_decode.h"
#include "codec/rans_encode.h"
#include "codec/tensor_codec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace bigsmall::rans {
namespace {

using ::testing::HasSubstr;

std::vector<uint8_t> Skewed(size_t n, uint32_t seed, double spread) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> d(128, spread);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(std::clamp(d(rng), 0.0, 255.0));
  return v;
}

// Every chunk decoder, called directly (not through DecodeChunk, which would
// quietly run the scalar decoder where a SIMD one cannot run). A test of a
// decoder this CPU cannot run is skipped, saying so.
struct NamedDecoder {
  const char* name;
  absl::Status (*decode)(const DecodeTable&, absl::Span<const uint8_t>, absl::Span<uint8_t>);
  bool (*available)();
  const char* needs;
};

bool Always() { return true; }

std::vector<NamedDecoder> AllDecoders() {
  return {{"reference", DecodeChunkReference, Always, ""},
          {"scalar", DecodeChunkScalar, Always, ""},
          {"avx2_gather", DecodeChunkAvx2Gather, CpuHasAvx2, "AVX2"},
          {"avx2_scalar_load", DecodeChunkAvx2ScalarLoad, CpuHasAvx2, "AVX2"},
          {"avx512", DecodeChunkAvx512, CpuHasAvx512, "AVX-512 F/BW/VL"}};
}

std::string DecoderName(const ::testing::TestParamInfo<NamedDecoder>& info) { return info.param.name; }

#define SKIP_UNLESS_RUNNABLE(decoder)                                                       \
  do {                                                                                      \
    if (!(decoder).available()) {                                                           \
      GTEST_SKIP() << "decoder " << (decoder).name << " needs " << (decoder).needs          \
                   << ", which this CPU lacks: not run (and no other decoder run in its place)"; \
    }                                                                                       \
  } while (0)

TEST(CountSymbols, MatchesANaiveCount) {
  std::mt19937 rng(8);
  for (size_t n : {0, 1, 7, 8, 9, 15, 16, 17, 100, 4099}) {
    for (int runs : {0, 1}) {
      std::vector<uint8_t> v(n);
      for (auto& b : v) b = runs ? 200 : static_cast<uint8_t>(rng());
      Counts want{};
      for (uint8_t b : v) ++want[b];
      EXPECT_EQ(CountSymbols(v), want) << n;
    }
  }
}

TEST(NormalizeFrequencies, SumsToScaleAndKeepsEverySymbol) {
  Counts c{};
  c[0] = 1'000'000'000;
  for (int s = 1; s < 256; ++s) c[s] = 1;
  Frequencies f = NormalizeFrequencies(c);
  uint32_t sum = 0;
  for (int s = 0; s < 256; ++s) {
    sum += f[s];
    EXPECT_GE(f[s], 1) << s;
  }
  EXPECT_EQ(sum, kProbScale);
}

TEST(NormalizeFrequencies, SingleSymbolTakesAll) {
  Counts c{};
  c[7] = 5;
  EXPECT_EQ(NormalizeFrequencies(c)[7], kProbScale);
}

TEST(Frequencies, SerializeRoundTrip) {
  Counts c = CountSymbols(Skewed(10000, 1, 5));
  Frequencies f = NormalizeFrequencies(c);
  std::vector<uint8_t> bytes;
  AppendFrequencies(f, &bytes);
  EXPECT_EQ(bytes.size(), SerializedFrequenciesSize(f));
  ByteReader r(bytes, "test");
  auto back = ReadFrequencies(r);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, f);
  EXPECT_TRUE(r.done());
}

TEST(Frequencies, RejectsBadSum) {
  std::vector<uint8_t> bytes(32, 0);
  bytes[0] = 1;  // symbol 0 present
  bytes.push_back(10);
  bytes.push_back(0);  // freq 11
  ByteReader r(bytes, "test");
  EXPECT_EQ(ReadFrequencies(r).status().code(), absl::StatusCode::kDataLoss);
}

class ChunkRoundTrip : public ::testing::TestWithParam<std::tuple<NamedDecoder, size_t>> {};

TEST_P(ChunkRoundTrip, DecodesWhatWasEncoded) {
  const auto& [decoder, n] = GetParam();
  SKIP_UNLESS_RUNNABLE(decoder);
  for (double spread : {0.3, 3.0, 40.0, 1000.0}) {
    auto sym = Skewed(n, static_cast<uint32_t>(n), spread);
    if (n == 0) sym.clear();
    Counts c = CountSymbols(sym);
    if (n == 0) c[0] = 1;
    Frequencies f = NormalizeFrequencies(c);
    std::vector<uint8_t> stream;
    EncodeChunk(f, sym, &stream);
    DecodeTable table;
    ASSERT_TRUE(BuildDecodeTable(f, &table).ok());
    std::vector<uint8_t> out(n, 0xAA);
    absl::Status st = decoder.decode(table, stream, absl::MakeSpan(out));
    ASSERT_TRUE(st.ok()) << decoder.name << " n=" << n << ": " << st;
    EXPECT_EQ(out, sym) << decoder.name << " n=" << n << " spread=" << spread;
  }
}

INSTANTIATE_TEST_SUITE_P(
    DecodersAndSizes, ChunkRoundTrip,
    ::testing::Combine(::testing::ValuesIn(AllDecoders()),
                       ::testing::Values(0, 1, 31, 32, 33, 63, 64, 65, 1000, 4096, 65536, 65537)),
    [](const ::testing::TestParamInfo<std::tuple<NamedDecoder, size_t>>& info) {
      return std::string(std::get<0>(info.param).name) + "_" + std::to_string(std::get<1>(info.param));
    });

// DecodeChunk(impl) runs the decoder it is asked for where it can: the AVX2
// entry point runs the vendor's variant, which must agree with both.
TEST(ChunkDecode, DispatchRunsTheRequestedDecoder) {
  for (DecoderImpl impl : {DecoderImpl::kAvx2, DecoderImpl::kAvx512}) {
    EXPECT_EQ(DecoderImplAvailable(impl), impl == DecoderImpl::kAvx2 ? CpuHasAvx2() : CpuHasAvx512());
  }
  EXPECT_TRUE(DecoderImplAvailable(DecoderImpl::kScalar));
  EXPECT_TRUE(DecoderImplAvailable(BestDecoderImpl()));
  if (!CpuHasAvx2()) GTEST_SKIP() << "no AVX2 on this CPU: the AVX2 entry point cannot run";
  auto sym = Skewed(5000, 4, 20.0);
  Frequencies f = NormalizeFrequencies(CountSymbols(sym));
  std::vector<uint8_t> stream;
  EncodeChunk(f, sym, &stream);
  DecodeTable table;
  ASSERT_TRUE(BuildDecodeTable(f, &table).ok());
  std::vector<uint8_t> out(sym.size());
  ASSERT_TRUE(DecodeChunkAvx2(table, stream, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, sym) << (Avx2UsesScalarLoads() ? "avx2_scalar_load" : "avx2_gather");
}

TEST(ChunkDecode, CompressesNearEntropy) {
  auto sym = Skewed(1 << 16, 9, 3.0);
  Counts c = CountSymbols(sym);
  Frequencies f = NormalizeFrequencies(c);
  std::vector<uint8_t> stream;
  EncodeChunk(f, sym, &stream);
  const double bits = EstimateBits(c, f);
  EXPECT_LT(stream.size(), bits / 8 + kChunkHeaderBytes + 8);
  EXPECT_LT(stream.size(), sym.size() / 2);  // spread 3 => ~3.5 bits/symbol
}

class ChunkDecoder : public ::testing::TestWithParam<NamedDecoder> {};

TEST_P(ChunkDecoder, RejectsCorruptStreams) {
  const NamedDecoder& decoder = GetParam();
  SKIP_UNLESS_RUNNABLE(decoder);
  auto sym = Skewed(5000, 3, 20.0);
  Frequencies f = NormalizeFrequencies(CountSymbols(sym));
  std::vector<uint8_t> stream;
  EncodeChunk(f, sym, &stream);
  DecodeTable table;
  ASSERT_TRUE(BuildDecodeTable(f, &table).ok());
  std::vector<uint8_t> out(sym.size());
  // Truncated by one word.
  auto cut = absl::MakeConstSpan(stream.data(), stream.size() - 2);
  EXPECT_EQ(decoder.decode(table, cut, absl::MakeSpan(out)).code(), absl::StatusCode::kDataLoss);
  // Odd size.
  auto odd = absl::MakeConstSpan(stream.data(), stream.size() - 1);
  EXPECT_EQ(decoder.decode(table, odd, absl::MakeSpan(out)).code(), absl::StatusCode::kDataLoss);
  // Too short for the states.
  EXPECT_EQ(decoder.decode(table, absl::MakeConstSpan(stream.data(), 10), absl::MakeSpan(out)).code(),
            absl::StatusCode::kDataLoss);
  // A flipped state bit is caught by the final-state check.
  auto flipped = stream;
  flipped[5] ^= 0x10;
  absl::Status st = decoder.decode(table, flipped, absl::MakeSpan(out));
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(st.message()), HasSubstr("rANS chunk corrupt"));
  // Extra words.
  auto longer = stream;
  longer.push_back(0);
  longer.push_back(0);
  EXPECT_EQ(decoder.decode(table, longer, absl::MakeSpan(out)).code(), absl::StatusCode::kDataLoss);
}

INSTANTIATE_TEST_SUITE_P(AllDecoders, ChunkDecoder, ::testing::ValuesIn(AllDecoders()), DecoderName);

TEST(ChunkDecode, ConditionalRoundTrip) {
  std::mt19937 rng(5);
  const size_t n = 20000;
  std::vector<uint8_t> ctx(n), sym(n);
  for (size_t i = 0; i < n; ++i) {
    ctx[i] = static_cast<uint8_t>(rng() % 3);
    sym[i] = static_cast<uint8_t>(ctx[i] * 50 + rng() % (ctx[i] + 2));
  }
  uint8_t map[256] = {};
  map[1] = 1;
  map[2] = 2;
  std::vector<Frequencies> tables(3);
  for (int t = 0; t < 3; ++t) {
    Counts c{};
    for (size_t i = 0; i < n; ++i)
      if (map[ctx[i]] == t) ++c[sym[i]];
    tables[t] = NormalizeFrequencies(c);
  }
  std::vector<uint8_t> stream;
  EncodeChunkConditional(tables.data(), map, ctx, sym, &stream);
  std::vector<DecodeTable> dt(3);
  for (int t = 0; t < 3; ++t) ASSERT_TRUE(BuildDecodeTable(tables[t], &dt[t]).ok());
  std::vector<uint8_t> out(n);
  ASSERT_TRUE(DecodeChunkConditional(DecoderImpl::kAuto, dt.data(), 3, map, ctx, stream,
                                     absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, sym);
  uint8_t bad_map[256] = {};
  bad_map[9] = 3;  // out of range
  EXPECT_EQ(DecodeChunkConditional(DecoderImpl::kAuto, dt.data(), 3, bad_map, ctx, stream,
                                   absl::MakeSpan(out)).code(),
            absl::StatusCode::kDataLoss);
}

// ------------------------------------------------ conditional decoders ----

struct NamedConditionalDecoder {
  const char* name;
  absl::Status (*decode)(const DecodeTable*, size_t, const uint8_t*, absl::Span<const uint8_t>,
                         absl::Span<const uint8_t>, absl::Span<uint8_t>);
  bool (*available)();
  const char* needs;
};

std::vector<NamedConditionalDecoder> AllConditionalDecoders() {
  return {{"reference", DecodeChunkConditionalReference, Always, ""},
          {"scalar", DecodeChunkConditionalScalar, Always, ""},
          {"avx2_gather", DecodeChunkConditionalAvx2Gather, CpuHasAvx2, "AVX2"},
          {"avx2_scalar_load", DecodeChunkConditionalAvx2ScalarLoad, CpuHasAvx2, "AVX2"},
          {"avx512", DecodeChunkConditionalAvx512, CpuHasAvx512, "AVX-512 F/BW/VL"},
          {"avx512_gather", DecodeChunkConditionalAvx512Gather, CpuHasAvx512, "AVX-512 F/BW/VL"},
          {"avx512_vbmi", DecodeChunkConditionalAvx512Vbmi, CpuHasAvx512Vbmi, "AVX-512 VBMI"}};
}

// A random conditional plane: contexts, a context map onto num_tables
// tables, symbols drawn from a per-table distribution (so the tables differ),
// and its encoded stream.
struct ConditionalCase {
  std::vector<uint8_t> context, symbols, stream;
  uint8_t map[256];
  std::vector<Frequencies> freqs;
  std::vector<DecodeTable> tables;
};

// `context`: given contexts (n bytes) instead of random ones.
ConditionalCase MakeConditionalCase(size_t n, uint32_t seed, int num_tables,
                                    const std::vector<uint8_t>* context = nullptr) {
  std::mt19937 rng(seed);
  ConditionalCase k;
  for (int c = 0; c < 256; ++c) k.map[c] = static_cast<uint8_t>(rng() % num_tables);
  k.context.resize(n);
  k.symbols.resize(n);
  // Contexts cluster like exponents; each table has its own centre and spread.
  std::normal_distribution<double> ctx_d(120, 6);
  for (size_t i = 0; i < n; ++i) {
    k.context[i] = context != nullptr ? (*context)[i]
                                      : static_cast<uint8_t>(std::clamp(ctx_d(rng), 0.0, 255.0));
    const int t = k.map[k.context[i]];
    std::normal_distribution<double> d(37.0 * t, 0.5 + 7.0 * (t % 5));
    k.symbols[i] = static_cast<uint8_t>(static_cast<int>(std::lround(d(rng))) & 0xff);
  }
  std::vector<Counts> counts(num_tables);
  for (auto& c : counts) c.fill(0);
  for (size_t i = 0; i < n; ++i) ++counts[k.map[k.context[i]]][k.symbols[i]];
  for (auto& c : counts) {
    bool any = false;
    for (uint64_t v : c) any |= v != 0;
    if (!any) c[rng() & 0xff] = 1;  // unused table: any valid table
    k.freqs.push_back(NormalizeFrequencies(c));
  }
  k.tables.resize(num_tables);
  for (int t = 0; t < num_tables; ++t) EXPECT_TRUE(BuildDecodeTable(k.freqs[t], &k.tables[t]).ok());
  EncodeChunkConditional(k.freqs.data(), k.map, k.context, k.symbols, &k.stream);
  return k;
}

class ConditionalRoundTrip
    : public ::testing::TestWithParam<std::tuple<NamedConditionalDecoder, size_t>> {};

TEST_P(ConditionalRoundTrip, DecodesWhatWasEncoded) {
  const auto& [decoder, n] = GetParam();
  SKIP_UNLESS_RUNNABLE(decoder);
  for (int num_tables : {1, 2, 7, 40, 256}) {
    ConditionalCase k = MakeConditionalCase(n, static_cast<uint32_t>(n * 257 + num_tables), num_tables);
    std::vector<uint8_t> out(n, 0xAA);
    absl::Status st = decoder.decode(k.tables.data(), k.tables.size(), k.map, k.context, k.stream,
                                     absl::MakeSpan(out));
    ASSERT_TRUE(st.ok()) << decoder.name << " n=" << n << " tables=" << num_tables << ": " << st;
    EXPECT_EQ(out, k.symbols) << decoder.name << " n=" << n << " tables=" << num_tables;
  }
}

INSTANTIATE_TEST_SUITE_P(
    DecodersAndSizes, ConditionalRoundTrip,
    ::testing::Combine(::testing::ValuesIn(AllConditionalDecoders()),
                       ::testing::Values(0, 1, 31, 32, 33, 63, 65, 1000, 4099, 65536, 70001)),
    [](const ::testing::TestParamInfo<std::tuple<NamedConditionalDecoder, size_t>>& info) {
      return std::string(std::get<0>(info.param).name) + "_" + std::to_string(std::get<1>(info.param));
    });

class ConditionalDecoder : public ::testing::TestWithParam<NamedConditionalDecoder> {};

// Hostile streams (flipped bytes, truncated, extended, random garbage): every
// decoder gives the reference decoder's verdict and the same output bytes.
TEST_P(ConditionalDecoder, MatchesTheReferenceOnHostileStreams) {
  const NamedConditionalDecoder& decoder = GetParam();
  SKIP_UNLESS_RUNNABLE(decoder);
  std::mt19937 rng(77);
  int failures = 0;
  for (int trial = 0; trial < 300; ++trial) {
    const size_t n = 1 + rng() % 3000;
    ConditionalCase k = MakeConditionalCase(n, 1000 + trial, 1 + trial % 9);
    std::vector<uint8_t> stream = k.stream;
    switch (trial % 5) {
      case 0:  // flipped byte anywhere
        stream[rng() % stream.size()] ^= static_cast<uint8_t>(1 + rng() % 255);
        break;
      case 1:  // truncated by some words
        stream.resize(std::max<size_t>(kChunkHeaderBytes, stream.size() - 2 * (1 + rng() % 40)));
        break;
      case 2:  // extra words
        for (int w = 1 + rng() % 40; w > 0; --w) {
          stream.push_back(static_cast<uint8_t>(rng()));
          stream.push_back(static_cast<uint8_t>(rng()));
        }
        break;
      case 3:  // random garbage of a plausible size
        for (auto& b : stream) b = static_cast<uint8_t>(rng());
        break;
      case 4:  // a context byte changed after encoding
        k.context[rng() % n] ^= static_cast<uint8_t>(1 + rng() % 255);
        break;
    }
    std::vector<uint8_t> want(n, 0x5A), got(n, 0x5A);
    const absl::Status ref = DecodeChunkConditionalReference(k.tables.data(), k.tables.size(), k.map,
                                                             k.context, stream, absl::MakeSpan(want));
    const absl::Status st =
        decoder.decode(k.tables.data(), k.tables.size(), k.map, k.context, stream, absl::MakeSpan(got));
    ASSERT_EQ(st, ref) << decoder.name << " trial " << trial;
    ASSERT_EQ(got, want) << decoder.name << " trial " << trial;
    failures += !ref.ok();
  }
  EXPECT_GT(failures, 150);  // the corruptions were caught, not just matched
}

TEST_P(ConditionalDecoder, RejectsBadArguments) {
  const NamedConditionalDecoder& decoder = GetParam();
  SKIP_UNLESS_RUNNABLE(decoder);
  ConditionalCase k = MakeConditionalCase(500, 3, 3);
  std::vector<uint8_t> out(500);
  uint8_t bad_map[256] = {};
  bad_map[200] = 3;  // == num_tables
  EXPECT_EQ(decoder.decode(k.tables.data(), 3, bad_map, k.context, k.stream, absl::MakeSpan(out)).code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(decoder.decode(k.tables.data(), 0, k.map, k.context, k.stream, absl::MakeSpan(out)).code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(decoder.decode(k.tables.data(), 3, k.map, absl::MakeConstSpan(k.context.data(), 499),
                           k.stream, absl::MakeSpan(out)).code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(decoder.decode(k.tables.data(), 3, k.map, k.context,
                           absl::MakeConstSpan(k.stream.data(), 11), absl::MakeSpan(out)).code(),
            absl::StatusCode::kDataLoss);
}

INSTANTIATE_TEST_SUITE_P(AllDecoders, ConditionalDecoder, ::testing::ValuesIn(AllConditionalDecoders()),
                         [](const ::testing::TestParamInfo<NamedConditionalDecoder>& info) {
                           return std::string(info.param.name);
                         });

// ------------------------------------------------------------- pairs ----

std::vector<DecoderImpl> RunnableImpls() {
  std::vector<DecoderImpl> v;
  for (DecoderImpl impl : {DecoderImpl::kReference, DecoderImpl::kScalar, DecoderImpl::kAvx2,
                           DecoderImpl::kAvx512}) {
    if (DecoderImplAvailable(impl)) v.push_back(impl);
  }
  return v;
}

// DecodeChunkPair == DecodeChunkJob(a) then DecodeChunkJob(b) with the
// reference decoder, in bytes and verdict, for order-0 and conditional jobs,
// b conditioned on a's output, sizes that are not whole groups and differ
// between a and b, and streams
// that run out of words early in one of the two (so the interleaved loop
// stops before the other's end).
TEST(ChunkPair, MatchesTwoReferenceDecodes) {
  const std::vector<DecoderImpl> impls = RunnableImpls();
  if (!DecoderImplAvailable(DecoderImpl::kAvx2)) {
    std::printf("note: no AVX2 here; only the reference and scalar pair paths run\n");
  }
  std::mt19937 rng(11);
  for (int trial = 0; trial < 240; ++trial) {
    const size_t n = 1 + rng() % 5000;
    const bool cond_a = trial & 1, cond_b = trial & 2, b_on_a = trial & 4;
    const int corrupt = (trial >> 3) % 5;  // 0: none, 1: a truncated, 2: b truncated, 3: a flip, 4: b flip
    // a: plain (its symbols are b's contexts when b_on_a) or conditional.
    ConditionalCase ka = MakeConditionalCase(n, 5000 + trial, cond_a ? 5 : 1);
    // b's size differs from a's unless b takes a's output as its contexts.
    const size_t nb = cond_b && b_on_a ? n : 1 + rng() % 5000;
    ConditionalCase kb =
        MakeConditionalCase(nb, 9000 + trial, cond_b ? 4 : 1, cond_b && b_on_a ? &ka.symbols : nullptr);
    auto mutate = [&](std::vector<uint8_t>& s, bool truncate) {
      if (truncate) {
        s.resize(std::max<size_t>(kChunkHeaderBytes, s.size() - 2 * (1 + rng() % (s.size() / 4 + 1))));
      } else {
        s[rng() % s.size()] ^= 0x40;
      }
    };
    if (corrupt == 1 || corrupt == 3) mutate(ka.stream, corrupt == 1);
    if (corrupt == 2 || corrupt == 4) mutate(kb.stream, corrupt == 2);
    auto jobs = [&](std::vector<uint8_t>& out_a, std::vector<uint8_t>& out_b, ChunkJob* a, ChunkJob* b) {
      a->tables = ka.tables.data();
      a->num_tables = ka.tables.size();
      a->context_map = cond_a ? ka.map : nullptr;
      a->context = ka.context;
      a->chunk = ka.stream;
      a->out = absl::MakeSpan(out_a);
      b->tables = kb.tables.data();
      b->num_tables = kb.tables.size();
      b->context_map = cond_b ? kb.map : nullptr;
      b->context = cond_b && b_on_a ? absl::Span<const uint8_t>(out_a) : absl::Span<const uint8_t>(kb.context);
      b->chunk = kb.stream;
      b->out = absl::MakeSpan(out_b);
    };
    std::vector<uint8_t> want_a(n, 1), want_b(nb, 2);
    ChunkJob a, b;
    jobs(want_a, want_b, &a, &b);
    absl::Status want = DecodeChunkJob(DecoderImpl::kReference, a);
    if (want.ok()) want = DecodeChunkJob(DecoderImpl::kReference, b);
    if (corrupt == 0) {
      ASSERT_TRUE(want.ok()) << trial << ": " << want;
      ASSERT_EQ(want_a, ka.symbols);
      ASSERT_EQ(want_b, kb.symbols);
    }
    for (DecoderImpl impl : impls) {
      std::vector<uint8_t> got_a(n, 1), got_b(nb, 2);
      jobs(got_a, got_b, &a, &b);
      const absl::Status st = DecodeChunkPair(impl, a, b);
      ASSERT_EQ(st, want) << DecoderImplName(impl) << " trial " << trial;
      ASSERT_EQ(got_a, want_a) << DecoderImplName(impl) << " trial " << trial;
      if (want.ok() || corrupt == 2 || corrupt == 4) {
        ASSERT_EQ(got_b, want_b) << DecoderImplName(impl) << " trial " << trial;
      }
    }
  }
}

TEST(ChunkPair, RejectsBadJobs) {
  ConditionalCase k = MakeConditionalCase(300, 1, 2);
  std::vector<uint8_t> out_a(300), out_b(300);
  ChunkJob a;
  a.tables = k.tables.data();
  a.num_tables = 2;
  a.context_map = k.map;
  a.context = k.context;
  a.chunk = k.stream;
  a.out = absl::MakeSpan(out_a);
  ChunkJob b = a;
  b.out = absl::MakeSpan(out_b);
  uint8_t bad_map[256] = {};
  bad_map[0] = 2;
  for (DecoderImpl impl : RunnableImpls()) {
    ChunkJob bad = b;
    bad.context_map = bad_map;
    EXPECT_EQ(DecodeChunkPair(impl, a, bad).code(), absl::StatusCode::kDataLoss) << DecoderImplName(impl);
    EXPECT_EQ(DecodeChunkPair(impl, bad, a).code(), absl::StatusCode::kDataLoss) << DecoderImplName(impl);
    bad = b;
    bad.tables = nullptr;
    EXPECT_EQ(DecodeChunkPair(impl, a, bad).code(), absl::StatusCode::kDataLoss) << DecoderImplName(impl);
    EXPECT_TRUE(DecodeChunkPair(impl, a, b).ok()) << DecoderImplName(impl);
    EXPECT_EQ(out_a, k.symbols);
    EXPECT_EQ(out_b, k.symbols);
  }
}

// ----------------------------------------------------------- encoder ----

// The encoder as docs/FORMAT.md §6 states it (divide, branch, reverse).
std::vector<uint8_t> SpecEncode(const std::vector<const Frequencies*>& table_of_symbol,
                                const std::vector<uint8_t>& symbols) {
  uint32_t x[kLanes];
  for (auto& v : x) v = kRansLow;
  std::vector<uint16_t> words;
  for (size_t i = symbols.size(); i-- > 0;) {
    const Frequencies& f = *table_of_symbol[i];
    const uint32_t s = symbols[i];
    uint32_t cum = 0;
    for (uint32_t t = 0; t < s; ++t) cum += f[t];
    const uint32_t freq = f[s];
    uint32_t& st = x[i % kLanes];
    if (uint64_t{st} >= (uint64_t{1} << 20) * freq) {
      words.push_back(static_cast<uint16_t>(st & 0xffff));
      st >>= 16;
    }
    st = ((st / freq) << 12) + st % freq + cum;
  }
  std::vector<uint8_t> out(kChunkHeaderBytes);
  for (int l = 0; l < kLanes; ++l) {
    for (int b = 0; b < 4; ++b) out[4 * l + b] = static_cast<uint8_t>(x[l] >> (8 * b));
  }
  for (size_t k = words.size(); k-- > 0;) {
    out.push_back(static_cast<uint8_t>(words[k]));
    out.push_back(static_cast<uint8_t>(words[k] >> 8));
  }
  return out;
}

// EncodeChunk and EncodeChunkConditional (reciprocals, no branches; AVX-512
// where the CPU has it, and the scalar loops) write exactly the spec
// encoder's bytes: tables with freq-1 symbols, a symbol
// holding all 4096, skewed and flat tables, sizes that are not whole groups,
// and appending after existing bytes.
TEST(Encoder, MatchesTheSpecEncoder) {
  std::mt19937 rng(31);
  for (int trial = 0; trial < 120; ++trial) {
    const size_t n = trial < 8 ? trial : rng() % 9000;
    const int num_tables = 1 + trial % 4;
    std::vector<Frequencies> tables(num_tables);
    uint8_t map[256];
    for (int c = 0; c < 256; ++c) map[c] = static_cast<uint8_t>(rng() % num_tables);
    std::vector<uint8_t> context(n), symbols(n);
    for (auto& c : context) c = static_cast<uint8_t>(rng() % 16);
    for (int t = 0; t < num_tables; ++t) {
      Counts counts{};
      const int kind = (trial + t) % 4;
      if (kind == 3) {
        counts[static_cast<uint8_t>(rng())] = 1;  // one symbol: freq 4096
      } else {
        // kind 0: many rare symbols (freq 1); 1: skewed; 2: flat.
        for (int s = 0; s < 256; ++s) {
          counts[s] = kind == 0 ? (s % 7 == 0 ? 100000 : 1) : kind == 1 ? (rng() % 3 == 0 ? rng() % 50 : 0) : 10;
        }
        counts[rng() & 0xff] += 1;
      }
      tables[t] = NormalizeFrequencies(counts);
    }
    std::vector<std::vector<uint8_t>> present(num_tables);
    for (int t = 0; t < num_tables; ++t) {
      for (int s = 0; s < 256; ++s) {
        if (tables[t][s] != 0) present[t].push_back(static_cast<uint8_t>(s));
      }
    }
    std::vector<const Frequencies*> order0(n, &tables[0]), cond(n);
    for (size_t i = 0; i < n; ++i) {
      const int t = map[context[i]];
      cond[i] = &tables[t];
      symbols[i] = present[t][rng() % present[t].size()];
    }
    // Order-0 needs symbols present in table 0.
    std::vector<uint8_t> symbols0(n);
    for (size_t i = 0; i < n; ++i) symbols0[i] = present[0][rng() % present[0].size()];
    std::vector<uint8_t> want = {1, 2, 3};
    const auto spec0 = SpecEncode(order0, symbols0);
    want.insert(want.end(), spec0.begin(), spec0.end());
    const auto spec_cond = SpecEncode(cond, symbols);
    // The dispatching encoders (AVX-512 where this CPU has it) and the scalar ones.
    for (bool scalar : {false, true}) {
      std::vector<uint8_t> got = {1, 2, 3};
      (scalar ? EncodeChunkScalar : EncodeChunk)(tables[0], symbols0, &got);
      ASSERT_EQ(got, want) << "order-0, scalar " << scalar << ", trial " << trial << " n=" << n;
      got.clear();
      (scalar ? EncodeChunkConditionalScalar : EncodeChunkConditional)(tables.data(), map, context, symbols, &got);
      ASSERT_EQ(got, spec_cond) << "conditional, scalar " << scalar << ", trial " << trial << " n=" << n;
    }
  }
}

// ------------------------------------------------------------ planes ----

// Element k rebuilt from its plane bytes, written from docs/FORMAT.md §4.
uint64_t SpecMerge(PlaneSplit split, uint32_t width, const std::vector<std::vector<uint8_t>>& planes,
                   size_t k) {
  if (split == PlaneSplit::kBf16) {
    const uint32_t e = planes[0][k], sm = planes[1][k];
    return ((sm & 0x80) << 8) | (e << 7) | (sm & 0x7f);
  }
  if (split == PlaneSplit::kFp32) {
    const uint32_t e = planes[0][k], sm = planes[1][k];
    return ((sm & 0x80) << 24) | (e << 23) | ((sm & 0x7f) << 16) | (uint32_t{planes[2][k]} << 8) |
           planes[3][k];
  }
  uint64_t v = 0;
  for (uint32_t p = 0; p < width; ++p) v |= uint64_t{planes[p][k]} << (8 * (width - 1 - p));
  return v;
}

// Every merge implementation this CPU runs rebuilds the elements the spec
// defines, for every split, counts that are not whole vectors and unaligned
// plane pointers; every split implementation inverts it.
TEST(Planes, EveryMergeAndSplitMatchesTheSpec) {
  std::mt19937 rng(21);
  struct Case {
    PlaneSplit split;
    uint32_t width, planes;
  };
  const Case cases[] = {{PlaneSplit::kBf16, 2, 2}, {PlaneSplit::kFp32, 4, 4}, {PlaneSplit::kBytes, 1, 1},
                        {PlaneSplit::kBytes, 2, 2}, {PlaneSplit::kBytes, 3, 3}, {PlaneSplit::kBytes, 4, 4},
                        {PlaneSplit::kBytes, 8, 8}};
  int ran_simd = 0;
  for (const Case& c : cases) {
    for (size_t count : {0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 1000, 4133}) {
      std::vector<std::vector<uint8_t>> planes(c.planes, std::vector<uint8_t>(count + 1));
      for (auto& p : planes) {
        for (auto& b : p) b = static_cast<uint8_t>(rng());
      }
      const uint8_t* ptrs[kMaxPlanes];
      for (uint32_t p = 0; p < c.planes; ++p) ptrs[p] = planes[p].data() + 1;  // unaligned
      std::vector<std::vector<uint8_t>> shifted(c.planes);
      for (uint32_t p = 0; p < c.planes; ++p) shifted[p].assign(planes[p].begin() + 1, planes[p].end());
      for (MergeImpl impl : {MergeImpl::kScalar, MergeImpl::kAvx2, MergeImpl::kAvx512}) {
        std::vector<uint8_t> out(count * c.width + 1, 0xEE);
        if (!MergePlanesWith(impl, c.split, c.width, ptrs, count, out.data())) {
          EXPECT_NE(impl, MergeImpl::kScalar);
          continue;
        }
        ran_simd += impl != MergeImpl::kScalar;
        for (size_t k = 0; k < count; ++k) {
          uint64_t v = 0;
          std::memcpy(&v, out.data() + k * c.width, c.width);
          ASSERT_EQ(v, SpecMerge(c.split, c.width, shifted, k))
              << "impl " << static_cast<int>(impl) << " split " << static_cast<int>(c.split) << " width "
              << c.width << " count " << count << " element " << k;
        }
        EXPECT_EQ(out.back(), 0xEE) << "wrote past the end";
        // Split(Merge(planes)) == planes, with the same implementation, from
        // unaligned elements, writing nothing past the planes' ends.
        std::vector<uint8_t> elements(count * c.width + 1);
        std::memcpy(elements.data() + 1, out.data(), count * c.width);
        std::vector<std::vector<uint8_t>> back(c.planes, std::vector<uint8_t>(count + 1, 0xEE));
        uint8_t* bp[kMaxPlanes];
        for (uint32_t p = 0; p < c.planes; ++p) bp[p] = back[p].data();
        ASSERT_TRUE(SplitPlanesWith(impl, c.split, c.width, elements.data() + 1, count, bp));
        for (uint32_t p = 0; p < c.planes; ++p) {
          EXPECT_EQ(back[p].back(), 0xEE) << "split wrote past plane " << p;
          back[p].pop_back();
          ASSERT_EQ(back[p], shifted[p]) << "impl " << static_cast<int>(impl) << " plane " << p << " width "
                                         << c.width << " count " << count;
        }
      }
    }
  }
  if (ran_simd == 0) std::printf("note: no AVX2 here; only the scalar merge ran\n");
}

}  // namespace
}  // namespace bigsmall::rans
