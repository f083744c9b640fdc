#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "codec/dtype.h"
#include "codec/tensor_blob.h"
#include "codec/tensor_codec.h"
#include "codec/thread_pool.h"
#include "gtest/gtest.h"

namespace bigsmall {
namespace {

uint16_t ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

// Weight-like data of the given dtype, with special values sprinkled in.
std::vector<uint8_t> MakeTensor(const std::string& dtype, size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.02f);
  std::vector<uint8_t> out;
  auto push = [&](const void* p, size_t w) {
    const auto* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + w);
  };
  const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e-40f, -1e-45f, 3.4e38f};
  for (size_t i = 0; i < n; ++i) {
    float v = (i % 997 == 5) ? specials[(i / 997) % 8] : d(rng);
    if (dtype == "BF16") {
      uint16_t b = ToBf16(v);
      push(&b, 2);
    } else if (dtype == "F32") {
      push(&v, 4);
    } else if (dtype == "F32_UPCAST") {
      uint32_t u = uint32_t{ToBf16(v)} << 16;
      push(&u, 4);
    } else if (dtype == "F64") {
      double x = v;
      push(&x, 8);
    } else if (dtype == "F16" || dtype == "I16") {
      uint16_t b = static_cast<uint16_t>(rng() & 0x3fff);
      push(&b, 2);
    } else if (dtype == "I64") {
      int64_t x = static_cast<int64_t>(i);
      push(&x, 8);
    } else {
      uint8_t b = static_cast<uint8_t>(std::clamp(d(rng) * 2000.0f + 128.0f, 0.0f, 255.0f));
      push(&b, 1);
    }
  }
  return out;
}

struct Case {
  std::string dtype;  // safetensors name (F32_UPCAST = F32 with zero low halves)
  size_t n;
};

class TensorRoundTrip : public ::testing::TestWithParam<std::tuple<Case, Mode>> {};

TEST_P(TensorRoundTrip, DecodesBitExactWithEveryDecoder) {
  const auto& [c, mode] = GetParam();
  const std::string st_name = c.dtype == "F32_UPCAST" ? "F32" : c.dtype;
  const DtypeInfo dtype = ResolveDtype(st_name);
  const auto bytes = MakeTensor(c.dtype, c.n, static_cast<uint32_t>(c.n));
  ThreadPool pool(2);
  EncodeOptions eo;
  eo.mode = mode;
  eo.chunk_elements = 1000;  // several chunks, one partial
  eo.pool = &pool;
  auto blob = EncodeTensorBlob(bytes, dtype, eo);
  ASSERT_TRUE(blob.ok()) << blob.status();
  for (DecoderImpl impl : {DecoderImpl::kReference, DecoderImpl::kScalar, DecoderImpl::kAvx2,
                           DecoderImpl::kAvx512}) {
    for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
      std::vector<uint8_t> out(bytes.size(), 0x5A);
      DecodeOptions opts;
      opts.impl = impl;
      opts.pool = p;
      absl::Status st = DecodeTensorBlob(*blob, absl::MakeSpan(out), opts);
      ASSERT_TRUE(st.ok()) << st;
      ASSERT_EQ(out, bytes) << c.dtype << " " << ModeName(mode) << " " << DecoderImplName(impl);
    }
  }
  auto summary = SummarizeTensorBlob(*blob);
  ASSERT_TRUE(summary.ok());
  EXPECT_EQ(summary->num_bytes, bytes.size());
}

INSTANTIATE_TEST_SUITE_P(
    DtypesAndModes, TensorRoundTrip,
    ::testing::Combine(::testing::Values(Case{"BF16", 0}, Case{"BF16", 1}, Case{"BF16", 5000},
                                         Case{"F32", 3001}, Case{"F32_UPCAST", 4000},
                                         Case{"F16", 2500}, Case{"F64", 1200}, Case{"I64", 3000},
                                         Case{"I16", 100}, Case{"U8", 7000}, Case{"F8_E4M3", 4096},
                                         Case{"BOOL", 33}, Case{"F4", 999},
                                         Case{"SOME_FUTURE_TYPE", 1234}),
                       ::testing::Values(Mode::kBalanced, Mode::kStorage, Mode::kInference)),
    [](const auto& info) {
      return std::get<0>(info.param).dtype + "_" + std::to_string(std::get<0>(info.param).n) + "_" +
             ModeName(std::get<1>(info.param));
    });

TEST(TensorCodec, BalancedBf16CodesExponentOnly) {
  const auto bytes = MakeTensor("BF16", 200000, 1);
  auto blob = EncodeTensorBlob(bytes, ResolveDtype("BF16"));
  ASSERT_TRUE(blob.ok());
  auto s = SummarizeTensorBlob(*blob);
  ASSERT_TRUE(s.ok());
  ASSERT_EQ(s->planes.size(), 2u);
  EXPECT_EQ(s->planes[0].coder, PlaneCoder::kRans);
  EXPECT_EQ(s->planes[1].coder, PlaneCoder::kRaw);
  EXPECT_LT(blob->size(), bytes.size() * 0.72);
}

TEST(TensorCodec, StorageConditionsMantissaOnExponent) {
  // Mantissas that depend strongly on the exponent: order-0 coding of the
  // mantissa plane alone cannot see that, the conditional coder can.
  std::mt19937 rng(2);
  std::vector<uint8_t> bytes;
  for (int i = 0; i < 300000; ++i) {
    const uint32_t exp = 120 + rng() % 8;
    const uint32_t mant = (exp * 13 + (rng() % 4)) & 0x7f;
    const uint16_t v = static_cast<uint16_t>(((rng() & 1) << 15) | (exp << 7) | mant);
    bytes.push_back(static_cast<uint8_t>(v));
    bytes.push_back(static_cast<uint8_t>(v >> 8));
  }
  EncodeOptions eo;
  eo.mode = Mode::kStorage;
  auto storage = EncodeTensorBlob(bytes, ResolveDtype("BF16"), eo);
  auto balanced = EncodeTensorBlob(bytes, ResolveDtype("BF16"));
  ASSERT_TRUE(storage.ok() && balanced.ok());
  auto s = SummarizeTensorBlob(*storage);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->planes[1].coder, PlaneCoder::kRansConditional);
  EXPECT_LT(storage->size(), balanced->size());
}

TEST(TensorCodec, UpcastFp32ShrinksBelowAThird) {
  const auto bytes = MakeTensor("F32_UPCAST", 300000, 3);
  auto blob = EncodeTensorBlob(bytes, ResolveDtype("F32"));
  ASSERT_TRUE(blob.ok());
  EXPECT_LT(static_cast<double>(blob->size()) / bytes.size(), 0.34);
}

TEST(TensorCodec, ConstantTensorIsTiny) {
  std::vector<uint8_t> zeros(1 << 20, 0);
  auto blob = EncodeTensorBlob(zeros, ResolveDtype("BF16"));
  ASSERT_TRUE(blob.ok());
  EXPECT_LT(blob->size(), 100u);
}

TEST(TensorCodec, WrongOutputSizeIsAnError) {
  const auto bytes = MakeTensor("BF16", 100, 4);
  auto blob = EncodeTensorBlob(bytes, ResolveDtype("BF16"));
  ASSERT_TRUE(blob.ok());
  std::vector<uint8_t> out(bytes.size() + 2);
  EXPECT_EQ(DecodeTensorBlob(*blob, absl::MakeSpan(out)).code(), absl::StatusCode::kDataLoss);
}

// Every truncation is an error; every single-byte corruption is an error or
// decodes to some bytes (the reader's hash check catches those) but never
// crashes or reads out of bounds (ASan build).
TEST(TensorCodec, HostileBlobsNeverCrash) {
  for (Mode mode : {Mode::kBalanced, Mode::kStorage}) {
    const auto bytes = MakeTensor("BF16", 3000, 5);
    EncodeOptions eo;
    eo.mode = mode;
    eo.chunk_elements = 700;
    auto blob = EncodeTensorBlob(bytes, ResolveDtype("BF16"), eo);
    ASSERT_TRUE(blob.ok());
    std::vector<uint8_t> out(bytes.size());
    for (size_t cut = 0; cut < blob->size(); cut += 7) {
      EXPECT_FALSE(DecodeTensorBlob(absl::MakeConstSpan(blob->data(), cut), absl::MakeSpan(out)).ok());
    }
    std::mt19937 rng(11);
    int detected = 0;
    for (size_t pos = 0; pos < blob->size(); pos += 3) {
      auto bad = *blob;
      bad[pos] ^= static_cast<uint8_t>(1 + rng() % 255);
      absl::Status st = DecodeTensorBlob(bad, absl::MakeSpan(out));
      if (!st.ok() || out != bytes) ++detected;
    }
    EXPECT_GT(detected, 0);
  }
}

}  // namespace
}  // namespace bigsmall
