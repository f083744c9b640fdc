#include "daemon/safe_open.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdlib>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "codec/status_util.h"

namespace bigsmall::daemon {
namespace {

std::atomic<bool> g_openat2_disabled{false};
// Set once openat2 answered ENOSYS (old kernel, or a seccomp filter).
std::atomic<bool> g_openat2_missing{false};

constexpr int kOpenFlags = O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY;

bool Beneath(const std::string& path, const std::string& dir) {
  if (dir == "/") return absl::StartsWith(path, "/");
  return path == dir || absl::StartsWith(path, dir + "/");
}

}  // namespace

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.release();
  }
  return *this;
}

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) ::close(fd_);
}

void SetOpenat2DisabledForTesting(bool disabled) { g_openat2_disabled = disabled; }

absl::StatusOr<std::string> FdPath(int fd) {
  std::string link = absl::StrCat("/proc/self/fd/", fd);
  char buf[PATH_MAX + 1];
  ssize_t n = ::readlink(link.c_str(), buf, PATH_MAX);
  if (n < 0) return ErrnoToStatus(errno, absl::StrCat("readlink ", link));
  return std::string(buf, static_cast<size_t>(n));
}

absl::Status ClearNonBlock(int fd) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
    return ErrnoToStatus(errno, "fcntl(F_SETFL)");
  }
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> OpenRootDir(const std::string& path, std::string* real_path) {
  int fd = ::open(path.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoToStatus(errno, absl::StrCat("open ", EscapeForLog(path)));
  UniqueFd owned(fd);
  auto real = FdPath(fd);
  if (!real.ok()) return real.status();
  *real_path = *real;
  return owned;
}

absl::StatusOr<UniqueFd> OpenBeneath(int dir_fd, const std::string& dir_real,
                                     const std::string& relative) {
  const std::string what = absl::StrCat("open ", EscapeForLog(relative));
  if (relative.empty() || relative[0] == '/' || relative.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": not a relative path"));
  }
  if (!g_openat2_disabled && !g_openat2_missing) {
    open_how how{};
    how.flags = kOpenFlags;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    long fd;
    do {
      fd = ::syscall(SYS_openat2, dir_fd, relative.c_str(), &how, sizeof(how));
    } while (fd < 0 && (errno == EAGAIN || errno == EINTR));
    if (fd >= 0) return UniqueFd(static_cast<int>(fd));
    if (errno != ENOSYS) return ErrnoToStatus(errno, what);
    g_openat2_missing = true;
  }
  // Fallback: no symlink as the last component, then the descriptor's real
  // path must lie beneath the directory (a symlinked or ".." middle part
  // that leads out is caught here).
  int fd = ::openat(dir_fd, relative.c_str(), kOpenFlags | O_NOFOLLOW);
  if (fd < 0) return ErrnoToStatus(errno, what);
  UniqueFd owned(fd);
  auto real = FdPath(fd);
  if (!real.ok()) return real.status();
  if (!Beneath(*real, dir_real)) return ErrnoToStatus(EXDEV, what);
  return owned;
}

}  // namespace bigsmall::daemon
