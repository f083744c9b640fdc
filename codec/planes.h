// Byte-plane split and merge (docs/FORMAT.md §4). Pure functions over whole
// elements; the encoder splits, every decoder (CPU and CUDA) merges.
#ifndef BIGSMALL_CODEC_PLANES_H_
#define BIGSMALL_CODEC_PLANES_H_

#include <cstddef>
#include <cstdint>

#include "codec/format.h"

namespace bigsmall {

// Writes element k's plane-p byte to planes[p][k] for k in [0, count).
void SplitPlanes(PlaneSplit split, uint32_t width, const uint8_t* elements, size_t count,
                 uint8_t* const* planes);

// Inverse of SplitPlanes: rebuilds `count` elements (count * width bytes).
void MergePlanes(PlaneSplit split, uint32_t width, const uint8_t* const* planes, size_t count,
                 uint8_t* elements);

// MergePlanes / SplitPlanes with a given implementation (for tests and
// benchmarks): MergePlanes and SplitPlanes pick the level BestDecoderImpl()
// names (the best this CPU runs; BIGSMALL_DECODER=avx2|scalar forces it
// down). Returns false, writing nothing, where the CPU lacks the
// instructions.
enum class MergeImpl { kScalar, kAvx2, kAvx512 };
bool MergePlanesWith(MergeImpl impl, PlaneSplit split, uint32_t width, const uint8_t* const* planes,
                     size_t count, uint8_t* elements);
bool SplitPlanesWith(MergeImpl impl, PlaneSplit split, uint32_t width, const uint8_t* elements,
                     size_t count, uint8_t* const* planes);

// True when (split, width) is a combination the format defines.
bool ValidSplit(PlaneSplit split, uint32_t width);

}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_PLANES_H_
