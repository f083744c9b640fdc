// Interleaved rANS core shared by the encoder, the CPU decoders and the CUDA
// kernels (it is plain C++ that nvcc compiles for host and device).
//
// Parameters (docs/FORMAT.md §6):
//   * probabilities are quantised to kProbBits = 12 bits (they sum to 4096);
//   * each lane keeps a 32-bit state x in [kRansLow, 2^32) between symbols;
//   * renormalisation moves 16-bit words; one symbol moves at most one word;
//   * kLanes = 32 lanes are interleaved: symbol i of a chunk belongs to lane
//     i % 32, so a CPU SIMD decoder (2x16 lanes) and a GPU warp (32 threads)
//     step through the same bytes.
//
// Stream layout of one chunk: 32 little-endian u32 initial decoder states,
// then the u16 words in the order the decoder consumes them. Decoding the
// symbols of group g (symbols 32g..32g+31) visits lanes 0..31 in order; a lane
// whose state fell below kRansLow after its symbol takes the next word:
//   x = (x << 16) | word.
// The encoder runs the same schedule backwards (last group first, lane 31
// first), pushing words, then reverses them. Encoders start every lane at
// kRansLow, so a correct decode ends with every lane back at kRansLow and every
// word consumed: decoders check both (a cheap integrity check before the hash).
#ifndef BIGSMALL_CODEC_RANS_H_
#define BIGSMALL_CODEC_RANS_H_

#include <cstdint>

#if defined(__CUDACC__)
#define BIGSMALL_HD __host__ __device__ __forceinline__
#else
#define BIGSMALL_HD inline
#endif

namespace bigsmall::rans {

inline constexpr int kLanes = 32;
inline constexpr int kProbBits = 12;
inline constexpr uint32_t kProbScale = 1u << kProbBits;
inline constexpr uint32_t kRansLow = 1u << 16;
inline constexpr int kWordBits = 16;
inline constexpr uint32_t kChunkHeaderBytes = kLanes * 4;

// One decode-table slot: everything a decoder needs for state slot s in
// [0, 4096): symbol (8 bits), freq - 1 (12 bits), cumulative freq (12 bits).
BIGSMALL_HD uint32_t PackSlot(uint32_t symbol, uint32_t freq, uint32_t cum) {
  return symbol | ((freq - 1) << 8) | (cum << 20);
}
BIGSMALL_HD uint32_t SlotSymbol(uint32_t slot) { return slot & 0xffu; }
BIGSMALL_HD uint32_t SlotFreq(uint32_t slot) { return ((slot >> 8) & 0xfffu) + 1; }
BIGSMALL_HD uint32_t SlotCum(uint32_t slot) { return slot >> 20; }

// Decoder step: given state x and the table slot for x's low bits, returns
// the state after removing the symbol (before renormalisation).
BIGSMALL_HD uint32_t DecodeAdvance(uint32_t x, uint32_t slot) {
  return SlotFreq(slot) * (x >> kProbBits) + (x & (kProbScale - 1)) - SlotCum(slot);
}

// Encoder step for symbol with (freq, cum). Returns true and sets *word when
// the state must first shed 16 bits (at most once per symbol, since freq >= 1
// and 2^(32-12) * freq >= 2^16 * freq / ... see docs/FORMAT.md §6).
BIGSMALL_HD bool EncodeNeedsWord(uint32_t x, uint32_t freq) {
  // x_max = ((kRansLow >> kProbBits) << kWordBits) * freq: the largest state
  // that can take this symbol without leaving [kRansLow, 2^32).
  return uint64_t{x} >= (uint64_t{(kRansLow >> kProbBits) << kWordBits} * freq);
}
BIGSMALL_HD uint32_t EncodeAdvance(uint32_t x, uint32_t freq, uint32_t cum) {
  return ((x / freq) << kProbBits) + (x % freq) + cum;
}

}  // namespace bigsmall::rans

#endif  // BIGSMALL_CODEC_RANS_H_
