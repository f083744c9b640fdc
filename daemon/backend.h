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

#include <cstdint>
#include <memory>
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

// Today's CPU path: a block of `arenas` (committed first: a full shm
// filesystem is an allocation failure the cache evicts for), every tensor
// decoded on `pool` (nullptr: the calling thread) with BsReader::DecodeTensor
// (which checks XXH3-128).
class HostBackend final : public Backend {
 public:
  HostBackend(ArenaPool* arenas, ThreadPool* pool, DecoderImpl impl)
      : arenas_(arenas), pool_(pool), impl_(impl) {}
  const std::string& device() const override { return device_; }
  absl::StatusOr<std::unique_ptr<StagingBuffer>> AllocateStaging(uint64_t bytes) override;
  absl::StatusOr<std::shared_ptr<LayerData>> Decode(const StagedLayer& layer) override;

 private:
  const std::string device_ = "host";
  ArenaPool* const arenas_;
  ThreadPool* const pool_;
  const DecoderImpl impl_;
};

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_BACKEND_H_
