// Arenas and their sub-allocator, independent of the kind of memory.
//
// Decoded layers do not get a file (or a cudaMalloc) each: they are ranges
// of a few large arenas. An Arena is one big region (a shared-memory file
// for host layers; a device allocation for the CUDA arenas of the next
// release) that can commit and decommit page ranges; an ArenaPool places
// allocations in its arenas with a best-fit, coalescing RangeAllocator per
// arena, creates arenas on demand through a factory, gives an allocation
// larger than the arena size an arena of its own, and drops arenas that
// became empty (keeping one spare). An allocation is a Block: arena id +
// offset + size, returned to the pool when the Block is destroyed.
//
// Alignment: blocks start and end on kArenaAlignment (4 KiB) boundaries, so
// no page is shared by two layers. That makes the cost of a layer exactly
// its page-rounded size: committing a block backs exactly its pages, freeing
// it releases exactly them (hole punching), and the cache budget counts the
// pages really committed. It also satisfies every tensor alignment inside a
// layer (256 B, which is also what cudaMalloc guarantees). The price is at
// most 4 KiB - 1 of padding per layer, which matters only for models of
// thousands of layers of a few KiB (documented in docs/API.md).
//
// Recycling (Options::warm_limit > 0; the host arenas of bigsmalld): a freed
// block that was committed keeps its pages for a while instead of giving
// them back. Its range stays reserved in its arena as a "warm" range, and a
// later Allocate of the same size (best fit; a regular arena's remainder
// stays warm) takes it instead of fresh pages, so a streamed model's layers
// decode into memory already backed and mapped (on a VM a fresh shm page
// costs more than decoding into it). The pool holds at most warm_limit bytes
// warm, and live blocks + warm pages stay within memory_limit (the cache
// budget): a fresh allocation or a failed commit trims warm pages first, so
// recycling never makes the daemon hold more memory than its budget. A
// recycled block still holds the bytes of whatever layer had it before
// (Block::recycled()): its user must overwrite every byte of it (pages())
// before anyone else may read it; HostBackend::Decode does (each tensor is
// decoded whole and checked against its hash, every other byte zeroed).
#ifndef BIGSMALL_DAEMON_ARENA_ALLOCATOR_H_
#define BIGSMALL_DAEMON_ARENA_ALLOCATOR_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace bigsmall::daemon {

inline constexpr uint64_t kArenaAlignment = 4096;
inline constexpr uint64_t kDefaultArenaSize = 256ull << 20;

// Allocation failures (a full shm filesystem, no address space, too many
// mappings) carry a payload, so the cache can tell them from other errors and
// evict to make room. Only RESOURCE_EXHAUSTED statuses are marked.
absl::Status MarkAllocationFailure(absl::Status status);
bool IsAllocationFailure(const absl::Status& status);

// Rounds `size` up to kArenaAlignment (0 stays 0; overflow saturates to
// UINT64_MAX, which no pool can place).
uint64_t ArenaCost(uint64_t size);

// Best-fit allocator of aligned ranges in [0, capacity), with coalescing of
// freed neighbours. Not thread-safe (ArenaPool locks around it).
class RangeAllocator {
 public:
  RangeAllocator(uint64_t capacity, uint64_t alignment);
  // The offset of a free range of `size` bytes (rounded up to the
  // alignment), or nullopt when no free range is large enough.
  std::optional<uint64_t> Allocate(uint64_t size);
  // Returns a range given by Allocate (same size as asked).
  void Free(uint64_t offset, uint64_t size);
  uint64_t capacity() const { return capacity_; }
  uint64_t used() const { return used_; }
  bool empty() const { return used_ == 0; }
  size_t free_ranges() const { return by_offset_.size(); }
  uint64_t largest_free() const;

 private:
  uint64_t Round(uint64_t size) const;
  void Insert(uint64_t offset, uint64_t size);
  void Erase(std::map<uint64_t, uint64_t>::iterator it);

  const uint64_t capacity_;
  const uint64_t alignment_;
  uint64_t used_ = 0;
  std::map<uint64_t, uint64_t> by_offset_;        // free ranges: offset -> size
  std::multimap<uint64_t, uint64_t> by_size_;     // free ranges: size -> offset
};

// One region of memory that blocks are carved from.
class Arena {
 public:
  virtual ~Arena() = default;
  uint64_t id() const { return id_; }
  uint64_t capacity() const { return capacity_; }
  // The region as seen by the daemon (host: its mapping).
  virtual uint8_t* base() = 0;
  // Backs [offset, offset + size) with memory (host: fallocate, so a full
  // filesystem is RESOURCE_EXHAUSTED now, not SIGBUS later).
  virtual absl::Status Commit(uint64_t offset, uint64_t size) = 0;
  // Gives the range's memory back (host: punches a hole).
  virtual void Decommit(uint64_t offset, uint64_t size) = 0;
  // Maps the committed range's pages into the daemon now, so writing them
  // later takes no page faults (host: MADV_POPULATE_WRITE). Best effort;
  // the default does nothing.
  virtual void Populate(uint64_t offset, uint64_t size) {}

 protected:
  Arena(uint64_t id, uint64_t capacity) : id_(id), capacity_(capacity) {}

 private:
  const uint64_t id_;
  const uint64_t capacity_;
};

class ArenaPool;

// One allocation: a range of one arena. Frees (and decommits) the range when
// destroyed. The range stays readable by whoever mapped the arena, so the
// owner must destroy a Block only when no reader (lease) is left. After
// ArenaPool::Retire() a destroyed block's range is neither decommitted nor
// reused.
class Block {
 public:
  ~Block();
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;

  Arena& arena() const { return *arena_; }
  // Keeps the arena's memory allocated after the pool dropped it (a device
  // session holds the arenas it was handed until it ends: see
  // daemon/device_arena.h).
  std::shared_ptr<Arena> shared_arena() const { return arena_; }
  uint64_t arena_id() const { return arena_->id(); }
  uint64_t offset() const { return offset_; }
  uint64_t size() const { return size_; }  // as asked
  uint64_t cost() const { return ArenaCost(size_); }
  absl::Span<uint8_t> bytes() const { return {arena_->base() + offset_, size_}; }
  // Every byte a reader of the arena can see of this block: its pages.
  absl::Span<uint8_t> pages() const { return {arena_->base() + offset_, cost()}; }
  // Backs the block with memory; see Arena::Commit. A failure to get memory
  // first gives the pool's warm pages back and tries again.
  absl::Status Commit();
  // A block taken from the pool's warm pages: committed already, and its
  // bytes are those of the block freed there before (another layer's, maybe
  // another model's): the user must overwrite all of pages() before
  // publishing it.
  bool recycled() const { return recycled_; }

 private:
  friend class ArenaPool;
  Block(std::shared_ptr<ArenaPool> pool, std::shared_ptr<Arena> arena, uint64_t offset,
        uint64_t size)
      : pool_(std::move(pool)), arena_(std::move(arena)), offset_(offset), size_(size) {}
  std::shared_ptr<ArenaPool> pool_;
  std::shared_ptr<Arena> arena_;
  const uint64_t offset_;
  const uint64_t size_;
  bool committed_ = false;
  bool recycled_ = false;
};

class ArenaPool : public std::enable_shared_from_this<ArenaPool> {
 public:
  // Makes a new arena of `capacity` bytes with the given (never reused) id.
  using ArenaFactory =
      std::function<absl::StatusOr<std::unique_ptr<Arena>>(uint64_t id, uint64_t capacity)>;
  struct Options {
    uint64_t arena_size = kDefaultArenaSize;  // rounded up to kArenaAlignment
    std::string kind = "host";                // for messages
    // Bytes of freed, committed blocks kept for reuse (0: none; see the top
    // of this file).
    uint64_t warm_limit = 0;
    // Live blocks + warm pages never exceed this through recycling (0: no
    // limit besides warm_limit). bigsmalld: the host cache budget.
    uint64_t memory_limit = 0;
  };
  static std::shared_ptr<ArenaPool> Create(const Options& options, ArenaFactory factory);

  // A block of `size` bytes (> 0), uncommitted. Errors: the factory's (a new
  // arena could not be made), kResourceExhausted for an impossible size.
  absl::StatusOr<std::unique_ptr<Block>> Allocate(uint64_t size);

  struct Stats {
    uint32_t arenas = 0;
    uint64_t arena_bytes = 0;   // address space of every arena
    uint64_t allocated = 0;     // cost of the live blocks
    uint64_t blocks = 0;
    uint64_t warm = 0;          // bytes of freed blocks kept committed for reuse
    uint64_t recycled = 0;      // allocations served from warm pages (total)
    uint64_t warm_trimmed = 0;  // warm bytes given back to make room (total)
  };
  Stats stats() const;
  uint64_t arena_size() const { return arena_size_; }
  const Options& options() const { return options_; }

  // Gives warm pages back until at most `keep` bytes stay warm; returns the
  // bytes given back.
  uint64_t TrimWarm(uint64_t keep);

  // Backs and maps `size` bytes now and keeps them warm (when the limits
  // allow), so the next Allocate of that size takes no page faults: for
  // the first layers of a model, ahead of need. Errors: Allocate's, Commit's.
  absl::Status Prefault(uint64_t size);

  // For a daemon that stops: its clients may still map layers whose leases
  // the shutdown ended, and a dying daemon must not change bytes under
  // them. From now on a freed block keeps its pages and its range (no
  // Decommit, no reuse: new blocks go to ranges never freed since, or to
  // new arenas); an arena is still dropped once none of its blocks is left
  // (host: unlinked and unmapped, never truncated or hole-punched, so a
  // client's mapping keeps the pages until it unmaps). Idempotent.
  void Retire() { retired_.store(true); }
  bool retired() const { return retired_.load(); }

 private:
  friend class Block;
  ArenaPool(const Options& options, ArenaFactory factory);
  // `reuse`: give the range back to the arena's allocator (false once
  // retired: the range is never handed out again).
  void Free(Arena* arena, uint64_t offset, uint64_t size, bool reuse);
  // A committed block is being freed: true when its range was kept warm
  // (within the limits), false when the caller must decommit and Free it.
  bool KeepWarm(Arena* arena, uint64_t offset, uint64_t size);
  // A warm range taken out of the warm set (still reserved in its arena),
  // to decommit and give back outside the lock.
  struct Trimmed {
    std::shared_ptr<Arena> arena;
    uint64_t offset = 0;
    uint64_t size = 0;
  };
  // Under mu_: takes warm ranges out until warm <= keep.
  void TakeWarmLocked(uint64_t keep, std::vector<Trimmed>* out);
  // Without mu_: decommits the ranges and gives them back to their arenas.
  void ReleaseTrimmed(std::vector<Trimmed>& trimmed);

  struct Slot {
    std::shared_ptr<Arena> arena;
    RangeAllocator ranges;
    bool dedicated = false;
    uint64_t blocks = 0;        // live blocks
    bool holds_freed = false;   // ranges freed after Retire(): never empty again
    std::multimap<uint64_t, uint64_t> warm;  // warm ranges: cost -> offset
  };
  // Under mu_: drops the arena of `it` when nothing is left in it (keeping
  // one empty regular arena as a spare); returns it, to destroy outside.
  std::shared_ptr<Arena> MaybeDropLocked(std::map<uint64_t, Slot>::iterator it);
  const Options options_;
  const uint64_t arena_size_;
  const std::string kind_;
  ArenaFactory factory_;
  mutable std::mutex mu_;
  std::map<uint64_t, Slot> arenas_;  // by id; lower ids first (first-fit across arenas)
  uint64_t next_id_ = 1;
  Stats stats_;
  std::atomic<bool> retired_{false};
};

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_ARENA_ALLOCATOR_H_
