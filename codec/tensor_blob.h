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

namespace bigsmall {

struct BlobPlane {
  PlaneCoder coder = PlaneCoder::kRaw;
  uint8_t constant = 0;
  int context_plane = -1;                     // kRansConditional
  std::vector<rans::Frequencies> tables;      // kRans: 1; kRansConditional: >= 1
  std::array<uint8_t, 256> context_map{};     // kRansConditional
  // Byte offsets (within the blob) of each chunk's payload; chunk c is
  // [chunk_offsets[c], chunk_offsets[c + 1]). Raw planes have them too;
  // constant planes (no payload) have none.
  std::vector<uint64_t> chunk_offsets;
};

struct ParsedBlob {
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

inline constexpr uint8_t kBlobVersion = 1;

absl::StatusOr<ParsedBlob> ParseTensorBlob(absl::Span<const uint8_t> blob);

// DecodeTensorBlobs without the job prefix on the error: *failed_job is set
// to the index of the job whose error is returned (for callers that name the
// tensor themselves, e.g. DecodeTensors in bs_reader).
absl::Status DecodeBlobBatch(absl::Span<const BlobDecodeJob> jobs, const DecodeOptions& options,
                             size_t* failed_job);

}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_TENSOR_BLOB_H_
