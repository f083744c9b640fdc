#include "codec/hash.h"

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "gtest/gtest.h"

namespace bigsmall {
namespace {

absl::Span<const uint8_t> Bytes(absl::string_view s) {
  return absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

std::vector<uint8_t> Pattern(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i);
  return v;
}

uint64_t Low64(const Hash128& h) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | h[i];
  return v;
}
uint64_t High64(const Hash128& h) {
  uint64_t v = 0;
  for (int i = 15; i >= 8; --i) v = (v << 8) | h[i];
  return v;
}

// Reference values from the Python `xxhash` package 4.1.0 (libxxhash 0.8.4):
//   xxhash.xxh3_64(d).intdigest(), xxhash.xxh3_128(d).hexdigest()
struct Vector {
  std::string data;
  uint64_t h64;
  const char* h128_hex;  // canonical: high 64 bits first
};

std::vector<Vector> KnownVectors() {
  std::vector<uint8_t> p = Pattern(256);
  std::string pattern1280;
  for (int r = 0; r < 5; ++r) pattern1280.append(p.begin(), p.end());
  return {
      {"", 0x2d06800538d394c2ull, "99aa06d3014798d86001c324468d497f"},
      {"a", 0xe6c632b61e964e1full, "a96faf705af16834e6c632b61e964e1f"},
      {"abc", 0x78af5f94892f3950ull, "06b05ab6733a618578af5f94892f3950"},
      {"The quick brown fox jumps over the lazy dog", 0xce7d19a5418fb365ull,
       "ddd650205ca3e7fa24a1cc2e3a8a7651"},
      {pattern1280, 0x4844b009e164352eull, "d92ab3a1cb0542a74844b009e164352e"},
  };
}

TEST(HashTest, KnownXxh3Vectors) {
  for (const Vector& v : KnownVectors()) {
    SCOPED_TRACE(v.data.size());
    EXPECT_EQ(HashBytes64(Bytes(v.data)), v.h64);
    EXPECT_EQ(HashToHex(HashBytes128(Bytes(v.data))), v.h128_hex);
  }
}

TEST(HashTest, StoredLowHalfFirstLittleEndian) {
  const Hash128 h = HashBytes128({});
  EXPECT_EQ(Low64(h), 0x6001c324468d497full);
  EXPECT_EQ(High64(h), 0x99aa06d3014798d8ull);
  EXPECT_EQ(h[0], 0x7f);
  EXPECT_EQ(h[15], 0x99);
}

TEST(HashTest, StreamingMatchesOneShotForAnySplit) {
  const std::vector<uint8_t> data = Pattern(5000);
  for (size_t n : {size_t{0}, size_t{1}, size_t{17}, size_t{240}, size_t{241}, size_t{1024},
                   size_t{5000}}) {
    const auto whole = absl::MakeConstSpan(data).subspan(0, n);
    const Hash128 expected = HashBytes128(whole);
    for (size_t step : {size_t{1}, size_t{3}, size_t{64}, size_t{1000}}) {
      StreamingHash128 s;
      for (size_t i = 0; i < n; i += step) s.Update(whole.subspan(i, step));
      EXPECT_EQ(s.Finish(), expected) << "n=" << n << " step=" << step;
    }
  }
}

TEST(HashTest, FinishDoesNotConsumeState) {
  StreamingHash128 s;
  s.Update(Bytes("ab"));
  EXPECT_EQ(s.Finish(), HashBytes128(Bytes("ab")));
  s.Update(Bytes("c"));
  EXPECT_EQ(s.Finish(), HashBytes128(Bytes("abc")));
}

TEST(HashTest, SensitiveToEveryByte) {
  std::vector<uint8_t> data = Pattern(300);
  const Hash128 base128 = HashBytes128(data);
  const uint64_t base64 = HashBytes64(data);
  for (size_t i = 0; i < data.size(); i += 37) {
    data[i] ^= 1;
    EXPECT_NE(HashBytes128(data), base128) << i;
    EXPECT_NE(HashBytes64(data), base64) << i;
    data[i] ^= 1;
  }
  EXPECT_NE(HashBytes128(absl::MakeConstSpan(data).subspan(0, 299)), base128);
}

TEST(HashTest, HexIs32LowercaseDigits) {
  const std::string hex = HashToHex(HashBytes128(Bytes("x")));
  ASSERT_EQ(hex.size(), 32u);
  EXPECT_EQ(hex.find_first_not_of("0123456789abcdef"), std::string::npos);
}

// Format 1.1 group checksums are written blob by blob: the streaming XXH3-64
// must equal the one-shot hash of the whole group.
TEST(Hash, Streaming64EqualsOneShot) {
  const std::vector<uint8_t> data = Pattern(10000);
  for (size_t step : {size_t{1}, size_t{7}, size_t{240}, size_t{4096}, size_t{10000}}) {
    StreamingHash64 s;
    for (size_t off = 0; off < data.size(); off += step) {
      s.Update(absl::MakeConstSpan(data.data() + off, std::min(step, data.size() - off)));
    }
    EXPECT_EQ(s.Finish(), HashBytes64(data)) << step;
  }
  StreamingHash64 empty;
  empty.Update({});
  EXPECT_EQ(empty.Finish(), HashBytes64({}));
}

}  // namespace
}  // namespace bigsmall
