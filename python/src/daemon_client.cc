// bigsmall._core: DaemonClient, DaemonStream, DaemonLayer (see _core.pyi):
// bigsmalld through the C++ client (client/client.h).
//
// Lifetimes. A DaemonLayer holds its client::Layer (the lease, and the
// mapping or open device arena) in a LayerBox shared with every tensor view
// it hands out (ByteTensor's keep-alive), so the lease lives exactly as long
// as the DaemonLayer or any view of its memory; release() drops only the
// DaemonLayer's own reference. A LayerBox also holds the stream's call
// (StreamState): a DaemonStream collected by Python, or close()d, while
// views of its layers live ends neither the call nor their leases; the call
// ends with the last holder.
//
// The GIL is released around every RPC, every Next() and every copy or
// verification; objects shared with other Python threads are touched only
// under the GIL, the C++ stream under its own mutex.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <grpcpp/channel.h>
#include <nanobind/stl/vector.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "codec/status_util.h"
#include "python/src/bindings.h"
#include "python/src/describe.h"

namespace bigsmall::python {
namespace {

using client::Client;
using client::Layer;
using client::LayerStream;

// The connection, shared by a DaemonClient and its streams.
struct ClientState {
  std::unique_ptr<Client> client;
  std::string target;
  int64_t rpc_timeout_ms = 0;
  int64_t stream_idle_timeout_ms = 0;

  // A call that ran into its deadline without ever reaching a daemon (the
  // channel is not connected: no socket, nobody listening) is UNAVAILABLE,
  // as gRPC says of a daemon that is not there; one that was connected
  // (a hung or slow daemon) stays DEADLINE_EXCEEDED.
  absl::Status Classify(absl::Status status) const {
    if (status.code() != absl::StatusCode::kDeadlineExceeded) return status;
    const grpc_connectivity_state state = client->channel()->GetState(false);
    if (state == GRPC_CHANNEL_READY || state == GRPC_CHANNEL_IDLE) return status;
    return absl::UnavailableError(absl::StrCat("no bigsmalld answers at ", EscapeForLog(target),
                                               " (is it running?): ", status.message()));
  }
  template <typename T>
  absl::StatusOr<T> Classify(absl::StatusOr<T> value) const {
    if (value.ok()) return value;
    return Classify(value.status());
  }

};

// A stream's call, shared by the DaemonStream (until close()) and the
// LayerBoxes of its layers (see the top of this file): the call ends with
// the last of them.
struct StreamState {
  std::shared_ptr<ClientState> client;
  std::mutex mu;
  std::unique_ptr<LayerStream> stream;  // guarded by mu
};

// Runs `drop` without the GIL when this thread holds it: releasing a lease
// writes to the call, and ending a call is a round trip or a cancel. The
// last holder may be a tensor view freed by torch (its keep-alive) with the
// GIL held, or on a thread of its own without it. (PyGILState_Check says 1
// once the interpreter is finalized: nothing to release then.)
template <typename F>
void WithoutGil(F&& drop) {
  if (Py_IsInitialized() && PyGILState_Check()) {
    nb::gil_scoped_release nogil;
    drop();
  } else {
    drop();
  }
}

// One leased layer: the keep-alive of its DaemonLayer and tensor views.
struct LayerBox {
  std::shared_ptr<StreamState> stream;
  std::unique_ptr<Layer> layer;
  ~LayerBox() {
    WithoutGil([this] {
      layer.reset();  // the lease goes before the call can
      stream.reset();
    });
  }
};

absl::Status Released() {
  return absl::FailedPreconditionError("the layer was released (DaemonLayer.release())");
}

nb::tuple ShapeTuple(const std::vector<uint64_t>& shape) {
  nb::list dims;
  for (uint64_t d : shape) dims.append(d);
  return nb::tuple(dims);
}

nb::tuple ShapeTuple(const google::protobuf::RepeatedField<uint64_t>& shape) {
  return ShapeTuple(std::vector<uint64_t>(shape.begin(), shape.end()));
}

// A host copy as a torch.uint8 tensor (owning its bytes).
nb::object OwnedBytes(std::vector<uint8_t> bytes) {
  auto owned = std::make_shared<std::vector<uint8_t>>(std::move(bytes));
  const uint8_t* data = owned->data();
  const uint64_t size = owned->size();
  return ByteTensor(data, size, -1, std::move(owned));
}

class DaemonLayer {
 public:
  explicit DaemonLayer(std::shared_ptr<LayerBox> box) : box_(std::move(box)) {
    const Layer& l = *box_->layer;
    index_ = l.index();
    name_ = l.name();
    size_ = l.size();
    cache_hit_ = l.cache_hit();
    on_device_ = l.on_device();
    device_ = l.device();
    emulated_ = l.handle().memory().has_cuda() && l.handle().memory().cuda().emulated();
  }
  DaemonLayer(DaemonLayer&&) = default;
  DaemonLayer& operator=(DaemonLayer&&) = default;
  DaemonLayer(const DaemonLayer&) = delete;
  DaemonLayer& operator=(const DaemonLayer&) = delete;

  int32_t index() const { return index_; }
  const std::string& name() const { return name_; }
  uint64_t size() const { return size_; }
  bool cache_hit() const { return cache_hit_; }
  bool on_device() const { return on_device_; }
  int device() const { return device_; }
  bool emulated() const { return emulated_; }

  nb::list Tensors() const {
    if (box_ == nullptr) ThrowStatus(Released());
    if (emulated_) {
      ThrowStatus(absl::FailedPreconditionError(absl::StrCat(
          "layer ", EscapeForLog(name_),
          " is on the daemon's emulated GPU (bigsmalld --gpu-backend emulated): its memory is no "
          "CUDA memory, so there are no zero-copy tensors of it; use copy_to_host(name) or verify()")));
    }
    nb::list records;
    for (const client::Tensor& t : box_->layer->tensors()) {
      nb::object data = ByteTensor(t.data, t.size, t.device, box_);
      if (t.device >= 0 && t.size == 0) {
        // ByteTensor makes an empty tensor on the host: put it on the layer's device.
        data = data.attr("to")(nb::str(absl::StrCat("cuda:", t.device).c_str()));
      }
      records.append(nb::make_tuple(t.name, t.dtype, ShapeTuple(t.shape), data));
    }
    return records;
  }

  nb::object CopyToHost(const std::string& tensor_name) const {
    std::shared_ptr<LayerBox> box = box_;
    if (box == nullptr) ThrowStatus(Released());
    absl::StatusOr<std::vector<uint8_t>> bytes;
    {
      nb::gil_scoped_release nogil;
      const client::Tensor* t = box->layer->Find(tensor_name);
      if (t == nullptr) {
        bytes = absl::NotFoundError(absl::StrCat("layer ", EscapeForLog(name_), " has no tensor ",
                                                 EscapeForLog(tensor_name)));
      } else {
        bytes = box->layer->CopyToHost(*t);
      }
    }
    return OwnedBytes(ValueOrThrow(std::move(bytes)));
  }

  void Verify() const {
    std::shared_ptr<LayerBox> box = box_;
    if (box == nullptr) ThrowStatus(Released());
    absl::Status st;
    {
      nb::gil_scoped_release nogil;
      st = box->layer->Verify();
    }
    CheckOk(st);
  }

  void Release() {
    std::shared_ptr<LayerBox> box = std::move(box_);
    nb::gil_scoped_release nogil;
    box.reset();  // the lease goes here unless a tensor view still holds it
  }

 private:
  std::shared_ptr<LayerBox> box_;  // null once released
  int32_t index_ = 0;
  std::string name_;
  uint64_t size_ = 0;
  bool cache_hit_ = false;
  bool on_device_ = false;
  int device_ = -1;
  bool emulated_ = false;
};

class DaemonStream {
 public:
  DaemonStream(std::shared_ptr<StreamState> state, uint32_t window)
      : state_(std::move(state)), window_(window) {}
  // Collected by Python, or close()d: the call ends with the last of this
  // object's reference and the layers it handed out (their LayerBoxes hold
  // StreamState).
  DaemonStream(DaemonStream&&) = default;
  DaemonStream& operator=(DaemonStream&& other) noexcept {
    if (this != &other) {
      Drop(std::move(state_));
      state_ = std::move(other.state_);
      window_ = other.window_;
    }
    return *this;
  }
  DaemonStream(const DaemonStream&) = delete;
  DaemonStream& operator=(const DaemonStream&) = delete;
  ~DaemonStream() { Drop(std::move(state_)); }

  uint32_t window() const { return window_; }

  // state_ is read and written only under the GIL; the call under state->mu.
  std::optional<DaemonLayer> Next() {
    std::shared_ptr<StreamState> state = state_;
    if (state == nullptr) return std::nullopt;  // closed: no more layers
    absl::StatusOr<std::unique_ptr<Layer>> layer;
    {
      nb::gil_scoped_release nogil;
      std::lock_guard<std::mutex> lock(state->mu);
      layer = state->client->Classify(state->stream->Next());
    }
    if (!layer.ok() || *layer == nullptr) {
      // A close() on another thread meanwhile may have left this the last
      // reference: the call then ends here, without the GIL.
      Drop(std::move(state));
      if (!layer.ok()) ThrowStatus(layer.status());
      return std::nullopt;
    }
    auto box = std::make_shared<LayerBox>();
    box->stream = std::move(state);
    box->layer = std::move(*layer);
    return DaemonLayer(std::move(box));
  }

  // Stops the stream: no more layers (next() is None), and this object's
  // reference to the call goes. Layers still held (DaemonLayers, tensor
  // views) keep the call and their leases until the last of them goes.
  void Close() { Drop(std::move(state_)); }

 private:
  // Drops a reference to the call; the last one ends it.
  static void Drop(std::shared_ptr<StreamState> state) {
    if (state != nullptr) WithoutGil([&state] { state.reset(); });
  }

  std::shared_ptr<StreamState> state_;  // null once closed
  uint32_t window_ = 0;
};

absl::Status CheckTimeout(int64_t ms, const char* what) {
  if (ms < 0) return absl::InvalidArgumentError(absl::StrCat(what, " must be >= 0, not ", ms));
  return absl::OkStatus();
}

nb::list Records(std::vector<Client::OwnedTensor> tensors) {
  nb::list records;
  for (Client::OwnedTensor& t : tensors) {
    records.append(nb::make_tuple(t.info.name(), t.info.dtype(), ShapeTuple(t.info.shape()),
                                  OwnedBytes(std::move(t.bytes))));
  }
  return records;
}

class DaemonClient {
 public:
  DaemonClient(const std::optional<std::string>& socket, int64_t rpc_timeout_ms,
               int64_t stream_idle_timeout_ms) {
    CheckOk(CheckTimeout(rpc_timeout_ms, "rpc_timeout_ms"));
    CheckOk(CheckTimeout(stream_idle_timeout_ms, "stream_idle_timeout_ms"));
    const std::string where =
        socket.has_value() && !socket->empty() ? *socket : client::DefaultSocketPath();
    client::ClientOptions options;
    options.rpc_timeout = std::chrono::milliseconds(rpc_timeout_ms);
    options.stream_idle_timeout = std::chrono::milliseconds(stream_idle_timeout_ms);
    state_ = std::make_shared<ClientState>();
    state_->target = client::TargetFor(where);
    state_->rpc_timeout_ms = rpc_timeout_ms;
    state_->stream_idle_timeout_ms = stream_idle_timeout_ms;
    absl::StatusOr<std::unique_ptr<Client>> c;
    {
      nb::gil_scoped_release nogil;
      c = Client::Connect(where, options);
    }
    state_->client = ValueOrThrow(std::move(c));
  }

  const std::string& target() const { return state_->target; }

  void WaitReady(int64_t timeout_ms) {
    CheckOk(CheckTimeout(timeout_ms, "timeout_ms"));
    absl::Status st;
    {
      nb::gil_scoped_release nogil;
      st = state_->Classify(state_->client->WaitReady(std::chrono::milliseconds(timeout_ms)));
    }
    CheckOk(st);
  }

  nb::dict OpenModel(const std::string& name) {
    absl::StatusOr<v1::ModelDescription> d;
    {
      nb::gil_scoped_release nogil;
      d = state_->Classify(state_->client->OpenModel(name));
    }
    return DescriptionDict(ValueOrThrow(std::move(d)));
  }

  nb::dict Describe(const std::string& model_id) {
    absl::StatusOr<v1::ModelDescription> d;
    {
      nb::gil_scoped_release nogil;
      d = state_->Classify(state_->client->Describe(model_id));
    }
    return DescriptionDict(ValueOrThrow(std::move(d)));
  }

  DaemonStream Stream(const std::string& model_id, int32_t from_layer, int32_t to_layer,
                      int64_t window, bool include_non_layer, const std::string& device,
                      bool pin_host_memory) {
    if (window < 0 || window > UINT32_MAX) {
      ThrowStatus(absl::InvalidArgumentError(absl::StrCat("window must be in [0, 2^32), not ", window)));
    }
    client::StreamOptions options;
    options.from_layer = from_layer;
    options.to_layer = to_layer;
    options.window = static_cast<uint32_t>(window);
    options.include_non_layer = include_non_layer;
    options.device = device;
    options.pin_host_memory = pin_host_memory;
    absl::StatusOr<std::unique_ptr<LayerStream>> stream;
    {
      // Client::Stream bounds its start by the idle timeout: no daemon is
      // UNAVAILABLE, not a hang.
      nb::gil_scoped_release nogil;
      stream = state_->client->Stream(model_id, options);
    }
    auto s = std::make_shared<StreamState>();
    s->client = state_;
    s->stream = ValueOrThrow(std::move(stream));
    const uint32_t w = s->stream->window();
    return DaemonStream(std::move(s), w);
  }

  nb::list GetTensors(const std::string& model_id, const std::vector<std::string>& names) {
    absl::StatusOr<std::vector<Client::OwnedTensor>> tensors;
    {
      nb::gil_scoped_release nogil;
      tensors = state_->Classify(state_->client->GetTensors(model_id, names));
    }
    return Records(ValueOrThrow(std::move(tensors)));
  }

  nb::dict Stats() {
    absl::StatusOr<v1::StatsResponse> stats;
    {
      nb::gil_scoped_release nogil;
      stats = state_->Classify(state_->client->Stats());
    }
    return MessageDict(ValueOrThrow(std::move(stats)));
  }

  nb::list ListModels() {
    absl::StatusOr<v1::ListModelsResponse> models;
    {
      nb::gil_scoped_release nogil;
      models = state_->Classify(state_->client->ListModels());
    }
    v1::ListModelsResponse response = ValueOrThrow(std::move(models));
    nb::list out;
    for (const v1::ModelSummary& m : response.models()) out.append(MessageDict(m));
    return out;
  }

 private:
  std::shared_ptr<ClientState> state_;
};

}  // namespace

void RegisterDaemon(nb::module_& m) {
  nb::class_<DaemonLayer>(m, "DaemonLayer",
                          "One layer leased from bigsmalld (see _core.pyi); the lease lives while "
                          "this object or any tensor it handed out lives.")
      .def_prop_ro("index", &DaemonLayer::index)
      .def_prop_ro("name", &DaemonLayer::name)
      .def_prop_ro("size", &DaemonLayer::size)
      .def_prop_ro("cache_hit", &DaemonLayer::cache_hit)
      .def_prop_ro("on_device", &DaemonLayer::on_device)
      .def_prop_ro("device", &DaemonLayer::device)
      .def_prop_ro("emulated", &DaemonLayer::emulated)
      .def("tensors", &DaemonLayer::Tensors,
           "[(name, dtype, shape, uint8 tensor)]: zero-copy views (host: the daemon's read-only "
           "shared memory; real GPU: the CUDA IPC memory). Emulated device layers: "
           "FAILED_PRECONDITION.")
      .def("copy_to_host", &DaemonLayer::CopyToHost, nb::arg("name"),
           "A host copy (uint8) of one tensor's bytes.")
      .def("verify", &DaemonLayer::Verify,
           "Checks every tensor (on the device for device layers); DATA_LOSS naming tensors.")
      .def("release", &DaemonLayer::Release,
           "Drops this object's reference to the lease; tensors handed out keep it until freed.")
      .def("__repr__", [](const DaemonLayer& l) {
        return absl::StrCat("<DaemonLayer ", l.index(), " ", l.name(), " size=", l.size(),
                            l.on_device() ? absl::StrCat(" device=", l.device()) : "",
                            l.emulated() ? " emulated" : "", ">");
      });

  nb::class_<DaemonStream>(m, "DaemonStream", "Layers of a model from bigsmalld, in order.")
      .def_prop_ro("window", &DaemonStream::window)
      .def("next", &DaemonStream::Next,
           "The next layer, None at the end. Holding `window` layers (or tensors of them) is "
           "FAILED_PRECONDITION.")
      .def("close", &DaemonStream::Close,
           "Stops the stream (idempotent): no more layers (next() returns None). Layers and "
           "tensor views still held keep their leases (and the call) until the last of them "
           "goes, as when the stream is collected.");

  nb::class_<DaemonClient>(m, "DaemonClient", "A connection to bigsmalld (client/client.h).")
      .def(nb::init<const std::optional<std::string>&, int64_t, int64_t>(),
           nb::arg("socket") = nb::none(), nb::arg("rpc_timeout_ms") = 30000,
           nb::arg("stream_idle_timeout_ms") = 60000)
      .def_prop_ro("target", &DaemonClient::target)
      .def("wait_ready", &DaemonClient::WaitReady, nb::arg("timeout_ms"))
      .def("open_model", &DaemonClient::OpenModel, nb::arg("name"))
      .def("describe", &DaemonClient::Describe, nb::arg("model_id"))
      .def("stream", &DaemonClient::Stream, nb::arg("model_id"), nb::arg("from_layer") = 0,
           nb::arg("to_layer") = 0, nb::arg("window") = 0, nb::arg("include_non_layer") = false,
           nb::arg("device") = "", nb::arg("pin_host_memory") = false)
      .def("get_tensors", &DaemonClient::GetTensors, nb::arg("model_id"), nb::arg("names"))
      .def("stats", &DaemonClient::Stats)
      .def("list_models", &DaemonClient::ListModels);
}

}  // namespace bigsmall::python
