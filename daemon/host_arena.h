// Host memory for one decoded layer: a file in the daemon's shared-memory
// directory (tmpfs), mode 0640, mapped read-write by the daemon and
// read-only by clients. The file is unlinked when the arena is destroyed;
// clients that still map it keep their pages until they unmap.
#ifndef BIGSMALL_DAEMON_HOST_ARENA_H_
#define BIGSMALL_DAEMON_HOST_ARENA_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace bigsmall::daemon {

class HostArena {
 public:
  // Creates `dir`/`name` with `size` bytes reserved (posix_fallocate, so a
  // full tmpfs is kResourceExhausted now rather than SIGBUS later).
  static absl::StatusOr<std::unique_ptr<HostArena>> Create(const std::string& dir,
                                                           const std::string& name,
                                                           uint64_t size);
  ~HostArena();
  HostArena(const HostArena&) = delete;
  HostArena& operator=(const HostArena&) = delete;

  absl::Span<uint8_t> bytes() { return {data_, size_}; }
  absl::Span<const uint8_t> bytes() const { return {data_, size_}; }
  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }

 private:
  HostArena(std::string path, uint8_t* data, uint64_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// Prepares the daemon's shm directory: creates `dir` (mode 0750) and this
// instance's subdirectory, removing subdirectories left by dead daemons.
// Returns the instance directory.
absl::StatusOr<std::string> PrepareShmDir(const std::string& dir, const std::string& group);
// Resolves a group name (or numeric gid) to a gid; "" is -1 (leave as is).
absl::StatusOr<int> LookupGroup(const std::string& group);
// Removes an instance directory and everything in it.
void RemoveShmDir(const std::string& instance_dir);

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_HOST_ARENA_H_
