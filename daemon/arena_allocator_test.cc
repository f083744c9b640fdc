#include "daemon/arena_allocator.h"

#include <cstring>
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

// Recycling (issue 11): a freed committed block keeps its pages, within the
// warm limit, and the next allocation of its size takes them: no new
// Commit, the same range, flagged recycled() (its bytes are the old
// block's: the user overwrites them).
TEST(ArenaPoolTest, FreedCommittedBlocksAreRecycledWithinTheWarmLimit) {
  int live = 0;
  std::vector<FakeArena*> arenas;
  ArenaPool::Options options{1 << 20, "test"};
  options.warm_limit = 3 * 8192;
  auto pool = ArenaPool::Create(options, [&](uint64_t id, uint64_t capacity)
                                    -> absl::StatusOr<std::unique_ptr<Arena>> {
    arenas.push_back(new FakeArena(id, capacity, &live));
    return std::unique_ptr<Arena>(arenas.back());
  });
  std::vector<std::unique_ptr<Block>> blocks;
  for (int i = 0; i < 4; ++i) {
    auto b = pool->Allocate(8000);
    ASSERT_TRUE(b.ok());
    EXPECT_FALSE((*b)->recycled());
    ASSERT_TRUE((*b)->Commit().ok());
    blocks.push_back(std::move(*b));
  }
  ASSERT_EQ(arenas.size(), 1u);
  EXPECT_EQ(arenas[0]->committed_, 4u * 8192);
  std::set<uint64_t> freed;
  for (auto& b : blocks) freed.insert(b->offset());
  memset(blocks[0]->pages().data(), 0xab, blocks[0]->cost());
  blocks.clear();
  // Three stay warm (the limit), the fourth is decommitted.
  EXPECT_EQ(pool->stats().warm, 3u * 8192);
  EXPECT_EQ(pool->stats().allocated, 0u);
  EXPECT_EQ(pool->stats().blocks, 0u);
  EXPECT_EQ(arenas[0]->committed_, 3u * 8192);
  auto again = pool->Allocate(8000);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE((*again)->recycled());
  EXPECT_TRUE(freed.count((*again)->offset()));
  ASSERT_TRUE((*again)->Commit().ok());  // committed already: no new pages
  EXPECT_EQ(arenas[0]->committed_, 3u * 8192);
  EXPECT_EQ(pool->stats().recycled, 1u);
  EXPECT_EQ(pool->stats().warm, 2u * 8192);
  EXPECT_EQ(pool->stats().allocated, 8192u);
  // A smaller block takes the rest of a warm range; the remainder stays warm.
  auto small = pool->Allocate(100);
  ASSERT_TRUE(small.ok());
  EXPECT_TRUE((*small)->recycled());
  EXPECT_EQ(pool->stats().warm, 2u * 8192 - 4096);
  // TrimWarm gives every warm page back.
  EXPECT_EQ(pool->TrimWarm(0), 2u * 8192 - 4096);
  EXPECT_EQ(pool->stats().warm, 0u);
  EXPECT_EQ(arenas[0]->committed_, 8192u + 4096u);
  again->reset();
  small->reset();
  EXPECT_EQ(pool->TrimWarm(0), 8192u + 4096u);
  EXPECT_EQ(arenas[0]->committed_, 0u);
  EXPECT_EQ(live, 1);  // the spare
}

// Live blocks + warm pages stay within memory_limit: a fresh allocation
// gives warm pages back first; a free over the limit is not kept.
TEST(ArenaPoolTest, WarmPagesNeverTakeLiveAndWarmOverTheMemoryLimit) {
  int live = 0;
  std::vector<FakeArena*> arenas;
  ArenaPool::Options options{1 << 20, "test"};
  options.warm_limit = 1 << 20;
  options.memory_limit = 4 * 4096;
  auto pool = ArenaPool::Create(options, [&](uint64_t id, uint64_t capacity)
                                    -> absl::StatusOr<std::unique_ptr<Arena>> {
    arenas.push_back(new FakeArena(id, capacity, &live));
    return std::unique_ptr<Arena>(arenas.back());
  });
  auto a = pool->Allocate(2 * 4096);
  auto b = pool->Allocate(2 * 4096);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE((*a)->Commit().ok() && (*b)->Commit().ok());
  a->reset();
  b->reset();
  EXPECT_EQ(pool->stats().warm, 4u * 4096);
  // 3 pages fit no 2-page warm range: fresh pages, after warm is trimmed to
  // at most the one page left under the limit.
  auto c = pool->Allocate(3 * 4096);
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE((*c)->recycled());
  ASSERT_TRUE((*c)->Commit().ok());
  const auto st = pool->stats();
  EXPECT_LE(st.allocated + st.warm, options.memory_limit);
  EXPECT_LE(arenas[0]->committed_, options.memory_limit);
  EXPECT_GT(st.warm_trimmed, 0u);
}

TEST(ArenaPoolTest, RetiredPoolDoesNotRecycle) {
  int live = 0;
  std::vector<FakeArena*> arenas;
  ArenaPool::Options options{1 << 20, "test"};
  options.warm_limit = 1 << 20;
  auto pool = ArenaPool::Create(options, [&](uint64_t id, uint64_t capacity)
                                    -> absl::StatusOr<std::unique_ptr<Arena>> {
    arenas.push_back(new FakeArena(id, capacity, &live));
    return std::unique_ptr<Arena>(arenas.back());
  });
  auto a = pool->Allocate(4096);
  auto b = pool->Allocate(4096);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE((*a)->Commit().ok() && (*b)->Commit().ok());
  auto keep = pool->Allocate(4096);  // keeps the arena alive
  ASSERT_TRUE(keep.ok());
  const uint64_t a_arena = (*a)->arena_id();
  const uint64_t a_offset = (*a)->offset();
  const uint64_t b_offset = (*b)->offset();
  a->reset();  // warm
  EXPECT_EQ(pool->stats().warm, 4096u);
  pool->Retire();
  b->reset();  // retired: neither warm nor reused
  EXPECT_EQ(pool->stats().warm, 4096u);
  EXPECT_EQ(arenas[0]->committed_, 2u * 4096) << "a retired pool decommitted a freed block";
  auto c = pool->Allocate(4096);
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE((*c)->recycled());
  EXPECT_EQ((*c)->arena_id(), a_arena);
  EXPECT_NE((*c)->offset(), a_offset);
  EXPECT_NE((*c)->offset(), b_offset);
}

// A commit that finds no memory gives the warm pages back and tries again.
TEST(ArenaPoolTest, CommitOutOfMemoryGivesWarmPagesBackFirst) {
  class TightArena : public FakeArena {
   public:
    TightArena(uint64_t id, uint64_t capacity, int* live, uint64_t limit)
        : FakeArena(id, capacity, live), limit_(limit) {}
    absl::Status Commit(uint64_t offset, uint64_t size) override {
      if (committed_ + size > limit_) {
        return MarkAllocationFailure(absl::ResourceExhaustedError("shm full"));
      }
      return FakeArena::Commit(offset, size);
    }

   private:
    const uint64_t limit_;
  };
  int live = 0;
  ArenaPool::Options options{1 << 20, "test"};
  options.warm_limit = 1 << 20;
  auto pool = ArenaPool::Create(options, [&](uint64_t id, uint64_t capacity)
                                    -> absl::StatusOr<std::unique_ptr<Arena>> {
    return std::unique_ptr<Arena>(new TightArena(id, capacity, &live, 3 * 4096));
  });
  auto a = pool->Allocate(2 * 4096);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE((*a)->Commit().ok());
  a->reset();
  EXPECT_EQ(pool->stats().warm, 2u * 4096);
  auto b = pool->Allocate(3 * 4096);  // no warm range fits: fresh
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE((*b)->recycled());
  absl::Status st = (*b)->Commit();
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_EQ(pool->stats().warm, 0u);
}

// A dedicated arena (a block over the arena size) is recycled for a block
// of about its size only, never for a much smaller one.
TEST(ArenaPoolTest, DedicatedWarmArenaIsReusedOnlyForASimilarSize) {
  int live = 0;
  ArenaPool::Options options{4 * 4096, "test"};
  options.warm_limit = 1 << 20;
  auto pool = ArenaPool::Create(options, [&](uint64_t id, uint64_t capacity)
                                    -> absl::StatusOr<std::unique_ptr<Arena>> {
    return std::unique_ptr<Arena>(new FakeArena(id, capacity, &live));
  });
  auto big = pool->Allocate(64 * 4096);
  ASSERT_TRUE(big.ok());
  ASSERT_TRUE((*big)->Commit().ok());
  const uint64_t big_arena = (*big)->arena_id();
  big->reset();
  EXPECT_EQ(live, 1);  // kept: warm
  auto other = pool->Allocate(8 * 4096);  // dedicated too, far smaller
  ASSERT_TRUE(other.ok());
  EXPECT_FALSE((*other)->recycled());
  EXPECT_NE((*other)->arena_id(), big_arena);
  auto same = pool->Allocate(64 * 4096 - 100);
  ASSERT_TRUE(same.ok());
  EXPECT_TRUE((*same)->recycled());
  EXPECT_EQ((*same)->arena_id(), big_arena);
}

// Prefault backs and maps a block ahead of need and keeps it warm: the
// next allocation of that size is recycled (no commit, no faults).
TEST(ArenaPoolTest, PrefaultLeavesAWarmBlockForTheNextAllocation) {
  class CountingArena : public FakeArena {
   public:
    using FakeArena::FakeArena;
    void Populate(uint64_t, uint64_t size) override { populated_ += size; }
    uint64_t populated_ = 0;
  };
  int live = 0;
  std::vector<CountingArena*> arenas;
  ArenaPool::Options options{1 << 20, "test"};
  options.warm_limit = 1 << 20;
  auto pool = ArenaPool::Create(options, [&](uint64_t id, uint64_t capacity)
                                    -> absl::StatusOr<std::unique_ptr<Arena>> {
    arenas.push_back(new CountingArena(id, capacity, &live));
    return std::unique_ptr<Arena>(arenas.back());
  });
  ASSERT_TRUE(pool->Prefault(5000).ok());
  ASSERT_EQ(arenas.size(), 1u);
  EXPECT_EQ(arenas[0]->committed_, 8192u);
  EXPECT_EQ(arenas[0]->populated_, 8192u);
  EXPECT_EQ(pool->stats().warm, 8192u);
  auto b = pool->Allocate(5000);
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE((*b)->recycled());
  EXPECT_EQ(arenas[0]->committed_, 8192u);
  // Without a warm limit, Prefault leaves nothing behind.
  auto plain = ArenaPool::Create({1 << 20, "test"}, [&](uint64_t id, uint64_t capacity)
                                     -> absl::StatusOr<std::unique_ptr<Arena>> {
    arenas.push_back(new CountingArena(id, capacity, &live));
    return std::unique_ptr<Arena>(arenas.back());
  });
  ASSERT_TRUE(plain->Prefault(5000).ok());
  EXPECT_EQ(plain->stats().warm, 0u);
  EXPECT_EQ(arenas.back()->committed_, 0u);
}

}  // namespace
}  // namespace bigsmall::daemon
