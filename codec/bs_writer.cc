#include "codec/bs_writer.h"

#include <algorithm>
#include <map>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "codec/bs_reader.h"
#include "codec/byte_io.h"
#include "codec/device_checksum.h"
#include "codec/fast_hash.h"
#include "codec/file_util.h"
#include "codec/format.h"
#include "codec/hash.h"
#include "codec/status_macros.h"
#include "codec/tensor_codec.h"
#include "zstd.h"

namespace bigsmall {
namespace {

constexpr char kWriter[] = "bigsmall 0.1.0";
// Bytes of tensors encoded concurrently (one tensor when it is larger).
constexpr uint64_t kBatchBytes = 64ull << 20;

struct GroupPlan {
  std::string name;
  int64_t layer = -1;
  std::vector<uint32_t> tensors;
  uint64_t offset = 0;
  uint64_t size = 0;
  uint64_t checksum = 0;  // XXH3-64 of the stored bytes (format 1.1)
};

struct TensorRecord {
  uint32_t group = 0;
  uint64_t blob_offset = 0;
  uint64_t blob_size = 0;
  Hash128 hash{};
  uint8_t flags = 0;
  Hash128 base_hash{};
  uint64_t device_checksum = 0;  // of the original bytes (format 1.1, §3.1)
};

// Non-layer tensors first (group ""), then layers by number, then by name.
std::vector<GroupPlan> PlanGroups(const SafetensorsHeader& header, const std::string& pattern,
                                  std::vector<TensorRecord>& records) {
  std::map<std::tuple<int64_t, std::string>, std::vector<uint32_t>> groups;
  for (uint32_t t = 0; t < header.tensors.size(); ++t) {
    LayerKey key = LayerOf(header.tensors[t].name, pattern);
    groups[{key.layer, key.layer < 0 ? std::string() : key.group}].push_back(t);
  }
  std::vector<GroupPlan> plans;
  for (auto& [key, tensors] : groups) {
    GroupPlan g;
    g.layer = std::get<0>(key);
    g.name = std::get<1>(key);
    g.tensors = std::move(tensors);
    for (uint32_t t : g.tensors) records[t].group = static_cast<uint32_t>(plans.size());
    plans.push_back(std::move(g));
  }
  return plans;
}

std::vector<uint8_t> SerializeIndex(const SafetensorsFile& file, uint64_t original_size,
                                    const Hash128& original_hash, const CompressOptions& options,
                                    const BaseModel* base, const std::vector<GroupPlan>& groups,
                                    const std::vector<TensorRecord>& records) {
  std::vector<uint8_t> raw;
  ByteWriter w(&raw);
  w.String(kWriter);
  w.U8(static_cast<uint8_t>(options.mode));
  w.U64(original_size);
  w.Bytes(original_hash);
  w.String(base != nullptr ? base->path() : std::string());
  w.U64(file.prefix.size());
  w.Bytes(file.prefix);
  w.U32(static_cast<uint32_t>(groups.size()));
  w.U32(static_cast<uint32_t>(records.size()));
  for (const TensorRecord& r : records) {
    w.U32(r.group);
    w.U64(r.blob_offset);
    w.U64(r.blob_size);
    w.Bytes(r.hash);
    w.U8(r.flags);
    if (r.flags & kTensorFlagDelta) w.Bytes(r.base_hash);
  }
  for (const GroupPlan& g : groups) {
    w.String(g.name);
    w.I64(g.layer);
    w.U64(g.offset);
    w.U64(g.size);
    w.U32(static_cast<uint32_t>(g.tensors.size()));
    for (uint32_t t : g.tensors) w.U32(t);
  }
  // Format 1.1 trailer (docs/FORMAT.md §3.2).
  for (const TensorRecord& r : records) w.U64(r.device_checksum);
  for (const GroupPlan& g : groups) w.U64(g.checksum);
  return raw;
}

// XXH3-128 of the whole input: through the mapping when there is one (no
// copy; pages dropped from the mapping behind the hash, so the resident set
// stays small), else read in 16 MiB pieces.
absl::StatusOr<Hash128> HashWholeFile(ByteSource& source, const ReadOnlyMapping& map) {
  FastStreamingHash128 h;
  constexpr uint64_t kPiece = 16 << 20;
  if (map.ok()) {
    for (uint64_t off = 0; off < map.size(); off += kPiece) {
      const uint64_t n = std::min<uint64_t>(kPiece, map.size() - off);
      h.Update(map.bytes(off, n));
      map.Release(off, n);
    }
    return h.Finish();
  }
  std::vector<uint8_t> buf(kPiece);
  for (uint64_t off = 0; off < source.size(); off += buf.size()) {
    const uint64_t n = std::min<uint64_t>(buf.size(), source.size() - off);
    RETURN_IF_ERROR(source.ReadAt(off, absl::MakeSpan(buf.data(), n)));
    h.Update(absl::MakeConstSpan(buf.data(), n));
  }
  return h.Finish();
}

}  // namespace

absl::StatusOr<BsWriteResult> WriteBsFile(const std::string& input, AtomicFile& out,
                                          const CompressOptions& options, const BaseModel* base,
                                          ThreadPool& pool, uint64_t progress_offset,
                                          uint64_t progress_total) {
  ASSIGN_OR_RETURN(SafetensorsFile file, OpenSafetensors(input));
  const uint64_t original_size = file.source->size();
  // Tensors are encoded from the mapped input (read where it cannot be mapped).
  const ReadOnlyMapping map = ReadOnlyMapping::Open(input, original_size);
  ASSIGN_OR_RETURN(Hash128 original_hash, HashWholeFile(*file.source, map));

  const auto& tensors = file.header.tensors;
  std::vector<TensorRecord> records(tensors.size());
  std::vector<GroupPlan> groups = PlanGroups(file.header, options.layer_pattern, records);

  BsWriteResult result;
  result.input_bytes = original_size;
  result.tensors = tensors.size();
  // Small originals are packed (docs/FORMAT.md §1.1): no 4 KiB alignment.
  const bool packed = options.layout == Layout::kPacked ||
                      (options.layout == Layout::kAuto && original_size < kPackedBelow);
  const uint64_t alignment = packed ? 1 : kGroupAlignment;
  RETURN_IF_ERROR(out.PadTo(packed ? kFileHeaderSize : kGroupAlignment));
  uint64_t done = file.prefix.size();
  EncodeOptions eo;
  eo.mode = options.mode;
  eo.chunk_elements = options.chunk_elements;
  eo.pool = &pool;
  for (GroupPlan& g : groups) {
    const uint64_t aligned = (out.size() + alignment - 1) / alignment * alignment;
    RETURN_IF_ERROR(out.PadTo(aligned));
    g.offset = aligned;
    // Tensors of a group are encoded concurrently in batches of bounded size
    // and written in order.
    std::vector<std::vector<uint8_t>> blobs(g.tensors.size());
    StreamingHash64 group_hash;
    RETURN_IF_ERROR(pool.OrderedBatches(
        g.tensors.size(), kBatchBytes, [&](size_t k) { return tensors[g.tensors[k]].size(); },
        [&](size_t k) -> absl::Status {
          const SafetensorsTensor& st = tensors[g.tensors[k]];
          TensorRecord& rec = records[g.tensors[k]];
          const uint64_t at = file.header.header_bytes + st.begin;
          const bool delta = base != nullptr && base->Find(st) != nullptr;
          // The mapped bytes as they are; a copy only to XOR with the base.
          std::vector<uint8_t> copy;
          absl::Span<const uint8_t> bytes;
          if (map.ok() && !delta && at + st.size() <= map.size()) {
            bytes = map.bytes(at, st.size());
          } else {
            ASSIGN_OR_RETURN(copy, ReadRange(*file.source, at, st.size()));
            bytes = copy;
          }
          rec.hash = HashBytes128(bytes);
          // Of the original bytes, before any XOR with the base (§3.1).
          rec.device_checksum = DeviceChecksum(bytes.data(), bytes.size());
          if (delta) {
            ASSIGN_OR_RETURN(std::vector<uint8_t> base_bytes, base->Read(st));
            rec.base_hash = HashBytes128(base_bytes);
            rec.flags |= kTensorFlagDelta;
            for (size_t i = 0; i < copy.size(); ++i) copy[i] ^= base_bytes[i];
          }
          auto blob = EncodeTensorBlob(bytes, st.dtype, eo);
          map.Release(at, st.size());
          if (!blob.ok()) {
            return absl::Status(blob.status().code(),
                                absl::StrCat(input, ": tensor '", st.name, "': ", blob.status().message()));
          }
          blobs[k] = *std::move(blob);
          return absl::OkStatus();
        },
        [&](size_t k) -> absl::Status {
          const SafetensorsTensor& st = tensors[g.tensors[k]];
          TensorRecord& rec = records[g.tensors[k]];
          rec.blob_offset = out.size();
          rec.blob_size = blobs[k].size();
          RETURN_IF_ERROR(out.Write(blobs[k]));
          group_hash.Update(blobs[k]);
          std::vector<uint8_t>().swap(blobs[k]);
          result.delta_tensors += (rec.flags & kTensorFlagDelta) ? 1 : 0;
          done += st.size();
          if (options.progress) options.progress(progress_offset + done, progress_total);
          return absl::OkStatus();
        }));
    g.size = out.size() - g.offset;
    g.checksum = group_hash.Finish();
  }
  const std::vector<uint8_t> raw =
      SerializeIndex(file, original_size, original_hash, options, base, groups, records);
  std::vector<uint8_t> stored(ZSTD_compressBound(raw.size()));
  const size_t n = ZSTD_compress(stored.data(), stored.size(), raw.data(), raw.size(), 9);
  if (ZSTD_isError(n)) return absl::InternalError(ZSTD_getErrorName(n));
  stored.resize(n);
  if (raw.size() > MaxIndexRawSize(stored.size())) {
    // A reader would refuse it (docs/FORMAT.md §2): fail here, not there.
    return absl::InvalidArgumentError(absl::StrCat(
        input, ": the .bs index would be ", raw.size(), " bytes (", stored.size(),
        " compressed), beyond what a reader accepts (", MaxIndexRawSize(stored.size()), ")"));
  }
  const uint64_t index_offset = out.size();
  RETURN_IF_ERROR(out.Write(stored));

  uint8_t header[kFileHeaderSize] = {};
  std::copy(kMagic.begin(), kMagic.end(), header);
  std::vector<uint8_t> fields;
  ByteWriter w(&fields);
  w.U16(kFormatVersionMajor);
  w.U16(kFormatVersionMinor);
  w.U32((base != nullptr ? kFlagDelta : 0) | (packed ? kFlagPacked : 0));
  w.U64(index_offset);
  w.U64(stored.size());
  w.U64(raw.size());
  w.U64(HashBytes64(stored));
  w.U64(out.size());
  std::copy(fields.begin(), fields.end(), header + 8);
  StoreLe64(header + 56, HashBytes64(absl::MakeConstSpan(header, 56)));
  RETURN_IF_ERROR(out.WriteAt(0, absl::MakeConstSpan(header, kFileHeaderSize)));
  result.output_bytes = out.size();
  return result;
}

}  // namespace bigsmall
