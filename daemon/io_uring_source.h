// A ByteSource for local files read with io_uring: large reads are split
// into chunks with several in flight at once, 4 KiB-aligned parts go through
// an O_DIRECT descriptor when the filesystem allows it, and everything falls
// back cleanly to pread(2) where io_uring is refused (seccomp, old kernels,
// io_uring_disabled) or when the caller forces it.
//
// Buffer safety: io_uring reads land in bounce memory owned by the ring
// (queue_depth x chunk_bytes, allocated as used; a source keeps up to 8 idle
// rings, so at most 8 x queue_depth x chunk_bytes idle) and are copied to the
// caller's buffer once complete. So when a ring breaks (a failed wait with
// reads in flight that cannot be drained), the kernel can only ever write
// memory that is quarantined with the ring, never the caller's buffer, which
// the caller may free as soon as ReadAt returns, whatever it returned. The
// copy costs far less than the read it follows.
//
// ReadBulk (the load pipeline's read of a layer group into its staging
// buffer) reads straight into the caller's buffer instead, with no bounce
// copy: the range is split into split_bytes reads (plain IORING_OP_READ
// into the caller's memory; staging buffers are not registered as fixed
// buffers), at most queue_depth in flight, so the kernel reads one large
// group in parallel. Its buffer safety is the other way round: ReadBulk
// never returns while any read it submitted is still in flight. On an
// error (a failed read, end of file, a failed submit or wait, a wait past
// wait_timeout_ms) it submits an IORING_OP_ASYNC_CANCEL for every read in
// flight, when the ring's submission queue is clean, and then reaps every
// completion, for as long as that takes (drain_timeout_ms does not apply;
// if io_uring_enter itself keeps failing, the completion queue is polled
// in shared memory), so the caller may free its buffer as soon as ReadBulk
// returns. Short reads are continued; end of file inside the range is
// kDataLoss, as with ReadAt. With pread (refused io_uring, or --io pread),
// ReadBulk is ReadAt's single-threaded pread loop: the pipeline's
// overlapping layers are its parallelism.
#ifndef BIGSMALL_DAEMON_IO_URING_SOURCE_H_
#define BIGSMALL_DAEMON_IO_URING_SOURCE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "codec/byte_source.h"

struct io_uring_cqe;

namespace bigsmall::daemon {

enum class IoBackend { kAuto, kIoUring, kPread };
const char* IoBackendName(IoBackend backend);
absl::StatusOr<IoBackend> ParseIoBackend(const std::string& name);

struct IoOptions {
  IoBackend backend = IoBackend::kAuto;  // kAuto: io_uring when the kernel allows it
  bool direct = true;                    // O_DIRECT for aligned parts where supported
  uint32_t queue_depth = 8;              // reads in flight per ReadAt
  uint32_t chunk_bytes = 1 << 20;        // bytes per submitted read (ReadAt)
  uint32_t split_bytes = 4 << 20;        // bytes per submitted read (ReadBulk)
  // Tests only: cap every read the kernel is asked for, to exercise the
  // short-read path (0: no cap).
  uint32_t max_read_bytes = 0;
  // How long one wait for an io_uring completion may take before the ring is
  // given up as broken (the read fails kUnavailable), and how long the
  // in-flight reads of a broken ring are then waited for before the ring and
  // its buffers are quarantined (never reused, never freed).
  uint32_t wait_timeout_ms = 60000;
  uint32_t drain_timeout_ms = 5000;
  // Tests only (also reachable through the fault spec, see fault_source.h):
  // io_uring faults, counted over this source's submit and wait calls from 1
  // (0: off).
  struct UringFaults {
    uint32_t submit_fail = 0;   // the Nth submit fails (-EIO); the kernel took none
    uint32_t short_submit = 0;  // the Nth submit: the kernel takes only its first read
    uint32_t wait_fail = 0;     // waits N .. N+wait_fail_count-1 fail (-EIO)
    uint32_t wait_fail_count = 1;
  } uring_faults;
};

// Memory aligned for O_DIRECT (kAlignment), sized in whole bytes.
class AlignedBuffer {
 public:
  static constexpr size_t kAlignment = 4096;
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t size);
  AlignedBuffer(AlignedBuffer&& other) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
  ~AlignedBuffer();
  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  bool ok() const { return data_ != nullptr || size_ == 0; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// True when this process may create an io_uring (probed once).
bool IoUringAvailable();
// OK, or why io_uring is refused here (the probe's error: seccomp, an old
// kernel, io_uring_disabled, memlock), for skips and logs.
absl::Status IoUringStatus();

class IoUringSource final : public ByteSource {
 public:
  // Opens `path`. With kAuto, a refused io_uring falls back to pread;
  // with kIoUring it is an error (kUnavailable).
  // Opens `path` without blocking on a FIFO or device (O_NONBLOCK until the
  // descriptor is known to be a regular file), then as OpenFd.
  static absl::StatusOr<std::unique_ptr<IoUringSource>> Open(const std::string& path,
                                                             const IoOptions& options);
  // Takes ownership of `fd` (closed on every error). It must be a regular
  // file (else kInvalidArgument). The O_DIRECT descriptor is reopened
  // through the descriptor itself (/proc/self/fd/<fd>) and kept only when it
  // is the same inode, never by path, so a path renamed or replaced after
  // the first open cannot substitute another file. Without /proc: buffered
  // only. `name` is used in messages and name().
  static absl::StatusOr<std::unique_ptr<IoUringSource>> OpenFd(int fd, std::string name,
                                                               const IoOptions& options);
  ~IoUringSource() override;

  uint64_t size() const override { return size_; }
  absl::Status ReadAt(uint64_t offset, absl::Span<uint8_t> out) override;
  // Straight into `out`, split_bytes per read, queue_depth in flight;
  // returns only when none of its reads is in flight (see the top).
  absl::Status ReadBulk(uint64_t offset, absl::Span<uint8_t> out) override;
  std::string name() const override { return path_; }

  IoBackend backend() const { return backend_; }
  bool direct() const { return direct_fd_ >= 0; }
  uint64_t bytes_read() const { return bytes_read_.load(std::memory_order_relaxed); }
  // Rings created, and rings given up after a fault: destroyed once their
  // reads were drained, or quarantined (leaked on purpose, with the bounce
  // memory the kernel may still write) when they could not be.
  uint64_t rings_created() const { return rings_created_.load(); }
  uint64_t rings_discarded() const { return rings_discarded_.load(); }
  uint64_t rings_quarantined() const { return rings_quarantined_.load(); }
  // ReadBulk's reads the kernel accepted and whose completion was not yet
  // reaped (0 whenever no ReadBulk is running), and the cancels it sent.
  uint64_t bulk_in_flight() const { return bulk_in_flight_.load(); }
  uint64_t bulk_cancels() const { return bulk_cancels_.load(); }
  // ReadBulk calls that read through io_uring straight into the caller's buffer.
  uint64_t bulk_reads() const { return bulk_reads_.load(); }

 private:
  struct Ring;
  IoUringSource(std::string path, int fd, int direct_fd, uint64_t size, IoOptions options,
                IoBackend backend);
  // One contiguous range on one descriptor.
  absl::Status ReadPread(int fd, uint64_t offset, absl::Span<uint8_t> out);
  absl::Status ReadUring(int fd, uint64_t offset, absl::Span<uint8_t> out);
  absl::Status ReadUringInto(int fd, uint64_t offset, absl::Span<uint8_t> out);
  // ReadAt's and ReadBulk's common frame: bounds, the O_DIRECT part.
  absl::Status ReadRange(uint64_t offset, absl::Span<uint8_t> out, bool bulk);
  absl::StatusOr<std::unique_ptr<Ring>> AcquireRing();
  void ReturnRing(std::unique_ptr<Ring> ring);
  // The io_uring calls, through the test fault seam.
  int Submit(Ring& ring, const std::vector<size_t>& batch,
             const std::function<void(size_t)>& prep);
  int Wait(Ring& ring, ::io_uring_cqe** cqe, uint32_t timeout_ms);
  // A ring after a fault: destroyed when nothing is in flight, else never
  // freed (the kernel may still write its bounce memory).
  void DiscardRing(std::unique_ptr<Ring> ring, size_t in_flight);

  std::string path_;
  std::string log_name_;  // path_ escaped for messages
  int fd_ = -1;
  int direct_fd_ = -1;
  uint64_t size_ = 0;
  IoOptions options_;
  IoBackend backend_;
  std::atomic<uint64_t> bytes_read_{0};
  std::atomic<uint64_t> rings_created_{0};
  std::atomic<uint64_t> rings_discarded_{0};
  std::atomic<uint64_t> rings_quarantined_{0};
  std::atomic<uint64_t> bulk_in_flight_{0};
  std::atomic<uint64_t> bulk_cancels_{0};
  std::atomic<uint64_t> bulk_reads_{0};
  std::atomic<uint32_t> submit_calls_{0};
  std::atomic<uint32_t> wait_calls_{0};
  std::mutex rings_mu_;
  std::vector<std::unique_ptr<Ring>> free_rings_;
};

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_IO_URING_SOURCE_H_
