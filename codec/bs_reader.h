// Reading a .bs file: header, checksummed index, layer groups, tensors.
// This is the decode side the daemon, the client tools and the CLI share.
#ifndef BIGSMALL_CODEC_BS_READER_H_
#define BIGSMALL_CODEC_BS_READER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "codec/byte_source.h"
#include "codec/format.h"
#include "codec/hash.h"
#include "codec/safetensors.h"
#include "codec/tensor_codec.h"

namespace bigsmall {

struct BsTensor {
  SafetensorsTensor info;  // name, dtype, shape, range in the original data section
  uint32_t group = 0;
  uint64_t blob_offset = 0;  // absolute offset of the encoded blob in the .bs file
  uint64_t blob_size = 0;
  Hash128 hash{};  // XXH3-128 of the original tensor bytes
  uint8_t flags = 0;
  Hash128 base_hash{};  // with kTensorFlagDelta: hash of the base tensor's bytes
  // Format 1.1: the device checksum of the original tensor bytes
  // (codec/device_checksum.h), checked by the GPU decode path.
  bool has_device_checksum = false;
  uint64_t device_checksum = 0;
  bool is_delta() const { return (flags & kTensorFlagDelta) != 0; }
};

struct BsGroup {
  std::string name;    // e.g. "model.layers.3"; "" for the non-layer group
  int64_t layer = -1;  // layer number, or -1 for non-layer tensors
  uint64_t offset = 0;  // 4 KiB-aligned absolute offset in the .bs file
  uint64_t size = 0;    // bytes, unpadded
  std::vector<uint32_t> tensors;  // indexes into BsIndex::tensors, blob order
  // Format 1.1: XXH3-64 of the group's stored bytes [offset, offset + size),
  // checked right after the group is read (BsReader::CheckGroup).
  bool has_checksum = false;
  uint64_t checksum = 0;
};

struct BsIndex {
  uint16_t version_major = 0;
  uint16_t version_minor = 0;
  uint32_t flags = 0;
  Mode mode = Mode::kBalanced;
  std::string writer;  // software that wrote the file
  // The original safetensors file: its exact header bytes, size and hash.
  std::vector<uint8_t> safetensors_prefix;
  SafetensorsHeader safetensors;
  uint64_t original_size = 0;
  Hash128 original_hash{};
  // Delta files: the base's name as given at compress time (informational;
  // the per-tensor base hashes are what identify the base).
  std::string base_name;
  std::vector<BsGroup> groups;    // non-layer group (if any) first, then layers ascending
  std::vector<BsTensor> tensors;  // in safetensors data order
  bool is_delta() const { return (flags & kFlagDelta) != 0; }
  // Format 1.2 packed layout: no padding, groups back to back from offset 64.
  bool is_packed() const { return (flags & kFlagPacked) != 0; }
  // Format 1.1 and later: every tensor has a device checksum and every group
  // a group checksum (docs/FORMAT.md §3.2).
  bool has_checksums() const { return version_minor >= kFormatVersionMinorChecksums; }
  uint64_t stored_size = 0;  // size of the .bs file
  uint64_t index_offset = 0;
  uint64_t index_stored_size = 0;
};

// Parses the fixed 64-byte header; returns (index offset, stored size, raw size, checksum).
struct FileHeader {
  uint16_t version_major = 0;
  uint16_t version_minor = 0;
  uint32_t flags = 0;
  uint64_t index_offset = 0;
  uint64_t index_stored_size = 0;
  uint64_t index_raw_size = 0;
  uint64_t index_checksum = 0;
  uint64_t file_size = 0;
};
// Errors are DATA_LOSS (docs/FORMAT.md "Errors"); a bad magic carries
// ErrorKind::kNotBsFile, an unknown major or minor version (this build reads
// 1.0 and 1.1) kUnsupportedVersion.
absl::StatusOr<FileHeader> ParseFileHeader(absl::Span<const uint8_t> bytes, absl::string_view what);
// The largest index_raw_size a decoder accepts for an index of
// `index_stored_size` bytes (docs/FORMAT.md §2): kMaxIndexSize, and at most
// kMaxIndexRatio times the stored size (but always kIndexRatioFloor), so a
// small file cannot make a reader allocate and inflate a huge index.
uint64_t MaxIndexRawSize(uint64_t index_stored_size);
// Parses and validates a decompressed index against the header.
absl::StatusOr<BsIndex> ParseIndex(absl::Span<const uint8_t> raw, const FileHeader& header,
                                   absl::string_view what);

// Resolves base tensors for delta files: returns the bytes of the base
// tensor with that name (the reader checks them against the stored hash).
using BaseTensorFetcher =
    std::function<absl::StatusOr<std::vector<uint8_t>>(const BsTensor& tensor)>;

class BsReader;

// One tensor of a batch decode (DecodeTensors).
struct TensorDecodeJob {
  const BsReader* reader = nullptr;
  uint32_t tensor = 0;
  absl::Span<const uint8_t> group_bytes;  // the tensor's group, as ReadGroup returns it
  absl::Span<uint8_t> out;                // exactly the tensor's size
  absl::Span<const uint8_t> base;         // delta tensors: the base tensor's bytes
};

// Decodes and verifies a batch of tensors (from one or several readers, e.g.
// one layer's tensors across shards): every chunk of every tensor on one work
// queue (options.pool), delta tensors XORed with their base chunk by chunk,
// then every tensor's XXH3-128 checked (in parallel). The same checks and
// errors as BsReader::DecodeTensor; the first failing job's error is returned.
absl::Status DecodeTensors(absl::Span<const TensorDecodeJob> jobs, const DecodeOptions& options = {});

class BsReader {
 public:
  // Reads and checks the header, the header padding (zero, docs/FORMAT.md
  // §1) and the index. Errors name the source.
  static absl::StatusOr<std::unique_ptr<BsReader>> Open(std::unique_ptr<ByteSource> source);
  static absl::StatusOr<std::unique_ptr<BsReader>> OpenFile(const std::string& path);

  const BsIndex& index() const { return index_; }
  ByteSource& source() { return *source_; }
  const std::string& name() const { return name_; }

  // Reads one group's bytes (one contiguous read). It does not check them:
  // callers that decode from the group call CheckGroup first.
  absl::StatusOr<std::vector<uint8_t>> ReadGroup(uint32_t group) const;

  // Checks `bytes` (the group's stored bytes, as ReadGroup returns them)
  // against the group's 1.1 checksum (docs/FORMAT.md §3.2): DATA_LOSS naming
  // the file and the group on a mismatch or a wrong size; OK for 1.0 files,
  // which have no group checksums (their tensors' hashes still catch damage).
  absl::Status CheckGroup(uint32_t group, absl::Span<const uint8_t> bytes) const;
  // The same check reading the group from the source in bounded pieces
  // (for `bigsmall verify`, which decodes tensor by tensor).
  absl::Status CheckStoredGroup(uint32_t group) const;
  // Checks that every padding byte of the file is zero (docs/FORMAT.md §1):
  // [64, first group), between groups, and between the last group and the
  // index, read in bounded pieces (`bigsmall verify`; Open already checked
  // the header padding [64, 4096)). DATA_LOSS naming the file and the offset
  // of the first non-zero byte. 1.0 and 1.1 files alike.
  absl::Status CheckPadding() const;

  // Checks `bytes` (tensor `t`'s rebuilt original bytes) against its 1.1
  // device checksum (docs/FORMAT.md §3.1): DATA_LOSS naming the file and
  // tensor on a mismatch; OK for 1.0 files. `bigsmall verify` uses it; a GPU
  // decoder compares its own on-device sum with BsTensor::device_checksum.
  absl::Status CheckDeviceChecksum(uint32_t t, absl::Span<const uint8_t> bytes) const;

  // Decodes tensor `t` from `group_bytes` (as returned by ReadGroup for its
  // group) into `out` (exactly the tensor's size) and verifies its hash.
  // Delta tensors need `base` (the base tensor's bytes, checked against the
  // stored base hash). A mismatch is kDataLoss naming the tensor.
  absl::Status DecodeTensor(uint32_t t, absl::Span<const uint8_t> group_bytes,
                            absl::Span<uint8_t> out, const DecodeOptions& options = {},
                            absl::Span<const uint8_t> base = {}) const;

  // Reads and decodes a single tensor (one read of its blob).
  absl::StatusOr<std::vector<uint8_t>> ReadTensor(uint32_t t, const DecodeOptions& options = {},
                                                  const BaseTensorFetcher& base = nullptr) const;

 private:
  BsReader(std::unique_ptr<ByteSource> source, BsIndex index);
  // The public calls run these and turn an allocation failure into
  // RESOURCE_EXHAUSTED (nothing on the decode path throws).
  static absl::StatusOr<std::unique_ptr<BsReader>> OpenImpl(std::unique_ptr<ByteSource> source);
  absl::StatusOr<std::vector<uint8_t>> ReadTensorImpl(uint32_t t, const DecodeOptions& options,
                                                      const BaseTensorFetcher& base) const;
  absl::Status GroupMismatch(uint32_t group) const;
  absl::Status DecodeBlobImpl(const BsTensor& tensor, absl::Span<const uint8_t> blob,
                              absl::Span<uint8_t> out, const DecodeOptions& options,
                              absl::Span<const uint8_t> base) const;
  absl::Status DecodeBlob(const BsTensor& tensor, absl::Span<const uint8_t> blob,
                          absl::Span<uint8_t> out, const DecodeOptions& options,
                          absl::Span<const uint8_t> base) const;
  std::unique_ptr<ByteSource> source_;
  BsIndex index_;
  std::string name_;
};

}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_BS_READER_H_
