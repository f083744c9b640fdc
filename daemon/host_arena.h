// Host arenas: large files in the daemon's shared-memory instance directory
// (tmpfs), mode 0640, mapped once read-write by the daemon and read-only by
// clients. Layers are Blocks of these arenas (daemon/arena_allocator.h): a
// file is sparse when created and a block's pages are committed (fallocate)
// when the layer is loaded and released (hole punched) when it is freed, so
// the memory in use is exactly the cached layers' page-rounded sizes.
//
// A file is unlinked when its arena is dropped; clients that still map it
// keep their mapping (its freed ranges read as zeros) until they unmap.
#ifndef BIGSMALL_DAEMON_HOST_ARENA_H_
#define BIGSMALL_DAEMON_HOST_ARENA_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "bigsmall/v1/bigsmall.pb.h"
#include "daemon/arena_allocator.h"
#include "daemon/shm_dir.h"

namespace bigsmall::daemon {

struct LayerData;

class HostArena : public Arena {
 public:
  // Creates `name` in `dir` (sparse, `capacity` bytes) and maps it.
  static absl::StatusOr<std::unique_ptr<HostArena>> Create(std::shared_ptr<const ShmDir> dir,
                                                           uint64_t id, uint64_t capacity,
                                                           const std::string& name);
  ~HostArena() override;

  uint8_t* base() override { return data_; }
  absl::Status Commit(uint64_t offset, uint64_t size) override;
  void Decommit(uint64_t offset, uint64_t size) override;
  // The file's path, for clients.
  std::string path() const { return dir_->path() + "/" + name_; }
  const std::string& name() const { return name_; }

 private:
  HostArena(std::shared_ptr<const ShmDir> dir, uint64_t id, uint64_t capacity, std::string name,
            int fd, uint8_t* data)
      : Arena(id, capacity), dir_(std::move(dir)), name_(std::move(name)), fd_(fd), data_(data) {}
  std::shared_ptr<const ShmDir> dir_;
  const std::string name_;
  const int fd_;
  uint8_t* const data_;
};

// A pool of host arenas of `arena_size` bytes each in `dir`.
std::shared_ptr<ArenaPool> MakeHostArenaPool(std::shared_ptr<const ShmDir> dir,
                                             uint64_t arena_size = kDefaultArenaSize);

// The cache budget to use: `configured` (the default is RAM / 2), capped at
// 90% of the free space of the filesystem holding `dir` (DefaultHostBudget),
// so the limit is one the shm filesystem can keep (a default /dev/shm is
// RAM / 2 and other programs share it). Logs the result and any cap.
uint64_t HostCacheBudget(uint64_t configured, const ShmDir& dir);

// Removes the instance dir now (it also goes with the last reference).
void RemoveShmDir(const std::shared_ptr<ShmDir>& dir);

// Fills a layer handle's host memory from the layer's block: the arena
// file's path, the layer's offset and size in it, the arena id.
void FillHostMemory(const LayerData& data, v1::HostMemory* host);

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_HOST_ARENA_H_
