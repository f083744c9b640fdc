// The client's checks on the layer memory it maps (issue 6: a forged file
// in a swapped shm dir must not be mapped).
#include "client/client.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <thread>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "codec/device_checksum.h"
#include "kernels/device_api.h"

namespace bigsmall::client {
namespace {

int CountMappings(const std::string& path) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  int n = 0;
  while (std::getline(maps, line)) n += absl::EndsWith(line, " " + path);
  return n;
}

class MapLayerMemoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/client_testXXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    arena_ = dir_ + "/a1-tag";
    MakeFile(arena_, 0640);
  }
  void TearDown() override { std::system(absl::StrCat("rm -rf '", dir_, "'").c_str()); }

  void MakeFile(const std::string& path, mode_t mode) {
    int fd = open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0600);
    ASSERT_GE(fd, 0);
    std::string bytes(8192, '\0');
    bytes[4096] = 42;
    ASSERT_EQ(write(fd, bytes.data(), bytes.size()), 8192);
    ASSERT_EQ(fchmod(fd, mode), 0);
    close(fd);
  }
  v1::HostMemory Host(const std::string& path, uint64_t id, uint64_t offset = 4096,
                      uint64_t size = 100) {
    v1::HostMemory h;
    h.set_path(path);
    h.set_arena_id(id);
    h.set_offset(offset);
    h.set_size(size);
    return h;
  }
  std::string dir_, arena_;
};

TEST_F(MapLayerMemoryTest, MapsEachArenaOnceAndUnmapsWithTheLastLayer) {
  auto a = MapLayerMemory(Host(arena_, 1, 4096, 100), geteuid());
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ((*a).get()[4096], 42);
  auto b = MapLayerMemory(Host(arena_, 1, 0, 4096), geteuid());
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(a->get(), b->get());  // one mapping for both layers
  EXPECT_EQ(CountMappings(arena_), 1);
  a->reset();
  EXPECT_EQ(CountMappings(arena_), 1);
  b->reset();
  EXPECT_EQ(CountMappings(arena_), 0);
}

TEST_F(MapLayerMemoryTest, RefusesFilesTheDaemonDoesNotOwnOrOthersCanWrite) {
  auto other_owner = MapLayerMemory(Host(arena_, 2), geteuid() + 1);
  EXPECT_EQ(other_owner.status().code(), absl::StatusCode::kPermissionDenied)
      << other_owner.status();
  EXPECT_NE(other_owner.status().message().find("not by the daemon"), std::string::npos);
  std::string writable = dir_ + "/a3-tag";
  MakeFile(writable, 0666);
  auto w = MapLayerMemory(Host(writable, 3), geteuid());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kPermissionDenied) << w.status();
  std::string link = dir_ + "/a4-tag";
  ASSERT_EQ(symlink(arena_.c_str(), link.c_str()), 0);
  auto l = MapLayerMemory(Host(link, 4), geteuid());
  EXPECT_EQ(l.status().code(), absl::StatusCode::kFailedPrecondition) << l.status();
  std::string fifo = dir_ + "/a5-tag";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  auto f = MapLayerMemory(Host(fifo, 5), geteuid());  // and does not block
  EXPECT_EQ(f.status().code(), absl::StatusCode::kPermissionDenied) << f.status();
  EXPECT_EQ(CountMappings(writable), 0);
}

TEST_F(MapLayerMemoryTest, MissingMemoryIsNotFoundAndShortIsDataLoss) {
  // The call ended (drain expired) and the file is gone: not a permission
  // problem.
  auto gone = MapLayerMemory(Host(dir_ + "/a6-tag", 6), geteuid());
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kNotFound) << gone.status();
  auto past_end = MapLayerMemory(Host(arena_, 7, 8192, 1), geteuid());
  EXPECT_EQ(past_end.status().code(), absl::StatusCode::kDataLoss) << past_end.status();
  auto overflow = MapLayerMemory(Host(arena_, 7, UINT64_MAX, 2), geteuid());
  EXPECT_EQ(overflow.status().code(), absl::StatusCode::kDataLoss);
}

// A DeviceApi that records what the client asks of it: host registrations
// and IPC opens/closes (IpcOpenMemHandle "maps" a host buffer). Everything
// else is UNIMPLEMENTED: the client must not need it here.
class RecordingDeviceApi : public gpu::DeviceApi {
 public:
  struct Registration {
    void* ptr;
    uint64_t bytes;
    bool read_only;
  };
  std::mutex mu;
  std::vector<Registration> registered;
  std::vector<void*> unregistered;
  int opens = 0, closes = 0;
  std::vector<uint8_t> device_memory = std::vector<uint8_t>(1 << 16);
  absl::Status register_error;

  const char* name() const override { return "recording"; }
  absl::StatusOr<int> DeviceCount() override { return 1; }
  absl::StatusOr<gpu::DeviceInfo> Describe(int) override { return gpu::DeviceInfo{}; }
  absl::StatusOr<uint8_t*> Malloc(int, uint64_t) override { return No(); }
  absl::Status Free(int, uint8_t*) override { return No(); }
  absl::StatusOr<uint8_t*> MallocHost(uint64_t) override { return No(); }
  absl::Status FreeHost(uint8_t*) override { return No(); }
  absl::Status HostRegister(void* ptr, uint64_t bytes, bool read_only) override {
    std::lock_guard<std::mutex> lock(mu);
    if (!register_error.ok()) return register_error;
    registered.push_back({ptr, bytes, read_only});
    return absl::OkStatus();
  }
  absl::Status HostUnregister(void* ptr) override {
    std::lock_guard<std::mutex> lock(mu);
    unregistered.push_back(ptr);
    return absl::OkStatus();
  }
  absl::StatusOr<gpu::IpcHandle> IpcGetMemHandle(int, uint8_t*) override { return No(); }
  absl::StatusOr<uint8_t*> IpcOpenMemHandle(int, const gpu::IpcHandle& handle) override {
    std::lock_guard<std::mutex> lock(mu);
    ++opens;
    return device_memory.data() + handle[0] * 1024;
  }
  absl::Status IpcCloseMemHandle(int, uint8_t*) override {
    std::lock_guard<std::mutex> lock(mu);
    ++closes;
    return absl::OkStatus();
  }
  absl::StatusOr<gpu::StreamRef> CreateStream(int) override { return No(); }
  absl::Status DestroyStream(gpu::StreamRef) override { return No(); }
  absl::StatusOr<gpu::EventRef> CreateEvent(int) override { return No(); }
  absl::Status DestroyEvent(gpu::EventRef) override { return No(); }
  absl::Status EventRecord(gpu::EventRef, gpu::StreamRef) override { return No(); }
  absl::Status StreamWaitEvent(gpu::StreamRef, gpu::EventRef) override { return No(); }
  absl::Status EventSynchronize(gpu::EventRef) override { return No(); }
  absl::StatusOr<bool> EventQuery(gpu::EventRef) override { return No(); }
  absl::StatusOr<float> EventElapsedMs(gpu::EventRef, gpu::EventRef) override { return No(); }
  absl::Status StreamSynchronize(gpu::StreamRef) override { return No(); }
  absl::Status MemcpyAsync(void*, const void*, uint64_t, gpu::CopyKind, gpu::StreamRef) override {
    return No();
  }
  absl::Status MemsetAsync(void*, int, uint64_t, gpu::StreamRef) override { return No(); }
  absl::Status LaunchDecode(const gpu::DecodeLaunch&, gpu::StreamRef) override { return No(); }
  absl::Status LaunchChecksum(const uint8_t*, uint64_t, uint64_t*, gpu::StreamRef) override {
    return No();
  }

 private:
  static absl::Status No() { return absl::UnimplementedError("not in this test"); }
};

TEST_F(MapLayerMemoryTest, PinsEachMappingOnceReadOnlyAndUnpinsBeforeUnmapping) {
  auto api = std::make_shared<RecordingDeviceApi>();
  // A mapping made without pinning is pinned by the first layer that asks.
  auto plain = MapLayerMemory(Host(arena_, 11, 4096, 100), geteuid());
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_TRUE(api->registered.empty());
  auto a = MapLayerMemory(Host(arena_, 11, 4096, 100), geteuid(), api);
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = MapLayerMemory(Host(arena_, 11, 0, 4096), geteuid(), api);
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(api->registered.size(), 1u);  // once per mapping, not per layer
  EXPECT_EQ(api->registered[0].ptr, a->get());
  EXPECT_EQ(api->registered[0].bytes, 8192u);  // the whole arena file
  EXPECT_TRUE(api->registered[0].read_only);
  plain->reset();
  a->reset();
  EXPECT_TRUE(api->unregistered.empty());
  EXPECT_EQ(CountMappings(arena_), 1);
  b->reset();
  ASSERT_EQ(api->unregistered.size(), 1u);
  EXPECT_EQ(api->unregistered[0], api->registered[0].ptr);
  EXPECT_EQ(CountMappings(arena_), 0);
}

TEST_F(MapLayerMemoryTest, AFailedPinIsReturnedAndLeavesNothingPinned) {
  auto api = std::make_shared<RecordingDeviceApi>();
  api->register_error = absl::FailedPreconditionError("no driver");
  auto a = MapLayerMemory(Host(arena_, 12), geteuid(), api);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kFailedPrecondition) << a.status();
  EXPECT_NE(a.status().message().find("page-lock"), std::string::npos) << a.status();
  EXPECT_EQ(CountMappings(arena_), 0);
  EXPECT_TRUE(api->unregistered.empty());
}

v1::CudaIpcMemory Cuda(uint64_t arena_id, uint8_t slot, uint64_t offset, uint64_t size,
                       uint64_t arena_size = 1024) {
  v1::CudaIpcMemory c;
  std::string handle(gpu::kIpcHandleBytes, '\0');
  handle[0] = static_cast<char>(slot);
  c.set_ipc_handle(handle);
  c.set_gpu_uuid("GPU-test");
  c.set_arena_id(arena_id);
  c.set_arena_offset(offset);
  c.set_size(size);
  c.set_arena_size(arena_size);
  return c;
}

TEST(DeviceArenaTest, OpensEachArenaOnceAndClosesItWithTheLastLayer) {
  auto api = std::make_shared<RecordingDeviceApi>();
  const DeviceArenaCounts before = GetDeviceArenaCounts();
  auto a = OpenDeviceArena("unix:/d1", Cuda(1, 1, 0, 512), api, 0);
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = OpenDeviceArena("unix:/d1", Cuda(1, 1, 512, 512), api, 0);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->get(), b->get());
  EXPECT_EQ((*a)->base, api->device_memory.data() + 1024);
  EXPECT_EQ((*a)->size, 1024u);
  // Another arena, and the same arena id of another daemon: their own opens.
  auto c = OpenDeviceArena("unix:/d1", Cuda(2, 2, 0, 1024), api, 0);
  auto d = OpenDeviceArena("unix:/d2", Cuda(1, 3, 0, 1024), api, 0);
  ASSERT_TRUE(c.ok() && d.ok());
  EXPECT_EQ(api->opens, 3);
  EXPECT_EQ(GetDeviceArenaCounts().open, before.open + 3);
  a->reset();
  EXPECT_EQ(api->closes, 0);
  b->reset();
  EXPECT_EQ(api->closes, 1);
  c->reset();
  d->reset();
  EXPECT_EQ(api->closes, 3);
  EXPECT_EQ(GetDeviceArenaCounts().open, before.open);
  // Reopened after the close: a fresh open.
  auto e = OpenDeviceArena("unix:/d1", Cuda(1, 1, 0, 512), api, 0);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(api->opens, 4);
}

TEST(DeviceArenaTest, ALayerOutsideItsArenaOrABadHandleIsRefusedBeforeOpening) {
  auto api = std::make_shared<RecordingDeviceApi>();
  auto past = OpenDeviceArena("unix:/d3", Cuda(1, 1, 1000, 100), api, 0);
  EXPECT_EQ(past.status().code(), absl::StatusCode::kDataLoss) << past.status();
  auto overflow = OpenDeviceArena("unix:/d3", Cuda(1, 1, 8, UINT64_MAX), api, 0);
  EXPECT_EQ(overflow.status().code(), absl::StatusCode::kDataLoss) << overflow.status();
  v1::CudaIpcMemory short_handle = Cuda(1, 1, 0, 8);
  short_handle.set_ipc_handle("short");
  auto bad = OpenDeviceArena("unix:/d3", short_handle, api, 0);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  EXPECT_EQ(api->opens, 0);
}

TEST(DeviceArenaTest, ConcurrentOpensAndClosesOfOneArenaNeverOverlap) {
  // Open/close churn from threads: at most one open of the handle at a time
  // (each open is closed before the next one starts).
  class Strict : public RecordingDeviceApi {
   public:
    std::atomic<int> open_now{0};
    std::atomic<bool> overlapped{false};
    absl::StatusOr<uint8_t*> IpcOpenMemHandle(int d, const gpu::IpcHandle& h) override {
      if (open_now.fetch_add(1) != 0) overlapped = true;
      return RecordingDeviceApi::IpcOpenMemHandle(d, h);
    }
    absl::Status IpcCloseMemHandle(int d, uint8_t* p) override {
      // A slow close (as CUDA's is) widens the window an overlap needs.
      std::this_thread::sleep_for(std::chrono::microseconds(200));
      open_now.fetch_sub(1);
      return RecordingDeviceApi::IpcCloseMemHandle(d, p);
    }
  };
  auto api = std::make_shared<Strict>();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 100; ++i) {
        auto a = OpenDeviceArena("unix:/d4", Cuda(9, 1, 0, 8), api, 0);
        ASSERT_TRUE(a.ok()) << a.status();
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_FALSE(api->overlapped);
  EXPECT_EQ(api->opens, api->closes);
  EXPECT_EQ(api->open_now, 0);
}

TEST(DeviceArenaTest, OpensAnEmulatedDaemonArenaAndChecksumsItOnTheDevice) {
  // The daemon side: an emulated device exporting one allocation.
  char tmpl[] = "/tmp/client_devXXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  gpu::EmulatedDeviceOptions daemon_options;
  daemon_options.memory_dir = dir;
  std::unique_ptr<gpu::DeviceApi> daemon = gpu::MakeEmulatedDeviceApi(daemon_options);
  auto base = daemon->Malloc(0, 1 << 16);
  ASSERT_TRUE(base.ok()) << base.status();
  std::vector<uint8_t> bytes(4096);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 7 + 1);
  auto stream = daemon->CreateStream(0);
  ASSERT_TRUE(stream.ok());
  ASSERT_TRUE(daemon->MemcpyAsync(*base + 8192, bytes.data(), bytes.size(),
                                  gpu::CopyKind::kHostToDevice, *stream).ok());
  ASSERT_TRUE(daemon->StreamSynchronize(*stream).ok());
  auto handle = daemon->IpcGetMemHandle(0, *base);
  ASSERT_TRUE(handle.ok()) << handle.status();
  v1::CudaIpcMemory cuda;
  cuda.set_ipc_handle(std::string(handle->begin(), handle->end()));
  cuda.set_gpu_uuid(daemon_options.uuid);
  cuda.set_arena_id(1);
  cuda.set_arena_offset(8192);
  cuda.set_size(bytes.size());
  cuda.set_arena_size(1 << 16);
  cuda.set_emulated(true);

  // The client side: its own emulated runtime, expecting the daemon's uid.
  gpu::EmulatedDeviceOptions client_options;
  client_options.memory_dir = dir;
  client_options.expected_owner = geteuid();
  std::shared_ptr<gpu::DeviceApi> api = gpu::MakeEmulatedDeviceApi(client_options);
  auto arena = OpenDeviceArena("unix:/emulated", cuda, api, 0);
  ASSERT_TRUE(arena.ok()) << arena.status();
  auto cs = api->CreateStream(0);
  ASSERT_TRUE(cs.ok());
  auto sum = api->Malloc(0, 8);
  ASSERT_TRUE(sum.ok()) << sum.status();
  ASSERT_TRUE(api->LaunchChecksum((*arena)->base + 8192, bytes.size(),
                                  reinterpret_cast<uint64_t*>(*sum), *cs).ok());
  uint64_t got = 0;
  ASSERT_TRUE(api->MemcpyAsync(&got, *sum, 8, gpu::CopyKind::kDeviceToHost, *cs).ok());
  ASSERT_TRUE(api->StreamSynchronize(*cs).ok());
  EXPECT_EQ(got, DeviceChecksum(bytes.data(), bytes.size()));
  EXPECT_TRUE(api->Free(0, *sum).ok());
  EXPECT_TRUE(api->DestroyStream(*cs).ok());
  arena->reset();
  // Files of another owner are refused.
  client_options.expected_owner = geteuid() + 1;
  std::shared_ptr<gpu::DeviceApi> strict = gpu::MakeEmulatedDeviceApi(client_options);
  auto refused = OpenDeviceArena("unix:/emulated", cuda, strict, 0);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kPermissionDenied) << refused.status();
  EXPECT_TRUE(daemon->DestroyStream(*stream).ok());
  EXPECT_TRUE(daemon->Free(0, *base).ok());
  std::system(absl::StrCat("rm -rf '", dir, "'").c_str());
}

TEST(DeviceApiForTest, EmulatedHandlesGetTheEmulatorAndRealOnesNeedCuda) {
  v1::CudaIpcMemory emulated;
  emulated.set_emulated(true);
  emulated.set_gpu_uuid("GPU-00000000-0000-0000-0000-0000000000aa");
  auto a = DeviceApiFor(emulated, geteuid());
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_STREQ((*a)->name(), "emulated");
  auto info = (*a)->Describe(0);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->uuid, emulated.gpu_uuid());  // the daemon's UUID maps to ordinal 0
  auto again = DeviceApiFor(emulated, geteuid());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(a->get(), again->get());  // one runtime per (owner, device)
  v1::CudaIpcMemory real = emulated;
  real.set_emulated(false);
  auto cuda = DeviceApiFor(real, geteuid());
  std::string why;
  if (gpu::DeviceCount(&why) > 0) {
    EXPECT_TRUE(cuda.ok()) << cuda.status();
  } else {
    // A CUDA-free build, or no driver or GPU: the reason, FAILED_PRECONDITION.
    EXPECT_EQ(cuda.status().code(), absl::StatusCode::kFailedPrecondition) << cuda.status();
    EXPECT_NE(cuda.status().message().find("no CUDA runtime"), std::string::npos)
        << cuda.status();
  }
}

// ---------------------------------------------------------------------------
// Client::Stream without a daemon (no OpenModel first): gRPC's sync bidi call
// starts with wait_for_ready and blocks in its start until a connection
// exists, so the stream's start must be bounded too.

// The outcome of Stream() and the first Next(), run on a thread of its own
// so that a hang fails the test (after `bound`) instead of blocking it.
struct StreamOutcome {
  bool finished = false;
  absl::Status status;
  std::chrono::milliseconds took{0};
};

StreamOutcome StreamWithin(const std::string& socket, const ClientOptions& options,
                           std::chrono::milliseconds bound) {
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    StreamOutcome outcome;
  };
  auto shared = std::make_shared<Shared>();
  auto c = Client::Connect(socket, options);
  EXPECT_TRUE(c.ok()) << c.status();
  if (!c.ok()) return {};
  // Leaked if the call hangs: the thread still uses it.
  Client* client = c->release();
  std::thread([shared, client] {
    const auto start = std::chrono::steady_clock::now();
    absl::Status st;
    {
      absl::StatusOr<std::unique_ptr<LayerStream>> stream = client->Stream("m000000000000", {});
      if (!stream.ok()) {
        st = stream.status();
      } else {
        absl::StatusOr<std::unique_ptr<Layer>> layer = (*stream)->Next();
        st = layer.ok() ? absl::InternalError("a layer from no daemon") : layer.status();
      }
    }
    std::lock_guard<std::mutex> lock(shared->mu);
    shared->outcome.finished = true;
    shared->outcome.status = st;
    shared->outcome.took = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - start);
    shared->cv.notify_all();
    delete client;
  }).detach();
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->cv.wait_for(lock, bound, [&] { return shared->outcome.finished; });
  return shared->outcome;
}

class StreamWithoutDaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/client_streamXXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::system(absl::StrCat("rm -rf '", dir_, "'").c_str()); }
  std::string dir_;
};

TEST_F(StreamWithoutDaemonTest, NoSocketIsUnavailableWithinTheIdleTimeout) {
  ClientOptions options;
  options.stream_idle_timeout = std::chrono::milliseconds(300);
  StreamOutcome got = StreamWithin(dir_ + "/nobody.sock", options, std::chrono::seconds(10));
  ASSERT_TRUE(got.finished) << "Stream()/Next() to no daemon still waits after 10 s";
  EXPECT_EQ(got.status.code(), absl::StatusCode::kUnavailable) << got.status;
  EXPECT_GE(got.took.count(), 250) << "the daemon was not waited for";
  EXPECT_LT(got.took.count(), 5000);
}

TEST_F(StreamWithoutDaemonTest, WithoutAnIdleTimeoutTheRpcTimeoutBoundsTheStart) {
  ClientOptions options;
  options.stream_idle_timeout = std::chrono::milliseconds(0);
  options.rpc_timeout = std::chrono::milliseconds(300);
  StreamOutcome got = StreamWithin(dir_ + "/nobody.sock", options, std::chrono::seconds(10));
  ASSERT_TRUE(got.finished) << "Stream()/Next() to no daemon still waits after 10 s";
  EXPECT_EQ(got.status.code(), absl::StatusCode::kUnavailable) << got.status;
  EXPECT_LT(got.took.count(), 5000);
}

// A socket that is bound and listening but never accepts (a daemon stopped
// before its first accept): the connection never becomes a gRPC one (no
// HTTP/2 SETTINGS from the server), so it never connected: UNAVAILABLE.
TEST_F(StreamWithoutDaemonTest, AListenerThatNeverAnswersIsUnavailableWithinTheIdleTimeout) {
  const std::string path = dir_ + "/silent.sock";
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  ASSERT_LT(path.size(), sizeof(addr.sun_path));
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(fd, 16), 0);
  ClientOptions options;
  options.stream_idle_timeout = std::chrono::milliseconds(300);
  StreamOutcome got = StreamWithin(path, options, std::chrono::seconds(10));
  ::close(fd);
  ASSERT_TRUE(got.finished) << "Stream()/Next() to a silent listener still waits after 10 s";
  EXPECT_EQ(got.status.code(), absl::StatusCode::kUnavailable) << got.status;
  EXPECT_LT(got.took.count(), 5000);
}

}  // namespace
}  // namespace bigsmall::client
