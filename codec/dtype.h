// Element types: what safetensors calls them, how wide they are, and how the
// codec splits them into byte planes.
#ifndef BIGSMALL_CODEC_DTYPE_H_
#define BIGSMALL_CODEC_DTYPE_H_

#include <cstdint>
#include "absl/strings/string_view.h"

#include "codec/format.h"

namespace bigsmall {

struct DtypeInfo {
  // Bits per element as stored (4 for F4/I4/U4 packed two per byte, 6 for FP6).
  uint32_t bits = 8;
  // Element width the plane split works on, in bytes (1 for sub-byte types:
  // packed bytes are coded as whole bytes, which captures both nibbles jointly).
  uint32_t width = 1;
  PlaneSplit split = PlaneSplit::kBytes;
  bool known = false;  // false: a dtype we have never heard of (coded generically)
  // Plane that holds the exponent (the context for conditional mantissa
  // coding in --storage), or -1 when the type has none.
  int exponent_plane = -1;
  // Plane coded conditionally on exponent_plane in --storage, or -1.
  int conditioned_plane = -1;
};

// Resolves a safetensors dtype string ("BF16", "F8_E4M3", ...). Unknown
// strings resolve to a generic 1-byte type with known=false, never an error.
DtypeInfo ResolveDtype(absl::string_view name);

// Number of planes a split produces for an element of `width` bytes.
uint32_t NumPlanes(PlaneSplit split, uint32_t width);

}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_DTYPE_H_
