// Random-access byte sources. Everything that reads a .bs (CLI, daemon,
// tests) goes through this interface, so tests can swap in memory or
// fault-injecting sources and the daemon can plug in io_uring or HTTP.
#ifndef BIGSMALL_CODEC_BYTE_SOURCE_H_
#define BIGSMALL_CODEC_BYTE_SOURCE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace bigsmall {

class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // Total size in bytes.
  virtual uint64_t size() const = 0;
  // Fills `out` with bytes [offset, offset + out.size()). A read past the end
  // is kOutOfRange; I/O failures are kUnavailable (retryable) or kDataLoss.
  // Short reads are retried inside; success means every byte was filled.
  virtual absl::Status ReadAt(uint64_t offset, absl::Span<uint8_t> out) = 0;
  // ReadAt for one large read (a layer group into its staging buffer): a
  // source may read straight into `out`, several parts at once, and returns
  // only when nothing it started can still write `out`. Default: ReadAt.
  virtual absl::Status ReadBulk(uint64_t offset, absl::Span<uint8_t> out) {
    return ReadAt(offset, out);
  }
  // Human-readable name for errors (usually the path).
  virtual std::string name() const = 0;
};

// pread(2)-backed file source.
absl::StatusOr<std::unique_ptr<ByteSource>> OpenFileSource(const std::string& path);

// Owns a copy of the bytes.
std::unique_ptr<ByteSource> MakeMemorySource(std::vector<uint8_t> bytes, std::string name);

// Reads and returns bytes [offset, offset + size) from a source.
absl::StatusOr<std::vector<uint8_t>> ReadRange(ByteSource& source, uint64_t offset, uint64_t size);

}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_BYTE_SOURCE_H_
