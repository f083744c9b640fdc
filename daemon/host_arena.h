// Host arenas: large files in the daemon's shared-memory instance directory
// (tmpfs), mode 0640, mapped once read-write by the daemon and read-only by
// clients. Layers are Blocks of these arenas (daemon/arena_allocator.h): a
// file is sparse when created and a block's pages are committed (fallocate)
// when the layer is loaded and released (hole punched) when it is freed, so
// the memory in use is exactly the cached layers' page-rounded sizes.
//
// A file is unlinked when its arena is dropped; clients that still map it
// keep their mapping (ranges freed before, hole-punched, read as zeros)
// until they unmap. A stopping daemon retires its pool first
// (ArenaPool::Retire): nothing is hole-punched or reused from then on, so a
// layer a client still holds keeps its bytes after the daemon exited.
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
  // MADV_POPULATE_WRITE on the daemon's mapping (Linux 5.14+; nothing on
  // older kernels).
  void Populate(uint64_t offset, uint64_t size) override;
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

// A pool of host arenas of `arena_size` bytes each in `dir`. `warm_limit`
// and `memory_limit`: recycling of freed layers' pages (ArenaPool::Options;
// bigsmalld: kDefaultHostWarmLimit capped by the cache budget, and the
// budget).
std::shared_ptr<ArenaPool> MakeHostArenaPool(std::shared_ptr<const ShmDir> dir,
                                             uint64_t arena_size = kDefaultArenaSize,
                                             uint64_t warm_limit = 0, uint64_t memory_limit = 0);

// How much of freed layers' shared memory bigsmalld keeps warm for the next
// layers (at most the cache budget, which also bounds live + warm pages): a
// few 7B-shaped layers, so a streamed model's layers decode into pages that
// are already backed and mapped.
inline constexpr uint64_t kDefaultHostWarmLimit = 2ull << 30;

// Anonymous arenas, for loading layers into the process's own memory (the
// Python extension's in-process loader: nothing is shared with clients).
// An arena is a private anonymous mapping (MAP_NORESERVE: address space
// only until committed). Commit backs a block's pages now: with
// MADV_POPULATE_WRITE (Linux 5.14+), so running out of memory is
// RESOURCE_EXHAUSTED (an allocation failure) instead of a fault later; on
// older kernels (EINVAL) it writes one byte per page, which backs the pages
// but cannot detect running out of memory (the kernel's OOM killer may act).
// Decommit gives the pages back at once (MADV_DONTNEED): the resident size
// drops as soon as a layer's block is freed, whichever arena it is in.
class AnonymousArena : public Arena {
 public:
  // RESOURCE_EXHAUSTED (an allocation failure) when the mapping fails.
  static absl::StatusOr<std::unique_ptr<AnonymousArena>> Create(uint64_t id, uint64_t capacity);
  ~AnonymousArena() override;

  uint8_t* base() override { return data_; }
  absl::Status Commit(uint64_t offset, uint64_t size) override;
  void Decommit(uint64_t offset, uint64_t size) override;

 private:
  AnonymousArena(uint64_t id, uint64_t capacity, uint8_t* data) : Arena(id, capacity), data_(data) {}
  uint8_t* const data_;
};

// Arena size of MakeAnonymousArenaPool: small layers share 64 MiB arenas
// (one mapping for many); a block over it gets an arena of its own, unmapped
// when freed. Freed blocks' pages are returned either way (Decommit); the
// pool keeps at most one empty shared arena (address space, no memory).
inline constexpr uint64_t kDefaultAnonymousArenaSize = 64ull << 20;

std::shared_ptr<ArenaPool> MakeAnonymousArenaPool(
    uint64_t arena_size = kDefaultAnonymousArenaSize);

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
