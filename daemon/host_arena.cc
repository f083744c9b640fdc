#include "daemon/host_arena.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"

namespace bigsmall::daemon {
namespace {

absl::Status Errno(int err, const std::string& what) {
  std::string msg = absl::StrCat(what, ": ", std::strerror(err));
  if (err == ENOSPC || err == ENOMEM) return absl::ResourceExhaustedError(msg);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(msg);
  return absl::InternalError(msg);
}

void RemoveTree(const std::string& dir) {
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      ::unlink((dir + "/" + name).c_str());
    }
    closedir(d);
  }
  ::rmdir(dir.c_str());
}

}  // namespace

absl::StatusOr<std::unique_ptr<HostArena>> HostArena::Create(const std::string& dir,
                                                             const std::string& name,
                                                             uint64_t size) {
  std::string path = absl::StrCat(dir, "/", name);
  int fd = ::open(path.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0640);
  if (fd < 0) return Errno(errno, absl::StrCat("create ", path));
  ::fchmod(fd, 0640);  // independent of the umask
  uint8_t* data = nullptr;
  if (size > 0) {
    int err = posix_fallocate(fd, 0, static_cast<off_t>(size));
    if (err != 0) {
      ::close(fd);
      ::unlink(path.c_str());
      return Errno(err, absl::StrCat("reserve ", size, " bytes for ", path));
    }
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      ::unlink(path.c_str());
      return Errno(e, absl::StrCat("mmap ", path));
    }
    data = static_cast<uint8_t*>(p);
  }
  ::close(fd);
  return std::unique_ptr<HostArena>(new HostArena(std::move(path), data, size));
}

HostArena::~HostArena() {
  if (data_ != nullptr) munmap(data_, size_);
  ::unlink(path_.c_str());
}

absl::StatusOr<int> LookupGroup(const std::string& group) {
  if (group.empty()) return -1;
  int gid = 0;
  if (absl::SimpleAtoi(group, &gid)) return gid;
  std::vector<char> buf(16384);
  struct group g;
  struct group* out = nullptr;
  if (getgrnam_r(group.c_str(), &g, buf.data(), buf.size(), &out) != 0 || out == nullptr) {
    return absl::NotFoundError(absl::StrCat("unknown group '", group, "'"));
  }
  return static_cast<int>(out->gr_gid);
}

absl::StatusOr<std::string> PrepareShmDir(const std::string& dir, const std::string& group) {
  auto gid = LookupGroup(group);
  if (!gid.ok()) return gid.status();
  if (::mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST) {
    return Errno(errno, absl::StrCat("mkdir ", dir));
  }
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(dir, " is not a directory"));
  }
  if (st.st_uid == geteuid()) {
    ::chmod(dir.c_str(), 0750);
    if (*gid >= 0 && ::chown(dir.c_str(), static_cast<uid_t>(-1), *gid) != 0) {
      return Errno(errno, absl::StrCat("chgrp ", dir));
    }
  }
  // Instance directories of daemons that are gone (crash, SIGKILL).
  if (DIR* d = opendir(dir.c_str())) {
    std::vector<std::string> stale;
    while (dirent* e = readdir(d)) {
      std::string name = e->d_name;
      int pid = 0;
      if (name.size() > 1 && name[0] == 'd' && absl::SimpleAtoi(name.substr(1), &pid) &&
          pid > 0 && kill(pid, 0) != 0 && errno == ESRCH) {
        stale.push_back(absl::StrCat(dir, "/", name));
      }
    }
    closedir(d);
    for (const std::string& s : stale) RemoveTree(s);
  }
  std::string instance = absl::StrCat(dir, "/d", getpid());
  RemoveTree(instance);
  if (::mkdir(instance.c_str(), 0750) != 0) {
    return Errno(errno, absl::StrCat("mkdir ", instance));
  }
  // setgid: arenas inherit the directory's group, so group members can map them.
  ::chmod(instance.c_str(), 02750);
  if (*gid >= 0 && ::chown(instance.c_str(), static_cast<uid_t>(-1), *gid) != 0) {
    return Errno(errno, absl::StrCat("chgrp ", instance));
  }
  return instance;
}

void RemoveShmDir(const std::string& instance_dir) {
  if (!instance_dir.empty()) RemoveTree(instance_dir);
}

}  // namespace bigsmall::daemon
