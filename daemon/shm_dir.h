// The daemon's shared-memory directory, held by file descriptor.
//
// Layout: <base> (default /dev/shm/bigsmall-<uid>, mode 0750) holds one
// instance directory per running daemon, d<pid> (mode 02750: arenas inherit
// its group so group members can map them), which holds the arena files.
//
// Security (the base usually lives in a world-writable, sticky /dev/shm):
//  - the base and the instance dir are created by the daemon (mkdir) and
//    opened with O_DIRECTORY | O_NOFOLLOW; a pre-existing base that is a
//    symlink, not a directory, not owned by the daemon's euid, or writable
//    by group or others is refused (FAILED_PRECONDITION), never "repaired";
//  - every later create/unlink/cleanup is relative to the held fds
//    (openat/unlinkat/fstatat with O_NOFOLLOW/AT_SYMLINK_NOFOLLOW), so
//    swapping a path component for a symlink after start changes nothing;
//  - modes and groups are set with fchmod/fchown on fds, never by path;
//  - cleanup of instance dirs left by dead daemons goes through the base fd
//    and never follows a symlink: a symlinked d<pid> is unlinked as a link,
//    its target untouched.
#ifndef BIGSMALL_DAEMON_SHM_DIR_H_
#define BIGSMALL_DAEMON_SHM_DIR_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace bigsmall::daemon {

class ShmDir {
 public:
  // Prepares `base` and this process's instance dir in it; `group` (name or
  // number, "" = leave the primary group) owns both. Removes instance dirs
  // of daemons that are gone.
  static absl::StatusOr<std::unique_ptr<ShmDir>> Prepare(const std::string& base,
                                                         const std::string& group);
  // Removes the instance dir (see Remove) and closes the fds, so every
  // path out of a failed start leaves nothing behind.
  ~ShmDir();
  ShmDir(const ShmDir&) = delete;
  ShmDir& operator=(const ShmDir&) = delete;

  // The instance dir's path, for clients (they open files by this path and
  // check what they open; the daemon itself never uses it).
  const std::string& path() const { return path_; }
  int fd() const { return instance_fd_; }

  // Creates `name` in the instance dir (O_CREAT | O_EXCL | O_NOFOLLOW),
  // mode `mode` whatever the umask. Returns the fd (the caller closes it).
  absl::StatusOr<int> CreateFile(const std::string& name, mode_t mode) const;
  // Unlinks `name` from the instance dir (a symlink is unlinked as a link).
  void Unlink(const std::string& name) const;
  // Free bytes of the filesystem holding the instance dir (fstatvfs).
  absl::StatusOr<uint64_t> FreeBytes() const;
  // Removes the instance dir and every file in it. Idempotent.
  void Remove();

 private:
  ShmDir() = default;
  std::string path_;
  std::string instance_name_;
  int base_fd_ = -1;
  int instance_fd_ = -1;
  bool removed_ = false;
};

// Resolves a group name (or numeric gid) to a gid; "" is -1 (leave as is).
absl::StatusOr<int> LookupGroup(const std::string& group);

// The cache budget to use when none is configured: min(RAM / 2, 90% of the
// free space of the filesystem at `shm`), so a default /dev/shm that other
// programs share is never promised away. `ram_half` is RAM / 2.
uint64_t DefaultHostBudget(uint64_t ram_half, uint64_t shm_free);

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_SHM_DIR_H_
