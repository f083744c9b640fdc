#include "codec/alloc_hook_for_test.h"

#include <atomic>
#include <cstdlib>
#include <new>

namespace bigsmall::test {
namespace {

constexpr size_t kNoLimit = ~size_t{0};
std::atomic<size_t> fail_from{kNoLimit};
std::atomic<size_t> largest{0};

void* Allocate(size_t n, size_t align = 0) {
  size_t seen = largest.load(std::memory_order_relaxed);
  while (n > seen && !largest.compare_exchange_weak(seen, n, std::memory_order_relaxed)) {
  }
  if (n >= fail_from.load(std::memory_order_relaxed)) throw std::bad_alloc();
  if (n == 0) n = 1;
  void* p = align == 0 ? std::malloc(n) : std::aligned_alloc(align, (n + align - 1) / align * align);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace

FailLargeAllocations::FailLargeAllocations(size_t min_bytes) { fail_from.store(min_bytes); }
FailLargeAllocations::~FailLargeAllocations() { fail_from.store(kNoLimit); }

void ResetLargestAllocation() { largest.store(0); }
size_t LargestAllocation() { return largest.load(); }

}  // namespace bigsmall::test

// The replaceable global allocation functions, plain and aligned (the
// nothrow forms of libstdc++ forward to these).
void* operator new(size_t n) { return bigsmall::test::Allocate(n); }
void* operator new[](size_t n) { return bigsmall::test::Allocate(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void* operator new(size_t n, std::align_val_t a) { return bigsmall::test::Allocate(n, static_cast<size_t>(a)); }
void* operator new[](size_t n, std::align_val_t a) { return bigsmall::test::Allocate(n, static_cast<size_t>(a)); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { std::free(p); }
