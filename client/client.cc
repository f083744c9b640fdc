#include "client/client.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <condition_variable>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "codec/status_macros.h"
#include "codec/status_util.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"

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
  absl::StatusOr<std::shared_ptr<const uint8_t>> Map(const v1::HostMemory& host, uid_t daemon_uid) {
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
      mapping = std::shared_ptr<const uint8_t>(static_cast<const uint8_t*>(p),
                                               [this, key, size](const uint8_t* q) {
                                                 Unmapped(key, q, size);
                                               });
      maps_[key] = Entry{mapping, size};
      it = maps_.find(key);
    }
    const uint64_t file_size = it->second.size;
    if (host.offset() > file_size || host.size() > file_size - host.offset()) {
      return absl::DataLossError(absl::StrCat("layer memory ", shown, " is short: the layer at ",
                                              host.offset(), " of ", host.size(),
                                              " bytes lies outside its ", file_size, " bytes"));
    }
    return mapping;
  }

 private:
  struct Key {
    std::string path;
    uint64_t arena_id = 0;
    auto operator<=>(const Key&) const = default;
  };
  struct Entry {
    std::weak_ptr<const uint8_t> mapping;
    size_t size = 0;
  };

  void Unmapped(const Key& key, const uint8_t* p, size_t size) {
    ::munmap(const_cast<uint8_t*>(p), size);
    std::lock_guard<std::mutex> lock(mu_);
    auto it = maps_.find(key);
    if (it != maps_.end() && it->second.mapping.expired()) maps_.erase(it);
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

absl::StatusOr<std::shared_ptr<const uint8_t>> MapLayerMemory(const v1::HostMemory& host,
                                                              uid_t daemon_uid) {
  return ArenaMappings::Get().Map(host, daemon_uid);
}

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
    {
      std::lock_guard<std::mutex> lock(watch_mu);
      if (!watchdog.joinable()) watchdog = std::thread([this] { Watch(); });
      watch_armed = true;
      watch_deadline = std::chrono::steady_clock::now() + idle_timeout;
    }
    watch_cv.notify_all();
    bool ok = rw->Read(response);
    std::lock_guard<std::mutex> lock(watch_mu);
    watch_armed = false;
    return ok;
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
  map_.reset();  // the arena is unmapped with its last Layer
  if (core_ != nullptr) core_->Release(handle_.layer().index());
  core_.reset();
}

const Tensor* Layer::Find(const std::string& name) const {
  for (const Tensor& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

LayerStream::~LayerStream() {
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
  if (!response.has_layer() || !response.layer().memory().has_host()) {
    return absl::UnimplementedError("the daemon sent a memory kind this client cannot map");
  }
  auto layer = std::unique_ptr<Layer>(new Layer());
  layer->handle_ = std::move(*response.mutable_layer());
  layer->core_ = core_;
  core_->held.fetch_add(1);
  const v1::HostMemory& host = layer->handle_.memory().host();
  if (!core_->daemon_uid.has_value()) {
    ASSIGN_OR_RETURN(core_->daemon_uid, DaemonUid(core_->socket_path));
  }
  ASSIGN_OR_RETURN(std::shared_ptr<const uint8_t> arena,
                   MapLayerMemory(host, *core_->daemon_uid));
  const uint8_t* base = arena.get() + host.offset();
  layer->map_ = std::shared_ptr<const void>(std::move(arena), base);
  layer->map_size_ = host.size();
  for (const v1::TensorInfo& info : layer->handle_.layer().tensors()) {
    if (info.offset() > layer->map_size_ || info.size() > layer->map_size_ - info.offset()) {
      return absl::DataLossError(absl::StrCat("tensor ", info.name(), " lies outside its layer"));
    }
    Tensor t;
    t.name = info.name();
    t.dtype = info.dtype();
    t.shape.assign(info.shape().begin(), info.shape().end());
    t.data = base + info.offset();
    t.size = info.size();
    if (info.hash().size() == t.hash.size()) std::memcpy(t.hash.data(), info.hash().data(), 16);
    layer->tensors_.push_back(std::move(t));
  }
  return layer;
}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const std::string& socket_or_address,
                                                        const ClientOptions& options) {
  std::unique_ptr<Client> client(new Client());
  client->options_ = options;
  client->socket_path_ = UnixSocketPath(TargetFor(socket_or_address));
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
  if (auto uid = DaemonUid(socket_path_); uid.ok()) core->daemon_uid = *uid;
  core->idle_timeout = options_.stream_idle_timeout;
  // Wait for a starting daemon; the idle timeout bounds the wait.
  core->ctx.set_wait_for_ready(true);
  core->rw = stub_->Session(&core->ctx);
  v1::SessionRequest request;
  v1::StartStream* start = request.mutable_start();
  start->set_model_id(model_id);
  start->set_from_layer(options.from_layer);
  start->set_to_layer(options.to_layer);
  start->set_window(options.window);
  start->set_include_non_layer(options.include_non_layer);
  std::unique_ptr<LayerStream> stream(new LayerStream());
  stream->window_ = options.window;
  stream->core_ = core;
  if (!core->Write(request)) {
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
