#include "client/client.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <condition_variable>
#include <cstring>
#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "codec/device_checksum.h"
#include "codec/status_macros.h"
#include "codec/status_util.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "kernels/device_api.h"

namespace bigsmall::client {

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

std::string TargetFor(const std::string& s) {
  if (absl::StartsWith(s, "unix:") || absl::StartsWith(s, "dns:") ||
      absl::StartsWith(s, "ipv4:") || absl::StartsWith(s, "ipv6:")) {
    return s;
  }
  if (s.find('/') != std::string::npos || s.find(':') == std::string::npos) {
    return "unix:" + s;
  }
  return s;  // host:port
}

std::string DefaultSocketPath() {
  const char* env = std::getenv("BIGSMALL_SOCKET");
  return env != nullptr && *env != '\0' ? env : "/run/bigsmall/bigsmall.sock";
}

namespace {

// Host layer memory: ranges of a few large arena files. Each arena file is
// mapped once per process, shared by every Layer in it, and unmapped when
// the last of those Layers is gone. Keyed by (path, arena_id): the daemon
// never reuses an arena id, and its file names carry a per-start tag.
class ArenaMappings {
 public:
  static ArenaMappings& Get() {
    static ArenaMappings* instance = new ArenaMappings();  // outlives every Layer
    return *instance;
  }

  // The mapping of the arena file holding `host`, opened and checked when
  // not mapped yet: opened without following a symlink (and without
  // blocking on a FIFO), it must be a regular file owned by `daemon_uid`,
  // not writable by group or others, and hold the layer's range.
  absl::StatusOr<std::shared_ptr<const uint8_t>> Map(const v1::HostMemory& host, uid_t daemon_uid,
                                                     std::shared_ptr<gpu::DeviceApi> pin_api) {
    const std::string shown = EscapeForLog(host.path());
    Key key{host.path(), host.arena_id()};
    // Declared before the lock: dropping the last reference unmaps, which
    // takes the lock.
    std::shared_ptr<const uint8_t> mapping;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = maps_.find(key);
    if (it != maps_.end()) mapping = it->second.mapping.lock();
    if (mapping == nullptr) {
      int fd = ::open(host.path().c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
      if (fd < 0) return ErrnoToStatus(errno, absl::StrCat("open layer memory ", shown));
      struct stat st;
      if (::fstat(fd, &st) != 0) {
        absl::Status err = ErrnoToStatus(errno, absl::StrCat("fstat layer memory ", shown));
        ::close(fd);
        return err;
      }
      absl::Status bad;
      if (!S_ISREG(st.st_mode)) {
        bad = absl::PermissionDeniedError(
            absl::StrCat("layer memory ", shown, " is not a regular file; refusing to map it"));
      } else if (st.st_uid != daemon_uid) {
        bad = absl::PermissionDeniedError(absl::StrCat(
            "layer memory ", shown, " is owned by uid ", st.st_uid, ", not by the daemon (uid ",
            daemon_uid, "); refusing to map it"));
      } else if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
        bad = absl::PermissionDeniedError(absl::StrCat(
            "layer memory ", shown, " is writable by group or others; refusing to map it"));
      } else if (st.st_size <= 0) {
        bad = absl::DataLossError(absl::StrCat("layer memory ", shown, " is empty"));
      }
      if (!bad.ok()) {
        ::close(fd);
        return bad;
      }
      const size_t size = static_cast<size_t>(st.st_size);
      void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
      int err = errno;
      ::close(fd);
      if (p == MAP_FAILED) return ErrnoToStatus(err, absl::StrCat("mmap layer memory ", shown));
      auto pin = std::make_shared<PinState>();
      mapping = std::shared_ptr<const uint8_t>(static_cast<const uint8_t*>(p),
                                               [this, key, size, pin](const uint8_t* q) {
                                                 Unmapped(key, q, size, pin);
                                               });
      maps_[key] = Entry{mapping, size, pin};
      it = maps_.find(key);
    }
    const uint64_t file_size = it->second.size;
    if (host.offset() > file_size || host.size() > file_size - host.offset()) {
      return absl::DataLossError(absl::StrCat("layer memory ", shown, " is short: the layer at ",
                                              host.offset(), " of ", host.size(),
                                              " bytes lies outside its ", file_size, " bytes"));
    }
    if (pin_api != nullptr && it->second.pin->api == nullptr) {
      // Once per mapping; unregistered by the deleter before munmap.
      absl::Status pinned = pin_api->HostRegister(const_cast<uint8_t*>(mapping.get()), file_size,
                                                  /*read_only=*/true);
      if (!pinned.ok()) {
        return absl::Status(pinned.code(), absl::StrCat("page-lock layer memory ", shown, ": ",
                                                        pinned.message()));
      }
      it->second.pin->api = std::move(pin_api);
    }
    return mapping;
  }

 private:
  struct Key {
    std::string path;
    uint64_t arena_id = 0;
    auto operator<=>(const Key&) const = default;
  };
  // Whether (and with which runtime) one mapping is page-locked; guarded by mu_.
  struct PinState {
    std::shared_ptr<gpu::DeviceApi> api;
  };
  struct Entry {
    std::weak_ptr<const uint8_t> mapping;
    size_t size = 0;
    std::shared_ptr<PinState> pin;
  };

  void Unmapped(const Key& key, const uint8_t* p, size_t size,
                const std::shared_ptr<PinState>& pin) {
    std::shared_ptr<gpu::DeviceApi> pinned_with;
    {
      std::lock_guard<std::mutex> lock(mu_);
      pinned_with = std::move(pin->api);
      auto it = maps_.find(key);
      if (it != maps_.end() && it->second.pin == pin) maps_.erase(it);
    }
    if (pinned_with != nullptr) {
      absl::Status st = pinned_with->HostUnregister(const_cast<uint8_t*>(p));
      if (!st.ok()) {
        std::fprintf(stderr, "bigsmall client: unpin layer memory: %s\n", st.ToString().c_str());
      }
    }
    ::munmap(const_cast<uint8_t*>(p), size);
  }

  std::mutex mu_;
  std::map<Key, Entry> maps_;
};

// Layer memory must be owned by the daemon: the owner of its Unix socket
// (which the daemon created). Over TCP there is no socket to ask: only files
// of this process's own uid are accepted.
absl::StatusOr<uid_t> DaemonUid(const std::string& socket_path) {
  if (socket_path.empty()) return ::geteuid();
  struct stat st;
  if (::stat(socket_path.c_str(), &st) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("stat the daemon socket ", EscapeForLog(socket_path)));
  }
  return st.st_uid;
}

}  // namespace

absl::StatusOr<std::shared_ptr<const uint8_t>> MapLayerMemory(
    const v1::HostMemory& host, uid_t daemon_uid, std::shared_ptr<gpu::DeviceApi> pin_api) {
  return ArenaMappings::Get().Map(host, daemon_uid, std::move(pin_api));
}

namespace {

// The device runtimes of this process: the real CUDA runtime (made once;
// its absence is remembered with the reason) and emulated ones, one per
// daemon file owner (the emulator's IPC open checks that the memory files
// are the daemon's). Never destroyed: open arenas and pinned mappings hold
// them until the process exits.
class DeviceApis {
 public:
  static DeviceApis& Get() {
    static DeviceApis* instance = new DeviceApis();
    return *instance;
  }

  absl::StatusOr<std::shared_ptr<gpu::DeviceApi>> Cuda() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!cuda_tried_) {
      cuda_tried_ = true;
      absl::StatusOr<std::unique_ptr<gpu::DeviceApi>> made = gpu::MakeCudaDeviceApi();
      if (made.ok()) {
        cuda_ = std::shared_ptr<gpu::DeviceApi>(std::move(*made));
      } else {
        cuda_error_ = made.status();
      }
    }
    if (cuda_ != nullptr) return cuda_;
    return absl::FailedPreconditionError(
        absl::StrCat("no CUDA runtime in this process: ", cuda_error_.message()));
  }

  // The emulated device with the daemon's `uuid`, whose memory files must be
  // owned by `owner`.
  std::shared_ptr<gpu::DeviceApi> Emulated(uid_t owner, const std::string& uuid) {
    std::lock_guard<std::mutex> lock(mu_);
    std::shared_ptr<gpu::DeviceApi>& api = emulated_[{owner, uuid}];
    if (api == nullptr) {
      gpu::EmulatedDeviceOptions options;
      options.expected_owner = owner;
      if (!uuid.empty()) options.uuid = uuid;
      api = std::shared_ptr<gpu::DeviceApi>(gpu::MakeEmulatedDeviceApi(options));
    }
    return api;
  }

  // The local ordinal of the GPU with `uuid` (CUDA_VISIBLE_DEVICES
  // renumbers devices per process, so the daemon's ordinal means nothing
  // here), cached per runtime.
  absl::StatusOr<int> OrdinalOf(const std::shared_ptr<gpu::DeviceApi>& api,
                                const std::string& uuid) {
    std::lock_guard<std::mutex> lock(mu_);
    auto key = std::make_pair(api.get(), uuid);
    if (auto it = ordinals_.find(key); it != ordinals_.end()) return it->second;
    ASSIGN_OR_RETURN(int count, api->DeviceCount());
    for (int i = 0; i < count; ++i) {
      ASSIGN_OR_RETURN(gpu::DeviceInfo info, api->Describe(i));
      if (info.uuid == uuid) {
        ordinals_[key] = i;
        return i;
      }
    }
    return absl::NotFoundError(absl::StrCat(
        "the daemon's GPU ", EscapeForLog(uuid), " is not one of this process's ", count,
        " ", api->name(), " device(s) (CUDA_VISIBLE_DEVICES, or a container without that GPU?)"));
  }

 private:
  std::mutex mu_;
  bool cuda_tried_ = false;
  std::shared_ptr<gpu::DeviceApi> cuda_;
  absl::Status cuda_error_;
  std::map<std::pair<uid_t, std::string>, std::shared_ptr<gpu::DeviceApi>> emulated_;
  std::map<std::pair<gpu::DeviceApi*, std::string>, int> ordinals_;
};

// Open device arenas: each IPC handle opened once per process and closed
// with the last Layer that uses it. Keyed by (daemon, GPU, arena_id,
// handle bytes): a daemon never reuses an arena id, and a restarted daemon
// on the same socket exports new handles.
class DeviceArenas {
 public:
  static DeviceArenas& Get() {
    static DeviceArenas* instance = new DeviceArenas();  // outlives every Layer
    return *instance;
  }

  absl::StatusOr<std::shared_ptr<const DeviceArena>> Open(const std::string& daemon,
                                                          const v1::CudaIpcMemory& cuda,
                                                          std::shared_ptr<gpu::DeviceApi> api,
                                                          int ordinal) {
    if (cuda.ipc_handle().size() != gpu::kIpcHandleBytes) {
      return absl::InvalidArgumentError(absl::StrCat("CUDA IPC handle of arena ", cuda.arena_id(),
                                                     " has ", cuda.ipc_handle().size(),
                                                     " bytes, not ", gpu::kIpcHandleBytes));
    }
    if (cuda.arena_offset() > cuda.arena_size() ||
        cuda.size() > cuda.arena_size() - cuda.arena_offset()) {
      return absl::DataLossError(absl::StrCat(
          "device layer at ", cuda.arena_offset(), " of ", cuda.size(),
          " bytes lies outside its arena ", cuda.arena_id(), " of ", cuda.arena_size(), " bytes"));
    }
    Key key{daemon, cuda.gpu_uuid(), cuda.arena_id(), cuda.ipc_handle()};
    // Before the lock: dropping the last reference closes, which takes it.
    std::shared_ptr<const DeviceArena> arena;
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      auto it = arenas_.find(key);
      if (it == arenas_.end()) break;
      arena = it->second.lock();
      if (arena != nullptr) break;
      // Its last Layer is gone and the close is under way: wait for it, so
      // an open never overlaps the close of the same handle (CUDA refuses a
      // handle that is already open in the process).
      closed_.wait(lock);
    }
    if (arena == nullptr) {
      gpu::IpcHandle handle;
      std::memcpy(handle.data(), cuda.ipc_handle().data(), handle.size());
      absl::StatusOr<uint8_t*> base = api->IpcOpenMemHandle(ordinal, handle);
      if (!base.ok()) {
        return absl::Status(base.status().code(),
                            absl::StrCat("open the CUDA IPC handle of device arena ",
                                         cuda.arena_id(), " (", api->name(),
                                         "): ", base.status().message()));
      }
      auto* opened = new DeviceArena{api, ordinal, *base, cuda.arena_size()};
      arena = std::shared_ptr<const DeviceArena>(opened, [this, key](const DeviceArena* a) {
        Closed(key, a);
      });
      arenas_[key] = arena;
      ++opens_;
    }
    return arena;
  }

  DeviceArenaCounts counts() {
    std::lock_guard<std::mutex> lock(mu_);
    DeviceArenaCounts c;
    for (const auto& [key, weak] : arenas_) c.open += weak.expired() ? 0 : 1;
    c.opens = opens_;
    c.closes = closes_;
    return c;
  }

 private:
  struct Key {
    std::string daemon;
    std::string gpu_uuid;
    uint64_t arena_id = 0;
    std::string handle;
    auto operator<=>(const Key&) const = default;
  };

  void Closed(const Key& key, const DeviceArena* a) {
    absl::Status st = a->api->IpcCloseMemHandle(a->ordinal, a->base);
    if (!st.ok()) {
      std::fprintf(stderr, "bigsmall client: close device arena: %s\n", st.ToString().c_str());
    }
    delete a;
    {
      // Opens of this key wait while its expired entry exists, so the
      // entry is still this arena's.
      std::lock_guard<std::mutex> lock(mu_);
      arenas_.erase(key);
      ++closes_;
    }
    closed_.notify_all();
  }

  std::mutex mu_;
  std::condition_variable closed_;
  std::map<Key, std::weak_ptr<const DeviceArena>> arenas_;
  uint64_t opens_ = 0;
  uint64_t closes_ = 0;
};

}  // namespace

absl::StatusOr<std::shared_ptr<const DeviceArena>> OpenDeviceArena(
    const std::string& daemon, const v1::CudaIpcMemory& cuda,
    std::shared_ptr<gpu::DeviceApi> api, int ordinal) {
  return DeviceArenas::Get().Open(daemon, cuda, std::move(api), ordinal);
}

absl::StatusOr<std::shared_ptr<gpu::DeviceApi>> DeviceApiFor(const v1::CudaIpcMemory& cuda,
                                                             uid_t daemon_uid) {
  if (cuda.emulated()) return DeviceApis::Get().Emulated(daemon_uid, cuda.gpu_uuid());
  return DeviceApis::Get().Cuda();
}

DeviceArenaCounts GetDeviceArenaCounts() { return DeviceArenas::Get().counts(); }

namespace {

// The socket path of a "unix:" target ("" for any other).
std::string UnixSocketPath(const std::string& target) {
  if (!absl::StartsWith(target, "unix:")) return "";
  std::string path = target.substr(5);
  if (absl::StartsWith(path, "//")) path = path.substr(2);
  return path;
}

}  // namespace

// The sync bidi call shared by a LayerStream and the Layers it handed out
// (a Layer may outlive its stream; then releasing is a no-op: the call's end
// already dropped every lease).
class StreamCore {
 public:
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReaderWriter<v1::SessionRequest, v1::SessionResponse>> rw;
  std::mutex write_mu;
  bool writes_done = false;
  std::atomic<uint32_t> held{0};
  // Per-read idle timeout: a watchdog thread cancels the call when a read
  // waits longer than idle_timeout (a stopped or hung daemon).
  std::chrono::milliseconds idle_timeout{0};
  std::mutex watch_mu;
  std::condition_variable watch_cv;
  bool watch_armed = false;
  bool watch_stop = false;
  bool timed_out = false;
  std::chrono::steady_clock::time_point watch_deadline;
  std::thread watchdog;
  // The daemon's Unix socket ("" over TCP): its owner is the daemon's uid,
  // the only owner accepted for layer memory (see MapLayerMemory).
  std::string socket_path;
  // Its owner, read when the stream is made (the socket is gone once a
  // draining daemon stops listening), else at the first layer.
  std::optional<uid_t> daemon_uid;
  // The daemon's address: with the arena id, the key of its open device arenas.
  std::string daemon_key;
  // Host layers are page-locked with this runtime (pin_host_memory), or not.
  std::shared_ptr<gpu::DeviceApi> pin_api;

  // Layer::Verify's device resources, made at the first device Verify of
  // this stream and reused: a stream and a buffer of 8 bytes per tensor
  // (grown, never shrunk). cudaMalloc/cudaFree per call would cost a
  // synchronisation of the whole device, the caller's streams included.
  struct Verifier {
    std::mutex mu;
    std::shared_ptr<gpu::DeviceApi> api;
    int device = -1;
    gpu::StreamRef stream;
    uint8_t* sums = nullptr;
    uint64_t capacity = 0;  // bytes at `sums`
    void Reset() {
      if (api == nullptr) return;
      if (sums != nullptr) (void)api->Free(device, sums);
      if (stream.p != nullptr) (void)api->DestroyStream(stream);
      sums = nullptr;
      capacity = 0;
      stream = {};
      api.reset();
      device = -1;
    }
    ~Verifier() { Reset(); }
  };
  Verifier verifier;

  bool Write(const v1::SessionRequest& request) {
    std::lock_guard<std::mutex> lock(write_mu);
    if (writes_done) return false;
    return rw->Write(request);
  }
  void Release(int32_t layer) {
    v1::SessionRequest request;
    request.mutable_release()->add_layers(layer);
    Write(request);
    held.fetch_sub(1);
  }
  void CloseWrites() {
    std::lock_guard<std::mutex> lock(write_mu);
    if (!writes_done) {
      writes_done = true;
      rw->WritesDone();
    }
  }

  ~StreamCore() {
    {
      std::lock_guard<std::mutex> lock(watch_mu);
      watch_stop = true;
    }
    watch_cv.notify_all();
    if (watchdog.joinable()) watchdog.join();
  }
  // Reads one message, cancelling the call if none comes within
  // idle_timeout. False at the end of the call (then Finish()).
  bool TimedRead(v1::SessionResponse* response) {
    if (idle_timeout.count() <= 0) return rw->Read(response);
    Arm(idle_timeout);
    bool ok = rw->Read(response);
    Disarm();
    return ok;
  }
  // The watchdog cancels the call (TimedOut() then says so) unless Disarm()
  // comes within `timeout`. Usable before the call exists: a cancel that
  // comes first cancels the call as soon as gRPC creates it.
  void Arm(std::chrono::milliseconds timeout) {
    {
      std::lock_guard<std::mutex> lock(watch_mu);
      if (!watchdog.joinable()) watchdog = std::thread([this] { Watch(); });
      watch_armed = true;
      watch_deadline = std::chrono::steady_clock::now() + timeout;
    }
    watch_cv.notify_all();
  }
  // After it returns, the watchdog cancels nothing until the next Arm().
  void Disarm() {
    std::lock_guard<std::mutex> lock(watch_mu);
    watch_armed = false;
  }
  bool TimedOut() {
    std::lock_guard<std::mutex> lock(watch_mu);
    return timed_out;
  }

 private:
  void Watch() {
    std::unique_lock<std::mutex> lock(watch_mu);
    while (!watch_stop) {
      if (!watch_armed) {
        watch_cv.wait(lock);
        continue;
      }
      if (std::chrono::steady_clock::now() < watch_deadline) {
        watch_cv.wait_until(lock, watch_deadline);
        continue;
      }
      timed_out = true;
      watch_armed = false;
      lock.unlock();
      ctx.TryCancel();
      lock.lock();
    }
  }
};

Layer::~Layer() { Release(); }

void Layer::Release() {
  if (released_) return;
  released_ = true;
  tensors_.clear();
  if (drop_pages_ && map_ != nullptr && map_size_ > 0) {
    // The arena stays mapped while other layers of it live, and the pages
    // this layer touched would stay in this process's resident set (shared
    // pages, but they count against a container's memory and any RSS bound):
    // drop this process's page-table entries of the pages wholly inside the
    // layer. The mapping is MAP_SHARED of the daemon's file, so nothing is
    // lost: a later reader of the same pages faults them back in from it.
    const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    const uintptr_t begin = reinterpret_cast<uintptr_t>(map_.get());
    const uintptr_t first = (begin + page - 1) / page * page;
    const uintptr_t last = (begin + map_size_) / page * page;
    if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
  }
  map_.reset();    // the arena is unmapped with its last Layer
  arena_.reset();  // a device arena is closed with its last Layer
  if (core_ != nullptr) core_->Release(handle_.layer().index());
  core_.reset();
}

absl::StatusOr<std::vector<uint8_t>> Layer::CopyToHost(const Tensor& tensor) const {
  if (released_) return absl::FailedPreconditionError("the layer was released");
  if (!on_device()) return std::vector<uint8_t>(tensor.data, tensor.data + tensor.size);
  gpu::DeviceApi& api = *arena_->api;
  std::vector<uint8_t> out(tensor.size);
  if (tensor.size == 0) return out;
  ASSIGN_OR_RETURN(gpu::StreamRef stream, api.CreateStream(device_));
  absl::Status st =
      api.MemcpyAsync(out.data(), tensor.data, tensor.size, gpu::CopyKind::kDeviceToHost, stream);
  absl::Status synced = api.StreamSynchronize(stream);
  if (st.ok()) st = synced;
  absl::Status destroyed = api.DestroyStream(stream);
  if (st.ok()) st = destroyed;
  if (!st.ok()) return st;
  return out;
}

namespace {

absl::Status MismatchError(const std::vector<std::string>& bad, const std::string& layer) {
  std::string names;
  for (size_t i = 0; i < bad.size() && i < 8; ++i) {
    absl::StrAppend(&names, i == 0 ? "" : ", ", EscapeForLog(bad[i]));
  }
  if (bad.size() > 8) absl::StrAppend(&names, ", ... (", bad.size(), " in all)");
  return absl::DataLossError(
      absl::StrCat("layer ", EscapeForLog(layer), ": checksum mismatch in tensor(s) ", names));
}

}  // namespace

absl::Status Layer::Verify(std::vector<std::string>* mismatched) const {
  if (released_) return absl::FailedPreconditionError("the layer was released");
  std::vector<std::string> bad;
  if (!on_device()) {
    for (const Tensor& t : tensors_) {
      if (HashBytes128({t.data, t.size}) != t.hash) bad.push_back(t.name);
    }
  } else {
    // Device checksums on the device: one kernel per tensor into a device
    // buffer of 8 bytes per tensor, copied back once. 1.0 tensors (no
    // device checksum) and unaligned ones: copied back, XXH3-128 (slow).
    gpu::DeviceApi& api = *arena_->api;
    std::vector<size_t> on_gpu;  // indexes into tensors_
    std::vector<size_t> copied;
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const Tensor& t = tensors_[i];
      if (t.has_device_checksum && t.size > 0 && reinterpret_cast<uintptr_t>(t.data) % 8 == 0) {
        on_gpu.push_back(i);
      } else if (t.has_device_checksum && t.size == 0) {
        if (DeviceChecksum(nullptr, 0) != t.device_checksum) bad.push_back(t.name);
      } else {
        copied.push_back(i);
      }
    }
    if (!on_gpu.empty()) {
      StreamCore::Verifier& v = core_->verifier;
      std::lock_guard<std::mutex> lock(v.mu);
      if (v.api != arena_->api || v.device != device_) {
        v.Reset();
        ASSIGN_OR_RETURN(v.stream, api.CreateStream(device_));
        v.api = arena_->api;
        v.device = device_;
      }
      if (v.capacity < 8 * on_gpu.size()) {
        if (v.sums != nullptr) (void)api.Free(device_, v.sums);
        v.sums = nullptr;
        v.capacity = 0;
        const uint64_t want = std::max<uint64_t>(8 * on_gpu.size(), 4096);
        ASSIGN_OR_RETURN(v.sums, api.Malloc(device_, want));
        v.capacity = want;
      }
      std::vector<uint64_t> got(on_gpu.size());
      for (size_t k = 0; k < on_gpu.size(); ++k) {
        const Tensor& t = tensors_[on_gpu[k]];
        RETURN_IF_ERROR(api.LaunchChecksum(t.data, t.size,
                                           reinterpret_cast<uint64_t*>(v.sums) + k, v.stream));
      }
      RETURN_IF_ERROR(api.MemcpyAsync(got.data(), v.sums, 8 * got.size(),
                                      gpu::CopyKind::kDeviceToHost, v.stream));
      RETURN_IF_ERROR(api.StreamSynchronize(v.stream));
      for (size_t k = 0; k < on_gpu.size(); ++k) {
        if (got[k] != tensors_[on_gpu[k]].device_checksum) bad.push_back(tensors_[on_gpu[k]].name);
      }
    }
    for (size_t i : copied) {
      ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, CopyToHost(tensors_[i]));
      if (HashBytes128(bytes) != tensors_[i].hash) bad.push_back(tensors_[i].name);
    }
  }
  if (mismatched != nullptr) *mismatched = bad;
  if (bad.empty()) return absl::OkStatus();
  return MismatchError(bad, name());
}

const Tensor* Layer::Find(const std::string& name) const {
  for (const Tensor& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

LayerStream::~LayerStream() {
  recent_arenas_.clear();
  if (core_ == nullptr) return;
  if (!complete_) core_->ctx.TryCancel();
  core_->CloseWrites();  // after StreamEnd: the daemon ends the call OK
  v1::SessionResponse discard;
  while (core_->TimedRead(&discard)) {
  }
  core_->rw->Finish();
}

absl::StatusOr<std::unique_ptr<Layer>> LayerStream::Next() {
  if (complete_) return nullptr;
  if (window_ > 0 && core_->held.load() >= window_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "holding ", core_->held.load(), " layers = the window; release one before Next()"));
  }
  v1::SessionResponse response;
  if (!core_->TimedRead(&response)) {
    // Close the arenas this stream kept open before the call ends: the
    // daemon may free an arena once every session it was handed to ended,
    // and CUDA leaves freeing memory that an importer still has open
    // undefined (docs/API.md, "Device sessions").
    recent_arenas_.clear();
    core_->CloseWrites();
    absl::Status st = FromGrpc(core_->rw->Finish());
    const bool timed_out = core_->TimedOut();
    complete_ = true;
    core_.reset();
    if (timed_out) {
      return absl::DeadlineExceededError(
          "no message from the daemon within the stream idle timeout; call cancelled");
    }
    // Every successful stream ends with StreamEnd: OK without it is a
    // broken stream, not the end of the model.
    if (st.ok()) return absl::UnavailableError("the stream ended without StreamEnd");
    return st;
  }
  if (response.has_end()) {
    complete_ = true;
    if (response.end().layers_sent() != received_) {
      return absl::DataLossError(absl::StrCat("StreamEnd says ", response.end().layers_sent(),
                                              " layers were sent; this stream received ",
                                              received_));
    }
    return nullptr;
  }
  ++received_;
  if (!response.has_layer() ||
      (!response.layer().memory().has_host() && !response.layer().memory().has_cuda())) {
    return absl::UnimplementedError("the daemon sent a memory kind this client cannot map");
  }
  auto layer = std::unique_ptr<Layer>(new Layer());
  layer->handle_ = std::move(*response.mutable_layer());
  layer->core_ = core_;
  core_->held.fetch_add(1);
  if (!core_->daemon_uid.has_value()) {
    ASSIGN_OR_RETURN(core_->daemon_uid, DaemonUid(core_->socket_path));
  }
  const uint8_t* base = nullptr;
  if (layer->handle_.memory().has_host()) {
    const v1::HostMemory& host = layer->handle_.memory().host();
    ASSIGN_OR_RETURN(std::shared_ptr<const uint8_t> arena,
                     MapLayerMemory(host, *core_->daemon_uid, core_->pin_api));
    base = arena.get() + host.offset();
    layer->map_ = std::shared_ptr<const void>(std::move(arena), base);
    layer->map_size_ = host.size();
    // Page-locked mappings keep their pages (see Layer::Release).
    layer->drop_pages_ = core_->pin_api == nullptr;
  } else {
    const v1::CudaIpcMemory& cuda = layer->handle_.memory().cuda();
    ASSIGN_OR_RETURN(std::shared_ptr<gpu::DeviceApi> api, DeviceApiFor(cuda, *core_->daemon_uid));
    ASSIGN_OR_RETURN(int ordinal, DeviceApis::Get().OrdinalOf(api, cuda.gpu_uuid()));
    ASSIGN_OR_RETURN(layer->arena_, OpenDeviceArena(core_->daemon_key, cuda, api, ordinal));
    auto seen = std::find(recent_arenas_.begin(), recent_arenas_.end(), layer->arena_);
    if (seen != recent_arenas_.end()) recent_arenas_.erase(seen);
    recent_arenas_.push_back(layer->arena_);
    if (recent_arenas_.size() > kRecentArenas) recent_arenas_.erase(recent_arenas_.begin());
    base = layer->arena_->base + cuda.arena_offset();
    layer->map_size_ = cuda.size();
    layer->device_ = ordinal;
  }
  for (const v1::TensorInfo& info : layer->handle_.layer().tensors()) {
    if (info.offset() > layer->map_size_ || info.size() > layer->map_size_ - info.offset()) {
      return absl::DataLossError(
          absl::StrCat("tensor ", EscapeForLog(info.name()), " lies outside its layer"));
    }
    Tensor t;
    t.name = info.name();
    t.dtype = info.dtype();
    t.shape.assign(info.shape().begin(), info.shape().end());
    t.data = base + info.offset();
    t.size = info.size();
    t.device = layer->device_;
    if (info.hash().size() == t.hash.size()) std::memcpy(t.hash.data(), info.hash().data(), 16);
    t.device_checksum = info.device_checksum();
    t.has_device_checksum = info.has_device_checksum();
    layer->tensors_.push_back(std::move(t));
  }
  return layer;
}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const std::string& socket_or_address,
                                                        const ClientOptions& options) {
  std::unique_ptr<Client> client(new Client());
  client->options_ = options;
  client->target_ = TargetFor(socket_or_address);
  client->socket_path_ = UnixSocketPath(client->target_);
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  // Reconnect quickly when the daemon (re)starts. Not
  // GRPC_ARG_MIN_RECONNECT_BACKOFF_MS: it is also gRPC's minimum connect
  // timeout, and 100 ms made a briefly busy daemon fail calls despite their
  // deadline. Calls use wait_for_ready, so they wait for the daemon up to
  // their deadline instead of failing on the first refused connect.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  if (options.keepalive_time.count() > 0) {
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(options.keepalive_time.count()));
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                static_cast<int>(options.keepalive_timeout.count()));
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  }
  client->channel_ = grpc::CreateCustomChannel(TargetFor(socket_or_address),
                                               grpc::InsecureChannelCredentials(), args);
  if (client->channel_ == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("bad daemon address ", socket_or_address));
  }
  client->stub_ = v1::BigSmall::NewStub(client->channel_);
  return client;
}

absl::Status Client::WaitReady(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::system_clock::now() + timeout;
  while (std::chrono::system_clock::now() < deadline) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::min(deadline, std::chrono::system_clock::now() +
                                            std::chrono::milliseconds(500)));
    v1::GetStatsRequest request;
    v1::StatsResponse response;
    grpc::Status st = stub_->GetStats(&ctx, request, &response);
    if (st.ok()) return absl::OkStatus();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return absl::DeadlineExceededError("the daemon did not answer in time");
}

void Client::SetDeadline(grpc::ClientContext* ctx) const {
  // A daemon that is starting, restarting or too busy to accept at once is
  // waited for, up to the deadline (not failed on the first refused connect).
  ctx->set_wait_for_ready(true);
  if (options_.rpc_timeout.count() > 0) {
    ctx->set_deadline(std::chrono::system_clock::now() + options_.rpc_timeout);
  }
}

absl::StatusOr<v1::ModelDescription> Client::OpenModel(const std::string& path) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::OpenModelRequest request;
  request.set_model(path);
  v1::OpenModelResponse response;
  grpc::Status st = stub_->OpenModel(&ctx, request, &response);
  if (!st.ok()) return FromGrpc(st);
  return std::move(*response.mutable_model());
}

absl::StatusOr<v1::ModelDescription> Client::Describe(const std::string& model_id) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::DescribeModelRequest request;
  request.set_model_id(model_id);
  v1::ModelDescription response;
  grpc::Status st = stub_->DescribeModel(&ctx, request, &response);
  if (!st.ok()) return FromGrpc(st);
  return response;
}

absl::StatusOr<std::unique_ptr<LayerStream>> Client::Stream(const std::string& model_id,
                                                            const StreamOptions& options) {
  auto core = std::make_shared<StreamCore>();
  core->socket_path = socket_path_;
  core->daemon_key = target_;
  if (auto uid = DaemonUid(socket_path_); uid.ok()) core->daemon_uid = *uid;
  core->idle_timeout = options_.stream_idle_timeout;
  v1::SessionRequest request;
  v1::StartStream* start = request.mutable_start();
  start->set_model_id(model_id);
  start->set_from_layer(options.from_layer);
  start->set_to_layer(options.to_layer);
  start->set_window(options.window);
  start->set_include_non_layer(options.include_non_layer);
  if (!options.device.empty()) {
    v1::Device* device = start->mutable_device();
    device->set_kind(v1::DEVICE_KIND_CUDA);
    if (absl::StartsWith(options.device, "cuda:")) {
      device->set_name(options.device);
    } else {
      device->set_gpu_uuid(options.device);
    }
  } else if (options.pin_host_memory || options_.pin_host_memory) {
    std::shared_ptr<gpu::DeviceApi> api = options_.pin_api;
    if (api == nullptr) {
      absl::StatusOr<std::shared_ptr<gpu::DeviceApi>> cuda = DeviceApis::Get().Cuda();
      if (!cuda.ok()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "pin_host_memory needs CUDA to page-lock layer memory: ", cuda.status().message()));
      }
      api = *cuda;
    }
    if (absl::StatusOr<int> n = api->DeviceCount(); !n.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "pin_host_memory needs a GPU to page-lock layer memory: ", n.status().message()));
    }
    core->pin_api = std::move(api);
  }
  // Start the call. gRPC's sync bidi call sends its initial metadata in its
  // constructor and, with wait_for_ready (a starting daemon is waited for),
  // blocks there until a connection exists: with no daemon, forever. The
  // watchdog bounds the start (the call and the StartStream write) as it
  // bounds each Next().
  const std::chrono::milliseconds start_timeout = options_.stream_idle_timeout.count() > 0
                                                      ? options_.stream_idle_timeout
                                                      : options_.rpc_timeout;
  core->ctx.set_wait_for_ready(true);
  if (start_timeout.count() > 0) core->Arm(start_timeout);
  core->rw = stub_->Session(&core->ctx);
  const bool wrote = core->Write(request);
  core->Disarm();
  if (core->TimedOut()) {
    core->CloseWrites();
    (void)core->rw->Finish();  // cancelled: ends at once
    // Never connected (no socket, nobody listening, nobody accepting): as
    // gRPC says of a server that is not there. Connected: a daemon that is
    // stuck or too busy to take the call.
    if (channel_->GetState(/*try_to_connect=*/false) != GRPC_CHANNEL_READY) {
      return absl::UnavailableError(absl::StrCat("no bigsmalld answers at ", EscapeForLog(target_),
                                                 " (is it running?): not connected within ",
                                                 start_timeout.count(), " ms"));
    }
    return absl::DeadlineExceededError(absl::StrCat("bigsmalld at ", EscapeForLog(target_),
                                                    " did not take the stream within ",
                                                    start_timeout.count(), " ms"));
  }
  std::unique_ptr<LayerStream> stream(new LayerStream());
  stream->window_ = options.window;
  stream->core_ = core;
  if (!wrote) {
    // The call failed at once; Next() reports the daemon's status.
  }
  return stream;
}

absl::StatusOr<std::vector<Client::OwnedTensor>> Client::GetTensors(
    const std::string& model_id, const std::vector<std::string>& names) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::GetTensorsRequest request;
  request.set_model_id(model_id);
  for (const auto& n : names) request.add_names(n);
  auto reader = stub_->GetTensors(&ctx, request);
  std::vector<OwnedTensor> out;
  v1::TensorChunk chunk;
  while (reader->Read(&chunk)) {
    if (chunk.has_info()) {
      out.push_back({chunk.info(), {}});
      out.back().bytes.reserve(chunk.info().size());
    }
    if (out.empty() || chunk.offset() != out.back().bytes.size()) {
      ctx.TryCancel();
      while (reader->Read(&chunk)) {
      }
      reader->Finish();
      return absl::DataLossError("GetTensors: chunks out of order");
    }
    out.back().bytes.insert(out.back().bytes.end(), chunk.data().begin(), chunk.data().end());
  }
  grpc::Status st = reader->Finish();
  if (!st.ok()) return FromGrpc(st);
  return out;
}

absl::StatusOr<v1::ListModelsResponse> Client::ListModels() {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::ListModelsResponse response;
  grpc::Status st = stub_->ListModels(&ctx, v1::ListModelsRequest(), &response);
  if (!st.ok()) return FromGrpc(st);
  return response;
}

absl::StatusOr<v1::StatsResponse> Client::Stats() {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::StatsResponse response;
  grpc::Status st = stub_->GetStats(&ctx, v1::GetStatsRequest(), &response);
  if (!st.ok()) return FromGrpc(st);
  return response;
}

absl::StatusOr<v1::EvictResponse> Client::Evict(const std::string& model_id, bool unload) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::EvictRequest request;
  request.set_model_id(model_id);
  request.set_unload(unload);
  v1::EvictResponse response;
  grpc::Status st = stub_->Evict(&ctx, request, &response);
  if (!st.ok()) return FromGrpc(st);
  return response;
}

}  // namespace bigsmall::client
