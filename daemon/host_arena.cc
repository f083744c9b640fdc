#include "daemon/host_arena.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "codec/status_util.h"
#include "daemon/layer_cache.h"
#include "spdlog/spdlog.h"

namespace bigsmall::daemon {

absl::StatusOr<std::unique_ptr<HostArena>> HostArena::Create(std::shared_ptr<const ShmDir> dir,
                                                             uint64_t id, uint64_t capacity,
                                                             const std::string& name) {
  absl::StatusOr<int> created = dir->CreateFile(name, 0640);
  if (!created.ok()) return MarkAllocationFailure(created.status());
  const int fd = *created;
  auto fail = [&](int err, const std::string& what) {
    absl::Status st = ErrnoToStatus(err, absl::StrCat(what, " ", EscapeForLog(dir->path()), "/",
                                                      EscapeForLog(name)));
    ::close(fd);
    dir->Unlink(name);
    return MarkAllocationFailure(st);
  };
  // Sparse: pages are committed per block (Commit), not for the whole arena.
  if (::ftruncate(fd, static_cast<off_t>(capacity)) != 0) return fail(errno, "truncate");
  void* p = ::mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return fail(errno, "mmap");
  return std::unique_ptr<HostArena>(
      new HostArena(std::move(dir), id, capacity, name, fd, static_cast<uint8_t*>(p)));
}

HostArena::~HostArena() {
  ::munmap(data_, capacity());
  ::close(fd_);
  dir_->Unlink(name_);
}

absl::Status HostArena::Commit(uint64_t offset, uint64_t size) {
  int err = ::posix_fallocate(fd_, static_cast<off_t>(offset), static_cast<off_t>(size));
  if (err == 0) return absl::OkStatus();
  return MarkAllocationFailure(ErrnoToStatus(
      err, absl::StrCat("reserve ", size, " bytes of shared memory in ", EscapeForLog(path()))));
}

void HostArena::Decommit(uint64_t offset, uint64_t size) {
  if (::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                  static_cast<off_t>(size)) != 0) {
    // No hole punching here: at least drop the daemon's pages.
    ::madvise(data_ + offset, size, MADV_REMOVE);
  }
}

void HostArena::Populate(uint64_t offset, uint64_t size) {
#ifdef MADV_POPULATE_WRITE
  if (offset > capacity() || size > capacity() - offset || size == 0) return;
  while (::madvise(data_ + offset, size, MADV_POPULATE_WRITE) != 0 && errno == EINTR) {
  }
#else
  (void)offset;
  (void)size;
#endif
}

std::shared_ptr<ArenaPool> MakeHostArenaPool(std::shared_ptr<const ShmDir> dir,
                                             uint64_t arena_size, uint64_t warm_limit,
                                             uint64_t memory_limit) {
  // A per-pool tag in the file names: a restarted daemon with the same pid
  // (containers) never reuses a name a client may still have mapped.
  std::random_device rd;
  const uint64_t tag = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  ArenaPool::Options options;
  options.arena_size = arena_size;
  options.kind = "host";
  options.warm_limit = warm_limit;
  options.memory_limit = memory_limit;
  return ArenaPool::Create(
      options,
      [dir = std::move(dir), tag](uint64_t id,
                                  uint64_t capacity) -> absl::StatusOr<std::unique_ptr<Arena>> {
        auto arena = HostArena::Create(dir, id, capacity, absl::StrFormat("a%d-%016x", id, tag));
        if (!arena.ok()) return arena.status();
        return std::unique_ptr<Arena>(std::move(*arena));
      });
}

// ---------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<AnonymousArena>> AnonymousArena::Create(uint64_t id,
                                                                       uint64_t capacity) {
  if (capacity == 0 || capacity > static_cast<uint64_t>(PTRDIFF_MAX)) {
    return MarkAllocationFailure(absl::ResourceExhaustedError(
        absl::StrCat("anonymous arena of ", capacity, " bytes is impossible")));
  }
  void* p = ::mmap(nullptr, capacity, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    return MarkAllocationFailure(
        ErrnoToStatus(errno, absl::StrCat("map an anonymous arena of ", capacity, " bytes")));
  }
  return std::unique_ptr<AnonymousArena>(new AnonymousArena(id, capacity, static_cast<uint8_t*>(p)));
}

AnonymousArena::~AnonymousArena() { ::munmap(data_, capacity()); }

absl::Status AnonymousArena::Commit(uint64_t offset, uint64_t size) {
  if (offset > capacity() || size > capacity() - offset) {
    return absl::InternalError(absl::StrCat("commit [", offset, ", +", size,
                                            ") outside an anonymous arena of ", capacity()));
  }
  if (size == 0) return absl::OkStatus();
#ifdef MADV_POPULATE_WRITE
  while (true) {
    if (::madvise(data_ + offset, size, MADV_POPULATE_WRITE) == 0) return absl::OkStatus();
    const int err = errno;
    if (err == EINTR) continue;
    if (err == EINVAL) break;  // an older kernel: touch the pages below
    absl::Status st = ErrnoToStatus(
        err, absl::StrCat("back ", size, " bytes of anonymous memory"));
    // ENOMEM (no memory) and EFAULT/EHWPOISON (a page could not be backed)
    // are both a failure to get memory.
    if (err == ENOMEM || err == EFAULT || err == EHWPOISON) {
      st = absl::ResourceExhaustedError(st.message());
    }
    return MarkAllocationFailure(st);
  }
#endif
  // Fallback: write each page (the range is unused: a new or decommitted
  // block reads as zeros, so writing a zero changes nothing).
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  volatile uint8_t* p = data_ + offset;
  for (uint64_t at = 0; at < size; at += page) p[at] = 0;
  return absl::OkStatus();
}

void AnonymousArena::Decommit(uint64_t offset, uint64_t size) {
  if (offset > capacity() || size > capacity() - offset || size == 0) return;
  ::madvise(data_ + offset, size, MADV_DONTNEED);
}

std::shared_ptr<ArenaPool> MakeAnonymousArenaPool(uint64_t arena_size) {
  ArenaPool::Options options;
  options.arena_size = arena_size;
  options.kind = "anonymous";
  return ArenaPool::Create(
      options, [](uint64_t id, uint64_t capacity) -> absl::StatusOr<std::unique_ptr<Arena>> {
        auto arena = AnonymousArena::Create(id, capacity);
        if (!arena.ok()) return arena.status();
        return std::unique_ptr<Arena>(std::move(*arena));
      });
}

uint64_t HostCacheBudget(uint64_t configured, const ShmDir& dir) {
  absl::StatusOr<uint64_t> free = dir.FreeBytes();
  if (!free.ok()) {
    spdlog::warn("cannot read the free space of {}: {}; cache budget {} MiB", EscapeForLog(dir.path()),
                 free.status().ToString(), configured >> 20);
    return configured;
  }
  uint64_t budget = DefaultHostBudget(configured, *free);
  if (budget < configured) {
    spdlog::warn("cache budget {} MiB capped at {} MiB: 90% of the {} MiB free in the shm "
                 "filesystem of {}", configured >> 20, budget >> 20, *free >> 20,
                 EscapeForLog(dir.path()));
  } else {
    spdlog::info("cache budget {} MiB ({} MiB free in the shm filesystem)", budget >> 20,
                 *free >> 20);
  }
  return budget;
}

void RemoveShmDir(const std::shared_ptr<ShmDir>& dir) {
  if (dir != nullptr) dir->Remove();
}

void FillHostMemory(const LayerData& data, v1::HostMemory* host) {
  if (data.arena == nullptr) return;
  const auto* arena = dynamic_cast<const HostArena*>(&data.arena->arena());
  if (arena == nullptr) return;
  host->set_path(arena->path());
  host->set_offset(data.arena->offset());
  host->set_size(data.arena->size());
  host->set_arena_id(data.arena->arena_id());
}

}  // namespace bigsmall::daemon
