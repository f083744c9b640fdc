#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "codec/byte_io.h"
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

}  // namespace
}  // namespace bigsmall::rans
