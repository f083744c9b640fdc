// An opened model: one .bs file or a directory of .bs shards, with its
// layer plan (which groups make up each layer and where every tensor lands
// in the layer's memory) and the loader that reads, decodes and verifies a
// layer into a fresh host arena.
#ifndef BIGSMALL_DAEMON_MODEL_H_
#define BIGSMALL_DAEMON_MODEL_H_

#include <sys/stat.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "bigsmall/v1/bigsmall.pb.h"
#include "codec/bs_reader.h"
#include "codec/tensor_codec.h"
#include "daemon/fault_source.h"
#include "daemon/io_uring_source.h"
#include "daemon/layer_cache.h"
#include "daemon/safe_open.h"

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
  // Delta models (Model::AttachBase): the base layer this DELTA_TENSOR is
  // XORed with, as an index into its LayerPlan::base_layers, and the base
  // tensor's offset in that layer's memory. -1: decoded alone (a full
  // model, or a tensor stored without DELTA_TENSOR).
  int32_t base_slot = -1;
  uint64_t base_offset = 0;
};

// A layer is one (group name, layer number) across every shard: groups of
// the same name in several shards make one layer; `encoder.block.0` and
// `decoder.block.0` are two. Layers are ordered by number, then by name; the
// non-layer groups (number < 0) are the one non-layer group, index -1.
struct LayerPlan {
  int32_t index = 0;  // -1: non-layer group
  int64_t number = -1;
  std::string name;
  uint64_t size = 0;  // bytes of layer memory
  uint64_t stored_size = 0;
  std::vector<std::pair<uint32_t, uint32_t>> groups;  // (shard, group)
  std::vector<TensorPlan> tensors;
  // Delta models: the base model's layer indices (-1: its non-layer group)
  // whose decoded bytes this layer's delta tensors need, each once; empty
  // for a full model or a layer without delta tensors.
  std::vector<int32_t> base_layers;
};

// The base's decoded layers a delta layer is rebuilt from while it decodes
// (LayerPlan::base_layers order): `layers[i]` is the data of base layer
// base_layers[i], kept alive by `leases` (the daemon's cache: the base's
// clients and the delta share one decoded copy) or by `owned` (tools).
struct BaseLayers {
  std::vector<LayerCache::Lease> leases;
  std::vector<std::shared_ptr<LayerData>> owned;
  std::vector<const LayerData*> layers;
  // The base tensor bytes for `tp` (host or device memory, as the base
  // layer's block holds it); empty when `tp` has no base or the base layer
  // is missing or too small (the decoder then refuses the delta tensor).
  absl::Span<const uint8_t> TensorBytes(const TensorPlan& tp) const;
};

// Where a tensor lives: its layer and its position in that layer's
// `tensors` (the same position in the LayerInfo of the description).
struct TensorRef {
  int32_t layer = 0;
  uint32_t index = 0;
};

// The identity of an opened file or directory (hard links are one model).
struct FileId {
  uint64_t dev = 0;
  uint64_t ino = 0;
  friend bool operator==(const FileId&, const FileId&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const FileId& id) {
    return H::combine(std::move(h), id.dev, id.ino);
  }
};

// One shard of a model, already opened: its source and its name (a path, or
// for a Hub model "hf://owner/repo@commit/file.bs"), for Model::OpenSources.
struct ShardSource {
  std::unique_ptr<ByteSource> source;
  std::string path;
};

// The shard index of a sharded checkpoint (model.safetensors.index.json):
// every file its weight_map names must be among `shards` (as "<file>.bs");
// DATA_LOSS for an index that is not one, NOT_FOUND naming a missing shard.
// `what` starts the messages ("model '...'"). Shared by directory and Hub
// models.
inline constexpr char kShardIndexName[] = "model.safetensors.index.json";
inline constexpr int64_t kMaxShardIndexBytes = 64ll << 20;
absl::Status CheckShardIndex(absl::string_view text, const std::set<std::string>& shards,
                             const std::string& what);

class Model {
 public:
  // `path`: a .bs file or a directory with *.bs shards, opened by name
  // (tools and tests; the daemon opens through ModelRegistry and OpenFd).
  static absl::StatusOr<std::shared_ptr<Model>> Open(const std::string& path,
                                                     const ModelOptions& options);
  // Opens the model that the descriptor `fd` (a regular .bs file or a
  // directory of .bs shards, opened with O_NONBLOCK) refers to. Every read
  // goes through `fd` or, for a directory, through shards opened beneath it
  // without following symlinks (OpenBeneath). `path`: the real path, for the
  // model id and messages.
  static absl::StatusOr<std::shared_ptr<Model>> OpenFd(UniqueFd fd, const std::string& path,
                                                       const ModelOptions& options);
  // Opens a model from shards that are already open (a Hub model's remote
  // sources): `path` names it (its id is derived from it), `fingerprint`
  // says when two opens are the same contents, `key` identifies it in the
  // registry. The shards are used in the order given; the options' fault
  // spec applies to them like to files.
  static absl::StatusOr<std::shared_ptr<Model>> OpenSources(std::vector<ShardSource> shards,
                                                            const std::string& path,
                                                            const std::string& fingerprint,
                                                            const std::string& key,
                                                            const ModelOptions& options);
  // A cheap fingerprint of what `fd` refers to, read without touching the
  // index: fstat (dev, inode, size, mtime) of the file, or of the directory
  // and of every *.bs entry and the shard index in it.
  static absl::StatusOr<std::string> Fingerprint(int fd);
  // How many models were opened (index read) in this process: tests.
  static uint64_t OpenCountForTesting();

  const std::string& id() const { return id_; }
  // Cache key: the id plus a generation, so a reopened (changed) file never
  // meets layers decoded from its old contents.
  const std::string& cache_key() const { return cache_key_; }
  const std::string& path() const { return path_; }
  // Fingerprint(fd) at open: to tell whether the files changed.
  const std::string& fingerprint() const { return fingerprint_; }
  const FileId& file_id() const { return file_id_; }
  // The registry's key: "file:<dev>:<ino>" for a file or directory,
  // the path for a model opened from sources ("hf://owner/repo@commit").
  const std::string& key() const { return key_; }
  int32_t num_layers() const { return static_cast<int32_t>(layers_.size()); }
  // index -1: the non-layer group; nullptr when out of range.
  const LayerPlan* layer(int32_t index) const;
  const v1::ModelDescription& description() const { return description_; }
  IoBackend io_backend() const { return io_backend_; }
  // Finds a tensor by name (a hash lookup); nullptr if absent.
  const TensorRef* FindTensor(absl::string_view name) const;
  // Finds a tensor by name: its layer index and its plan; false if absent.
  bool FindTensor(const std::string& name, int32_t* layer, const TensorPlan** plan) const;
  // The TensorInfo of a tensor of the description.
  const v1::TensorInfo& tensor_info(const TensorRef& ref) const;

  // The shards' readers (the load pipeline reads and decodes through them).
  uint32_t num_shards() const { return static_cast<uint32_t>(shards_.size()); }
  BsReader& shard(uint32_t s) const { return *shards_[s]; }
  const ModelOptions& options() const { return options_; }

  // Fine-tune deltas (docs/FORMAT.md §7; docs/API.md "Fine-tune deltas"):
  // whether the model's shards carry the DELTA flag (all or none), the
  // base's name as given at compress time (the first delta shard's index
  // base_name), and the base attached by AttachBase (null before).
  bool is_delta() const { return is_delta_; }
  const std::string& base_name() const { return base_name_; }
  const std::shared_ptr<Model>& base() const { return base_; }
  // Checks that `base` is the model this delta was made against: a full
  // model holding, for every DELTA_TENSOR, a tensor of the same name and
  // size whose stored hash is the delta's base_hash. FAILED_PRECONDITION
  // naming this model, the base and the first tensor that differs or is
  // missing (docs/FORMAT.md §10.1 base-mismatch).
  absl::Status CheckBase(const Model& base) const;
  // CheckBase, then maps every delta tensor to its base layer and offset
  // (TensorPlan::base_slot/base_offset, LayerPlan::base_layers) and keeps
  // `base`. Only before the model is shared (the registry calls it right
  // after opening); nothing changes on an error.
  absl::Status AttachBase(std::shared_ptr<Model> base);

  // Tools and tests: runs the layer through a one-layer load pipeline
  // (daemon/pipeline.h) on the host backend: reads its groups, decodes every
  // tensor on `pool` into a new block of `arenas` (committed first),
  // verifying each tensor's hash. LayerData::bytes is the block's cost
  // (page-rounded size). A delta model's base layers are loaded the same
  // way first (uncached). The daemon uses its own Pipeline.
  absl::StatusOr<std::shared_ptr<LayerData>> LoadLayer(int32_t index, ArenaPool* arenas,
                                                       ThreadPool* pool, Metrics* metrics) const;

  std::atomic<uint64_t> layer_decodes{0};
  std::atomic<uint64_t> layers_served{0};
  std::atomic<int32_t> active_sessions{0};
  std::atomic<int32_t> active_calls{0};  // GetTensors in flight

 private:
  Model() = default;
  absl::Status OpenShards(UniqueFd fd, const struct stat& st, const ModelOptions& options);
  // Reads the index of every shard (through the fault spec) and keeps them.
  absl::Status AttachShards(std::vector<ShardSource> shards, const ModelOptions& options);
  // The id and the cache key from path_, then the plan.
  absl::Status Finish();
  absl::Status BuildPlan();
  // The base mapping of AttachBase into `layers` and `non_layer` (copies of
  // this model's plans).
  absl::Status MapBase(const Model& base, std::vector<LayerPlan>* layers,
                       LayerPlan* non_layer) const;

  std::string id_;
  std::string cache_key_;
  std::string path_;
  std::string fingerprint_;
  FileId file_id_;
  std::string key_;
  ModelOptions options_;
  IoBackend io_backend_ = IoBackend::kPread;
  std::vector<std::string> shard_paths_;
  std::vector<std::unique_ptr<BsReader>> shards_;
  std::vector<LayerPlan> layers_;
  LayerPlan non_layer_;
  absl::flat_hash_map<std::string, TensorRef> by_name_;
  v1::ModelDescription description_;
  bool is_delta_ = false;
  std::string base_name_;
  std::shared_ptr<Model> base_;
};

// "model 'x': <message>", keeping the code; kOutOfRange from a read of a
// shorter-than-declared file becomes kDataLoss.
absl::Status Annotate(const absl::Status& status, const std::string& what);

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_MODEL_H_
