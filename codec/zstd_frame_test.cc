#include "codec/zstd_frame.h"

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#define ZSTD_STATIC_LINKING_ONLY
#include "zstd.h"

namespace bigsmall {
namespace {

std::vector<uint8_t> Text(size_t n) {
  std::mt19937 rng(1);
  std::vector<uint8_t> out(n);
  for (auto& b : out) b = static_cast<uint8_t>('a' + rng() % 6);
  return out;
}

std::vector<uint8_t> Frame(const std::vector<uint8_t>& in, ZstdFraming framing, int level = 3) {
  std::vector<uint8_t> out;
  ZstdCompressOptions o;
  o.level = level;
  o.framing = framing;
  EXPECT_TRUE(ZstdCompressFrame(in, o, &out).ok());
  return out;
}

TEST(ZstdFrame, BothFramingsRoundTripAndDeclareTheirSize) {
  for (size_t n : {1u, 100u, 200000u, 3u << 20}) {
    const auto in = Text(n);
    for (ZstdFraming f : {ZstdFraming::kStandard, ZstdFraming::kMagicless}) {
      const auto frame = Frame(in, f);
      auto size = ZstdFrameContentSize(frame, f);
      ASSERT_TRUE(size.ok()) << n << ": " << size.status();
      EXPECT_EQ(*size, n);
      std::vector<uint8_t> out(n);
      ASSERT_TRUE(ZstdDecompressExact(frame, f, absl::MakeSpan(out)).ok());
      EXPECT_EQ(out, in);
      // The wrong size is refused, larger or smaller.
      std::vector<uint8_t> big(n + 1), small(n - 1);
      EXPECT_EQ(ZstdDecompressExact(frame, f, absl::MakeSpan(big)).code(), absl::StatusCode::kDataLoss);
      EXPECT_EQ(ZstdDecompressExact(frame, f, absl::MakeSpan(small)).code(), absl::StatusCode::kDataLoss);
    }
    // Magicless is the standard frame less its first 4 bytes.
    const auto a = Frame(in, ZstdFraming::kStandard), b = Frame(in, ZstdFraming::kMagicless);
    ASSERT_EQ(a.size(), b.size() + 4);
    EXPECT_EQ(std::vector<uint8_t>(a.begin() + 4, a.end()), b);
  }
}

TEST(ZstdFrame, ContentSizeRefusesAnythingButOneCompleteFrame) {
  const auto in = Text(300000);  // several blocks
  for (ZstdFraming f : {ZstdFraming::kStandard, ZstdFraming::kMagicless}) {
    const auto frame = Frame(in, f);
    for (size_t cut = 0; cut < frame.size(); cut += 1 + cut / 8) {
      EXPECT_EQ(ZstdFrameContentSize(absl::MakeConstSpan(frame.data(), cut), f).status().code(),
                absl::StatusCode::kDataLoss)
          << "cut " << cut;
    }
    auto two = frame;
    two.insert(two.end(), frame.begin(), frame.end());
    EXPECT_EQ(ZstdFrameContentSize(two, f).status().code(), absl::StatusCode::kDataLoss);
    auto trailing = frame;
    trailing.push_back(0);
    EXPECT_EQ(ZstdFrameContentSize(trailing, f).status().code(), absl::StatusCode::kDataLoss);
  }
  // A frame without a declared size (streaming) and a skippable frame.
  const auto in100 = Text(100);
  std::vector<uint8_t> streamed(ZSTD_COMPRESSBOUND(100) + 64);
  {
    ZSTD_CCtx* c = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 0);
    ZSTD_outBuffer ob{streamed.data(), streamed.size(), 0};
    ZSTD_inBuffer ib{in100.data(), in100.size(), 0};
    ASSERT_EQ(ZSTD_compressStream2(c, &ob, &ib, ZSTD_e_end), 0u);
    streamed.resize(ob.pos);
    ZSTD_freeCCtx(c);
  }
  EXPECT_EQ(ZstdFrameContentSize(streamed, ZstdFraming::kStandard).status().code(), absl::StatusCode::kDataLoss);
  const std::vector<uint8_t> skippable = {0x50, 0x2A, 0x4D, 0x18, 2, 0, 0, 0, 7, 7};
  EXPECT_EQ(ZstdFrameContentSize(skippable, ZstdFraming::kStandard).status().code(), absl::StatusCode::kDataLoss);
  // A standard frame read as magicless (and back) does not pass as itself.
  const auto standard = Frame(in100, ZstdFraming::kStandard);
  auto as_magicless = ZstdFrameContentSize(standard, ZstdFraming::kMagicless);
  EXPECT_TRUE(!as_magicless.ok() || *as_magicless != 100);
  EXPECT_FALSE(ZstdFrameContentSize(Frame(in100, ZstdFraming::kMagicless), ZstdFraming::kStandard).ok());
}

TEST(ZstdFrame, CorruptPayloadIsDataLossNeverACrash) {
  const auto in = Text(50000);
  const auto frame = Frame(in, ZstdFraming::kMagicless, 19);
  std::mt19937 rng(3);
  std::vector<uint8_t> out(in.size());
  for (size_t pos = 0; pos < frame.size(); pos += 1 + pos / 16) {
    auto bad = frame;
    bad[pos] ^= static_cast<uint8_t>(1 + rng() % 255);
    const absl::Status st = ZstdDecompressExact(bad, ZstdFraming::kMagicless, absl::MakeSpan(out));
    if (!st.ok()) EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << pos << ": " << st;
  }
}

}  // namespace
}  // namespace bigsmall
