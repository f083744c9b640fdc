#include "daemon/arena_allocator.h"

#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"

namespace bigsmall::daemon {

namespace {
constexpr char kAllocationFailureUrl[] = "type.bigsmall.dev/allocation-failure";
}  // namespace

absl::Status MarkAllocationFailure(absl::Status status) {
  if (status.code() == absl::StatusCode::kResourceExhausted) {
    status.SetPayload(kAllocationFailureUrl, absl::Cord("1"));
  }
  return status;
}

bool IsAllocationFailure(const absl::Status& status) {
  return status.code() == absl::StatusCode::kResourceExhausted &&
         status.GetPayload(kAllocationFailureUrl).has_value();
}

uint64_t ArenaCost(uint64_t size) {
  if (size > std::numeric_limits<uint64_t>::max() - (kArenaAlignment - 1)) {
    return std::numeric_limits<uint64_t>::max();
  }
  return (size + kArenaAlignment - 1) / kArenaAlignment * kArenaAlignment;
}

// ---------------------------------------------------------------------------

RangeAllocator::RangeAllocator(uint64_t capacity, uint64_t alignment)
    : capacity_(capacity / alignment * alignment), alignment_(alignment) {
  if (capacity_ > 0) Insert(0, capacity_);
}

uint64_t RangeAllocator::Round(uint64_t size) const {
  if (size == 0) size = 1;
  if (size > capacity_) return 0;  // never fits
  return (size + alignment_ - 1) / alignment_ * alignment_;
}

void RangeAllocator::Insert(uint64_t offset, uint64_t size) {
  by_offset_.emplace(offset, size);
  by_size_.emplace(size, offset);
}

void RangeAllocator::Erase(std::map<uint64_t, uint64_t>::iterator it) {
  auto range = by_size_.equal_range(it->second);
  for (auto s = range.first; s != range.second; ++s) {
    if (s->second == it->first) {
      by_size_.erase(s);
      break;
    }
  }
  by_offset_.erase(it);
}

std::optional<uint64_t> RangeAllocator::Allocate(uint64_t size) {
  uint64_t need = Round(size);
  if (need == 0) return std::nullopt;
  // Best fit: the smallest free range that holds `need`.
  auto fit = by_size_.lower_bound(need);
  if (fit == by_size_.end()) return std::nullopt;
  uint64_t offset = fit->second;
  uint64_t have = fit->first;
  Erase(by_offset_.find(offset));
  if (have > need) Insert(offset + need, have - need);
  used_ += need;
  return offset;
}

void RangeAllocator::Free(uint64_t offset, uint64_t size) {
  uint64_t len = Round(size);
  used_ -= len;
  // Coalesce with the free neighbours on both sides.
  auto next = by_offset_.lower_bound(offset);
  if (next != by_offset_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      offset = prev->first;
      len += prev->second;
      Erase(prev);
    }
  }
  next = by_offset_.lower_bound(offset + len);
  if (next != by_offset_.end() && next->first == offset + len) {
    len += next->second;
    Erase(next);
  }
  Insert(offset, len);
}

uint64_t RangeAllocator::largest_free() const {
  return by_size_.empty() ? 0 : by_size_.rbegin()->first;
}

// ---------------------------------------------------------------------------

absl::Status Block::Commit() {
  if (committed_) return absl::OkStatus();
  absl::Status st = arena_->Commit(offset_, cost());
  // No memory: warm pages the pool keeps may be what fills the shm
  // filesystem; give them back and try once more.
  if (!st.ok() && IsAllocationFailure(st) && pool_->TrimWarm(0) > 0) {
    st = arena_->Commit(offset_, cost());
  }
  committed_ = st.ok();
  return st;
}

Block::~Block() {
  // Decommit before the range can be handed out again, unless the pool
  // keeps it warm (recycling); a retired pool does neither (a client may
  // still read the range).
  const bool retired = pool_->retired();
  if (committed_ && !retired) {
    if (pool_->KeepWarm(arena_.get(), offset_, size_)) return;
    arena_->Decommit(offset_, cost());
  }
  pool_->Free(arena_.get(), offset_, size_, /*reuse=*/!retired);
}

// ---------------------------------------------------------------------------

std::shared_ptr<ArenaPool> ArenaPool::Create(const Options& options, ArenaFactory factory) {
  return std::shared_ptr<ArenaPool>(new ArenaPool(options, std::move(factory)));
}

ArenaPool::ArenaPool(const Options& options, ArenaFactory factory)
    : options_(options),
      arena_size_(ArenaCost(std::max<uint64_t>(options.arena_size, kArenaAlignment))),
      kind_(options.kind),
      factory_(std::move(factory)) {}

absl::StatusOr<std::unique_ptr<Block>> ArenaPool::Allocate(uint64_t size) {
  if (size == 0) return absl::InvalidArgumentError("empty arena allocation");
  const uint64_t cost = ArenaCost(size);
  if (cost == std::numeric_limits<uint64_t>::max()) {
    return absl::ResourceExhaustedError(absl::StrCat(kind_, " allocation of ", size,
                                                     " bytes is impossible"));
  }
  std::vector<Trimmed> trimmed;  // decommitted and given back after the lock
  absl::StatusOr<std::unique_ptr<Block>> result = [&]() -> absl::StatusOr<std::unique_ptr<Block>> {
    std::lock_guard<std::mutex> lock(mu_);
    const bool dedicated = cost > arena_size_;
    // Recycling: the best-fitting warm range of the same kind of arena. A
    // dedicated arena's range is taken only when the block fills most of it
    // (the rest is given back: nothing else is ever placed there).
    if (stats_.warm > 0 && !retired_.load()) {
      Slot* best_slot = nullptr;
      std::multimap<uint64_t, uint64_t>::iterator best;
      for (auto& [id, slot] : arenas_) {
        if (slot.dedicated != dedicated) continue;
        auto it = slot.warm.lower_bound(cost);
        if (it == slot.warm.end()) continue;
        if (dedicated && it->first - cost > it->first / 8) continue;
        if (best_slot == nullptr || it->first < best->first) {
          best_slot = &slot;
          best = it;
        }
      }
      if (best_slot != nullptr) {
        const uint64_t have = best->first;
        const uint64_t offset = best->second;
        best_slot->warm.erase(best);
        stats_.warm -= have;
        if (have > cost) {
          if (dedicated) {
            trimmed.push_back({best_slot->arena, offset + cost, have - cost});
            stats_.warm_trimmed += have - cost;
          } else {
            best_slot->warm.emplace(have - cost, offset + cost);  // stays warm
            stats_.warm += have - cost;
          }
        }
        stats_.allocated += cost;
        ++stats_.blocks;
        ++stats_.recycled;
        ++best_slot->blocks;
        std::unique_ptr<Block> block(new Block(shared_from_this(), best_slot->arena, offset, size));
        block->committed_ = true;
        block->recycled_ = true;
        return block;
      }
    }
    // Fresh pages: first make room under the memory limit by giving back
    // warm pages.
    if (options_.memory_limit > 0 && stats_.warm > 0) {
      const uint64_t need = stats_.allocated + cost;
      const uint64_t keep = need >= options_.memory_limit ? 0 : options_.memory_limit - need;
      TakeWarmLocked(keep, &trimmed);
    }
    if (!dedicated) {
      for (auto& [id, slot] : arenas_) {
        if (slot.dedicated) continue;
        if (auto offset = slot.ranges.Allocate(size)) {
          stats_.allocated += cost;
          ++stats_.blocks;
          ++slot.blocks;
          return std::unique_ptr<Block>(new Block(shared_from_this(), slot.arena, *offset, size));
        }
      }
    }
    // A new arena: a regular one, or one of its own for a layer larger than
    // the arena size.
    const uint64_t capacity = dedicated ? cost : arena_size_;
    const uint64_t id = next_id_++;
    absl::StatusOr<std::unique_ptr<Arena>> made = factory_(id, capacity);
    if (!made.ok()) return made.status();
    Slot slot{std::shared_ptr<Arena>(std::move(*made)), RangeAllocator(capacity, kArenaAlignment),
              dedicated, /*blocks=*/1, /*holds_freed=*/false, /*warm=*/{}};
    std::optional<uint64_t> offset = slot.ranges.Allocate(size);
    if (!offset) {
      return absl::InternalError(absl::StrCat("a fresh ", kind_, " arena of ", capacity,
                                              " bytes cannot hold ", size, " bytes"));
    }
    std::shared_ptr<Arena> arena = slot.arena;
    arenas_.emplace(id, std::move(slot));
    ++stats_.arenas;
    stats_.arena_bytes += capacity;
    stats_.allocated += cost;
    ++stats_.blocks;
    return std::unique_ptr<Block>(new Block(shared_from_this(), std::move(arena), *offset, size));
  }();
  ReleaseTrimmed(trimmed);
  return result;
}

bool ArenaPool::KeepWarm(Arena* arena, uint64_t offset, uint64_t size) {
  if (options_.warm_limit == 0) return false;
  const uint64_t cost = ArenaCost(size);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = arenas_.find(arena->id());
  if (it == arenas_.end() || retired_.load()) return false;
  // Within both limits, or given back now (the newest freed block is not
  // worth more than the warm pages already kept: no trimming here, so a
  // free never waits for other ranges' hole punching).
  if (stats_.warm + cost > options_.warm_limit) return false;
  if (options_.memory_limit > 0 && stats_.allocated + stats_.warm > options_.memory_limit) {
    return false;  // (allocated still counts this block: the sum is unchanged by keeping it)
  }
  Slot& slot = it->second;
  slot.warm.emplace(cost, offset);
  stats_.warm += cost;
  stats_.allocated -= cost;
  --stats_.blocks;
  --slot.blocks;
  return true;
}

void ArenaPool::TakeWarmLocked(uint64_t keep, std::vector<Trimmed>* out) {
  // Dedicated arenas' ranges first (a whole arena each), then the largest.
  for (bool dedicated : {true, false}) {
    for (auto& [id, slot] : arenas_) {
      if (slot.dedicated != dedicated) continue;
      while (stats_.warm > keep && !slot.warm.empty()) {
        auto it = std::prev(slot.warm.end());
        out->push_back({slot.arena, it->second, it->first});
        stats_.warm -= it->first;
        stats_.warm_trimmed += it->first;
        slot.warm.erase(it);
      }
      if (stats_.warm <= keep) return;
    }
  }
}

void ArenaPool::ReleaseTrimmed(std::vector<Trimmed>& trimmed) {
  if (trimmed.empty()) return;
  for (const Trimmed& t : trimmed) t.arena->Decommit(t.offset, t.size);
  std::vector<std::shared_ptr<Arena>> dropped;  // destroyed outside the lock
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Trimmed& t : trimmed) {
      auto it = arenas_.find(t.arena->id());
      if (it == arenas_.end()) continue;
      it->second.ranges.Free(t.offset, t.size);
      dropped.push_back(MaybeDropLocked(it));
    }
  }
  trimmed.clear();  // the arenas' last references may go here, outside the lock
}

uint64_t ArenaPool::TrimWarm(uint64_t keep) {
  std::vector<Trimmed> trimmed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    TakeWarmLocked(keep, &trimmed);
  }
  uint64_t bytes = 0;
  for (const Trimmed& t : trimmed) bytes += t.size;
  ReleaseTrimmed(trimmed);
  return bytes;
}

absl::Status ArenaPool::Prefault(uint64_t size) {
  auto block = Allocate(size);
  if (!block.ok()) return block.status();
  if ((*block)->recycled()) return absl::OkStatus();  // warm already
  absl::Status st = (*block)->Commit();
  if (!st.ok()) return st;
  (*block)->arena().Populate((*block)->offset(), (*block)->cost());
  return absl::OkStatus();  // the block goes warm (when the limits allow)
}

void ArenaPool::Free(Arena* arena, uint64_t offset, uint64_t size, bool reuse) {
  std::shared_ptr<Arena> dropped;  // destroyed (unmapped, unlinked) outside the lock
  std::lock_guard<std::mutex> lock(mu_);
  auto it = arenas_.find(arena->id());
  if (it == arenas_.end()) return;
  Slot& slot = it->second;
  if (reuse) {
    slot.ranges.Free(offset, size);
  } else {
    slot.holds_freed = true;  // the range stays allocated: never handed out again
  }
  stats_.allocated -= ArenaCost(size);
  --stats_.blocks;
  --slot.blocks;
  dropped = MaybeDropLocked(it);
}

std::shared_ptr<Arena> ArenaPool::MaybeDropLocked(std::map<uint64_t, Slot>::iterator it) {
  Slot& slot = it->second;
  if (slot.blocks > 0) return nullptr;
  // Warm ranges keep their arena (a retired pool never reuses them).
  if (!slot.warm.empty() && !retired_.load()) return nullptr;
  if (!slot.warm.empty()) {
    for (const auto& [cost, offset] : slot.warm) stats_.warm -= cost;
    slot.warm.clear();
    slot.holds_freed = true;
  }
  // Keep one empty regular arena as a spare (not one holding retired
  // ranges: it could never be emptied for reuse); drop the rest.
  bool keep = false;
  if (!slot.dedicated && !slot.holds_freed) {
    keep = true;
    for (const auto& [id, other] : arenas_) {
      if (id != it->first && !other.dedicated && other.ranges.empty()) keep = false;
    }
  }
  if (keep) return nullptr;
  std::shared_ptr<Arena> dropped = std::move(slot.arena);
  stats_.arena_bytes -= slot.ranges.capacity();
  --stats_.arenas;
  arenas_.erase(it);
  return dropped;
}

ArenaPool::Stats ArenaPool::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace bigsmall::daemon
