// The load pipeline: how a layer goes from its .bs file(s) to the cache.
//
//   admit  -> wait for a slot: at most `depth` layers in flight and at most
//             `staging_bytes` bytes of compressed groups staged at once (a
//             layer larger than that is admitted alone);
//   read   -> every group of the layer into one staging buffer of the
//             backend (host memory, or page-locked memory for a GPU), one
//             ReadBulk each through the model's source: io_uring reads
//             straight into staging, several in parallel per group, where
//             the kernel allows it, pread(2) otherwise
//             (daemon/io_uring_source.h);
//   check  -> the groups' stored checksums, before anything decodes them;
//   decode -> on the backend (daemon/backend.h: host thread pool, or the
//   verify    GPU / emulated GPU), which also verifies every tensor;
//   publish-> the layer goes back to the LayerCache that asked for it (the
//             cache makes it visible; an error publishes nothing).
//
// Successive layers overlap: the cache runs one Load per layer on its load
// threads, so with depth 3, layer N+2 is being read while N+1 is uploaded
// and N decodes. Except for the first: a load admitted into an empty
// pipeline (the first layer of a stream, a lone request) goes alone, the
// loads behind it admitted once it is decoded, so it has every core (on a
// host backend, layers also decode one at a time: daemon/backend.h). Each Load runs the stages above in order on its thread
// (a GPU backend's stages are themselves asynchronous on its streams). The
// daemon has one pipeline: host and device loads share its bounds, so the
// effective depth is also at most load_threads.
//
// staging_bytes bounds the compressed group bytes admitted. A GPU backend's
// staging buffers also hold the zstd prepass region and the plan image
// (daemon/device_backend.h), so they are somewhat larger than the groups;
// a backend keeps at most staging_bytes of idle staging for reuse.
//
// Reads go through the model's ByteSource (ByteSource::ReadBulk, so an
// injected-fault source still sees them) into the staging buffer. The
// io_uring source submits plain IORING_OP_READs into the staging memory
// itself (no bounce copy; the buffers are not registered as fixed buffers)
// and returns only once none of them is in flight, also on errors, so a
// staging buffer handed back after a failed read is never written again.
#ifndef BIGSMALL_DAEMON_PIPELINE_H_
#define BIGSMALL_DAEMON_PIPELINE_H_

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>

#include "absl/status/statusor.h"
#include "daemon/backend.h"
#include "daemon/layer_cache.h"

namespace bigsmall::daemon {

class Metrics;
class Model;

inline constexpr uint32_t kDefaultPipelineDepth = 3;
inline constexpr uint64_t kDefaultStagingBytes = 512ull << 20;

struct PipelineOptions {
  uint32_t depth = kDefaultPipelineDepth;       // layers in flight (>= 1)
  uint64_t staging_bytes = kDefaultStagingBytes;  // compressed bytes staged at once
  // Tests only (bigsmalld --fault-staging=<layer>): after the check stage,
  // flip one byte in the middle of the largest tensor blob of this layer
  // index in staging, so that only the decode backend's verification can
  // catch it.
  std::optional<int32_t> fault_staging_layer;
};

class Pipeline {
 public:
  Pipeline(const PipelineOptions& options, Metrics* metrics);

  // Runs layer `index` of `model` through every stage on `backend`; the
  // calling thread blocks while the pipeline is full. `base`: a delta
  // model's base layers (StagedLayer::base), null for a full model.
  absl::StatusOr<std::shared_ptr<LayerData>> Load(const Model& model, int32_t index,
                                                  Backend& backend,
                                                  const BaseLayers* base = nullptr);

  struct Stats {
    uint32_t in_flight = 0;
    uint32_t waiting = 0;  // loads waiting for admission
    uint32_t max_in_flight = 0;
    uint64_t staged_bytes = 0;
    uint64_t max_staged_bytes = 0;
    uint64_t layers = 0;       // loads that went through
    uint64_t errors = 0;       // loads that failed at some stage
    uint64_t faults_injected = 0;
    uint64_t leaders = 0;  // loads admitted into an empty pipeline (they went alone)
  };
  Stats stats() const;
  const PipelineOptions& options() const { return options_; }

 private:
  // A pipeline slot, released on destruction.
  class Slot {
   public:
    Slot(Pipeline* pipeline, uint64_t bytes, bool leader)
        : pipeline_(pipeline), bytes_(bytes), leader_(leader) {}
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;
    ~Slot() { pipeline_->Leave(bytes_, leader_); }

   private:
    Pipeline* const pipeline_;
    const uint64_t bytes_;
    const bool leader_;
  };
  // The stages.
  std::unique_ptr<Slot> Admit(uint64_t bytes);
  absl::StatusOr<StagedLayer> Read(const Model& model, int32_t index, Backend& backend);
  absl::Status Check(const StagedLayer& layer);
  void InjectStagingFault(StagedLayer& layer);
  absl::StatusOr<std::shared_ptr<LayerData>> DecodeAndVerify(const StagedLayer& layer,
                                                             Backend& backend);
  void Leave(uint64_t bytes, bool leader);

  const PipelineOptions options_;
  Metrics* const metrics_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool leading_ = false;  // a load admitted into an empty pipeline is in flight
  uint64_t next_ticket_ = 0;   // taken by each load arriving at admission
  uint64_t admit_ticket_ = 0;  // the ticket admitted next (arrival order)
  Stats stats_;
};

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_PIPELINE_H_
