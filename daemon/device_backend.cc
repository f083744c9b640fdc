#include "daemon/device_backend.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "codec/hash.h"
#include "codec/status_macros.h"
#include "codec/status_util.h"
#include "daemon/config.h"
#include "daemon/device_arena.h"
#include "daemon/model.h"
#include "spdlog/spdlog.h"

namespace bigsmall::daemon {
namespace {

constexpr uint64_t kWorkAlignment = 256;
// Staging buffers are allocated in whole MiB, with room for the plan image.
constexpr uint64_t kStagingGranule = 1ull << 20;
// Idle device work buffers kept for reuse.
constexpr size_t kMaxIdleWork = 4;

uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// An event, destroyed with its owner.
class Event {
 public:
  explicit Event(gpu::DeviceApi* api) : api_(api) {}
  ~Event() {
    if (event_.p != nullptr) (void)api_->DestroyEvent(event_);
  }
  absl::Status Create(int device) {
    ASSIGN_OR_RETURN(event_, api_->CreateEvent(device));
    return absl::OkStatus();
  }
  gpu::EventRef get() const { return event_; }

 private:
  gpu::DeviceApi* const api_;
  gpu::EventRef event_;
};

}  // namespace

class DeviceBackend::PinnedStaging final : public StagingBuffer {
 public:
  PinnedStaging(DeviceBackend* owner, uint8_t* ptr, uint64_t capacity)
      : owner_(owner), ptr_(ptr), capacity_(capacity) {}
  ~PinnedStaging() override { owner_->ReturnPinned(ptr_, capacity_); }
  uint8_t* data() override { return ptr_; }
  uint64_t capacity() const override { return capacity_; }

 private:
  DeviceBackend* const owner_;
  uint8_t* const ptr_;
  const uint64_t capacity_;
};

absl::StatusOr<std::unique_ptr<DeviceBackend>> DeviceBackend::Create(
    gpu::DeviceApi* api, int device, ArenaPool* arenas, const DeviceBackendOptions& options) {
  ASSIGN_OR_RETURN(gpu::DeviceInfo info, api->Describe(device));
  std::unique_ptr<DeviceBackend> backend(
      new DeviceBackend(api, device, arenas, options, std::move(info)));
  ASSIGN_OR_RETURN(backend->copy_, api->CreateStream(device));
  ASSIGN_OR_RETURN(backend->compute_, api->CreateStream(device));
  return backend;
}

DeviceBackend::DeviceBackend(gpu::DeviceApi* api, int device, ArenaPool* arenas,
                             const DeviceBackendOptions& options, gpu::DeviceInfo info)
    : api_(api), device_(device), arenas_(arenas), options_(options), info_(std::move(info)) {}

DeviceBackend::~DeviceBackend() {
  // Every Decode has returned (the pipeline's loads are done): the streams
  // are idle.
  for (gpu::StreamRef s : {copy_, compute_}) {
    if (s.p == nullptr) continue;
    (void)api_->StreamSynchronize(s);
    (void)api_->DestroyStream(s);
  }
  for (auto& [ptr, size] : idle_pinned_) (void)api_->FreeHost(ptr);
  for (auto& [ptr, size] : idle_work_) (void)api_->Free(device_, ptr);
}

bool DeviceBackend::emulated() const { return std::string(api_->name()) == "emulated"; }

DeviceBackend::Stats DeviceBackend::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

absl::StatusOr<std::unique_ptr<StagingBuffer>> DeviceBackend::AllocateStaging(uint64_t bytes) {
  // Room for the prepass region and the plan image of a typical layer; a
  // plan that needs more gets a larger buffer in Decode.
  return Pinned(AlignUp(bytes + bytes / 8 + kStagingGranule, kStagingGranule));
}

absl::StatusOr<std::unique_ptr<StagingBuffer>> DeviceBackend::Pinned(uint64_t bytes) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    // The smallest idle buffer that is large enough.
    auto best = idle_pinned_.end();
    for (auto it = idle_pinned_.begin(); it != idle_pinned_.end(); ++it) {
      if (it->second >= bytes && (best == idle_pinned_.end() || it->second < best->second)) {
        best = it;
      }
    }
    if (best != idle_pinned_.end()) {
      auto [ptr, capacity] = *best;
      idle_pinned_.erase(best);
      idle_pinned_bytes_ -= capacity;
      return std::unique_ptr<StagingBuffer>(new PinnedStaging(this, ptr, capacity));
    }
    ++stats_.staging_allocations;
  }
  absl::StatusOr<uint8_t*> ptr = api_->MallocHost(bytes);
  if (!ptr.ok()) {
    absl::Status st(ptr.status().code(), absl::StrCat("page-locked staging of ", bytes,
                                                      " bytes: ", ptr.status().message()));
    return absl::IsResourceExhausted(st) ? MarkAllocationFailure(st) : st;
  }
  return std::unique_ptr<StagingBuffer>(new PinnedStaging(this, *ptr, bytes));
}

void DeviceBackend::ReturnPinned(uint8_t* ptr, uint64_t capacity) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (idle_pinned_bytes_ + capacity <= options_.max_idle_staging) {
      idle_pinned_.emplace_back(ptr, capacity);
      idle_pinned_bytes_ += capacity;
      return;
    }
  }
  absl::Status st = api_->FreeHost(ptr);
  if (!st.ok()) spdlog::warn("free page-locked staging: {}", st.ToString());
}

absl::StatusOr<std::pair<uint8_t*, uint64_t>> DeviceBackend::TakeWork(uint64_t bytes) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = idle_work_.begin(); it != idle_work_.end(); ++it) {
      if (it->second >= bytes) {
        auto work = *it;
        idle_work_.erase(it);
        return work;
      }
    }
  }
  const uint64_t size = AlignUp(bytes, kStagingGranule);
  absl::StatusOr<uint8_t*> ptr = api_->Malloc(device_, size);
  if (!ptr.ok()) {
    absl::Status st(ptr.status().code(), absl::StrCat("device work memory of ", size,
                                                      " bytes: ", ptr.status().message()));
    return absl::IsResourceExhausted(st) ? MarkAllocationFailure(st) : st;
  }
  return std::make_pair(*ptr, size);
}

void DeviceBackend::ReturnWork(std::pair<uint8_t*, uint64_t> work) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (idle_work_.size() < kMaxIdleWork) {
      idle_work_.push_back(work);
      return;
    }
  }
  absl::Status st = api_->Free(device_, work.first);
  if (!st.ok()) spdlog::warn("free device work memory: {}", st.ToString());
}

absl::StatusOr<std::shared_ptr<LayerData>> DeviceBackend::Decode(const StagedLayer& layer) {
  auto block = arenas_->Allocate(std::max<uint64_t>(layer.plan->size, 1));
  if (!block.ok()) {
    absl::Status annotated = Annotate(block.status(), layer.what);
    return IsAllocationFailure(block.status()) ? MarkAllocationFailure(annotated) : annotated;
  }
  bool host_verify = false;
  absl::Status st = DecodeInto(layer, **block, &host_verify);
  if (!st.ok()) {
    // The block goes back to its arena here: nothing was published.
    std::lock_guard<std::mutex> lock(mu_);
    if (absl::IsDataLoss(st)) ++stats_.verify_failures;
    return Annotate(st, layer.what);
  }
  auto data = std::make_shared<LayerData>();
  data->bytes = (*block)->cost();
  data->arena = std::move(*block);
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.layers;
  return data;
}

absl::Status DeviceBackend::DecodeInto(const StagedLayer& layer, Block& block, bool* host_verify) {
  const LayerPlan& plan = *layer.plan;
  const Model& model = *layer.model;
  // The jobs: every tensor's blob in the staged groups, its place in the layer.
  std::vector<gpu::TensorJob> jobs;
  std::vector<bool> needs_host_verify;
  // Fine-tune deltas: (tensor, its base tensor's device bytes) of every
  // DELTA_TENSOR, XORed on the device after the decode (LaunchXorChecksum).
  std::vector<std::pair<size_t, absl::Span<const uint8_t>>> deltas;
  jobs.reserve(plan.tensors.size());
  for (const TensorPlan& tp : plan.tensors) {
    const BsReader& shard = model.shard(tp.shard);
    const BsTensor& t = shard.index().tensors[tp.tensor];
    const BsGroup& group = shard.index().groups[t.group];
    const StagedGroup* staged = nullptr;
    for (const StagedGroup& g : layer.groups) {
      if (g.shard == tp.shard && g.group == t.group) staged = &g;
    }
    if (staged == nullptr || t.blob_offset < group.offset ||
        t.blob_offset - group.offset + t.blob_size > group.size) {
      return absl::DataLossError(
          absl::StrCat("tensor ", EscapeForLog(t.info.name), " lies outside its group"));
    }
    gpu::TensorJob job;
    job.blob_offset = staged->offset + (t.blob_offset - group.offset);
    job.blob_size = t.blob_size;
    job.out_offset = tp.offset;
    job.out_size = tp.size;
    // A delta tensor's device checksum is of the rebuilt tensor (§3.1): it
    // is checked after the XOR, not by the decode kernels.
    job.has_checksum = t.has_device_checksum && tp.base_slot < 0;
    job.checksum = t.device_checksum;
    if (tp.base_slot >= 0) {
      absl::Span<const uint8_t> base =
          layer.base != nullptr ? layer.base->TensorBytes(tp) : absl::Span<const uint8_t>();
      if (base.size() != tp.size) {
        return absl::FailedPreconditionError(absl::StrCat(
            "tensor '", EscapeForLog(t.info.name), "' is stored as a delta and its base layer is not on ",
            info_.uuid));
      }
      deltas.emplace_back(jobs.size(), base);
    }
    jobs.push_back(job);
    needs_host_verify.push_back(!t.has_device_checksum && tp.size > 0);
  }
  *host_verify = std::find(needs_host_verify.begin(), needs_host_verify.end(), true) !=
                 needs_host_verify.end();
  if (*host_verify) {
    std::lock_guard<std::mutex> lock(mu_);
    if (slow_logged_.insert(model.cache_key()).second) {
      spdlog::warn(
          "model {} ({}) has tensors without device checksums (format 1.0): cuda layers are "
          "verified by copying each tensor back to the host and hashing it (slow); recompress "
          "with this version for on-device verification",
          model.id(), EscapeForLog(model.path()));
    }
  }
  absl::Span<const uint8_t> input(layer.staging->data(), layer.bytes);
  ASSIGN_OR_RETURN(gpu::DecodePlan decode_plan, gpu::PlanDecode(input, jobs));
  ASSIGN_OR_RETURN(gpu::PlanImage image, gpu::BuildPlanImage(decode_plan, jobs));
  // One staging buffer: [groups][prepass region][plan image][results (D2H)].
  const uint64_t prepass_offset = decode_plan.prepass_offset;
  const uint64_t image_offset = AlignUp(decode_plan.input_bytes(), kWorkAlignment);
  const uint64_t upload_bytes = image_offset + image.bytes.size();
  const uint64_t results_offset = AlignUp(upload_bytes, kWorkAlignment);
  // Then the delta tensors' rebuilt checksums (one u64 each, D2H).
  const uint64_t xor_bytes = 8 * deltas.size();
  const uint64_t xor_offset = AlignUp(results_offset + image.results_bytes, kWorkAlignment);
  const uint64_t host_bytes = xor_offset + xor_bytes;
  std::unique_ptr<StagingBuffer> grown;
  uint8_t* host = layer.staging->data();
  if (host_bytes > layer.staging->capacity()) {
    ASSIGN_OR_RETURN(grown, Pinned(AlignUp(host_bytes, kStagingGranule)));
    std::memcpy(grown->data(), host, layer.bytes);
    host = grown->data();
  }
  if (prepass_offset != layer.bytes && decode_plan.prepass_bytes > 0) {
    return absl::InternalError("the plan's prepass region is not right after the staged groups");
  }
  RETURN_IF_ERROR(gpu::RunHostPrepass(
      decode_plan, {host, layer.bytes},
      {host + prepass_offset, static_cast<size_t>(decode_plan.prepass_bytes)}));
  std::memcpy(host + image_offset, image.bytes.data(), image.bytes.size());

  // Device side: [upload copy][scratch][results].
  const uint64_t scratch_offset = AlignUp(upload_bytes, kWorkAlignment);
  const uint64_t dev_results_offset = AlignUp(scratch_offset + image.scratch_bytes, kWorkAlignment);
  const uint64_t dev_xor_offset = AlignUp(dev_results_offset + image.results_bytes, kWorkAlignment);
  ASSIGN_OR_RETURN(auto work, TakeWork(dev_xor_offset + xor_bytes));
  uint8_t* dev = work.first;
  Event uploaded(api_), done(api_);
  absl::Status st = uploaded.Create(device_);
  if (st.ok()) st = done.Create(device_);
  bool enqueued = false;
  if (st.ok()) {
    enqueued = true;
    st = api_->MemcpyAsync(dev, host, upload_bytes, gpu::CopyKind::kHostToDevice, copy_);
  }
  if (st.ok()) st = api_->EventRecord(uploaded.get(), copy_);
  if (st.ok()) st = api_->StreamWaitEvent(compute_, uploaded.get());
  if (st.ok()) {
    gpu::DecodeLaunch launch;
    launch.input = dev;
    launch.plan = dev + image_offset;
    launch.image = &image;
    launch.scratch = dev + scratch_offset;
    launch.output = block.bytes().data();
    launch.results = dev + dev_results_offset;
    st = api_->LaunchDecode(launch, compute_);
  }
  // Deltas: after the decode on the same stream, each delta tensor becomes
  // decoded XOR base in place, its rebuilt device checksum summed as it goes.
  for (size_t d = 0; d < deltas.size() && st.ok(); ++d) {
    const TensorPlan& tp = plan.tensors[deltas[d].first];
    st = api_->LaunchXorChecksum(block.bytes().data() + tp.offset, deltas[d].second.data(), tp.size,
                                 reinterpret_cast<uint64_t*>(dev + dev_xor_offset + 8 * d), compute_);
  }
  if (st.ok() && xor_bytes > 0) {
    st = api_->MemcpyAsync(host + xor_offset, dev + dev_xor_offset, xor_bytes,
                           gpu::CopyKind::kDeviceToHost, compute_);
  }
  if (st.ok()) {
    st = api_->MemcpyAsync(host + results_offset, dev + dev_results_offset, image.results_bytes,
                           gpu::CopyKind::kDeviceToHost, compute_);
  }
  if (st.ok()) st = api_->EventRecord(done.get(), compute_);
  if (st.ok()) st = api_->EventSynchronize(done.get());
  if (!st.ok() && enqueued) {
    // Work already enqueued may still use the buffers: let it finish first.
    (void)api_->StreamSynchronize(copy_);
    (void)api_->StreamSynchronize(compute_);
  }
  ReturnWork(work);
  if (!st.ok()) return st;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.uploaded_bytes += upload_bytes;
  }
  // The verdict of the kernels: a corrupt chunk or a device checksum that
  // differs is DATA_LOSS naming the tensor.
  absl::Status verdict = gpu::CheckDecodeResults(host + results_offset, image);
  if (!verdict.ok()) {
    gpu::DecodeResults results;
    std::memcpy(&results, host + results_offset, sizeof(results));
    uint32_t job = results.corrupt_chunks > 0 ? results.first_corrupt_job : results.first_mismatch_job;
    if (job < plan.tensors.size()) {
      const TensorPlan& tp = plan.tensors[job];
      const BsTensor& t = model.shard(tp.shard).index().tensors[tp.tensor];
      return absl::DataLossError(absl::StrCat(
          "tensor ", EscapeForLog(t.info.name), " failed verification on ", info_.uuid, ": ",
          verdict.message()));
    }
    return verdict.code() == absl::StatusCode::kDataLoss
               ? verdict
               : absl::DataLossError(verdict.message());
  }
  for (size_t d = 0; d < deltas.size(); ++d) {
    const TensorPlan& tp = plan.tensors[deltas[d].first];
    const BsTensor& t = model.shard(tp.shard).index().tensors[tp.tensor];
    if (!t.has_device_checksum) continue;  // 1.0: VerifyOnHost hashes it
    uint64_t rebuilt = 0;
    std::memcpy(&rebuilt, host + xor_offset + 8 * d, sizeof(rebuilt));
    if (rebuilt != t.device_checksum) {
      return absl::DataLossError(absl::StrCat(
          "tensor ", EscapeForLog(t.info.name), " failed verification on ", info_.uuid,
          ": the device checksum of the rebuilt tensor (delta XOR base) differs from the stored one"));
    }
  }
  if (*host_verify) RETURN_IF_ERROR(VerifyOnHost(layer, block, needs_host_verify));
  return absl::OkStatus();
}

absl::Status DeviceBackend::VerifyOnHost(const StagedLayer& layer, const Block& block,
                                         const std::vector<bool>& needs) {
  const LayerPlan& plan = *layer.plan;
  uint64_t largest = 0;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    if (needs[i]) largest = std::max(largest, plan.tensors[i].size);
  }
  ASSIGN_OR_RETURN(std::unique_ptr<StagingBuffer> buffer, Pinned(largest));
  Event copied(api_);
  RETURN_IF_ERROR(copied.Create(device_));
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    if (!needs[i]) continue;
    const TensorPlan& tp = plan.tensors[i];
    RETURN_IF_ERROR(api_->MemcpyAsync(buffer->data(), block.bytes().data() + tp.offset, tp.size,
                                      gpu::CopyKind::kDeviceToHost, compute_));
    RETURN_IF_ERROR(api_->EventRecord(copied.get(), compute_));
    RETURN_IF_ERROR(api_->EventSynchronize(copied.get()));
    const BsTensor& t = layer.model->shard(tp.shard).index().tensors[tp.tensor];
    if (HashBytes128({buffer->data(), tp.size}) != t.hash) {
      return absl::DataLossError(absl::StrCat("tensor ", EscapeForLog(t.info.name),
                                              " failed its hash check (XXH3-128) after decoding on ",
                                              info_.uuid));
    }
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.host_verified_tensors;
  }
  return absl::OkStatus();
}

absl::StatusOr<GpuApiChoice> MakeGpuApi(const std::string& gpu_backend,
                                        const std::string& emulated_memory_dir) {
  ASSIGN_OR_RETURN(GpuBackendKind kind, ParseGpuBackend(gpu_backend));
  GpuApiChoice choice;
  switch (kind) {
    case GpuBackendKind::kNone:
      choice.unavailable = "the daemon runs with --gpu-backend none";
      return choice;
    case GpuBackendKind::kEmulated: {
      gpu::EmulatedDeviceOptions options;
      options.memory_dir = emulated_memory_dir;
      options.file_mode = 0640;
      choice.api = gpu::MakeEmulatedDeviceApi(options);
      absl::StatusOr<int> count = choice.api->DeviceCount();
      if (!count.ok()) {
        return absl::Status(count.status().code(), absl::StrCat("--gpu-backend emulated: ",
                                                                count.status().message()));
      }
      return choice;
    }
    case GpuBackendKind::kCuda:
    case GpuBackendKind::kAuto: {
      absl::StatusOr<std::unique_ptr<gpu::DeviceApi>> cuda = gpu::MakeCudaDeviceApi();
      absl::Status why = cuda.status();
      if (cuda.ok()) {
        absl::StatusOr<int> count = (*cuda)->DeviceCount();
        why = count.status();
        if (count.ok()) {
          choice.api = std::move(*cuda);
          return choice;
        }
      }
      if (kind == GpuBackendKind::kCuda) {
        return absl::Status(why.code(), absl::StrCat("--gpu-backend cuda: ", why.message()));
      }
      choice.unavailable = std::string(why.message());
      return choice;
    }
  }
  return absl::InternalError("unreachable");
}

}  // namespace bigsmall::daemon
