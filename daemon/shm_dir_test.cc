// The attacks of issue 6 on the shm directory, done in a temp dir.
#include "daemon/shm_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "daemon/config.h"
#include "daemon/host_arena.h"
#include "daemon/server.h"
#include "gtest/gtest.h"

namespace bigsmall::daemon {
namespace {

bool Exists(const std::string& p) {
  struct stat st;
  return ::lstat(p.c_str(), &st) == 0;
}

void WriteFile(const std::string& p, const std::string& text) {
  std::ofstream out(p);
  out << text;
}

class ShmDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/shm_dir_testXXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    base_ = root_ + "/bigsmall";
    victim_ = root_ + "/victim";
    ASSERT_EQ(mkdir(victim_.c_str(), 0700), 0);
    WriteFile(victim_ + "/precious.txt", "keep me");
    WriteFile(victim_ + "/also.txt", "and me");
  }
  void TearDown() override { std::system(absl::StrCat("rm -rf '", root_, "'").c_str()); }
  std::string root_, base_, victim_;
};

TEST_F(ShmDirTest, CreatesPrivateDirsAndRemovesTheInstance) {
  std::string instance;
  {
    auto dir = ShmDir::Prepare(base_, "");
    ASSERT_TRUE(dir.ok()) << dir.status();
    instance = (*dir)->path();
    EXPECT_EQ(instance, absl::StrCat(base_, "/d", getpid()));
    struct stat st;
    ASSERT_EQ(lstat(base_.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0750u);
    ASSERT_EQ(lstat(instance.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0750u);
    auto fd = (*dir)->CreateFile("a1", 0640);
    ASSERT_TRUE(fd.ok()) << fd.status();
    close(*fd);
    ASSERT_EQ(lstat((instance + "/a1").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0640u);
    EXPECT_FALSE((*dir)->CreateFile("a1", 0640).ok());  // exclusive
    EXPECT_FALSE((*dir)->CreateFile("../x", 0640).ok());
  }
  EXPECT_FALSE(Exists(instance));  // gone with the last reference
  EXPECT_TRUE(Exists(base_));
}

TEST_F(ShmDirTest, SymlinkedStaleInstanceIsUnlinkedNotFollowed) {
  ASSERT_EQ(mkdir(base_.c_str(), 0750), 0);
  // A stale-looking instance dir that is a link to the victim, and a real
  // stale dir holding a link to a victim file.
  ASSERT_EQ(symlink(victim_.c_str(), (base_ + "/d999999999").c_str()), 0);
  ASSERT_EQ(mkdir((base_ + "/d999999998").c_str(), 0750), 0);
  ASSERT_EQ(symlink((victim_ + "/also.txt").c_str(), (base_ + "/d999999998/a1").c_str()), 0);
  WriteFile(base_ + "/d999999998/a2", "stale arena");
  // The instance name of this very process, pre-created as a link.
  std::string mine = absl::StrCat(base_, "/d", getpid());
  ASSERT_EQ(symlink(victim_.c_str(), mine.c_str()), 0);
  auto dir = ShmDir::Prepare(base_, "");
  ASSERT_TRUE(dir.ok()) << dir.status();
  EXPECT_TRUE(Exists(victim_ + "/precious.txt"));
  EXPECT_TRUE(Exists(victim_ + "/also.txt"));
  EXPECT_FALSE(Exists(base_ + "/d999999999"));
  EXPECT_FALSE(Exists(base_ + "/d999999998"));
  struct stat st;
  ASSERT_EQ(lstat(mine.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));  // a real directory now, not the link
  auto fd = (*dir)->CreateFile("a1", 0640);
  ASSERT_TRUE(fd.ok());
  close(*fd);
  EXPECT_FALSE(Exists(victim_ + "/a1"));
  (*dir)->Remove();
  EXPECT_TRUE(Exists(victim_ + "/precious.txt"));
}

TEST_F(ShmDirTest, WorldWritableBaseIsRefused) {
  ASSERT_EQ(mkdir(base_.c_str(), 0700), 0);
  ASSERT_EQ(chmod(base_.c_str(), 0777), 0);
  auto dir = ShmDir::Prepare(base_, "");
  ASSERT_FALSE(dir.ok());
  EXPECT_EQ(dir.status().code(), absl::StatusCode::kFailedPrecondition) << dir.status();
  EXPECT_NE(dir.status().message().find("writable by group or others"), std::string::npos);
  struct stat st;
  ASSERT_EQ(stat(base_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0777u);  // not "repaired" either
  EXPECT_FALSE(Exists(absl::StrCat(base_, "/d", getpid())));
}

TEST_F(ShmDirTest, SymlinkedBaseIsRefused) {
  ASSERT_EQ(symlink(victim_.c_str(), base_.c_str()), 0);
  auto dir = ShmDir::Prepare(base_, "");
  ASSERT_FALSE(dir.ok());
  EXPECT_EQ(dir.status().code(), absl::StatusCode::kFailedPrecondition) << dir.status();
  EXPECT_FALSE(Exists(absl::StrCat(victim_, "/d", getpid())));
  struct stat st;
  ASSERT_EQ(stat(victim_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);  // no chmod through the link
}

TEST_F(ShmDirTest, BaseOwnedByAnotherUserIsRefused) {
  if (geteuid() != 0) {
    GTEST_SKIP() << "needs root to make a directory owned by another user";
  }
  struct passwd* nobody = getpwnam("nobody");
  ASSERT_NE(nobody, nullptr);
  ASSERT_EQ(mkdir(base_.c_str(), 0755), 0);
  ASSERT_EQ(chown(base_.c_str(), nobody->pw_uid, nobody->pw_gid), 0);
  auto dir = ShmDir::Prepare(base_, "");
  ASSERT_FALSE(dir.ok());
  EXPECT_EQ(dir.status().code(), absl::StatusCode::kFailedPrecondition) << dir.status();
  EXPECT_NE(dir.status().message().find("owned by uid"), std::string::npos);
}

TEST_F(ShmDirTest, BaseSwappedForASymlinkAfterStartChangesNothing) {
  auto dir = ShmDir::Prepare(base_, "");
  ASSERT_TRUE(dir.ok()) << dir.status();
  std::shared_ptr<ShmDir> shm = std::move(*dir);
  std::string instance = shm->path();
  // The attacker moves the base away and puts a link to a world-writable
  // dir of theirs in its place, with the instance name in it.
  std::string moved = root_ + "/moved";
  ASSERT_EQ(rename(base_.c_str(), moved.c_str()), 0);
  std::string evil = root_ + "/evil";
  ASSERT_EQ(mkdir(evil.c_str(), 0777), 0);
  ASSERT_EQ(mkdir(absl::StrCat(evil, "/d", getpid()).c_str(), 0777), 0);
  ASSERT_EQ(symlink(evil.c_str(), base_.c_str()), 0);
  auto pool = MakeHostArenaPool(shm, 1 << 20);
  auto block = pool->Allocate(5000);
  ASSERT_TRUE(block.ok()) << block.status();
  ASSERT_TRUE((*block)->Commit().ok());
  // The arena went into the original dir, through the held fd.
  int files_in_evil = 0, files_in_moved = 0;
  for (const char* d : {"evil", "moved"}) {
    std::string p = absl::StrCat(root_, "/", d, "/d", getpid());
    std::unique_ptr<DIR, int (*)(DIR*)> h(opendir(p.c_str()), closedir);
    ASSERT_NE(h, nullptr);
    while (dirent* e = readdir(h.get())) {
      if (e->d_name[0] != '.') ++(std::string(d) == "evil" ? files_in_evil : files_in_moved);
    }
  }
  EXPECT_EQ(files_in_evil, 0);
  EXPECT_EQ(files_in_moved, 1);
  block->reset();
  pool.reset();
  shm.reset();
  // Cleanup went through the fds too: the original instance dir is gone,
  // the attacker's dir untouched.
  EXPECT_FALSE(Exists(absl::StrCat(moved, "/d", getpid())));
  EXPECT_TRUE(Exists(absl::StrCat(evil, "/d", getpid())));
}

TEST_F(ShmDirTest, DefaultBudgetIsCappedByTheShmFilesystem) {
  EXPECT_EQ(DefaultHostBudget(8ull << 30, 4ull << 30), (4ull << 30) / 10 * 9);
  EXPECT_EQ(DefaultHostBudget(1ull << 30, 4ull << 30), 1ull << 30);
  auto dir = ShmDir::Prepare(base_, "");
  ASSERT_TRUE(dir.ok());
  auto free = (*dir)->FreeBytes();
  ASSERT_TRUE(free.ok());
  EXPECT_LE(HostCacheBudget(UINT64_MAX / 2, **dir), *free);
}

// Issue 6: a failed start left an empty instance dir behind.
TEST_F(ShmDirTest, FailedDaemonStartLeavesNoInstanceDir) {
  DaemonConfig config;
  config.shm_dir = base_;
  config.socket = root_ + "/" + std::string(200, 's') + ".sock";  // too long to bind
  config.cache_budget = 1 << 20;
  absl::Status st = RunDaemon(config);
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(Exists(base_));
  EXPECT_FALSE(Exists(absl::StrCat(base_, "/d", getpid()))) << st;
}

TEST_F(ShmDirTest, UnknownGroupIsNotFound) {
  EXPECT_EQ(LookupGroup("no-such-group-bigsmall").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*LookupGroup(""), -1);
  EXPECT_EQ(ShmDir::Prepare(base_, "no-such-group-bigsmall").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace bigsmall::daemon
