#include "codec/zstd_frame.h"

#include <exception>

#include "absl/strings/str_cat.h"

#define ZSTD_STATIC_LINKING_ONLY  // ZSTD_f_zstd1_magicless, ZSTD_getFrameHeader_advanced
#include "zstd.h"

namespace bigsmall {
namespace {

absl::Status Corrupt(const std::string& what) { return absl::DataLossError(absl::StrCat("zstd frame: ", what)); }

ZSTD_format_e Format(ZstdFraming framing) {
  return framing == ZstdFraming::kMagicless ? ZSTD_f_zstd1_magicless : ZSTD_f_zstd1;
}

// One context per thread and framing, reused across calls (a context is
// ~100 KB of tables; creating one per chunk would dominate small chunks).
struct Contexts {
  ZSTD_DCtx* d[2] = {nullptr, nullptr};
  ZSTD_CCtx* c = nullptr;
  ~Contexts() {
    ZSTD_freeDCtx(d[0]);
    ZSTD_freeDCtx(d[1]);
    ZSTD_freeCCtx(c);
  }
};
thread_local Contexts contexts;

ZSTD_DCtx* Dctx(ZstdFraming framing) {
  ZSTD_DCtx*& ctx = contexts.d[static_cast<int>(framing)];
  if (ctx == nullptr) {
    ctx = ZSTD_createDCtx();
    if (ctx != nullptr && ZSTD_isError(ZSTD_DCtx_setParameter(ctx, ZSTD_d_format, Format(framing)))) {
      ZSTD_freeDCtx(ctx);
      ctx = nullptr;
    }
  }
  return ctx;
}

}  // namespace

absl::StatusOr<uint64_t> ZstdFrameContentSize(absl::Span<const uint8_t> frame, ZstdFraming framing) {
  ZSTD_frameHeader h;
  const size_t got = ZSTD_getFrameHeader_advanced(&h, frame.data(), frame.size(), Format(framing));
  if (ZSTD_isError(got)) return Corrupt(absl::StrCat("bad frame header (", ZSTD_getErrorName(got), ")"));
  if (got != 0) return Corrupt("truncated frame header");
  if (h.frameType != ZSTD_frame) return Corrupt("a skippable frame");
  if (h.frameContentSize == ZSTD_CONTENTSIZE_UNKNOWN) return Corrupt("the frame does not declare its size");
  if (h.dictID != 0) return Corrupt("the frame needs a dictionary");
  // Walk the block headers (RFC 8878 §3.1.1.2): 3 bytes each, little-endian:
  // bit 0 last block, bits 1-2 type, bits 3-23 size.
  uint64_t at = h.headerSize;
  for (;;) {
    if (frame.size() - at < 3) return Corrupt("truncated block header");
    const uint32_t bh = frame[at] | (uint32_t{frame[at + 1]} << 8) | (uint32_t{frame[at + 2]} << 16);
    at += 3;
    const uint32_t type = (bh >> 1) & 3;
    const uint64_t size = bh >> 3;
    if (type == 3) return Corrupt("reserved block type");
    const uint64_t payload = type == 1 ? 1 : size;  // RLE blocks hold one byte
    if (frame.size() - at < payload) return Corrupt("truncated block");
    at += payload;
    if (bh & 1) break;
  }
  if (h.checksumFlag) {
    if (frame.size() - at < 4) return Corrupt("truncated content checksum");
    at += 4;
  }
  if (at != frame.size()) return Corrupt("bytes after the end of the frame");
  return uint64_t{h.frameContentSize};
}

absl::Status ZstdDecompressExact(absl::Span<const uint8_t> frame, ZstdFraming framing, absl::Span<uint8_t> out) {
  ZSTD_DCtx* ctx = Dctx(framing);
  if (ctx == nullptr) return absl::ResourceExhaustedError("cannot allocate a zstd decompression context");
  const size_t got = ZSTD_decompressDCtx(ctx, out.data(), out.size(), frame.data(), frame.size());
  if (ZSTD_isError(got)) return Corrupt(ZSTD_getErrorName(got));
  if (got != out.size()) return Corrupt(absl::StrCat("decompresses to ", got, " bytes, not ", out.size()));
  return absl::OkStatus();
}

absl::Status ZstdCompressFrame(absl::Span<const uint8_t> in, const ZstdCompressOptions& options,
                               std::vector<uint8_t>* out) {
  // Small inputs reuse the thread's context; large ones (whose level-19
  // tables reach tens of MB) get their own, freed on return, so no thread
  // keeps that memory.
  struct Owned {
    ZSTD_CCtx* ctx = nullptr;
    ~Owned() { ZSTD_freeCCtx(ctx); }
  } owned;
  constexpr size_t kReuseBelow = 1u << 20;
  ZSTD_CCtx* cctx = nullptr;
  if (in.size() <= kReuseBelow) {
    if (contexts.c == nullptr) contexts.c = ZSTD_createCCtx();
    cctx = contexts.c;
  } else {
    owned.ctx = ZSTD_createCCtx();
    cctx = owned.ctx;
  }
  if (cctx == nullptr) return absl::ResourceExhaustedError("cannot allocate a zstd compression context");
  ZSTD_CCtx_reset(cctx, ZSTD_reset_session_and_parameters);
  for (const auto& [param, value] :
       {std::pair{ZSTD_c_compressionLevel, options.level}, std::pair{ZSTD_c_contentSizeFlag, 1},
        std::pair{ZSTD_c_checksumFlag, 0}, std::pair{ZSTD_c_dictIDFlag, 0},
        std::pair{ZSTD_c_format, static_cast<int>(Format(options.framing))},
        std::pair{ZSTD_c_enableLongDistanceMatching, options.long_distance ? 1 : 0}}) {
    const size_t r = ZSTD_CCtx_setParameter(cctx, param, value);
    if (ZSTD_isError(r)) return absl::InternalError(absl::StrCat("zstd parameter: ", ZSTD_getErrorName(r)));
  }
  const size_t at = out->size();
  try {
    out->resize(at + ZSTD_compressBound(in.size()));
  } catch (const std::exception&) {
    return absl::ResourceExhaustedError("cannot allocate a zstd output buffer");
  }
  const size_t got = ZSTD_compress2(cctx, out->data() + at, out->size() - at, in.data(), in.size());
  if (ZSTD_isError(got)) {
    out->resize(at);
    return absl::InternalError(ZSTD_getErrorName(got));
  }
  out->resize(at + got);
  return absl::OkStatus();
}

}  // namespace bigsmall
