// Fuzzes the safetensors header parser on whole files: the length prefix,
// then the JSON header and every check behind it. Any crash, sanitizer report
// or escaping exception is a bug; a rejected input is not.
#include <cstddef>
#include <cstdint>

#include "absl/types/span.h"
#include "codec/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::Span<const uint8_t> file(data, size);
  const absl::StatusOr<uint64_t> length =
      bigsmall::ParseSafetensorsHeaderLength(file.subspan(0, 8), size);
  const absl::StatusOr<bigsmall::SafetensorsHeader> header =
      bigsmall::ParseSafetensorsHeader(file, size, "fuzz.safetensors");
  // The two entry points must agree on the length prefix.
  if (header.ok() && (!length.ok() || header->header_bytes != 8 + *length)) __builtin_trap();
  if (header.ok()) {
    uint64_t covered = 0;
    for (const bigsmall::SafetensorsTensor& t : header->tensors) {
      // Sorted, tiling the data section exactly.
      if (t.begin != covered || t.end < t.begin) __builtin_trap();
      covered = t.end;
      (void)bigsmall::LayerOf(t.name);
      (void)bigsmall::LayerOf(t.name, "model.layers.{N}.");
    }
    if (covered != header->data_size) __builtin_trap();
  }
  return 0;
}
