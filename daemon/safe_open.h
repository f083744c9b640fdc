// Opening model files so that a path can never leave the directory it was
// resolved under: one open per file, no symlinks, no blocking on FIFOs.
//
// OpenBeneath uses openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
// RESOLVE_NO_MAGICLINKS where the kernel has it (Linux >= 5.6). Elsewhere it
// opens with O_NOFOLLOW and then checks the real path of the descriptor
// (/proc/self/fd/N) against the directory's real path. Either way every
// later read goes through the returned descriptor, never through the name.
#ifndef BIGSMALL_DAEMON_SAFE_OPEN_H_
#define BIGSMALL_DAEMON_SAFE_OPEN_H_

#include <string>

#include "absl/status/statusor.h"

namespace bigsmall::daemon {

// An owned file descriptor, closed on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd();
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Gives the descriptor up without closing it.
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_ = -1;
};

// Opens `relative` (not absolute; "." is the directory itself) beneath the
// directory `dir_fd` whose real path is `dir_real`, read-only, non-blocking
// (a FIFO never blocks the open), close-on-exec, without following any
// symlink. Errors keep the errno's code (codec/status_util.h): NOT_FOUND for
// a missing name, FAILED_PRECONDITION (ELOOP) for a symlink, PERMISSION_DENIED
// (EXDEV) for an escape. Messages name `relative`, escaped.
absl::StatusOr<UniqueFd> OpenBeneath(int dir_fd, const std::string& dir_real,
                                     const std::string& relative);

// Opens a directory as O_PATH | O_DIRECTORY (following symlinks: a
// configured root may itself be a link), returning it and its real path.
absl::StatusOr<UniqueFd> OpenRootDir(const std::string& path, std::string* real_path);

// The real path of an open descriptor (readlink of /proc/self/fd/N).
absl::StatusOr<std::string> FdPath(int fd);

// Clears O_NONBLOCK (once the descriptor is known to be a regular file).
absl::Status ClearNonBlock(int fd);

// Tests: force the fallback used where the kernel lacks openat2.
void SetOpenat2DisabledForTesting(bool disabled);

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_SAFE_OPEN_H_
