// Frequency tables, the reference chunk decoder (the spec's oracle) and the
// dispatch to the fast decoders.
#include "codec/rans_decode.h"

#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "codec/byte_io.h"

namespace bigsmall::rans {

absl::StatusOr<Frequencies> ReadFrequencies(ByteReader& reader) {
  auto bitmap = reader.Bytes(32, "frequency bitmap");
  if (!bitmap.ok()) return bitmap.status();
  Frequencies f{};
  uint32_t sum = 0;
  for (int s = 0; s < 256; ++s) {
    if (((*bitmap)[s >> 3] >> (s & 7)) & 1) {
      auto v = reader.U16("frequency");
      if (!v.ok()) return v.status();
      if (*v >= kProbScale) return reader.Error(absl::StrCat("frequency of symbol ", s, " too large"));
      f[s] = static_cast<uint16_t>(*v + 1);
      sum += f[s];
    }
  }
  if (sum != kProbScale) {
    return reader.Error(absl::StrCat("frequencies sum to ", sum, ", not ", kProbScale));
  }
  return f;
}

absl::Status BuildDecodeTable(const Frequencies& freqs, DecodeTable* table) {
  uint32_t cum = 0;
  for (int s = 0; s < 256; ++s) {
    const uint32_t f = freqs[s];
    if (f == 0) continue;
    if (cum + f > kProbScale) break;
    for (uint32_t k = 0; k < f; ++k) table->slot[cum + k] = PackSlot(s, f, cum);
    cum += f;
  }
  if (cum != kProbScale) {
    return absl::DataLossError(absl::StrCat("frequency table sums to ", cum, ", not ", kProbScale));
  }
  return absl::OkStatus();
}

namespace {

absl::Status StreamError(const char* what) {
  return absl::DataLossError(absl::StrCat("rANS chunk corrupt: ", what));
}

// The reference decoder: one symbol at a time in stream order, exactly as
// docs/FORMAT.md §6 states it. `table_for(i)` returns symbol i's table.
template <typename TableFor>
absl::Status DecodeReference(TableFor table_for, absl::Span<const uint8_t> chunk,
                             absl::Span<uint8_t> out) {
  if (chunk.size() < kChunkHeaderBytes || (chunk.size() - kChunkHeaderBytes) % 2 != 0) {
    return StreamError("bad chunk size");
  }
  uint32_t x[kLanes];
  for (int l = 0; l < kLanes; ++l) x[l] = LoadLe32(chunk.data() + 4 * l);
  const uint8_t* words = chunk.data() + kChunkHeaderBytes;
  const size_t num_words = (chunk.size() - kChunkHeaderBytes) / 2;
  size_t next = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    const int lane = static_cast<int>(i % kLanes);
    const uint32_t slot = table_for(i).slot[x[lane] & (kProbScale - 1)];
    out[i] = static_cast<uint8_t>(SlotSymbol(slot));
    x[lane] = DecodeAdvance(x[lane], slot);
    if (x[lane] < kRansLow) {
      if (next == num_words) return StreamError("ran out of words");
      x[lane] = (x[lane] << kWordBits) | LoadLe16(words + 2 * next);
      ++next;
    }
  }
  if (next != num_words) return StreamError("words left over");
  for (int l = 0; l < kLanes; ++l) {
    if (x[l] != kRansLow) return StreamError("final state mismatch");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status DecodeChunkReference(const DecodeTable& table, absl::Span<const uint8_t> chunk,
                                  absl::Span<uint8_t> out) {
  return DecodeReference([&](size_t) -> const DecodeTable& { return table; }, chunk, out);
}

absl::Status DecodeChunk(DecoderImpl impl, const DecodeTable& table,
                         absl::Span<const uint8_t> chunk, absl::Span<uint8_t> out) {
  if (impl == DecoderImpl::kAuto) impl = BestDecoderImpl();
  switch (impl) {
    case DecoderImpl::kReference:
      return DecodeChunkReference(table, chunk, out);
    case DecoderImpl::kAvx512:
      if (CpuHasAvx512()) return DecodeChunkAvx512(table, chunk, out);
      return DecodeChunkScalar(table, chunk, out);
    case DecoderImpl::kAvx2:
      if (CpuHasAvx2()) return DecodeChunkAvx2(table, chunk, out);
      return DecodeChunkScalar(table, chunk, out);
    case DecoderImpl::kScalar:
    case DecoderImpl::kAuto:
      return DecodeChunkScalar(table, chunk, out);
  }
  return DecodeChunkScalar(table, chunk, out);
}

absl::Status CheckChunkJob(const ChunkJob& job) {
  if (job.tables == nullptr || job.num_tables < 1 || job.num_tables > 256) {
    return StreamError("bad table count");
  }
  if (job.context_map == nullptr) return absl::OkStatus();
  if (job.context.size() != job.out.size()) return StreamError("context size mismatch");
  for (int c = 0; c < 256; ++c) {
    if (job.context_map[c] >= job.num_tables) return StreamError("context map out of range");
  }
  return absl::OkStatus();
}

absl::Status DecodeChunkConditionalReference(const DecodeTable* tables, size_t num_tables,
                                             const uint8_t* context_map,
                                             absl::Span<const uint8_t> context,
                                             absl::Span<const uint8_t> chunk, absl::Span<uint8_t> out) {
  ChunkJob job;
  job.tables = tables;
  job.num_tables = num_tables;
  job.context_map = context_map;
  job.context = context;
  job.out = out;
  const absl::Status st = CheckChunkJob(job);
  if (!st.ok()) return st;
  return DecodeReference(
      [&](size_t i) -> const DecodeTable& { return tables[context_map[context[i]]]; }, chunk, out);
}

absl::Status DecodeChunkConditional(DecoderImpl impl, const DecodeTable* tables,
                                    size_t num_tables, const uint8_t* context_map,
                                    absl::Span<const uint8_t> context,
                                    absl::Span<const uint8_t> chunk, absl::Span<uint8_t> out) {
  if (impl == DecoderImpl::kAuto) impl = BestDecoderImpl();
  switch (impl) {
    case DecoderImpl::kReference:
      return DecodeChunkConditionalReference(tables, num_tables, context_map, context, chunk, out);
    case DecoderImpl::kAvx512:
      if (CpuHasAvx512()) {
        return DecodeChunkConditionalAvx512(tables, num_tables, context_map, context, chunk, out);
      }
      break;
    case DecoderImpl::kAvx2:
      if (CpuHasAvx2()) {
        return DecodeChunkConditionalAvx2(tables, num_tables, context_map, context, chunk, out);
      }
      break;
    case DecoderImpl::kScalar:
    case DecoderImpl::kAuto:
      break;
  }
  return DecodeChunkConditionalScalar(tables, num_tables, context_map, context, chunk, out);
}

absl::Status DecodeChunkJob(DecoderImpl impl, const ChunkJob& job) {
  if (job.context_map == nullptr) {
    if (job.tables == nullptr) return StreamError("bad table count");
    return DecodeChunk(impl, job.tables[0], job.chunk, job.out);
  }
  return DecodeChunkConditional(impl, job.tables, job.num_tables, job.context_map, job.context,
                                job.chunk, job.out);
}

}  // namespace bigsmall::rans

namespace bigsmall {

const char* DecoderImplName(DecoderImpl impl) {
  switch (impl) {
    case DecoderImpl::kAuto: return "auto";
    case DecoderImpl::kReference: return "reference";
    case DecoderImpl::kScalar: return "scalar";
    case DecoderImpl::kAvx2: return "avx2";
    case DecoderImpl::kAvx512: return "avx512";
  }
  return "?";
}

bool DecoderImplAvailable(DecoderImpl impl) {
  switch (impl) {
    case DecoderImpl::kAuto:
    case DecoderImpl::kReference:
    case DecoderImpl::kScalar:
      return true;
    case DecoderImpl::kAvx2:
      return rans::CpuHasAvx2();
    case DecoderImpl::kAvx512:
      return rans::CpuHasAvx512();
  }
  return false;
}

DecoderImpl BestDecoderImpl() {
  // BIGSMALL_DECODER=reference|scalar|avx2|avx512 overrides the choice (for
  // benchmarks and for ruling a SIMD path out in the field).
  static const DecoderImpl forced = [] {
    const char* env = std::getenv("BIGSMALL_DECODER");
    const std::string v = env ? env : "";
    if (v == "reference") return DecoderImpl::kReference;
    if (v == "scalar") return DecoderImpl::kScalar;
    if (v == "avx2" && rans::CpuHasAvx2()) return DecoderImpl::kAvx2;
    if (v == "avx512" && rans::CpuHasAvx512()) return DecoderImpl::kAvx512;
    return DecoderImpl::kAuto;
  }();
  if (forced != DecoderImpl::kAuto) return forced;
  if (rans::CpuHasAvx512()) return DecoderImpl::kAvx512;
  if (rans::CpuHasAvx2()) return DecoderImpl::kAvx2;
  return DecoderImpl::kScalar;
}

}  // namespace bigsmall
