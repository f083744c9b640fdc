#include "daemon/model.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "codec/hash.h"
#include "codec/status_macros.h"
#include "codec/thread_pool.h"
#include "daemon/metrics.h"
#include "nlohmann/json.hpp"

namespace bigsmall::daemon {
namespace {

std::atomic<uint64_t> g_generation{0};

uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

bool IsDir(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool Exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

}  // namespace

absl::Status Annotate(const absl::Status& status, const std::string& what) {
  if (status.ok()) return status;
  absl::StatusCode code = status.code();
  // A read past the end of a file whose index promised more is a truncated
  // (damaged) file, not a caller error.
  if (code == absl::StatusCode::kOutOfRange) code = absl::StatusCode::kDataLoss;
  return absl::Status(code, absl::StrCat(what, ": ", status.message()));
}

absl::StatusOr<std::shared_ptr<Model>> Model::Open(const std::string& path,
                                                   const ModelOptions& options) {
  if (path.empty()) return absl::InvalidArgumentError("empty model path");
  char resolved[PATH_MAX];
  if (realpath(path.c_str(), resolved) == nullptr) {
    return absl::NotFoundError(absl::StrCat("model '", path, "' not found"));
  }
  std::shared_ptr<Model> model(new Model());
  model->path_ = resolved;
  model->options_ = options;
  const std::string& root = model->path_;
  if (IsDir(root)) {
    std::vector<std::string> names;
    if (DIR* d = opendir(root.c_str())) {
      while (dirent* e = readdir(d)) {
        std::string name = e->d_name;
        if (absl::EndsWith(name, ".bs")) names.push_back(name);
      }
      closedir(d);
    }
    std::sort(names.begin(), names.end());
    // A sharded checkpoint lists its shards: every one must be here.
    std::string index_path = root + "/model.safetensors.index.json";
    if (Exists(index_path)) {
      std::ifstream in(index_path);
      nlohmann::json index = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
      if (index.is_discarded() || !index.contains("weight_map") ||
          !index["weight_map"].is_object()) {
        return absl::DataLossError(absl::StrCat(index_path, ": not a valid shard index"));
      }
      std::set<std::string> expected;
      for (const auto& [tensor, file] : index["weight_map"].items()) {
        if (file.is_string()) expected.insert(file.get<std::string>());
      }
      for (const std::string& file : expected) {
        if (!Exists(absl::StrCat(root, "/", file, ".bs"))) {
          return absl::NotFoundError(
              absl::StrCat("model '", path, "': shard ", file, ".bs is missing"));
        }
      }
    }
    if (names.empty()) {
      return absl::NotFoundError(absl::StrCat("model '", path, "': no .bs shards in directory"));
    }
    for (const std::string& n : names) model->shard_paths_.push_back(root + "/" + n);
  } else {
    model->shard_paths_.push_back(root);
  }

  FaultSpec fault;
  if (!options.fault_spec.empty()) {
    ASSIGN_OR_RETURN(fault, ParseFaultSpec(options.fault_spec));
  }
  for (const std::string& shard : model->shard_paths_) {
    struct stat st;
    if (::stat(shard.c_str(), &st) != 0) {
      return absl::NotFoundError(absl::StrCat("model '", path, "': shard ", shard, " is missing"));
    }
    absl::StrAppend(&model->fingerprint_, shard, ":", st.st_size, ":", st.st_mtim.tv_sec, ".",
                    st.st_mtim.tv_nsec, ";");
    auto source = IoUringSource::Open(shard, options.io);
    if (!source.ok()) return Annotate(source.status(), absl::StrCat("model '", path, "'"));
    model->io_backend_ = (*source)->backend();
    std::unique_ptr<ByteSource> src = std::move(*source);
    if (!options.fault_spec.empty()) {
      src = std::make_unique<FaultInjectingSource>(std::move(src), fault);
    }
    auto reader = BsReader::Open(std::move(src));
    if (!reader.ok()) return Annotate(reader.status(), absl::StrCat("model '", path, "'"));
    if ((*reader)->index().is_delta()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "model '", path, "': ", shard,
          " is a fine-tune delta; the daemon serves full models (decompress it with its base)"));
    }
    model->shards_.push_back(std::move(*reader));
  }
  uint64_t h = HashBytes64(absl::Span<const uint8_t>(
      reinterpret_cast<const uint8_t*>(model->path_.data()), model->path_.size()));
  model->id_ = absl::StrFormat("m%012x", h & 0xffffffffffffull);
  model->cache_key_ = absl::StrCat(model->id_, ".", g_generation.fetch_add(1) + 1);
  RETURN_IF_ERROR(model->BuildPlan());
  return model;
}

absl::Status Model::BuildPlan() {
  std::map<int64_t, LayerPlan> by_number;
  non_layer_ = LayerPlan();
  non_layer_.index = -1;
  std::set<std::string> names;
  for (uint32_t s = 0; s < shards_.size(); ++s) {
    const BsIndex& index = shards_[s]->index();
    for (uint32_t g = 0; g < index.groups.size(); ++g) {
      const BsGroup& group = index.groups[g];
      LayerPlan& plan = group.layer < 0 ? non_layer_ : by_number[group.layer];
      if (group.layer >= 0) {
        plan.number = group.layer;
        plan.name = group.name;
      }
      plan.groups.push_back({s, g});
      plan.stored_size += group.size;
      for (uint32_t t : group.tensors) {
        if (t >= index.tensors.size()) {
          return absl::DataLossError(absl::StrCat(shards_[s]->name(), ": bad tensor index"));
        }
        const BsTensor& tensor = index.tensors[t];
        if (!names.insert(tensor.info.name).second) {
          return absl::DataLossError(absl::StrCat("model '", path_, "': tensor ",
                                                  tensor.info.name, " appears twice"));
        }
        TensorPlan tp;
        tp.shard = s;
        tp.tensor = t;
        tp.size = tensor.info.size();
        tp.offset = AlignUp(plan.size, kTensorAlignment);
        plan.size = tp.offset + tp.size;
        plan.tensors.push_back(tp);
      }
    }
  }
  layers_.clear();
  for (auto& [number, plan] : by_number) {
    plan.index = static_cast<int32_t>(layers_.size());
    layers_.push_back(std::move(plan));
  }

  description_.Clear();
  description_.set_model_id(id_);
  description_.set_path(path_);
  description_.set_num_layers(static_cast<uint32_t>(layers_.size()));
  uint64_t tensors = 0, original = 0, stored = 0;
  for (size_t s = 0; s < shards_.size(); ++s) {
    stored += shards_[s]->index().stored_size;
    description_.add_shards(shard_paths_[s]);
  }
  auto describe = [&](const LayerPlan& plan, v1::LayerInfo* info) {
    info->set_index(plan.index);
    info->set_number(plan.number);
    info->set_name(plan.name);
    info->set_size(plan.size);
    info->set_stored_size(plan.stored_size);
    for (const TensorPlan& tp : plan.tensors) {
      const BsTensor& t = shards_[tp.shard]->index().tensors[tp.tensor];
      v1::TensorInfo* ti = info->add_tensors();
      ti->set_name(t.info.name);
      ti->set_dtype(t.info.dtype_name);
      for (uint64_t d : t.info.shape) ti->add_shape(d);
      ti->set_offset(tp.offset);
      ti->set_size(tp.size);
      ti->set_hash(std::string(t.hash.begin(), t.hash.end()));
      ti->set_layer(plan.index);
      ti->set_shard(shard_paths_[tp.shard]);
      ++tensors;
      original += tp.size;
    }
  };
  for (const LayerPlan& plan : layers_) describe(plan, description_.add_layers());
  describe(non_layer_, description_.mutable_non_layer());
  description_.set_num_tensors(tensors);
  description_.set_original_bytes(original);
  description_.set_stored_bytes(stored);
  return absl::OkStatus();
}

const LayerPlan* Model::layer(int32_t index) const {
  if (index == -1) return &non_layer_;
  if (index < 0 || index >= num_layers()) return nullptr;
  return &layers_[index];
}

bool Model::FindTensor(const std::string& name, int32_t* layer, const TensorPlan** plan) const {
  for (int32_t i = -1; i < num_layers(); ++i) {
    const LayerPlan* lp = this->layer(i);
    for (const TensorPlan& tp : lp->tensors) {
      if (shards_[tp.shard]->index().tensors[tp.tensor].info.name == name) {
        *layer = i;
        *plan = &tp;
        return true;
      }
    }
  }
  return false;
}

absl::StatusOr<std::shared_ptr<LayerData>> Model::LoadLayer(int32_t index, ArenaPool* arenas,
                                                            ThreadPool* pool,
                                                            Metrics* metrics) const {
  const LayerPlan* plan = layer(index);
  if (plan == nullptr) {
    return absl::OutOfRangeError(absl::StrCat("model ", id_, " has no layer ", index));
  }
  const std::string what = absl::StrCat("model '", path_, "' layer ", index,
                                        plan->name.empty() ? "" : " (", plan->name,
                                        plan->name.empty() ? "" : ")");
  auto start = std::chrono::steady_clock::now();
  // Read every group of the layer: one aligned read each.
  std::map<std::pair<uint32_t, uint32_t>, AlignedBuffer> buffers;
  for (const auto& [s, g] : plan->groups) {
    const BsGroup& group = shards_[s]->index().groups[g];
    AlignedBuffer buffer(group.size);
    if (!buffer.ok()) return absl::ResourceExhaustedError(absl::StrCat(what, ": out of memory"));
    absl::Status st = shards_[s]->source().ReadAt(group.offset, {buffer.data(), buffer.size()});
    if (!st.ok()) return Annotate(st, what);
    if (metrics != nullptr) metrics->AddBytesRead(group.size);
    buffers.emplace(std::make_pair(s, g), std::move(buffer));
  }
  // The layer's block in an arena, backed now: a full shm filesystem is an
  // allocation failure (the cache evicts and retries), not a SIGBUS later.
  auto arena = arenas->Allocate(std::max<uint64_t>(plan->size, 1));
  absl::Status backed = arena.ok() ? (*arena)->Commit() : arena.status();
  if (!backed.ok()) {
    absl::Status annotated = Annotate(backed, what);
    return IsAllocationFailure(backed) ? MarkAllocationFailure(annotated) : annotated;
  }
  absl::Span<uint8_t> memory = (*arena)->bytes();
  DecodeOptions decode;
  decode.impl = options_.impl;
  decode.pool = pool;
  auto decode_one = [&](size_t i) -> absl::Status {
    const TensorPlan& tp = plan->tensors[i];
    const BsTensor& t = shards_[tp.shard]->index().tensors[tp.tensor];
    const AlignedBuffer& buf = buffers.at({tp.shard, t.group});
    const BsGroup& group = shards_[tp.shard]->index().groups[t.group];
    (void)group;
    return shards_[tp.shard]->DecodeTensor(tp.tensor, {buf.data(), buf.size()},
                                           memory.subspan(tp.offset, tp.size), decode);
  };
  absl::Status st;
  if (pool != nullptr) {
    st = pool->ParallelFor(plan->tensors.size(), decode_one);
  } else {
    for (size_t i = 0; i < plan->tensors.size() && st.ok(); ++i) st = decode_one(i);
  }
  if (!st.ok()) return Annotate(st, what);
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  auto data = std::make_shared<LayerData>();
  data->bytes = (*arena)->cost();
  data->decode_seconds = seconds;
  data->arena = std::move(*arena);
  if (metrics != nullptr) metrics->AddDecode(plan->size, seconds);
  return data;
}

}  // namespace bigsmall::daemon
