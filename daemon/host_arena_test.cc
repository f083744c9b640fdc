#include "daemon/host_arena.h"

#include <cerrno>
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "daemon/layer_cache.h"
#include "gtest/gtest.h"

namespace bigsmall::daemon {
namespace {

int CountFiles(const std::string& dir) {
  int n = 0;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
    closedir(d);
  }
  return n;
}

int CountMappings(const std::string& dir) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  int n = 0;
  while (std::getline(maps, line)) n += absl::StrContains(line, dir + "/");
  return n;
}

class HostArenaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // tmpfs, as in production (fallocate and hole punching are cheap there).
    std::string tmpl = access("/dev/shm", W_OK) == 0 ? "/dev/shm/arena_testXXXXXX"
                                                     : "/tmp/arena_testXXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    root_ = tmpl;
    auto dir = ShmDir::Prepare(root_ + "/shm", "");
    ASSERT_TRUE(dir.ok()) << dir.status();
    shm_ = std::move(*dir);
  }
  void TearDown() override {
    shm_.reset();
    std::system(absl::StrCat("rm -rf '", root_, "'").c_str());
  }
  std::string root_;
  std::shared_ptr<ShmDir> shm_;
};

TEST_F(HostArenaTest, BlocksAreRangesOfAPrivateFile) {
  auto pool = MakeHostArenaPool(shm_, 1 << 20);
  auto a = pool->Allocate(10000);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE((*a)->Commit().ok());
  auto b = pool->Allocate(100);
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE((*b)->Commit().ok());
  EXPECT_EQ((*a)->arena_id(), (*b)->arena_id());
  EXPECT_EQ((*b)->offset(), 12288u);  // 10000 rounded up to pages
  (*a)->bytes()[9999] = 42;
  (*b)->bytes()[0] = 7;

  LayerData data;
  data.arena = std::move(*b);
  v1::HostMemory host;
  FillHostMemory(data, &host);
  EXPECT_EQ(host.offset(), 12288u);
  EXPECT_EQ(host.size(), 100u);
  EXPECT_EQ(host.arena_id(), (*a)->arena_id());
  EXPECT_TRUE(absl::StartsWith(host.path(), shm_->path() + "/")) << host.path();
  struct stat st;
  ASSERT_EQ(lstat(host.path().c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0640u);
  EXPECT_EQ(st.st_uid, geteuid());
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), 1u << 20);
  std::ifstream in(host.path(), std::ios::binary);
  in.seekg(12288);
  EXPECT_EQ(in.get(), 7);
  in.close();

  std::string path = host.path();
  data.arena.reset();
  a->reset();
  // The last (spare) arena goes with the pool.
  pool.reset();
  EXPECT_NE(lstat(path.c_str(), &st), 0);
  EXPECT_EQ(CountFiles(shm_->path()), 0);
}

// Issue 6: one file and one mmap per layer hit vm.max_map_count at 65k
// layers. Tens of thousands of tiny layers now use a handful of each.
TEST_F(HostArenaTest, TensOfThousandsOfTinyLayersUseAFewFilesAndMappings) {
  constexpr int kLayers = 30000;
  auto pool = MakeHostArenaPool(shm_, 64 << 20);  // 16384 pages per arena
  std::vector<std::unique_ptr<Block>> blocks;
  blocks.reserve(kLayers);
  for (int i = 0; i < kLayers; ++i) {
    auto b = pool->Allocate(100 + i % 1000);
    ASSERT_TRUE(b.ok()) << i << ": " << b.status();
    ASSERT_TRUE((*b)->Commit().ok()) << i;
    blocks.push_back(std::move(*b));
  }
  blocks.front()->bytes()[0] = 1;
  blocks.back()->bytes()[99] = 2;
  EXPECT_EQ(pool->stats().arenas, 2u);
  EXPECT_LE(CountFiles(shm_->path()), 2);
  EXPECT_LE(CountMappings(shm_->path()), 2);
  // Freeing returns every arena but one spare; a restart has little to delete.
  blocks.clear();
  EXPECT_EQ(CountFiles(shm_->path()), 1);
  EXPECT_EQ(pool->stats().allocated, 0u);
}

TEST_F(HostArenaTest, FreedBlocksGiveTheirPagesBack) {
  auto pool = MakeHostArenaPool(shm_, 16 << 20);
  auto a = pool->Allocate(8 << 20);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE((*a)->Commit().ok());
  std::memset((*a)->bytes().data(), 0xab, (*a)->size());
  auto keep = pool->Allocate(4096);
  ASSERT_TRUE(keep.ok());
  ASSERT_TRUE((*keep)->Commit().ok());
  LayerData data;
  data.arena = std::move(*keep);
  v1::HostMemory host;
  FillHostMemory(data, &host);
  struct stat st;
  ASSERT_EQ(stat(host.path().c_str(), &st), 0);
  EXPECT_GE(static_cast<uint64_t>(st.st_blocks) * 512, 8u << 20);
  a->reset();
  ASSERT_EQ(stat(host.path().c_str(), &st), 0);
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, 1u << 20);  // hole punched
}

// What a client sees: its own read-only mapping of a layer's arena file
// keeps the layer's bytes after a retired pool (a stopping daemon) freed
// the block and dropped the arena (the file is unlinked, not hole-punched).
// Without Retire() a freed block is hole-punched: the mapping reads zeros.
TEST_F(HostArenaTest, ARetiredPoolLeavesTheBytesOfFreedBlocksToItsReaders) {
  for (const bool retire : {false, true}) {
    SCOPED_TRACE(retire ? "retired" : "not retired");
    auto pool = MakeHostArenaPool(shm_, 1 << 20);
    auto block = pool->Allocate(3 * 4096);
    ASSERT_TRUE(block.ok()) << block.status();
    ASSERT_TRUE((*block)->Commit().ok());
    std::memset((*block)->bytes().data(), 0x5a, (*block)->size());
    LayerData data;
    data.arena = std::move(*block);
    v1::HostMemory host;
    FillHostMemory(data, &host);
    const int fd = open(host.path().c_str(), O_RDONLY | O_NOFOLLOW);
    ASSERT_GE(fd, 0) << host.path();
    struct stat st;
    ASSERT_EQ(fstat(fd, &st), 0);
    void* mapped = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    ASSERT_NE(mapped, MAP_FAILED);
    const uint8_t* layer = static_cast<const uint8_t*>(mapped) + host.offset();
    if (retire) pool->Retire();
    data.arena.reset();  // the lease ended: the block is freed
    if (retire) {
      pool.reset();  // the daemon exits: the arena is dropped
      EXPECT_NE(access(host.path().c_str(), F_OK), 0) << "the arena file was not unlinked";
    }
    const std::vector<uint8_t> want(host.size(), 0x5a);
    const std::vector<uint8_t> zeros(host.size(), 0);
    EXPECT_EQ(std::memcmp(layer, (retire ? want : zeros).data(), host.size()), 0);
    munmap(mapped, static_cast<size_t>(st.st_size));
  }
}

// The resident size of this process (/proc/self/statm).
// Resident bytes of a mapped range, by mincore(2): exact for the range
// itself, unlike the process's RSS, which a sanitizer's shadow memory (TSan
// maps shadow pages for every byte touched and keeps them) also counts.
uint64_t ResidentBytes(const uint8_t* data, uint64_t size) {
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((size + page - 1) / page);
  if (mincore(const_cast<uint8_t*>(data), size, vec.data()) != 0) {
    ADD_FAILURE() << "mincore: " << std::strerror(errno);
    return 0;
  }
  uint64_t resident = 0;
  for (unsigned char v : vec) resident += (v & 1) ? page : 0;
  return resident;
}

// Anonymous arenas (the Python extension's in-process loader): Commit backs
// the pages at once, freeing a block gives them back at once, in a block of
// its own arena (larger than the arena size) as in a shared arena.
TEST(AnonymousArenaTest, CommitBacksAndFreeReturnsThePages) {
  constexpr uint64_t kBig = 96ull << 20;
  constexpr uint64_t kSmall = 8ull << 20;
  auto pool = MakeAnonymousArenaPool(32ull << 20);
  auto big = pool->Allocate(kBig);
  ASSERT_TRUE(big.ok()) << big.status();
  EXPECT_EQ(ResidentBytes((*big)->bytes().data(), kBig), 0u);  // address space only
  ASSERT_TRUE((*big)->Commit().ok());
  EXPECT_EQ(ResidentBytes((*big)->bytes().data(), kBig), kBig);
  // Committed pages read as zeros and are writable.
  EXPECT_EQ((*big)->bytes()[0], 0);
  EXPECT_EQ((*big)->bytes()[kBig - 1], 0);
  (*big)->bytes()[kBig / 2] = 42;
  EXPECT_EQ(pool->stats().arenas, 1u);  // its own arena (dedicated)
  const uint64_t big_arena_bytes = pool->stats().arena_bytes;

  auto small = pool->Allocate(kSmall);
  auto other = pool->Allocate(kSmall);
  ASSERT_TRUE(small.ok() && other.ok());
  ASSERT_TRUE((*small)->Commit().ok());
  ASSERT_TRUE((*other)->Commit().ok());
  EXPECT_EQ((*small)->arena_id(), (*other)->arena_id());  // one shared arena
  std::memset((*small)->bytes().data(), 0xab, kSmall);
  std::memset((*other)->bytes().data(), 0xcd, kSmall);
  const uint8_t* small_data = (*small)->bytes().data();
  const uint8_t* other_data = (*other)->bytes().data();
  EXPECT_EQ(ResidentBytes(small_data, kSmall), kSmall);
  EXPECT_EQ(ResidentBytes(other_data, kSmall), kSmall);

  // A freed block of a shared arena returns its pages while the arena stays
  // mapped (the range is still ours to ask mincore about).
  small->reset();
  EXPECT_EQ(ResidentBytes(small_data, kSmall), 0u);
  EXPECT_EQ(ResidentBytes(other_data, kSmall), kSmall);
  EXPECT_EQ(pool->stats().arenas, 2u);
  EXPECT_EQ((*other)->bytes()[kSmall - 1], 0xcd);
  // The dedicated arena goes (is unmapped) with its block.
  const uint64_t before = pool->stats().arena_bytes;
  big->reset();
  EXPECT_EQ(pool->stats().arenas, 1u);
  EXPECT_EQ(pool->stats().arena_bytes, before - big_arena_bytes);
  other->reset();
  EXPECT_EQ(ResidentBytes(other_data, kSmall), 0u);
  EXPECT_EQ(pool->stats().allocated, 0u);
  // A reused range is committed again and reads as zeros.
  auto again = pool->Allocate(kSmall);
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE((*again)->Commit().ok());
  EXPECT_EQ(ResidentBytes((*again)->bytes().data(), kSmall), kSmall);
  EXPECT_EQ((*again)->bytes()[kSmall - 1], 0);
}

TEST(AnonymousArenaTest, ImpossibleSizesAreAllocationFailures) {
  auto pool = MakeAnonymousArenaPool();
  EXPECT_EQ(pool->arena_size(), kDefaultAnonymousArenaSize);
  for (uint64_t size : {UINT64_MAX, UINT64_MAX - 4096, uint64_t{1} << 62, uint64_t{1} << 50}) {
    auto block = pool->Allocate(size);
    ASSERT_FALSE(block.ok()) << size;
    EXPECT_EQ(block.status().code(), absl::StatusCode::kResourceExhausted) << block.status();
    if (size <= (uint64_t{1} << 62)) EXPECT_TRUE(IsAllocationFailure(block.status())) << size;
  }
  EXPECT_EQ(pool->stats().arenas, 0u);
  auto direct = AnonymousArena::Create(1, 0);
  EXPECT_EQ(direct.status().code(), absl::StatusCode::kResourceExhausted);
  auto arena = AnonymousArena::Create(1, 1 << 20);
  ASSERT_TRUE(arena.ok()) << arena.status();
  EXPECT_EQ((*arena)->Commit(4096, 1 << 20).code(), absl::StatusCode::kInternal);
  EXPECT_TRUE((*arena)->Commit(0, 1 << 20).ok());
}

}  // namespace
}  // namespace bigsmall::daemon
