#include "daemon/backend.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "codec/thread_pool.h"
#include "daemon/io_uring_source.h"
#include "daemon/model.h"

namespace bigsmall::daemon {

// Idle staging buffers, shared with the buffers handed out (which come back
// here when destroyed, even after the backend is gone).
struct HostBackend::StagingPool {
  explicit StagingPool(uint64_t max_idle) : max_idle(max_idle) {}
  const uint64_t max_idle;
  std::mutex mu;
  std::multimap<uint64_t, AlignedBuffer> idle;  // by size
  uint64_t idle_bytes = 0;
  uint64_t reused = 0;
  uint64_t allocated = 0;

  void GiveBack(AlignedBuffer buffer) {
    std::lock_guard<std::mutex> lock(mu);
    if (buffer.size() == 0 || idle_bytes + buffer.size() > max_idle) return;  // freed
    idle_bytes += buffer.size();
    const uint64_t size = buffer.size();
    idle.emplace(size, std::move(buffer));
  }
};

class HostBackend::Staging final : public StagingBuffer {
 public:
  Staging(AlignedBuffer buffer, std::shared_ptr<StagingPool> pool)
      : buffer_(std::move(buffer)), pool_(std::move(pool)) {}
  ~Staging() override { pool_->GiveBack(std::move(buffer_)); }
  uint8_t* data() override { return buffer_.data(); }
  uint64_t capacity() const override { return buffer_.size(); }

 private:
  AlignedBuffer buffer_;
  std::shared_ptr<StagingPool> pool_;
};

// One layer decodes at a time (tickets in arrival order).
class HostBackend::DecodeTurn {
 public:
  explicit DecodeTurn(HostBackend* backend) : backend_(backend) {
    std::unique_lock<std::mutex> lock(backend_->mu_);
    const uint64_t ticket = backend_->next_ticket_++;
    backend_->turn_cv_.wait(lock, [&] { return backend_->serving_ == ticket; });
    ++backend_->decoding_;
    backend_->stats_.max_concurrent_decodes =
        std::max(backend_->stats_.max_concurrent_decodes, backend_->decoding_);
  }
  ~DecodeTurn() {
    {
      std::lock_guard<std::mutex> lock(backend_->mu_);
      --backend_->decoding_;
      ++backend_->serving_;
    }
    backend_->turn_cv_.notify_all();
  }
  DecodeTurn(const DecodeTurn&) = delete;
  DecodeTurn& operator=(const DecodeTurn&) = delete;

 private:
  HostBackend* const backend_;
};

HostBackend::HostBackend(ArenaPool* arenas, ThreadPool* pool, DecoderImpl impl,
                         uint64_t max_idle_staging)
    : arenas_(arenas),
      pool_(pool),
      impl_(impl),
      staging_(std::make_shared<StagingPool>(max_idle_staging)) {}

HostBackend::~HostBackend() = default;

HostBackend::Stats HostBackend::stats() const {
  Stats s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    s = stats_;
  }
  std::lock_guard<std::mutex> lock(staging_->mu);
  s.staging_reused = staging_->reused;
  s.staging_allocated = staging_->allocated;
  s.idle_staging_bytes = staging_->idle_bytes;
  return s;
}

absl::StatusOr<std::unique_ptr<StagingBuffer>> HostBackend::AllocateStaging(uint64_t bytes) {
  {
    // The smallest idle buffer that holds `bytes`: its pages are backed
    // already. Its old contents are overwritten by the read stage (only the
    // bytes read are ever parsed).
    std::lock_guard<std::mutex> lock(staging_->mu);
    auto it = staging_->idle.lower_bound(bytes);
    if (it != staging_->idle.end()) {
      AlignedBuffer buffer = std::move(it->second);
      staging_->idle.erase(it);
      staging_->idle_bytes -= buffer.size();
      ++staging_->reused;
      return std::unique_ptr<StagingBuffer>(new Staging(std::move(buffer), staging_));
    }
    ++staging_->allocated;
  }
  // Room for a somewhat larger layer next time (layers of one model differ
  // a little in stored size), in whole 64 KiB.
  constexpr uint64_t kGranule = 64 << 10;
  const uint64_t want = bytes > (UINT64_MAX >> 2) ? bytes : (bytes + bytes / 8 + kGranule - 1) / kGranule * kGranule;
  AlignedBuffer buffer(want);
  if (!buffer.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat("no memory for ", bytes, " bytes of staging"));
  }
  return std::unique_ptr<StagingBuffer>(new Staging(std::move(buffer), staging_));
}

namespace {

// Zeroes every byte of `pages` that no tensor of `plan` covers (alignment
// gaps between tensors, the end of the last page). Returns the bytes zeroed.
uint64_t ZeroUncovered(const LayerPlan& plan, absl::Span<uint8_t> pages) {
  std::vector<std::pair<uint64_t, uint64_t>> covered;  // [begin, end)
  covered.reserve(plan.tensors.size());
  for (const TensorPlan& tp : plan.tensors) covered.emplace_back(tp.offset, tp.offset + tp.size);
  std::sort(covered.begin(), covered.end());
  uint64_t at = 0, zeroed = 0;
  auto zero_to = [&](uint64_t end) {
    end = std::min<uint64_t>(end, pages.size());
    if (end > at) {
      std::memset(pages.data() + at, 0, end - at);
      zeroed += end - at;
    }
  };
  for (const auto& [begin, end] : covered) {
    zero_to(begin);
    at = std::max(at, end);
  }
  zero_to(pages.size());
  return zeroed;
}

// Maps a freshly committed block's pages, in pieces on the pool (the first
// layer of a stream gets every core for it too).
void PopulateBlock(Block& block, ThreadPool* pool) {
  constexpr uint64_t kPiece = 32ull << 20;
  const uint64_t size = block.cost();
  const size_t pieces = static_cast<size_t>((size + kPiece - 1) / kPiece);
  auto one = [&](size_t i) -> absl::Status {
    const uint64_t begin = i * kPiece;
    block.arena().Populate(block.offset() + begin, std::min(kPiece, size - begin));
    return absl::OkStatus();
  };
  if (pool != nullptr && pieces > 1) {
    (void)pool->ParallelFor(pieces, one);
  } else {
    for (size_t i = 0; i < pieces; ++i) (void)one(i);
  }
}

}  // namespace

absl::StatusOr<std::shared_ptr<LayerData>> HostBackend::Decode(const StagedLayer& layer) {
  const LayerPlan& plan = *layer.plan;
  const Model& model = *layer.model;
  // The layer's block in an arena, backed now: a full shm filesystem is an
  // allocation failure (the cache evicts and retries), not a SIGBUS later.
  // This overlaps the decode of the layer ahead (the turn is taken below).
  auto arena = arenas_->Allocate(std::max<uint64_t>(plan.size, 1));
  const bool recycled = arena.ok() && (*arena)->recycled();
  absl::Status backed = arena.ok() ? (*arena)->Commit() : arena.status();
  if (!backed.ok()) {
    absl::Status annotated = Annotate(backed, layer.what);
    return IsAllocationFailure(backed) ? MarkAllocationFailure(annotated) : annotated;
  }
  Block& block = **arena;
  absl::Span<uint8_t> memory = block.bytes();
  // A recycled block holds another layer's bytes: every byte no tensor
  // overwrites is zeroed (each tensor is decoded whole, and its hash check
  // proves every byte of it was written).
  const uint64_t zeroed = recycled ? ZeroUncovered(plan, block.pages()) : 0;
  DecodeOptions decode;
  decode.impl = impl_;
  decode.pool = pool_;
  std::vector<TensorDecodeJob> jobs;
  jobs.reserve(plan.tensors.size());
  for (const TensorPlan& tp : plan.tensors) {
    const BsReader& shard = model.shard(tp.shard);
    const BsTensor& t = shard.index().tensors[tp.tensor];
    TensorDecodeJob job;
    job.reader = &shard;
    job.tensor = tp.tensor;
    job.group_bytes = layer.group_bytes(tp.shard, t.group);
    job.out = memory.subspan(tp.offset, tp.size);
    // Deltas (issue 11): a DELTA_TENSOR is rebuilt as decoded XOR its base
    // tensor's bytes in the base's cached layer; others get an empty span.
    if (layer.base != nullptr) job.base = layer.base->TensorBytes(tp);
    jobs.push_back(job);
  }
  absl::Status st;
  {
    // One layer at a time on every core (nothing to order without a pool:
    // each load then decodes on its own thread).
    std::optional<DecodeTurn> turn;
    if (pool_ != nullptr) turn.emplace(this);
    // Fresh pages are mapped in this layer's turn, on every core: mapping
    // them while an earlier layer decodes would put these tasks on the
    // pool's queue among its chunks and delay it.
    if (!recycled) PopulateBlock(block, pool_);
    st = DecodeTensors(jobs, decode);
  }
  if (!st.ok()) return Annotate(st, layer.what);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (recycled) ++stats_.recycled_blocks;
    stats_.zeroed_bytes += zeroed;
  }
  auto data = std::make_shared<LayerData>();
  data->bytes = block.cost();
  data->arena = std::move(*arena);
  return data;
}

}  // namespace bigsmall::daemon
