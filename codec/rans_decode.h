// Decoding one rANS chunk (docs/FORMAT.md §6). The reference decoder follows
// the spec line by line and is the oracle; the fast decoders (scalar
// unrolled, AVX2, AVX-512, chosen at run time) must produce the same bytes
// and the same errors.
#ifndef BIGSMALL_CODEC_RANS_DECODE_H_
#define BIGSMALL_CODEC_RANS_DECODE_H_

#include <array>
#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "codec/rans.h"
#include "codec/tensor_codec.h"

namespace bigsmall::rans {

// Frequencies of one order-0 model: freq[s] for every byte value, summing to
// kProbScale (symbols that never occur have 0).
using Frequencies = std::array<uint16_t, 256>;

// Slot table: slot[x & 4095] = PackSlot(symbol, freq, cum).
struct DecodeTable {
  alignas(64) std::array<uint32_t, kProbScale> slot;
};

}  // namespace bigsmall::rans
namespace bigsmall {
class ByteReader;
}  // namespace bigsmall
namespace bigsmall::rans {

// Reads a serialised frequency table (docs/FORMAT.md §5.2): 32-byte presence
// bitmap, then freq - 1 as u16 for each present symbol. kDataLoss unless the
// frequencies sum to kProbScale.
absl::StatusOr<Frequencies> ReadFrequencies(ByteReader& reader);

// Builds a decode table; kDataLoss unless the frequencies sum to kProbScale.
absl::Status BuildDecodeTable(const Frequencies& freqs, DecodeTable* table);

// Decodes `out.size()` symbols from one chunk stream (32 u32 states + u16
// words). kDataLoss when the stream is too short, has words left over, or the
// final states are not all kRansLow.
absl::Status DecodeChunk(DecoderImpl impl, const DecodeTable& table,
                         absl::Span<const uint8_t> chunk, absl::Span<uint8_t> out);

// Conditional variant: symbol i is decoded with tables[context_map[context[i]]].
// `context` has out.size() bytes; context_map has 256 entries, each < num_tables.
absl::Status DecodeChunkConditional(DecoderImpl impl, const DecodeTable* tables,
                                    size_t num_tables, const uint8_t* context_map,
                                    absl::Span<const uint8_t> context,
                                    absl::Span<const uint8_t> chunk, absl::Span<uint8_t> out);

// One chunk to decode: order-0 with tables[0] (context_map == nullptr), or
// conditional: symbol i uses tables[context_map[context[i]]] (context has
// out.size() bytes, context_map 256 entries each < num_tables; the tables
// are an array of num_tables, e.g. a std::vector's data()).
struct ChunkJob {
  const DecodeTable* tables = nullptr;
  size_t num_tables = 1;
  const uint8_t* context_map = nullptr;
  absl::Span<const uint8_t> context;
  absl::Span<const uint8_t> chunk;
  absl::Span<uint8_t> out;
};

// kDataLoss when a job's tables, context map or context size are invalid.
absl::Status CheckChunkJob(const ChunkJob& job);

// DecodeChunk or DecodeChunkConditional, as the job says.
absl::Status DecodeChunkJob(DecoderImpl impl, const ChunkJob& job);

// Decodes two independent chunks (e.g. two planes of one chunk of a tensor)
// at once. Same bytes and verdicts as DecodeChunkJob(a) then DecodeChunkJob(b)
// (a's error first), but the SIMD decoders interleave the two streams group
// by group (b one group behind a), which hides the latency of one stream's
// gathers and multiplies (one chunk has only 2-4 vector dependency chains):
// 1.3-1.6x faster than two calls. b.context may be a.out (b's context plane
// is a); a.context must not be b.out.
absl::Status DecodeChunkPair(DecoderImpl impl, const ChunkJob& a, const ChunkJob& b);

// Implementations (rans_decode.cc, rans_decode_fast.cc). Exposed for tests
// and benchmarks; use DecodeChunk in product code. The SIMD ones
// return UNIMPLEMENTED where the CPU lacks their instructions.
absl::Status DecodeChunkReference(const DecodeTable& table, absl::Span<const uint8_t> chunk,
                                  absl::Span<uint8_t> out);
absl::Status DecodeChunkScalar(const DecodeTable& table, absl::Span<const uint8_t> chunk,
                               absl::Span<uint8_t> out);
absl::Status DecodeChunkAvx2(const DecodeTable& table, absl::Span<const uint8_t> chunk,
                             absl::Span<uint8_t> out);
absl::Status DecodeChunkAvx512(const DecodeTable& table, absl::Span<const uint8_t> chunk,
                               absl::Span<uint8_t> out);
bool CpuHasAvx2();
bool CpuHasAvx512();
// The two AVX2 variants DecodeChunkAvx2 chooses between by CPU vendor: table
// slots fetched with vpgatherdd (Intel), or with 8 scalar loads per vector
// (faster on AMD Zen). Exposed so tests run both on every AVX2 CPU; call only
// when CpuHasAvx2() (elsewhere they return UNIMPLEMENTED).
absl::Status DecodeChunkAvx2Gather(const DecodeTable& table, absl::Span<const uint8_t> chunk,
                                   absl::Span<uint8_t> out);
absl::Status DecodeChunkAvx2ScalarLoad(const DecodeTable& table, absl::Span<const uint8_t> chunk,
                                       absl::Span<uint8_t> out);
// Which variant DecodeChunkAvx2 runs here (true: scalar loads).
bool Avx2UsesScalarLoads();

// Conditional decoders (same argument checks as DecodeChunkConditional).
absl::Status DecodeChunkConditionalReference(const DecodeTable* tables, size_t num_tables,
                                             const uint8_t* context_map,
                                             absl::Span<const uint8_t> context,
                                             absl::Span<const uint8_t> chunk, absl::Span<uint8_t> out);
absl::Status DecodeChunkConditionalScalar(const DecodeTable* tables, size_t num_tables,
                                          const uint8_t* context_map, absl::Span<const uint8_t> context,
                                          absl::Span<const uint8_t> chunk, absl::Span<uint8_t> out);
absl::Status DecodeChunkConditionalAvx2(const DecodeTable* tables, size_t num_tables,
                                        const uint8_t* context_map, absl::Span<const uint8_t> context,
                                        absl::Span<const uint8_t> chunk, absl::Span<uint8_t> out);
absl::Status DecodeChunkConditionalAvx2Gather(const DecodeTable* tables, size_t num_tables,
                                              const uint8_t* context_map,
                                              absl::Span<const uint8_t> context,
                                              absl::Span<const uint8_t> chunk, absl::Span<uint8_t> out);
absl::Status DecodeChunkConditionalAvx2ScalarLoad(const DecodeTable* tables, size_t num_tables,
                                                  const uint8_t* context_map,
                                                  absl::Span<const uint8_t> context,
                                                  absl::Span<const uint8_t> chunk,
                                                  absl::Span<uint8_t> out);
absl::Status DecodeChunkConditionalAvx512(const DecodeTable* tables, size_t num_tables,
                                          const uint8_t* context_map, absl::Span<const uint8_t> context,
                                          absl::Span<const uint8_t> chunk, absl::Span<uint8_t> out);
// The two AVX-512 variants DecodeChunkConditionalAvx512 chooses between:
// context -> table offsets by a gather (any AVX-512 F/BW/VL CPU) or by
// vpermi2b on the context map held in registers (needs AVX-512 VBMI).
absl::Status DecodeChunkConditionalAvx512Gather(const DecodeTable* tables, size_t num_tables,
                                                const uint8_t* context_map,
                                                absl::Span<const uint8_t> context,
                                                absl::Span<const uint8_t> chunk, absl::Span<uint8_t> out);
absl::Status DecodeChunkConditionalAvx512Vbmi(const DecodeTable* tables, size_t num_tables,
                                              const uint8_t* context_map,
                                              absl::Span<const uint8_t> context,
                                              absl::Span<const uint8_t> chunk, absl::Span<uint8_t> out);
bool CpuHasAvx512Vbmi();

}  // namespace bigsmall::rans

#endif  // BIGSMALL_CODEC_RANS_DECODE_H_
