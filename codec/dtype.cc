#include "codec/dtype.h"

#include <array>

namespace bigsmall {
namespace {

struct DtypeEntry {
  absl::string_view name;
  DtypeInfo info;
};

constexpr DtypeInfo Bytes(uint32_t bits, uint32_t width, int exponent_plane = -1,
                          int conditioned_plane = -1) {
  DtypeInfo info;
  info.bits = bits;
  info.width = width;
  info.split = PlaneSplit::kBytes;
  info.known = true;
  info.exponent_plane = exponent_plane;
  info.conditioned_plane = conditioned_plane;
  return info;
}

constexpr DtypeInfo Split(PlaneSplit split, uint32_t width) {
  DtypeInfo info;
  info.bits = width * 8;
  info.width = width;
  info.split = split;
  info.known = true;
  // Both float splits put the biased exponent in plane 0 and sign|top
  // mantissa bits in plane 1.
  info.exponent_plane = 0;
  info.conditioned_plane = 1;
  return info;
}

// Every dtype the safetensors spec (and its reference implementation) names.
// Sub-byte types are packed; the plane split sees whole bytes (width 1).
constexpr std::array<DtypeEntry, 22> kDtypes = {{
    {"BOOL", Bytes(8, 1)},
    {"U8", Bytes(8, 1)},
    {"I8", Bytes(8, 1)},
    {"F8_E4M3", Bytes(8, 1)},
    {"F8_E5M2", Bytes(8, 1)},
    {"F8_E8M0", Bytes(8, 1)},
    {"F4", Bytes(4, 1)},
    {"I4", Bytes(4, 1)},
    {"U4", Bytes(4, 1)},
    {"F6_E2M3", Bytes(6, 1)},
    {"F6_E3M2", Bytes(6, 1)},
    {"I16", Bytes(16, 2)},
    {"U16", Bytes(16, 2)},
    // F16 MSB first: plane 0 = sign|exp5|mant[9:8], plane 1 = mant[7:0].
    {"F16", Bytes(16, 2, /*exponent_plane=*/0, /*conditioned_plane=*/1)},
    {"BF16", Split(PlaneSplit::kBf16, 2)},
    {"I32", Bytes(32, 4)},
    {"U32", Bytes(32, 4)},
    {"F32", Split(PlaneSplit::kFp32, 4)},
    // F64 MSB first: plane 0 = sign|exp[10:4], plane 1 = exp[3:0]|mant[51:48].
    {"F64", Bytes(64, 8, /*exponent_plane=*/0, /*conditioned_plane=*/1)},
    {"I64", Bytes(64, 8)},
    {"U64", Bytes(64, 8)},
    // complex64: two F32 (real, imaginary); coded as plain 8-byte planes.
    {"C64", Bytes(64, 8)},
}};

}  // namespace

DtypeInfo ResolveDtype(absl::string_view name) {
  for (const DtypeEntry& entry : kDtypes) {
    if (entry.name == name) return entry.info;
  }
  DtypeInfo unknown;  // generic 1-byte type
  unknown.bits = 8;
  unknown.width = 1;
  unknown.split = PlaneSplit::kBytes;
  unknown.known = false;
  return unknown;
}

uint32_t NumPlanes(PlaneSplit split, uint32_t width) {
  switch (split) {
    case PlaneSplit::kBytes:
      return width;
    case PlaneSplit::kBf16:
      return 2;
    case PlaneSplit::kFp32:
      return 4;
  }
  return width;
}

}  // namespace bigsmall
