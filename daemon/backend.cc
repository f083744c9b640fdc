#include "daemon/backend.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "codec/thread_pool.h"
#include "daemon/io_uring_source.h"
#include "daemon/model.h"

namespace bigsmall::daemon {
namespace {

class HostStaging final : public StagingBuffer {
 public:
  explicit HostStaging(AlignedBuffer buffer) : buffer_(std::move(buffer)) {}
  uint8_t* data() override { return buffer_.data(); }
  uint64_t capacity() const override { return buffer_.size(); }

 private:
  AlignedBuffer buffer_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<StagingBuffer>> HostBackend::AllocateStaging(uint64_t bytes) {
  AlignedBuffer buffer(bytes);
  if (!buffer.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat("no memory for ", bytes, " bytes of staging"));
  }
  return std::unique_ptr<StagingBuffer>(new HostStaging(std::move(buffer)));
}

absl::StatusOr<std::shared_ptr<LayerData>> HostBackend::Decode(const StagedLayer& layer) {
  const LayerPlan& plan = *layer.plan;
  const Model& model = *layer.model;
  // The layer's block in an arena, backed now: a full shm filesystem is an
  // allocation failure (the cache evicts and retries), not a SIGBUS later.
  auto arena = arenas_->Allocate(std::max<uint64_t>(plan.size, 1));
  absl::Status backed = arena.ok() ? (*arena)->Commit() : arena.status();
  if (!backed.ok()) {
    absl::Status annotated = Annotate(backed, layer.what);
    return IsAllocationFailure(backed) ? MarkAllocationFailure(annotated) : annotated;
  }
  absl::Span<uint8_t> memory = (*arena)->bytes();
  DecodeOptions decode;
  decode.impl = impl_;
  decode.pool = pool_;
  auto decode_one = [&](size_t i) -> absl::Status {
    const TensorPlan& tp = plan.tensors[i];
    const BsReader& shard = model.shard(tp.shard);
    const BsTensor& t = shard.index().tensors[tp.tensor];
    // Deltas (issue 11): a DELTA_TENSOR is rebuilt as decoded XOR its base
    // tensor's bytes in the base's cached layer; others get an empty span.
    absl::Span<const uint8_t> base =
        layer.base != nullptr ? layer.base->TensorBytes(tp) : absl::Span<const uint8_t>();
    return shard.DecodeTensor(tp.tensor, layer.group_bytes(tp.shard, t.group),
                              memory.subspan(tp.offset, tp.size), decode, base);
  };
  absl::Status st;
  if (pool_ != nullptr) {
    st = pool_->ParallelFor(plan.tensors.size(), decode_one);
  } else {
    for (size_t i = 0; i < plan.tensors.size() && st.ok(); ++i) st = decode_one(i);
  }
  if (!st.ok()) return Annotate(st, layer.what);
  auto data = std::make_shared<LayerData>();
  data->bytes = (*arena)->cost();
  data->arena = std::move(*arena);
  return data;
}

}  // namespace bigsmall::daemon
