// A ByteSource wrapper that injects faults, for tests (and for the daemon's
// hidden --debug-fault flag): short reads, EIO at an offset, truncation,
// stalls and flipped bytes.
#ifndef BIGSMALL_DAEMON_FAULT_SOURCE_H_
#define BIGSMALL_DAEMON_FAULT_SOURCE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "codec/byte_source.h"
#include "daemon/io_uring_source.h"

namespace bigsmall::daemon {

struct FaultSpec {
  // Serve every read as several inner reads of at most this many bytes
  // (0: off). Exercises callers that split and reassemble.
  uint64_t short_read_bytes = 0;
  // Any read that touches [eio_offset, eio_offset + 1) fails with EIO
  // (kDataLoss "Input/output error"), after eio_after reads have passed.
  std::optional<uint64_t> eio_offset;
  uint64_t eio_after = 0;
  // The data ends here: reads past it fail as a truncated file does.
  std::optional<uint64_t> truncate_at;
  // Sleep this long before each read.
  uint32_t stall_ms = 0;
  // XOR this byte with 0xff in every read that covers it.
  std::optional<uint64_t> flip_offset;
  // io_uring faults inside an IoUringSource (not this wrapper): see
  // IoOptions::UringFaults; applied with ApplyUringFaults.
  IoOptions::UringFaults uring;
};

// Parses "short=4096,eio=123,eio_after=2,truncate=1000,stall_ms=5,flip=77",
// and "uring_submit_fail=N,uring_short_submit=N,uring_wait_fail=N,
// uring_wait_fail_count=K" (io_uring calls counted from 1 per source).
absl::StatusOr<FaultSpec> ParseFaultSpec(const std::string& text);

// Copies the io_uring faults of `spec` into `io` (for IoUringSource::Open).
void ApplyUringFaults(const FaultSpec& spec, IoOptions* io);

class FaultInjectingSource final : public ByteSource {
 public:
  FaultInjectingSource(std::unique_ptr<ByteSource> inner, FaultSpec spec);
  uint64_t size() const override { return inner_->size(); }
  absl::Status ReadAt(uint64_t offset, absl::Span<uint8_t> out) override;
  // The same faults, then the inner source's ReadBulk (the load pipeline's
  // direct reads into staging).
  absl::Status ReadBulk(uint64_t offset, absl::Span<uint8_t> out) override;
  std::string name() const override { return inner_->name(); }
  uint64_t reads() const { return reads_.load(); }

 private:
  absl::Status Read(uint64_t offset, absl::Span<uint8_t> out, bool bulk);
  std::unique_ptr<ByteSource> inner_;
  FaultSpec spec_;
  std::atomic<uint64_t> reads_{0};
};

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_FAULT_SOURCE_H_
