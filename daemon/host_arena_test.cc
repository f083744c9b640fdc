#include "daemon/host_arena.h"

#include <sys/stat.h>
#include <unistd.h>

#include "gtest/gtest.h"

namespace bigsmall::daemon {
namespace {

TEST(HostArenaTest, CreatesPrivateFileAndRemovesIt) {
  char tmpl[] = "/tmp/arena_testXXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  auto instance = PrepareShmDir(tmpl, "");
  ASSERT_TRUE(instance.ok()) << instance.status();
  struct stat st;
  ASSERT_EQ(stat(instance->c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0750u);
  std::string path;
  {
    auto arena = HostArena::Create(*instance, "a", 10000);
    ASSERT_TRUE(arena.ok()) << arena.status();
    path = (*arena)->path();
    ASSERT_EQ(stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0640u);
    EXPECT_EQ(st.st_size, 10000);
    (*arena)->bytes()[9999] = 42;
    EXPECT_FALSE(HostArena::Create(*instance, "a", 10).ok());  // exclusive
  }
  EXPECT_NE(stat(path.c_str(), &st), 0);  // unlinked
  RemoveShmDir(*instance);
  EXPECT_NE(stat(instance->c_str(), &st), 0);
  rmdir(tmpl);
}

TEST(HostArenaTest, StaleInstanceDirsAreRemoved) {
  char tmpl[] = "/tmp/arena_testXXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  std::string stale = std::string(tmpl) + "/d999999999";
  ASSERT_EQ(mkdir(stale.c_str(), 0700), 0);
  auto instance = PrepareShmDir(tmpl, "");
  ASSERT_TRUE(instance.ok());
  struct stat st;
  EXPECT_NE(stat(stale.c_str(), &st), 0);
  RemoveShmDir(*instance);
  rmdir(tmpl);
}

TEST(HostArenaTest, UnknownGroupIsNotFound) {
  EXPECT_EQ(LookupGroup("no-such-group-bigsmall").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*LookupGroup(""), -1);
}

}  // namespace
}  // namespace bigsmall::daemon
