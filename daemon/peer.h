// Who is asking: the kernel-verified credentials (SO_PEERCRED) of the process
// at the other end of a Unix socket connection, and the admin check built on
// them.
//
// gRPC 1.51's C++ API cannot reach SO_PEERCRED: a call's AuthContext holds
// only "transport_security_type" for insecure and local credentials, a server
// socket mutator sees the accepted fd but not the call, and the peer string of
// a Unix socket connection is "unix:" (the client's unnamed address). So the
// daemon accepts on its Unix socket itself (daemon/listener.h), reads
// SO_PEERCRED there, records it here under the fd number, and hands the fd to
// gRPC with grpc::AddInsecureChannelFromFd. gRPC names such a connection
// "fd:<N>" (chttp2_server.cc: absl::StrCat("fd:", fd)), and that is what
// ServerContext::peer() returns for every call on it: PeerOf() parses it back.
//
// Why an fd number identifies a connection, and where that stops:
//  * Among open descriptors an fd number is unique, and the entry also keeps
//    the socket's inode (sockfs gives each socket its own): a lookup checks
//    with fstat that fd N is still that socket, so an fd that gRPC closed and
//    the process reused for a file or for another socket never inherits the
//    entry.
//  * A call whose connection has just closed can still reach its handler. If
//    the accept loop then gave the same number to a new connection, the old
//    call's "fd:N" would name the new peer. So a number is not handed to gRPC
//    again while an entry for it is dead but young (kQuarantine): a new
//    connection that the kernel put on such a number is moved to another one
//    first (Register). A lookup on a dead entry finds nothing: the call is
//    unidentified, which fails closed (no admin). What remains: a handler
//    that starts more than kQuarantine after its own connection closed.
//  * TCP connections are gRPC's own ("ipv4:..."/"ipv6:..."): unidentified.
#ifndef BIGSMALL_DAEMON_PEER_H_
#define BIGSMALL_DAEMON_PEER_H_

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace grpc {
class CallbackServerContext;
}

namespace bigsmall::daemon {

struct PeerCred {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;                // primary group at connect time
  std::vector<gid_t> groups;    // supplementary groups (SO_PEERGROUPS)
  bool groups_known = false;    // false on kernels without SO_PEERGROUPS
};

// SO_PEERCRED (+ SO_PEERGROUPS) of a connected Unix socket.
absl::StatusOr<PeerCred> ReadPeerCred(int fd);

// "uid 1000 gid 1000 pid 4242" for log lines.
std::string DescribePeer(const PeerCred& cred);

// The credentials of the daemon's accepted connections. Thread-safe.
class PeerTable {
 public:
  // How long a dead entry's fd number is kept from new connections.
  static constexpr std::chrono::seconds kQuarantine{30};
  // Dead entries kept at most (the oldest go first beyond this).
  static constexpr size_t kMaxDead = 4096;

  // Records the connection `fd` (an open socket) for `cred`. Returns the fd
  // number to hand to gRPC: `fd` itself, or, when `fd`'s number belongs to a
  // recently closed connection, a duplicate on a free number (`fd` is then
  // closed). On error `fd` is closed.
  absl::StatusOr<int> Register(int fd, const PeerCred& cred);

  // The credentials of connection `fd` if it is live and still the socket
  // that was registered under that number.
  std::optional<PeerCred> Lookup(int fd) const;
  // Same, from a gRPC peer string: "fd:<N>"; nullopt for anything else.
  std::optional<PeerCred> LookupPeer(absl::string_view grpc_peer) const;

  // Marks entries whose connection is gone as dead (and forgets old dead
  // ones); returns how many live connections remain, in all and for `uid`.
  struct Counts {
    size_t total = 0;
    size_t same_uid = 0;
  };
  Counts Prune(uid_t uid);

  // Forgets every entry (the listener stopped).
  void Clear();

 private:
  struct Entry {
    PeerCred cred;
    dev_t dev = 0;
    ino_t ino = 0;
    std::optional<std::chrono::steady_clock::time_point> dead_since;
  };
  static bool StillSame(int fd, const Entry& entry);
  void PruneLocked(std::chrono::steady_clock::time_point now);

  mutable std::mutex mu_;
  std::unordered_map<int, Entry> by_fd_;
};

// "fd:<N>" -> N; nullopt for any other peer string.
std::optional<int> ParseFdPeer(absl::string_view grpc_peer);

// Who may call Evict (and its unload): the daemon's effective uid, root, and
// members (primary or supplementary) of the configured admin group.
struct AdminPolicy {
  uid_t daemon_uid = 0;
  std::optional<gid_t> admin_gid;
};
bool IsAdmin(const PeerCred& cred, const AdminPolicy& policy);

// The daemon's table and policy (one daemon per process): the listener
// registers connections in it, the service looks calls up in it.
PeerTable& DaemonPeers();
void SetAdminPolicy(const AdminPolicy& policy);  // default: geteuid(), no group
AdminPolicy GetAdminPolicy();

// The credentials of the process that made this call; nullopt for TCP and
// in-process peers (and calls whose connection is gone).
std::optional<PeerCred> PeerOf(const grpc::CallbackServerContext* ctx);
// For log lines: DescribePeer, or "unidentified peer <escaped peer string>".
std::string PeerForLog(const grpc::CallbackServerContext* ctx);
// OK for an admin peer; PERMISSION_DENIED (naming `call` and the uid) for
// others and for unidentified peers. Logs the decision with the peer.
absl::Status AuthorizeAdmin(const grpc::CallbackServerContext* ctx, absl::string_view call);

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_PEER_H_
