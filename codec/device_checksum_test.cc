// The format 1.1 device checksum (docs/FORMAT.md §3.1): known answers from
// the independent Python reference (tests/golden/device_checksum.py), single
// word changes always detected, order and offset sensitivity, and pieces
// (ChecksumSumPiece) that sum to the whole.
#include "codec/device_checksum.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

namespace bigsmall {
namespace {

std::vector<uint8_t> Bytes(absl::string_view s) { return std::vector<uint8_t>(s.begin(), s.end()); }

uint64_t Of(const std::vector<uint8_t>& v) { return DeviceChecksum(v.data(), v.size()); }

std::vector<uint8_t> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// Values printed by tests/golden/device_checksum.py (written from the spec,
// not from codec/device_checksum.h).
TEST(DeviceChecksum, KnownAnswersFromThePythonReference) {
  EXPECT_EQ(Fmix64(1), 0xb456bcfc34c2cb2cull);
  EXPECT_EQ(ChecksumTerm(3, 0x0123456789abcdefull), 0xbf1c9264d69aed71ull);
  EXPECT_EQ(Of({}), 0x0f18961ad490029eull);
  EXPECT_EQ(Of({0}), 0x4628e12a9c3bbd65ull);
  EXPECT_EQ(Of(Bytes("abc")), 0xdf61fd41b6ca618dull);
  std::vector<uint8_t> seq(17);
  for (size_t i = 0; i < seq.size(); ++i) seq[i] = static_cast<uint8_t>(i);
  EXPECT_EQ(Of(std::vector<uint8_t>(seq.begin(), seq.begin() + 8)), 0x8adb9b7bc3c0fe31ull);
  EXPECT_EQ(Of(std::vector<uint8_t>(seq.begin(), seq.begin() + 16)), 0xfee02aac32eb02c5ull);
  EXPECT_EQ(Of(seq), 0xe6f1bd0f5334dcfbull);
  std::vector<uint8_t> big;
  for (int r = 0; r < 4; ++r) {
    for (int i = 0; i < 256; ++i) big.push_back(static_cast<uint8_t>(i));
  }
  big.insert(big.end(), {'x', 'y', 'z'});
  EXPECT_EQ(Of(big), 0x1325a14dee49125dull);
  std::vector<uint8_t> mod(4099);
  for (size_t i = 0; i < mod.size(); ++i) mod[i] = static_cast<uint8_t>((i * 31) % 251);
  EXPECT_EQ(Of(mod), 0x8534180704086c72ull);
  // Zero padding is not confused with real zero bytes: the length is mixed in.
  EXPECT_EQ(Of(std::vector<uint8_t>(8, 0)), 0x73aa203bf8984654ull);
  EXPECT_EQ(Of(std::vector<uint8_t>(9, 0)), 0x47561ce7b98db5f0ull);
}

// fmix64 is a bijection, so a change confined to one word always changes the
// term and hence the sum: every single-word change is caught.
TEST(DeviceChecksum, EverySingleWordChangeIsDetected) {
  const std::vector<uint8_t> base = Random(1003, 7);  // 125 words + a 3-byte tail
  const uint64_t want = Of(base);
  std::mt19937 rng(11);
  int changes = 0;
  for (size_t word = 0; word * 8 < base.size(); ++word) {
    const size_t width = std::min<size_t>(8, base.size() - word * 8);
    for (int trial = 0; trial < 40; ++trial) {
      std::vector<uint8_t> v = base;
      // Any nonzero change of this word: one bit, one byte, or the whole word.
      if (trial < 8 * static_cast<int>(width) && trial < 16) {
        v[word * 8 + trial / 8 % width] ^= static_cast<uint8_t>(1u << (trial % 8));
      } else {
        bool changed = false;
        while (!changed) {
          for (size_t b = 0; b < width; ++b) {
            const uint8_t x = static_cast<uint8_t>(rng());
            v[word * 8 + b] = x;
            changed |= x != base[word * 8 + b];
          }
        }
      }
      ASSERT_NE(Of(v), want) << "word " << word << " trial " << trial;
      ++changes;
    }
  }
  EXPECT_EQ(changes, 126 * 40);
}

TEST(DeviceChecksum, SensitiveToOrderOffsetAndLength) {
  const std::vector<uint8_t> v = Random(64, 3);
  // Swapping two different words changes the checksum (terms depend on position).
  std::vector<uint8_t> swapped = v;
  std::swap_ranges(swapped.begin(), swapped.begin() + 8, swapped.begin() + 8);
  ASSERT_NE(std::vector<uint8_t>(v.begin(), v.begin() + 8), std::vector<uint8_t>(v.begin() + 8, v.begin() + 16));
  EXPECT_NE(Of(swapped), Of(v));
  // The same bytes placed at another word offset sum differently.
  EXPECT_NE(ChecksumSumPiece(v.data(), 16, 0), ChecksumSumPiece(v.data(), 16, 8));
  EXPECT_NE(ChecksumSumPiece(v.data(), 16, 8), ChecksumSumPiece(v.data(), 16, 64));
  // A trailing zero byte, or a missing one, changes it.
  std::vector<uint8_t> longer = v;
  longer.push_back(0);
  EXPECT_NE(Of(longer), Of(v));
  EXPECT_NE(Of(std::vector<uint8_t>(v.begin(), v.end() - 1)), Of(v));
  // Equal words in different places each count (no XOR cancellation).
  const std::vector<uint8_t> two(16, 0xAB);
  const std::vector<uint8_t> two_other = [&] {
    std::vector<uint8_t> t = two;
    for (int i = 0; i < 16; ++i) t[i] = 0xCD;
    return t;
  }();
  EXPECT_NE(Of(two), Of(two_other));
}

// The kernel's view: any split into pieces at 8-byte boundaries (the last
// piece may be ragged), summed in any order mod 2^64, gives the whole.
TEST(DeviceChecksum, PiecesSumToTheWhole) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{100}, size_t{4096},
                   size_t{65539}}) {
    const std::vector<uint8_t> v = Random(n, static_cast<uint32_t>(n));
    const uint64_t whole = ChecksumSumPiece(v.data(), v.size(), 0);
    EXPECT_EQ(ChecksumFinish(whole, n), Of(v));
    std::mt19937 rng(static_cast<uint32_t>(n) + 1);
    for (int split = 0; split < 20; ++split) {
      std::vector<size_t> cuts = {0, n};
      for (int c = 0; c < 5 && n >= 8; ++c) cuts.push_back(rng() % (n / 8 + 1) * 8);
      std::sort(cuts.begin(), cuts.end());
      uint64_t sum = 0;
      // Add the pieces back to front: the order of terms does not matter.
      for (size_t i = cuts.size() - 1; i > 0; --i) {
        sum += ChecksumSumPiece(v.data() + cuts[i - 1], cuts[i] - cuts[i - 1], cuts[i - 1]);
      }
      ASSERT_EQ(sum, whole) << "n " << n << " split " << split;
    }
    // Word by word, as a kernel's threads would add their terms.
    uint64_t by_word = 0;
    for (size_t k = 0; k * 8 < n; ++k) {
      uint64_t w = 0;
      std::memcpy(&w, v.data() + 8 * k, std::min<size_t>(8, n - 8 * k));
      by_word += ChecksumTerm(k, w);
    }
    EXPECT_EQ(by_word, whole) << n;
  }
}

}  // namespace
}  // namespace bigsmall
