#include "daemon/peer.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace bigsmall::daemon {
namespace {

struct Pair {
  int a = -1, b = -1;
  Pair() {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    a = fds[0];
    b = fds[1];
  }
  ~Pair() {
    if (a >= 0) ::close(a);
    if (b >= 0) ::close(b);
  }
};

PeerCred Cred(uid_t uid, gid_t gid = 100, pid_t pid = 42) {
  PeerCred c;
  c.uid = uid;
  c.gid = gid;
  c.pid = pid;
  return c;
}

TEST(PeerCredTest, ReadsTheKernelCredentialsOfTheOtherEnd) {
  Pair p;
  auto cred = ReadPeerCred(p.a);
  ASSERT_TRUE(cred.ok()) << cred.status();
  EXPECT_EQ(cred->pid, ::getpid());
  EXPECT_EQ(cred->uid, ::geteuid());
  EXPECT_EQ(cred->gid, ::getegid());
  EXPECT_NE(DescribePeer(*cred).find(absl::StrCat("uid ", ::geteuid())), std::string::npos);
  // Not a socket: an error, not garbage.
  int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(null_fd, 0);
  EXPECT_FALSE(ReadPeerCred(null_fd).ok());
  ::close(null_fd);
}

TEST(PeerCredTest, ParsesOnlyFdPeers) {
  EXPECT_EQ(ParseFdPeer("fd:7"), 7);
  EXPECT_EQ(ParseFdPeer("fd:0"), 0);
  EXPECT_FALSE(ParseFdPeer("fd:").has_value());
  EXPECT_FALSE(ParseFdPeer("fd:-1").has_value());
  EXPECT_FALSE(ParseFdPeer("fd:7x").has_value());
  EXPECT_FALSE(ParseFdPeer("fd:99999999999").has_value());
  EXPECT_FALSE(ParseFdPeer("ipv4:127.0.0.1:5000").has_value());
  EXPECT_FALSE(ParseFdPeer("unix:/run/bigsmall/bigsmall.sock").has_value());
  EXPECT_FALSE(ParseFdPeer("inproc").has_value());
  EXPECT_FALSE(ParseFdPeer("").has_value());
}

TEST(PeerTableTest, LooksUpLiveConnectionsOnly) {
  PeerTable table;
  Pair p;
  auto n = table.Register(p.a, Cred(1234));
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, p.a);
  auto got = table.Lookup(p.a);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->uid, 1234u);
  ASSERT_TRUE(table.LookupPeer(absl::StrCat("fd:", p.a)).has_value());
  EXPECT_FALSE(table.LookupPeer("ipv4:127.0.0.1:1").has_value());
  EXPECT_FALSE(table.Lookup(p.b).has_value());  // never registered

  // gRPC closes the connection; the number is reused for a file: the entry
  // does not follow the number.
  int number = p.a;
  ::close(p.a);
  p.a = -1;
  EXPECT_FALSE(table.Lookup(number).has_value());
  int file = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_EQ(file, number);  // lowest free number
  EXPECT_FALSE(table.Lookup(number).has_value());
  ::close(file);
}

TEST(PeerTableTest, ANewConnectionDoesNotTakeTheNumberOfOneJustClosed) {
  PeerTable table;
  auto* old_pair = new Pair;
  int number = old_pair->a;
  ASSERT_TRUE(table.Register(old_pair->a, Cred(1000)).ok());
  ::close(old_pair->a);
  old_pair->a = -1;
  // The kernel gives the next socket the same number.
  Pair fresh;
  ASSERT_EQ(fresh.a, number);
  EXPECT_FALSE(table.Lookup(number).has_value());  // another socket now
  auto moved = table.Register(fresh.a, Cred(0));
  fresh.a = moved.ok() ? *moved : -1;  // Register moved (closed) the original
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_NE(*moved, number);
  // A late call of the old connection ("fd:<number>") is not taken for the
  // new one (root here): it is unidentified.
  EXPECT_FALSE(table.Lookup(number).has_value());
  auto got = table.Lookup(*moved);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->uid, 0u);
  delete old_pair;
}

TEST(PeerTableTest, PruneCountsLiveConnectionsPerUid) {
  PeerTable table;
  Pair x, y, z;
  ASSERT_TRUE(table.Register(x.a, Cred(1)).ok());
  ASSERT_TRUE(table.Register(y.a, Cred(1)).ok());
  ASSERT_TRUE(table.Register(z.a, Cred(2)).ok());
  auto c = table.Prune(1);
  EXPECT_EQ(c.total, 3u);
  EXPECT_EQ(c.same_uid, 2u);
  ::close(y.a);
  y.a = -1;
  c = table.Prune(1);
  EXPECT_EQ(c.total, 2u);
  EXPECT_EQ(c.same_uid, 1u);
  EXPECT_EQ(table.Prune(2).same_uid, 1u);
  EXPECT_EQ(table.Prune(3).same_uid, 0u);
  table.Clear();
  EXPECT_EQ(table.Prune(1).total, 0u);
}

TEST(PeerTableTest, RegisterRefusesANonSocketAndClosesIt) {
  PeerTable table;
  int file = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(file, 0);
  EXPECT_FALSE(table.Register(file, Cred(1)).ok());
  EXPECT_EQ(::fcntl(file, F_GETFD), -1);  // closed
}

TEST(PeerTableTest, ConcurrentLookupsAndRegistrations) {
  PeerTable table;
  std::vector<Pair> pairs(16);
  for (auto& p : pairs) ASSERT_TRUE(table.Register(p.a, Cred(7)).ok());
  std::atomic<bool> stop{false};
  std::atomic<int> found{0};
  std::thread reader([&] {
    while (!stop.load()) {
      for (auto& p : pairs) found += table.LookupPeer(absl::StrCat("fd:", p.a)).has_value();
    }
  });
  for (int i = 0; i < 200; ++i) {
    Pair extra;
    auto n = table.Register(extra.a, Cred(8));
    ASSERT_TRUE(n.ok());
    extra.a = *n;
    table.Prune(8);
  }
  stop = true;
  reader.join();
  EXPECT_GT(found.load(), 0);
  EXPECT_EQ(table.Prune(7).same_uid, 16u);
}

TEST(AdminPolicyTest, DaemonUserRootAndAdminGroupOnly) {
  AdminPolicy policy{1000, std::nullopt};
  EXPECT_TRUE(IsAdmin(Cred(1000), policy));
  EXPECT_TRUE(IsAdmin(Cred(0), policy));
  EXPECT_FALSE(IsAdmin(Cred(1001), policy));
  EXPECT_FALSE(IsAdmin(Cred(65534, 65534), policy));
  policy.admin_gid = 500;
  EXPECT_TRUE(IsAdmin(Cred(1001, 500), policy));  // primary group
  PeerCred member = Cred(1002, 100);
  member.groups = {20, 500};
  EXPECT_TRUE(IsAdmin(member, policy));  // supplementary group
  member.groups = {20, 501};
  EXPECT_FALSE(IsAdmin(member, policy));
}

TEST(AdminPolicyTest, UnidentifiedCallsAreRefused) {
  // No context (in-process) and no table entry: PERMISSION_DENIED.
  EXPECT_EQ(AuthorizeAdmin(nullptr, "Evict").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_FALSE(PeerOf(nullptr).has_value());
}

}  // namespace
}  // namespace bigsmall::daemon
