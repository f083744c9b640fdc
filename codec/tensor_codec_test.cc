#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "codec/alloc_hook_for_test.h"
#include "codec/byte_io.h"
#include "codec/dtype.h"
#include "codec/rans_encode.h"
#include "codec/tensor_blob.h"
#include "codec/tensor_codec.h"
#include "codec/thread_pool.h"
#include "gtest/gtest.h"
#include "zstd.h"

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

class TensorRoundTrip : public ::testing::TestWithParam<std::tuple<Case, Mode, DecoderImpl>> {};

TEST_P(TensorRoundTrip, DecodesBitExact) {
  const auto& [c, mode, impl] = GetParam();
  if (!DecoderImplAvailable(impl)) {
    GTEST_SKIP() << "decoder " << DecoderImplName(impl)
                 << " cannot run on this CPU: not run (and no other decoder run in its place)";
  }
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
  for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
    std::vector<uint8_t> out(bytes.size(), 0x5A);
    DecodeOptions opts;
    opts.impl = impl;
    opts.pool = p;
    absl::Status st = DecodeTensorBlob(*blob, absl::MakeSpan(out), opts);
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_EQ(out, bytes) << c.dtype << " " << ModeName(mode) << " " << DecoderImplName(impl);
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
                       ::testing::Values(Mode::kBalanced, Mode::kStorage, Mode::kInference),
                       ::testing::Values(DecoderImpl::kReference, DecoderImpl::kScalar, DecoderImpl::kAvx2,
                                         DecoderImpl::kAvx512)),
    [](const auto& info) {
      return std::get<0>(info.param).dtype + "_" + std::to_string(std::get<0>(info.param).n) + "_" +
             ModeName(std::get<1>(info.param)) + "_" + DecoderImplName(std::get<2>(info.param));
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

// --inference halves the chunk of multi-byte dtypes (more GPU warps per
// layer); 1-byte types and the other modes keep theirs.
TEST(TensorCodec, ChunkElementsPerMode) {
  struct Case {
    const char* dtype;
    Mode mode;
    uint32_t chunk;
  } cases[] = {{"BF16", Mode::kInference, 1u << 15}, {"F32", Mode::kInference, 1u << 15},
               {"BF16", Mode::kBalanced, 1u << 16},  {"BF16", Mode::kStorage, 1u << 18},
               {"U8", Mode::kInference, 1u << 17}};
  for (const Case& c : cases) {
    const auto bytes = MakeTensor(c.dtype, 300000, 2);
    EncodeOptions eo;
    eo.mode = c.mode;
    auto blob = EncodeTensorBlob(bytes, ResolveDtype(c.dtype), eo);
    ASSERT_TRUE(blob.ok()) << c.dtype;
    auto parsed = ParseTensorBlob(*blob);
    ASSERT_TRUE(parsed.ok()) << c.dtype;
    EXPECT_EQ(parsed->chunk_elements, c.chunk) << c.dtype << " mode " << static_cast<int>(c.mode);
  }
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
  ASSERT_TRUE(s.ok()) << s.status();
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
    // Each corruption on its own: an error is DATA_LOSS (never another code,
    // never a crash); a blob that still decodes must give other bytes (which
    // the reader's per-tensor hash then rejects, see bs_roundtrip_test) or,
    // for a flip the decoder provably ignores, the very same bytes.
    std::mt19937 rng(11);
    int errors = 0, different = 0, identical = 0;
    for (size_t pos = 0; pos < blob->size(); pos += 3) {
      auto bad = *blob;
      bad[pos] ^= static_cast<uint8_t>(1 + rng() % 255);
      std::fill(out.begin(), out.end(), 0);
      absl::Status st = DecodeTensorBlob(bad, absl::MakeSpan(out));
      if (!st.ok()) {
        EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << "flip at " << pos << ": " << st;
        ++errors;
      } else if (out != bytes) {
        ++different;
      } else {
        ++identical;
      }
    }
    // Only the zstd frame header has bits a decoder may ignore; these blobs
    // (BF16, balanced/storage) code their planes with rANS or raw.
    EXPECT_EQ(identical, 0) << "flips that decoded to the original bytes";
    EXPECT_GT(errors, 0);
    (void)different;
  }
}

// Builds a blob header by hand (docs/FORMAT.md §5): version, split, width,
// planes, num_bytes, chunk_elements, num_chunks; then constant planes.
std::vector<uint8_t> ConstantBlob(uint8_t split, uint8_t width, uint8_t planes, uint64_t num_bytes,
                                  uint32_t chunk_elements, uint32_t num_chunks) {
  std::vector<uint8_t> b = {kBlobFormPlanes, split, width, planes};
  for (int i = 0; i < 8; ++i) b.push_back(static_cast<uint8_t>(num_bytes >> (8 * i)));
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(chunk_elements >> (8 * i)));
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(num_chunks >> (8 * i)));
  for (uint8_t p = 0; p < planes; ++p) {
    b.push_back(static_cast<uint8_t>(PlaneCoder::kConstant));
    b.push_back(0x3c);
  }
  return b;
}

// Regression: ceil(n / chunk_elements) was computed as (n + chunk_elements - 1)
// / chunk_elements, which wraps for n near 2^64: a blob claiming 2^64 - 1
// bytes in 0 chunks parsed (and was caught only when decoding into a buffer).
TEST(TensorBlob, ChunkCountDoesNotWrapNear2To64) {
  for (uint64_t n : {~uint64_t{0}, ~uint64_t{0} - 14, (~uint64_t{0} / 16) * 16 + 1}) {
    const auto blob = ConstantBlob(0, 1, 1, n, 16, 0);
    auto parsed = ParseTensorBlob(blob);
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kDataLoss) << "n=" << n;
    EXPECT_EQ(SummarizeTensorBlob(blob).status().code(), absl::StatusCode::kDataLoss) << "n=" << n;
  }
  // The honest count for a huge constant tensor is 2^60 chunks: more than a
  // u32 holds, so no count can describe it.
  for (uint32_t count : {0u, 1u, 0xffffffffu}) {
    EXPECT_FALSE(ParseTensorBlob(ConstantBlob(0, 1, 1, ~uint64_t{0}, 16, count)).ok()) << count;
  }
  // Still fine: a modest constant tensor.
  auto ok = ParseTensorBlob(ConstantBlob(0, 1, 1, 1000, 16, 63));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->num_chunks, 63u);
}

// Regression: the per-thread decode scratch grew with vector::resize, whose
// std::bad_alloc escaped DecodeTensorBlob (std::terminate on a pool thread).
TEST(TensorBlob, ScratchAllocationFailureIsResourceExhausted) {
  // Two constant BF16 planes, chunks of 2^23 elements: 16 MiB of scratch per chunk.
  constexpr uint32_t kChunk = 1u << 23;
  const auto blob = ConstantBlob(static_cast<uint8_t>(PlaneSplit::kBf16), 2, 2, uint64_t{4} * kChunk, kChunk, 2);
  std::vector<uint8_t> out(uint64_t{4} * kChunk);
  {
    // A fresh thread has no scratch yet.
    absl::Status st;
    bool threw = false;
    std::thread t([&] {
      test::FailLargeAllocations fail(8u << 20);
      try {
        st = DecodeTensorBlob(blob, absl::MakeSpan(out));
      } catch (...) {
        threw = true;
      }
    });
    t.join();
    ASSERT_FALSE(threw) << "DecodeTensorBlob threw";
    EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  }
  {
    // The same on pool threads (fresh ones: no scratch yet).
    ThreadPool pool(2);
    DecodeOptions opts;
    opts.pool = &pool;
    absl::Status st;
    {
      test::FailLargeAllocations fail(8u << 20);
      st = DecodeTensorBlob(blob, absl::MakeSpan(out), opts);
    }
    EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  }
  // With memory available the same blob decodes.
  ASSERT_TRUE(DecodeTensorBlob(blob, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out[0], 0x3c);
}

// Regression: every other allocation on the decode path (the 16 KiB rANS
// decode tables, parse tables) threw std::bad_alloc out of DecodeTensorBlob.
TEST(TensorBlob, AnyAllocationFailureWhileDecodingIsResourceExhausted) {
  // Planes past 64 KiB: rANS, whose decode tables are 16 KiB each.
  const auto bytes = MakeTensor("BF16", 100000, 3);
  auto blob = EncodeTensorBlob(bytes, ResolveDtype("BF16"));
  ASSERT_TRUE(blob.ok());
  std::vector<uint8_t> out(bytes.size());
  absl::Status st;
  bool threw = false;
  {
    test::FailLargeAllocations fail(4096);  // a decode table is 16 KiB
    try {
      st = DecodeTensorBlob(*blob, absl::MakeSpan(out));
    } catch (...) {
      threw = true;
    }
  }
  ASSERT_FALSE(threw) << "DecodeTensorBlob threw";
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  ASSERT_TRUE(DecodeTensorBlob(*blob, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, bytes);
}

// Regression: a batch's preparation task that threw (its decode tables
// could not be allocated, on a pool thread) left its job looking prepared,
// with tables missing; the batch must fail with RESOURCE_EXHAUSTED instead.
TEST(TensorBatch, AllocationFailureWhilePreparingFailsTheBatch) {
  // One-plane rANS blobs: their decode needs no scratch, only the tables.
  const auto a = MakeTensor("U8", 300000, 3), b = MakeTensor("U8", 300000, 4);
  auto ba = EncodeTensorBlob(a, ResolveDtype("U8")), bb = EncodeTensorBlob(b, ResolveDtype("U8"));
  ASSERT_TRUE(ba.ok() && bb.ok());
  auto sa = SummarizeTensorBlob(*ba);
  ASSERT_TRUE(sa.ok());
  ASSERT_EQ(sa->planes.size(), 1u);
  ASSERT_EQ(sa->planes[0].coder, PlaneCoder::kRans);
  std::vector<uint8_t> oa(a.size()), ob(b.size());
  std::vector<BlobDecodeJob> jobs = {{*ba, absl::MakeSpan(oa), {}}, {*bb, absl::MakeSpan(ob), {}}};
  ThreadPool pool(2);
  DecodeOptions options;
  options.pool = &pool;
  absl::Status st;
  {
    test::FailLargeAllocations fail(8192);  // a decode table is 16 KiB
    st = DecodeTensorBlobs(jobs, options);
  }
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  ASSERT_TRUE(DecodeTensorBlobs(jobs, options).ok());
  EXPECT_EQ(oa, a);
  EXPECT_EQ(ob, b);
}

// DecodeTensorBlobs: many blobs of different shapes decode on one queue,
// bit-exact, with and without a pool; xor_base rebuilds deltas; a damaged
// blob's error names its job.
TEST(TensorBatch, DecodesEveryBlobOnOneQueue) {
  struct Item {
    std::string dtype;
    size_t n;
  };
  const std::vector<Item> items = {{"BF16", 300000}, {"F32", 5}, {"U8", 1}, {"BF16", 0},
                                   {"F32", 70000},   {"F16", 4099}, {"I64", 3}, {"BF16", 65536 * 3}};
  std::vector<std::vector<uint8_t>> originals, blobs, outs, bases;
  for (size_t i = 0; i < items.size(); ++i) {
    originals.push_back(MakeTensor(items[i].dtype, items[i].n, static_cast<uint32_t>(i + 1)));
    auto blob = EncodeTensorBlob(originals.back(), ResolveDtype(items[i].dtype));
    ASSERT_TRUE(blob.ok()) << blob.status();
    blobs.push_back(*blob);
    outs.emplace_back(originals.back().size(), 0xAB);
    bases.push_back(MakeTensor(items[i].dtype, items[i].n, static_cast<uint32_t>(i + 100)));
  }
  ThreadPool pool(3);
  for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
    std::vector<BlobDecodeJob> jobs;
    for (size_t i = 0; i < items.size(); ++i) jobs.push_back({blobs[i], absl::MakeSpan(outs[i]), {}});
    DecodeOptions options;
    options.pool = p;
    ASSERT_TRUE(DecodeTensorBlobs(jobs, options).ok());
    for (size_t i = 0; i < items.size(); ++i) EXPECT_EQ(outs[i], originals[i]) << i;
    // The same blobs as deltas against `bases`: out = decoded XOR base.
    for (size_t i = 0; i < items.size(); ++i) jobs[i].xor_base = bases[i];
    ASSERT_TRUE(DecodeTensorBlobs(jobs, options).ok());
    for (size_t i = 0; i < items.size(); ++i) {
      std::vector<uint8_t> expect = originals[i];
      for (size_t k = 0; k < expect.size(); ++k) expect[k] ^= bases[i][k];
      EXPECT_EQ(outs[i], expect) << i;
    }
  }
  // Job 4's blob cut short: its error, named as job 4, and not job 0's.
  std::vector<uint8_t> cut(blobs[4].begin(), blobs[4].end() - 7);
  std::vector<BlobDecodeJob> jobs;
  for (size_t i = 0; i < items.size(); ++i) jobs.push_back({blobs[i], absl::MakeSpan(outs[i]), {}});
  jobs[4].blob = cut;
  DecodeOptions options;
  options.pool = &pool;
  absl::Status st = DecodeTensorBlobs(jobs, options);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(std::string(st.message()).find("tensor 4: "), std::string::npos) << st;
  // A payload byte flipped mid-stream (parse passes, a chunk fails).
  std::vector<uint8_t> flipped = blobs[7];
  flipped[flipped.size() / 2] ^= 0x5A;
  jobs[4].blob = blobs[4];
  jobs[7].blob = flipped;
  st = DecodeTensorBlobs(jobs, options);
  if (!st.ok()) {
    EXPECT_NE(std::string(st.message()).find("tensor 7: "), std::string::npos) << st;
  } else {
    EXPECT_NE(outs[7], originals[7]);  // rANS may decode garbage: the hash (caller) catches it
  }
  // A base of the wrong size is refused before anything is decoded.
  jobs[7].blob = blobs[7];
  jobs[2].xor_base = absl::MakeConstSpan(bases[1]);
  st = DecodeTensorBlobs(jobs, options);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_TRUE(DecodeTensorBlobs({}, options).ok());
}

// ---- Blob forms 2-6 (docs/FORMAT.md §5.3-§5.6) and the mode rules (§5.7).

uint8_t FormOf(const std::vector<uint8_t>& blob) { return blob.empty() ? 0 : blob[0]; }

std::vector<uint8_t> DecodeOrDie(const std::vector<uint8_t>& blob, size_t size) {
  std::vector<uint8_t> out(size, 0xCD);
  absl::Status st = DecodeTensorBlob(blob, absl::MakeSpan(out));
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

// A tiny tensor costs its bytes plus one (it used to cost 20 more).
TEST(TensorForms, TinyTensorsCostTheirBytesPlusOne) {
  std::mt19937 rng(3);
  for (const char* dtype : {"I64", "BF16", "F32", "U8"}) {
    for (size_t n : {1u, 8u, 24u}) {
      std::vector<uint8_t> bytes(n * ResolveDtype(dtype).width);
      for (auto& b : bytes) b = static_cast<uint8_t>(rng());
      for (Mode mode : {Mode::kBalanced, Mode::kStorage, Mode::kInference}) {
        EncodeOptions eo;
        eo.mode = mode;
        auto blob = EncodeTensorBlob(bytes, ResolveDtype(dtype), eo);
        ASSERT_TRUE(blob.ok());
        EXPECT_LE(blob->size(), bytes.size() + 1) << dtype << " x" << n << " " << ModeName(mode);
        EXPECT_EQ(DecodeOrDie(*blob, bytes.size()), bytes);
      }
    }
  }
  auto empty = EncodeTensorBlob({}, ResolveDtype("BF16"));
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(*empty, std::vector<uint8_t>{kBlobFormRaw});
  EXPECT_TRUE(DecodeTensorBlob(*empty, {}).ok());
}

// Rows that repeat (a deterministic table): order-0 planes cannot see it,
// whole-tensor zstd can; every mode takes it (--inference because nothing
// else comes within its 0.2 % budget).
std::vector<uint8_t> RepeatingRows(size_t rows, size_t row_floats, size_t distinct, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.5f);
  std::vector<std::vector<float>> base(distinct, std::vector<float>(row_floats));
  for (auto& r : base) {
    for (float& v : r) v = d(rng);
  }
  std::vector<uint8_t> out(rows * row_floats * 4);
  for (size_t r = 0; r < rows; ++r) std::memcpy(out.data() + r * row_floats * 4, base[r % distinct].data(), row_floats * 4);
  return out;
}

TEST(TensorForms, RepeatingTableIsCodedAsWholeTensorZstd) {
  const auto bytes = RepeatingRows(2048, 64, 16, 1);  // 512 KiB
  for (Mode mode : {Mode::kBalanced, Mode::kStorage, Mode::kInference}) {
    EncodeOptions eo;
    eo.mode = mode;
    auto blob = EncodeTensorBlob(bytes, ResolveDtype("F32"), eo);
    ASSERT_TRUE(blob.ok());
    EXPECT_EQ(FormOf(*blob), kBlobFormZstdMagicless) << ModeName(mode);
    EXPECT_LT(blob->size(), bytes.size() / 20) << ModeName(mode);
    EXPECT_EQ(DecodeOrDie(*blob, bytes.size()), bytes);
    auto s = SummarizeTensorBlob(*blob);
    ASSERT_TRUE(s.ok());
    EXPECT_EQ(s->form, kBlobFormZstdMagicless);
    EXPECT_STREQ(BlobFormName(s->form), "zstd-magicless");
  }
}

// Past one zstd frame (16 MiB) the same LZ coding is a bytes/1 planes blob
// of 16 MiB zstd chunks, which threads decode in parallel.
TEST(TensorForms, LargeRepeatingTableIsChunkedZstd) {
  const auto bytes = RepeatingRows(4200, 1024, 3, 2);  // 16.4 MiB
  EncodeOptions eo;
  eo.mode = Mode::kInference;
  auto blob = EncodeTensorBlob(bytes, ResolveDtype("F32"), eo);
  ASSERT_TRUE(blob.ok());
  auto parsed = ParseTensorBlob(*blob);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->form, kBlobFormPlanes);
  EXPECT_EQ(parsed->width, 1u);
  ASSERT_EQ(parsed->planes.size(), 1u);
  EXPECT_EQ(parsed->planes[0].coder, PlaneCoder::kZstd);
  EXPECT_EQ(parsed->num_chunks, 2u);
  EXPECT_LT(blob->size(), bytes.size() / 100);
  ThreadPool pool(2);
  std::vector<uint8_t> out(bytes.size());
  DecodeOptions opts;
  opts.pool = &pool;
  ASSERT_TRUE(DecodeTensorBlob(*blob, absl::MakeSpan(out), opts).ok());
  EXPECT_EQ(out, bytes);
}

// GGUF Q4_1-like blocks stored as U8: 20-byte records of an f16 scale, an
// f16 minimum and 16 bytes of nibbles. The fields form codes the scales
// apart from the nibbles and beats order-0 coding of the mixed bytes.
std::vector<uint8_t> Q41Blocks(size_t blocks, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> out;
  for (size_t b = 0; b < blocks; ++b) {
    const uint16_t d = static_cast<uint16_t>(0x2000 + rng() % 96);  // small positive f16 scales
    const uint16_t m = static_cast<uint16_t>(0xA400 + rng() % 64);  // small negative minimums
    out.push_back(static_cast<uint8_t>(d));
    out.push_back(static_cast<uint8_t>(d >> 8));
    out.push_back(static_cast<uint8_t>(m));
    out.push_back(static_cast<uint8_t>(m >> 8));
    for (int k = 0; k < 16; ++k) {
      const int lo = std::clamp(static_cast<int>(std::lround(7.5 + 2.5 * std::normal_distribution<float>()(rng))), 0, 15);
      const int hi = std::clamp(static_cast<int>(std::lround(7.5 + 2.5 * std::normal_distribution<float>()(rng))), 0, 15);
      out.push_back(static_cast<uint8_t>(lo | (hi << 4)));
    }
  }
  return out;
}

double Order0Bytes(const std::vector<uint8_t>& bytes) {
  std::array<double, 256> c{};
  for (uint8_t b : bytes) c[b] += 1;
  double bits = 0;
  for (double v : c) {
    if (v > 0) bits -= v * std::log2(v / bytes.size());
  }
  return bits / 8;
}

TEST(TensorForms, QuantizedBlocksSplitIntoFields) {
  const auto bytes = Q41Blocks(20000, 4);  // 400,000 bytes
  for (Mode mode : {Mode::kBalanced, Mode::kStorage, Mode::kInference}) {
    EncodeOptions eo;
    eo.mode = mode;
    auto blob = EncodeTensorBlob(bytes, ResolveDtype("U8"), eo);
    ASSERT_TRUE(blob.ok());
    EXPECT_EQ(FormOf(*blob), kBlobFormFields) << ModeName(mode);
    auto parsed = ParseTensorBlob(*blob);
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(parsed->record_bytes, 20u);
    EXPECT_LT(blob->size(), 0.97 * Order0Bytes(bytes)) << ModeName(mode);
    EXPECT_EQ(DecodeOrDie(*blob, bytes.size()), bytes);
    // Batch decode (a fields blob is one work item) and XOR agree too.
    std::vector<uint8_t> out(bytes.size()), base(bytes.size(), 0x5A);
    ThreadPool pool(2);
    DecodeOptions opts;
    opts.pool = &pool;
    std::vector<BlobDecodeJob> jobs = {{*blob, absl::MakeSpan(out), base}};
    ASSERT_TRUE(DecodeTensorBlobs(jobs, opts).ok());
    for (size_t i = 0; i < out.size(); ++i) out[i] ^= 0x5A;
    EXPECT_EQ(out, bytes);
  }
  // Random bytes whose size happens to divide by 20 stay unsplit.
  std::mt19937 rng(5);
  std::vector<uint8_t> noise(400000);
  for (auto& b : noise) b = static_cast<uint8_t>(rng());
  auto blob = EncodeTensorBlob(noise, ResolveDtype("U8"));
  ASSERT_TRUE(blob.ok());
  EXPECT_NE(FormOf(*blob), kBlobFormFields);
}

// --inference: the fastest decode within 0.2 % of the smallest candidate,
// so within 0.3 % of balanced, tensor by tensor; near-incompressible planes
// (FP32 low mantissa bytes) stay raw.
TEST(TensorForms, InferenceStaysWithinItsBudget) {
  for (const char* dtype : {"BF16", "F32", "F16", "F8_E4M3", "F32_UPCAST"}) {
    const std::string st_name = std::string(dtype) == "F32_UPCAST" ? "F32" : dtype;
    const auto bytes = MakeTensor(dtype, 400000, 9);
    EncodeOptions inf, bal;
    inf.mode = Mode::kInference;
    auto a = EncodeTensorBlob(bytes, ResolveDtype(st_name), inf);
    auto b = EncodeTensorBlob(bytes, ResolveDtype(st_name), bal);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_LE(static_cast<double>(a->size()), b->size() + 0.003 * bytes.size()) << dtype << ": " << [&] {
      std::string out;
      for (const auto* blob : {&*a, &*b}) {
        auto sm = SummarizeTensorBlob(*blob);
        if (!sm.ok()) continue;
        out += std::to_string(blob->size()) + " form " + std::to_string(sm->form) + " chunks " + std::to_string(sm->num_chunks);
        for (const auto& pl : sm->planes) out += " " + std::to_string(static_cast<int>(pl.coder)) + ":" + std::to_string(pl.stored_bytes);
        out += "; ";
      }
      return out;
    }();
    EXPECT_EQ(DecodeOrDie(*a, bytes.size()), bytes);
  }
  auto fp32 = MakeTensor("F32", 400000, 10);
  std::mt19937 rng(10);
  for (size_t i = 0; i < fp32.size(); i += 4) fp32[i] = static_cast<uint8_t>(rng());  // random low bytes
  EncodeOptions inf;
  inf.mode = Mode::kInference;
  auto blob = EncodeTensorBlob(fp32, ResolveDtype("F32"), inf);
  ASSERT_TRUE(blob.ok());
  auto s = SummarizeTensorBlob(*blob);
  ASSERT_TRUE(s.ok());
  ASSERT_EQ(s->planes.size(), 4u);
  EXPECT_EQ(s->planes[3].coder, PlaneCoder::kRaw) << "random low mantissa bytes";
  EXPECT_NE(s->planes[0].coder, PlaneCoder::kRaw) << "the exponent plane is worth coding";
}

// Hostile forms 2-4: cuts and flips never crash; errors are DATA_LOSS.
TEST(TensorForms, HostileFormsNeverCrash) {
  std::vector<std::pair<std::vector<uint8_t>, size_t>> blobs;
  const auto table = RepeatingRows(2048, 64, 16, 6);
  const auto q41 = Q41Blocks(3000, 7);
  const std::vector<uint8_t> tiny = {1, 2, 3};
  const auto small = MakeTensor("F32", 3000, 8);
  for (const auto* bytes : {&table, &q41, &tiny, &small}) {
    auto blob = EncodeTensorBlob(*bytes, ResolveDtype(bytes == &table || bytes == &small ? "F32" : "U8"));
    ASSERT_TRUE(blob.ok());
    blobs.push_back({*blob, bytes->size()});
  }
  EXPECT_EQ(FormOf(blobs[0].first), kBlobFormZstdMagicless);
  EXPECT_EQ(FormOf(blobs[1].first), kBlobFormFields);
  EXPECT_EQ(FormOf(blobs[2].first), kBlobFormRaw);
  EXPECT_EQ(FormOf(blobs[3].first), kBlobFormSmallPlanes);
  for (const auto& [blob, size] : blobs) {
    std::vector<uint8_t> out(size);
    // Every header byte, then ~128 positions through the payload.
    const size_t step = std::max<size_t>(1, blob.size() / 128);
    auto next = [step](size_t at) { return at < 96 ? at + 1 : at + step; };
    for (size_t cut = 0; cut < blob.size(); cut = next(cut)) {
      const absl::Status st = DecodeTensorBlob(absl::MakeConstSpan(blob.data(), cut), absl::MakeSpan(out));
      EXPECT_FALSE(st.ok()) << "cut " << cut;
      EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
    }
    std::mt19937 rng(12);
    for (size_t pos = 0; pos < blob.size(); pos = next(pos)) {
      auto bad = blob;
      bad[pos] ^= static_cast<uint8_t>(1 + rng() % 255);
      const absl::Status st = DecodeTensorBlob(bad, absl::MakeSpan(out));
      if (!st.ok()) EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << "flip at " << pos << ": " << st;
    }
  }
  // Unknown forms, a fields blob inside a fields blob, a zstd frame that
  // does not declare its size.
  EXPECT_EQ(DecodeTensorBlob(std::vector<uint8_t>{7, 0}, {}).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeTensorBlob(std::vector<uint8_t>{5, 0}, {}).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeTensorBlob(std::vector<uint8_t>{0}, {}).code(), absl::StatusCode::kDataLoss);
  std::vector<uint8_t> nested = {kBlobFormFields, 2, 0, 2, 1, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0};
  for (int f = 0; f < 2; ++f) {
    nested.insert(nested.end(), {3, 0, 0, 0, 0, 0, 0, 0});  // blob_size 3
    nested.insert(nested.end(), {kBlobFormFields, 0, 0});
  }
  std::vector<uint8_t> two(2);
  absl::Status st = DecodeTensorBlob(nested, absl::MakeSpan(two));
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(std::string(st.message()).find("cannot itself be split"), std::string::npos) << st;
  std::vector<uint8_t> frame(64);
  const size_t n = ZSTD_compress(frame.data(), frame.size(), "abcd", 4, 1);
  ASSERT_FALSE(ZSTD_isError(n));
  frame.resize(n);
  std::vector<uint8_t> with_form = {kBlobFormZstd};
  with_form.insert(with_form.end(), frame.begin(), frame.end());
  std::vector<uint8_t> four(4);
  EXPECT_TRUE(DecodeTensorBlob(with_form, absl::MakeSpan(four)).ok());
  EXPECT_EQ(std::string(four.begin(), four.end()), "abcd");
  with_form.insert(with_form.end(), frame.begin(), frame.end());  // two frames
  EXPECT_EQ(DecodeTensorBlob(with_form, absl::MakeSpan(four)).code(), absl::StatusCode::kDataLoss);
}

// Form 5 (docs/FORMAT.md §5.4): form 3 without the frame's magic number,
// 3 bytes less than the frame a zstd tool writes; form 3 still decodes.
TEST(TensorForms, MagiclessZstdBlobIsTheFrameWithoutItsMagic) {
  const auto bytes = RepeatingRows(2048, 64, 16, 13);  // 512 KiB
  std::vector<uint8_t> standard, magicless;
  ZstdCompressOptions zo;
  zo.level = 19;
  ASSERT_TRUE(ZstdCompressFrame(bytes, zo, &standard).ok());
  zo.framing = ZstdFraming::kMagicless;
  ASSERT_TRUE(ZstdCompressFrame(bytes, zo, &magicless).ok());
  ASSERT_EQ(magicless.size() + 4, standard.size());
  EXPECT_TRUE(std::equal(magicless.begin(), magicless.end(), standard.begin() + 4));
  for (Mode mode : {Mode::kBalanced, Mode::kStorage, Mode::kInference}) {
    EncodeOptions eo;
    eo.mode = mode;
    auto blob = EncodeTensorBlob(bytes, ResolveDtype("F32"), eo);
    ASSERT_TRUE(blob.ok());
    ASSERT_EQ(FormOf(*blob), kBlobFormZstdMagicless) << ModeName(mode);
    // --storage compresses at level 19, as `standard` was.
    if (mode == Mode::kStorage) EXPECT_EQ(blob->size(), standard.size() - 3);
    EXPECT_EQ(DecodeOrDie(*blob, bytes.size()), bytes);
  }
  std::vector<uint8_t> form3 = {kBlobFormZstd}, form5 = {kBlobFormZstdMagicless};
  form3.insert(form3.end(), standard.begin(), standard.end());
  form5.insert(form5.end(), magicless.begin(), magicless.end());
  EXPECT_EQ(DecodeOrDie(form3, bytes.size()), bytes);
  EXPECT_EQ(DecodeOrDie(form5, bytes.size()), bytes);
  // Each form is read with its own framing: swapped, neither parses.
  std::vector<uint8_t> out(bytes.size());
  form3[0] = kBlobFormZstdMagicless;
  form5[0] = kBlobFormZstd;
  EXPECT_EQ(DecodeTensorBlob(form3, absl::MakeSpan(out)).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeTensorBlob(form5, absl::MakeSpan(out)).code(), absl::StatusCode::kDataLoss);
  // A byte after the frame, and a frame declaring no size, are refused.
  form5[0] = kBlobFormZstdMagicless;
  form5.push_back(0);
  EXPECT_EQ(DecodeTensorBlob(form5, absl::MakeSpan(out)).code(), absl::StatusCode::kDataLoss);
}

// Form 6 (docs/FORMAT.md §5.6): every planes blob of one chunk, with a
// compact header; the chunk decodes as form 1's would.
TEST(TensorForms, OneChunkTensorsUseTheSmallPlanesForm) {
  for (const char* dtype : {"F32", "BF16", "F16"}) {
    const auto bytes = MakeTensor(dtype, 5000, 21);
    for (Mode mode : {Mode::kBalanced, Mode::kStorage, Mode::kInference}) {
      EncodeOptions eo;
      eo.mode = mode;
      auto blob = EncodeTensorBlob(bytes, ResolveDtype(dtype), eo);
      ASSERT_TRUE(blob.ok());
      ASSERT_EQ(FormOf(*blob), kBlobFormSmallPlanes) << dtype << " " << ModeName(mode);
      auto parsed = ParseTensorBlob(*blob);
      ASSERT_TRUE(parsed.ok()) << parsed.status();
      EXPECT_EQ(parsed->num_chunks, 1u);
      EXPECT_EQ(parsed->chunk_elements, parsed->num_elements);
      EXPECT_EQ(parsed->num_bytes, bytes.size());
      EXPECT_EQ(DecodeOrDie(*blob, bytes.size()), bytes) << dtype << " " << ModeName(mode);
      // The header is form 6's: 3 bytes, the LEB128 size, then per plane
      // its coder, table and one LEB128 size (no u32 per chunk).
      auto s = SummarizeTensorBlob(*blob);
      ASSERT_TRUE(s.ok());
      uint64_t payload = 0;
      for (const auto& p : s->planes) payload += p.stored_bytes;
      const uint64_t header = blob->size() - payload;
      uint64_t expect = 3 + ByteWriter::VarintSize(bytes.size());
      for (size_t p = 0; p < parsed->planes.size(); ++p) {
        const BlobPlane& pl = parsed->planes[p];
        expect += 1;
        if (pl.coder == PlaneCoder::kConstant) expect += 1;
        if (pl.coder == PlaneCoder::kRansConditional) expect += 1 + 2 + 256;
        for (const auto& t : pl.tables) expect += rans::SerializedFrequenciesSize(t);
        if (pl.coder != PlaneCoder::kRaw && pl.coder != PlaneCoder::kConstant) {
          expect += ByteWriter::VarintSize(s->planes[p].stored_bytes);
        }
      }
      EXPECT_EQ(header, expect) << dtype << " " << ModeName(mode);
    }
  }
  // A tensor of two chunks stays form 1.
  EncodeOptions eo;
  eo.chunk_elements = 4096;
  auto two = EncodeTensorBlob(MakeTensor("F32", 5000, 22), ResolveDtype("F32"), eo);
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(FormOf(*two), kBlobFormPlanes);
}

// Form 6 written by hand: the normative layout, and what a decoder refuses.
TEST(TensorForms, SmallPlanesBlobByHand) {
  std::vector<uint8_t> raw_bytes(200);
  for (size_t i = 0; i < raw_bytes.size(); ++i) raw_bytes[i] = static_cast<uint8_t>(i * 7);
  // bytes/1, 200 bytes (LEB128 C8 01), one raw plane.
  std::vector<uint8_t> blob = {kBlobFormSmallPlanes, 0, 1, 0xC8, 0x01, 0};
  blob.insert(blob.end(), raw_bytes.begin(), raw_bytes.end());
  EXPECT_EQ(DecodeOrDie(blob, 200), raw_bytes);
  // bytes/2, 3 elements: a constant high plane, a magicless zstd low plane.
  std::vector<uint8_t> frame;
  ZstdCompressOptions zo;
  zo.framing = ZstdFraming::kMagicless;
  const std::vector<uint8_t> low = {9, 8, 7};
  ASSERT_TRUE(ZstdCompressFrame(low, zo, &frame).ok());
  std::vector<uint8_t> two = {kBlobFormSmallPlanes, 0, 2, 6, 1, 0xAB, 4, static_cast<uint8_t>(frame.size())};
  two.insert(two.end(), frame.begin(), frame.end());
  EXPECT_EQ(DecodeOrDie(two, 6), (std::vector<uint8_t>{9, 0xAB, 8, 0xAB, 7, 0xAB}));
  std::vector<uint8_t> out(6);
  auto refused = [&](std::vector<uint8_t> b, size_t size, const char* why) {
    out.resize(size);
    const absl::Status st = DecodeTensorBlob(b, absl::MakeSpan(out));
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << why << ": " << st;
  };
  auto with = [&](size_t at, uint8_t v) {
    auto b = two;
    b[at] = v;
    return b;
  };
  refused(with(3, 7), 7, "num_bytes not a multiple of the width");
  refused({kBlobFormSmallPlanes, 0, 1, 0}, 0, "no elements");
  refused({kBlobFormSmallPlanes, 0, 1, 0x81, 0x80, 0x80, 0x08, 0}, 1, "2^24 + 1 elements");
  refused({kBlobFormSmallPlanes, 0, 1, 0x80, 0x80, 0x80, 0x80, 0x01, 0}, 1, "a 5-byte LEB128");
  refused({kBlobFormSmallPlanes, 0, 1, 0x81, 0x00, 1, 5}, 1, "a LEB128 not in its shortest form");
  refused(with(7, static_cast<uint8_t>(frame.size() + 1)), 6, "payload past the end");
  refused(with(7, static_cast<uint8_t>(frame.size() - 1)), 6, "a byte after the payload");
  auto extra = two;
  extra.push_back(0);
  refused(extra, 6, "trailing byte");
  auto standard_frame = two;  // a zstd plane of form 6 must be magicless
  standard_frame.resize(8);
  std::vector<uint8_t> std_frame;
  ASSERT_TRUE(ZstdCompressFrame(low, ZstdCompressOptions{}, &std_frame).ok());
  standard_frame[7] = static_cast<uint8_t>(std_frame.size());
  standard_frame.insert(standard_frame.end(), std_frame.begin(), std_frame.end());
  refused(standard_frame, 6, "a standard frame in form 6");
  for (size_t cut = 0; cut < two.size(); ++cut) {
    refused(std::vector<uint8_t>(two.begin(), two.begin() + cut), 6, "truncated");
  }
}

TEST(ByteIo, VarintRoundTripsAndHasOneEncoding) {
  for (uint64_t v : {0ull, 1ull, 127ull, 128ull, 16383ull, 16384ull, (1ull << 28) - 1, 1ull << 35, ~0ull}) {
    std::vector<uint8_t> b;
    ByteWriter w(&b);
    w.Varint(v);
    EXPECT_EQ(b.size(), ByteWriter::VarintSize(v)) << v;
    ByteReader r(b, "test");
    auto got = r.Varint("value", 10);
    ASSERT_TRUE(got.ok()) << v << ": " << got.status();
    EXPECT_EQ(*got, v);
    EXPECT_TRUE(r.done());
    if (b.size() > 1) {
      ByteReader shorter(b, "test");
      EXPECT_FALSE(shorter.Varint("value", static_cast<int>(b.size()) - 1).ok()) << v;
    }
  }
  const std::vector<uint8_t> padded = {0x80, 0x00};
  ByteReader r(padded, "test");
  EXPECT_EQ(r.Varint("value", 4).status().code(), absl::StatusCode::kDataLoss);
}

// FP8 bytes whose distribution drifts along the tensor (as embedding rows
// sorted by token frequency do): the spread of values grows with the row.
std::vector<uint8_t> DriftingFp8(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> out(n);
  for (size_t i = 0; i < n; ++i) {
    const double scale = 0.02 + 0.5 * static_cast<double>(i) / static_cast<double>(n);
    const float v = static_cast<float>(std::normal_distribution<double>(0.0, scale)(rng));
    // e4m3-like: sign, 4-bit exponent (bias 7), 3 mantissa bits.
    int e = 0;
    const float m = std::frexp(std::fabs(v), &e);
    const int exp = std::clamp(e + 6, 0, 15);
    const int mant = std::clamp(static_cast<int>((m * 2 - 1) * 8), 0, 7);
    out[i] = static_cast<uint8_t>((v < 0 ? 0x80 : 0) | (exp << 3) | mant);
  }
  return out;
}

// rans_segmented (docs/FORMAT.md §5.1): a table per run of chunks codes a
// drifting tensor below the order-0 entropy of the whole tensor, which no
// single table can reach; it decodes alone, in a batch, and XORed.
TEST(TensorCodec, DriftingStatisticsTakeATablePerRunOfChunks) {
  const auto bytes = DriftingFp8(4u << 20, 31);
  const double order0 = Order0Bytes(bytes);
  for (Mode mode : {Mode::kStorage, Mode::kBalanced, Mode::kInference}) {
    EncodeOptions eo;
    eo.mode = mode;
    auto blob = EncodeTensorBlob(bytes, ResolveDtype("F8_E4M3"), eo);
    ASSERT_TRUE(blob.ok());
    auto s = SummarizeTensorBlob(*blob);
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_EQ(s->planes.size(), 1u);
    EXPECT_EQ(s->planes[0].coder, PlaneCoder::kRansSegmented) << ModeName(mode);
    EXPECT_LT(static_cast<double>(blob->size()), 0.99 * order0) << ModeName(mode);
    auto parsed = ParseTensorBlob(*blob);
    ASSERT_TRUE(parsed.ok());
    const BlobPlane& pl = parsed->planes[0];
    EXPECT_EQ(pl.coder, PlaneCoder::kRans);
    ASSERT_GE(pl.chunks_per_table, 1u);
    EXPECT_EQ(pl.tables.size(), (parsed->num_chunks + pl.chunks_per_table - 1) / pl.chunks_per_table);
    EXPECT_GE(pl.tables.size(), 2u);
    EXPECT_EQ(DecodeOrDie(*blob, bytes.size()), bytes) << ModeName(mode);
    ThreadPool pool(2);
    DecodeOptions opts;
    opts.pool = &pool;
    std::vector<uint8_t> out(bytes.size()), base(bytes.size(), 0x3C);
    std::vector<BlobDecodeJob> jobs = {{*blob, absl::MakeSpan(out), base}};
    ASSERT_TRUE(DecodeTensorBlobs(jobs, opts).ok());
    for (auto& b : out) b ^= 0x3C;
    EXPECT_EQ(out, bytes);
    // Every decoder implementation this CPU has agrees.
    for (DecoderImpl impl : {DecoderImpl::kReference, DecoderImpl::kScalar, DecoderImpl::kAvx2, DecoderImpl::kAvx512}) {
      if (!DecoderImplAvailable(impl)) continue;  // the SIMD suites report those skips
      std::vector<uint8_t> o(bytes.size());
      DecodeOptions io;
      io.impl = impl;
      ASSERT_TRUE(DecodeTensorBlob(*blob, absl::MakeSpan(o), io).ok()) << DecoderImplName(impl);
      EXPECT_EQ(o, bytes) << DecoderImplName(impl);
    }
  }
  // A stationary tensor keeps one table.
  std::mt19937 rng(32);
  std::vector<uint8_t> flat(4u << 20);
  for (auto& b : flat) b = static_cast<uint8_t>(0x30 + std::min<uint32_t>(rng() % 16, rng() % 16));
  EncodeOptions eo;
  eo.mode = Mode::kStorage;
  auto blob = EncodeTensorBlob(flat, ResolveDtype("F8_E4M3"), eo);
  ASSERT_TRUE(blob.ok());
  auto s = SummarizeTensorBlob(*blob);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->planes[0].coder, PlaneCoder::kRans);
}

// Hostile rans_segmented headers: 0 chunks per table, more tables than the
// blob can hold (refused before anything is allocated for them), a table
// index past the tables.
TEST(TensorCodec, HostileSegmentedPlanesAreDataLoss) {
  auto header = [](uint32_t num_chunks, uint32_t k) {
    std::vector<uint8_t> b = {kBlobFormPlanes, 0, 1, 1};
    ByteWriter w(&b);
    w.U64(uint64_t{num_chunks});
    w.U32(1);
    w.U32(num_chunks);
    w.U8(static_cast<uint8_t>(PlaneCoder::kRansSegmented));
    w.U32(k);
    return b;
  };
  std::vector<uint8_t> out(1u << 20);
  auto code = [&](const std::vector<uint8_t>& b, uint64_t n) {
    return DecodeTensorBlob(b, absl::MakeSpan(out.data(), n)).code();
  };
  EXPECT_EQ(code(header(4, 0), 4), absl::StatusCode::kDataLoss);
  // 2^20 one-element chunks, a table each: 34 MiB of tables the blob cannot hold.
  EXPECT_EQ(code(header(1u << 20, 1), 1u << 20), absl::StatusCode::kDataLoss);
  // A valid blob, then every cut and every header flip.
  const auto bytes = DriftingFp8(1u << 20, 33);
  EncodeOptions eo;
  eo.mode = Mode::kStorage;
  auto blob = EncodeTensorBlob(bytes, ResolveDtype("F8_E4M3"), eo);
  ASSERT_TRUE(blob.ok());
  auto s = SummarizeTensorBlob(*blob);
  ASSERT_TRUE(s.ok());
  ASSERT_EQ(s->planes[0].coder, PlaneCoder::kRansSegmented);
  std::mt19937 rng(34);
  for (size_t pos = 0; pos < 4096 && pos < blob->size(); pos += 1 + pos / 64) {
    auto bad = *blob;
    bad[pos] ^= static_cast<uint8_t>(1 + rng() % 255);
    const absl::Status st = DecodeTensorBlob(bad, absl::MakeSpan(out.data(), bytes.size()));
    if (!st.ok()) EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << pos << ": " << st;
    EXPECT_EQ(DecodeTensorBlob(absl::MakeConstSpan(blob->data(), pos), absl::MakeSpan(out.data(), bytes.size())).code(),
              absl::StatusCode::kDataLoss) << "cut " << pos;
  }
}

// An LSTM's weight_hh [1024, 256] is four 64K-element gates with their own
// spread: --storage also tries 64K-element chunks, so rans_segmented gives
// each gate its table, and --storage stays at or below balanced.
TEST(TensorCodec, StorageFollowsBlocksSmallerThanItsChunks) {
  std::mt19937 rng(51);
  std::vector<float> w(1024 * 256);
  const double spread[4] = {0.01, 0.2, 0.03, 0.5};
  for (size_t i = 0; i < w.size(); ++i) {
    w[i] = static_cast<float>(std::normal_distribution<double>(0.0, spread[i / (64 * 1024)])(rng));
  }
  std::vector<uint8_t> bytes(w.size() * 4);
  std::memcpy(bytes.data(), w.data(), bytes.size());
  EncodeOptions storage;
  storage.mode = Mode::kStorage;
  auto s = EncodeTensorBlob(bytes, ResolveDtype("F32"), storage);
  auto b = EncodeTensorBlob(bytes, ResolveDtype("F32"));
  ASSERT_TRUE(s.ok() && b.ok());
  auto parsed = ParseTensorBlob(*s);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->chunk_elements, 64u * 1024);
  EXPECT_GE(parsed->planes[0].chunks_per_table, 1u) << "the exponent plane takes a table per gate";
  EXPECT_LE(s->size(), b->size());
  EXPECT_EQ(DecodeOrDie(*s, bytes.size()), bytes);
}

}  // namespace
}  // namespace bigsmall
