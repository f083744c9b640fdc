#include "codec/dtype.h"

#include <string>

#include "codec/format.h"
#include "gtest/gtest.h"

namespace bigsmall {
namespace {

TEST(DtypeTest, Bf16SplitsExponentAndMantissa) {
  const DtypeInfo d = ResolveDtype("BF16");
  EXPECT_TRUE(d.known);
  EXPECT_EQ(d.split, PlaneSplit::kBf16);
  EXPECT_EQ(d.width, 2u);
  EXPECT_EQ(d.bits, 16u);
  EXPECT_EQ(d.exponent_plane, 0);
  EXPECT_EQ(d.conditioned_plane, 1);
  EXPECT_EQ(NumPlanes(d.split, d.width), 2u);
}

TEST(DtypeTest, F32SplitsIntoFourPlanes) {
  const DtypeInfo d = ResolveDtype("F32");
  EXPECT_TRUE(d.known);
  EXPECT_EQ(d.split, PlaneSplit::kFp32);
  EXPECT_EQ(d.width, 4u);
  EXPECT_EQ(d.bits, 32u);
  EXPECT_EQ(d.exponent_plane, 0);
  EXPECT_EQ(d.conditioned_plane, 1);
  EXPECT_EQ(NumPlanes(d.split, d.width), 4u);
}

TEST(DtypeTest, F16AndF64AreBytePlanesWithExponentFirst) {
  for (const auto& [name, width] : {std::pair<const char*, uint32_t>{"F16", 2}, {"F64", 8}}) {
    SCOPED_TRACE(name);
    const DtypeInfo d = ResolveDtype(name);
    EXPECT_TRUE(d.known);
    EXPECT_EQ(d.split, PlaneSplit::kBytes);
    EXPECT_EQ(d.width, width);
    EXPECT_EQ(d.bits, width * 8);
    EXPECT_EQ(d.exponent_plane, 0);
    EXPECT_EQ(d.conditioned_plane, 1);
    EXPECT_EQ(NumPlanes(d.split, d.width), width);
  }
}

TEST(DtypeTest, IntegersAndComplexAreBytePlanesWithoutExponent) {
  struct Case {
    const char* name;
    uint32_t width;
  };
  for (const Case& c : {Case{"I16", 2}, Case{"U16", 2}, Case{"I32", 4}, Case{"U32", 4},
                        Case{"I64", 8}, Case{"U64", 8}, Case{"C64", 8}}) {
    SCOPED_TRACE(c.name);
    const DtypeInfo d = ResolveDtype(c.name);
    EXPECT_TRUE(d.known);
    EXPECT_EQ(d.split, PlaneSplit::kBytes);
    EXPECT_EQ(d.width, c.width);
    EXPECT_EQ(d.bits, c.width * 8);
    EXPECT_EQ(d.exponent_plane, -1);
    EXPECT_EQ(d.conditioned_plane, -1);
    EXPECT_EQ(NumPlanes(d.split, d.width), c.width);
  }
}

TEST(DtypeTest, ByteAndSubByteTypesAreOneBytePlane) {
  struct Case {
    const char* name;
    uint32_t bits;
  };
  for (const Case& c : {Case{"BOOL", 8}, Case{"U8", 8}, Case{"I8", 8}, Case{"F8_E4M3", 8},
                        Case{"F8_E5M2", 8}, Case{"F8_E8M0", 8}, Case{"F4", 4}, Case{"I4", 4},
                        Case{"U4", 4}, Case{"F6_E2M3", 6}, Case{"F6_E3M2", 6}}) {
    SCOPED_TRACE(c.name);
    const DtypeInfo d = ResolveDtype(c.name);
    EXPECT_TRUE(d.known);
    EXPECT_EQ(d.split, PlaneSplit::kBytes);
    EXPECT_EQ(d.width, 1u);
    EXPECT_EQ(d.bits, c.bits);
    EXPECT_EQ(d.exponent_plane, -1);
    EXPECT_EQ(d.conditioned_plane, -1);
    EXPECT_EQ(NumPlanes(d.split, d.width), 1u);
  }
}

TEST(DtypeTest, UnknownIsGenericByteNotAnError) {
  for (const char* name : {"", "bf16", "F128", "Q4_K", "BF16 "}) {
    SCOPED_TRACE(name);
    const DtypeInfo d = ResolveDtype(name);
    EXPECT_FALSE(d.known);
    EXPECT_EQ(d.split, PlaneSplit::kBytes);
    EXPECT_EQ(d.width, 1u);
    EXPECT_EQ(d.bits, 8u);
    EXPECT_EQ(d.exponent_plane, -1);
  }
}

TEST(DtypeTest, PlanesNeverExceedLimit) {
  for (const char* name : {"BOOL", "F16", "BF16", "F32", "F64", "C64", "I64"}) {
    const DtypeInfo d = ResolveDtype(name);
    EXPECT_LE(NumPlanes(d.split, d.width), kMaxPlanes) << name;
  }
}

TEST(FormatTest, ModeNames) {
  EXPECT_STREQ(ModeName(Mode::kBalanced), "balanced");
  EXPECT_STREQ(ModeName(Mode::kStorage), "storage");
  EXPECT_STREQ(ModeName(Mode::kInference), "inference");
}

}  // namespace
}  // namespace bigsmall
