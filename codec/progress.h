#ifndef BIGSMALL_CODEC_PROGRESS_H_
#define BIGSMALL_CODEC_PROGRESS_H_

#include <cstdint>
#include <functional>

namespace bigsmall {
// Called from one thread at a time with bytes done so far out of total.
using ProgressFn = std::function<void(uint64_t done, uint64_t total)>;
}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_PROGRESS_H_
