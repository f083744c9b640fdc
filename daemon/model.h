// An opened model: one .bs file or a directory of .bs shards, with its
// layer plan (which groups make up each layer and where every tensor lands
// in the layer's memory) and the loader that reads, decodes and verifies a
// layer into a fresh host arena.
#ifndef BIGSMALL_DAEMON_MODEL_H_
#define BIGSMALL_DAEMON_MODEL_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "bigsmall/v1/bigsmall.pb.h"
#include "codec/bs_reader.h"
#include "codec/tensor_codec.h"
#include "daemon/fault_source.h"
#include "daemon/io_uring_source.h"
#include "daemon/layer_cache.h"

namespace bigsmall {
class ThreadPool;
}

namespace bigsmall::daemon {

class Metrics;

// Tensors start on this boundary inside a layer's memory.
inline constexpr uint64_t kTensorAlignment = 256;

struct ModelOptions {
  IoOptions io;
  DecoderImpl impl = DecoderImpl::kAuto;
  // Tests only: faults injected into every source of the model.
  std::string fault_spec;
};

struct TensorPlan {
  uint32_t shard = 0;
  uint32_t tensor = 0;  // index in the shard's BsIndex::tensors
  uint64_t offset = 0;  // in the layer's memory
  uint64_t size = 0;
};

struct LayerPlan {
  int32_t index = 0;  // -1: non-layer group
  int64_t number = -1;
  std::string name;
  uint64_t size = 0;  // bytes of layer memory
  uint64_t stored_size = 0;
  std::vector<std::pair<uint32_t, uint32_t>> groups;  // (shard, group)
  std::vector<TensorPlan> tensors;
};

class Model {
 public:
  // `path`: a .bs file or a directory with *.bs shards.
  static absl::StatusOr<std::shared_ptr<Model>> Open(const std::string& path,
                                                     const ModelOptions& options);

  const std::string& id() const { return id_; }
  // Cache key: the id plus a generation, so a reopened (changed) file never
  // meets layers decoded from its old contents.
  const std::string& cache_key() const { return cache_key_; }
  const std::string& path() const { return path_; }
  // Size and mtime of every shard: to tell whether the files changed.
  const std::string& fingerprint() const { return fingerprint_; }
  int32_t num_layers() const { return static_cast<int32_t>(layers_.size()); }
  // index -1: the non-layer group; nullptr when out of range.
  const LayerPlan* layer(int32_t index) const;
  const v1::ModelDescription& description() const { return description_; }
  IoBackend io_backend() const { return io_backend_; }
  // Finds a tensor by name: its layer index and its plan; false if absent.
  bool FindTensor(const std::string& name, int32_t* layer, const TensorPlan** plan) const;

  // Reads the layer's groups, decodes every tensor on `pool` into a new
  // block of `arenas` (committed first), verifying each tensor's hash.
  // LayerData::bytes is the block's cost (page-rounded size).
  absl::StatusOr<std::shared_ptr<LayerData>> LoadLayer(int32_t index, ArenaPool* arenas,
                                                       ThreadPool* pool, Metrics* metrics) const;

  std::atomic<uint64_t> layer_decodes{0};
  std::atomic<uint64_t> layers_served{0};
  std::atomic<int32_t> active_sessions{0};

 private:
  Model() = default;
  absl::Status BuildPlan();

  std::string id_;
  std::string cache_key_;
  std::string path_;
  std::string fingerprint_;
  ModelOptions options_;
  IoBackend io_backend_ = IoBackend::kPread;
  std::vector<std::string> shard_paths_;
  std::vector<std::unique_ptr<BsReader>> shards_;
  std::vector<LayerPlan> layers_;
  LayerPlan non_layer_;
  v1::ModelDescription description_;
  mutable std::atomic<uint64_t> arena_seq_{0};
};

// "model 'x': <message>", keeping the code; kOutOfRange from a read of a
// shorter-than-declared file becomes kDataLoss.
absl::Status Annotate(const absl::Status& status, const std::string& what);

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_MODEL_H_
