// Test-only control over operator new (linked into test binaries only; it
// replaces the global operator new/delete of the binary that links it):
// make large allocations fail with std::bad_alloc, and see the largest
// single allocation a piece of code asked for.
#ifndef BIGSMALL_CODEC_ALLOC_HOOK_FOR_TEST_H_
#define BIGSMALL_CODEC_ALLOC_HOOK_FOR_TEST_H_

#include <cstddef>

namespace bigsmall::test {

// While one is alive, every operator new of at least `min_bytes` (on any
// thread) throws std::bad_alloc.
class FailLargeAllocations {
 public:
  explicit FailLargeAllocations(size_t min_bytes);
  ~FailLargeAllocations();
  FailLargeAllocations(const FailLargeAllocations&) = delete;
  FailLargeAllocations& operator=(const FailLargeAllocations&) = delete;
};

// The largest operator new request (any thread) since the last reset.
void ResetLargestAllocation();
size_t LargestAllocation();

}  // namespace bigsmall::test

#endif  // BIGSMALL_CODEC_ALLOC_HOOK_FOR_TEST_H_
