// Parsed view of a tensor blob's header (docs/FORMAT.md §5): everything a
// decoder (CPU or CUDA) needs to find and decode chunk c of plane p. Parsing
// checks every size and offset, so a parsed blob is safe to index.
#ifndef BIGSMALL_CODEC_TENSOR_BLOB_H_
#define BIGSMALL_CODEC_TENSOR_BLOB_H_

#include <array>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "codec/format.h"
#include "codec/rans_decode.h"
#include "codec/tensor_codec.h"
#include "codec/zstd_frame.h"

namespace bigsmall {

struct BlobPlane {
  PlaneCoder coder = PlaneCoder::kRaw;
  uint8_t constant = 0;
  int context_plane = -1;                     // kRansConditional
  // kRans: 1 (or, for a rans_segmented plane, one per run of
  // chunks_per_table chunks); kRansConditional: >= 1.
  std::vector<rans::Frequencies> tables;
  uint32_t chunks_per_table = 0;              // rans_segmented (§5.1); 0 otherwise
  std::array<uint8_t, 256> context_map{};     // kRansConditional
  ZstdFraming zstd_framing = ZstdFraming::kStandard;  // kZstd: magicless in forms 5 and 6
  // Byte offsets (within the blob) of each chunk's payload; chunk c is
  // [chunk_offsets[c], chunk_offsets[c + 1]). Raw planes have them too;
  // constant planes (no payload) have none.
  std::vector<uint64_t> chunk_offsets;
};

// The table order-0 chunk c of `plane` is coded with (an index into
// plane.tables): 0, or c / chunks_per_table for a rans_segmented plane.
inline uint32_t ChunkTable(const BlobPlane& plane, uint32_t c) {
  return plane.chunks_per_table == 0 ? 0 : c / plane.chunks_per_table;
}

// Blob forms (the blob's first byte, docs/FORMAT.md §5).
inline constexpr uint8_t kBlobFormPlanes = 1;  // byte planes, chunked (§5.1)
inline constexpr uint8_t kBlobFormRaw = 2;     // the tensor's bytes verbatim (§5.3)
inline constexpr uint8_t kBlobFormZstd = 3;    // one zstd frame of the whole tensor (§5.4)
inline constexpr uint8_t kBlobFormFields = 4;  // fixed-size records split into fields (§5.5)
inline constexpr uint8_t kBlobFormZstdMagicless = 5;  // form 3 without the frame's magic (§5.4)
inline constexpr uint8_t kBlobFormSmallPlanes = 6;    // form 1 in one chunk, compact header (§5.6)
// A form-3 or form-5 frame holds at most this many bytes (one chunk); so
// does a form-6 blob's chunk, in elements.
inline constexpr uint64_t kMaxZstdBlobBytes = kMaxChunkElements;
// Form 4 limits: a record of 2..kMaxRecordBytes bytes, 2..kMaxFields fields.
inline constexpr uint32_t kMaxRecordBytes = 4096;
inline constexpr uint32_t kMaxFields = 16;
// Chunk size a raw blob is described with (memcpy pieces for threads).
inline constexpr uint32_t kRawBlobChunk = 1u << 20;

struct ParsedBlob;

// One field of a form-4 blob: bytes [offset, offset + bytes) of every record,
// stored as its own blob (any form but 4) at [blob_offset, blob_offset +
// blob_size) of the outer blob, holding records * bytes bytes.
struct BlobField {
  uint32_t offset = 0;
  uint32_t bytes = 0;
  uint64_t blob_offset = 0;
  uint64_t blob_size = 0;
};

struct ParsedBlob {
  uint8_t form = kBlobFormPlanes;
  // Form 4 only: the record size, its fields and their parsed blobs. A
  // form-4 blob has no planes and one "chunk" (the whole tensor).
  uint32_t record_bytes = 0;
  std::vector<BlobField> fields;
  std::vector<ParsedBlob> field_blobs;
  PlaneSplit split = PlaneSplit::kBytes;
  uint32_t width = 1;
  uint64_t num_bytes = 0;
  uint64_t num_elements = 0;
  uint32_t chunk_elements = 0;
  uint32_t num_chunks = 0;
  std::vector<BlobPlane> planes;

  // Elements in chunk c.
  uint64_t ChunkCount(uint32_t c) const {
    const uint64_t first = uint64_t{c} * chunk_elements;
    const uint64_t rest = num_elements - first;
    return rest < chunk_elements ? rest : chunk_elements;
  }
};


absl::StatusOr<ParsedBlob> ParseTensorBlob(absl::Span<const uint8_t> blob);

// DecodeTensorBlobs without the job prefix on the error: *failed_job is set
// to the index of the job whose error is returned (for callers that name the
// tensor themselves, e.g. DecodeTensors in bs_reader).
absl::Status DecodeBlobBatch(absl::Span<const BlobDecodeJob> jobs, const DecodeOptions& options,
                             size_t* failed_job);

}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_TENSOR_BLOB_H_
