#include "daemon/model.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

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
#include "codec/status_util.h"
#include "codec/status_macros.h"
#include "codec/thread_pool.h"
#include "daemon/backend.h"
#include "daemon/metrics.h"
#include "daemon/pipeline.h"
#include "daemon/safe_open.h"
#include "nlohmann/json.hpp"

namespace bigsmall::daemon {
namespace {

std::atomic<uint64_t> g_generation{0};
std::atomic<uint64_t> g_opens{0};

uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

}  // namespace

absl::Status Annotate(const absl::Status& status, const std::string& what) {
  if (status.ok()) return status;
  absl::StatusCode code = status.code();
  // A read past the end of a file whose index promised more is a truncated
  // (damaged) file, not a caller error.
  if (code == absl::StatusCode::kOutOfRange) code = absl::StatusCode::kDataLoss;
  return absl::Status(code, absl::StrCat(what, ": ", status.message()));
}

absl::Status CheckShardIndex(absl::string_view text, const std::set<std::string>& shards,
                             const std::string& what) {
  nlohmann::json index = nlohmann::json::parse(text.begin(), text.end(), nullptr,
                                               /*allow_exceptions=*/false);
  if (index.is_discarded() || !index.is_object() || !index.contains("weight_map") ||
      !index["weight_map"].is_object()) {
    return absl::DataLossError(
        absl::StrCat(what, ": ", kShardIndexName, " is not a valid shard index"));
  }
  std::set<std::string> expected;
  for (const auto& [tensor, file] : index["weight_map"].items()) {
    if (file.is_string()) expected.insert(file.get<std::string>());
  }
  for (const std::string& file : expected) {
    if (shards.count(file + ".bs") == 0) {
      return absl::NotFoundError(
          absl::StrCat(what, ": shard ", EscapeForLog(file), ".bs is missing"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Model>> Model::Open(const std::string& path,
                                                   const ModelOptions& options) {
  if (path.empty()) return absl::InvalidArgumentError("empty model path");
  if (path.find('\0') != std::string::npos || path.size() > PATH_MAX) {
    return absl::InvalidArgumentError("model path contains NUL or is too long");
  }
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      return absl::NotFoundError(absl::StrCat("model '", EscapeForLog(path), "' not found"));
    }
    return ErrnoToStatus(err, absl::StrCat("model '", EscapeForLog(path), "'"));
  }
  UniqueFd owned(fd);
  auto real = FdPath(fd);
  return OpenFd(std::move(owned), real.ok() ? *real : path, options);
}

absl::StatusOr<std::string> Model::Fingerprint(int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoToStatus(errno, "fstat");
  auto stamp = [](const struct stat& s) {
    return absl::StrCat(s.st_dev, ":", s.st_ino, ":", s.st_size, ":", s.st_mtim.tv_sec, ".",
                        s.st_mtim.tv_nsec);
  };
  std::string out = stamp(st);
  if (!S_ISDIR(st.st_mode)) return out;
  int dfd = ::openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return ErrnoToStatus(errno, "open directory");
  DIR* d = ::fdopendir(dfd);
  if (d == nullptr) {
    int err = errno;
    ::close(dfd);
    return ErrnoToStatus(err, "fdopendir");
  }
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (absl::EndsWith(name, ".bs") || name == kShardIndexName) names.push_back(name);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    struct stat s;
    if (::fstatat(fd, name.c_str(), &s, AT_SYMLINK_NOFOLLOW) != 0) continue;
    absl::StrAppend(&out, ";", name, "=", stamp(s));
  }
  return out;
}

uint64_t Model::OpenCountForTesting() { return g_opens.load(); }

absl::StatusOr<std::shared_ptr<Model>> Model::OpenFd(UniqueFd fd, const std::string& path,
                                                     const ModelOptions& options) {
  g_opens.fetch_add(1);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("model '", EscapeForLog(path), "'"));
  }
  if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model '", EscapeForLog(path), "' is not a regular file or a directory"));
  }
  std::shared_ptr<Model> model(new Model());
  model->path_ = path;
  model->options_ = options;
  model->file_id_ = FileId{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
  model->key_ = absl::StrCat("file:", st.st_dev, ":", st.st_ino);
  ASSIGN_OR_RETURN(model->fingerprint_, Fingerprint(fd.get()));
  RETURN_IF_ERROR(model->OpenShards(std::move(fd), st, options));
  RETURN_IF_ERROR(model->Finish());
  return model;
}

absl::StatusOr<std::shared_ptr<Model>> Model::OpenSources(std::vector<ShardSource> shards,
                                                          const std::string& path,
                                                          const std::string& fingerprint,
                                                          const std::string& key,
                                                          const ModelOptions& options) {
  g_opens.fetch_add(1);
  if (shards.empty()) {
    return absl::NotFoundError(absl::StrCat("model '", EscapeForLog(path), "': no .bs shards"));
  }
  std::shared_ptr<Model> model(new Model());
  model->path_ = path;
  model->options_ = options;
  model->fingerprint_ = fingerprint;
  model->key_ = key;
  RETURN_IF_ERROR(model->AttachShards(std::move(shards), options));
  RETURN_IF_ERROR(model->Finish());
  return model;
}

absl::Status Model::Finish() {
  uint64_t h = HashBytes64(
      absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(path_.data()), path_.size()));
  id_ = absl::StrFormat("m%012x", h & 0xffffffffffffull);
  cache_key_ = absl::StrCat(id_, ".", g_generation.fetch_add(1) + 1);
  return BuildPlan();
}

absl::Status Model::OpenShards(UniqueFd fd, const struct stat& st, const ModelOptions& options) {
  const std::string what = absl::StrCat("model '", EscapeForLog(path_), "'");
  FaultSpec fault;
  IoOptions io = options.io;
  if (!options.fault_spec.empty()) {
    ASSIGN_OR_RETURN(fault, ParseFaultSpec(options.fault_spec));
    ApplyUringFaults(fault, &io);  // the uring_* keys act inside the source
  }
  // (descriptor, shard path) of every shard, in order.
  std::vector<std::pair<UniqueFd, std::string>> shard_fds;
  if (S_ISDIR(st.st_mode)) {
    int dfd = ::openat(fd.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return ErrnoToStatus(errno, what);
    DIR* d = ::fdopendir(dfd);
    if (d == nullptr) {
      int err = errno;
      ::close(dfd);
      return ErrnoToStatus(err, what);
    }
    std::set<std::string> names;
    bool has_index = false;
    while (dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (absl::EndsWith(name, ".bs")) names.insert(name);
      if (name == kShardIndexName) has_index = true;
    }
    ::closedir(d);
    // A sharded checkpoint lists its shards: every one must be here.
    if (has_index) {
      auto index_fd = OpenBeneath(fd.get(), path_, kShardIndexName);
      if (!index_fd.ok()) return Annotate(index_fd.status(), what);
      struct stat ist;
      if (::fstat(index_fd->get(), &ist) != 0 || !S_ISREG(ist.st_mode) ||
          ist.st_size > kMaxShardIndexBytes) {
        return absl::DataLossError(
            absl::StrCat(what, ": ", kShardIndexName, " is not a regular file of at most ",
                         kMaxShardIndexBytes, " bytes"));
      }
      RETURN_IF_ERROR(ClearNonBlock(index_fd->get()));
      std::string text(static_cast<size_t>(ist.st_size), '\0');
      size_t got = 0;
      while (got < text.size()) {
        ssize_t n = ::pread(index_fd->get(), text.data() + got, text.size() - got, got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return ErrnoToStatus(errno, absl::StrCat(what, ": read ", kShardIndexName));
        if (n == 0) break;
        got += static_cast<size_t>(n);
      }
      text.resize(got);
      RETURN_IF_ERROR(CheckShardIndex(text, names, what));
    }
    if (names.empty()) return absl::NotFoundError(absl::StrCat(what, ": no .bs shards in directory"));
    for (const std::string& name : names) {
      // Beneath the directory, no symlinks: a shard cannot lead elsewhere.
      auto shard_fd = OpenBeneath(fd.get(), path_, name);
      if (!shard_fd.ok()) return Annotate(shard_fd.status(), what);
      shard_fds.emplace_back(std::move(*shard_fd), path_ + "/" + name);
    }
  } else {
    shard_fds.emplace_back(std::move(fd), path_);
  }
  std::vector<ShardSource> shards;
  for (auto& [shard_fd, shard_path] : shard_fds) {
    struct stat sst;
    if (::fstat(shard_fd.get(), &sst) != 0) return ErrnoToStatus(errno, what);
    if (!S_ISREG(sst.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": shard ", EscapeForLog(shard_path), " is not a regular file"));
    }
    RETURN_IF_ERROR(ClearNonBlock(shard_fd.get()));
    // Takes the descriptor; O_DIRECT is reopened through it, not by name.
    auto source = IoUringSource::OpenFd(shard_fd.release(), shard_path, io);
    if (!source.ok()) return Annotate(source.status(), what);
    io_backend_ = (*source)->backend();
    shards.push_back(ShardSource{std::move(*source), shard_path});
  }
  return AttachShards(std::move(shards), options);
}

absl::Status Model::AttachShards(std::vector<ShardSource> shards, const ModelOptions& options) {
  const std::string what = absl::StrCat("model '", EscapeForLog(path_), "'");
  FaultSpec fault;
  if (!options.fault_spec.empty()) {
    ASSIGN_OR_RETURN(fault, ParseFaultSpec(options.fault_spec));
  }
  for (ShardSource& shard : shards) {
    std::unique_ptr<ByteSource> src = std::move(shard.source);
    if (!options.fault_spec.empty()) {
      src = std::make_unique<FaultInjectingSource>(std::move(src), fault);
    }
    auto reader = BsReader::Open(std::move(src));
    if (!reader.ok()) return Annotate(reader.status(), what);
    // A fine-tune delta is served once its base is attached (AttachBase):
    // every shard of a model is a delta or none is.
    const bool delta = (*reader)->index().is_delta();
    if (!shards_.empty() && delta != is_delta_) {
      return absl::FailedPreconditionError(absl::StrCat(
          what, ": ", EscapeForLog(shard.path), delta ? " is" : " is not",
          " a fine-tune delta, unlike ", EscapeForLog(shard_paths_[0]),
          " (a model's shards are all deltas of one base or all full)"));
    }
    if (delta && base_name_.empty()) base_name_ = (*reader)->index().base_name;
    is_delta_ = delta;
    shard_paths_.push_back(std::move(shard.path));
    shards_.push_back(std::move(*reader));
  }
  return absl::OkStatus();
}

absl::Status Model::BuildPlan() {
  // Layers keyed by (number, group name): groups of one name in several
  // shards are one layer; equal numbers in different groups are not.
  std::map<std::pair<int64_t, std::string>, LayerPlan> by_key;
  non_layer_ = LayerPlan();
  non_layer_.index = -1;
  std::set<std::string> names;
  for (uint32_t s = 0; s < shards_.size(); ++s) {
    const BsIndex& index = shards_[s]->index();
    for (uint32_t g = 0; g < index.groups.size(); ++g) {
      const BsGroup& group = index.groups[g];
      LayerPlan& plan = group.layer < 0 ? non_layer_ : by_key[{group.layer, group.name}];
      if (group.layer >= 0) {
        plan.number = group.layer;
        plan.name = group.name;
      }
      plan.groups.push_back({s, g});
      plan.stored_size += group.size;
      for (uint32_t t : group.tensors) {
        if (t >= index.tensors.size()) {
          return absl::DataLossError(
              absl::StrCat(EscapeForLog(shards_[s]->name()), ": bad tensor index"));
        }
        const BsTensor& tensor = index.tensors[t];
        if (!names.insert(tensor.info.name).second) {
          return absl::DataLossError(absl::StrCat("model '", EscapeForLog(path_), "': tensor ",
                                                  EscapeForLog(tensor.info.name),
                                                  " appears twice"));
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
  for (auto& [key, plan] : by_key) {
    plan.index = static_cast<int32_t>(layers_.size());
    layers_.push_back(std::move(plan));
  }
  by_name_.clear();
  by_name_.reserve(names.size());
  for (int32_t i = -1; i < num_layers(); ++i) {
    const LayerPlan* lp = layer(i);
    for (uint32_t k = 0; k < lp->tensors.size(); ++k) {
      const TensorPlan& tp = lp->tensors[k];
      by_name_.emplace(shards_[tp.shard]->index().tensors[tp.tensor].info.name, TensorRef{i, k});
    }
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
      if (t.has_device_checksum) {
        ti->set_device_checksum(t.device_checksum);
        ti->set_has_device_checksum(true);
      }
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

const TensorRef* Model::FindTensor(absl::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &it->second;
}

bool Model::FindTensor(const std::string& name, int32_t* layer, const TensorPlan** plan) const {
  const TensorRef* ref = FindTensor(absl::string_view(name));
  if (ref == nullptr) return false;
  *layer = ref->layer;
  *plan = &this->layer(ref->layer)->tensors[ref->index];
  return true;
}

const v1::TensorInfo& Model::tensor_info(const TensorRef& ref) const {
  const v1::LayerInfo& info =
      ref.layer < 0 ? description_.non_layer() : description_.layers(ref.layer);
  return info.tensors(static_cast<int>(ref.index));
}

absl::StatusOr<std::shared_ptr<LayerData>> Model::LoadLayer(int32_t index, ArenaPool* arenas,
                                                            ThreadPool* pool,
                                                            Metrics* metrics) const {
  const LayerPlan* plan = layer(index);
  BaseLayers base;
  if (plan != nullptr && !plan->base_layers.empty()) {
    if (base_ == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          "model '", EscapeForLog(path_), "' is a fine-tune delta against '",
          EscapeForLog(base_name_), "' and has no base attached"));
    }
    for (int32_t b : plan->base_layers) {
      ASSIGN_OR_RETURN(std::shared_ptr<LayerData> data, base_->LoadLayer(b, arenas, pool, metrics));
      base.layers.push_back(data.get());
      base.owned.push_back(std::move(data));
    }
  }
  Pipeline pipeline(PipelineOptions{}, metrics);
  HostBackend backend(arenas, pool, options_.impl);
  return pipeline.Load(*this, index, backend, base.layers.empty() ? nullptr : &base);
}

absl::Span<const uint8_t> BaseLayers::TensorBytes(const TensorPlan& tp) const {
  if (tp.base_slot < 0 || static_cast<size_t>(tp.base_slot) >= layers.size()) return {};
  const LayerData* data = layers[static_cast<size_t>(tp.base_slot)];
  if (data == nullptr || data->arena == nullptr) return {};
  absl::Span<uint8_t> memory = data->arena->bytes();
  if (tp.base_offset > memory.size() || tp.size > memory.size() - tp.base_offset) return {};
  return memory.subspan(tp.base_offset, tp.size);
}

absl::Status Model::MapBase(const Model& base, std::vector<LayerPlan>* layers,
                            LayerPlan* non_layer) const {
  const std::string what = absl::StrCat("model '", EscapeForLog(path_), "'");
  const std::string base_what = absl::StrCat("base model '", EscapeForLog(base.path()), "'");
  if (!is_delta_) {
    return absl::FailedPreconditionError(absl::StrCat(what, " is not a fine-tune delta"));
  }
  if (base.is_delta()) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, ": ", base_what, " is itself a fine-tune delta; a base must be a full model"));
  }
  auto map_layer = [&](LayerPlan& plan) -> absl::Status {
    plan.base_layers.clear();
    for (TensorPlan& tp : plan.tensors) {
      tp.base_slot = -1;
      tp.base_offset = 0;
      const BsTensor& t = shards_[tp.shard]->index().tensors[tp.tensor];
      if (!t.is_delta()) continue;  // stored alone: decoded alone
      const TensorRef* ref = base.FindTensor(t.info.name);
      if (ref == nullptr) {
        return absl::FailedPreconditionError(absl::StrCat(
            what, ": tensor '", EscapeForLog(t.info.name), "' is stored as a delta, but ",
            base_what, " has no tensor of that name (wrong base)"));
      }
      const TensorPlan& btp = base.layer(ref->layer)->tensors[ref->index];
      const BsTensor& bt = base.shard(btp.shard).index().tensors[btp.tensor];
      if (btp.size != tp.size || bt.info.dtype_name != t.info.dtype_name) {
        return absl::FailedPreconditionError(absl::StrCat(
            what, ": base tensor '", EscapeForLog(t.info.name), "' of ", base_what,
            " has another dtype or size than the delta's (wrong base)"));
      }
      if (bt.hash != t.base_hash) {
        return absl::FailedPreconditionError(absl::StrCat(
            what, ": base tensor '", EscapeForLog(t.info.name), "' of ", base_what,
            " does not match the base this delta was made against (its XXH3-128 differs from "
            "the stored base hash: wrong base)"));
      }
      auto slot = std::find(plan.base_layers.begin(), plan.base_layers.end(), ref->layer);
      if (slot == plan.base_layers.end()) {
        plan.base_layers.push_back(ref->layer);
        slot = plan.base_layers.end() - 1;
      }
      tp.base_slot = static_cast<int32_t>(slot - plan.base_layers.begin());
      tp.base_offset = btp.offset;
    }
    return absl::OkStatus();
  };
  for (LayerPlan& plan : *layers) RETURN_IF_ERROR(map_layer(plan));
  return map_layer(*non_layer);
}

absl::Status Model::CheckBase(const Model& base) const {
  std::vector<LayerPlan> layers = layers_;
  LayerPlan non_layer = non_layer_;
  return MapBase(base, &layers, &non_layer);
}

absl::Status Model::AttachBase(std::shared_ptr<Model> base) {
  if (base == nullptr) return absl::InvalidArgumentError("AttachBase: no base");
  std::vector<LayerPlan> layers = layers_;
  LayerPlan non_layer = non_layer_;
  RETURN_IF_ERROR(MapBase(*base, &layers, &non_layer));
  layers_ = std::move(layers);
  non_layer_ = std::move(non_layer);
  base_ = std::move(base);
  return absl::OkStatus();
}

}  // namespace bigsmall::daemon
