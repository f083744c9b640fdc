// The device checksum of a tensor (docs/FORMAT.md §3.1, format 1.1): a
// 64-bit checksum built so that a GPU decode kernel can compute it while it
// writes the tensor, in any order, with no second pass over memory.
//
// The tensor's bytes are read as little-endian 64-bit words w_k
// (k = 0, 1, ...; the last word zero-padded). Each word contributes one term
// that depends on its value and its position; terms are summed modulo 2^64
// (so any thread may add any term at any time: warp reductions and atomicAdd
// give the same sum), and the sum is finished with the byte length:
//
//   term(k, w)  = Fmix64(w ^ (k * kChecksumPositionKey + kChecksumSeed))
//   sum         = Σ_k term(k, w_k)   mod 2^64
//   checksum    = Fmix64(sum ^ Fmix64(num_bytes + kChecksumSeed))
//
// Fmix64 (MurmurHash3's finaliser) is a bijection, so a change of any single
// word always changes the checksum; other corruptions go undetected with
// probability about 2^-64. It is an integrity check against damaged bytes
// and decoder faults, not a cryptographic hash (XXH3-128 stays the CPU
// paths' and `bigsmall verify`'s check).
//
// Header-only and BIGSMALL_HD: compiled by nvcc into the kernels and by the
// host compiler for the CPU reference, the emulator and the encoder.
#ifndef BIGSMALL_CODEC_DEVICE_CHECKSUM_H_
#define BIGSMALL_CODEC_DEVICE_CHECKSUM_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "codec/rans.h"  // BIGSMALL_HD

namespace bigsmall {

inline constexpr uint64_t kChecksumPositionKey = 0x9E3779B97F4A7C15ull;
inline constexpr uint64_t kChecksumSeed = 0x42534D3131435343ull;  // "BSM11CSC"

BIGSMALL_HD uint64_t Fmix64(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdull;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ull;
  k ^= k >> 33;
  return k;
}

// The term of word `w` at word index `k` (byte offset 8k in the tensor).
BIGSMALL_HD uint64_t ChecksumTerm(uint64_t k, uint64_t w) {
  return Fmix64(w ^ (k * kChecksumPositionKey + kChecksumSeed));
}

BIGSMALL_HD uint64_t ChecksumFinish(uint64_t sum, uint64_t num_bytes) {
  return Fmix64(sum ^ Fmix64(num_bytes + kChecksumSeed));
}

// The sum of the terms of `size` bytes at byte `offset` of a tensor, for a
// CPU caller that sees the tensor in pieces. `offset` must be a multiple of
// 8 unless the piece is the tensor's tail; a piece whose size is not a
// multiple of 8 must end the tensor (it is zero-padded).
inline uint64_t ChecksumSumPiece(const uint8_t* data, size_t size, uint64_t offset) {
  uint64_t sum = 0;
  uint64_t k = offset / 8;
  size_t i = 0;
  for (; i + 8 <= size; i += 8, ++k) {
    uint64_t w;
    std::memcpy(&w, data + i, 8);  // little-endian hosts only (as the format)
    sum += ChecksumTerm(k, w);
  }
  if (i < size) {
    uint64_t w = 0;
    std::memcpy(&w, data + i, size - i);
    sum += ChecksumTerm(k, w);
  }
  return sum;
}

// The device checksum of a whole tensor.
inline uint64_t DeviceChecksum(const uint8_t* data, size_t size) {
  return ChecksumFinish(ChecksumSumPiece(data, size, 0), size);
}

}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_DEVICE_CHECKSUM_H_
