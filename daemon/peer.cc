#include "daemon/peer.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "codec/status_util.h"
#include "grpcpp/server_context.h"
#include "spdlog/spdlog.h"

namespace bigsmall::daemon {

absl::StatusOr<PeerCred> ReadPeerCred(int fd) {
  ucred uc{};
  socklen_t len = sizeof(uc);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) != 0) {
    return ErrnoToStatus(errno, "SO_PEERCRED");
  }
  if (len != sizeof(uc)) return absl::InternalError("SO_PEERCRED: short answer");
  PeerCred cred;
  cred.pid = uc.pid;
  cred.uid = uc.uid;
  cred.gid = uc.gid;
#ifdef SO_PEERGROUPS
  // The kernel says how much room the list needs (ERANGE); bounded by
  // NGROUPS_MAX (65536) gids.
  std::vector<gid_t> groups(32);
  for (int attempt = 0; attempt < 3; ++attempt) {
    socklen_t glen = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) == 0) {
      groups.resize(glen / sizeof(gid_t));
      cred.groups = std::move(groups);
      cred.groups_known = true;
      break;
    }
    if (errno != ERANGE || glen / sizeof(gid_t) > 65536) break;
    groups.resize(glen / sizeof(gid_t));
  }
#endif
  return cred;
}

std::string DescribePeer(const PeerCred& cred) {
  return absl::StrCat("uid ", cred.uid, " gid ", cred.gid, " pid ", cred.pid);
}

std::optional<int> ParseFdPeer(absl::string_view grpc_peer) {
  constexpr absl::string_view kPrefix = "fd:";
  if (grpc_peer.substr(0, kPrefix.size()) != kPrefix) return std::nullopt;
  absl::string_view digits = grpc_peer.substr(kPrefix.size());
  if (digits.empty() || digits.size() > 10) return std::nullopt;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
  }
  int fd = 0;
  if (!absl::SimpleAtoi(digits, &fd) || fd < 0) return std::nullopt;
  return fd;
}

namespace {

// fstat of an fd number that gRPC may close (and the process reuse) at any
// moment on another thread: that race is the point (the inode says whether
// the number still is the connection), so this goes to the kernel directly.
// The libc call would do the same, but ThreadSanitizer's fstat interceptor
// reports every such use of an fd number closed elsewhere as a data race.
int RawFstat(int fd, struct stat* st) {
#ifdef SYS_fstat
  return static_cast<int>(::syscall(SYS_fstat, fd, st));
#else
  return static_cast<int>(::syscall(SYS_newfstatat, fd, "", st, AT_EMPTY_PATH));
#endif
}

}  // namespace

bool PeerTable::StillSame(int fd, const Entry& entry) {
  struct stat st;
  return RawFstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == entry.dev &&
         st.st_ino == entry.ino;
}

void PeerTable::PruneLocked(std::chrono::steady_clock::time_point now) {
  size_t dead = 0;
  for (auto it = by_fd_.begin(); it != by_fd_.end();) {
    Entry& e = it->second;
    if (!e.dead_since.has_value() && !StillSame(it->first, e)) e.dead_since = now;
    if (e.dead_since.has_value()) {
      if (now - *e.dead_since > kQuarantine) {
        it = by_fd_.erase(it);
        continue;
      }
      ++dead;
    }
    ++it;
  }
  if (dead <= kMaxDead) return;
  // Too many closed connections in the quarantine window: forget the oldest.
  std::vector<std::pair<std::chrono::steady_clock::time_point, int>> order;
  order.reserve(dead);
  for (const auto& [fd, e] : by_fd_) {
    if (e.dead_since.has_value()) order.emplace_back(*e.dead_since, fd);
  }
  std::sort(order.begin(), order.end());
  for (size_t i = 0; i + kMaxDead < order.size(); ++i) by_fd_.erase(order[i].second);
}

absl::StatusOr<int> PeerTable::Register(int fd, const PeerCred& cred) {
  struct stat st;
  // RawFstat: this fd goes to gRPC, whose close TSan does not see (listener.cc).
  if (RawFstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) {
    int err = errno;
    ::close(fd);
    return ErrnoToStatus(err == 0 ? ENOTSOCK : err, "register connection");
  }
  std::lock_guard<std::mutex> lock(mu_);
  PruneLocked(std::chrono::steady_clock::now());
  int number = fd;
  if (by_fd_.count(number) != 0) {
    // The entry under this number is dead (fd is a new socket): a call of
    // that old connection may still look it up, so this connection goes to
    // a number no entry holds. F_DUPFD returns the lowest free number >= its
    // argument; live entries' numbers are open, so only dead ones can come
    // back, at most once each.
    number = -1;
    int from = fd + 1;
    for (size_t tries = 0; tries <= by_fd_.size() + 1; ++tries) {
      int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, from);
      if (dup < 0) {
        int err = errno;
        ::close(fd);
        return ErrnoToStatus(err, "move connection to a free fd number");
      }
      if (by_fd_.count(dup) == 0) {
        number = dup;
        break;
      }
      ::close(dup);
      from = dup + 1;
    }
    ::close(fd);
    if (number < 0) return absl::ResourceExhaustedError("no free fd number for a connection");
  }
  by_fd_[number] = Entry{cred, st.st_dev, st.st_ino, std::nullopt};
  return number;
}

std::optional<PeerCred> PeerTable::Lookup(int fd) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = by_fd_.find(fd);
  if (it == by_fd_.end() || it->second.dead_since.has_value()) return std::nullopt;
  if (!StillSame(fd, it->second)) return std::nullopt;
  return it->second.cred;
}

std::optional<PeerCred> PeerTable::LookupPeer(absl::string_view grpc_peer) const {
  std::optional<int> fd = ParseFdPeer(grpc_peer);
  if (!fd.has_value()) return std::nullopt;
  return Lookup(*fd);
}

PeerTable::Counts PeerTable::Prune(uid_t uid) {
  std::lock_guard<std::mutex> lock(mu_);
  PruneLocked(std::chrono::steady_clock::now());
  Counts counts;
  for (const auto& [fd, e] : by_fd_) {
    if (e.dead_since.has_value()) continue;
    ++counts.total;
    if (e.cred.uid == uid) ++counts.same_uid;
  }
  return counts;
}

void PeerTable::Clear() {
  std::lock_guard<std::mutex> lock(mu_);
  by_fd_.clear();
}

bool IsAdmin(const PeerCred& cred, const AdminPolicy& policy) {
  if (cred.uid == 0 || cred.uid == policy.daemon_uid) return true;
  if (!policy.admin_gid.has_value()) return false;
  if (cred.gid == *policy.admin_gid) return true;
  return std::find(cred.groups.begin(), cred.groups.end(), *policy.admin_gid) !=
         cred.groups.end();
}

namespace {

struct PolicyHolder {
  std::mutex mu;
  AdminPolicy policy{::geteuid(), std::nullopt};
};

PolicyHolder& Policy() {
  static PolicyHolder* holder = new PolicyHolder;
  return *holder;
}

}  // namespace

PeerTable& DaemonPeers() {
  static PeerTable* table = new PeerTable;
  return *table;
}

void SetAdminPolicy(const AdminPolicy& policy) {
  PolicyHolder& h = Policy();
  std::lock_guard<std::mutex> lock(h.mu);
  h.policy = policy;
}

AdminPolicy GetAdminPolicy() {
  PolicyHolder& h = Policy();
  std::lock_guard<std::mutex> lock(h.mu);
  return h.policy;
}

std::optional<PeerCred> PeerOf(const grpc::CallbackServerContext* ctx) {
  if (ctx == nullptr) return std::nullopt;
  return DaemonPeers().LookupPeer(ctx->peer());
}

std::string PeerForLog(const grpc::CallbackServerContext* ctx) {
  std::optional<PeerCred> cred = PeerOf(ctx);
  if (cred.has_value()) return DescribePeer(*cred);
  return absl::StrCat("unidentified peer ", ctx == nullptr ? "(none)" : EscapeForLog(ctx->peer()));
}

absl::Status AuthorizeAdmin(const grpc::CallbackServerContext* ctx, absl::string_view call) {
  const std::string what(call);
  std::optional<PeerCred> cred = PeerOf(ctx);
  if (!cred.has_value()) {
    std::string who = PeerForLog(ctx);
    spdlog::warn("{} refused: {} (admin calls need the Unix socket)", what, who);
    return absl::PermissionDeniedError(
        absl::StrCat(call, " is an admin call: only over the daemon's Unix socket, by its user, "
                           "root or the admin group"));
  }
  if (!IsAdmin(*cred, GetAdminPolicy())) {
    spdlog::warn("{} refused: {} is not an admin", what, DescribePeer(*cred));
    return absl::PermissionDeniedError(
        absl::StrCat(call, " is an admin call: uid ", cred->uid,
                     " is not the daemon's user, root or in the admin group"));
  }
  spdlog::info("{} by {}", what, DescribePeer(*cred));
  return absl::OkStatus();
}

}  // namespace bigsmall::daemon
