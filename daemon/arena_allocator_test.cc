#include "daemon/arena_allocator.h"

#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace bigsmall::daemon {
namespace {

TEST(RangeAllocatorTest, BestFitAlignedAndCoalescing) {
  RangeAllocator r(64 * 4096, 4096);
  auto a = r.Allocate(1);
  auto b = r.Allocate(4097);
  auto c = r.Allocate(4096);
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(*a, 0u);
  EXPECT_EQ(*b, 4096u);
  EXPECT_EQ(*c, 3 * 4096u);
  EXPECT_EQ(r.used(), 4 * 4096u);
  r.Free(*b, 4097);  // a hole of 2 pages
  auto d = r.Allocate(100);  // best fit: the hole, not the big tail
  ASSERT_TRUE(d);
  EXPECT_EQ(*d, 4096u);
  r.Free(*a, 1);
  r.Free(*d, 100);
  r.Free(*c, 4096);
  EXPECT_TRUE(r.empty());
  EXPECT_EQ(r.free_ranges(), 1u);  // all coalesced
  EXPECT_EQ(r.largest_free(), 64 * 4096u);
  EXPECT_FALSE(r.Allocate(65 * 4096));
  EXPECT_TRUE(r.Allocate(64 * 4096));
  EXPECT_FALSE(r.Allocate(1));
}

TEST(RangeAllocatorTest, RandomizedNoOverlapAndFullRecovery) {
  RangeAllocator r(1 << 24, 4096);
  std::mt19937 rng(7);
  std::map<uint64_t, uint64_t> live;  // offset -> size
  for (int i = 0; i < 20000; ++i) {
    if (live.empty() || rng() % 3 != 0) {
      uint64_t size = 1 + rng() % 50000;
      auto off = r.Allocate(size);
      if (!off) continue;
      EXPECT_EQ(*off % 4096, 0u);
      auto next = live.lower_bound(*off);
      if (next != live.end()) ASSERT_LE(*off + size, next->first);
      if (next != live.begin()) {
        auto prev = std::prev(next);
        ASSERT_LE(prev->first + prev->second, *off);
      }
      live[*off] = size;
    } else {
      auto it = live.begin();
      std::advance(it, rng() % live.size());
      r.Free(it->first, it->second);
      live.erase(it);
    }
  }
  for (auto& [off, size] : live) r.Free(off, size);
  EXPECT_TRUE(r.empty());
  EXPECT_EQ(r.free_ranges(), 1u);
}

// An arena of plain memory: the pool does not care what kind it is.
class FakeArena : public Arena {
 public:
  FakeArena(uint64_t id, uint64_t capacity, int* live)
      : Arena(id, capacity), mem_(capacity), live_(live) {
    ++*live_;
  }
  ~FakeArena() override { --*live_; }
  uint8_t* base() override { return mem_.data(); }
  absl::Status Commit(uint64_t, uint64_t size) override {
    committed_ += size;
    return absl::OkStatus();
  }
  void Decommit(uint64_t, uint64_t size) override { committed_ -= size; }
  uint64_t committed_ = 0;

 private:
  std::vector<uint8_t> mem_;
  int* live_;
};

TEST(ArenaPoolTest, PlacesBlocksInFewArenasAndDedicatesHugeOnes) {
  int live = 0;
  std::vector<uint64_t> capacities;
  auto pool = ArenaPool::Create({1 << 20, "test"}, [&](uint64_t id, uint64_t capacity)
                                    -> absl::StatusOr<std::unique_ptr<Arena>> {
    capacities.push_back(capacity);
    return std::unique_ptr<Arena>(new FakeArena(id, capacity, &live));
  });
  std::vector<std::unique_ptr<Block>> blocks;
  for (int i = 0; i < 512; ++i) {  // 512 x 1 page = 2 MiB: 2 arenas
    auto b = pool->Allocate(100);
    ASSERT_TRUE(b.ok());
    EXPECT_EQ((*b)->cost(), 4096u);
    ASSERT_TRUE((*b)->Commit().ok());
    blocks.push_back(std::move(*b));
  }
  EXPECT_EQ(live, 2);
  EXPECT_EQ(pool->stats().allocated, 512u * 4096);
  std::set<std::pair<uint64_t, uint64_t>> places;
  for (auto& b : blocks) places.insert({b->arena_id(), b->offset()});
  EXPECT_EQ(places.size(), 512u);
  auto huge = pool->Allocate(3 << 20);  // bigger than an arena: its own
  ASSERT_TRUE(huge.ok());
  EXPECT_EQ(live, 3);
  EXPECT_EQ(capacities.back(), 3u << 20);
  huge->reset();
  EXPECT_EQ(live, 2);  // dedicated arenas go with their block
  blocks.clear();
  EXPECT_EQ(live, 1);  // one empty arena kept as a spare
  EXPECT_EQ(pool->stats().allocated, 0u);
  EXPECT_EQ(pool->stats().blocks, 0u);
}

TEST(ArenaPoolTest, FreedRangeIsReusedOnlyAfterItsBlockIsGone) {
  int live = 0;
  auto pool = ArenaPool::Create({1 << 16, "test"}, [&](uint64_t id, uint64_t capacity)
                                    -> absl::StatusOr<std::unique_ptr<Arena>> {
    return std::unique_ptr<Arena>(new FakeArena(id, capacity, &live));
  });
  auto a = pool->Allocate(1 << 16);
  ASSERT_TRUE(a.ok());
  auto b = pool->Allocate(100);  // arena 1 is full: a second arena
  ASSERT_TRUE(b.ok());
  EXPECT_NE((*a)->arena_id(), (*b)->arena_id());
  uint64_t a_id = (*a)->arena_id();
  a->reset();
  auto c = pool->Allocate(1 << 16);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->arena_id(), a_id);
  EXPECT_EQ((*c)->offset(), 0u);
}

TEST(ArenaPoolTest, FactoryErrorsAreReturned) {
  auto pool = ArenaPool::Create({1 << 16, "test"}, [](uint64_t, uint64_t)
                                    -> absl::StatusOr<std::unique_ptr<Arena>> {
    return MarkAllocationFailure(absl::ResourceExhaustedError("no space"));
  });
  auto b = pool->Allocate(10);
  ASSERT_FALSE(b.ok());
  EXPECT_TRUE(IsAllocationFailure(b.status()));
  EXPECT_FALSE(IsAllocationFailure(absl::ResourceExhaustedError("plain")));
  EXPECT_FALSE(pool->Allocate(0).ok());
  EXPECT_FALSE(pool->Allocate(UINT64_MAX).ok());
}

// A stopping daemon retires its pools: a freed block is neither decommitted
// nor handed out again (a client may still read it), and an arena is still
// dropped once its last block is gone.
TEST(ArenaPoolTest, RetiredPoolNeitherDecommitsNorReusesFreedRanges) {
  int live = 0;
  std::vector<FakeArena*> arenas;
  auto pool = ArenaPool::Create({4 * 4096, "test"}, [&](uint64_t id, uint64_t capacity)
                                    -> absl::StatusOr<std::unique_ptr<Arena>> {
    arenas.push_back(new FakeArena(id, capacity, &live));
    return std::unique_ptr<Arena>(arenas.back());
  });
  auto a = pool->Allocate(4096);
  auto b = pool->Allocate(4096);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE((*a)->Commit().ok() && (*b)->Commit().ok());
  const uint64_t first = (*a)->arena_id();
  const uint64_t a_offset = (*a)->offset();
  EXPECT_EQ(arenas[0]->committed_, 2u * 4096);
  EXPECT_FALSE(pool->retired());
  pool->Retire();
  pool->Retire();  // idempotent
  EXPECT_TRUE(pool->retired());
  a->reset();
  EXPECT_EQ(arenas[0]->committed_, 2u * 4096) << "a retired pool decommitted a freed block";
  EXPECT_EQ(pool->stats().allocated, 4096u);
  EXPECT_EQ(pool->stats().blocks, 1u);
  // The two ranges never used are handed out; a's range is not.
  auto c = pool->Allocate(4096);
  auto d = pool->Allocate(4096);
  ASSERT_TRUE(c.ok() && d.ok());
  for (const auto* x : {&*c, &*d}) {
    EXPECT_EQ((*x)->arena_id(), first);
    EXPECT_NE((*x)->offset(), a_offset);
  }
  auto e = pool->Allocate(4096);  // arena 1 has no range left: a new arena
  ASSERT_TRUE(e.ok());
  EXPECT_NE((*e)->arena_id(), first);
  EXPECT_EQ(live, 2);
  // The arena goes with its last block, not kept as a spare: none of its
  // freed ranges could be reused.
  b->reset();
  c->reset();
  d->reset();
  EXPECT_EQ(live, 1);
  e->reset();
  EXPECT_EQ(live, 0);
  EXPECT_EQ(pool->stats().arenas, 0u);
  EXPECT_EQ(pool->stats().allocated, 0u);
}

}  // namespace
}  // namespace bigsmall::daemon
