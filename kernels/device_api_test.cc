// DeviceApi (kernels/device_api.h): the same test bodies run against the
// emulated device always and against the CUDA runtime when
// MakeCudaDeviceApi succeeds (else they skip, saying why). Emulator-only
// tests cover what CUDA cannot be made to do on purpose here (its file
// checks, op delays, faults that would kill a CUDA context).
//
// The IPC tests start this binary again as a second process
// (`device_api_test --ipc-child ...`, see main at the bottom).
#include "kernels/device_api.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <random>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "codec/device_checksum.h"
#include "codec/dtype.h"
#include "codec/tensor_codec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/launch.h"
#include "kernels/test_group.h"

extern char** environ;

namespace bigsmall::gpu {
namespace {

using ::testing::HasSubstr;

enum class Backend { kEmulated, kCuda };
void PrintTo(Backend b, std::ostream* os) { *os << (b == Backend::kCuda ? "cuda" : "emulated"); }

uint8_t Pattern(uint64_t i, uint8_t seed) { return static_cast<uint8_t>((i * 131u + seed) ^ (i >> 9)); }

std::vector<uint8_t> PatternBytes(uint64_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (uint64_t i = 0; i < n; ++i) v[i] = Pattern(i, seed);
  return v;
}

// A private directory in /dev/shm for one test's emulated device memory.
class ShmTempDir {
 public:
  ShmTempDir() {
    char tmpl[] = "/dev/shm/bsapi-XXXXXX";
    const char* p = ::mkdtemp(tmpl);
    if (p != nullptr) path_ = p;
  }
  ~ShmTempDir() {
    if (!path_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(path_, ec);
    }
  }
  const std::string& path() const { return path_; }
  // Names of the files in it.
  std::vector<std::string> Files() const {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(path_, ec)) out.push_back(e.path().filename());
    return out;
  }

 private:
  std::string path_;
};

std::string HandlePath(const IpcHandle& h) {
  return std::string(reinterpret_cast<const char*>(h.data()) + 4);
}

IpcHandle HandleFor(const std::string& path) {
  IpcHandle h{};
  std::memcpy(h.data(), "BSE1", 4);
  std::memcpy(h.data() + 4, path.data(), std::min<size_t>(path.size(), kIpcHandleBytes - 5));
  return h;
}

class DeviceApiTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    if (GetParam() == Backend::kCuda) {
      absl::StatusOr<std::unique_ptr<DeviceApi>> api = MakeCudaDeviceApi();
      if (!api.ok()) GTEST_SKIP() << "no CUDA device API here: " << api.status();
      api_ = std::move(*api);
    } else {
      ASSERT_FALSE(dir_.path().empty()) << "mkdtemp in /dev/shm failed";
      Remake(0);
    }
  }
  void TearDown() override {
    api_.reset();
    if (GetParam() == Backend::kEmulated) {
      EXPECT_THAT(dir_.Files(), ::testing::IsEmpty()) << "device memory files left behind";
    }
  }
  // The emulator again, with every stream op delayed `delay_us` (the CUDA
  // runtime stays as it is).
  void Remake(uint32_t delay_us) {
    if (GetParam() != Backend::kEmulated) return;
    api_.reset();
    EmulatedDeviceOptions o;
    o.memory_dir = dir_.path();
    o.memory_bytes = 1ull << 30;
    o.op_delay_us = delay_us;
    api_ = MakeEmulatedDeviceApi(o);
  }
  bool emulated() const { return GetParam() == Backend::kEmulated; }

  std::vector<uint8_t> ReadBack(const uint8_t* dev, uint64_t n) {
    std::vector<uint8_t> out(n);
    auto s = api_->CreateStream(0);
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return out;
    EXPECT_TRUE(api_->MemcpyAsync(out.data(), dev, n, CopyKind::kDeviceToHost, *s).ok());
    EXPECT_TRUE(api_->StreamSynchronize(*s).ok());
    EXPECT_TRUE(api_->DestroyStream(*s).ok());
    return out;
  }

  ShmTempDir dir_;
  std::unique_ptr<DeviceApi> api_;
};

INSTANTIATE_TEST_SUITE_P(Backends, DeviceApiTest, ::testing::Values(Backend::kEmulated, Backend::kCuda),
                         [](const auto& info) { return info.param == Backend::kCuda ? "Cuda" : "Emulated"; });

TEST_P(DeviceApiTest, DescribesDevices) {
  absl::StatusOr<int> count = api_->DeviceCount();
  ASSERT_TRUE(count.ok()) << count.status();
  ASSERT_GE(*count, 1);
  absl::StatusOr<DeviceInfo> info = api_->Describe(0);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->ordinal, 0);
  EXPECT_FALSE(info->name.empty());
  EXPECT_THAT(info->uuid, ::testing::MatchesRegex("GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"));
  EXPECT_GT(info->memory_bytes, 0u);
  EXPECT_GT(info->sm_count, 0);
  EXPECT_EQ(api_->Describe(*count).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(api_->Malloc(*count, 4096).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_P(DeviceApiTest, MallocRefusesZeroAndMoreThanTheDevice) {
  EXPECT_EQ(api_->Malloc(0, 0).status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<DeviceInfo> info = api_->Describe(0);
  ASSERT_TRUE(info.ok());
  absl::StatusOr<uint8_t*> big = api_->Malloc(0, info->memory_bytes + 1);
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted) << big.status();
  EXPECT_THAT(std::string(big.status().message()), HasSubstr("out of memory"));
  EXPECT_TRUE(api_->Free(0, nullptr).ok());
}

TEST_P(DeviceApiTest, CopiesAndMemsetRoundTrip) {
  constexpr uint64_t kBytes = 300000;  // not a multiple of the page size
  absl::StatusOr<uint8_t*> a = api_->Malloc(0, kBytes);
  absl::StatusOr<uint8_t*> b = api_->Malloc(0, kBytes);
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  absl::StatusOr<uint8_t*> pinned = api_->MallocHost(kBytes);
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  const std::vector<uint8_t> src = PatternBytes(kBytes, 3);
  std::memcpy(*pinned, src.data(), kBytes);
  absl::StatusOr<StreamRef> s = api_->CreateStream(0);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_TRUE(api_->MemcpyAsync(*a, *pinned, kBytes, CopyKind::kHostToDevice, *s).ok());
  ASSERT_TRUE(api_->MemcpyAsync(*b, *a, kBytes, CopyKind::kDeviceToDevice, *s).ok());
  ASSERT_TRUE(api_->MemsetAsync(*b + 1000, 0xab, 5000, *s).ok());
  std::vector<uint8_t> out(kBytes);
  ASSERT_TRUE(api_->MemcpyAsync(out.data(), *b, kBytes, CopyKind::kDeviceToHost, *s).ok());
  ASSERT_TRUE(api_->StreamSynchronize(*s).ok());
  std::vector<uint8_t> want = src;
  std::memset(want.data() + 1000, 0xab, 5000);
  EXPECT_TRUE(out == want);
  EXPECT_TRUE(ReadBack(*a, kBytes) == src);
  EXPECT_TRUE(api_->DestroyStream(*s).ok());
  EXPECT_TRUE(api_->FreeHost(*pinned).ok());
  EXPECT_TRUE(api_->Free(0, *a).ok());
  EXPECT_TRUE(api_->Free(0, *b).ok());
}

// Stream B copies what stream A uploads, after waiting on A's event. With
// the emulator every op is delayed, so a missing wait would copy zeros.
TEST_P(DeviceApiTest, EventWaitOrdersTwoStreams) {
  Remake(20000);
  constexpr uint64_t kBytes = 65536;
  absl::StatusOr<uint8_t*> x = api_->Malloc(0, kBytes);
  absl::StatusOr<uint8_t*> y = api_->Malloc(0, kBytes);
  ASSERT_TRUE(x.ok() && y.ok());
  absl::StatusOr<StreamRef> a = api_->CreateStream(0);
  absl::StatusOr<StreamRef> b = api_->CreateStream(0);
  absl::StatusOr<EventRef> e = api_->CreateEvent(0);
  ASSERT_TRUE(a.ok() && b.ok() && e.ok());
  const std::vector<uint8_t> src = PatternBytes(kBytes, 11);
  ASSERT_TRUE(api_->MemsetAsync(*x, 0, kBytes, *a).ok());
  ASSERT_TRUE(api_->MemsetAsync(*y, 0, kBytes, *b).ok());
  ASSERT_TRUE(api_->StreamSynchronize(*b).ok());
  ASSERT_TRUE(api_->MemsetAsync(*x, 1, kBytes, *a).ok());
  ASSERT_TRUE(api_->MemcpyAsync(*x, src.data(), kBytes, CopyKind::kHostToDevice, *a).ok());
  ASSERT_TRUE(api_->EventRecord(*e, *a).ok());
  ASSERT_TRUE(api_->StreamWaitEvent(*b, *e).ok());
  ASSERT_TRUE(api_->MemcpyAsync(*y, *x, kBytes, CopyKind::kDeviceToDevice, *b).ok());
  std::vector<uint8_t> out(kBytes);
  ASSERT_TRUE(api_->MemcpyAsync(out.data(), *y, kBytes, CopyKind::kDeviceToHost, *b).ok());
  ASSERT_TRUE(api_->StreamSynchronize(*b).ok());
  EXPECT_TRUE(out == src);
  absl::StatusOr<bool> done = api_->EventQuery(*e);
  ASSERT_TRUE(done.ok());
  EXPECT_TRUE(*done);  // b waited for it
  for (auto s : {*a, *b}) EXPECT_TRUE(api_->DestroyStream(s).ok());
  EXPECT_TRUE(api_->DestroyEvent(*e).ok());
  EXPECT_TRUE(api_->Free(0, *x).ok());
  EXPECT_TRUE(api_->Free(0, *y).ok());
}

TEST_P(DeviceApiTest, EventsTimeTheWorkBetweenThem) {
  constexpr uint32_t kDelayUs = 5000;
  Remake(kDelayUs);
  absl::StatusOr<uint8_t*> x = api_->Malloc(0, 1 << 20);
  ASSERT_TRUE(x.ok());
  absl::StatusOr<StreamRef> s = api_->CreateStream(0);
  absl::StatusOr<EventRef> start = api_->CreateEvent(0);
  absl::StatusOr<EventRef> end = api_->CreateEvent(0);
  ASSERT_TRUE(s.ok() && start.ok() && end.ok());
  // Never recorded: nothing to wait for, but no time either.
  absl::StatusOr<bool> q = api_->EventQuery(*start);
  ASSERT_TRUE(q.ok());
  EXPECT_TRUE(*q);
  EXPECT_TRUE(api_->EventSynchronize(*start).ok());
  EXPECT_EQ(api_->EventElapsedMs(*start, *end).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(api_->EventRecord(*start, *s).ok());
  ASSERT_TRUE(api_->MemsetAsync(*x, 7, 1 << 20, *s).ok());
  ASSERT_TRUE(api_->EventRecord(*end, *s).ok());
  ASSERT_TRUE(api_->EventSynchronize(*end).ok());
  absl::StatusOr<float> ms = api_->EventElapsedMs(*start, *end);
  ASSERT_TRUE(ms.ok()) << ms.status();
  EXPECT_GE(*ms, 0.0f);
  if (emulated()) {
    EXPECT_GE(*ms, 2 * kDelayUs / 1000.0f * 0.99f);  // the memset's and end's delays
  }
  EXPECT_TRUE(api_->DestroyStream(*s).ok());
  EXPECT_TRUE(api_->DestroyEvent(*start).ok());
  EXPECT_TRUE(api_->DestroyEvent(*end).ok());
  EXPECT_TRUE(api_->Free(0, *x).ok());
}

TEST_P(DeviceApiTest, HostRegisterTracksRanges) {
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t bytes = 16 * page;
  void* rw = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(rw, MAP_FAILED);
  ASSERT_TRUE(api_->HostRegister(rw, bytes, false).ok());
  EXPECT_EQ(api_->HostRegister(rw, bytes, false).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(api_->HostUnregister(rw).ok());
  EXPECT_EQ(api_->HostUnregister(rw).code(), absl::StatusCode::kInvalidArgument);
  // A read-only shared mapping (what a host-mode client receives).
  ShmTempDir tmp;
  const std::string path = tmp.path() + "/ro";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(bytes)), 0);
  void* ro = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  ASSERT_NE(ro, MAP_FAILED);
  absl::Status st = api_->HostRegister(ro, bytes, true);
  EXPECT_TRUE(st.ok()) << st;
  if (st.ok()) {
    EXPECT_TRUE(api_->HostUnregister(ro).ok());
  }
  ::munmap(ro, bytes);
  if (emulated()) {
    // Unmapped memory is refused, as cudaHostRegister does.
    ::munmap(static_cast<uint8_t*>(rw) + 4 * page, page);
    EXPECT_EQ(api_->HostRegister(rw, bytes, false).code(), absl::StatusCode::kInvalidArgument);
  }
  ::munmap(rw, bytes);
}

// --- IPC across processes ---------------------------------------------------

// A child process running `device_api_test --ipc-child ...`, talked to by
// lines on its stdin / stdout, every read bounded.
class Child {
 public:
  absl::Status Start(const std::vector<std::string>& args) {
    int in[2];
    int out[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) return absl::InternalError("pipe2");
    std::vector<std::string> full = {"/proc/self/exe", "--ipc-child"};
    full.insert(full.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : full) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], STDIN_FILENO);
    posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
    const int err = posix_spawn(&pid_, "/proc/self/exe", &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(in[0]);
    ::close(out[1]);
    to_ = in[1];
    from_ = out[0];
    if (err != 0) return absl::InternalError(absl::StrCat("posix_spawn: errno ", err));
    return absl::OkStatus();
  }
  ~Child() {
    if (to_ >= 0) ::close(to_);
    if (from_ >= 0) ::close(from_);
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      Wait();
    }
  }
  void Send(const std::string& line) {
    const std::string l = line + "\n";
    EXPECT_EQ(::write(to_, l.data(), l.size()), static_cast<ssize_t>(l.size()));
  }
  // The next line, or "" after 60 s or at EOF.
  std::string ReadLine() {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (;;) {
      const size_t nl = buf_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
      if (left <= 0) return "";
      pollfd p{from_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
      char b[512];
      const ssize_t n = ::read(from_, b, sizeof(b));
      if (n <= 0) return "";
      buf_.append(b, static_cast<size_t>(n));
    }
  }
  int Wait() {
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
  int to_ = -1;
  int from_ = -1;
  std::string buf_;
};

std::string Hex(const IpcHandle& h) {
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(h.data()), h.size()));
}

// The second process reads what the first wrote, opens the handle twice
// (same pointer, counted) and, on the emulator, keeps reading it after the
// exporter's Free (CUDA leaves that undefined: its run frees after).
TEST_P(DeviceApiTest, IpcHandleOpensInAnotherProcess) {
  constexpr uint64_t kBytes = 3 * 4096 + 100;
  absl::StatusOr<uint8_t*> dev = api_->Malloc(0, kBytes);
  ASSERT_TRUE(dev.ok());
  const std::vector<uint8_t> src = PatternBytes(kBytes, 42);
  absl::StatusOr<StreamRef> s = api_->CreateStream(0);
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(api_->MemcpyAsync(*dev, src.data(), kBytes, CopyKind::kHostToDevice, *s).ok());
  ASSERT_TRUE(api_->StreamSynchronize(*s).ok());
  ASSERT_TRUE(api_->DestroyStream(*s).ok());
  absl::StatusOr<IpcHandle> h = api_->IpcGetMemHandle(0, *dev);
  ASSERT_TRUE(h.ok()) << h.status();
  if (emulated()) {
    EXPECT_EQ(api_->IpcGetMemHandle(0, *dev + 1).status().code(), absl::StatusCode::kInvalidArgument);
  }

  Child child;
  ASSERT_TRUE(child.Start({emulated() ? "emulated" : "cuda", dir_.path(), Hex(*h), std::to_string(kBytes), "42"}).ok());
  EXPECT_EQ(child.ReadLine(), "opened: bytes match");
  EXPECT_EQ(child.ReadLine(), "reopened: same pointer");
  if (emulated()) {
    ASSERT_TRUE(api_->Free(0, *dev).ok());
    EXPECT_THAT(dir_.Files(), ::testing::IsEmpty());  // unlinked, still mapped by the child
  }
  child.Send(emulated() ? "freed" : "check");
  EXPECT_EQ(child.ReadLine(), "after: bytes match");
  if (emulated()) {
    EXPECT_EQ(child.ReadLine(), "open again: NOT_FOUND");
  }
  EXPECT_EQ(child.ReadLine(), "closed twice");
  EXPECT_EQ(child.Wait(), 0);
  if (!emulated()) {
    EXPECT_TRUE(api_->Free(0, *dev).ok());
  }
}

// The child's side of IpcHandleOpensInAnotherProcess.
int IpcChild(int argc, char** argv) {
  if (argc != 7) return 2;
  const std::string backend = argv[2];
  const std::string hex = argv[4];
  if (hex.size() != 2 * kIpcHandleBytes || hex.find_first_not_of("0123456789abcdef") != std::string::npos) return 2;
  const std::string raw = absl::HexStringToBytes(hex);
  IpcHandle h;
  std::copy(raw.begin(), raw.end(), h.begin());
  const uint64_t bytes = std::stoull(argv[5]);
  const uint8_t seed = static_cast<uint8_t>(std::stoi(argv[6]));
  std::unique_ptr<DeviceApi> api;
  if (backend == "cuda") {
    auto r = MakeCudaDeviceApi();
    if (!r.ok()) {
      std::printf("no cuda: %s\n", r.status().ToString().c_str());
      return 1;
    }
    api = std::move(*r);
  } else {
    EmulatedDeviceOptions o;
    o.memory_dir = argv[3];
    api = MakeEmulatedDeviceApi(o);
  }
  auto say = [](const std::string& s) {
    std::printf("%s\n", s.c_str());
    std::fflush(stdout);
  };
  auto check = [&](const uint8_t* p) -> std::string {
    auto s = api->CreateStream(0);
    if (!s.ok()) return s.status().ToString();
    std::vector<uint8_t> out(bytes);
    absl::Status st = api->MemcpyAsync(out.data(), p, bytes, CopyKind::kDeviceToHost, *s);
    if (st.ok()) st = api->StreamSynchronize(*s);
    api->DestroyStream(*s).IgnoreError();
    if (!st.ok()) return st.ToString();
    return out == PatternBytes(bytes, seed) ? "bytes match" : "bytes differ";
  };
  absl::StatusOr<uint8_t*> p = api->IpcOpenMemHandle(0, h);
  if (!p.ok()) {
    say("open failed: " + p.status().ToString());
    return 1;
  }
  say("opened: " + check(*p));
  absl::StatusOr<uint8_t*> q = api->IpcOpenMemHandle(0, h);
  say(q.ok() && *q == *p ? "reopened: same pointer" : "reopened: " + q.status().ToString());
  std::string line;
  if (!std::getline(std::cin, line)) return 1;
  say("after: " + check(*p));
  if (line == "freed") {
    // A fresh instance (no mapping cached) finds the file gone.
    EmulatedDeviceOptions o;
    o.memory_dir = argv[3];
    auto other = MakeEmulatedDeviceApi(o);
    say(std::string("open again: ") + absl::StatusCodeToString(other->IpcOpenMemHandle(0, h).status().code()));
  }
  const absl::Status c1 = api->IpcCloseMemHandle(0, *p);
  const absl::Status c2 = q.ok() ? api->IpcCloseMemHandle(0, *q) : absl::OkStatus();
  say(c1.ok() && c2.ok() ? "closed twice" : "close: " + c1.ToString() + " " + c2.ToString());
  return 0;
}

class EmulatedDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_FALSE(dir_.path().empty()); }
  std::unique_ptr<DeviceApi> Make(uint64_t memory = 1ull << 30, uint32_t delay_us = 0) {
    EmulatedDeviceOptions o;
    o.memory_dir = dir_.path();
    o.memory_bytes = memory;
    o.op_delay_us = delay_us;
    return MakeEmulatedDeviceApi(o);
  }
  ShmTempDir dir_;
};

// --- Kernels through the API ---------------------------------------------------

// A small layer group: BF16 weight-like tensors encoded by the codec, with
// their device checksums, as the daemon stages them.
using testing::TestGroup;

TestGroup MakeTestGroup() {
  TestGroup g;
  std::mt19937 rng(7);
  std::normal_distribution<float> d(0, 0.03f);
  for (size_t n : {70000, 4099, 1, 20000}) {
    std::vector<uint8_t> bytes;
    for (size_t i = 0; i < n; ++i) {
      const float f = d(rng);
      uint32_t u;
      std::memcpy(&u, &f, 4);
      bytes.push_back(static_cast<uint8_t>(u >> 16));
      bytes.push_back(static_cast<uint8_t>(u >> 24));
    }
    const absl::Status st = testing::AppendTensor(g, bytes, ResolveDtype("BF16"), EncodeOptions{}, 256);
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) return g;
  }
  return g;
}

// Uploads the group and its plan image in one H2D copy on a copy stream;
// the compute stream waits on the copy's event, decodes, and copies the
// results and the layer back. With the emulator's op delay a missing wait
// would decode unstaged bytes.
struct DecodeRun {
  absl::Status check;  // CheckDecodeResults
  std::vector<uint8_t> output;
};

DecodeRun DecodeThroughApi(DeviceApi& api, const TestGroup& g, const std::vector<uint8_t>& staged_override = {}) {
  DecodeRun run;
  absl::StatusOr<DecodePlan> plan = PlanDecode(g.input, g.jobs);
  EXPECT_TRUE(plan.ok()) << plan.status();
  absl::StatusOr<PlanImage> image = BuildPlanImage(*plan, g.jobs);
  EXPECT_TRUE(image.ok()) << image.status();
  if (!plan.ok() || !image.ok()) return run;
  std::vector<uint8_t> staged(plan->input_bytes());
  std::copy(g.input.begin(), g.input.end(), staged.begin());
  EXPECT_TRUE(RunHostPrepass(*plan, g.input, absl::MakeSpan(staged).subspan(plan->prepass_offset)).ok());
  if (!staged_override.empty()) std::copy(staged_override.begin(), staged_override.end(), staged.begin());
  const uint64_t plan_at = (staged.size() + 255) / 256 * 256;
  const uint64_t upload = plan_at + image->bytes.size();
  absl::StatusOr<uint8_t*> pinned = api.MallocHost(upload);
  absl::StatusOr<uint8_t*> in = api.Malloc(0, upload);
  absl::StatusOr<uint8_t*> out = api.Malloc(0, std::max<uint64_t>(image->output_bytes, 1));
  absl::StatusOr<uint8_t*> res = api.Malloc(0, image->results_bytes);
  absl::StatusOr<uint8_t*> scratch = api.Malloc(0, std::max<uint64_t>(image->scratch_bytes, 1));
  absl::StatusOr<StreamRef> copy = api.CreateStream(0);
  absl::StatusOr<StreamRef> compute = api.CreateStream(0);
  absl::StatusOr<EventRef> staged_event = api.CreateEvent(0);
  EXPECT_TRUE(pinned.ok() && in.ok() && out.ok() && res.ok() && scratch.ok() && copy.ok() && compute.ok() &&
              staged_event.ok());
  std::memcpy(*pinned, staged.data(), staged.size());
  std::memcpy(*pinned + plan_at, image->bytes.data(), image->bytes.size());
  EXPECT_TRUE(api.MemcpyAsync(*in, *pinned, upload, CopyKind::kHostToDevice, *copy).ok());
  EXPECT_TRUE(api.EventRecord(*staged_event, *copy).ok());
  EXPECT_TRUE(api.StreamWaitEvent(*compute, *staged_event).ok());
  DecodeLaunch launch;
  launch.input = *in;
  launch.plan = *in + plan_at;
  launch.scratch = *scratch;
  launch.output = *out;
  launch.results = *res;
  {
    // The launch copies what it needs of the host image: drop ours at once.
    PlanImage host_image = *image;
    launch.image = &host_image;
    EXPECT_TRUE(api.LaunchDecode(launch, *compute).ok());
    host_image.bytes.assign(host_image.bytes.size(), 0xff);
  }
  std::vector<uint8_t> results(image->results_bytes);
  run.output.resize(image->output_bytes);
  EXPECT_TRUE(api.MemcpyAsync(results.data(), *res, results.size(), CopyKind::kDeviceToHost, *compute).ok());
  EXPECT_TRUE(api.MemcpyAsync(run.output.data(), *out, run.output.size(), CopyKind::kDeviceToHost, *compute).ok());
  const absl::Status synced = api.StreamSynchronize(*compute);
  EXPECT_TRUE(synced.ok()) << synced;
  run.check = CheckDecodeResults(results.data(), *image);
  EXPECT_TRUE(api.DestroyEvent(*staged_event).ok());
  for (auto s : {*copy, *compute}) EXPECT_TRUE(api.DestroyStream(s).ok());
  for (auto p : {*in, *out, *res, *scratch}) EXPECT_TRUE(api.Free(0, p).ok());
  EXPECT_TRUE(api.FreeHost(*pinned).ok());
  return run;
}

TEST_P(DeviceApiTest, DecodeLaunchIsStreamOrdered) {
  Remake(5000);
  const TestGroup g = MakeTestGroup();
  ASSERT_EQ(g.jobs.size(), 4u);
  DecodeRun run = DecodeThroughApi(*api_, g);
  EXPECT_TRUE(run.check.ok()) << run.check;
  ASSERT_GE(run.output.size(), g.expected.size());
  for (const TensorJob& j : g.jobs) {
    EXPECT_TRUE(std::equal(g.expected.begin() + j.out_offset, g.expected.begin() + j.out_offset + j.out_size,
                           run.output.begin() + j.out_offset))
        << "job at " << j.out_offset;
  }
}

// A chunk corrupted in staging: the device checksum (or the rANS check)
// reports it in the results, never as a stream error.
TEST_P(DeviceApiTest, DecodeReportsCorruptStagingInResults) {
  const TestGroup g = MakeTestGroup();
  ASSERT_FALSE(g.jobs.empty());
  std::vector<uint8_t> bad = g.input;
  bad[g.jobs[0].blob_offset + g.jobs[0].blob_size / 2] ^= 0x10;
  DecodeRun run = DecodeThroughApi(*api_, g, bad);
  EXPECT_EQ(run.check.code(), absl::StatusCode::kDataLoss) << run.check;
  EXPECT_THAT(std::string(run.check.message()), HasSubstr("job 0"));
}

TEST_P(DeviceApiTest, ChecksumLaunchMatchesTheHostChecksum) {
  for (uint64_t n : {uint64_t{0}, uint64_t{5}, uint64_t{8}, uint64_t{4096}, uint64_t{1000003}}) {
    const std::vector<uint8_t> src = PatternBytes(n, static_cast<uint8_t>(n));
    absl::StatusOr<uint8_t*> data = api_->Malloc(0, std::max<uint64_t>(n, 1));
    absl::StatusOr<uint8_t*> word = api_->Malloc(0, 8);
    absl::StatusOr<StreamRef> s = api_->CreateStream(0);
    ASSERT_TRUE(data.ok() && word.ok() && s.ok());
    ASSERT_TRUE(api_->MemcpyAsync(*data, src.data(), n, CopyKind::kHostToDevice, *s).ok());
    ASSERT_TRUE(api_->LaunchChecksum(*data, n, reinterpret_cast<uint64_t*>(*word), *s).ok());
    uint64_t got = 0;
    ASSERT_TRUE(api_->MemcpyAsync(&got, *word, 8, CopyKind::kDeviceToHost, *s).ok());
    ASSERT_TRUE(api_->StreamSynchronize(*s).ok());
    EXPECT_EQ(got, DeviceChecksum(src.data(), src.size())) << n << " bytes";
    EXPECT_EQ(api_->LaunchChecksum(*data + 1, n, reinterpret_cast<uint64_t*>(*word), *s).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(api_->DestroyStream(*s).ok());
    EXPECT_TRUE(api_->Free(0, *data).ok());
    EXPECT_TRUE(api_->Free(0, *word).ok());
  }
}

// The launches refuse what the CUDA kernels cannot run (a missing plan or
// results buffer, a plan not 16-byte aligned, results not 8-byte aligned, a
// null checksum word) when they are enqueued, as INVALID_ARGUMENT, on both
// backends: the emulator must not accept a launch that the GPU refuses.
TEST_P(DeviceApiTest, LaunchesRefuseBadBuffersWhenEnqueued) {
  absl::StatusOr<uint8_t*> p = api_->Malloc(0, 1 << 16);
  absl::StatusOr<StreamRef> s = api_->CreateStream(0);
  ASSERT_TRUE(p.ok() && s.ok());
  PlanImage image;
  image.results_bytes = 64;
  DecodeLaunch good;
  good.input = *p;
  good.plan = *p + 4096;
  good.output = *p + 8192;
  good.results = *p + 16384;
  good.image = &image;
  struct Case {
    const char* what;
    DecodeLaunch launch;
  };
  std::vector<Case> cases;
  cases.push_back({"plan misaligned", good});
  cases.back().launch.plan = *p + 4096 + 8;
  cases.push_back({"results misaligned", good});
  cases.back().launch.results = *p + 16384 + 4;
  cases.push_back({"no plan", good});
  cases.back().launch.plan = nullptr;
  cases.push_back({"no results", good});
  cases.back().launch.results = nullptr;
  for (const Case& c : cases) {
    EXPECT_EQ(api_->LaunchDecode(c.launch, *s).code(), absl::StatusCode::kInvalidArgument) << c.what;
  }
  EXPECT_EQ(api_->LaunchChecksum(*p, 64, nullptr, *s).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(api_->LaunchChecksum(nullptr, 64, reinterpret_cast<uint64_t*>(*p), *s).code(),
            absl::StatusCode::kInvalidArgument);
  // Nothing was enqueued: the stream is clean.
  EXPECT_TRUE(api_->StreamSynchronize(*s).ok());
  EXPECT_TRUE(api_->DestroyStream(*s).ok());
  EXPECT_TRUE(api_->Free(0, *p).ok());
}

// A kernel reading outside every allocation is an emulated GPU fault: INTERNAL
// at the next sync, sticky for its stream (later work skipped), passed on to
// a stream that waits for the failed work, not to independent streams.
TEST_F(EmulatedDeviceTest, KernelFaultIsStickyForItsStream) {
  auto api = Make();
  absl::StatusOr<uint8_t*> p = api->Malloc(0, 4096);
  absl::StatusOr<StreamRef> s = api->CreateStream(0);
  absl::StatusOr<StreamRef> waiter = api->CreateStream(0);
  absl::StatusOr<StreamRef> other = api->CreateStream(0);
  absl::StatusOr<EventRef> before = api->CreateEvent(0);
  absl::StatusOr<EventRef> after = api->CreateEvent(0);
  ASSERT_TRUE(p.ok() && s.ok() && waiter.ok() && other.ok() && before.ok() && after.ok());
  ASSERT_TRUE(api->MemsetAsync(*p, 1, 4096, *s).ok());
  ASSERT_TRUE(api->EventRecord(*before, *s).ok());
  // Enqueueing succeeds: the fault happens when the kernel runs.
  ASSERT_TRUE(api->LaunchChecksum(*p, 8192, reinterpret_cast<uint64_t*>(*p), *s).ok());
  ASSERT_TRUE(api->MemsetAsync(*p, 2, 4096, *s).ok());  // skipped
  ASSERT_TRUE(api->EventRecord(*after, *s).ok());
  ASSERT_TRUE(api->StreamWaitEvent(*waiter, *after).ok());
  ASSERT_TRUE(api->MemsetAsync(*p, 3, 4096, *waiter).ok());  // skipped too
  const absl::Status st = api->StreamSynchronize(*s);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("illegal memory access"));
  EXPECT_TRUE(api->EventSynchronize(*before).ok());
  EXPECT_EQ(api->EventSynchronize(*after).code(), absl::StatusCode::kInternal);
  EXPECT_EQ(api->EventQuery(*after).status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(api->StreamSynchronize(*waiter).code(), absl::StatusCode::kInternal);
  EXPECT_EQ((*p)[0], 1);
  // Sticky: later work on the stream is skipped and the error stays.
  ASSERT_TRUE(api->MemsetAsync(*p, 4, 4096, *s).ok());
  EXPECT_EQ(api->StreamSynchronize(*s).code(), absl::StatusCode::kInternal);
  EXPECT_EQ((*p)[0], 1);
  // Another stream is not affected.
  ASSERT_TRUE(api->MemsetAsync(*p, 5, 4096, *other).ok());
  EXPECT_TRUE(api->StreamSynchronize(*other).ok());
  EXPECT_EQ((*p)[0], 5);
  // A decode whose output lies outside its allocation faults the same way.
  PlanImage image;
  image.output_bytes = 8192;
  image.results_bytes = 64;
  DecodeLaunch l;
  l.input = *p;
  l.plan = *p;
  l.output = *p;
  l.results = *p;
  l.image = &image;
  ASSERT_TRUE(api->LaunchDecode(l, *other).ok());
  EXPECT_EQ(api->StreamSynchronize(*other).code(), absl::StatusCode::kInternal);
  // And one whose plan does not parse fails as the kernels report it.
  absl::StatusOr<StreamRef> third = api->CreateStream(0);
  ASSERT_TRUE(third.ok());
  image.output_bytes = 0;
  image.bytes.assign(256, 0);
  ASSERT_TRUE(api->LaunchDecode(l, *third).ok());
  EXPECT_FALSE(api->StreamSynchronize(*third).ok());
}

// --- ResolveDevice ------------------------------------------------------------

TEST_P(DeviceApiTest, ResolveDeviceNames) {
  absl::StatusOr<int> count = api_->DeviceCount();
  ASSERT_TRUE(count.ok());
  absl::StatusOr<DeviceInfo> info = api_->Describe(0);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(ResolveDevice(*api_, "cuda:0").value_or(-1), 0);
  EXPECT_EQ(ResolveDevice(*api_, info->uuid).value_or(-1), 0);
  std::string upper = info->uuid;
  for (size_t i = 4; i < upper.size(); ++i) upper[i] = static_cast<char>(std::toupper(upper[i]));
  EXPECT_EQ(ResolveDevice(*api_, upper).value_or(-1), 0);
  EXPECT_EQ(ResolveDevice(*api_, absl::StrCat("cuda:", *count)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ResolveDevice(*api_, "GPU-deadbeef-0000-0000-0000-000000000000").status().code(),
            absl::StatusCode::kNotFound);
  for (const char* bad : {"", "cuda", "cuda:", "cuda:-1", "cuda:+0", "cuda: 0", "cuda:0x0", "cuda:0 ",
                          "cuda:12345678901", "gpu0", "0", "GPU-", "GPU-1234", "GPU-deadbeef-0000-0000-0000-00000000000g",
                          "GPU-deadbeef-0000-0000-0000-0000000000000", "MIG-deadbeef-0000-0000-0000-000000000000",
                          "GPU-deadbeef00000-0000-0000-000000000000"}) {
    absl::StatusOr<int> r = ResolveDevice(*api_, bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << "'" << bad << "': " << r.status();
  }
  absl::StatusOr<int> r = ResolveDevice(*api_, std::string("cuda:0\n\x01", 8));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), ::testing::Not(HasSubstr("\n")));
}

// --- Emulator only ------------------------------------------------------------


TEST_F(EmulatedDeviceTest, BudgetIsTheDevicesMemory) {
  auto api = Make(1 << 20);
  absl::StatusOr<uint8_t*> a = api->Malloc(0, 600 << 10);
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<uint8_t*> b = api->Malloc(0, 600 << 10);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted) << b.status();
  EXPECT_EQ(dir_.Files().size(), 1u);  // the refused one left no file
  ASSERT_TRUE(api->Free(0, *a).ok());
  EXPECT_EQ(api->Free(0, *a).code(), absl::StatusCode::kInvalidArgument);
  b = api->Malloc(0, 600 << 10);
  ASSERT_TRUE(b.ok()) << b.status();
  api.reset();  // frees what is left
  EXPECT_THAT(dir_.Files(), ::testing::IsEmpty());
}

TEST_F(EmulatedDeviceTest, FullFilesystemIsResourceExhausted) {
  struct statvfs vfs;
  ASSERT_EQ(::statvfs(dir_.path().c_str(), &vfs), 0);
  const uint64_t fs_bytes = static_cast<uint64_t>(vfs.f_blocks) * vfs.f_frsize;
  auto api = Make(1ull << 50);
  // More than the whole filesystem: fallocate refuses it at once (ENOSPC).
  absl::StatusOr<uint8_t*> p = api->Malloc(0, 2 * fs_bytes);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kResourceExhausted) << p.status();
  EXPECT_THAT(dir_.Files(), ::testing::IsEmpty());
  // The budget was given back.
  absl::StatusOr<uint8_t*> q = api->Malloc(0, 4096);
  EXPECT_TRUE(q.ok()) << q.status();
}

TEST_F(EmulatedDeviceTest, UnusableMemoryDirIsFailedPrecondition) {
  EmulatedDeviceOptions o;
  o.memory_dir = dir_.path() + "/missing";
  auto api = MakeEmulatedDeviceApi(o);
  EXPECT_EQ(api->DeviceCount().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(api->Malloc(0, 1).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_EQ(::symlink(dir_.path().c_str(), (dir_.path() + "/link").c_str()), 0);
  o.memory_dir = dir_.path() + "/link";
  EXPECT_EQ(MakeEmulatedDeviceApi(o)->DeviceCount().status().code(), absl::StatusCode::kFailedPrecondition);
  ::unlink((dir_.path() + "/link").c_str());
  o.memory_dir = dir_.path();
  o.file_mode = 0644;
  EXPECT_EQ(MakeEmulatedDeviceApi(o)->DeviceCount().status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(EmulatedDeviceTest, AllocationFilesArePrivate) {
  auto api = Make();
  absl::StatusOr<uint8_t*> p = api->Malloc(0, 10000);
  ASSERT_TRUE(p.ok());
  absl::StatusOr<IpcHandle> h = api->IpcGetMemHandle(0, *p);
  ASSERT_TRUE(h.ok());
  const std::string path = HandlePath(*h);
  EXPECT_TRUE(absl::StartsWith(path, dir_.path() + "/")) << path;
  struct stat st;
  ASSERT_EQ(::lstat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_uid, ::geteuid());
  EXPECT_EQ(st.st_size, 10000);
  EXPECT_GE(static_cast<uint64_t>(st.st_blocks) * 512, 10000u);  // reserved, not sparse
}

TEST_F(EmulatedDeviceTest, ImporterRefusesForgedFiles) {
  auto daemon = Make();
  absl::StatusOr<uint8_t*> p = daemon->Malloc(0, 8192);
  ASSERT_TRUE(p.ok());
  absl::StatusOr<IpcHandle> h = daemon->IpcGetMemHandle(0, *p);
  ASSERT_TRUE(h.ok());
  const std::string path = HandlePath(*h);
  auto client = Make();

  // The exporter itself cannot open it (CUDA: invalid device context).
  EXPECT_EQ(daemon->IpcOpenMemHandle(0, *h).status().code(), absl::StatusCode::kFailedPrecondition);
  // Not owned by the expected uid.
  EmulatedDeviceOptions other;
  other.memory_dir = dir_.path();
  other.expected_owner = ::geteuid() + 1;
  absl::StatusOr<uint8_t*> r = MakeEmulatedDeviceApi(other)->IpcOpenMemHandle(0, *h);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("owned by uid"));
  // A symlink to it.
  const std::string link = dir_.path() + "/link";
  ASSERT_EQ(::symlink(path.c_str(), link.c_str()), 0);
  r = client->IpcOpenMemHandle(0, HandleFor(link));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();  // ELOOP
  ::unlink(link.c_str());
  // Not a regular file.
  const std::string fifo = dir_.path() + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  r = client->IpcOpenMemHandle(0, HandleFor(fifo));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status();
  ::unlink(fifo.c_str());
  // Writable by group, then by others.
  for (mode_t mode : {0620, 0602}) {
    ASSERT_EQ(::chmod(path.c_str(), mode), 0);
    r = client->IpcOpenMemHandle(0, *h);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("writable by group or others"));
  }
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  // Bad magic, no NUL, relative path, missing file.
  IpcHandle bad = *h;
  bad[0] = 'X';
  EXPECT_EQ(client->IpcOpenMemHandle(0, bad).status().code(), absl::StatusCode::kInvalidArgument);
  IpcHandle full;
  full.fill('a');
  std::memcpy(full.data(), "BSE1", 4);
  EXPECT_EQ(client->IpcOpenMemHandle(0, full).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->IpcOpenMemHandle(0, HandleFor("relative")).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->IpcOpenMemHandle(0, HandleFor(dir_.path() + "/gone")).status().code(),
            absl::StatusCode::kNotFound);
  // And the genuine one opens, read-only: writes into it are refused.
  r = client->IpcOpenMemHandle(0, *h);
  ASSERT_TRUE(r.ok()) << r.status();
  absl::StatusOr<StreamRef> s = client->CreateStream(0);
  ASSERT_TRUE(s.ok());
  uint8_t byte = 1;
  EXPECT_EQ(client->MemcpyAsync(*r, &byte, 1, CopyKind::kHostToDevice, *s).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->MemsetAsync(*r, 0, 1, *s).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(client->MemcpyAsync(&byte, *r, 1, CopyKind::kDeviceToHost, *s).ok());
  EXPECT_TRUE(client->StreamSynchronize(*s).ok());
  EXPECT_TRUE(client->IpcCloseMemHandle(0, *r).ok());
  EXPECT_EQ(client->IpcCloseMemHandle(0, *r).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(EmulatedDeviceTest, HandlePathMustFit) {
  std::string deep = dir_.path() + "/" + std::string(40, 'd');
  ASSERT_EQ(::mkdir(deep.c_str(), 0700), 0);
  EmulatedDeviceOptions o;
  o.memory_dir = deep;
  auto api = MakeEmulatedDeviceApi(o);
  absl::StatusOr<uint8_t*> p = api->Malloc(0, 4096);
  ASSERT_TRUE(p.ok()) << p.status();
  absl::StatusOr<IpcHandle> h = api->IpcGetMemHandle(0, *p);
  EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(h.status().message()), HasSubstr("at most 59"));
}

TEST_F(EmulatedDeviceTest, CopiesCheckDeviceRanges) {
  auto api = Make();
  absl::StatusOr<uint8_t*> p = api->Malloc(0, 4096);
  ASSERT_TRUE(p.ok());
  absl::StatusOr<StreamRef> s = api->CreateStream(0);
  ASSERT_TRUE(s.ok());
  std::vector<uint8_t> host(8192);
  EXPECT_EQ(api->MemcpyAsync(*p, host.data(), 4097, CopyKind::kHostToDevice, *s).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(api->MemcpyAsync(host.data(), host.data() + 1, 1, CopyKind::kDeviceToHost, *s).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(api->MemsetAsync(host.data(), 0, 1, *s).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(api->MemsetAsync(*p, 0, 1, StreamRef{}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(api->StreamSynchronize(*s).ok());
}

// Ops run on the stream's worker, after the call returns: with a long op
// delay, MemcpyAsync returns at once while the copy (and an event recorded
// after it) completes only after the delay, and the bytes land by the sync.
TEST_F(EmulatedDeviceTest, StreamOpsRunAsynchronously) {
  constexpr auto kDelay = std::chrono::milliseconds(200);
  auto api = Make(1ull << 30, std::chrono::duration_cast<std::chrono::microseconds>(kDelay).count());
  absl::StatusOr<uint8_t*> p = api->Malloc(0, 4096);
  absl::StatusOr<StreamRef> s = api->CreateStream(0);
  absl::StatusOr<EventRef> e = api->CreateEvent(0);
  ASSERT_TRUE(p.ok() && s.ok() && e.ok());
  const std::vector<uint8_t> src(4096, 0x5a);
  bool observed = false;
  for (int attempt = 0; attempt < 3 && !observed; ++attempt) {
    ASSERT_TRUE(api->MemsetAsync(*p, 0, 4096, *s).ok());
    ASSERT_TRUE(api->StreamSynchronize(*s).ok());
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(api->MemcpyAsync(*p, src.data(), 4096, CopyKind::kHostToDevice, *s).ok());
    const auto returned = std::chrono::steady_clock::now() - t0;
    ASSERT_TRUE(api->EventRecord(*e, *s).ok());
    absl::StatusOr<bool> done = api->EventQuery(*e);
    const bool in_time = std::chrono::steady_clock::now() - t0 < kDelay / 2;
    ASSERT_TRUE(done.ok());
    ASSERT_TRUE(api->StreamSynchronize(*s).ok());
    const auto finished = std::chrono::steady_clock::now() - t0;
    EXPECT_EQ(std::memcmp(*p, src.data(), 4096), 0);  // the emulator's device memory is host memory
    EXPECT_GE(finished, 2 * kDelay);  // the copy's delay, then the record's
    if (in_time) {  // else this machine was too slow to tell: try again
      EXPECT_LT(returned, kDelay / 2) << "MemcpyAsync waited for the copy";
      EXPECT_FALSE(*done);
      observed = true;
    }
  }
  EXPECT_TRUE(observed) << "three tries, each over " << (kDelay / 2).count() << " ms for two calls";
  EXPECT_TRUE(api->DestroyEvent(*e).ok());
}

TEST_F(EmulatedDeviceTest, DestroyStreamDrainsIt) {
  auto api = Make(1ull << 30, 10000);
  absl::StatusOr<uint8_t*> p = api->Malloc(0, 4096);
  ASSERT_TRUE(p.ok());
  absl::StatusOr<StreamRef> s = api->CreateStream(0);
  ASSERT_TRUE(s.ok());
  for (int v = 1; v <= 5; ++v) ASSERT_TRUE(api->MemsetAsync(*p, v, 4096, *s).ok());
  ASSERT_TRUE(api->DestroyStream(*s).ok());
  EXPECT_EQ((*p)[4095], 5);
  EXPECT_EQ(api->StreamSynchronize(*s).code(), absl::StatusCode::kInvalidArgument);  // gone
  // Free waits for queued work on live streams (cudaFree synchronises).
  absl::StatusOr<StreamRef> t = api->CreateStream(0);
  ASSERT_TRUE(t.ok());
  absl::StatusOr<uint8_t*> q = api->Malloc(0, 4096);
  ASSERT_TRUE(q.ok());
  for (int v = 1; v <= 3; ++v) ASSERT_TRUE(api->MemsetAsync(*q, v, 4096, *t).ok());
  ASSERT_TRUE(api->Free(0, *q).ok());
  EXPECT_TRUE(api->StreamSynchronize(*t).ok());
  // Destroying the API with work queued joins the workers.
  for (int v = 1; v <= 3; ++v) ASSERT_TRUE(api->MemsetAsync(*p, v, 4096, *t).ok());
  api.reset();
  EXPECT_THAT(dir_.Files(), ::testing::IsEmpty());
}

// Many threads allocating, copying and freeing at once (TSan checks this).
TEST_F(EmulatedDeviceTest, ConcurrentUse) {
  auto api = Make();
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      absl::StatusOr<StreamRef> s = api->CreateStream(0);
      absl::StatusOr<EventRef> e = api->CreateEvent(0);
      if (!s.ok() || !e.ok()) {
        ++failures;
        return;
      }
      for (int i = 0; i < 20; ++i) {
        const uint64_t n = 1000 + 97 * i;
        absl::StatusOr<uint8_t*> p = api->Malloc(0, n);
        if (!p.ok()) {
          ++failures;
          continue;
        }
        const std::vector<uint8_t> src = PatternBytes(n, static_cast<uint8_t>(t * 31 + i));
        std::vector<uint8_t> out(n);
        bool ok = api->MemcpyAsync(*p, src.data(), n, CopyKind::kHostToDevice, *s).ok() &&
                  api->MemcpyAsync(out.data(), *p, n, CopyKind::kDeviceToHost, *s).ok() &&
                  api->EventRecord(*e, *s).ok() && api->EventSynchronize(*e).ok() && out == src &&
                  api->Free(0, *p).ok();
        if (!ok) ++failures;
      }
      if (!api->DestroyEvent(*e).ok() || !api->DestroyStream(*s).ok()) ++failures;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

}  // namespace
}  // namespace bigsmall::gpu

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--ipc-child") return bigsmall::gpu::IpcChild(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
