// The GPU backend of the load pipeline, over a gpu::DeviceApi: the same
// code runs on real CUDA (gpu::MakeCudaDeviceApi) and on the emulated device
// (gpu::MakeEmulatedDeviceApi); there is no separate emulated path.
//
// Per layer (Decode), after the pipeline read and checked its groups into a
// page-locked staging buffer of this backend:
//   plan    PlanDecode over the staged groups (blob offsets relative to the
//           staging buffer), the host prepass for zstd planes written right
//           after the groups, and the plan image after that: one buffer;
//   upload  ONE H2D copy of it on the copy stream, then an event;
//   decode  the decode kernels on the compute stream, waiting on that event,
//           into a fresh block of a device arena (daemon/device_arena.h);
//           they compare every tensor's 1.1 device checksum on the device;
//   results a D2H copy of the kernels' results on the compute stream, an
//           event, a wait on it, CheckDecodeResults: a corrupt chunk or a
//           checksum mismatch is DATA_LOSS naming the tensor, the block is
//           freed and the layer never published.
// Format 1.0 files carry no device checksums: their tensors are verified by
// copying each back to the host and checking its XXH3-128 (slow; logged once
// per model).
//
// Successive layers overlap on the two streams: layer N+1's upload runs on
// the copy stream while layer N decodes on the compute stream.
//
// Memory outside the device cache's budget (gpu_memory): per GPU, up to 4
// idle device work buffers (a layer's uploaded bytes + results, whole MiB)
// kept for reuse, and page-locked staging on the host (idle: at most
// max_idle_staging).
#ifndef BIGSMALL_DAEMON_DEVICE_BACKEND_H_
#define BIGSMALL_DAEMON_DEVICE_BACKEND_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/backend.h"
#include "kernels/device_api.h"

namespace bigsmall::daemon {

struct DeviceBackendOptions {
  // Idle page-locked staging buffers kept for reuse (bytes); more is freed.
  uint64_t max_idle_staging = 512ull << 20;
};

class DeviceBackend final : public Backend {
 public:
  // `arenas`: device arenas of `device` (MakeDeviceArenaPool); `api` and
  // `arenas` outlive the backend.
  static absl::StatusOr<std::unique_ptr<DeviceBackend>> Create(gpu::DeviceApi* api, int device,
                                                               ArenaPool* arenas,
                                                               const DeviceBackendOptions& options);
  ~DeviceBackend() override;

  const std::string& device() const override { return info_.uuid; }
  absl::StatusOr<std::unique_ptr<StagingBuffer>> AllocateStaging(uint64_t bytes) override;
  absl::StatusOr<std::shared_ptr<LayerData>> Decode(const StagedLayer& layer) override;

  int ordinal() const { return device_; }
  const gpu::DeviceInfo& info() const { return info_; }
  bool emulated() const;
  gpu::DeviceApi* api() const { return api_; }

  struct Stats {
    uint64_t layers = 0;
    uint64_t verify_failures = 0;
    uint64_t host_verified_tensors = 0;  // 1.0 files: copied back and hashed
    uint64_t uploaded_bytes = 0;
    uint64_t staging_allocations = 0;    // MallocHost calls
  };
  Stats stats() const;

 private:
  class PinnedStaging;
  DeviceBackend(gpu::DeviceApi* api, int device, ArenaPool* arenas,
                const DeviceBackendOptions& options, gpu::DeviceInfo info);
  // Page-locked memory of at least `bytes` (reused when idle).
  absl::StatusOr<std::unique_ptr<StagingBuffer>> Pinned(uint64_t bytes);
  void ReturnPinned(uint8_t* ptr, uint64_t capacity);
  // Device memory for a layer's upload + scratch + results (reused).
  absl::StatusOr<std::pair<uint8_t*, uint64_t>> TakeWork(uint64_t bytes);
  void ReturnWork(std::pair<uint8_t*, uint64_t> work);
  absl::Status DecodeInto(const StagedLayer& layer, Block& block, bool* host_verify);
  absl::Status VerifyOnHost(const StagedLayer& layer, const Block& block,
                            const std::vector<bool>& needs);

  gpu::DeviceApi* const api_;
  const int device_;
  ArenaPool* const arenas_;
  const DeviceBackendOptions options_;
  const gpu::DeviceInfo info_;
  gpu::StreamRef copy_;
  gpu::StreamRef compute_;
  mutable std::mutex mu_;
  std::vector<std::pair<uint8_t*, uint64_t>> idle_pinned_;
  uint64_t idle_pinned_bytes_ = 0;
  std::vector<std::pair<uint8_t*, uint64_t>> idle_work_;
  std::set<std::string> slow_logged_;  // models whose 1.0 slow path was logged
  Stats stats_;
};

// The device runtime for config.gpu_backend: "auto" (real CUDA when a driver
// and a GPU answer, else none), "cuda" (an error without one), "emulated"
// (one emulated device whose memory files are created in
// `emulated_memory_dir`, the daemon's shm instance dir, mode 0640 like the
// host arenas), "none". `api` is null when there is none, `unavailable`
// saying why.
struct GpuApiChoice {
  std::unique_ptr<gpu::DeviceApi> api;
  std::string unavailable;
};
absl::StatusOr<GpuApiChoice> MakeGpuApi(const std::string& gpu_backend,
                                        const std::string& emulated_memory_dir);

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_DEVICE_BACKEND_H_
