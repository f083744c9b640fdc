// zstd frames as tensor blobs store them (docs/FORMAT.md §5.1, §5.4, §5.6):
// either standard frames (4-byte magic number first) or, in forms 5 and 6,
// frames in zstd's magicless format (ZSTD_f_zstd1_magicless: the same frame
// without the magic, 4 bytes less per frame). One place for the checks every
// decoder (CPU, GPU host prepass) and the encoder share.
#ifndef BIGSMALL_CODEC_ZSTD_FRAME_H_
#define BIGSMALL_CODEC_ZSTD_FRAME_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace bigsmall {

enum class ZstdFraming : uint8_t {
  kStandard = 0,   // RFC 8878 frame, magic number first
  kMagicless = 1,  // the frame without its 4-byte magic number
};

// The content size `frame` declares, checked: `frame` must be exactly one
// complete zstd frame of `framing` (no trailing bytes, no skippable frame)
// whose header declares its content size. DATA_LOSS otherwise. Parses
// headers only (block headers walked, nothing decompressed).
absl::StatusOr<uint64_t> ZstdFrameContentSize(absl::Span<const uint8_t> frame, ZstdFraming framing);

// Decompresses `frame` (one frame of `framing`) into exactly out.size()
// bytes, with a per-thread context. DATA_LOSS when it is corrupt or does not
// decompress to exactly out.size() bytes; RESOURCE_EXHAUSTED when no context
// can be allocated. Never throws.
absl::Status ZstdDecompressExact(absl::Span<const uint8_t> frame, ZstdFraming framing, absl::Span<uint8_t> out);

struct ZstdCompressOptions {
  int level = 3;
  ZstdFraming framing = ZstdFraming::kStandard;
  bool long_distance = false;  // long-distance matching (large inputs)
};

// Compresses `in` as one frame that declares its content size, without a
// checksum (every tensor carries its own hash), appending it to *out.
absl::Status ZstdCompressFrame(absl::Span<const uint8_t> in, const ZstdCompressOptions& options,
                               std::vector<uint8_t>* out);

}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_ZSTD_FRAME_H_
