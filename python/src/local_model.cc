// The in-process loader (_core.pyi "local_model.cc"): LocalModel,
// LoadedLayer, LocalStream. It is the daemon's own code: daemon::Model opens
// the .bs file, the directory of shards or the Hub repo's shards, and
// Model::LoadLayer runs the load pipeline (read, group checksums, decode on
// a ThreadPool, every tensor's hash checked) into anonymous host memory
// (daemon/host_arena.h MakeAnonymousArenaPool: a freed layer's pages go back
// to the system at once). Tensors are zero-copy views of a layer's block
// that keep the block alive.
//
// Threads: decoding never holds the GIL. A LocalStream decodes ahead on one
// std::thread of its own (which never touches Python), handing layers over
// through a mutex and a condition variable; close() and the destructor stop
// and join it (waiting at most for the one layer being decoded).
#include <Python.h>
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/unique_ptr.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "codec/byte_source.h"
#include "codec/status_util.h"
#include "codec/thread_pool.h"
#include "daemon/arena_allocator.h"
#include "daemon/host_arena.h"
#include "daemon/hub_models.h"
#include "daemon/layer_cache.h"
#include "daemon/model.h"
#include "hub/hub_client.h"
#include "hub/hub_config.h"
#include "hub/repo_ref.h"
#include "python/src/bindings.h"
#include "python/src/describe.h"

namespace bigsmall::python {
namespace {

using daemon::Annotate;
using daemon::LayerData;
using daemon::Model;

// More decode threads or read-ahead than this is a mistake, not a wish.
constexpr int kMaxThreads = 4096;
constexpr int kMaxReadAhead = 1 << 16;

absl::Status Closed(absl::string_view what) {
  return absl::FailedPreconditionError(absl::StrCat(what, " is closed"));
}

// What a LocalModel and its streams share: the model, the memory its layers
// are decoded into, the decode threads. Immutable once made (thread-safe).
struct Loader {
  std::shared_ptr<Model> model;
  std::shared_ptr<daemon::ArenaPool> arenas;
  std::unique_ptr<ThreadPool> pool;

  absl::StatusOr<std::shared_ptr<LayerData>> Load(int32_t index) const {
    return model->LoadLayer(index, arenas.get(), pool.get(), nullptr);
  }
  bool has_non_layer() const { return model->description().non_layer().tensors_size() > 0; }
  // The layer's index is one the model has (-1 only with non-layer tensors).
  absl::Status CheckIndex(int32_t index) const {
    if (index == -1 ? has_non_layer() : (index >= 0 && index < model->num_layers())) {
      return absl::OkStatus();
    }
    if (index == -1) {
      return absl::OutOfRangeError(absl::StrCat("model '", EscapeForLog(model->id()),
                                                "' has no non-layer tensors (layer -1)"));
    }
    return absl::OutOfRangeError(absl::StrCat("layer ", index, " is out of range: model '",
                                              EscapeForLog(model->id()), "' has ",
                                              model->num_layers(), " layers"));
  }
};

absl::StatusOr<std::shared_ptr<Loader>> MakeLoader(std::shared_ptr<Model> model, int threads) {
  auto loader = std::make_shared<Loader>();
  loader->model = std::move(model);
  loader->arenas = daemon::MakeAnonymousArenaPool();
  loader->pool = std::make_unique<ThreadPool>(threads);
  return loader;
}

absl::Status CheckThreads(int threads) {
  if (threads < 0 || threads > kMaxThreads) {
    return absl::InvalidArgumentError(
        absl::StrCat("threads must be in [0, ", kMaxThreads, "] (0: all cores), not ", threads));
  }
  return absl::OkStatus();
}

// A Hub model (_core.pyi LocalModel.open_hub): resolved and opened the way
// the daemon opens one (daemon/hub_models.cc), without its allow list and
// background fill: the shards (and the shard index) are downloaded into the
// shared HF cache first unless `download` is false; the model reads them
// through HubClient::OpenRemote sources, which read the cached blob when it
// is complete, else ranged GETs.
absl::StatusOr<std::shared_ptr<Model>> OpenHubModel(const std::string& name, bool download) {
  absl::StatusOr<hub::RepoRef> ref = hub::ParseRepoRef(name);
  if (!ref.ok()) return ref.status();
  absl::StatusOr<hub::HubConfig> config = hub::HubConfigFromEnvironment();
  if (!config.ok()) return config.status();
  hub::HubClient client(*std::move(config));
  absl::StatusOr<hub::RepoInfo> repo = client.Resolve(*ref);
  if (!repo.ok()) {
    return absl::Status(repo.status().code(),
                        absl::StrCat("Hub model '", EscapeForLog(ref->ToString()), "': ",
                                     repo.status().message()));
  }
  const std::string path = daemon::HubModels::ModelPath(*repo);
  const std::string what = absl::StrCat("model '", EscapeForLog(path), "'");
  const daemon::ModelFiles files = daemon::SelectFiles(*repo);
  if (files.shards.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Hub repo '", EscapeForLog(ref->ToString()), "' (", EscapeForLog(path),
        ") has no .bs files: it is not a BigSmall-compressed model (compress it with "
        "`bigsmall compress ", EscapeForLog(ref->repo_id), "` and upload the result)"));
  }
  if (download) {
    std::vector<const hub::RepoFile*> wanted = files.shards;
    if (files.index != nullptr) wanted.insert(wanted.begin(), files.index);
    for (const hub::RepoFile* f : wanted) {
      absl::StatusOr<std::string> local = client.Download(*repo, f->path);
      if (!local.ok()) return Annotate(local.status(), what);
    }
  }
  if (files.index != nullptr) {
    if (files.index->size > static_cast<uint64_t>(daemon::kMaxShardIndexBytes)) {
      return absl::DataLossError(absl::StrCat(what, ": ", daemon::kShardIndexName, " is over ",
                                              daemon::kMaxShardIndexBytes, " bytes"));
    }
    absl::StatusOr<std::unique_ptr<ByteSource>> source = client.OpenRemote(*repo, files.index->path);
    if (!source.ok()) return Annotate(source.status(), what);
    absl::StatusOr<std::vector<uint8_t>> bytes = ReadRange(**source, 0, files.index->size);
    if (!bytes.ok()) return Annotate(bytes.status(), what);
    std::set<std::string> names;
    for (const hub::RepoFile* f : files.shards) names.insert(f->path);
    absl::Status index_ok = daemon::CheckShardIndex(
        absl::string_view(reinterpret_cast<const char*>(bytes->data()), bytes->size()), names,
        what);
    if (!index_ok.ok()) return index_ok;
  }
  std::vector<daemon::ShardSource> shards;
  for (const hub::RepoFile* f : files.shards) {
    absl::StatusOr<std::unique_ptr<ByteSource>> source = client.OpenRemote(*repo, f->path);
    if (!source.ok()) return Annotate(source.status(), what);
    shards.push_back(daemon::ShardSource{*std::move(source), absl::StrCat(path, "/", f->path)});
  }
  return Model::OpenSources(std::move(shards), path, repo->commit, path, daemon::ModelOptions{});
}

// ---------------------------------------------------------------------------

class LoadedLayer {
 public:
  LoadedLayer(std::shared_ptr<const Model> model, int32_t index,
              std::shared_ptr<LayerData> data)
      : model_(std::move(model)), index_(index), data_(std::move(data)) {
    const v1::LayerInfo& info = Info();
    name_ = info.name();
    size_ = info.size();
  }

  int32_t index() const { return index_; }
  const std::string& name() const { return name_; }
  uint64_t size() const { return size_; }

  nb::list tensors() const {
    if (data_ == nullptr) {
      ThrowStatus(absl::FailedPreconditionError(
          absl::StrCat("layer ", index_, " ('", EscapeForLog(name_), "') was released")));
    }
    if (data_->arena == nullptr) ThrowStatus(absl::InternalError("a loaded layer has no memory"));
    const absl::Span<uint8_t> memory = data_->arena->bytes();
    const std::shared_ptr<const void> keep_alive = data_;
    nb::list out;
    for (const v1::TensorInfo& t : Info().tensors()) {
      if (t.offset() > memory.size() || t.size() > memory.size() - t.offset()) {
        ThrowStatus(absl::InternalError(absl::StrCat(
            "tensor '", EscapeForLog(t.name()), "' lies outside its layer's memory")));
      }
      nb::list shape;
      for (uint64_t d : t.shape()) shape.append(d);
      out.append(nb::make_tuple(t.name(), t.dtype(), nb::tuple(shape),
                                ByteTensor(memory.data() + t.offset(), t.size(), -1, keep_alive)));
    }
    return out;
  }

  void release() { data_.reset(); }

 private:
  const v1::LayerInfo& Info() const {
    const v1::ModelDescription& d = model_->description();
    return index_ < 0 ? d.non_layer() : d.layers(index_);
  }

  std::shared_ptr<const Model> model_;
  int32_t index_;
  std::string name_;
  uint64_t size_ = 0;
  std::shared_ptr<LayerData> data_;
};

// The state a stream shares with its read-ahead thread.
struct StreamCore {
  struct Item {
    int32_t index = 0;
    absl::StatusOr<std::shared_ptr<LayerData>> data;
  };

  StreamCore(std::shared_ptr<Loader> l, std::vector<int32_t> o, size_t ahead)
      : loader(std::move(l)), order(std::move(o)), read_ahead(ahead) {}

  // The read-ahead thread: decodes order[next_load..] while fewer than
  // read_ahead layers are decoded (or being decoded) and not handed out;
  // stops at the end, at stop, or after a failed layer (queued in order).
  void Produce() {
    std::unique_lock<std::mutex> lock(mu);
    while (true) {
      cv.wait(lock, [&] { return stop || next_load == order.size() || ready.size() < read_ahead; });
      if (stop || next_load == order.size()) break;
      const int32_t index = order[next_load++];
      lock.unlock();
      absl::StatusOr<std::shared_ptr<LayerData>> data = loader->Load(index);
      lock.lock();
      if (stop) break;  // nobody wants it: `data` is freed
      const bool failed = !data.ok();
      ready.push_back(Item{index, std::move(data)});
      cv.notify_all();
      if (failed) break;
    }
    producer_done = true;
    cv.notify_all();
  }

  const std::shared_ptr<Loader> loader;
  const std::vector<int32_t> order;
  const size_t read_ahead;  // 0: no thread, next() decodes

  std::mutex mu;
  std::condition_variable cv;  // both ways: layers ready, room made, stop
  std::deque<Item> ready;
  size_t next_load = 0;        // the producer's position in order
  bool stop = false;
  bool producer_done = false;
};

class LocalStream {
 public:
  LocalStream(std::shared_ptr<Loader> loader, std::vector<int32_t> order, size_t read_ahead)
      : core_(std::make_shared<StreamCore>(std::move(loader), std::move(order), read_ahead)) {
    if (read_ahead > 0 && !core_->order.empty()) {
      thread_ = std::thread([core = core_] { core->Produce(); });
    } else {
      core_->producer_done = true;  // nothing to produce (or next() decodes)
    }
  }
  ~LocalStream() { Stop(); }
  LocalStream(const LocalStream&) = delete;
  LocalStream& operator=(const LocalStream&) = delete;

  nb::object next() {
    if (!error_.ok()) ThrowStatus(error_);
    if (closed_) return nb::none();
    StreamCore& c = *core_;
    if (c.read_ahead == 0) {
      if (position_ == c.order.size()) return nb::none();
      const int32_t index = c.order[position_++];
      absl::StatusOr<std::shared_ptr<LayerData>> data;
      {
        nb::gil_scoped_release release;
        data = c.loader->Load(index);
      }
      return Hand(index, std::move(data));
    }
    // Waits without the GIL, and without the stream's lock while taking the
    // GIL back; checks for signals (Ctrl-C) every 100 ms.
    std::optional<StreamCore::Item> item;
    while (true) {
      bool woke = false;
      {
        nb::gil_scoped_release release;
        std::unique_lock<std::mutex> lock(c.mu);
        woke = c.cv.wait_for(lock, std::chrono::milliseconds(100),
                             [&] { return !c.ready.empty() || c.producer_done; });
        if (woke && !c.ready.empty()) {
          item.emplace(std::move(c.ready.front()));
          c.ready.pop_front();
          c.cv.notify_all();  // room for one more
        }
      }
      if (woke) break;
      if (PyErr_CheckSignals() != 0) throw nb::python_error();
    }
    if (!item.has_value()) return nb::none();  // the producer finished (or was stopped)
    ++position_;
    return Hand(item->index, std::move(item->data));
  }

  void close() {
    if (closed_) return;
    nb::gil_scoped_release release;
    Stop();
  }

 private:
  nb::object Hand(int32_t index, absl::StatusOr<std::shared_ptr<LayerData>> data) {
    if (!data.ok()) {
      // Sticky: the stream ends with this error; later calls raise it again.
      error_ = data.status();
      {
        nb::gil_scoped_release release;
        Stop();
      }
      ThrowStatus(error_);
    }
    return nb::cast(LoadedLayer(core_->loader->model, index, *std::move(data)),
                    nb::rv_policy::move);
  }

  // Stops and joins the read-ahead thread and frees what it decoded. Safe
  // from two threads at once (close() runs without the GIL).
  void Stop() {
    std::lock_guard<std::mutex> stopping(stop_mu_);
    std::deque<StreamCore::Item> dropped;
    {
      std::lock_guard<std::mutex> lock(core_->mu);
      core_->stop = true;
      dropped.swap(core_->ready);
    }
    core_->cv.notify_all();
    if (thread_.joinable()) thread_.join();
    dropped.clear();
    closed_ = true;
  }

  std::shared_ptr<StreamCore> core_;
  std::mutex stop_mu_;
  std::thread thread_;
  size_t position_ = 0;
  std::atomic<bool> closed_{false};
  absl::Status error_;
};

class LocalModel {
 public:
  explicit LocalModel(std::shared_ptr<Loader> loader)
      : loader_(std::move(loader)), id_(loader_->model->id()), path_(loader_->model->path()) {}

  static std::unique_ptr<LocalModel> Open(const std::string& path, int threads) {
    CheckOk(CheckThreads(threads));
    absl::StatusOr<std::shared_ptr<Loader>> loader;
    {
      nb::gil_scoped_release release;
      absl::StatusOr<std::shared_ptr<Model>> model = Model::Open(path, daemon::ModelOptions{});
      loader = model.ok() ? MakeLoader(*std::move(model), threads)
                          : absl::StatusOr<std::shared_ptr<Loader>>(model.status());
    }
    return std::make_unique<LocalModel>(ValueOrThrow(std::move(loader)));
  }

  static std::unique_ptr<LocalModel> OpenHub(const std::string& name, int threads, bool download) {
    CheckOk(CheckThreads(threads));
    absl::StatusOr<std::shared_ptr<Loader>> loader;
    {
      nb::gil_scoped_release release;
      absl::StatusOr<std::shared_ptr<Model>> model = OpenHubModel(name, download);
      loader = model.ok() ? MakeLoader(*std::move(model), threads)
                          : absl::StatusOr<std::shared_ptr<Loader>>(model.status());
    }
    return std::make_unique<LocalModel>(ValueOrThrow(std::move(loader)));
  }

  const std::string& id() const { return id_; }
  const std::string& path() const { return path_; }
  int32_t layer_count() const { return Get().model->num_layers(); }
  bool has_non_layer() const { return Get().has_non_layer(); }
  nb::dict describe() const { return DescriptionDict(Get().model->description()); }
  // The decoded memory this model's layers hold now (its arena pool).
  nb::dict memory() const {
    const daemon::ArenaPool::Stats stats = Get().arenas->stats();
    nb::dict d;
    d["blocks"] = stats.blocks;
    d["allocated"] = stats.allocated;
    d["arenas"] = stats.arenas;
    d["arena_bytes"] = stats.arena_bytes;
    return d;
  }

  LoadedLayer load_layer(int32_t index) const {
    std::shared_ptr<Loader> loader = loader_;
    if (loader == nullptr) ThrowStatus(Closed("LocalModel"));
    CheckOk(loader->CheckIndex(index));
    absl::StatusOr<std::shared_ptr<LayerData>> data;
    {
      nb::gil_scoped_release release;
      data = loader->Load(index);
    }
    return LoadedLayer(loader->model, index, ValueOrThrow(std::move(data)));
  }

  std::unique_ptr<LocalStream> stream(int32_t from_layer, int32_t to_layer,
                                      bool include_non_layer, int read_ahead) const {
    std::shared_ptr<Loader> loader = loader_;
    if (loader == nullptr) ThrowStatus(Closed("LocalModel"));
    const int32_t n = loader->model->num_layers();
    const int32_t to = to_layer == 0 ? n : to_layer;
    if (from_layer < 0 || from_layer > n) {
      ThrowStatus(absl::OutOfRangeError(absl::StrCat(
          "from_layer ", from_layer, " is out of range: the model has ", n, " layers")));
    }
    if (to < from_layer || to > n) {
      ThrowStatus(absl::OutOfRangeError(
          absl::StrCat("to_layer ", to, " is out of range [", from_layer, ", ", n, "]")));
    }
    if (read_ahead < 0 || read_ahead > kMaxReadAhead) {
      ThrowStatus(absl::InvalidArgumentError(
          absl::StrCat("read_ahead must be in [0, ", kMaxReadAhead, "], not ", read_ahead)));
    }
    std::vector<int32_t> order;
    if (include_non_layer && loader->has_non_layer()) order.push_back(-1);
    for (int32_t i = from_layer; i < to; ++i) order.push_back(i);
    return std::make_unique<LocalStream>(std::move(loader), std::move(order),
                                         static_cast<size_t>(read_ahead));
  }

  void close() {
    std::shared_ptr<Loader> dropped = std::move(loader_);
    // The decode threads are joined (if this was the last reference) without
    // the GIL.
    nb::gil_scoped_release release;
    dropped.reset();
  }

 private:
  const Loader& Get() const {
    if (loader_ == nullptr) ThrowStatus(Closed("LocalModel"));
    return *loader_;
  }

  std::shared_ptr<Loader> loader_;
  const std::string id_;
  const std::string path_;
};

}  // namespace

void RegisterLocal(nb::module_& m) {
  nb::class_<LoadedLayer>(m, "LoadedLayer",
                          "A decoded layer in this process's memory (LocalModel.load_layer, "
                          "LocalStream.next).")
      .def_prop_ro("index", &LoadedLayer::index)
      .def_prop_ro("name", &LoadedLayer::name)
      .def_prop_ro("size", &LoadedLayer::size)
      .def("tensors", &LoadedLayer::tensors,
           "[(name, dtype, shape, data)]: data a zero-copy uint8 tensor that keeps the layer's "
           "memory alive.")
      .def("release", &LoadedLayer::release,
           "Drops this object's reference to the memory (tensors handed out keep it alive).");

  nb::class_<LocalStream>(m, "LocalStream", "Layers in order, decoded ahead on a thread.")
      .def("next", &LocalStream::next,
           "The next LoadedLayer, None at the end; a decode error is raised here, in order.")
      .def("close", &LocalStream::close, "Stops the read-ahead and frees what it decoded.");

  nb::class_<LocalModel>(m, "LocalModel",
                         "A .bs model opened in process (the daemon's Model and load pipeline).")
      .def_static("open", &LocalModel::Open, nb::arg("path"), nb::arg("threads") = 0,
                  "A .bs file or a directory of .bs shards.")
      .def_static("open_hub", &LocalModel::OpenHub, nb::arg("name"), nb::arg("threads") = 0,
                  nb::arg("download") = true,
                  "'owner/repo[@rev]' or 'hf://owner/repo[@rev]' from the Hugging Face Hub.")
      .def_prop_ro("id", &LocalModel::id)
      .def_prop_ro("path", &LocalModel::path)
      .def("layer_count", &LocalModel::layer_count)
      .def("has_non_layer", &LocalModel::has_non_layer)
      .def("describe", &LocalModel::describe)
      .def("memory", &LocalModel::memory,
           "The decoded memory its layers hold now: {blocks (one per live layer), allocated "
           "(bytes, page-rounded), arenas, arena_bytes (address space)}.")
      .def("load_layer", &LocalModel::load_layer, nb::arg("index"),
           "Decodes layer `index` (-1: the non-layer group) into fresh memory.")
      .def("stream", &LocalModel::stream, nb::arg("from_layer") = 0, nb::arg("to_layer") = 0,
           nb::arg("include_non_layer") = false, nb::arg("read_ahead") = 1)
      .def("close", &LocalModel::close);
}

}  // namespace bigsmall::python
