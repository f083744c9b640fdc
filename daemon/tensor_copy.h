// GetTensors without gRPC: which tensors a request names (looked up by name
// in the model's hash index, so a zero-size tensor is never confused with
// its neighbour) and the sequence of chunks that copies them out, asking
// for a layer lease whenever the next tensor lives in another layer.
#ifndef BIGSMALL_DAEMON_TENSOR_COPY_H_
#define BIGSMALL_DAEMON_TENSOR_COPY_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "bigsmall/v1/bigsmall.pb.h"
#include "daemon/model.h"

namespace bigsmall::daemon {

// At most this many names per request (a request is also bounded by the
// daemon's 4 MiB receive limit).
inline constexpr int kMaxTensorNames = 100000;

struct TensorCopyItem {
  int32_t layer = 0;
  const TensorPlan* plan = nullptr;
  const v1::TensorInfo* info = nullptr;
};

// The tensors to copy: the named ones in request order (NOT_FOUND for an
// unknown name), or every non-layer tensor when no name is given.
absl::StatusOr<std::vector<TensorCopyItem>> PlanTensorCopy(const Model& model,
                                                           const v1::GetTensorsRequest& request);

// Chunk size for a request: 1 MiB by default, clamped to [4 KiB, 4 MiB].
uint64_t TensorChunkBytes(uint64_t requested);

class TensorCopier {
 public:
  TensorCopier(std::vector<TensorCopyItem> items, uint64_t chunk_bytes)
      : items_(std::move(items)), chunk_(chunk_bytes) {}

  enum class Step { kChunk, kNeedLayer, kDone };
  // kChunk: `chunk` holds the next message. kNeedLayer: lease `*layer` and
  // call SetLayer first. kDone: everything was produced.
  Step Next(v1::TensorChunk* chunk, int32_t* layer);
  // The memory of the leased layer the next tensors are copied from.
  void SetLayer(int32_t layer, const uint8_t* base, uint64_t size);

 private:
  std::vector<TensorCopyItem> items_;
  const uint64_t chunk_;
  size_t item_ = 0;
  uint64_t pos_ = 0;  // within the current tensor
  bool have_layer_ = false;
  int32_t layer_ = 0;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_TENSOR_COPY_H_
