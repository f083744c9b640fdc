// Strict parser for the safetensors container (header + data section).
// Untrusted input: every length, offset and shape is checked before use, and
// every problem is an absl::Status naming it (never an exception or crash).
#ifndef BIGSMALL_CODEC_SAFETENSORS_H_
#define BIGSMALL_CODEC_SAFETENSORS_H_

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "codec/dtype.h"

namespace bigsmall {

struct SafetensorsTensor {
  std::string name;
  std::string dtype_name;  // as written in the header, e.g. "BF16"
  DtypeInfo dtype;         // resolved; unknown dtypes map to a generic 8-bit type
  std::vector<uint64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data section
  uint64_t end = 0;
  uint64_t size() const { return end - begin; }
  uint64_t num_elements() const;
};

struct SafetensorsHeader {
  // The first 8 + N bytes of the file: the little-endian length and the JSON
  // header exactly as stored (including trailing padding spaces).
  uint64_t header_bytes = 0;  // 8 + N: where the data section starts
  uint64_t data_size = 0;     // bytes of the data section (= file size - header_bytes)
  std::vector<SafetensorsTensor> tensors;  // sorted by begin offset
  std::string metadata_json;               // "__metadata__" object as JSON text, or empty
};

// Reads the 8-byte length prefix. Fails on lengths over kMaxSafetensorsHeader
// or past `file_size`.
absl::StatusOr<uint64_t> ParseSafetensorsHeaderLength(absl::Span<const uint8_t> first8,
                                                      uint64_t file_size);

// Parses and validates `prefix` (the first header_bytes bytes of a file of
// `file_size` bytes): valid UTF-8 JSON object, every tensor entry well formed,
// dtype size times element count equals the byte range, ranges inside the
// data section, no overlaps, no holes (the data section is exactly covered,
// as the safetensors spec requires). `what` names the file in errors.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::Span<const uint8_t> prefix,
                                                         uint64_t file_size,
                                                         absl::string_view what);

// Layer grouping (docs/FORMAT.md §3): returns the layer index and the group
// name for a tensor name, e.g. "model.layers.12.mlp.up_proj.weight" ->
// {12, "model.layers.12"}. Non-layer tensors return {-1, ""}. When
// `custom_pattern` is non-empty it is an RE2-free pattern: a literal prefix
// with one "{N}" placeholder, e.g. "decoder.block.{N}.".
struct LayerKey {
  int64_t layer = -1;
  std::string group;
};
LayerKey LayerOf(absl::string_view tensor_name, absl::string_view custom_pattern = {});

}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_SAFETENSORS_H_
