// Writing one safetensors file as a .bs file (encode side).
#ifndef BIGSMALL_CODEC_BS_WRITER_H_
#define BIGSMALL_CODEC_BS_WRITER_H_

#include <string>

#include "absl/status/statusor.h"
#include "codec/base_model.h"
#include "codec/compress.h"
#include "codec/file_util.h"
#include "codec/thread_pool.h"

namespace bigsmall {

struct BsWriteResult {
  uint64_t input_bytes = 0;
  uint64_t output_bytes = 0;
  uint64_t tensors = 0;
  uint64_t delta_tensors = 0;
};

// Encodes `input` into `out` (an AtomicFile the caller commits). `base` may
// be null. `progress_offset`/`progress_total` place this file's progress in
// a larger job.
absl::StatusOr<BsWriteResult> WriteBsFile(const std::string& input, AtomicFile& out,
                                          const CompressOptions& options, const BaseModel* base,
                                          ThreadPool& pool, uint64_t progress_offset,
                                          uint64_t progress_total);

}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_BS_WRITER_H_
