#include "daemon/tensor_copy.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "codec/status_util.h"

namespace bigsmall::daemon {

absl::StatusOr<std::vector<TensorCopyItem>> PlanTensorCopy(const Model& model,
                                                           const v1::GetTensorsRequest& request) {
  std::vector<TensorCopyItem> items;
  if (request.names().empty()) {
    const LayerPlan* non_layer = model.layer(-1);
    for (uint32_t k = 0; k < non_layer->tensors.size(); ++k) {
      items.push_back({-1, &non_layer->tensors[k], &model.tensor_info(TensorRef{-1, k})});
    }
    return items;
  }
  if (request.names_size() > kMaxTensorNames) {
    return absl::InvalidArgumentError(absl::StrCat("GetTensors: ", request.names_size(),
                                                   " names; at most ", kMaxTensorNames));
  }
  items.reserve(static_cast<size_t>(request.names_size()));
  for (const std::string& name : request.names()) {
    const TensorRef* ref = model.FindTensor(absl::string_view(name));
    if (ref == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("model ", model.id(), " has no tensor '", EscapeForLog(name), "'"));
    }
    items.push_back(
        {ref->layer, &model.layer(ref->layer)->tensors[ref->index], &model.tensor_info(*ref)});
  }
  return items;
}

uint64_t TensorChunkBytes(uint64_t requested) {
  uint64_t chunk = requested == 0 ? (1u << 20) : requested;
  return std::min<uint64_t>(std::max<uint64_t>(chunk, 4096), 4u << 20);
}

TensorCopier::Step TensorCopier::Next(v1::TensorChunk* chunk, int32_t* layer) {
  if (item_ >= items_.size()) return Step::kDone;
  const TensorCopyItem& item = items_[item_];
  if (!have_layer_ || layer_ != item.layer) {
    *layer = item.layer;
    return Step::kNeedLayer;
  }
  const uint64_t size = item.plan->size;
  const uint64_t len = std::min<uint64_t>(chunk_, size - pos_);
  chunk->Clear();
  if (pos_ == 0) *chunk->mutable_info() = *item.info;
  chunk->set_name(item.info->name());
  chunk->set_offset(pos_);
  if (len > 0 && item.plan->offset <= size_ && len <= size_ - item.plan->offset &&
      pos_ <= size_ - item.plan->offset - len) {
    chunk->set_data(reinterpret_cast<const char*>(base_ + item.plan->offset + pos_), len);
  }
  pos_ += len;
  if (pos_ >= size) {  // a zero-size tensor is one chunk with its info
    ++item_;
    pos_ = 0;
  }
  return Step::kChunk;
}

void TensorCopier::SetLayer(int32_t layer, const uint8_t* base, uint64_t size) {
  have_layer_ = true;
  layer_ = layer;
  base_ = base;
  size_ = size;
}

}  // namespace bigsmall::daemon
