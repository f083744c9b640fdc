#include "daemon/device_arena.h"

#include "absl/strings/str_cat.h"
#include "daemon/layer_cache.h"
#include "spdlog/spdlog.h"

namespace bigsmall::daemon {

absl::StatusOr<std::unique_ptr<DeviceArena>> DeviceArena::Create(gpu::DeviceApi* api, int device,
                                                                 uint64_t id, uint64_t capacity) {
  absl::StatusOr<uint8_t*> base = api->Malloc(device, capacity);
  if (!base.ok()) {
    absl::Status st(base.status().code(), absl::StrCat("allocate a ", capacity,
                                                       "-byte arena on cuda:", device, ": ",
                                                       base.status().message()));
    return absl::IsResourceExhausted(st) ? MarkAllocationFailure(st) : st;
  }
  absl::StatusOr<gpu::IpcHandle> handle = api->IpcGetMemHandle(device, *base);
  if (!handle.ok()) {
    absl::Status freed = api->Free(device, *base);
    if (!freed.ok()) spdlog::warn("free arena on cuda:{}: {}", device, freed.ToString());
    return absl::Status(handle.status().code(),
                        absl::StrCat("export the IPC handle of an arena on cuda:", device, ": ",
                                     handle.status().message()));
  }
  return std::unique_ptr<DeviceArena>(new DeviceArena(api, device, id, capacity, *base, *handle));
}

DeviceArena::~DeviceArena() {
  // Blocks are gone (the pool drops an arena only when empty), and so is
  // every session that was handed one of its layers (each holds the arenas
  // it was handed until it ends): CUDA leaves cudaFree of exported memory an
  // importer still has open undefined, and clients close their arenas
  // before their call ends.
  absl::Status st = api_->Free(device_, base_);
  if (!st.ok()) spdlog::warn("free arena {} on cuda:{}: {}", id(), device_, st.ToString());
}

std::shared_ptr<ArenaPool> MakeDeviceArenaPool(gpu::DeviceApi* api, int device,
                                               uint64_t arena_size) {
  ArenaPool::Options options;
  options.arena_size = arena_size;
  options.kind = absl::StrCat("cuda:", device);
  return ArenaPool::Create(options, [api, device](uint64_t id, uint64_t capacity)
                                        -> absl::StatusOr<std::unique_ptr<Arena>> {
    auto arena = DeviceArena::Create(api, device, id, capacity);
    if (!arena.ok()) return arena.status();
    return std::unique_ptr<Arena>(std::move(*arena));
  });
}

void FillCudaMemory(const LayerData& data, const std::string& gpu_uuid, bool emulated,
                    v1::CudaIpcMemory* cuda) {
  const Block& block = *data.arena;
  const auto& arena = static_cast<const DeviceArena&>(block.arena());
  cuda->set_ipc_handle(std::string(arena.ipc_handle().begin(), arena.ipc_handle().end()));
  cuda->set_gpu_uuid(gpu_uuid);
  cuda->set_arena_offset(block.offset());
  cuda->set_size(block.size());
  cuda->set_arena_id(block.arena_id());
  cuda->set_arena_size(arena.capacity());
  cuda->set_emulated(emulated);
}

}  // namespace bigsmall::daemon
