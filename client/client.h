// C++ client for bigsmalld: connect, open a model, iterate its layers in
// order (tensors as pointer + dtype + shape into read-only shared memory,
// valid while the Layer lives; destroying it releases the lease), and fetch
// non-layer tensors.
//
//   auto client = Client::Connect("/run/bigsmall/bigsmall.sock").value();
//   auto model = client->OpenModel("/models/llama.bs").value();
//   auto stream = client->Stream(model.model_id(), {}).value();
//   while (true) {
//     auto layer = stream->Next();            // StatusOr<unique_ptr<Layer>>
//     if (!layer.ok()) ...                    // the daemon's error
//     if (*layer == nullptr) break;           // all layers delivered
//     for (const Tensor& t : (*layer)->tensors()) use(t.data, t.dtype, t.shape);
//   }                                         // ~Layer releases it
#ifndef BIGSMALL_CLIENT_CLIENT_H_
#define BIGSMALL_CLIENT_CLIENT_H_

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <atomic>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bigsmall/v1/bigsmall.grpc.pb.h"
#include "codec/hash.h"

namespace bigsmall::client {

// gRPC status -> absl::Status (same codes).
absl::Status FromGrpc(const grpc::Status& status);
// "unix:..." / "host:port" / "/path/to.sock" -> a gRPC target.
std::string TargetFor(const std::string& socket_or_address);
// $BIGSMALL_SOCKET, else /run/bigsmall/bigsmall.sock.
std::string DefaultSocketPath();

// The mapping of the arena file holding a layer's host memory: mapped once
// per process per arena (keyed by path and arena_id; shared by every Layer
// of the arena, unmapped with the last reference), after checking the file:
// opened with O_NOFOLLOW (a symlink is FAILED_PRECONDITION), it must be a
// regular file owned by `daemon_uid` and not writable by group or others
// (else PERMISSION_DENIED) and hold [offset, offset + size) (else
// DATA_LOSS); a missing file is NOT_FOUND. The layer starts at
// mapping + host.offset(). LayerStream::Next uses it with the owner of the
// daemon's Unix socket as `daemon_uid`.
absl::StatusOr<std::shared_ptr<const uint8_t>> MapLayerMemory(const v1::HostMemory& host,
                                                              uid_t daemon_uid);

struct Tensor {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  const uint8_t* data = nullptr;
  uint64_t size = 0;
  Hash128 hash{};  // what the daemon verified the bytes against
};

class StreamCore;

// One leased layer. Its tensors point into a read-only mapping that stays
// valid until the Layer is destroyed.
class Layer {
 public:
  ~Layer();
  Layer(const Layer&) = delete;
  Layer& operator=(const Layer&) = delete;

  int32_t index() const { return handle_.layer().index(); }
  const std::string& name() const { return handle_.layer().name(); }
  const std::vector<Tensor>& tensors() const { return tensors_; }
  const Tensor* Find(const std::string& name) const;
  uint64_t size() const { return map_size_; }
  bool cache_hit() const { return handle_.cache_hit(); }
  const v1::LayerHandle& handle() const { return handle_; }
  // Releases the lease now (also done by the destructor).
  void Release();

 private:
  friend class LayerStream;
  Layer() = default;
  std::shared_ptr<StreamCore> core_;
  v1::LayerHandle handle_;
  // The layer's start in its arena's mapping, which is shared by every Layer
  // of that arena in this process and unmapped with the last of them.
  std::shared_ptr<const void> map_;
  size_t map_size_ = 0;
  std::vector<Tensor> tensors_;
  bool released_ = false;
};

struct StreamOptions {
  int32_t from_layer = 0;
  int32_t to_layer = 0;   // 0: to the end
  uint32_t window = 0;    // 0: the daemon's default
  bool include_non_layer = false;
};

class LayerStream {
 public:
  ~LayerStream();
  // The next layer in order; nullptr once every requested layer was
  // delivered (the daemon's StreamEnd). Holding `window` layers unreleased
  // is FAILED_PRECONDITION. A call that ends without StreamEnd is an error
  // (UNAVAILABLE), even when the daemon's status was OK; no message within
  // ClientOptions::stream_idle_timeout is DEADLINE_EXCEEDED.
  absl::StatusOr<std::unique_ptr<Layer>> Next();
  uint32_t window() const { return window_; }

 private:
  friend class Client;
  LayerStream() = default;
  std::shared_ptr<StreamCore> core_;
  uint32_t window_ = 0;
  uint32_t received_ = 0;  // layers handed out
  bool complete_ = false;
};

struct ClientOptions {
  // Unary calls and GetTensors: the whole call, waiting for a daemon that is
  // starting, restarting or busy (wait_for_ready) up to this long. 0: none.
  std::chrono::milliseconds rpc_timeout{30000};
  // Streams: the longest a Next() (or the final drain) waits for the
  // daemon's next message before the call is cancelled with
  // DEADLINE_EXCEEDED; time the caller spends holding layers does not
  // count. 0: wait forever.
  std::chrono::milliseconds stream_idle_timeout{60000};
  // HTTP/2 keepalive pings while a call is open (a dead peer is detected
  // even without a Next() in progress). Not below the daemon's minimum ping
  // interval (gRPC's default: 5 min), which would get the connection closed.
  std::chrono::milliseconds keepalive_time{300000};
  std::chrono::milliseconds keepalive_timeout{20000};
};

class Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const std::string& socket_or_address,
                                                         const ClientOptions& options = {});
  // Waits until the daemon answers its health check (SERVING).
  absl::Status WaitReady(std::chrono::milliseconds timeout);

  absl::StatusOr<v1::ModelDescription> OpenModel(const std::string& path);
  absl::StatusOr<v1::ModelDescription> Describe(const std::string& model_id);
  absl::StatusOr<std::unique_ptr<LayerStream>> Stream(const std::string& model_id,
                                                      const StreamOptions& options);
  struct OwnedTensor {
    v1::TensorInfo info;
    std::vector<uint8_t> bytes;
  };
  // Named tensors (empty: every non-layer tensor), copied.
  absl::StatusOr<std::vector<OwnedTensor>> GetTensors(const std::string& model_id,
                                                      const std::vector<std::string>& names);
  absl::StatusOr<v1::ListModelsResponse> ListModels();
  absl::StatusOr<v1::StatsResponse> Stats();
  absl::StatusOr<v1::EvictResponse> Evict(const std::string& model_id, bool unload);

  std::shared_ptr<grpc::Channel> channel() { return channel_; }
  v1::BigSmall::Stub& stub() { return *stub_; }

 private:
  Client() = default;
  void SetDeadline(grpc::ClientContext* ctx) const;
  ClientOptions options_;
  std::string socket_path_;  // of a Unix socket target: layer memory must be its owner's
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::BigSmall::Stub> stub_;
};

}  // namespace bigsmall::client

#endif  // BIGSMALL_CLIENT_CLIENT_H_
