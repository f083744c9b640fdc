#include "daemon/listener.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "codec/status_macros.h"
#include "codec/status_util.h"
#include "spdlog/spdlog.h"

namespace bigsmall::daemon {
namespace {

std::string DirOf(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

sockaddr_un AddressOf(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), std::min(path.size(), sizeof(addr.sun_path) - 1));
  return addr;
}

// ECONNREFUSED: nobody accepts; 0 or EAGAIN (backlog full): someone does.
// A non-blocking connect: a daemon with a full backlog must not hang us.
int ProbeConnect(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  sockaddr_un addr = AddressOf(path);
  int err = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 ? 0 : errno;
  ::close(fd);
  return err;
}

}  // namespace

absl::Status PrepareSocketDir(const std::string& dir, int gid) {
  const std::string shown = EscapeForLog(dir);
  if (::mkdir(dir.c_str(), 0750) == 0) {
    int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) return ErrnoToStatus(errno, absl::StrCat("open socket directory ", shown));
    if (gid >= 0 && ::fchown(dfd, static_cast<uid_t>(-1), static_cast<gid_t>(gid)) != 0) {
      spdlog::warn("chgrp {} {}: {}", gid, shown, std::strerror(errno));
    }
    int rc = ::fchmod(dfd, 0750);  // whatever the umask took away
    int err = errno;
    ::close(dfd);
    if (rc != 0) return ErrnoToStatus(err, absl::StrCat("chmod socket directory ", shown));
    return absl::OkStatus();
  }
  if (errno != EEXIST) return ErrnoToStatus(errno, absl::StrCat("create socket directory ", shown));
  struct stat st;
  if (::lstat(dir.c_str(), &st) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("socket directory ", shown));
  }
  if (S_ISLNK(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("socket directory ", shown, " is a symlink; refusing it"));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("socket directory ", shown, " is not a directory"));
  }
  if (st.st_uid != ::geteuid() && st.st_uid != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("socket directory ", shown, " belongs to uid ", st.st_uid,
                     ", not to the daemon's user or root; refusing it"));
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0 && (st.st_mode & S_ISVTX) == 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "0%o", st.st_mode & 07777);
    return absl::FailedPreconditionError(
        absl::StrCat("socket directory ", shown, " (mode ", mode,
                     ") is writable by group or others without the sticky bit; refusing it"));
  }
  return absl::OkStatus();
}

absl::Status RemoveStaleSocket(const std::string& path) {
  const std::string shown = EscapeForLog(path);
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoToStatus(errno, absl::StrCat("socket path ", shown));
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::AlreadyExistsError(absl::StrCat(shown, " exists and is not a socket"));
  }
  int err = ProbeConnect(path);
  if (err == 0 || err == EAGAIN) {
    return absl::AlreadyExistsError(absl::StrCat("another daemon is listening on ", shown));
  }
  if (err == ENOENT) return absl::OkStatus();  // removed meanwhile
  if (err != ECONNREFUSED) {
    return ErrnoToStatus(err, absl::StrCat("cannot tell whether ", shown, " is in use"));
  }
  // Stale: a dead daemon's. Unlink it only if it is still that same socket.
  struct stat again;
  if (::lstat(path.c_str(), &again) != 0) {
    return errno == ENOENT ? absl::OkStatus()
                           : ErrnoToStatus(errno, absl::StrCat("socket path ", shown));
  }
  if (!S_ISSOCK(again.st_mode) || again.st_dev != st.st_dev || again.st_ino != st.st_ino) {
    return absl::AlreadyExistsError(absl::StrCat(shown, " changed while checked; not removed"));
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoToStatus(errno, absl::StrCat("remove stale socket ", shown));
  }
  spdlog::info("removed the stale socket {}", shown);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<UnixListener>> UnixListener::Bind(const ListenerOptions& options) {
  const std::string& path = options.path;
  const std::string shown = EscapeForLog(path);
  if (path.empty() || path.size() >= sizeof(sockaddr_un::sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path empty or too long: ", shown));
  }
  if (path.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("socket path holds a NUL: ", shown));
  }
  if (options.mode > 0777) return absl::InvalidArgumentError("socket mode must be <= 0777");
  RETURN_IF_ERROR(PrepareSocketDir(DirOf(path), options.gid));
  RETURN_IF_ERROR(RemoveStaleSocket(path));

  std::unique_ptr<UnixListener> l(new UnixListener(options));
  l->wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (l->wake_fd_ < 0) return ErrnoToStatus(errno, "eventfd");
  l->listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (l->listen_fd_ < 0) return ErrnoToStatus(errno, "socket");
  sockaddr_un addr = AddressOf(path);
  // The socket appears owner-only; group and mode are set below, before
  // listen().
  mode_t old_umask = ::umask(0177);
  int rc = ::bind(l->listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  int err = errno;
  ::umask(old_umask);
  if (rc != 0) {
    if (err == EADDRINUSE) {
      return absl::AlreadyExistsError(absl::StrCat("another daemon is listening on ", shown));
    }
    return ErrnoToStatus(err, absl::StrCat("bind ", shown));
  }
  // The directory rules mean only we (or root) can have replaced the file
  // since bind; the O_PATH fd pins its inode until UnlinkIfOurs.
  l->path_fd_ = ::open(path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC);
  struct stat st;
  if (l->path_fd_ < 0 || ::fstat(l->path_fd_, &st) != 0 || !S_ISSOCK(st.st_mode)) {
    return absl::InternalError(absl::StrCat(shown, " is not the socket just bound"));
  }
  l->dev_ = st.st_dev;
  l->ino_ = st.st_ino;
  // Group and mode through the O_PATH fd: fchownat(AT_EMPTY_PATH) takes
  // it directly; chmod goes through /proc/self/fd (the fd's own inode),
  // and only where /proc is missing by path (safe by the directory rule).
  if (options.gid >= 0 && ::fchownat(l->path_fd_, "", static_cast<uid_t>(-1),
                                     static_cast<gid_t>(options.gid), AT_EMPTY_PATH) != 0) {
    spdlog::warn("chgrp {} {}: {}", options.gid, shown, std::strerror(errno));
  }
  const std::string by_fd = absl::StrCat("/proc/self/fd/", l->path_fd_);
  if (::chmod(by_fd.c_str(), options.mode) != 0) {
    if (errno != ENOENT || ::chmod(path.c_str(), options.mode) != 0) {
      return ErrnoToStatus(errno, absl::StrCat("chmod ", shown));
    }
  }
  if (::listen(l->listen_fd_, SOMAXCONN) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("listen ", shown));
  }
  return l;
}

absl::StatusOr<std::unique_ptr<UnixListener>> UnixListener::Adopt(int listen_fd,
                                                                 const ListenerOptions& options) {
  if (listen_fd < 0) return absl::InvalidArgumentError("no socket to adopt");
  std::unique_ptr<UnixListener> l(new UnixListener(options));
  l->listen_fd_ = listen_fd;  // owned from here on (closed by Stop)
  l->wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (l->wake_fd_ < 0) return ErrnoToStatus(errno, "eventfd");
  // ino_ stays 0: UnlinkIfOurs never touches systemd's path.
  return l;
}

UnixListener::~UnixListener() {
  Stop();
  UnlinkIfOurs();
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

absl::Status UnixListener::Start(PeerTable* peers, std::function<void(int fd)> adopt) {
  if (thread_.joinable() || listen_fd_ < 0) {
    return absl::FailedPreconditionError("listener already started or stopped");
  }
  peers_ = peers;
  adopt_ = std::move(adopt);
  thread_ = std::thread([this] { Loop(); });
  return absl::OkStatus();
}

void UnixListener::Stop() {
  if (thread_.joinable()) {
    uint64_t one = 1;
    while (::write(wake_fd_, &one, sizeof(one)) < 0 && errno == EINTR) {
    }
    thread_.join();
  }
  if (listen_fd_ >= 0) {
    ::close(listen_fd_);
    listen_fd_ = -1;
  }
}

bool UnixListener::UnlinkIfOurs() {
  if (unlinked_ || ino_ == 0) return false;
  unlinked_ = true;
  // The O_PATH fd is closed only after the comparison (and unlink): until
  // then our inode cannot be freed and its number given to another socket.
  struct PathFdCloser {
    int& fd;
    ~PathFdCloser() {
      if (fd >= 0) ::close(fd);
      fd = -1;
    }
  } closer{path_fd_};
  const std::string shown = EscapeForLog(options_.path);
  struct stat st;
  if (::lstat(options_.path.c_str(), &st) != 0) {
    spdlog::info("socket {} is already gone", shown);
    return false;
  }
  if (!S_ISSOCK(st.st_mode) || st.st_dev != dev_ || st.st_ino != ino_) {
    spdlog::info("{} is no longer this daemon's socket (a new daemon's?); left in place", shown);
    return false;
  }
  if (::unlink(options_.path.c_str()) != 0) {
    spdlog::warn("unlink {}: {}", shown, std::strerror(errno));
    return false;
  }
  return true;
}

void UnixListener::LogRefusal(const std::string& message) {
  auto now = std::chrono::steady_clock::now();
  if (now - last_refusal_log_ < std::chrono::seconds(1)) {
    ++refusals_unlogged_;
    return;
  }
  if (refusals_unlogged_ > 0) {
    spdlog::warn("{} ({} more since the last such line)", message, refusals_unlogged_);
  } else {
    spdlog::warn("{}", message);
  }
  refusals_unlogged_ = 0;
  last_refusal_log_ = now;
}

void UnixListener::HandleAccepted(int fd) {
  absl::StatusOr<PeerCred> cred = ReadPeerCred(fd);
  if (!cred.ok()) {
    LogRefusal(absl::StrCat("closing a connection: ", cred.status().ToString()));
    ::close(fd);
    return;
  }
  PeerTable::Counts counts = peers_->Prune(cred->uid);
  if (counts.total >= options_.max_connections) {
    refused_.fetch_add(1);
    LogRefusal(absl::StrCat("refusing a connection from ", DescribePeer(*cred), ": ",
                            counts.total, " connections open (max_connections ",
                            options_.max_connections, ")"));
    ::close(fd);
    return;
  }
  if (counts.same_uid >= options_.max_connections_per_uid) {
    refused_.fetch_add(1);
    LogRefusal(absl::StrCat("refusing a connection from ", DescribePeer(*cred), ": uid ",
                            cred->uid, " has ", counts.same_uid,
                            " connections open (max_connections_per_uid ",
                            options_.max_connections_per_uid, ")"));
    ::close(fd);
    return;
  }
  absl::StatusOr<int> number = peers_->Register(fd, *cred);  // closes fd on error
  if (!number.ok()) {
    LogRefusal(absl::StrCat("closing a connection from ", DescribePeer(*cred), ": ",
                            number.status().ToString()));
    return;
  }
  spdlog::debug("connection from {} (fd {})", DescribePeer(*cred), *number);
  adopt_(*number);
}

namespace {

// accept4 straight to the kernel. An accepted fd goes to gRPC, which closes
// it when the connection ends; ThreadSanitizer does not see that close (its
// interceptors ignore calls from gRPC: tests/tsan.supp), so with the libc
// accept4 it kept the fd number marked "created here, by the accept thread",
// and the next file the process opened under that number was reported as
// racing with this accept (and halted the TSan daemon: CI, in
// IntegrationTest.BadRequestsGetClearErrors). What this thread does with the
// fd before handing it over is invisible to TSan as well (peer.cc: RawFstat).
int RawAccept4(int listen_fd, int flags) {
  return static_cast<int>(::syscall(SYS_accept4, listen_fd, nullptr, nullptr, flags));
}

}  // namespace

void UnixListener::Loop() {
  pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
  while (true) {
    int r = ::poll(fds, 2, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      spdlog::error("accept loop: poll: {}", std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    if ((fds[0].revents & (POLLERR | POLLNVAL)) != 0) {
      spdlog::error("accept loop: the listening socket failed");
      return;
    }
    if ((fds[0].revents & POLLIN) == 0) continue;
    // Take what the backlog holds, a bounded batch at a time.
    for (int i = 0; i < 64; ++i) {
      int fd = RawAccept4(listen_fd_, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd >= 0) {
        HandleAccepted(fd);
        continue;
      }
      int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK) break;
      if (err == EINTR || err == ECONNABORTED || err == EPROTO) continue;
      // EMFILE, ENFILE, ENOBUFS, ENOMEM...: the connection stays in the
      // backlog; wait a little (or for Stop) instead of spinning on it.
      LogRefusal(absl::StrCat("accept: ", std::strerror(err), "; retrying in 100 ms"));
      int w = ::poll(&fds[1], 1, 100);
      if (w > 0) return;
      break;
    }
  }
}

}  // namespace bigsmall::daemon
