// The daemon's Unix socket, owned by the daemon rather than by gRPC, so that
// it knows who is at the other end of every connection (daemon/peer.h):
// its directory is checked, the socket is created with its final owner,
// group and mode, an accept loop reads each connection's SO_PEERCRED,
// enforces the connection limits and hands the connection to gRPC, and at
// exit the path is unlinked only if it is still this daemon's socket.
//
// The directory: created 0750 (group: the socket group) when missing. An
// existing one must be a real directory (lstat: a symlink is refused) owned
// by the daemon's euid or root, and not writable by group or others unless
// sticky (like /tmp). Then nobody but us, root and the directory's owner (us
// or root) can rename or unlink what we create there, which is what makes
// the two by-path steps below safe.
//
// The socket: bind() creates it with mode 0777 & ~umask; the umask is set to
// 0177 around bind (process-wide: done at startup, before the service's
// threads run), so it appears as 0600, owner the daemon. Its group and mode
// cannot be set through the socket fd (fchown/fchmod on it change the sockfs
// inode, not the file), so the file is opened O_PATH|O_NOFOLLOW right after
// bind and fstat'ed (must be a socket; its dev/ino are remembered), then its
// group is set through that fd (fchownat AT_EMPTY_PATH) and its mode through
// /proc/self/fd/N (by path only where /proc is missing). Between bind and
// that open only we, root and the directory's owner could swap the file: the
// directory rule above. listen() comes last: nobody connects before the mode
// and group are final.
//
// A socket left by a dead daemon is removed at startup only if lstat says it
// is a socket (not a link, not a file) and a connect to it is refused
// (ECONNREFUSED: nobody accepts); it is lstat'ed again just before unlink and
// kept if its inode changed. A tiny window remains between that lstat and
// unlink (another daemon that removed the same stale socket and bound its own
// in that window would lose its path); it cannot delete anything but a
// socket.
//
// When the drain begins, Stop() closes the listening socket (new connects are
// refused, as gRPC's own listener did); the path stays until the drain ends
// (clients still streaming stat it to learn the daemon's uid). At exit the
// path is unlinked only if lstat shows the socket this listener bound
// (S_ISSOCK and the same dev/ino as an O_PATH fd held on it since bind; that
// fd also keeps the inode number from being reused by another socket), so a
// daemon finishing its drain does not delete the socket of a daemon that
// replaced it meanwhile. The same small lstat-to-unlink window remains; it
// cannot delete a regular file or someone else's socket that was there
// before the lstat.
#ifndef BIGSMALL_DAEMON_LISTENER_H_
#define BIGSMALL_DAEMON_LISTENER_H_

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "daemon/peer.h"

namespace bigsmall::daemon {

struct ListenerOptions {
  std::string path;
  uint32_t mode = 0660;
  int gid = -1;                        // group of the socket (and of a dir we create); -1: ours
  size_t max_connections = 256;        // live connections in all
  size_t max_connections_per_uid = 64;  // live connections of one uid
};

// Checks (or creates) the socket's directory as described above.
absl::Status PrepareSocketDir(const std::string& dir, int gid);

// Removes `path` if it is a socket nobody accepts on; OK if it does not
// exist; ALREADY_EXISTS if a daemon listens there or it is not a socket.
absl::Status RemoveStaleSocket(const std::string& path);

class UnixListener {
 public:
  // Directory, stale socket, bind, owner/mode, listen. Nothing is accepted
  // before Start.
  static absl::StatusOr<std::unique_ptr<UnixListener>> Bind(const ListenerOptions& options);
  // Socket activation: takes `listen_fd`, a listening AF_UNIX stream socket
  // bound to options.path by systemd (sd_notify.h: TakeActivatedUnixSocket).
  // Its path, owner and mode are the .socket unit's (SocketMode=,
  // SocketGroup=); this listener never unlinks it (UnlinkIfOurs returns
  // false) and Stop() closes only its own copy (systemd keeps listening).
  static absl::StatusOr<std::unique_ptr<UnixListener>> Adopt(int listen_fd,
                                                             const ListenerOptions& options);
  ~UnixListener();  // Stop() and UnlinkIfOurs()

  UnixListener(const UnixListener&) = delete;
  UnixListener& operator=(const UnixListener&) = delete;

  // Starts the accept loop. Each accepted connection within the limits is
  // registered in `peers` and passed to `adopt` (which takes ownership of
  // the fd) on the loop's thread; others are closed with a log line.
  absl::Status Start(PeerTable* peers, std::function<void(int fd)> adopt);
  // Stops accepting (prompt: the loop also polls an eventfd) and closes the
  // listening socket (connects are refused from now on); connections already
  // handed over stay, and so does the path. Idempotent.
  void Stop();
  // Unlinks the path if it is still the socket this listener bound; returns
  // whether it did. Once only (later calls return false).
  bool UnlinkIfOurs();

  const std::string& path() const { return options_.path; }
  // Connections refused for a limit so far.
  uint64_t refused() const { return refused_.load(); }

 private:
  explicit UnixListener(ListenerOptions options) : options_(std::move(options)) {}
  void Loop();
  void HandleAccepted(int fd);
  void LogRefusal(const std::string& message);

  const ListenerOptions options_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: Stop() wakes the loop
  int path_fd_ = -1;  // O_PATH on the bound socket file: pins its inode
  dev_t dev_ = 0;     // the path's inode as bound
  ino_t ino_ = 0;
  bool unlinked_ = false;
  PeerTable* peers_ = nullptr;
  std::function<void(int)> adopt_;
  std::thread thread_;
  std::atomic<uint64_t> refused_{0};
  // Refusal log lines: at most one a second (the rest are counted).
  std::chrono::steady_clock::time_point last_refusal_log_{};
  uint64_t refusals_unlogged_ = 0;
};

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_LISTENER_H_
