// .bs container format constants and on-disk enums. docs/FORMAT.md is the
// specification; every value here is named there. Changing a value here is a
// format change: bump kFormatVersionMajor/Minor and update docs/FORMAT.md.
#ifndef BIGSMALL_CODEC_FORMAT_H_
#define BIGSMALL_CODEC_FORMAT_H_

#include <array>
#include <cstddef>
#include <cstdint>

namespace bigsmall {

// "\x89BSM\r\n\x1a\n": the high byte catches 7-bit transports, CRLF/LF catch
// text-mode line-ending rewrites, ^Z stops DOS `type` (same idea as PNG's).
inline constexpr std::array<uint8_t, 8> kMagic = {0x89, 'B', 'S', 'M', '\r', '\n', 0x1a, '\n'};
inline constexpr uint16_t kFormatVersionMajor = 1;
// The minor version this build writes, and the highest it reads (it reads
// 0 to 3; docs/FORMAT.md §2). 1.1 adds the index trailer (§3.2): a device
// checksum per tensor and an XXH3-64 per group. 1.2 adds blob forms 2-4
// (§5: raw, whole-tensor zstd, fields). 1.3 adds forms 5 and 6 (§5.4, §5.6:
// magicless zstd frames, one-chunk planes with a compact header).
inline constexpr uint16_t kFormatVersionMinor = 3;
inline constexpr uint16_t kFormatVersionMinorChecksums = 1;  // first minor with the trailer

inline constexpr size_t kFileHeaderSize = 64;
// Layer groups start on this boundary so one aligned (O_DIRECT) read fetches
// one layer.
inline constexpr uint64_t kGroupAlignment = 4096;

// Limits a decoder enforces on untrusted input (before allocating anything).
inline constexpr uint64_t kMaxIndexSize = 1ull << 30;         // decompressed index
// A decompressed index may exceed this floor only by kMaxIndexRatio times its
// stored (zstd) size (see MaxIndexRawSize in bs_reader.h).
inline constexpr uint64_t kIndexRatioFloor = 16ull << 20;
inline constexpr uint64_t kMaxIndexRatio = 1024;
inline constexpr uint64_t kMaxSafetensorsHeader = 100ull << 20;  // as safetensors itself
inline constexpr uint32_t kMaxTensors = 1u << 22;
inline constexpr uint32_t kMaxPlanes = 8;
inline constexpr uint32_t kMaxChunkElements = 1u << 24;

// File header flags.
inline constexpr uint32_t kFlagDelta = 1u << 0;  // tensors may be XOR deltas against a base
// 1.2: groups packed back to back from offset 64, no padding anywhere
// (docs/FORMAT.md §1.1); writers use it for originals below kPackedBelow,
// where 4 KiB alignment is a visible share of the file and O_DIRECT does not
// matter.
inline constexpr uint32_t kFlagPacked = 1u << 1;
inline constexpr uint16_t kFormatVersionMinorPacked = 2;  // first minor with kFlagPacked
inline constexpr uint64_t kPackedBelow = 64ull << 20;

// Per-tensor flags in the index.
inline constexpr uint8_t kTensorFlagDelta = 1u << 0;  // blob codes (tensor XOR base tensor)

// How a tensor's elements are split into byte planes (docs/FORMAT.md §4).
enum class PlaneSplit : uint8_t {
  kBytes = 0,  // element width W: plane p holds byte (W-1-p) of each element (MSB first)
  kBf16 = 1,   // 2 planes: exponent (8 bits), sign<<7 | mantissa (7 bits)
  kFp32 = 2,   // 4 planes: exponent, sign<<7 | mantissa[22:16], mantissa[15:8], mantissa[7:0]
};

// How one plane is stored (docs/FORMAT.md §5).
enum class PlaneCoder : uint8_t {
  kRaw = 0,       // bytes as they are
  kConstant = 1,  // every byte equals one value
  kRans = 2,      // order-0 rANS, 32 interleaved lanes, one table per plane
  kRansConditional = 3,  // rANS with a table chosen by another plane's byte at the same element
  kZstd = 4,      // zstd frame per chunk (zero runs, repeats, sparse planes)
  // Order-0 rANS with one table per run of chunks (1.3): tensors whose
  // statistics drift along them (embedding rows sorted by token frequency).
  // Parsed blobs describe it as kRans with BlobPlane::chunks_per_table set.
  kRansSegmented = 5,
};

// Compression presets. All produce files the same decoder reads.
enum class Mode : uint8_t {
  kBalanced = 0,
  kStorage = 1,
  kInference = 2,
};

const char* ModeName(Mode mode);

}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_FORMAT_H_
