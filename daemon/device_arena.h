// Device arenas: large device allocations (DeviceApi::Malloc, on real CUDA
// cudaMalloc, on the emulator a shared-memory file) that decoded GPU layers
// are carved from by the same ArenaPool/RangeAllocator as host layers
// (daemon/arena_allocator.h). Each arena's IPC handle is exported once, at
// creation (cudaIpcGetMemHandle), and kept: a layer handle is arena id + IPC
// handle + offset + size + GPU UUID (proto CudaIpcMemory), and a client opens
// each arena once per process.
//
// Commit and Decommit do nothing: device memory is committed when Malloc
// returns it (there is no overcommit or hole punching on a GPU), so the
// whole arena counts against the device from creation; the per-device cache
// budget (gpu_memory) limits how much of it layers may occupy, and an arena
// that became empty is dropped by the pool (keeping one spare).
//
// Lifetime: CUDA leaves cudaFree of memory that an importer still has open
// (cudaIpcOpenMemHandle without its Close) undefined, and the daemon cannot
// see a client's close. So a session holds every arena it was handed until
// it ends (service.cc, Block::shared_arena), and the client library closes
// the arenas of a stream before its call ends: a dropped arena is freed
// only when no session that could have it open is left. Memory of arenas a
// live session holds this way is outside the pool's (and the budget's)
// accounting until then; it is at most the arenas that session was handed.
#ifndef BIGSMALL_DAEMON_DEVICE_ARENA_H_
#define BIGSMALL_DAEMON_DEVICE_ARENA_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "bigsmall/v1/bigsmall.pb.h"
#include "daemon/arena_allocator.h"
#include "kernels/device_api.h"

namespace bigsmall::daemon {

struct LayerData;

inline constexpr uint64_t kDefaultGpuArenaSize = 1ull << 30;

class DeviceArena final : public Arena {
 public:
  // Allocates `capacity` bytes on `device` and exports its IPC handle. Out
  // of device memory is an allocation failure (MarkAllocationFailure).
  static absl::StatusOr<std::unique_ptr<DeviceArena>> Create(gpu::DeviceApi* api, int device,
                                                             uint64_t id, uint64_t capacity);
  ~DeviceArena() override;

  uint8_t* base() override { return base_; }  // a device pointer: never dereference on the host
  absl::Status Commit(uint64_t, uint64_t) override { return absl::OkStatus(); }
  void Decommit(uint64_t, uint64_t) override {}
  const gpu::IpcHandle& ipc_handle() const { return handle_; }
  int device() const { return device_; }

 private:
  DeviceArena(gpu::DeviceApi* api, int device, uint64_t id, uint64_t capacity, uint8_t* base,
              const gpu::IpcHandle& handle)
      : Arena(id, capacity), api_(api), device_(device), base_(base), handle_(handle) {}
  gpu::DeviceApi* const api_;
  const int device_;
  uint8_t* const base_;
  const gpu::IpcHandle handle_;
};

// A pool of device arenas of `arena_size` bytes on `device` (kind "cuda:N").
std::shared_ptr<ArenaPool> MakeDeviceArenaPool(gpu::DeviceApi* api, int device,
                                               uint64_t arena_size = kDefaultGpuArenaSize);

// Fills a layer handle's CUDA memory from a device layer's block.
void FillCudaMemory(const LayerData& data, const std::string& gpu_uuid, bool emulated,
                    v1::CudaIpcMemory* cuda);

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_DEVICE_ARENA_H_
