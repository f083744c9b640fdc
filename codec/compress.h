// Compressing safetensors files and model directories into .bs (encode side).
#ifndef BIGSMALL_CODEC_COMPRESS_H_
#define BIGSMALL_CODEC_COMPRESS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "codec/format.h"
#include "codec/progress.h"

namespace bigsmall {

// File layout (docs/FORMAT.md §1): aligned (groups on 4 KiB boundaries, for
// O_DIRECT reads of big files) or packed (no padding at all).
enum class Layout : uint8_t {
  kAuto = 0,     // packed below kPackedBelow (64 MiB of original), else aligned
  kAligned = 1,
  kPacked = 2,
};

struct CompressOptions {
  Mode mode = Mode::kBalanced;
  Layout layout = Layout::kAuto;
  int threads = 0;              // 0: all cores
  std::string base;             // fine-tune delta against this safetensors file or directory
  std::string layer_pattern;    // custom layer pattern, see LayerOf()
  uint32_t chunk_elements = 0;  // 0: the mode's default
  bool force = false;           // overwrite an existing output (a file, or a directory with a directory)
  bool follow_symlinks = false; // directories: follow symlinks that leave the model directory
  ProgressFn progress;
};

struct CompressStats {
  uint64_t input_bytes = 0;
  uint64_t output_bytes = 0;
  uint64_t tensors = 0;
  uint64_t files = 0;  // safetensors files compressed (directories: shards)
  double seconds = 0;
};

// `input` is a .safetensors file (output: one .bs file) or a directory with
// *.safetensors shards (output: a directory holding one NAME.safetensors.bs
// per shard and a verbatim copy of every other file). The output appears
// atomically (written under a temporary name, then renamed); on failure
// nothing is left behind. Never writes over `input`; an existing output
// needs options.force.
absl::StatusOr<CompressStats> CompressPath(const std::string& input, const std::string& output,
                                           const CompressOptions& options);

// Default output name: FILE.safetensors -> FILE.safetensors.bs, DIR -> DIR.bs
std::string DefaultCompressedName(const std::string& input);

}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_COMPRESS_H_
