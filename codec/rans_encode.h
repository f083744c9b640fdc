// rANS encoder (encode side only). See codec/rans.h for the stream layout.
#ifndef BIGSMALL_CODEC_RANS_ENCODE_H_
#define BIGSMALL_CODEC_RANS_ENCODE_H_

#include <array>
#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "codec/rans_decode.h"

namespace bigsmall::rans {

using Counts = std::array<uint64_t, 256>;

Counts CountSymbols(absl::Span<const uint8_t> symbols);

// Quantises counts to frequencies summing to kProbScale, keeping every
// occurring symbol at >= 1 and minimising the coded size greedily. At least
// one count must be non-zero.
Frequencies NormalizeFrequencies(const Counts& counts);

// Estimated payload bits for coding `counts` with `freqs` (no headers).
double EstimateBits(const Counts& counts, const Frequencies& freqs);

// Appends the serialised table (docs/FORMAT.md §5.2).
void AppendFrequencies(const Frequencies& freqs, std::vector<uint8_t>* out);
size_t SerializedFrequenciesSize(const Frequencies& freqs);

// Encodes one chunk; appends its stream (32 u32 states + u16 words) to out.
void EncodeChunk(const Frequencies& freqs, absl::Span<const uint8_t> symbols,
                 std::vector<uint8_t>* out);

// Conditional: symbol i uses tables[context_map[context[i]]].
void EncodeChunkConditional(const Frequencies* tables, const uint8_t* context_map,
                            absl::Span<const uint8_t> context, absl::Span<const uint8_t> symbols,
                            std::vector<uint8_t>* out);

// Both run 16 lanes at a time with AVX-512 where the CPU has it (the same
// bytes); these always run the scalar loop (for tests and benchmarks).
void EncodeChunkScalar(const Frequencies& freqs, absl::Span<const uint8_t> symbols,
                       std::vector<uint8_t>* out);
void EncodeChunkConditionalScalar(const Frequencies* tables, const uint8_t* context_map,
                                  absl::Span<const uint8_t> context, absl::Span<const uint8_t> symbols,
                                  std::vector<uint8_t>* out);

}  // namespace bigsmall::rans

#endif  // BIGSMALL_CODEC_RANS_ENCODE_H_
