// Decode backends of the load pipeline (daemon/pipeline.h): where a layer's
// compressed groups, already read into staging memory and checked, are
// decoded and verified, and what memory the decoded layer lives in.
//
//  * HostBackend (here): the CPU thread pool decodes every tensor into a
//    block of a host arena (shared-memory files), verifying each tensor's
//    XXH3-128 as it goes.
//  * DeviceBackend (daemon/device_backend.h): one H2D copy of the staged
//    bytes and plan, the decode kernels on a GPU into a block of a device
//    arena, verification on the device; the same code runs on real CUDA and
//    on the emulated device (kernels/device_api.h).
//
// A backend never publishes anything: it returns the decoded layer (or an
// error, its block already freed) to the pipeline, which hands it to the
// cache.
#ifndef BIGSMALL_DAEMON_BACKEND_H_
#define BIGSMALL_DAEMON_BACKEND_H_

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "codec/tensor_codec.h"
#include "daemon/arena_allocator.h"
#include "daemon/layer_cache.h"

namespace bigsmall {
class ThreadPool;
}

namespace bigsmall::daemon {

class Model;
struct LayerPlan;
struct BaseLayers;

// Staging memory a layer's compressed bytes are read into (host: aligned
// heap memory; device: page-locked memory the copy engine reads).
class StagingBuffer {
 public:
  virtual ~StagingBuffer() = default;
  virtual uint8_t* data() = 0;
  virtual uint64_t capacity() const = 0;
};

// Groups start on this boundary in a staging buffer.
inline constexpr uint64_t kStagingAlignment = 4096;

// One group of a layer in staging.
struct StagedGroup {
  uint32_t shard = 0;
  uint32_t group = 0;
  uint64_t offset = 0;  // in the staging buffer
  uint64_t size = 0;
};

// A layer after the read and check stages: its groups' bytes, one after
// the other (kStagingAlignment apart), at the start of `staging`.
struct StagedLayer {
  const Model* model = nullptr;
  const LayerPlan* plan = nullptr;
  std::string what;  // "model '<path>' layer N (name)", for messages
  std::unique_ptr<StagingBuffer> staging;
  std::vector<StagedGroup> groups;
  uint64_t bytes = 0;  // end of the last group in staging
  // Delta models (daemon/model.h BaseLayers): the base's decoded layers the
  // delta tensors are XORed with; null for a full model. Owned by the caller
  // of Pipeline::Load for the whole load.
  const BaseLayers* base = nullptr;
  // The bytes of (shard, group), or an empty span when the layer has no such group.
  absl::Span<const uint8_t> group_bytes(uint32_t shard, uint32_t group) const;
};

class Backend {
 public:
  virtual ~Backend() = default;
  // "host", or the GPU's UUID (LayerKey::device).
  virtual const std::string& device() const = 0;
  // Staging for `bytes` bytes of compressed groups.
  virtual absl::StatusOr<std::unique_ptr<StagingBuffer>> AllocateStaging(uint64_t bytes) = 0;
  // The decode and verify stages: a new block holding the layer, every
  // tensor checked against its stored hash or device checksum. A mismatch
  // or a corrupt stream is DATA_LOSS naming the tensor; on any error the
  // block is freed and nothing is returned.
  virtual absl::StatusOr<std::shared_ptr<LayerData>> Decode(const StagedLayer& layer) = 0;
};

// The CPU path. A layer's block of `arenas` is allocated and committed
// while the layer before it still decodes (a full shm filesystem is an
// allocation failure the cache evicts for); fresh pages are then mapped in
// its own decode turn, on the pool (MADV_POPULATE_WRITE: the decode threads
// take no page faults).
// Recycled blocks (ArenaPool warm pages) need neither; every byte of one
// that no tensor covers is zeroed, so no byte of the layer that had the
// block before reaches a client. Then the layer's tensors decode as one
// batch (DecodeTensors: every chunk of every tensor on one work queue of
// `pool`, nullptr: the calling thread; XXH3-128 of each checked), one layer
// at a time in the order they reach the decode stage: a layer gets every
// core, so the first layer of a stream is out after its own decode time,
// not after sharing the cores with the layers prefetched behind it (their
// reads and page backing overlap its decode). Idle staging buffers are kept
// for reuse, at most `max_idle_staging` bytes (fresh heap pages cost about
// as much as decoding into them): by default room for two staged 7B-shaped
// layers (~270 MB stored each, with --staging-bytes 1G so they overlap).
inline constexpr uint64_t kDefaultMaxIdleStaging = 1ull << 30;

class HostBackend final : public Backend {
 public:
  HostBackend(ArenaPool* arenas, ThreadPool* pool, DecoderImpl impl,
              uint64_t max_idle_staging = kDefaultMaxIdleStaging);
  ~HostBackend() override;
  const std::string& device() const override { return device_; }
  absl::StatusOr<std::unique_ptr<StagingBuffer>> AllocateStaging(uint64_t bytes) override;
  absl::StatusOr<std::shared_ptr<LayerData>> Decode(const StagedLayer& layer) override;

  struct Stats {
    uint64_t staging_reused = 0;     // AllocateStaging served from idle buffers
    uint64_t staging_allocated = 0;  // ... from new memory
    uint64_t idle_staging_bytes = 0;
    uint64_t recycled_blocks = 0;    // layers decoded into recycled arena pages
    uint64_t zeroed_bytes = 0;       // bytes of recycled blocks no tensor covers, zeroed
    uint32_t max_concurrent_decodes = 0;  // 1: layers decode one at a time
  };
  Stats stats() const;

 private:
  class Staging;
  struct StagingPool;
  // Decodes one layer at a time, in arrival order.
  class DecodeTurn;

  const std::string device_ = "host";
  ArenaPool* const arenas_;
  ThreadPool* const pool_;
  const DecoderImpl impl_;
  std::shared_ptr<StagingPool> staging_;
  mutable std::mutex mu_;
  std::condition_variable turn_cv_;
  uint64_t next_ticket_ = 0;  // taken on arrival at the decode stage
  uint64_t serving_ = 0;      // the ticket that may decode now
  uint32_t decoding_ = 0;
  Stats stats_;
};

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_BACKEND_H_
