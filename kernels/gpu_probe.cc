// bigsmall-gpu-probe: what this machine's device runtime offers, through
// the DeviceApi (kernels/device_api.h) the daemon and client use.
//
//   bigsmall-gpu-probe [--emulated [--memory-dir DIR]]   devices, one a line
//   bigsmall-gpu-probe --ipc-selftest [--bytes N]        + cross-process IPC
//
// --ipc-selftest allocates N bytes on cuda:0, fills them, exports an IPC
// handle and runs this binary again as a child process (exec, so the child
// has a fresh CUDA context, as a client would) that opens the handle, copies
// the bytes back and compares them. Whatever the runtime said on failure is
// printed as it said it (scripts/gpu_check.sh runs this to learn whether CUDA
// IPC works in a sandbox). Exit status: 0 ok, 1 a failed check, 2 no device
// or bad usage.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "kernels/device_api.h"

extern char** environ;

namespace bigsmall::gpu {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitNoDevice = 2;
constexpr int kChildTimeoutSeconds = 120;

uint8_t Pattern(uint64_t i) { return static_cast<uint8_t>((i * 131u + 7u) ^ (i >> 9)); }

struct Options {
  bool emulated = false;
  std::string memory_dir = "/dev/shm";
  bool ipc_selftest = false;
  uint64_t bytes = 1 << 20;
  std::string ipc_child;  // hex handle: run as the selftest's child
};

absl::StatusOr<std::unique_ptr<DeviceApi>> MakeApi(const Options& o) {
  if (o.emulated) {
    EmulatedDeviceOptions eo;
    eo.memory_dir = o.memory_dir;
    return MakeEmulatedDeviceApi(eo);
  }
  return MakeCudaDeviceApi();
}

// Copies `bytes` of device memory at `device_ptr` to the host and compares
// them with the pattern.
absl::Status CheckPattern(DeviceApi& api, const uint8_t* device_ptr, uint64_t bytes) {
  auto host = api.MallocHost(bytes);
  if (!host.ok()) return host.status();
  auto stream = api.CreateStream(0);
  absl::Status st = stream.status();
  if (st.ok()) {
    st = api.MemcpyAsync(*host, device_ptr, bytes, CopyKind::kDeviceToHost, *stream);
    if (st.ok()) st = api.StreamSynchronize(*stream);
    api.DestroyStream(*stream).IgnoreError();
  }
  for (uint64_t i = 0; st.ok() && i < bytes; ++i) {
    if ((*host)[i] != Pattern(i)) {
      st = absl::DataLossError(absl::StrCat("byte ", i, " is ", (*host)[i], ", expected ", Pattern(i)));
    }
  }
  api.FreeHost(*host).IgnoreError();
  return st;
}

// The child: open, check, close. One line on stdout says how it went.
int RunChild(DeviceApi& api, const Options& o) {
  const bool hex = o.ipc_child.size() == 2 * kIpcHandleBytes &&
                   o.ipc_child.find_first_not_of("0123456789abcdefABCDEF") == std::string::npos;
  const std::string raw = hex ? absl::HexStringToBytes(o.ipc_child) : std::string();
  if (raw.size() != kIpcHandleBytes) {
    std::printf("FAIL: the handle argument is not %zu hex bytes\n", kIpcHandleBytes);
    return kExitFailed;
  }
  IpcHandle handle;
  std::copy(raw.begin(), raw.end(), handle.begin());
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<uint8_t*> p = api.IpcOpenMemHandle(0, handle);
  const double open_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  if (!p.ok()) {
    std::printf("FAIL: IpcOpenMemHandle: %s\n", p.status().ToString().c_str());
    return kExitFailed;
  }
  absl::Status st = CheckPattern(api, *p, o.bytes);
  absl::Status closed = api.IpcCloseMemHandle(0, *p);
  if (!st.ok()) {
    std::printf("FAIL: opened in %.1f ms, but the bytes differ: %s\n", open_ms, st.ToString().c_str());
    return kExitFailed;
  }
  if (!closed.ok()) {
    std::printf("FAIL: IpcCloseMemHandle: %s\n", closed.ToString().c_str());
    return kExitFailed;
  }
  std::printf("opened in %.1f ms, %llu bytes match\n", open_ms, static_cast<unsigned long long>(o.bytes));
  return kExitOk;
}

// Runs the child; returns its exit status (or a failure) and its output.
absl::StatusOr<int> SpawnChild(const Options& o, const IpcHandle& handle, std::string* output) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return absl::InternalError("pipe2 failed");
  std::vector<std::string> args = {"/proc/self/exe", "--ipc-child",
                                   absl::BytesToHexString(absl::string_view(
                                       reinterpret_cast<const char*>(handle.data()), handle.size())),
                                   "--bytes", std::to_string(o.bytes)};
  if (o.emulated) {
    args.push_back("--emulated");
    args.push_back("--memory-dir");
    args.push_back(o.memory_dir);
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
  pid_t pid = -1;
  const int err = posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  if (err != 0) {
    ::close(fds[0]);
    return absl::InternalError(absl::StrCat("posix_spawn of the child failed: errno ", err));
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(kChildTimeoutSeconds);
  bool timed_out = false;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd pfd{fds[0], POLLIN, 0};
    const int r = ::poll(&pfd, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    char buf[4096];
    const ssize_t n = ::read(fds[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (output->size() < (1 << 16)) output->append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  if (timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (timed_out) return absl::DeadlineExceededError(absl::StrCat("the child ran over ", kChildTimeoutSeconds, " s"));
  if (WIFSIGNALED(status)) return absl::InternalError(absl::StrCat("the child died of signal ", WTERMSIG(status)));
  return WEXITSTATUS(status);
}

int RunSelftest(DeviceApi& api, const Options& o) {
  if (o.bytes == 0) {
    std::printf("ipc-selftest: --bytes must be > 0\n");
    return kExitNoDevice;
  }
  absl::StatusOr<uint8_t*> dev = api.Malloc(0, o.bytes);
  if (!dev.ok()) {
    std::printf("ipc-selftest: FAIL: Malloc: %s\n", dev.status().ToString().c_str());
    return kExitFailed;
  }
  int rc = kExitFailed;
  std::vector<uint8_t> host(o.bytes);
  for (uint64_t i = 0; i < o.bytes; ++i) host[i] = Pattern(i);
  absl::Status st;
  auto stream = api.CreateStream(0);
  st = stream.status();
  if (st.ok()) {
    st = api.MemcpyAsync(*dev, host.data(), o.bytes, CopyKind::kHostToDevice, *stream);
    if (st.ok()) st = api.StreamSynchronize(*stream);
    api.DestroyStream(*stream).IgnoreError();
  }
  absl::StatusOr<IpcHandle> handle = st.ok() ? api.IpcGetMemHandle(0, *dev) : absl::StatusOr<IpcHandle>(st);
  if (!handle.ok()) {
    std::printf("ipc-selftest: FAIL: %s\n", handle.status().ToString().c_str());
  } else {
    std::printf("ipc-selftest: exported %llu bytes of cuda:0\n", static_cast<unsigned long long>(o.bytes));
    std::string output;
    absl::StatusOr<int> child = SpawnChild(o, *handle, &output);
    while (!output.empty() && output.back() == '\n') output.pop_back();
    for (absl::string_view line : absl::StrSplit(output, '\n')) {
      std::printf("ipc-selftest: child: %s\n", std::string(line).c_str());
    }
    if (!child.ok()) {
      std::printf("ipc-selftest: FAIL: %s\n", child.status().ToString().c_str());
    } else if (*child != 0) {
      std::printf("ipc-selftest: FAIL (child exit status %d)\n", *child);
    } else {
      std::printf("ipc-selftest: PASS\n");
      rc = kExitOk;
    }
  }
  const absl::Status freed = api.Free(0, *dev);
  if (!freed.ok()) {
    std::printf("ipc-selftest: FAIL: Free: %s\n", freed.ToString().c_str());
    rc = kExitFailed;
  }
  return rc;
}

int Main(int argc, char** argv) {
  Options o;
  CLI::App app{"bigsmall-gpu-probe: the devices this machine offers, and whether IPC works across processes"};
  app.add_flag("--emulated", o.emulated, "use the emulated device (host memory in shared-memory files)");
  app.add_option("--memory-dir", o.memory_dir, "where the emulated device's memory files live")
      ->capture_default_str();
  app.add_flag("--ipc-selftest", o.ipc_selftest,
               "export an allocation and check that a child process reads it through its IPC handle");
  app.add_option("--bytes", o.bytes, "bytes the self-test allocates")->capture_default_str();
  app.add_option("--ipc-child", o.ipc_child, "internal: run as the self-test's child")->group("");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitNoDevice;
  }
  absl::StatusOr<std::unique_ptr<DeviceApi>> api = MakeApi(o);
  if (!api.ok()) {
    std::printf("%s no device: %s\n", o.emulated ? "emulated" : "cuda", api.status().ToString().c_str());
    return kExitNoDevice;
  }
  if (!o.ipc_child.empty()) return RunChild(**api, o);
  absl::StatusOr<int> count = (*api)->DeviceCount();
  std::printf("backend: %s\n", (*api)->name());
  if (!count.ok()) {
    std::printf("no device: %s\n", count.status().ToString().c_str());
    return kExitNoDevice;
  }
  std::printf("devices: %d\n", *count);
  for (int i = 0; i < *count; ++i) {
    absl::StatusOr<DeviceInfo> info = (*api)->Describe(i);
    if (!info.ok()) {
      std::printf("cuda:%d  %s\n", i, info.status().ToString().c_str());
      continue;
    }
    std::printf("cuda:%d  %s  %s  %llu MiB  %d SMs\n", i, info->name.c_str(), info->uuid.c_str(),
                static_cast<unsigned long long>(info->memory_bytes >> 20), info->sm_count);
  }
  std::fflush(stdout);  // before the child writes to its own stdout
  if (o.ipc_selftest) return RunSelftest(**api, o);
  return kExitOk;
}

}  // namespace
}  // namespace bigsmall::gpu

int main(int argc, char** argv) { return bigsmall::gpu::Main(argc, argv); }
