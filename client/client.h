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
//
// Device sessions (StreamOptions::device = "cuda:0" or a GPU UUID): layers
// live in the daemon's GPU memory, shared through CUDA IPC. Each tensor's
// `data` is then a device pointer on local CUDA device `device`; the arena
// holding it is opened once per process (cudaIpcOpenMemHandle is slow) and
// closed when no Layer of it is left (a LayerStream also keeps the arenas of
// its last few layers open). Layer::Verify() checks every tensor on the
// device. See docs/API.md, "Device sessions".
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

namespace bigsmall::gpu {
class DeviceApi;
}  // namespace bigsmall::gpu

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
//
// `pin_api` (optional): page-lock the whole mapping with it once
// (HostRegister, read-only), unregistered just before the mapping goes; a
// mapping already made without pinning is pinned by the first call that
// asks. A failure to pin is returned (the mapping stays usable by others).
absl::StatusOr<std::shared_ptr<const uint8_t>> MapLayerMemory(
    const v1::HostMemory& host, uid_t daemon_uid,
    std::shared_ptr<gpu::DeviceApi> pin_api = nullptr);

// The device memory of a CUDA layer's arena in this process: the daemon's
// IPC handle opened once per (daemon, GPU, arena_id, handle) and shared by
// every Layer of that arena (and the streams that received them); closed
// (IpcCloseMemHandle) with the last reference. `api` is the runtime that opens it (the real CUDA runtime, or
// the emulated one for handles marked `emulated`); `ordinal` the local
// device ordinal of cuda.gpu_uuid. Checks that the layer lies inside the
// arena (else DATA_LOSS) and that the handle has 64 bytes (else
// INVALID_ARGUMENT).
struct DeviceArena {
  std::shared_ptr<gpu::DeviceApi> api;
  int ordinal = 0;
  uint8_t* base = nullptr;
  uint64_t size = 0;
};
absl::StatusOr<std::shared_ptr<const DeviceArena>> OpenDeviceArena(
    const std::string& daemon, const v1::CudaIpcMemory& cuda,
    std::shared_ptr<gpu::DeviceApi> api, int ordinal);
// The runtime that opens `cuda`: the emulated one (one per daemon file
// owner and device UUID) for handles marked `emulated`, expecting its memory
// files to be owned by `daemon_uid`; else the real CUDA runtime (made once
// per process), or FAILED_PRECONDITION saying why there is none.
absl::StatusOr<std::shared_ptr<gpu::DeviceApi>> DeviceApiFor(const v1::CudaIpcMemory& cuda,
                                                             uid_t daemon_uid);

// This process's device arenas (tests, diagnostics): open now, and IPC
// opens and closes since it started.
struct DeviceArenaCounts {
  size_t open = 0;
  uint64_t opens = 0;
  uint64_t closes = 0;
};
DeviceArenaCounts GetDeviceArenaCounts();

struct Tensor {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  // Host layers: a pointer into the read-only mapping. Device layers: a
  // DEVICE pointer on local CUDA device `device` (do not dereference it on
  // the host; copy with the CUDA runtime or Layer::CopyToHost).
  const uint8_t* data = nullptr;
  uint64_t size = 0;
  int device = -1;  // local CUDA ordinal; -1: host memory
  Hash128 hash{};  // what the daemon verified the bytes against
  // Format 1.1 device checksum (codec/device_checksum.h), when the file has one.
  uint64_t device_checksum = 0;
  bool has_device_checksum = false;
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
  // True for a layer in GPU memory (a device session).
  bool on_device() const { return device_ >= 0; }
  int device() const { return device_; }  // local CUDA ordinal, -1: host
  // Checks every tensor against what the daemon published:
  //  * device layers: each tensor's device checksum is computed ON the
  //    device (DeviceApi::LaunchChecksum into a small device buffer, 8 bytes
  //    per tensor copied back) and compared with TensorInfo.device_checksum;
  //    tensors of 1.0 files (no device checksum) are copied back and hashed
  //    with XXH3-128 instead, which is slow (a full device-to-host copy).
  //  * host layers: XXH3-128 of the mapped bytes.
  // A mismatch is DATA_LOSS naming the tensor(s); their names also go to
  // `mismatched` when given. Other errors are the device runtime's.
  absl::Status Verify(std::vector<std::string>* mismatched = nullptr) const;
  // A copy of a tensor's bytes in host memory (device-to-host for device
  // layers).
  absl::StatusOr<std::vector<uint8_t>> CopyToHost(const Tensor& tensor) const;
  // Releases the lease now (also done by the destructor).
  void Release();

 private:
  friend class LayerStream;
  Layer() = default;
  std::shared_ptr<StreamCore> core_;
  v1::LayerHandle handle_;
  // The layer's start in its arena's mapping (host), or a reference to its
  // open device arena (device), shared by every Layer of that arena in this
  // process and unmapped or closed with the last of them.
  std::shared_ptr<const void> map_;
  size_t map_size_ = 0;
  int device_ = -1;
  std::shared_ptr<const DeviceArena> arena_;  // device layers
  std::vector<Tensor> tensors_;
  bool released_ = false;
  // Host layers of an unpinned mapping: Release drops this process's pages
  // of the layer (madvise MADV_DONTNEED), so released layers leave its RSS.
  bool drop_pages_ = false;
};

struct StreamOptions {
  int32_t from_layer = 0;
  int32_t to_layer = 0;   // 0: to the end
  uint32_t window = 0;    // 0: the daemon's default
  bool include_non_layer = false;
  // "" (host memory), "cuda:N" (the daemon's device N) or a GPU UUID
  // ("GPU-..."): sent as StartStream.device (kind CUDA). Layers then come as
  // CUDA IPC handles; see Layer::on_device().
  std::string device;
  // Host layers: page-lock each arena mapping (cudaHostRegister, read-only)
  // so this process's own host-to-device copies of it run at PCIe speed.
  // Also on when ClientOptions::pin_host_memory is set. Without CUDA (no
  // driver, no GPU, a build without it) Client::Stream fails
  // FAILED_PRECONDITION.
  bool pin_host_memory = false;
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
  // A stream keeps the device arenas of its last kRecentArenas layers open.
  static constexpr size_t kRecentArenas = 4;

 private:
  friend class Client;
  LayerStream() = default;
  std::shared_ptr<StreamCore> core_;
  uint32_t window_ = 0;
  uint32_t received_ = 0;  // layers handed out
  bool complete_ = false;
  // The device arenas of the last few layers: kept open while the stream
  // lives, so a consumer that releases each layer before the next does not
  // reopen the same arena (slow) for every layer. Bounded, so a long stream
  // does not keep every arena it ever touched open.
  std::vector<std::shared_ptr<const DeviceArena>> recent_arenas_;
};

struct ClientOptions {
  // Unary calls and GetTensors: the whole call, waiting for a daemon that is
  // starting, restarting or busy (wait_for_ready) up to this long. 0: none.
  std::chrono::milliseconds rpc_timeout{30000};
  // Streams: the longest a Next() (or the final drain) waits for the
  // daemon's next message before the call is cancelled with
  // DEADLINE_EXCEEDED; time the caller spends holding layers does not
  // count. 0: wait forever. Also bounds the start of a stream (Client::Stream).
  std::chrono::milliseconds stream_idle_timeout{60000};
  // HTTP/2 keepalive pings while a call is open (a dead peer is detected
  // even without a Next() in progress). Not below the daemon's minimum ping
  // interval (gRPC's default: 5 min), which would get the connection closed.
  std::chrono::milliseconds keepalive_time{300000};
  std::chrono::milliseconds keepalive_timeout{20000};
  // Every stream of this client pins its host layers (StreamOptions::pin_host_memory).
  bool pin_host_memory = false;
  // The runtime that pins host memory (default: the real CUDA runtime,
  // gpu::MakeCudaDeviceApi). Tests pass an emulated or recording one.
  std::shared_ptr<gpu::DeviceApi> pin_api;
};

class Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const std::string& socket_or_address,
                                                         const ClientOptions& options = {});
  // Waits until the daemon answers its health check (SERVING).
  absl::Status WaitReady(std::chrono::milliseconds timeout);

  absl::StatusOr<v1::ModelDescription> OpenModel(const std::string& path);
  absl::StatusOr<v1::ModelDescription> Describe(const std::string& model_id);
  // Starts a Session call. Its start waits for the daemon (wait_for_ready:
  // a starting daemon is waited for) up to ClientOptions::stream_idle_timeout
  // (when 0: rpc_timeout; both 0: forever), then fails: UNAVAILABLE when the
  // channel never connected (no socket, nobody listening or accepting),
  // DEADLINE_EXCEEDED when it is connected but the call did not start.
  // Errors of the StartStream itself (NOT_FOUND, ...) come from Next().
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
  std::string target_;       // the gRPC target: names the daemon in the device arena cache
  std::string socket_path_;  // of a Unix socket target: layer memory must be its owner's
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::BigSmall::Stub> stub_;
};

}  // namespace bigsmall::client

#endif  // BIGSMALL_CLIENT_CLIENT_H_
