// Rebuilding original safetensors files from .bs, and verifying .bs files
// (decode side only).
#ifndef BIGSMALL_CODEC_DECOMPRESS_H_
#define BIGSMALL_CODEC_DECOMPRESS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "codec/progress.h"
#include "codec/tensor_codec.h"

namespace bigsmall {

struct DecompressOptions {
  int threads = 0;        // 0: all cores
  std::string base;       // required for delta files: the base file or directory
  bool force = false;     // overwrite an existing output
  DecoderImpl impl = DecoderImpl::kAuto;
  ProgressFn progress;
  // Tuning and tests. Output bytes decoded per batch (0: 32 MiB; a larger
  // tensor is a batch of its own). in_place = false: decode into two reused
  // buffers and write them, as where the output filesystem cannot reserve
  // space or map files (instead of decoding straight into the output's pages).
  uint64_t batch_bytes = 0;
  bool in_place = true;
};

struct DecompressStats {
  uint64_t input_bytes = 0;
  uint64_t output_bytes = 0;
  uint64_t tensors = 0;
  uint64_t files = 0;
  // VerifyPath on format 1.1 files: how many device checksums (one per
  // tensor) and group checksums were checked (docs/FORMAT.md §3.2).
  uint64_t device_checksums = 0;
  uint64_t group_checksums = 0;
  double seconds = 0;
};

// Inverse of CompressPath: a .bs file -> the original .safetensors file, a
// .bs directory -> the original directory, byte for byte (the whole-file
// hash is checked before the output is renamed into place). Streams batch by
// batch in file order, decoding each batch's tensors on every core straight
// into the output file's pages (nothing copied; the whole-file hash of the
// previous batch computed meanwhile); memory stays bounded by a batch or the
// largest tensor, not the file.
absl::StatusOr<DecompressStats> DecompressPath(const std::string& input, const std::string& output,
                                               const DecompressOptions& options);

struct VerifyOptions {
  int threads = 0;
  std::string base;
  std::string against;  // optional original file/directory to compare bytes with
  DecoderImpl impl = DecoderImpl::kAuto;
  ProgressFn progress;
};

// Decodes every tensor and checks every hash: XXH3-128 of each tensor and
// of the whole file and, in format 1.1 files, each group checksum (before
// decoding) and each tensor's device checksum (and, with `against`, that the
// rebuilt bytes equal the original). kDataLoss on any mismatch.
absl::StatusOr<DecompressStats> VerifyPath(const std::string& input, const VerifyOptions& options);

// Default output name: X.safetensors.bs -> X.safetensors, DIR.bs -> DIR.
std::string DefaultDecompressedName(const std::string& input);

}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_DECOMPRESS_H_
