// Encoding and decoding of one tensor's bytes as a self-describing blob
// (docs/FORMAT.md §5). The decoder half is in tensor_decoder.cc and never
// depends on the encoder half (tensor_encoder.cc).
#ifndef BIGSMALL_CODEC_TENSOR_CODEC_H_
#define BIGSMALL_CODEC_TENSOR_CODEC_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "codec/dtype.h"
#include "codec/format.h"

namespace bigsmall {

class ThreadPool;

// Which rANS chunk decoder to run. kAuto picks the fastest this CPU supports.
enum class DecoderImpl : uint8_t { kAuto = 0, kReference = 1, kScalar = 2, kAvx2 = 3, kAvx512 = 4 };
const char* DecoderImplName(DecoderImpl impl);
// The implementation kAuto resolves to on this CPU.
DecoderImpl BestDecoderImpl();
// Whether `impl` can run on this CPU. Product code asking for one that
// cannot gets the scalar decoder; tests use this to skip (never to test
// another decoder under the requested one's name).
bool DecoderImplAvailable(DecoderImpl impl);

struct DecodeOptions {
  DecoderImpl impl = DecoderImpl::kAuto;
  ThreadPool* pool = nullptr;  // chunk-parallel decode when set
};

// Summary of one plane as stored, for `info` and benchmarks.
struct PlaneSummary {
  PlaneCoder coder = PlaneCoder::kRaw;
  uint64_t raw_bytes = 0;
  uint64_t stored_bytes = 0;
  int context_plane = -1;  // for kRansConditional
};

struct BlobSummary {
  uint8_t form = 1;           // docs/FORMAT.md §5: 1 planes, 2 raw, 3 zstd, 4 fields
  uint32_t record_bytes = 0;  // form 4: the record size (planes: every field's, in order)
  PlaneSplit split = PlaneSplit::kBytes;
  uint32_t width = 1;
  uint64_t num_bytes = 0;
  uint32_t chunk_elements = 0;
  uint32_t num_chunks = 0;
  std::vector<PlaneSummary> planes;
};

// Name of a blob form ("planes", "raw", "zstd", "fields"; "unknown").
const char* BlobFormName(uint8_t form);

// Parses only the blob's header (no payload decode).
absl::StatusOr<BlobSummary> SummarizeTensorBlob(absl::Span<const uint8_t> blob);

// Decodes `blob` into `out`, which must be exactly the tensor's byte size.
// Hostile blobs give kDataLoss/kInvalidArgument, never out-of-bounds access.
// Does not hash: callers check the tensor hash (DecodeAndVerify in bs_reader).
absl::Status DecodeTensorBlob(absl::Span<const uint8_t> blob, absl::Span<uint8_t> out,
                              const DecodeOptions& options = {});

// One tensor of a batch decode: its blob and the bytes it decodes into
// (exactly the tensor's size).
struct BlobDecodeJob {
  absl::Span<const uint8_t> blob;
  absl::Span<uint8_t> out;
  // Fine-tune deltas (docs/FORMAT.md §7): when set (exactly out's size),
  // each chunk's output is XORed with these bytes right after it is decoded,
  // while it is still in cache.
  absl::Span<const uint8_t> xor_base;
};

// Decodes every job of a batch. With options.pool, the chunks of every blob
// go onto one work queue (not a fork/join per tensor), so a layer of many
// small tensors and one of a few huge ones keep every thread busy alike.
// Returns the first error in job order, prefixed with "tensor J: " where J
// is the job's index. Does not hash.
absl::Status DecodeTensorBlobs(absl::Span<const BlobDecodeJob> jobs, const DecodeOptions& options = {});

struct EncodeOptions {
  Mode mode = Mode::kBalanced;
  uint32_t chunk_elements = 0;  // 0: the mode's default
  ThreadPool* pool = nullptr;
};

// Encodes `bytes` (one tensor of `dtype`) into a blob.
absl::StatusOr<std::vector<uint8_t>> EncodeTensorBlob(absl::Span<const uint8_t> bytes,
                                                      const DtypeInfo& dtype,
                                                      const EncodeOptions& options = {});

}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_TENSOR_CODEC_H_
