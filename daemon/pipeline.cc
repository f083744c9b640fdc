#include "daemon/pipeline.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "codec/status_macros.h"
#include "codec/status_util.h"
#include "daemon/metrics.h"
#include "daemon/model.h"
#include "spdlog/spdlog.h"

namespace bigsmall::daemon {
namespace {

uint64_t AlignStaging(uint64_t v) {
  return (v + kStagingAlignment - 1) / kStagingAlignment * kStagingAlignment;
}

}  // namespace

absl::Span<const uint8_t> StagedLayer::group_bytes(uint32_t shard, uint32_t group) const {
  for (const StagedGroup& g : groups) {
    if (g.shard == shard && g.group == group) return {staging->data() + g.offset, g.size};
  }
  return {};
}

Pipeline::Pipeline(const PipelineOptions& options, Metrics* metrics)
    : options_(options), metrics_(metrics) {}

Pipeline::Stats Pipeline::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

std::unique_ptr<Pipeline::Slot> Pipeline::Admit(uint64_t bytes) {
  std::unique_lock<std::mutex> lock(mu_);
  const uint32_t depth = std::max<uint32_t>(options_.depth, 1);
  // A layer larger than the whole staging budget goes alone. A load that
  // finds the pipeline empty and nobody waiting leads: the loads after it
  // wait until it is decoded, so the first layer of a stream has every core
  // for its read, check and decode; then the pipeline fills up to its depth
  // (the loads that waited for a leader never lead).
  // Loads are admitted in arrival order (tickets), so a prefetch that
  // arrived later never overtakes the layer a client waits for.
  const bool leader = stats_.in_flight == 0 && stats_.waiting == 0;
  const uint64_t ticket = next_ticket_++;
  ++stats_.waiting;
  cv_.wait(lock, [&] {
    return ticket == admit_ticket_ &&
           (stats_.in_flight == 0 ||
            (!leading_ && stats_.in_flight < depth &&
             stats_.staged_bytes + bytes <= options_.staging_bytes));
  });
  --stats_.waiting;
  ++admit_ticket_;
  if (leader) {
    leading_ = true;
    ++stats_.leaders;
  }
  ++stats_.in_flight;
  stats_.staged_bytes += bytes;
  stats_.max_in_flight = std::max(stats_.max_in_flight, stats_.in_flight);
  stats_.max_staged_bytes = std::max(stats_.max_staged_bytes, stats_.staged_bytes);
  lock.unlock();
  cv_.notify_all();  // the next ticket may fit too
  return std::make_unique<Slot>(this, bytes, leader);
}

void Pipeline::Leave(uint64_t bytes, bool leader) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    --stats_.in_flight;
    stats_.staged_bytes -= bytes;
    if (leader) leading_ = false;
  }
  cv_.notify_all();
}

absl::StatusOr<StagedLayer> Pipeline::Read(const Model& model, int32_t index, Backend& backend) {
  const LayerPlan* plan = model.layer(index);
  StagedLayer layer;
  layer.model = &model;
  layer.plan = plan;
  layer.what = absl::StrCat("model '", EscapeForLog(model.path()), "' layer ", index,
                            plan->name.empty() ? "" : " (", EscapeForLog(plan->name),
                            plan->name.empty() ? "" : ")");
  uint64_t end = 0;
  for (const auto& [s, g] : plan->groups) {
    const BsGroup& group = model.shard(s).index().groups[g];
    StagedGroup staged{s, g, AlignStaging(end), group.size};
    end = staged.offset + staged.size;
    layer.groups.push_back(staged);
  }
  layer.bytes = end;
  auto staging = backend.AllocateStaging(std::max<uint64_t>(end, 1));
  if (!staging.ok()) {
    absl::Status st = Annotate(staging.status(), layer.what);
    return IsAllocationFailure(staging.status()) ? MarkAllocationFailure(st) : st;
  }
  layer.staging = std::move(*staging);
  for (const StagedGroup& g : layer.groups) {
    BsReader& shard = model.shard(g.shard);
    const BsGroup& group = shard.index().groups[g.group];
    absl::Status st = shard.source().ReadBulk(group.offset, {layer.staging->data() + g.offset, g.size});
    if (!st.ok()) return Annotate(st, layer.what);
    if (metrics_ != nullptr) metrics_->AddBytesRead(g.size);
  }
  return layer;
}

absl::Status Pipeline::Check(const StagedLayer& layer) {
  // Each group's stored XXH3-64 (format 1.1, docs/FORMAT.md §3.2) before
  // anything parses it; 1.0 files have none (their tensors' hashes still
  // catch damage after decoding, and nothing damaged is ever served).
  for (const StagedGroup& g : layer.groups) {
    absl::Status st = layer.model->shard(g.shard).CheckGroup(
        g.group, {layer.staging->data() + g.offset, g.size});
    if (!st.ok()) return Annotate(st, layer.what);
  }
  return absl::OkStatus();
}

void Pipeline::InjectStagingFault(StagedLayer& layer) {
  if (!options_.fault_staging_layer.has_value() ||
      *options_.fault_staging_layer != layer.plan->index) {
    return;
  }
  const BsTensor* largest = nullptr;
  const StagedGroup* where = nullptr;
  for (const StagedGroup& g : layer.groups) {
    const BsReader& shard = layer.model->shard(g.shard);
    const BsGroup& group = shard.index().groups[g.group];
    for (uint32_t t : group.tensors) {
      const BsTensor& tensor = shard.index().tensors[t];
      if (largest == nullptr || tensor.blob_size > largest->blob_size) {
        largest = &tensor;
        where = &g;
      }
    }
  }
  if (largest == nullptr || largest->blob_size == 0) return;
  const BsGroup& group = layer.model->shard(where->shard).index().groups[where->group];
  const uint64_t at = where->offset + (largest->blob_offset - group.offset) + largest->blob_size / 2;
  layer.staging->data()[at] ^= 0x5a;
  spdlog::warn("test fault: flipped staging byte {} of {} (tensor {})", at, layer.what,
               EscapeForLog(largest->info.name));
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.faults_injected;
}

absl::StatusOr<std::shared_ptr<LayerData>> Pipeline::DecodeAndVerify(const StagedLayer& layer,
                                                                      Backend& backend) {
  auto start = std::chrono::steady_clock::now();
  auto data = backend.Decode(layer);
  if (!data.ok()) return data;
  (*data)->decode_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (metrics_ != nullptr) metrics_->AddDecode(layer.plan->size, (*data)->decode_seconds);
  return data;
}

absl::StatusOr<std::shared_ptr<LayerData>> Pipeline::Load(const Model& model, int32_t index,
                                                          Backend& backend,
                                                          const BaseLayers* base) {
  const LayerPlan* plan = model.layer(index);
  if (plan == nullptr) {
    return absl::OutOfRangeError(absl::StrCat("model ", model.id(), " has no layer ", index));
  }
  auto result = [&]() -> absl::StatusOr<std::shared_ptr<LayerData>> {
    std::unique_ptr<Slot> slot = Admit(plan->stored_size);  // admit
    ASSIGN_OR_RETURN(StagedLayer layer, Read(model, index, backend));  // read
    layer.base = base;  // deltas: the base layers to XOR with (H2, issue 11)
    RETURN_IF_ERROR(Check(layer));                                     // check
    InjectStagingFault(layer);                                         // (tests)
    return DecodeAndVerify(layer, backend);                            // decode + verify
  }();
  // Publish: the caller (LayerCache) makes the layer visible; a failed load
  // gave its block back already and publishes nothing.
  std::lock_guard<std::mutex> lock(mu_);
  ++(result.ok() ? stats_.layers : stats_.errors);
  return result;
}

}  // namespace bigsmall::daemon
