// Tensor blob parsing and CPU decoding (decode side).
#include <algorithm>
#include <cstring>
#include <functional>
#include <mutex>
#include <exception>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "codec/byte_io.h"
#include "codec/planes.h"
#include "codec/rans_decode.h"
#include "codec/status_macros.h"
#include "codec/tensor_blob.h"
#include "codec/tensor_codec.h"
#include "codec/thread_pool.h"
#include "codec/zstd_frame.h"

namespace bigsmall {
namespace {

absl::Status Corrupt(const std::string& what) {
  return absl::DataLossError(absl::StrCat("tensor blob corrupt: ", what));
}

}  // namespace

namespace {

// One plane stored contiguously (raw) or as one frame (zstd) from `begin`:
// the single-plane bytes/1 description forms 2 and 3 decode through.
void SinglePlane(ParsedBlob* b, uint64_t n, uint32_t chunk_elements, PlaneCoder coder) {
  b->split = PlaneSplit::kBytes;
  b->width = 1;
  b->num_bytes = n;
  b->num_elements = n;
  b->chunk_elements = chunk_elements;
  b->num_chunks = static_cast<uint32_t>(n / chunk_elements + (n % chunk_elements != 0 ? 1 : 0));
  b->planes.assign(1, BlobPlane{});
  b->planes[0].coder = coder;
}

absl::StatusOr<ParsedBlob> ParseRawBlob(absl::Span<const uint8_t> blob) {
  ParsedBlob b;
  b.form = kBlobFormRaw;
  const uint64_t n = blob.size() - 1;
  if (n / kRawBlobChunk >= UINT32_MAX) return Corrupt("raw blob too large");
  SinglePlane(&b, n, kRawBlobChunk, PlaneCoder::kRaw);
  auto& offs = b.planes[0].chunk_offsets;
  offs.resize(b.num_chunks + 1);
  for (uint32_t c = 0; c <= b.num_chunks; ++c) offs[c] = 1 + std::min<uint64_t>(n, uint64_t{c} * kRawBlobChunk);
  return b;
}

// Forms 3 and 5: one zstd frame (with or without its magic number).
absl::StatusOr<ParsedBlob> ParseZstdBlob(absl::Span<const uint8_t> blob) {
  ParsedBlob b;
  b.form = blob[0];
  const ZstdFraming framing = b.form == kBlobFormZstdMagicless ? ZstdFraming::kMagicless : ZstdFraming::kStandard;
  auto content = ZstdFrameContentSize(blob.subspan(1), framing);
  if (!content.ok()) return Corrupt(absl::StrCat("zstd blob: ", content.status().message()));
  if (*content == 0 || *content > kMaxZstdBlobBytes) {
    return Corrupt(absl::StrCat("zstd blob: bad content size ", *content));
  }
  SinglePlane(&b, *content, static_cast<uint32_t>(*content), PlaneCoder::kZstd);
  b.planes[0].zstd_framing = framing;
  b.planes[0].chunk_offsets = {1, blob.size()};
  return b;
}

absl::StatusOr<ParsedBlob> ParseTensorBlobImpl(absl::Span<const uint8_t> blob, bool allow_fields);

absl::StatusOr<ParsedBlob> ParseFieldsBlob(absl::Span<const uint8_t> blob) {
  ByteReader r(blob, "tensor blob");
  ParsedBlob b;
  b.form = kBlobFormFields;
  ASSIGN_OR_RETURN(uint8_t form, r.U8("blob form"));
  (void)form;
  ASSIGN_OR_RETURN(uint16_t record, r.U16("record size"));
  ASSIGN_OR_RETURN(uint8_t num_fields, r.U8("field count"));
  if (record < 2 || record > kMaxRecordBytes) return Corrupt(absl::StrCat("bad record size ", record));
  if (num_fields < 2 || num_fields > kMaxFields) return Corrupt(absl::StrCat("bad field count ", num_fields));
  b.record_bytes = record;
  uint32_t offset = 0;
  for (uint8_t f = 0; f < num_fields; ++f) {
    ASSIGN_OR_RETURN(uint16_t bytes, r.U16("field size"));
    if (bytes == 0 || offset + bytes > record) return Corrupt("fields do not tile the record");
    b.fields.push_back({offset, bytes, 0, 0});
    offset += bytes;
  }
  if (offset != record) return Corrupt("fields do not tile the record");
  ASSIGN_OR_RETURN(b.num_bytes, r.U64("byte count"));
  if (b.num_bytes % record != 0) return Corrupt("byte count not a multiple of the record size");
  b.num_elements = b.num_bytes;
  b.width = 1;
  b.chunk_elements = 1;
  b.num_chunks = b.num_bytes == 0 ? 0 : 1;
  const uint64_t records = b.num_bytes / record;
  for (BlobField& field : b.fields) {
    ASSIGN_OR_RETURN(uint64_t size, r.U64("field blob size"));
    if (size == 0 || size > r.remaining()) return Corrupt("field blob past the end of the blob");
    field.blob_offset = r.position();
    field.blob_size = size;
    ASSIGN_OR_RETURN(ParsedBlob sub, ParseTensorBlobImpl(blob.subspan(field.blob_offset, size), false));
    if (sub.num_bytes != records * field.bytes) {
      return Corrupt(absl::StrCat("field blob holds ", sub.num_bytes, " bytes, the field has ",
                                  records * field.bytes));
    }
    b.field_blobs.push_back(std::move(sub));
    RETURN_IF_ERROR(r.Bytes(size, "field blob").status());
  }
  if (r.remaining() != 0) return Corrupt("trailing bytes after the last field blob");
  return b;
}

absl::StatusOr<ParsedBlob> ParseTensorBlobImpl(absl::Span<const uint8_t> blob, bool allow_fields) {
  if (blob.empty()) return Corrupt("empty blob");
  switch (blob[0]) {
    case kBlobFormPlanes:
      break;
    case kBlobFormRaw:
      return ParseRawBlob(blob);
    case kBlobFormZstd:
    case kBlobFormZstdMagicless:
      return ParseZstdBlob(blob);
    case kBlobFormSmallPlanes:
      break;
    case kBlobFormFields:
      if (!allow_fields) return Corrupt("a field blob cannot itself be split into fields");
      return ParseFieldsBlob(blob);
    default:
      return Corrupt(absl::StrCat("unknown blob form ", blob[0]));
  }
  // Forms 1 and 6 (planes; form 6 is one chunk with a compact header).
  ByteReader r(blob, "tensor blob");
  ParsedBlob b;
  ASSIGN_OR_RETURN(b.form, r.U8("blob form"));
  const bool small = b.form == kBlobFormSmallPlanes;
  ASSIGN_OR_RETURN(uint8_t split, r.U8("plane split"));
  ASSIGN_OR_RETURN(uint8_t width, r.U8("element width"));
  b.split = static_cast<PlaneSplit>(split);
  b.width = width;
  if (!ValidSplit(b.split, b.width)) {
    return Corrupt(absl::StrCat("bad plane split ", split, " for width ", width));
  }
  const uint32_t expect_planes = b.split == PlaneSplit::kBf16 ? 2 : b.split == PlaneSplit::kFp32 ? 4 : b.width;
  uint32_t num_planes = expect_planes;
  if (!small) {
    ASSIGN_OR_RETURN(uint8_t stored_planes, r.U8("plane count"));
    if (stored_planes != expect_planes) return Corrupt(absl::StrCat("bad plane count ", stored_planes));
    ASSIGN_OR_RETURN(b.num_bytes, r.U64("byte count"));
    ASSIGN_OR_RETURN(b.chunk_elements, r.U32("chunk size"));
    ASSIGN_OR_RETURN(b.num_chunks, r.U32("chunk count"));
  } else {
    ASSIGN_OR_RETURN(b.num_bytes, r.Varint("byte count", 4));
  }
  if (b.num_bytes % b.width != 0) return Corrupt("byte count not a multiple of the element width");
  b.num_elements = b.num_bytes / b.width;
  if (small) {
    if (b.num_elements == 0 || b.num_elements > kMaxChunkElements) {
      return Corrupt(absl::StrCat("small planes blob of ", b.num_elements, " elements"));
    }
    b.chunk_elements = static_cast<uint32_t>(b.num_elements);
    b.num_chunks = 1;
  }
  if (b.chunk_elements == 0 || b.chunk_elements > kMaxChunkElements) {
    return Corrupt(absl::StrCat("bad chunk size ", b.chunk_elements));
  }
  // ceil(n / chunk_elements) without forming n + chunk_elements - 1, which
  // wraps for n near 2^64 (and would make a huge tensor look like 0 chunks).
  const uint64_t expect_chunks =
      b.num_elements / b.chunk_elements + (b.num_elements % b.chunk_elements != 0 ? 1 : 0);
  if (b.num_chunks != expect_chunks) return Corrupt(absl::StrCat("bad chunk count ", b.num_chunks));
  b.planes.resize(num_planes);
  // Payload sizes per plane and chunk, filled as headers are read.
  std::vector<std::vector<uint64_t>> sizes(num_planes);
  for (uint32_t p = 0; p < num_planes; ++p) {
    BlobPlane& plane = b.planes[p];
    ASSIGN_OR_RETURN(uint8_t coder, r.U8("plane coder"));
    plane.coder = static_cast<PlaneCoder>(coder);
    // Per-chunk tables are allocated only once the blob is known to be long
    // enough to hold what they describe (a hostile count cannot make us
    // allocate more than the blob's size).
    auto& sz = sizes[p];
    switch (plane.coder) {
      case PlaneCoder::kRaw:
        if (b.num_elements > blob.size()) return Corrupt("raw plane larger than the blob");
        sz.resize(b.num_chunks);
        for (uint32_t c = 0; c < b.num_chunks; ++c) sz[c] = b.ChunkCount(c);
        continue;
      case PlaneCoder::kConstant: {
        ASSIGN_OR_RETURN(plane.constant, r.U8("constant"));
        continue;  // no payload
      }
      case PlaneCoder::kRansConditional: {
        ASSIGN_OR_RETURN(uint8_t ctx, r.U8("context plane"));
        if (ctx >= p) return Corrupt("context plane must precede the plane it conditions");
        if (b.planes[ctx].coder == PlaneCoder::kRansConditional) {
          return Corrupt("context plane is itself conditional");
        }
        plane.context_plane = ctx;
        ASSIGN_OR_RETURN(uint16_t num_tables, r.U16("table count"));
        if (num_tables == 0 || num_tables > 256) return Corrupt("bad table count");
        ASSIGN_OR_RETURN(auto map, r.Bytes(256, "context map"));
        for (int i = 0; i < 256; ++i) {
          if (map[i] >= num_tables) return Corrupt("context map entry out of range");
          plane.context_map[i] = map[i];
        }
        for (uint16_t t = 0; t < num_tables; ++t) {
          ASSIGN_OR_RETURN(auto f, rans::ReadFrequencies(r));
          plane.tables.push_back(f);
        }
        break;
      }
      case PlaneCoder::kRansSegmented: {
        // Described as order-0 rANS whose chunk c uses table c / k.
        ASSIGN_OR_RETURN(uint32_t k, r.U32("chunks per table"));
        if (k == 0) return Corrupt("rans_segmented plane with 0 chunks per table");
        if (b.num_chunks == 0) return Corrupt("rans_segmented plane without chunks");
        const uint64_t num_tables = b.num_chunks / k + (b.num_chunks % k != 0 ? 1 : 0);
        // A frequency table takes at least 34 bytes (§5.2): no allocation
        // beyond what the blob can hold.
        if (r.remaining() / 34 < num_tables) return Corrupt("frequency tables past the end of the blob");
        plane.tables.reserve(num_tables);
        for (uint64_t t = 0; t < num_tables; ++t) {
          ASSIGN_OR_RETURN(auto f, rans::ReadFrequencies(r));
          plane.tables.push_back(f);
        }
        plane.coder = PlaneCoder::kRans;
        plane.chunks_per_table = k;
        break;
      }
      case PlaneCoder::kRans: {
        ASSIGN_OR_RETURN(auto f, rans::ReadFrequencies(r));
        plane.tables.push_back(f);
        break;
      }
      case PlaneCoder::kZstd:
        if (small) plane.zstd_framing = ZstdFraming::kMagicless;
        break;
      default:
        return Corrupt(absl::StrCat("unknown plane coder ", coder));
    }
    // rans, rans_segmented, rans_conditional, zstd: a payload size per chunk
    // (form 6: one LEB128).
    if (small) {
      ASSIGN_OR_RETURN(uint64_t s, r.Varint("payload size", 4));
      sz.assign(1, s);
      continue;
    }
    if (r.remaining() / 4 < b.num_chunks) return Corrupt("chunk size table past the end of the blob");
    sz.resize(b.num_chunks);
    for (uint32_t c = 0; c < b.num_chunks; ++c) {
      ASSIGN_OR_RETURN(uint32_t s, r.U32("chunk size"));
      sz[c] = s;
    }
  }
  uint64_t offset = r.position();
  for (uint32_t p = 0; p < num_planes; ++p) {
    if (b.planes[p].coder == PlaneCoder::kConstant) continue;  // no payload, no offsets
    auto& offs = b.planes[p].chunk_offsets;
    offs.resize(b.num_chunks + 1);
    for (uint32_t c = 0; c < b.num_chunks; ++c) {
      offs[c] = offset;
      offset += sizes[p][c];
      if (offset > blob.size()) return Corrupt("payload extends past the end of the blob");
    }
    offs[b.num_chunks] = offset;
  }
  if (offset != blob.size()) return Corrupt("trailing bytes after the payload");
  return b;
}

}  // namespace

absl::StatusOr<ParsedBlob> ParseTensorBlob(absl::Span<const uint8_t> blob) {
  return NoThrowAlloc("tensor blob", [&] { return ParseTensorBlobImpl(blob, true); });
}

const char* BlobFormName(uint8_t form) {
  switch (form) {
    case kBlobFormPlanes:
      return "planes";
    case kBlobFormRaw:
      return "raw";
    case kBlobFormZstd:
      return "zstd";
    case kBlobFormFields:
      return "fields";
    case kBlobFormZstdMagicless:
      return "zstd-magicless";
    case kBlobFormSmallPlanes:
      return "small-planes";
    default:
      return "unknown";
  }
}

namespace {
absl::StatusOr<BlobSummary> SummarizeTensorBlobImpl(absl::Span<const uint8_t> blob) {
  ASSIGN_OR_RETURN(ParsedBlob b, ParseTensorBlob(blob));
  BlobSummary s;
  s.form = b.form;
  s.record_bytes = b.record_bytes;
  if (b.form == kBlobFormFields) {
    s.num_bytes = b.num_bytes;
    for (size_t f = 0; f < b.fields.size(); ++f) {
      ASSIGN_OR_RETURN(BlobSummary fs, SummarizeTensorBlobImpl(
                                           blob.subspan(b.fields[f].blob_offset, b.fields[f].blob_size)));
      s.planes.insert(s.planes.end(), fs.planes.begin(), fs.planes.end());
    }
    return s;
  }
  s.split = b.split;
  s.width = b.width;
  s.num_bytes = b.num_bytes;
  s.chunk_elements = b.chunk_elements;
  s.num_chunks = b.num_chunks;
  for (const BlobPlane& p : b.planes) {
    PlaneSummary ps;
    ps.coder = p.chunks_per_table != 0 ? PlaneCoder::kRansSegmented : p.coder;
    ps.raw_bytes = b.num_elements;
    ps.stored_bytes = p.chunk_offsets.empty() ? 0 : p.chunk_offsets.back() - p.chunk_offsets.front();
    ps.context_plane = p.context_plane;
    s.planes.push_back(ps);
  }
  return s;
}
}  // namespace

absl::StatusOr<BlobSummary> SummarizeTensorBlob(absl::Span<const uint8_t> blob) {
  return NoThrowAlloc("tensor blob", [&] { return SummarizeTensorBlobImpl(blob); });
}

namespace {

struct PlaneTables {
  std::vector<rans::DecodeTable> tables;
};

// Per-thread scratch for one chunk's decoded planes; nullptr when it cannot
// be allocated (decoding runs on pool threads and must not throw).
uint8_t* Scratch(size_t bytes) {
  thread_local std::vector<uint8_t> scratch;
  if (scratch.size() < bytes) {
    try {
      scratch.resize(bytes);
    } catch (const std::exception&) {  // bad_alloc, length_error
      std::vector<uint8_t>().swap(scratch);
      return nullptr;
    }
  }
  return scratch.data();
}

void XorInto(uint8_t* out, const uint8_t* base, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] ^= base[i];
}

absl::Status DecodeOneChunk(const ParsedBlob& b, const std::vector<PlaneTables>& tables,
                            absl::Span<const uint8_t> blob, uint32_t c, DecoderImpl impl,
                            uint8_t* out) {
  const size_t count = b.ChunkCount(c);
  const size_t np = b.planes.size();
  uint8_t* scratch = np == 1 ? out : Scratch(count * np);
  if (scratch == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("tensor blob: cannot allocate ", count * np, " bytes of decode scratch"));
  }
  const uint8_t* plane_ptr[kMaxPlanes];
  for (size_t p = 0; p < np; ++p) {
    const BlobPlane& plane = b.planes[p];
    // Single-plane tensors decode straight into the output.
    uint8_t* dst = np == 1 ? out : scratch + p * count;
    if (plane.coder == PlaneCoder::kConstant) {
      std::memset(dst, plane.constant, count);
      plane_ptr[p] = dst;
      continue;
    }
    const uint64_t begin = plane.chunk_offsets[c];
    const auto payload = blob.subspan(begin, plane.chunk_offsets[c + 1] - begin);
    switch (plane.coder) {
      case PlaneCoder::kRaw:
        plane_ptr[p] = payload.data();
        continue;
      case PlaneCoder::kConstant:
        break;  // handled above
      case PlaneCoder::kRansSegmented:
        // The parser describes rans_segmented as kRans + chunks_per_table.
        return absl::InternalError("tensor blob: rans_segmented plane left undescribed by the parser");
      case PlaneCoder::kRans:
      case PlaneCoder::kRansConditional: {
        auto job = [&](size_t q, uint8_t* q_dst, absl::Span<const uint8_t> q_payload,
                       const uint8_t* q_context) {
          const BlobPlane& pl = b.planes[q];
          rans::ChunkJob j;
          if (pl.coder == PlaneCoder::kRansConditional) {
            j.tables = tables[q].tables.data();
            j.num_tables = tables[q].tables.size();
            j.context_map = pl.context_map.data();
            j.context = absl::MakeConstSpan(q_context, count);
          } else {
            j.tables = tables[q].tables.data() + ChunkTable(pl, c);
            j.num_tables = 1;
          }
          j.chunk = q_payload;
          j.out = absl::MakeSpan(q_dst, count);
          return j;
        };
        const uint8_t* context =
            plane.coder == PlaneCoder::kRansConditional ? plane_ptr[plane.context_plane] : nullptr;
        const rans::ChunkJob a = job(p, dst, payload, context);
        const bool pair = np > 1 && p + 1 < np &&
                          (b.planes[p + 1].coder == PlaneCoder::kRans ||
                           (b.planes[p + 1].coder == PlaneCoder::kRansConditional &&
                            static_cast<size_t>(b.planes[p + 1].context_plane) <= p));
        if (!pair) {
          RETURN_IF_ERROR(rans::DecodeChunkJob(impl, a));
          break;
        }
        const BlobPlane& next = b.planes[p + 1];
        uint8_t* next_dst = scratch + (p + 1) * count;
        const uint64_t nb = next.chunk_offsets[c];
        const auto next_payload = blob.subspan(nb, next.chunk_offsets[c + 1] - nb);
        const uint8_t* next_context = nullptr;
        if (next.coder == PlaneCoder::kRansConditional) {
          next_context = static_cast<size_t>(next.context_plane) == p ? dst : plane_ptr[next.context_plane];
        }
        RETURN_IF_ERROR(rans::DecodeChunkPair(impl, a, job(p + 1, next_dst, next_payload, next_context)));
        plane_ptr[p] = dst;
        plane_ptr[p + 1] = next_dst;
        ++p;
        continue;
      }
      case PlaneCoder::kZstd: {
        const absl::Status st = ZstdDecompressExact(payload, plane.zstd_framing, absl::MakeSpan(dst, count));
        if (!st.ok()) {
          if (st.code() != absl::StatusCode::kDataLoss) return st;
          return Corrupt(absl::StrCat("zstd chunk ", c, " of plane ", p, ": ", st.message()));
        }
        break;
      }
    }
    plane_ptr[p] = dst;
  }
  if (np == 1) {
    if (plane_ptr[0] != out) std::memcpy(out, plane_ptr[0], count);
    return absl::OkStatus();
  }
  MergePlanes(b.split, b.width, plane_ptr, count, out);
  return absl::OkStatus();
}


// Chunks c and c + 1 at once: each rANS plane's two chunk streams decode as
// one rans::DecodeChunkPair (interleaved: one stream alone is latency bound).
absl::Status DecodeTwoChunks(const ParsedBlob& b, const std::vector<PlaneTables>& tables,
                             absl::Span<const uint8_t> blob, uint32_t c, DecoderImpl impl,
                             uint8_t* out) {
  const size_t np = b.planes.size();
  const size_t count[2] = {b.ChunkCount(c), b.ChunkCount(c + 1)};
  uint8_t* outs[2] = {out, out + count[0] * b.width};
  uint8_t* scratch = np == 1 ? nullptr : Scratch((count[0] + count[1]) * np);
  if (np > 1 && scratch == nullptr) {
    return absl::ResourceExhaustedError("tensor blob: cannot allocate decode scratch");
  }
  const uint8_t* plane_ptr[2][kMaxPlanes];
  for (size_t p = 0; p < np; ++p) {
    const BlobPlane& plane = b.planes[p];
    uint8_t* dst[2];
    absl::Span<const uint8_t> payload[2];
    for (int h = 0; h < 2; ++h) {
      dst[h] = np == 1 ? outs[h] : scratch + h * count[0] * np + p * count[h];
      if (plane.coder != PlaneCoder::kConstant) {
        const uint64_t begin = plane.chunk_offsets[c + h];
        payload[h] = blob.subspan(begin, plane.chunk_offsets[c + h + 1] - begin);
      }
    }
    if (plane.coder == PlaneCoder::kRans || plane.coder == PlaneCoder::kRansConditional) {
      rans::ChunkJob j[2];
      for (int h = 0; h < 2; ++h) {
        if (plane.coder == PlaneCoder::kRansConditional) {
          j[h].tables = tables[p].tables.data();
          j[h].num_tables = tables[p].tables.size();
          j[h].context_map = plane.context_map.data();
          j[h].context = absl::MakeConstSpan(plane_ptr[h][plane.context_plane], count[h]);
        } else {
          j[h].tables = tables[p].tables.data() + ChunkTable(plane, c + h);
          j[h].num_tables = 1;
        }
        j[h].chunk = payload[h];
        j[h].out = absl::MakeSpan(dst[h], count[h]);
      }
      RETURN_IF_ERROR(rans::DecodeChunkPair(impl, j[0], j[1]));
      plane_ptr[0][p] = dst[0];
      plane_ptr[1][p] = dst[1];
      continue;
    }
    for (int h = 0; h < 2; ++h) {
      switch (plane.coder) {
        case PlaneCoder::kConstant:
          std::memset(dst[h], plane.constant, count[h]);
          plane_ptr[h][p] = dst[h];
          break;
        case PlaneCoder::kRaw:
          plane_ptr[h][p] = payload[h].data();
          break;
        case PlaneCoder::kZstd: {
          const absl::Status st =
              ZstdDecompressExact(payload[h], plane.zstd_framing, absl::MakeSpan(dst[h], count[h]));
          if (!st.ok()) {
            if (st.code() != absl::StatusCode::kDataLoss) return st;
            return Corrupt(absl::StrCat("zstd chunk ", c + h, " of plane ", p, ": ", st.message()));
          }
          plane_ptr[h][p] = dst[h];
          break;
        }
        default:
          return Corrupt("coder");
      }
    }
  }
  for (int h = 0; h < 2; ++h) {
    if (np == 1) {
      if (plane_ptr[h][0] != outs[h]) std::memcpy(outs[h], plane_ptr[h][0], count[h]);
    } else {
      MergePlanes(b.split, b.width, plane_ptr[h], count[h], outs[h]);
    }
  }
  return absl::OkStatus();
}

}  // namespace

namespace {

absl::Status BuildTables(const ParsedBlob& b, std::vector<PlaneTables>* tables) {
  tables->assign(b.planes.size(), PlaneTables{});
  for (size_t p = 0; p < b.planes.size(); ++p) {
    (*tables)[p].tables.resize(b.planes[p].tables.size());
    for (size_t t = 0; t < b.planes[p].tables.size(); ++t) {
      RETURN_IF_ERROR(rans::BuildDecodeTable(b.planes[p].tables[t], &(*tables)[p].tables[t]));
    }
  }
  return absl::OkStatus();
}

absl::Status DecodeParsed(const ParsedBlob& b, absl::Span<const uint8_t> blob, absl::Span<uint8_t> out,
                          DecoderImpl impl, ThreadPool* pool);

// Form 4: each field's blob decodes into scratch, then its bytes go to
// their place in every record.
absl::Status DecodeFields(const ParsedBlob& b, absl::Span<const uint8_t> blob, absl::Span<uint8_t> out,
                          DecoderImpl impl) {
  const uint64_t records = b.num_bytes / b.record_bytes;
  std::vector<uint8_t> field_bytes;
  for (size_t f = 0; f < b.fields.size(); ++f) {
    const BlobField& field = b.fields[f];
    field_bytes.resize(records * field.bytes);
    RETURN_IF_ERROR(DecodeParsed(b.field_blobs[f], blob.subspan(field.blob_offset, field.blob_size),
                                 absl::MakeSpan(field_bytes), impl, nullptr));
    const uint8_t* src = field_bytes.data();
    uint8_t* dst = out.data() + field.offset;
    const uint32_t w = field.bytes;
    const uint32_t stride = b.record_bytes;
    switch (w) {
      case 1:
        for (uint64_t r = 0; r < records; ++r) dst[r * stride] = src[r];
        break;
      case 2:
        for (uint64_t r = 0; r < records; ++r) std::memcpy(dst + r * stride, src + 2 * r, 2);
        break;
      case 4:
        for (uint64_t r = 0; r < records; ++r) std::memcpy(dst + r * stride, src + 4 * r, 4);
        break;
      default:
        for (uint64_t r = 0; r < records; ++r) std::memcpy(dst + r * stride, src + uint64_t{w} * r, w);
        break;
    }
  }
  return absl::OkStatus();
}

absl::Status DecodeParsed(const ParsedBlob& b, absl::Span<const uint8_t> blob, absl::Span<uint8_t> out,
                          DecoderImpl impl, ThreadPool* pool) {
  if (b.num_bytes != out.size()) {
    return Corrupt(absl::StrCat("blob holds ", b.num_bytes, " bytes, tensor has ", out.size()));
  }
  if (b.form == kBlobFormFields) return DecodeFields(b, blob, out, impl);
  std::vector<PlaneTables> tables;
  RETURN_IF_ERROR(BuildTables(b, &tables));
  auto decode = [&](size_t c) {
    return DecodeOneChunk(b, tables, blob, static_cast<uint32_t>(c), impl,
                          out.data() + uint64_t{c} * b.chunk_elements * b.width);
  };
  if (pool != nullptr && b.num_chunks > 1) return pool->ParallelFor(b.num_chunks, decode);
  uint32_t c = 0;
  int rans_planes = 0;
  for (const auto& pl : b.planes) rans_planes += pl.coder == PlaneCoder::kRans || pl.coder == PlaneCoder::kRansConditional;
  for (; rans_planes < 2 && c + 1 < b.num_chunks; c += 2) {
    RETURN_IF_ERROR(DecodeTwoChunks(b, tables, blob, c, impl, out.data() + uint64_t{c} * b.chunk_elements * b.width));
  }
  for (; c < b.num_chunks; ++c) RETURN_IF_ERROR(decode(c));
  return absl::OkStatus();
}

absl::Status DecodeTensorBlobImpl(absl::Span<const uint8_t> blob, absl::Span<uint8_t> out,
                                  const DecodeOptions& options) {
  ASSIGN_OR_RETURN(ParsedBlob b, ParseTensorBlob(blob));
  const DecoderImpl impl = options.impl == DecoderImpl::kAuto ? BestDecoderImpl() : options.impl;
  return DecodeParsed(b, blob, out, impl, options.pool);
}
}  // namespace

absl::Status DecodeTensorBlob(absl::Span<const uint8_t> blob, absl::Span<uint8_t> out,
                              const DecodeOptions& options) {
  return NoThrowAlloc("tensor blob", [&] { return DecodeTensorBlobImpl(blob, out, options); });
}

namespace {

// One parsed job of a batch.
struct BatchBlob {
  ParsedBlob parsed;
  std::vector<PlaneTables> tables;
};

absl::Status PrepareBatchBlob(const BlobDecodeJob& job, BatchBlob* bb) {
  ASSIGN_OR_RETURN(bb->parsed, ParseTensorBlob(job.blob));
  const ParsedBlob& b = bb->parsed;
  if (b.num_bytes != job.out.size()) {
    return Corrupt(absl::StrCat("blob holds ", b.num_bytes, " bytes, tensor has ", job.out.size()));
  }
  if (!job.xor_base.empty() && job.xor_base.size() != job.out.size()) {
    return absl::InvalidArgumentError(absl::StrCat("delta base has ", job.xor_base.size(),
                                                   " bytes, tensor has ", job.out.size()));
  }
  return BuildTables(b, &bb->tables);
}

absl::Status DecodeBlobBatchImpl(absl::Span<const BlobDecodeJob> jobs, const DecodeOptions& options,
                                 size_t* failed_job) {
  *failed_job = 0;
  if (jobs.empty()) return absl::OkStatus();
  ThreadPool* pool = options.pool;
  auto run = [pool](size_t n, const std::function<absl::Status(size_t)>& fn) -> absl::Status {
    if (pool != nullptr && n > 1) return pool->ParallelFor(n, fn);
    for (size_t i = 0; i < n; ++i) RETURN_IF_ERROR(fn(i));
    return absl::OkStatus();
  };
  // Phase 1: parse every blob and build its decode tables. Each task writes
  // only its own slot; the failing job with the lowest index wins.
  std::vector<BatchBlob> blobs(jobs.size());
  std::vector<absl::Status> prepared(jobs.size());
  // A task that could not run (the pool's own failure, an allocation that
  // threw) fails the batch: its job would otherwise look prepared.
  RETURN_IF_ERROR(run(jobs.size(), [&](size_t j) {
    prepared[j] = PrepareBatchBlob(jobs[j], &blobs[j]);
    return absl::OkStatus();
  }));
  for (size_t j = 0; j < jobs.size(); ++j) {
    if (!prepared[j].ok()) {
      *failed_job = j;
      return prepared[j];
    }
  }
  // Phase 2: every chunk of every job on one queue. first_chunk[j] is job
  // j's first index in the flattened chunk space.
  std::vector<uint64_t> first_chunk(jobs.size() + 1, 0);
  for (size_t j = 0; j < jobs.size(); ++j) first_chunk[j + 1] = first_chunk[j] + blobs[j].parsed.num_chunks;
  const DecoderImpl impl = options.impl == DecoderImpl::kAuto ? BestDecoderImpl() : options.impl;
  std::vector<absl::Status> failed(jobs.size());
  std::mutex failed_mu;
  const absl::Status st = run(first_chunk.back(), [&](size_t k) -> absl::Status {
    const size_t j = static_cast<size_t>(
        std::upper_bound(first_chunk.begin(), first_chunk.end(), uint64_t{k}) - first_chunk.begin() - 1);
    const BatchBlob& bb = blobs[j];
    const uint32_t c = static_cast<uint32_t>(k - first_chunk[j]);
    const uint64_t offset = uint64_t{c} * bb.parsed.chunk_elements * bb.parsed.width;
    uint8_t* out = jobs[j].out.data() + offset;
    // A form-4 blob is one work item (its fields decode one after another).
    const bool fields = bb.parsed.form == kBlobFormFields;
    absl::Status s = fields ? DecodeFields(bb.parsed, jobs[j].blob, jobs[j].out, impl)
                            : DecodeOneChunk(bb.parsed, bb.tables, jobs[j].blob, c, impl, out);
    if (s.ok() && !jobs[j].xor_base.empty()) {
      const uint64_t bytes = fields ? jobs[j].out.size() : bb.parsed.ChunkCount(c) * bb.parsed.width;
      XorInto(out, jobs[j].xor_base.data() + offset, bytes);
    }
    if (!s.ok()) {
      std::lock_guard<std::mutex> lock(failed_mu);
      if (failed[j].ok()) failed[j] = s;
    }
    return s;
  });
  if (st.ok()) return st;
  for (size_t j = 0; j < jobs.size(); ++j) {
    if (!failed[j].ok()) {
      *failed_job = j;
      return failed[j];
    }
  }
  return st;  // a failure outside any chunk (the pool's own)
}

}  // namespace

absl::Status DecodeBlobBatch(absl::Span<const BlobDecodeJob> jobs, const DecodeOptions& options,
                             size_t* failed_job) {
  return NoThrowAlloc("tensor blob batch", [&] { return DecodeBlobBatchImpl(jobs, options, failed_job); });
}

absl::Status DecodeTensorBlobs(absl::Span<const BlobDecodeJob> jobs, const DecodeOptions& options) {
  size_t failed_job = 0;
  absl::Status st = DecodeBlobBatch(jobs, options, &failed_job);
  if (st.ok()) return st;
  return absl::Status(st.code(), absl::StrCat("tensor ", failed_job, ": ", st.message()));
}

}  // namespace bigsmall
