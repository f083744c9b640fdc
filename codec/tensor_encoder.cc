// Tensor blob encoding: split planes, measure each plane, pick its coder,
// encode chunks in parallel, lay the blob out (docs/FORMAT.md §5).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "codec/byte_io.h"
#include "codec/planes.h"
#include "codec/rans_encode.h"
#include "codec/status_macros.h"
#include "codec/tensor_blob.h"
#include "codec/tensor_codec.h"
#include "codec/thread_pool.h"
#include "zstd.h"

namespace bigsmall {
namespace {

// Chunk sizes in elements. 64 Ki elements keep the 128-byte lane states under
// 0.02 bits/weight of BF16 and give a 1 GB tensor thousands of chunks for
// threads and GPU blocks; 1-byte types (FP8, int8, packed 4-bit) get 128 Ki
// so each chunk still covers 128 KiB and the states cost half as much per
// byte; --storage trades some parallelism for smaller overhead.
// --inference halves the multi-byte chunk (32 Ki elements) so one 7B-class
// layer has ~6,000 chunks per plane, enough warps to fill an H100/H200 for a
// single-layer decode; bench/results/chunk_curve.md measured its cost on the
// real corpus at +0.069 points (BF16) and +0.039 (FP32), inside the 0.1-point
// budget, where 16 Ki would cost 0.2.
constexpr uint32_t kDefaultChunkElements = 1u << 16;
constexpr uint32_t kInferenceChunkElements = 1u << 15;
constexpr uint32_t kByteChunkElements = 1u << 17;
constexpr uint32_t kStorageChunkElements = 1u << 18;
// A context (exponent value) gets its own mantissa table in --storage when
// it covers at least this many elements; rarer contexts share table 0.
constexpr uint64_t kMinContextCount = 2048;

struct PlaneChoice {
  PlaneCoder coder = PlaneCoder::kRaw;
  uint8_t constant = 0;
  std::vector<rans::Frequencies> tables;
  std::array<uint8_t, 256> context_map{};
  int context_plane = -1;
  std::vector<std::vector<uint8_t>> chunks;  // encoded payload per chunk (not for raw/constant)
  uint64_t stored = 0;                       // header + payload bytes
};

uint64_t ChunkCount(uint64_t n, uint32_t ce, uint32_t c) {
  return std::min<uint64_t>(ce, n - uint64_t{c} * ce);
}

absl::Status ParallelChunks(ThreadPool* pool, uint32_t num_chunks,
                            const std::function<absl::Status(size_t)>& fn) {
  if (pool != nullptr && num_chunks > 1) return pool->ParallelFor(num_chunks, fn);
  for (uint32_t c = 0; c < num_chunks; ++c) RETURN_IF_ERROR(fn(c));
  return absl::OkStatus();
}

absl::StatusOr<PlaneChoice> EncodeRans(const std::vector<uint8_t>& plane, uint32_t ce,
                                       uint32_t num_chunks, const rans::Frequencies& freqs,
                                       ThreadPool* pool) {
  PlaneChoice pc;
  pc.coder = PlaneCoder::kRans;
  pc.tables = {freqs};
  pc.chunks.resize(num_chunks);
  RETURN_IF_ERROR(ParallelChunks(pool, num_chunks, [&](size_t c) {
    const uint64_t first = uint64_t{c} * ce;
    rans::EncodeChunk(freqs, absl::MakeConstSpan(plane.data() + first, ChunkCount(plane.size(), ce, c)),
                      &pc.chunks[c]);
    return absl::OkStatus();
  }));
  pc.stored = rans::SerializedFrequenciesSize(freqs) + 4ull * num_chunks;
  for (const auto& ch : pc.chunks) pc.stored += ch.size();
  return pc;
}

absl::StatusOr<PlaneChoice> EncodeConditional(const std::vector<uint8_t>& plane,
                                              const std::vector<uint8_t>& context, int context_plane,
                                              uint32_t ce, uint32_t num_chunks, ThreadPool* pool) {
  // Joint histogram context x symbol.
  std::vector<uint64_t> joint(256 * 256, 0);
  for (size_t i = 0; i < plane.size(); ++i) ++joint[context[i] * 256 + plane[i]];
  PlaneChoice pc;
  pc.coder = PlaneCoder::kRansConditional;
  pc.context_plane = context_plane;
  std::vector<rans::Counts> counts(1);
  counts[0].fill(0);
  for (int ctx = 0; ctx < 256; ++ctx) {
    uint64_t total = 0;
    for (int s = 0; s < 256; ++s) total += joint[ctx * 256 + s];
    int table = 0;
    if (total >= kMinContextCount && counts.size() < 256) {
      table = static_cast<int>(counts.size());
      counts.emplace_back();
      counts.back().fill(0);
    }
    pc.context_map[ctx] = static_cast<uint8_t>(table);
    for (int s = 0; s < 256; ++s) counts[table][s] += joint[ctx * 256 + s];
  }
  uint64_t shared_total = 0;
  for (uint64_t v : counts[0]) shared_total += v;
  if (shared_total == 0) counts[0][0] = 1;  // table 0 unused: any valid table
  for (const auto& c : counts) pc.tables.push_back(rans::NormalizeFrequencies(c));
  pc.chunks.resize(num_chunks);
  RETURN_IF_ERROR(ParallelChunks(pool, num_chunks, [&](size_t c) {
    const uint64_t first = uint64_t{c} * ce;
    const uint64_t n = ChunkCount(plane.size(), ce, c);
    rans::EncodeChunkConditional(pc.tables.data(), pc.context_map.data(),
                                 absl::MakeConstSpan(context.data() + first, n),
                                 absl::MakeConstSpan(plane.data() + first, n), &pc.chunks[c]);
    return absl::OkStatus();
  }));
  pc.stored = 1 + 2 + 256 + 4ull * num_chunks;
  for (const auto& t : pc.tables) pc.stored += rans::SerializedFrequenciesSize(t);
  for (const auto& ch : pc.chunks) pc.stored += ch.size();
  return pc;
}

absl::StatusOr<PlaneChoice> EncodeZstd(const std::vector<uint8_t>& plane, uint32_t ce,
                                       uint32_t num_chunks, int level, ThreadPool* pool) {
  PlaneChoice pc;
  pc.coder = PlaneCoder::kZstd;
  pc.chunks.resize(num_chunks);
  RETURN_IF_ERROR(ParallelChunks(pool, num_chunks, [&](size_t c) -> absl::Status {
    const uint64_t first = uint64_t{c} * ce;
    const uint64_t n = ChunkCount(plane.size(), ce, c);
    auto& out = pc.chunks[c];
    out.resize(ZSTD_compressBound(n));
    const size_t got = ZSTD_compress(out.data(), out.size(), plane.data() + first, n, level);
    if (ZSTD_isError(got)) return absl::InternalError(ZSTD_getErrorName(got));
    out.resize(got);
    return absl::OkStatus();
  }));
  pc.stored = 4ull * num_chunks;
  for (const auto& ch : pc.chunks) pc.stored += ch.size();
  return pc;
}

// Picks and encodes the coder for plane p.
absl::StatusOr<PlaneChoice> ChoosePlane(const std::vector<std::vector<uint8_t>>& planes, size_t p,
                                        const DtypeInfo& dtype, bool split_typed, Mode mode,
                                        uint32_t ce, uint32_t num_chunks, ThreadPool* pool) {
  const std::vector<uint8_t>& plane = planes[p];
  const uint64_t n = plane.size();
  PlaneChoice raw;
  raw.stored = n;
  rans::Counts counts = rans::CountSymbols(plane);
  uint64_t max_count = 0;
  int distinct = 0;
  for (int s = 0; s < 256; ++s) {
    max_count = std::max(max_count, counts[s]);
    distinct += counts[s] != 0;
  }
  if (distinct == 1) {
    PlaneChoice pc;
    pc.coder = PlaneCoder::kConstant;
    pc.constant = plane[0];
    pc.stored = 1;
    return pc;
  }
  const rans::Frequencies freqs = rans::NormalizeFrequencies(counts);
  const double rans_estimate = rans::EstimateBits(counts, freqs) / 8 +
                               num_chunks * (rans::kChunkHeaderBytes + 4.0 + 1) +
                               rans::SerializedFrequenciesSize(freqs);
  const double p_max = static_cast<double>(max_count) / static_cast<double>(n);

  // Candidates: (choice, size the mode compares: stored bytes scaled by a
  // decode-cost factor so that slower coders must earn their place).
  PlaneChoice best = raw;
  double best_score = static_cast<double>(n);
  const double rans_factor = mode == Mode::kInference ? 1.10 : mode == Mode::kBalanced ? 1.01 : 1.0;
  if (rans_estimate * rans_factor < best_score) {
    ASSIGN_OR_RETURN(PlaneChoice pc, EncodeRans(plane, ce, num_chunks, freqs, pool));
    const double score = pc.stored * rans_factor;
    if (score < best_score) {
      best_score = score;
      best = std::move(pc);
    }
  }
  if (mode == Mode::kStorage && split_typed && static_cast<int>(p) == dtype.conditioned_plane &&
      dtype.exponent_plane >= 0 && dtype.exponent_plane < static_cast<int>(p)) {
    ASSIGN_OR_RETURN(PlaneChoice pc, EncodeConditional(plane, planes[dtype.exponent_plane],
                                                       dtype.exponent_plane, ce, num_chunks, pool));
    if (static_cast<double>(pc.stored) < best_score) {
      best_score = static_cast<double>(pc.stored);
      best = std::move(pc);
    }
  }
  // zstd for zero-heavy or structured planes (runs, repeats): order-0 cannot
  // see those. Not in --inference, whose planes must decode fastest.
  // Also for near-incompressible planes (rANS saves < 15%): low mantissa
  // bytes of real FP32 checkpoints often repeat in ways order-0 cannot see.
  const bool try_zstd = mode != Mode::kInference && (p_max >= 0.5 || rans_estimate > 0.85 * n);
  if (try_zstd) {
    const int level = mode == Mode::kStorage ? 9 : 3;
    ASSIGN_OR_RETURN(PlaneChoice pc, EncodeZstd(plane, ce, num_chunks, level, pool));
    const double zstd_factor = mode == Mode::kStorage ? 1.0 : 1.03;
    if (pc.stored * zstd_factor < best_score) {
      best_score = pc.stored * zstd_factor;
      best = std::move(pc);
    }
  }
  return best;
}

}  // namespace

absl::StatusOr<std::vector<uint8_t>> EncodeTensorBlob(absl::Span<const uint8_t> bytes,
                                                      const DtypeInfo& dtype,
                                                      const EncodeOptions& options) {
  PlaneSplit split = dtype.split;
  uint32_t width = dtype.width;
  bool split_typed = true;
  if (width == 0 || bytes.size() % width != 0 || !ValidSplit(split, width)) {
    // Size does not match the dtype (cannot happen for parsed safetensors):
    // fall back to plain bytes rather than fail.
    split = PlaneSplit::kBytes;
    width = 1;
    split_typed = false;
  }
  const uint64_t n = bytes.size() / width;
  uint32_t ce = options.chunk_elements;
  if (ce == 0) {
    ce = options.mode == Mode::kStorage     ? kStorageChunkElements
         : width == 1                       ? kByteChunkElements
         : options.mode == Mode::kInference ? kInferenceChunkElements
                                            : kDefaultChunkElements;
  }
  if (ce > kMaxChunkElements) ce = kMaxChunkElements;
  const uint64_t num_chunks64 = (n + ce - 1) / ce;
  if (num_chunks64 > UINT32_MAX) return absl::InvalidArgumentError("tensor too large for chunk size");
  const uint32_t num_chunks = static_cast<uint32_t>(num_chunks64);
  const uint32_t np = split == PlaneSplit::kBf16 ? 2 : split == PlaneSplit::kFp32 ? 4 : width;

  std::vector<std::vector<uint8_t>> planes(np, std::vector<uint8_t>(n));
  {
    std::vector<uint8_t*> ptrs(np);
    RETURN_IF_ERROR(ParallelChunks(options.pool, num_chunks, [&](size_t c) {
      const uint64_t first = uint64_t{c} * ce;
      uint8_t* local[kMaxPlanes];
      for (uint32_t p = 0; p < np; ++p) local[p] = planes[p].data() + first;
      SplitPlanes(split, width, bytes.data() + first * width, ChunkCount(n, ce, c), local);
      return absl::OkStatus();
    }));
  }
  std::vector<PlaneChoice> choices;
  for (uint32_t p = 0; p < np; ++p) {
    if (n == 0) {
      choices.emplace_back();
      continue;
    }
    ASSIGN_OR_RETURN(PlaneChoice pc,
                     ChoosePlane(planes, p, dtype, split_typed, options.mode, ce, num_chunks, options.pool));
    choices.push_back(std::move(pc));
  }

  std::vector<uint8_t> blob;
  uint64_t total = 32;
  for (const auto& pc : choices) total += pc.stored + 64;
  blob.reserve(total);
  ByteWriter w(&blob);
  w.U8(kBlobVersion);
  w.U8(static_cast<uint8_t>(split));
  w.U8(static_cast<uint8_t>(width));
  w.U8(static_cast<uint8_t>(np));
  w.U64(bytes.size());
  w.U32(ce);
  w.U32(num_chunks);
  for (const auto& pc : choices) {
    w.U8(static_cast<uint8_t>(pc.coder));
    switch (pc.coder) {
      case PlaneCoder::kRaw:
        break;
      case PlaneCoder::kConstant:
        w.U8(pc.constant);
        break;
      case PlaneCoder::kRansConditional:
        w.U8(static_cast<uint8_t>(pc.context_plane));
        w.U16(static_cast<uint16_t>(pc.tables.size()));
        w.Bytes(pc.context_map);
        for (const auto& t : pc.tables) rans::AppendFrequencies(t, &blob);
        for (const auto& ch : pc.chunks) w.U32(static_cast<uint32_t>(ch.size()));
        break;
      case PlaneCoder::kRans:
        rans::AppendFrequencies(pc.tables[0], &blob);
        [[fallthrough]];
      case PlaneCoder::kZstd:
        for (const auto& ch : pc.chunks) w.U32(static_cast<uint32_t>(ch.size()));
        break;
    }
  }
  for (uint32_t p = 0; p < np; ++p) {
    const auto& pc = choices[p];
    if (pc.coder == PlaneCoder::kRaw) {
      w.Bytes(planes[p]);
    } else {
      for (const auto& ch : pc.chunks) w.Bytes(ch);
    }
  }
  return blob;
}

}  // namespace bigsmall
