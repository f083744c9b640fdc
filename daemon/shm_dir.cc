#include "daemon/shm_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "codec/status_util.h"

namespace bigsmall::daemon {
namespace {

constexpr int kMaxCleanupDepth = 4;

// Names in the directory open at `dirfd` (without "." and "..").
std::vector<std::string> ListDir(int dirfd) {
  std::vector<std::string> names;
  int fd = ::dup(dirfd);  // fdopendir owns (and closedir closes) its fd
  if (fd < 0) return names;
  DIR* d = ::fdopendir(fd);
  if (d == nullptr) {
    ::close(fd);
    return names;
  }
  ::rewinddir(d);
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(std::move(name));
  }
  ::closedir(d);
  return names;
}

// Removes the entry `name` of the directory open at `dirfd`. Never follows a
// symlink: a link is unlinked itself; a directory is opened with O_NOFOLLOW
// (so swapping it for a link in between fails the open) and emptied through
// its own fd.
void RemoveEntry(int dirfd, const std::string& name, int depth) {
  struct stat st;
  if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return;
  if (!S_ISDIR(st.st_mode)) {
    ::unlinkat(dirfd, name.c_str(), 0);
    return;
  }
  int fd = ::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    // Replaced by something that is not a directory since the fstatat.
    if (errno == ELOOP || errno == ENOTDIR) ::unlinkat(dirfd, name.c_str(), 0);
    return;
  }
  if (depth < kMaxCleanupDepth) {
    for (const std::string& child : ListDir(fd)) RemoveEntry(fd, child, depth + 1);
  }
  ::close(fd);
  ::unlinkat(dirfd, name.c_str(), AT_REMOVEDIR);
}

// d<pid> of a process that no longer exists.
bool IsStaleInstance(const std::string& name) {
  int pid = 0;
  return name.size() > 1 && name[0] == 'd' && absl::SimpleAtoi(name.substr(1), &pid) &&
         pid > 0 && pid != getpid() && ::kill(pid, 0) != 0 && errno == ESRCH;
}

// Refuses a directory the daemon cannot trust: not a directory, not ours,
// or writable by group or others.
absl::Status CheckTrusted(int fd, const std::string& path) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoToStatus(errno, absl::StrCat("fstat ", EscapeForLog(path)));
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(EscapeForLog(path), " is not a directory"));
  }
  if (st.st_uid != ::geteuid()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "shm dir ", EscapeForLog(path), " is owned by uid ", st.st_uid, ", not by the daemon (uid ",
        ::geteuid(), "); refusing it (remove it or choose another --shm-dir)"));
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "shm dir ", EscapeForLog(path), " is writable by group or others (mode ",
        absl::StrFormat("%04o", st.st_mode & 07777),
        "); refusing it (remove it or choose another --shm-dir)"));
  }
  return absl::OkStatus();
}

// Creates (if absent) and opens the directory `name` in `dirfd`, refusing a
// symlink or an untrusted directory.
absl::StatusOr<int> MakeTrustedDir(int dirfd, const std::string& name, const std::string& path) {
  if (::mkdirat(dirfd, name.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoToStatus(errno, absl::StrCat("mkdir ", EscapeForLog(path)));
  }
  int fd = ::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ELOOP || err == ENOTDIR) {
      return absl::FailedPreconditionError(absl::StrCat(
          "shm dir ", EscapeForLog(path), " is a symlink or not a directory; refusing it"));
    }
    return ErrnoToStatus(err, absl::StrCat("open ", EscapeForLog(path)));
  }
  absl::Status st = CheckTrusted(fd, path);
  if (!st.ok()) {
    ::close(fd);
    return st;
  }
  return fd;
}

absl::Status SetModeAndGroup(int fd, mode_t mode, int gid, const std::string& path) {
  // chown first: it may clear the setgid bit.
  if (gid >= 0 && ::fchown(fd, static_cast<uid_t>(-1), static_cast<gid_t>(gid)) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("chgrp ", EscapeForLog(path)));
  }
  if (::fchmod(fd, mode) != 0) return ErrnoToStatus(errno, absl::StrCat("chmod ", EscapeForLog(path)));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<int> LookupGroup(const std::string& group) {
  if (group.empty()) return -1;
  int gid = 0;
  if (absl::SimpleAtoi(group, &gid)) {
    if (gid < 0) return absl::InvalidArgumentError(absl::StrCat("bad group id ", gid));
    return gid;
  }
  std::vector<char> buf(16384);
  struct group g;
  struct group* out = nullptr;
  if (getgrnam_r(group.c_str(), &g, buf.data(), buf.size(), &out) != 0 || out == nullptr) {
    return absl::NotFoundError(absl::StrCat("unknown group '", EscapeForLog(group), "'"));
  }
  return static_cast<int>(out->gr_gid);
}

uint64_t DefaultHostBudget(uint64_t ram_half, uint64_t shm_free) {
  return std::min(ram_half, shm_free / 10 * 9);
}

absl::StatusOr<std::unique_ptr<ShmDir>> ShmDir::Prepare(const std::string& base_in,
                                                       const std::string& group) {
  if (base_in.empty()) return absl::InvalidArgumentError("empty shm dir");
  if (base_in.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("shm dir contains a NUL byte");
  }
  auto gid = LookupGroup(group);
  if (!gid.ok()) return gid.status();
  std::string base = base_in;
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  size_t slash = base.find_last_of('/');
  std::string parent = slash == std::string::npos ? "." : (slash == 0 ? "/" : base.substr(0, slash));
  std::string leaf = slash == std::string::npos ? base : base.substr(slash + 1);
  if (leaf.empty() || leaf == "." || leaf == "..") {
    return absl::InvalidArgumentError(absl::StrCat("bad shm dir ", EscapeForLog(base_in)));
  }

  std::unique_ptr<ShmDir> dir(new ShmDir());
  // The parent is the administrator's choice (e.g. /dev/shm): opened by path.
  int parent_fd = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (parent_fd < 0) return ErrnoToStatus(errno, absl::StrCat("open ", EscapeForLog(parent)));
  absl::StatusOr<int> base_fd = MakeTrustedDir(parent_fd, leaf, base);
  ::close(parent_fd);
  if (!base_fd.ok()) return base_fd.status();
  dir->base_fd_ = *base_fd;
  absl::Status st = SetModeAndGroup(dir->base_fd_, 0750, *gid, base);
  if (!st.ok()) return st;

  // Instance directories of daemons that are gone (crash, SIGKILL).
  for (const std::string& name : ListDir(dir->base_fd_)) {
    if (IsStaleInstance(name)) RemoveEntry(dir->base_fd_, name, 0);
  }
  dir->instance_name_ = absl::StrCat("d", getpid());
  dir->path_ = absl::StrCat(base, "/", dir->instance_name_);
  RemoveEntry(dir->base_fd_, dir->instance_name_, 0);  // left by an earlier process of this pid
  if (::mkdirat(dir->base_fd_, dir->instance_name_.c_str(), 0700) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("mkdir ", EscapeForLog(dir->path_)));
  }
  int fd = ::openat(dir->base_fd_, dir->instance_name_.c_str(),
                    O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    absl::Status err = ErrnoToStatus(errno, absl::StrCat("open ", EscapeForLog(dir->path_)));
    ::unlinkat(dir->base_fd_, dir->instance_name_.c_str(), AT_REMOVEDIR);
    return err;
  }
  dir->instance_fd_ = fd;
  // From here on, dropping `dir` on an error removes the instance dir.
  st = CheckTrusted(fd, dir->path_);
  // setgid: arenas inherit the directory's group, so group members can map them.
  if (st.ok()) st = SetModeAndGroup(fd, 02750, *gid, dir->path_);
  if (!st.ok()) {
    dir->Remove();
    return st;
  }
  return dir;
}

ShmDir::~ShmDir() {
  Remove();
  if (instance_fd_ >= 0) ::close(instance_fd_);
  if (base_fd_ >= 0) ::close(base_fd_);
}

absl::StatusOr<int> ShmDir::CreateFile(const std::string& name, mode_t mode) const {
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
    return absl::InvalidArgumentError(absl::StrCat("bad arena file name ", EscapeForLog(name)));
  }
  int fd = ::openat(instance_fd_, name.c_str(),
                    O_CREAT | O_EXCL | O_RDWR | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) {
    return ErrnoToStatus(errno, absl::StrCat("create ", EscapeForLog(path_), "/", EscapeForLog(name)));
  }
  if (::fchmod(fd, mode) != 0) {  // independent of the umask
    absl::Status st = ErrnoToStatus(errno, absl::StrCat("chmod ", EscapeForLog(name)));
    ::close(fd);
    ::unlinkat(instance_fd_, name.c_str(), 0);
    return st;
  }
  return fd;
}

void ShmDir::Unlink(const std::string& name) const { ::unlinkat(instance_fd_, name.c_str(), 0); }

absl::StatusOr<uint64_t> ShmDir::FreeBytes() const {
  struct statvfs vfs;
  if (::fstatvfs(instance_fd_, &vfs) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("statvfs ", EscapeForLog(path_)));
  }
  return static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
}

void ShmDir::Remove() {
  if (removed_ || instance_fd_ < 0) return;
  removed_ = true;
  for (const std::string& name : ListDir(instance_fd_)) RemoveEntry(instance_fd_, name, 1);
  ::unlinkat(base_fd_, instance_name_.c_str(), AT_REMOVEDIR);
}

}  // namespace bigsmall::daemon
