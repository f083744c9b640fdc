#include "codec/bs_reader.h"

#include <algorithm>
#include <cstring>
#include <functional>

#include "absl/strings/string_view.h"
#include "absl/strings/str_cat.h"
#include "codec/byte_io.h"
#include "codec/device_checksum.h"
#include "codec/error_kind.h"
#include "codec/status_macros.h"
#include "codec/tensor_blob.h"
#include "codec/thread_pool.h"
#include "codec/status_util.h"
#include "zstd.h"

namespace bigsmall {
namespace {

absl::Status Corrupt(absl::string_view what, absl::string_view message) {
  return absl::DataLossError(absl::StrCat(what, ": ", message));
}

// docs/FORMAT.md §1: every padding byte is zero. `bytes` lie at file offset
// `offset`; `region` says which padding they are.
absl::Status CheckZeroPadding(absl::string_view what, absl::Span<const uint8_t> bytes, uint64_t offset,
                              absl::string_view region) {
  const auto it = std::find_if(bytes.begin(), bytes.end(), [](uint8_t b) { return b != 0; });
  if (it == bytes.end()) return absl::OkStatus();
  return Corrupt(what, absl::StrCat("non-zero byte at offset ", offset + (it - bytes.begin()), " in the padding ",
                                    region, " (padding must be zero)"));
}

}  // namespace

uint64_t MaxIndexRawSize(uint64_t index_stored_size) {
  const uint64_t by_ratio =
      index_stored_size > kMaxIndexSize / kMaxIndexRatio ? kMaxIndexSize : index_stored_size * kMaxIndexRatio;
  return std::min(kMaxIndexSize, std::max(kIndexRatioFloor, by_ratio));
}

absl::StatusOr<FileHeader> ParseFileHeader(absl::Span<const uint8_t> bytes, absl::string_view what) {
  if (bytes.size() < kFileHeaderSize) return Corrupt(what, "too short to be a .bs file");
  if (!std::equal(kMagic.begin(), kMagic.end(), bytes.begin())) {
    return WithErrorKind(Corrupt(what, "not a .bs file (bad magic)"), ErrorKind::kNotBsFile);
  }
  const uint64_t stored_checksum = LoadLe64(bytes.data() + 56);
  if (HashBytes64(bytes.subspan(0, 56)) != stored_checksum) {
    return Corrupt(what, "header checksum mismatch");
  }
  ByteReader r(bytes.subspan(8, 48), what);
  FileHeader h;
  ASSIGN_OR_RETURN(h.version_major, r.U16("version"));
  ASSIGN_OR_RETURN(h.version_minor, r.U16("version"));
  ASSIGN_OR_RETURN(h.flags, r.U32("flags"));
  ASSIGN_OR_RETURN(h.index_offset, r.U64("index offset"));
  ASSIGN_OR_RETURN(h.index_stored_size, r.U64("index size"));
  ASSIGN_OR_RETURN(h.index_raw_size, r.U64("index size"));
  ASSIGN_OR_RETURN(h.index_checksum, r.U64("index checksum"));
  ASSIGN_OR_RETURN(h.file_size, r.U64("file size"));
  if (h.version_major != kFormatVersionMajor) {
    return WithErrorKind(
        Corrupt(what, absl::StrCat("format version ", h.version_major, ".", h.version_minor,
                                   " is not supported (this build reads ", kFormatVersionMajor, ".x)")),
        ErrorKind::kUnsupportedVersion);
  }
  if (h.version_minor > kFormatVersionMinor) {
    // Strict: a later minor version's additions could not be told from
    // trailing garbage (docs/FORMAT.md §2).
    return WithErrorKind(
        Corrupt(what, absl::StrCat("format version ", h.version_major, ".", h.version_minor,
                                   " is not supported (this build reads ", kFormatVersionMajor, ".0 to ",
                                   kFormatVersionMajor, ".", kFormatVersionMinor, ")")),
        ErrorKind::kUnsupportedVersion);
  }
  const uint32_t known_flags = kFlagDelta | (h.version_minor >= kFormatVersionMinorPacked ? kFlagPacked : 0);
  if ((h.flags & ~known_flags) != 0) return Corrupt(what, "unknown header flags");
  const bool packed = (h.flags & kFlagPacked) != 0;
  if (h.index_raw_size > kMaxIndexSize || h.index_stored_size > kMaxIndexSize) {
    return Corrupt(what, "index size out of range");
  }
  if (h.index_offset < (packed ? kFileHeaderSize : kGroupAlignment) || h.index_offset > h.file_size ||
      h.index_stored_size > h.file_size - h.index_offset) {
    return Corrupt(what, "index lies outside the file");
  }
  if (h.index_stored_size != h.file_size - h.index_offset) {
    // docs/FORMAT.md §1: the index ends the file; no byte lies after it.
    return Corrupt(what, absl::StrCat("index does not end the file (", h.file_size - h.index_offset -
                                      h.index_stored_size, " bytes after it)"));
  }
  if (h.index_raw_size > MaxIndexRawSize(h.index_stored_size)) {
    return Corrupt(what, absl::StrCat("index of ", h.index_stored_size, " stored bytes claims ",
                                      h.index_raw_size, " bytes decompressed (more than ",
                                      MaxIndexRawSize(h.index_stored_size), " allowed)"));
  }
  return h;
}

namespace {
absl::StatusOr<BsIndex> ParseIndexImpl(absl::Span<const uint8_t> raw, const FileHeader& header,
                                       absl::string_view what) {
  const std::string where = absl::StrCat(what, " index");
  ByteReader r(raw, where);
  BsIndex ix;
  ix.version_major = header.version_major;
  ix.version_minor = header.version_minor;
  ix.flags = header.flags;
  ix.stored_size = header.file_size;
  ix.index_offset = header.index_offset;
  ix.index_stored_size = header.index_stored_size;
  ASSIGN_OR_RETURN(ix.writer, r.String("writer", 4096));
  ASSIGN_OR_RETURN(uint8_t mode, r.U8("mode"));
  if (mode > static_cast<uint8_t>(Mode::kInference)) return Corrupt(where, "unknown mode");
  ix.mode = static_cast<Mode>(mode);
  ASSIGN_OR_RETURN(ix.original_size, r.U64("original size"));
  ASSIGN_OR_RETURN(auto ohash, r.Bytes(16, "original hash"));
  std::copy(ohash.begin(), ohash.end(), ix.original_hash.begin());
  ASSIGN_OR_RETURN(ix.base_name, r.String("base name", 4096));
  ASSIGN_OR_RETURN(uint64_t prefix_len, r.U64("safetensors header length"));
  if (prefix_len < 8 || prefix_len > kMaxSafetensorsHeader + 8 || prefix_len > ix.original_size) {
    return Corrupt(where, "safetensors header length out of range");
  }
  ASSIGN_OR_RETURN(auto prefix, r.Bytes(prefix_len, "safetensors header"));
  ix.safetensors_prefix.assign(prefix.begin(), prefix.end());
  {
    auto st = ParseSafetensorsHeader(prefix, ix.original_size, absl::StrCat(what, " (stored safetensors header)"));
    if (!st.ok()) return Corrupt(where, st.status().message());
    ix.safetensors = *std::move(st);
  }
  ASSIGN_OR_RETURN(uint32_t num_groups, r.U32("group count"));
  ASSIGN_OR_RETURN(uint32_t num_tensors, r.U32("tensor count"));
  if (num_tensors != ix.safetensors.tensors.size()) {
    return Corrupt(where, "tensor count differs from the stored safetensors header");
  }
  if (num_groups > num_tensors) return Corrupt(where, "more groups than tensors");
  ix.tensors.resize(num_tensors);
  for (uint32_t t = 0; t < num_tensors; ++t) {
    BsTensor& bt = ix.tensors[t];
    bt.info = ix.safetensors.tensors[t];
    ASSIGN_OR_RETURN(bt.group, r.U32("tensor group"));
    ASSIGN_OR_RETURN(bt.blob_offset, r.U64("blob offset"));
    ASSIGN_OR_RETURN(bt.blob_size, r.U64("blob size"));
    ASSIGN_OR_RETURN(auto h, r.Bytes(16, "tensor hash"));
    std::copy(h.begin(), h.end(), bt.hash.begin());
    ASSIGN_OR_RETURN(bt.flags, r.U8("tensor flags"));
    if ((bt.flags & ~kTensorFlagDelta) != 0) return Corrupt(where, "unknown tensor flags");
    if (bt.is_delta()) {
      if (!ix.is_delta()) return Corrupt(where, "delta tensor in a non-delta file");
      ASSIGN_OR_RETURN(auto bh, r.Bytes(16, "base hash"));
      std::copy(bh.begin(), bh.end(), bt.base_hash.begin());
    }
    if (bt.group >= num_groups) return Corrupt(where, absl::StrCat("tensor ", bt.info.name, ": bad group"));
  }
  ix.groups.resize(num_groups);
  // Aligned files: groups on 4 KiB boundaries from 4096, in file order.
  // Packed files (§1.1): back to back from offset 64, the index right after.
  const bool packed = (header.flags & kFlagPacked) != 0;
  uint64_t prev_end = packed ? kFileHeaderSize : kGroupAlignment;
  for (uint32_t g = 0; g < num_groups; ++g) {
    BsGroup& grp = ix.groups[g];
    ASSIGN_OR_RETURN(grp.name, r.String("group name", 4096));
    ASSIGN_OR_RETURN(grp.layer, r.I64("group layer"));
    ASSIGN_OR_RETURN(grp.offset, r.U64("group offset"));
    ASSIGN_OR_RETURN(grp.size, r.U64("group size"));
    ASSIGN_OR_RETURN(uint32_t n, r.U32("group tensor count"));
    if (n > num_tensors) return Corrupt(where, "group tensor count out of range");
    if (grp.layer < -1) return Corrupt(where, "bad layer number");
    const bool placed = packed ? grp.offset == prev_end : grp.offset % kGroupAlignment == 0 && grp.offset >= prev_end;
    if (!placed || grp.size > header.index_offset || grp.offset > header.index_offset - grp.size) {
      return Corrupt(where, absl::StrCat("group ", g, " has a bad byte range"));
    }
    prev_end = grp.offset + grp.size;
    uint64_t cursor = grp.offset;
    for (uint32_t k = 0; k < n; ++k) {
      ASSIGN_OR_RETURN(uint32_t t, r.U32("group tensor"));
      if (t >= num_tensors || ix.tensors[t].group != g) {
        return Corrupt(where, absl::StrCat("group ", g, " lists a tensor of another group"));
      }
      const BsTensor& bt = ix.tensors[t];
      // Blobs are packed in listed order: this also rules out duplicates.
      if (bt.blob_offset != cursor || bt.blob_size > grp.offset + grp.size - cursor) {
        return Corrupt(where, absl::StrCat("tensor ", bt.info.name, ": blob outside its group"));
      }
      cursor += bt.blob_size;
      grp.tensors.push_back(t);
    }
    if (cursor != grp.offset + grp.size) return Corrupt(where, absl::StrCat("group ", g, " size mismatch"));
  }
  if (packed && prev_end != header.index_offset) {
    return Corrupt(where, "packed file: the index does not follow the last group");
  }
  uint64_t listed = 0;
  for (const auto& g : ix.groups) listed += g.tensors.size();
  if (listed != num_tensors) return Corrupt(where, "some tensors belong to no group");
  if (ix.has_checksums()) {
    // docs/FORMAT.md §3.2: device checksums, then group checksums, then the end.
    const uint64_t trailer = 8 * (uint64_t{num_tensors} + num_groups);
    if (r.remaining() < trailer) {
      return Corrupt(where, absl::StrCat("format 1.1 checksum trailer is truncated (", r.remaining(),
                                         " of ", trailer, " bytes)"));
    }
    for (BsTensor& bt : ix.tensors) {
      ASSIGN_OR_RETURN(bt.device_checksum, r.U64("device checksum"));
      bt.has_device_checksum = true;
    }
    for (BsGroup& grp : ix.groups) {
      ASSIGN_OR_RETURN(grp.checksum, r.U64("group checksum"));
      grp.has_checksum = true;
    }
  }
  if (!r.done()) return Corrupt(where, "trailing bytes");
  return ix;
}
}  // namespace

absl::StatusOr<BsIndex> ParseIndex(absl::Span<const uint8_t> raw, const FileHeader& header,
                                   absl::string_view what) {
  return NoThrowAlloc(what, [&] { return ParseIndexImpl(raw, header, what); });
}

BsReader::BsReader(std::unique_ptr<ByteSource> source, BsIndex index)
    : source_(std::move(source)), index_(std::move(index)), name_(source_->name()) {}

absl::StatusOr<std::unique_ptr<BsReader>> BsReader::OpenFile(const std::string& path) {
  ASSIGN_OR_RETURN(auto source, OpenFileSource(path));
  return Open(std::move(source));
}

absl::StatusOr<std::unique_ptr<BsReader>> BsReader::Open(std::unique_ptr<ByteSource> source) {
  return NoThrowAlloc("opening a .bs", [&] { return OpenImpl(std::move(source)); });
}

absl::StatusOr<std::unique_ptr<BsReader>> BsReader::OpenImpl(std::unique_ptr<ByteSource> source) {
  const std::string what = source->name();
  if (source->size() < kFileHeaderSize) return Corrupt(what, "too short to be a .bs file");
  // The header and its padding in one read (the file is at least 4096 bytes
  // once the header checks pass: index_offset >= 4096).
  std::vector<uint8_t> head(std::min<uint64_t>(source->size(), kGroupAlignment));
  RETURN_IF_ERROR(source->ReadAt(0, absl::MakeSpan(head)));
  ASSIGN_OR_RETURN(FileHeader header,
                   ParseFileHeader(absl::MakeConstSpan(head.data(), kFileHeaderSize), what));
  if (header.file_size != source->size()) {
    return Corrupt(what, absl::StrCat("file is ", source->size(), " bytes, header says ",
                                      header.file_size, " (truncated or appended to)"));
  }
  if ((header.flags & kFlagPacked) == 0) {
    // Aligned files have 4 KiB of header and padding (index_offset >= 4096);
    // packed files have no padding (their groups start at 64).
    if (head.size() != kGroupAlignment) return Corrupt(what, "index lies outside the file");  // unreachable
    RETURN_IF_ERROR(CheckZeroPadding(what, absl::MakeConstSpan(head).subspan(kFileHeaderSize), kFileHeaderSize,
                                     "after the header"));
  }
  ASSIGN_OR_RETURN(auto stored, ReadRange(*source, header.index_offset, header.index_stored_size));
  if (HashBytes64(stored) != header.index_checksum) return Corrupt(what, "index checksum mismatch");
  // The zstd frame must be one frame filling the stored bytes and declaring
  // exactly index_raw_size: checked before the output buffer is allocated.
  const unsigned long long content = ZSTD_getFrameContentSize(stored.data(), stored.size());
  if (content == ZSTD_CONTENTSIZE_ERROR || content == ZSTD_CONTENTSIZE_UNKNOWN ||
      content != header.index_raw_size ||
      ZSTD_findFrameCompressedSize(stored.data(), stored.size()) != stored.size()) {
    return Corrupt(what, "index is not one zstd frame of the size the header declares");
  }
  ASSIGN_OR_RETURN(std::vector<uint8_t> raw, AllocateBytes(header.index_raw_size, absl::StrCat(what, " index")));
  const size_t got = ZSTD_decompress(raw.data(), raw.size(), stored.data(), stored.size());
  if (ZSTD_isError(got) || got != raw.size()) return Corrupt(what, "index does not decompress");
  ASSIGN_OR_RETURN(BsIndex index, ParseIndex(raw, header, what));
  return std::unique_ptr<BsReader>(new BsReader(std::move(source), std::move(index)));
}

absl::StatusOr<std::vector<uint8_t>> BsReader::ReadGroup(uint32_t group) const {
  if (group >= index_.groups.size()) {
    return absl::OutOfRangeError(absl::StrCat(name_, ": no group ", group));
  }
  const BsGroup& g = index_.groups[group];
  return ReadRange(*source_, g.offset, g.size);
}

absl::Status BsReader::CheckGroup(uint32_t group, absl::Span<const uint8_t> bytes) const {
  if (group >= index_.groups.size()) {
    return absl::OutOfRangeError(absl::StrCat(name_, ": no group ", group));
  }
  const BsGroup& g = index_.groups[group];
  if (bytes.size() != g.size) {
    return absl::InvalidArgumentError(absl::StrCat(name_, ": group ", group, " bytes have the wrong size (",
                                                   bytes.size(), ", the index says ", g.size, ")"));
  }
  if (!g.has_checksum) return absl::OkStatus();
  return HashBytes64(bytes) == g.checksum ? absl::OkStatus() : GroupMismatch(group);
}

absl::Status BsReader::GroupMismatch(uint32_t group) const {
  return Corrupt(name_, absl::StrCat("group ", group, " ('", EscapeForLog(index_.groups[group].name),
                                     "') failed its group checksum (stored bytes damaged)"));
}

absl::Status BsReader::CheckStoredGroup(uint32_t group) const {
  if (group >= index_.groups.size()) {
    return absl::OutOfRangeError(absl::StrCat(name_, ": no group ", group));
  }
  const BsGroup& g = index_.groups[group];
  if (!g.has_checksum) return absl::OkStatus();
  return NoThrowAlloc(name_, [&]() -> absl::Status {
    constexpr uint64_t kPiece = 8ull << 20;
    std::vector<uint8_t> buf(std::min(g.size, kPiece));
    StreamingHash64 hash;
    for (uint64_t off = 0; off < g.size; off += buf.size()) {
      const uint64_t n = std::min<uint64_t>(buf.size(), g.size - off);
      RETURN_IF_ERROR(source_->ReadAt(g.offset + off, absl::MakeSpan(buf.data(), n)));
      hash.Update(absl::MakeConstSpan(buf.data(), n));
    }
    return hash.Finish() == g.checksum ? absl::OkStatus() : GroupMismatch(group);
  });
}

absl::Status BsReader::CheckPadding() const {
  return NoThrowAlloc(name_, [&]() -> absl::Status {
    constexpr uint64_t kPiece = 1ull << 20;
    std::vector<uint8_t> buf;
    auto check = [&](uint64_t begin, uint64_t end, absl::string_view region) -> absl::Status {
      for (uint64_t off = begin; off < end;) {
        const uint64_t n = std::min(kPiece, end - off);
        if (buf.size() < n) buf.resize(std::min(kPiece, std::max<uint64_t>(n, 4 * buf.size())));
        RETURN_IF_ERROR(source_->ReadAt(off, absl::MakeSpan(buf.data(), n)));
        RETURN_IF_ERROR(CheckZeroPadding(name_, absl::MakeConstSpan(buf.data(), n), off, region));
        off += n;
      }
      return absl::OkStatus();
    };
    // ParseIndex checked that groups lie in file order in [4096, index_offset)
    // (packed files: back to back from 64 up to the index, so no gap).
    uint64_t cursor = kFileHeaderSize;
    std::string region = "after the header";
    for (uint32_t g = 0; g < index_.groups.size(); ++g) {
      const BsGroup& grp = index_.groups[g];
      RETURN_IF_ERROR(check(cursor, grp.offset, region));
      cursor = grp.offset + grp.size;
      region = absl::StrCat("after group ", g, " ('", EscapeForLog(grp.name), "')");
    }
    return check(cursor, index_.index_offset, absl::StrCat(region, ", before the index"));
  });
}

absl::Status BsReader::CheckDeviceChecksum(uint32_t t, absl::Span<const uint8_t> bytes) const {
  if (t >= index_.tensors.size()) return absl::OutOfRangeError(absl::StrCat(name_, ": no tensor ", t));
  const BsTensor& bt = index_.tensors[t];
  if (bytes.size() != bt.info.size()) {
    return absl::InvalidArgumentError(absl::StrCat(name_, ": tensor '", EscapeForLog(bt.info.name),
                                                   "' bytes have the wrong size"));
  }
  if (!bt.has_device_checksum) return absl::OkStatus();
  if (DeviceChecksum(bytes.data(), bytes.size()) != bt.device_checksum) {
    return Corrupt(name_, absl::StrCat("tensor '", EscapeForLog(bt.info.name), "' failed its device checksum"));
  }
  return absl::OkStatus();
}

absl::Status BsReader::DecodeBlob(const BsTensor& bt, absl::Span<const uint8_t> blob,
                                  absl::Span<uint8_t> out, const DecodeOptions& options,
                                  absl::Span<const uint8_t> base) const {
  return NoThrowAlloc(name_, [&] { return DecodeBlobImpl(bt, blob, out, options, base); });
}

absl::Status BsReader::DecodeBlobImpl(const BsTensor& bt, absl::Span<const uint8_t> blob,
                                      absl::Span<uint8_t> out, const DecodeOptions& options,
                                      absl::Span<const uint8_t> base) const {
  if (out.size() != bt.info.size()) {
    return absl::InvalidArgumentError(absl::StrCat(name_, ": output buffer for '", bt.info.name,
                                                   "' has the wrong size"));
  }
  if (bt.is_delta()) {
    if (base.size() != out.size()) {
      return absl::FailedPreconditionError(absl::StrCat(
          name_, ": tensor '", bt.info.name, "' is stored as a delta and needs its base tensor (--base)"));
    }
    if (HashBytes128(base) != bt.base_hash) {
      return absl::FailedPreconditionError(absl::StrCat(
          name_, ": base tensor '", bt.info.name,
          "' does not match the base this file was made against (wrong --base?)"));
    }
  }
  absl::Status st = DecodeTensorBlob(blob, out, options);
  if (!st.ok()) return Corrupt(name_, absl::StrCat("tensor '", bt.info.name, "': ", st.message()));
  if (bt.is_delta()) {
    for (size_t i = 0; i < out.size(); ++i) out[i] ^= base[i];
  }
  if (HashBytes128(out) != bt.hash) {
    return Corrupt(name_, absl::StrCat("tensor '", bt.info.name, "' failed its hash check"));
  }
  return absl::OkStatus();
}

absl::Status BsReader::DecodeTensor(uint32_t t, absl::Span<const uint8_t> group_bytes,
                                    absl::Span<uint8_t> out, const DecodeOptions& options,
                                    absl::Span<const uint8_t> base) const {
  if (t >= index_.tensors.size()) return absl::OutOfRangeError(absl::StrCat(name_, ": no tensor ", t));
  const BsTensor& bt = index_.tensors[t];
  const BsGroup& g = index_.groups[bt.group];
  if (group_bytes.size() != g.size) {
    return absl::InvalidArgumentError(absl::StrCat(name_, ": group bytes have the wrong size"));
  }
  return DecodeBlob(bt, group_bytes.subspan(bt.blob_offset - g.offset, bt.blob_size), out, options, base);
}

absl::StatusOr<std::vector<uint8_t>> BsReader::ReadTensor(uint32_t t, const DecodeOptions& options,
                                                          const BaseTensorFetcher& base) const {
  return NoThrowAlloc(name_, [&] { return ReadTensorImpl(t, options, base); });
}

absl::StatusOr<std::vector<uint8_t>> BsReader::ReadTensorImpl(uint32_t t, const DecodeOptions& options,
                                                              const BaseTensorFetcher& base) const {
  if (t >= index_.tensors.size()) return absl::OutOfRangeError(absl::StrCat(name_, ": no tensor ", t));
  const BsTensor& bt = index_.tensors[t];
  ASSIGN_OR_RETURN(auto blob, ReadRange(*source_, bt.blob_offset, bt.blob_size));
  std::vector<uint8_t> base_bytes;
  if (bt.is_delta() && base) {
    ASSIGN_OR_RETURN(base_bytes, base(bt));
  }
  ASSIGN_OR_RETURN(std::vector<uint8_t> out,
                   AllocateBytes(bt.info.size(), absl::StrCat(name_, ": tensor '", bt.info.name, "'")));
  RETURN_IF_ERROR(DecodeBlob(bt, blob, absl::MakeSpan(out), options, base_bytes));
  return out;
}

namespace {

// Checks one job of a batch before any decoding: its tensor, buffer sizes,
// and (delta tensors) the base against the stored base hash.
absl::Status CheckDecodeJob(const TensorDecodeJob& job) {
  if (job.reader == nullptr) return absl::InvalidArgumentError("tensor decode job without a reader");
  const BsReader& r = *job.reader;
  const BsIndex& ix = r.index();
  if (job.tensor >= ix.tensors.size()) {
    return absl::OutOfRangeError(absl::StrCat(r.name(), ": no tensor ", job.tensor));
  }
  const BsTensor& bt = ix.tensors[job.tensor];
  if (job.group_bytes.size() != ix.groups[bt.group].size) {
    return absl::InvalidArgumentError(absl::StrCat(r.name(), ": group bytes have the wrong size"));
  }
  if (job.out.size() != bt.info.size()) {
    return absl::InvalidArgumentError(absl::StrCat(r.name(), ": output buffer for '",
                                                   EscapeForLog(bt.info.name), "' has the wrong size"));
  }
  if (bt.is_delta()) {
    if (job.base.size() != job.out.size()) {
      return absl::FailedPreconditionError(
          absl::StrCat(r.name(), ": tensor '", EscapeForLog(bt.info.name),
                       "' is stored as a delta and needs its base tensor (--base)"));
    }
    if (HashBytes128(job.base) != bt.base_hash) {
      return absl::FailedPreconditionError(
          absl::StrCat(r.name(), ": base tensor '", EscapeForLog(bt.info.name),
                       "' does not match the base this file was made against (wrong --base?)"));
    }
  }
  return absl::OkStatus();
}

absl::Status RunJobs(ThreadPool* pool, size_t n, const std::function<absl::Status(size_t)>& fn) {
  if (pool != nullptr && n > 1) return pool->ParallelFor(n, fn);
  for (size_t i = 0; i < n; ++i) RETURN_IF_ERROR(fn(i));
  return absl::OkStatus();
}

absl::Status DecodeTensorsImpl(absl::Span<const TensorDecodeJob> jobs, const DecodeOptions& options) {
  RETURN_IF_ERROR(RunJobs(options.pool, jobs.size(), [&](size_t j) { return CheckDecodeJob(jobs[j]); }));
  std::vector<BlobDecodeJob> blobs(jobs.size());
  for (size_t j = 0; j < jobs.size(); ++j) {
    const TensorDecodeJob& job = jobs[j];
    const BsIndex& ix = job.reader->index();
    const BsTensor& bt = ix.tensors[job.tensor];
    blobs[j].blob = job.group_bytes.subspan(bt.blob_offset - ix.groups[bt.group].offset, bt.blob_size);
    blobs[j].out = job.out;
    if (bt.is_delta()) blobs[j].xor_base = job.base;
  }
  size_t failed = 0;
  absl::Status st = DecodeBlobBatch(blobs, options, &failed);
  if (!st.ok()) {
    const TensorDecodeJob& job = jobs[failed];
    const BsTensor& bt = job.reader->index().tensors[job.tensor];
    if (st.code() == absl::StatusCode::kResourceExhausted) {
      return absl::ResourceExhaustedError(
          absl::StrCat(job.reader->name(), ": tensor '", EscapeForLog(bt.info.name), "': ", st.message()));
    }
    return Corrupt(job.reader->name(), absl::StrCat("tensor '", EscapeForLog(bt.info.name), "': ", st.message()));
  }
  return RunJobs(options.pool, jobs.size(), [&](size_t j) -> absl::Status {
    const TensorDecodeJob& job = jobs[j];
    const BsTensor& bt = job.reader->index().tensors[job.tensor];
    if (HashBytes128(job.out) != bt.hash) {
      return Corrupt(job.reader->name(),
                     absl::StrCat("tensor '", EscapeForLog(bt.info.name), "' failed its hash check"));
    }
    return absl::OkStatus();
  });
}

}  // namespace

absl::Status DecodeTensors(absl::Span<const TensorDecodeJob> jobs, const DecodeOptions& options) {
  return NoThrowAlloc("tensor batch", [&] { return DecodeTensorsImpl(jobs, options); });
}

}  // namespace bigsmall
