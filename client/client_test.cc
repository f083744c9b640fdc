// The client's checks on the layer memory it maps (issue 6: a forged file
// in a swapped shm dir must not be mapped).
#include "client/client.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace bigsmall::client {
namespace {

int CountMappings(const std::string& path) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  int n = 0;
  while (std::getline(maps, line)) n += absl::EndsWith(line, " " + path);
  return n;
}

class MapLayerMemoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/client_testXXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    arena_ = dir_ + "/a1-tag";
    MakeFile(arena_, 0640);
  }
  void TearDown() override { std::system(absl::StrCat("rm -rf '", dir_, "'").c_str()); }

  void MakeFile(const std::string& path, mode_t mode) {
    int fd = open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0600);
    ASSERT_GE(fd, 0);
    std::string bytes(8192, '\0');
    bytes[4096] = 42;
    ASSERT_EQ(write(fd, bytes.data(), bytes.size()), 8192);
    ASSERT_EQ(fchmod(fd, mode), 0);
    close(fd);
  }
  v1::HostMemory Host(const std::string& path, uint64_t id, uint64_t offset = 4096,
                      uint64_t size = 100) {
    v1::HostMemory h;
    h.set_path(path);
    h.set_arena_id(id);
    h.set_offset(offset);
    h.set_size(size);
    return h;
  }
  std::string dir_, arena_;
};

TEST_F(MapLayerMemoryTest, MapsEachArenaOnceAndUnmapsWithTheLastLayer) {
  auto a = MapLayerMemory(Host(arena_, 1, 4096, 100), geteuid());
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ((*a).get()[4096], 42);
  auto b = MapLayerMemory(Host(arena_, 1, 0, 4096), geteuid());
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(a->get(), b->get());  // one mapping for both layers
  EXPECT_EQ(CountMappings(arena_), 1);
  a->reset();
  EXPECT_EQ(CountMappings(arena_), 1);
  b->reset();
  EXPECT_EQ(CountMappings(arena_), 0);
}

TEST_F(MapLayerMemoryTest, RefusesFilesTheDaemonDoesNotOwnOrOthersCanWrite) {
  auto other_owner = MapLayerMemory(Host(arena_, 2), geteuid() + 1);
  EXPECT_EQ(other_owner.status().code(), absl::StatusCode::kPermissionDenied)
      << other_owner.status();
  EXPECT_NE(other_owner.status().message().find("not by the daemon"), std::string::npos);
  std::string writable = dir_ + "/a3-tag";
  MakeFile(writable, 0666);
  auto w = MapLayerMemory(Host(writable, 3), geteuid());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kPermissionDenied) << w.status();
  std::string link = dir_ + "/a4-tag";
  ASSERT_EQ(symlink(arena_.c_str(), link.c_str()), 0);
  auto l = MapLayerMemory(Host(link, 4), geteuid());
  EXPECT_EQ(l.status().code(), absl::StatusCode::kFailedPrecondition) << l.status();
  std::string fifo = dir_ + "/a5-tag";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  auto f = MapLayerMemory(Host(fifo, 5), geteuid());  // and does not block
  EXPECT_EQ(f.status().code(), absl::StatusCode::kPermissionDenied) << f.status();
  EXPECT_EQ(CountMappings(writable), 0);
}

TEST_F(MapLayerMemoryTest, MissingMemoryIsNotFoundAndShortIsDataLoss) {
  // The call ended (drain expired) and the file is gone: not a permission
  // problem.
  auto gone = MapLayerMemory(Host(dir_ + "/a6-tag", 6), geteuid());
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kNotFound) << gone.status();
  auto past_end = MapLayerMemory(Host(arena_, 7, 8192, 1), geteuid());
  EXPECT_EQ(past_end.status().code(), absl::StatusCode::kDataLoss) << past_end.status();
  auto overflow = MapLayerMemory(Host(arena_, 7, UINT64_MAX, 2), geteuid());
  EXPECT_EQ(overflow.status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace bigsmall::client
