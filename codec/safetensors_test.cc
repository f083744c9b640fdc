#include "codec/safetensors.h"

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "codec/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace bigsmall {
namespace {

using ::testing::HasSubstr;

// A whole safetensors file: 8-byte little-endian length, header, data.
std::vector<uint8_t> MakeFile(const std::string& header, uint64_t data_size,
                              uint64_t length_override = 0) {
  const uint64_t n = length_override ? length_override : header.size();
  std::vector<uint8_t> file;
  for (int i = 0; i < 8; ++i) file.push_back(static_cast<uint8_t>(n >> (8 * i)));
  file.insert(file.end(), header.begin(), header.end());
  for (uint64_t i = 0; i < data_size; ++i) file.push_back(static_cast<uint8_t>(i));
  return file;
}

absl::StatusOr<SafetensorsHeader> Parse(const std::vector<uint8_t>& file) {
  return ParseSafetensorsHeader(file, file.size(), "model.safetensors");
}

absl::StatusOr<SafetensorsHeader> ParseHeader(const std::string& header, uint64_t data_size) {
  return Parse(MakeFile(header, data_size));
}

// One tensor entry.
std::string T(const std::string& name, const std::string& dtype, const std::string& shape,
              uint64_t begin, uint64_t end) {
  return absl::StrCat("\"", name, "\":{\"dtype\":\"", dtype, "\",\"shape\":", shape,
                      ",\"data_offsets\":[", begin, ",", end, "]}");
}

void ExpectError(const absl::StatusOr<SafetensorsHeader>& result, absl::StatusCode code,
                 const std::string& substring) {
  ASSERT_FALSE(result.ok()) << "parsed but expected: " << substring;
  EXPECT_EQ(result.status().code(), code) << result.status();
  EXPECT_THAT(result.status().message(), HasSubstr(substring));
  EXPECT_THAT(result.status().message(), HasSubstr("model.safetensors"));
}

TEST(SafetensorsTest, ParsesValidFile) {
  // Written out of order and padded with spaces, as writers align the data.
  const std::string header =
      absl::StrCat("{\"__metadata__\":{\"format\":\"pt\"},", T("b", "F32", "[]", 12, 16), ",",
                   T("a", "BF16", "[2,3]", 0, 12), ",", T("c", "F4", "[3]", 16, 18), ",",
                   T("empty", "F16", "[0,4]", 18, 18), "}     ");
  const std::vector<uint8_t> file = MakeFile(header, 18);
  absl::StatusOr<SafetensorsHeader> parsed = Parse(file);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->header_bytes, 8 + header.size());
  EXPECT_EQ(parsed->data_size, 18u);
  EXPECT_EQ(parsed->metadata_json, "{\"format\":\"pt\"}");
  ASSERT_EQ(parsed->tensors.size(), 4u);
  const SafetensorsTensor& a = parsed->tensors[0];
  EXPECT_EQ(a.name, "a");
  EXPECT_EQ(a.dtype_name, "BF16");
  EXPECT_EQ(a.dtype.split, PlaneSplit::kBf16);
  EXPECT_EQ(a.shape, (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(a.num_elements(), 6u);
  EXPECT_EQ(a.begin, 0u);
  EXPECT_EQ(a.end, 12u);
  EXPECT_EQ(a.size(), 12u);
  EXPECT_EQ(parsed->tensors[1].name, "b");
  EXPECT_EQ(parsed->tensors[1].num_elements(), 1u);  // scalar
  EXPECT_EQ(parsed->tensors[2].name, "c");
  EXPECT_EQ(parsed->tensors[2].dtype.bits, 4u);
  EXPECT_EQ(parsed->tensors[3].name, "empty");
  EXPECT_EQ(parsed->tensors[3].num_elements(), 0u);
}

TEST(SafetensorsTest, HeaderLengthAlone) {
  const std::vector<uint8_t> file = MakeFile("{}", 0);
  absl::StatusOr<uint64_t> n = ParseSafetensorsHeaderLength(file, file.size());
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 2u);
}

TEST(SafetensorsTest, EmptyHeaderAndNoData) {
  absl::StatusOr<SafetensorsHeader> parsed = ParseHeader("{}", 0);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->tensors.empty());
  EXPECT_TRUE(parsed->metadata_json.empty());
}

TEST(SafetensorsTest, AcceptsPrefixLongerThanHeader) {
  // The caller may pass the whole file; only the first 8 + N bytes are read.
  const std::vector<uint8_t> file = MakeFile(absl::StrCat("{", T("x", "U8", "[4]", 0, 4), "}"), 4);
  EXPECT_TRUE(Parse(file).ok());
}

TEST(SafetensorsTest, UnknownDtypeAcceptsAnySize) {
  absl::StatusOr<SafetensorsHeader> parsed =
      ParseHeader(absl::StrCat("{", T("q", "Q4_K", "[32]", 0, 18), "}"), 18);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_FALSE(parsed->tensors[0].dtype.known);
  EXPECT_EQ(parsed->tensors[0].dtype_name, "Q4_K");
}

TEST(SafetensorsTest, SubByteSizesRoundUp) {
  EXPECT_TRUE(ParseHeader(absl::StrCat("{", T("f6", "F6_E2M3", "[5]", 0, 4), "}"), 4).ok());
  ExpectError(ParseHeader(absl::StrCat("{", T("f6", "F6_E2M3", "[5]", 0, 3), "}"), 3),
              absl::StatusCode::kInvalidArgument, "needs 4 bytes");
}

TEST(SafetensorsTest, ZeroSizedTensorsMayShareAnOffset) {
  absl::StatusOr<SafetensorsHeader> parsed =
      ParseHeader(absl::StrCat("{", T("z1", "F32", "[0]", 4, 4), ",", T("w", "F32", "[2]", 4, 12),
                               ",", T("v", "F32", "[1]", 0, 4), ",", T("z2", "F32", "[3,0]", 12, 12),
                               "}"),
                  12);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->tensors.size(), 4u);
  EXPECT_EQ(parsed->tensors[0].name, "v");
  EXPECT_EQ(parsed->tensors[1].name, "z1");
  EXPECT_EQ(parsed->tensors[2].name, "w");
  EXPECT_EQ(parsed->tensors[3].name, "z2");
}

TEST(SafetensorsTest, FuzzSeedCorpusParses) {
  const std::filesystem::path dir =
      std::filesystem::path(BIGSMALL_SOURCE_DIR) / "tests" / "fuzz" / "corpus" / "safetensors";
  ASSERT_TRUE(std::filesystem::is_directory(dir)) << dir;
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(entry.path(), std::ios::binary);
    const std::vector<uint8_t> file((std::istreambuf_iterator<char>(in)),
                                    std::istreambuf_iterator<char>());
    EXPECT_TRUE(Parse(file).ok()) << entry.path() << ": " << Parse(file).status();
    ++files;
  }
  EXPECT_GE(files, 1);
}

// ---- length prefix ----

TEST(SafetensorsBadTest, FileShorterThanLengthPrefix) {
  const std::vector<uint8_t> file = {2, 0, 0, 0};
  ExpectError(Parse(file), absl::StatusCode::kDataLoss, "too short");
  EXPECT_EQ(ParseSafetensorsHeaderLength(file, file.size()).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST(SafetensorsBadTest, HeaderLengthOverLimit) {
  ExpectError(Parse(MakeFile("{}", 0, kMaxSafetensorsHeader + 1)),
              absl::StatusCode::kInvalidArgument, "exceeds the limit");
  // Even when the file claims to be big enough.
  std::vector<uint8_t> file = MakeFile("{}", 0, kMaxSafetensorsHeader + 1);
  EXPECT_EQ(ParseSafetensorsHeaderLength(file, 1ull << 40).status().code(),
            absl::StatusCode::kInvalidArgument);
  // 2^64 - 1 must not overflow any check.
  file = MakeFile("{}", 0, ~uint64_t{0});
  EXPECT_EQ(ParseSafetensorsHeaderLength(file, ~uint64_t{0}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SafetensorsBadTest, HeaderLengthPastEndOfFile) {
  ExpectError(Parse(MakeFile("{}", 0, 3)), absl::StatusCode::kDataLoss, "past end of file");
}

TEST(SafetensorsBadTest, HeaderLengthTooSmall) {
  ExpectError(Parse(MakeFile("{}", 0, 1)), absl::StatusCode::kInvalidArgument, "too small");
}

TEST(SafetensorsBadTest, PrefixShorterThanHeader) {
  const std::vector<uint8_t> file = MakeFile("{}    ", 0);
  absl::StatusOr<SafetensorsHeader> parsed =
      ParseSafetensorsHeader(absl::MakeConstSpan(file).subspan(0, 10), file.size(), "model.safetensors");
  ExpectError(parsed, absl::StatusCode::kDataLoss, "bytes given");
}

// ---- JSON ----

TEST(SafetensorsBadTest, NotStartingWithBrace) {
  ExpectError(ParseHeader(" {}", 0), absl::StatusCode::kInvalidArgument, "does not start with '{'");
  ExpectError(ParseHeader("[1,2]", 0), absl::StatusCode::kInvalidArgument,
              "does not start with '{'");
}

TEST(SafetensorsBadTest, InvalidJson) {
  ExpectError(ParseHeader("{\"a\":}", 0), absl::StatusCode::kInvalidArgument, "not valid JSON");
  ExpectError(ParseHeader("{\"a\":1", 0), absl::StatusCode::kInvalidArgument, "not valid JSON");
}

TEST(SafetensorsBadTest, TrailingGarbageAfterObject) {
  ExpectError(ParseHeader("{} x", 0), absl::StatusCode::kInvalidArgument, "not valid JSON");
  ExpectError(ParseHeader(std::string("{}\0\0", 4), 0), absl::StatusCode::kInvalidArgument,
              "not valid JSON");
}

TEST(SafetensorsBadTest, InvalidUtf8) {
  ExpectError(ParseHeader("{\"\xff\xfe\":{}}", 0), absl::StatusCode::kInvalidArgument,
              "not valid JSON");
}

TEST(SafetensorsBadTest, NestingTooDeep) {
  ExpectError(ParseHeader("{\"a\":" + std::string(1000, '[') + std::string(1000, ']') + "}", 0),
              absl::StatusCode::kInvalidArgument, "nests deeper");
}

TEST(SafetensorsBadTest, DuplicateTensorName) {
  ExpectError(ParseHeader(absl::StrCat("{", T("w", "U8", "[1]", 0, 1), ",",
                                       T("w", "U8", "[1]", 1, 2), "}"),
                          2),
              absl::StatusCode::kInvalidArgument, "duplicate tensor name 'w'");
}

TEST(SafetensorsBadTest, DuplicateKeyInsideEntry) {
  ExpectError(
      ParseHeader("{\"w\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                  1),
      absl::StatusCode::kInvalidArgument, "duplicate key 'dtype'");
}

// ---- __metadata__ ----

TEST(SafetensorsBadTest, MetadataNotObject) {
  ExpectError(ParseHeader("{\"__metadata__\":[\"a\"]}", 0), absl::StatusCode::kInvalidArgument,
              "\"__metadata__\" is a JSON array");
}

TEST(SafetensorsBadTest, MetadataValueNotString) {
  ExpectError(ParseHeader("{\"__metadata__\":{\"step\":5}}", 0),
              absl::StatusCode::kInvalidArgument, "value of 'step' is a JSON number");
}

// ---- tensor entries ----

TEST(SafetensorsBadTest, EntryNotObject) {
  ExpectError(ParseHeader("{\"w\":[1]}", 0), absl::StatusCode::kInvalidArgument,
              "tensor 'w': entry is a JSON array");
}

TEST(SafetensorsBadTest, MissingDtype) {
  ExpectError(ParseHeader("{\"w\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1),
              absl::StatusCode::kInvalidArgument, "tensor 'w': missing \"dtype\"");
}

TEST(SafetensorsBadTest, DtypeNotString) {
  ExpectError(ParseHeader("{\"w\":{\"dtype\":8,\"shape\":[1],\"data_offsets\":[0,1]}}", 1),
              absl::StatusCode::kInvalidArgument, "\"dtype\" is a JSON number");
}

TEST(SafetensorsBadTest, MissingShape) {
  ExpectError(ParseHeader("{\"w\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1),
              absl::StatusCode::kInvalidArgument, "missing \"shape\"");
}

TEST(SafetensorsBadTest, ShapeNotArray) {
  ExpectError(ParseHeader(absl::StrCat("{", T("w", "U8", "1", 0, 1), "}"), 1),
              absl::StatusCode::kInvalidArgument, "\"shape\" is a JSON number");
}

TEST(SafetensorsBadTest, ShapeNegative) {
  ExpectError(ParseHeader(absl::StrCat("{", T("w", "U8", "[-1]", 0, 1), "}"), 1),
              absl::StatusCode::kInvalidArgument, "\"shape\" has -1");
}

TEST(SafetensorsBadTest, ShapeNotInteger) {
  ExpectError(ParseHeader(absl::StrCat("{", T("w", "U8", "[1.5]", 0, 1), "}"), 1),
              absl::StatusCode::kInvalidArgument, "not a non-negative integer");
  ExpectError(ParseHeader(absl::StrCat("{", T("w", "U8", "[\"1\"]", 0, 1), "}"), 1),
              absl::StatusCode::kInvalidArgument, "not a non-negative integer");
  // Above 2^64 nlohmann falls back to a double.
  ExpectError(ParseHeader(absl::StrCat("{", T("w", "U8", "[18446744073709551616]", 0, 1), "}"), 1),
              absl::StatusCode::kInvalidArgument, "not a non-negative integer");
}

TEST(SafetensorsBadTest, ShapeProductOverflows) {
  ExpectError(
      ParseHeader(absl::StrCat("{", T("w", "U8", "[4294967296,4294967296]", 0, 1), "}"), 1),
      absl::StatusCode::kInvalidArgument, "more than 2^64 elements");
  // Elements fit, bits do not.
  ExpectError(ParseHeader(absl::StrCat("{", T("w", "F64", "[4294967296,536870912]", 0, 1), "}"), 1),
              absl::StatusCode::kInvalidArgument, "over 2^64 bits");
}

TEST(SafetensorsBadTest, MissingDataOffsets) {
  ExpectError(ParseHeader("{\"w\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1),
              absl::StatusCode::kInvalidArgument, "missing \"data_offsets\"");
}

TEST(SafetensorsBadTest, DataOffsetsMalformed) {
  ExpectError(
      ParseHeader("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 1),
      absl::StatusCode::kInvalidArgument, "not an array [begin, end]");
  ExpectError(ParseHeader("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":{}}}", 1),
              absl::StatusCode::kInvalidArgument, "not an array [begin, end]");
  ExpectError(
      ParseHeader("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}", 1),
      absl::StatusCode::kInvalidArgument, "two non-negative integers");
}

TEST(SafetensorsBadTest, DataOffsetsReversed) {
  ExpectError(ParseHeader(absl::StrCat("{", T("w", "U8", "[1]", 2, 1), "}"), 2),
              absl::StatusCode::kInvalidArgument, "data_offsets [2,1) end before they begin");
}

TEST(SafetensorsBadTest, DataOffsetsPastEndOfData) {
  ExpectError(ParseHeader(absl::StrCat("{", T("x", "U8", "[4]", 0, 4), "}"), 3),
              absl::StatusCode::kDataLoss,
              "model.safetensors: tensor 'x': data_offsets [0,4) past end of data (size 3)");
}

TEST(SafetensorsBadTest, SizeDoesNotMatchDtypeAndShape) {
  ExpectError(ParseHeader(absl::StrCat("{", T("w", "BF16", "[2,3]", 0, 10), "}"), 10),
              absl::StatusCode::kInvalidArgument,
              "tensor 'w': BF16 with shape [2,3] needs 12 bytes but data_offsets [0,10) hold 10");
}

TEST(SafetensorsBadTest, OverlappingTensors) {
  ExpectError(ParseHeader(absl::StrCat("{", T("a", "U8", "[4]", 0, 4), ",",
                                       T("b", "U8", "[4]", 2, 6), "}"),
                          6),
              absl::StatusCode::kInvalidArgument, "tensor 'b': data_offsets [2,6) overlap tensor 'a'");
  // A zero-sized tensor strictly inside another also overlaps.
  ExpectError(ParseHeader(absl::StrCat("{", T("a", "U8", "[4]", 0, 4), ",",
                                       T("z", "U8", "[0]", 2, 2), "}"),
                          4),
              absl::StatusCode::kInvalidArgument, "overlap");
}

TEST(SafetensorsBadTest, HoleBetweenTensors) {
  ExpectError(ParseHeader(absl::StrCat("{", T("a", "U8", "[4]", 0, 4), ",",
                                       T("b", "U8", "[2]", 6, 8), "}"),
                          8),
              absl::StatusCode::kInvalidArgument, "data bytes [4,6) belong to no tensor");
  ExpectError(ParseHeader(absl::StrCat("{", T("b", "U8", "[2]", 2, 4), "}"), 4),
              absl::StatusCode::kInvalidArgument, "data bytes [0,2) belong to no tensor");
}

TEST(SafetensorsBadTest, TrailingBytesNotCovered) {
  ExpectError(ParseHeader(absl::StrCat("{", T("a", "U8", "[4]", 0, 4), "}"), 7),
              absl::StatusCode::kInvalidArgument, "data bytes [4,7) at the end belong to no tensor");
  ExpectError(ParseHeader("{}", 1), absl::StatusCode::kInvalidArgument, "belong to no tensor");
}

// ---- layer grouping ----

TEST(LayerOfTest, KnownLayouts) {
  struct Case {
    const char* name;
    int64_t layer;
    const char* group;
  };
  for (const Case& c : {
           Case{"model.layers.12.mlp.up_proj.weight", 12, "model.layers.12"},
           Case{"layers.0.attention.wq.weight", 0, "layers.0"},
           Case{"transformer.h.7.attn.c_attn.weight", 7, "transformer.h.7"},
           Case{"encoder.layer.3.attention.self.query.weight", 3, "encoder.layer.3"},
           Case{"decoder.layer.11.ffn.weight", 11, "decoder.layer.11"},
           Case{"blocks.5.norm1.weight", 5, "blocks.5"},
           Case{"h.2.mlp.c_fc.bias", 2, "h.2"},
           Case{"model.decoder.layers.23.fc1.weight", 23, "model.decoder.layers.23"},
           Case{"vision_tower.encoder.block.4.mlp.w", 4, "vision_tower.encoder.block.4"},
           Case{"model.language_model.layers.40.self_attn.q_proj.weight", 40,
                "model.language_model.layers.40"},
           // The first layer container wins (experts inside a layer stay in it).
           Case{"model.layers.3.mlp.experts.blocks.9.w1", 3, "model.layers.3"},
       }) {
    SCOPED_TRACE(c.name);
    const LayerKey key = LayerOf(c.name);
    EXPECT_EQ(key.layer, c.layer);
    EXPECT_EQ(key.group, c.group);
  }
}

TEST(LayerOfTest, NonLayerTensors) {
  for (const char* name : {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                           "model.layers.weight", "model.layers.x.weight", "model.layers.12",
                           "transformer.wte.weight", "hh.3.w", "mylayers.3.w", "", "layers.",
                           "model.layers.-1.w", "model.layers..w",
                           "layers.1234567890123456789012.w"}) {
    SCOPED_TRACE(name);
    const LayerKey key = LayerOf(name);
    EXPECT_EQ(key.layer, -1);
    EXPECT_EQ(key.group, "");
  }
}

TEST(LayerOfTest, CustomPattern) {
  LayerKey key = LayerOf("decoder.block.3.layer.0.SelfAttention.q.weight", "decoder.block.{N}.");
  EXPECT_EQ(key.layer, 3);
  EXPECT_EQ(key.group, "decoder.block.3");
  key = LayerOf("stage_12_conv.weight", "stage_{N}_");
  EXPECT_EQ(key.layer, 12);
  EXPECT_EQ(key.group, "stage_12");
  key = LayerOf("7.weight", "{N}.");
  EXPECT_EQ(key.layer, 7);
  EXPECT_EQ(key.group, "7");
  // A custom pattern replaces the built-in ones.
  key = LayerOf("model.layers.3.mlp.weight", "decoder.block.{N}.");
  EXPECT_EQ(key.layer, -1);
  // The prefix is literal: '.' is not a wildcard.
  EXPECT_EQ(LayerOf("decoderXblock.3.w", "decoder.block.{N}.").layer, -1);
  // No digits, or the rest of the pattern missing.
  EXPECT_EQ(LayerOf("decoder.block.x.w", "decoder.block.{N}.").layer, -1);
  EXPECT_EQ(LayerOf("decoder.block.3", "decoder.block.{N}.").layer, -1);
  // Malformed patterns match nothing.
  EXPECT_EQ(LayerOf("decoder.block.3.w", "decoder.block.").layer, -1);
  EXPECT_EQ(LayerOf("a.1.b.2.w", "a.{N}.b.{N}.").layer, -1);
}

}  // namespace
}  // namespace bigsmall
