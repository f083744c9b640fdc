// A ByteSource for local files read with io_uring: large reads are split
// into chunks with several in flight at once, 4 KiB-aligned parts go through
// an O_DIRECT descriptor when the filesystem allows it, and everything falls
// back cleanly to pread(2) where io_uring is refused (seccomp, old kernels,
// io_uring_disabled) or when the caller forces it.
#ifndef BIGSMALL_DAEMON_IO_URING_SOURCE_H_
#define BIGSMALL_DAEMON_IO_URING_SOURCE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "codec/byte_source.h"

namespace bigsmall::daemon {

enum class IoBackend { kAuto, kIoUring, kPread };
const char* IoBackendName(IoBackend backend);
absl::StatusOr<IoBackend> ParseIoBackend(const std::string& name);

struct IoOptions {
  IoBackend backend = IoBackend::kAuto;  // kAuto: io_uring when the kernel allows it
  bool direct = true;                    // O_DIRECT for aligned parts where supported
  uint32_t queue_depth = 8;              // reads in flight per ReadAt
  uint32_t chunk_bytes = 1 << 20;        // bytes per submitted read
  // Tests only: cap every read the kernel is asked for, to exercise the
  // short-read path (0: no cap).
  uint32_t max_read_bytes = 0;
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
  std::string name() const override { return path_; }

  IoBackend backend() const { return backend_; }
  bool direct() const { return direct_fd_ >= 0; }
  uint64_t bytes_read() const { return bytes_read_.load(std::memory_order_relaxed); }

 private:
  struct Ring;
  IoUringSource(std::string path, int fd, int direct_fd, uint64_t size, IoOptions options,
                IoBackend backend);
  // One contiguous range on one descriptor.
  absl::Status ReadPread(int fd, uint64_t offset, absl::Span<uint8_t> out);
  absl::Status ReadUring(int fd, uint64_t offset, absl::Span<uint8_t> out);
  std::unique_ptr<Ring> AcquireRing();
  void ReturnRing(std::unique_ptr<Ring> ring);

  std::string path_;
  std::string log_name_;  // path_ escaped for messages
  int fd_ = -1;
  int direct_fd_ = -1;
  uint64_t size_ = 0;
  IoOptions options_;
  IoBackend backend_;
  std::atomic<uint64_t> bytes_read_{0};
  std::mutex rings_mu_;
  std::vector<std::unique_ptr<Ring>> free_rings_;
};

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_IO_URING_SOURCE_H_
