#include "daemon/io_uring_source.h"

#include <fcntl.h>
#include <liburing.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "codec/status_macros.h"
#include "codec/status_util.h"

namespace bigsmall::daemon {

const char* IoBackendName(IoBackend backend) {
  switch (backend) {
    case IoBackend::kAuto:
      return "auto";
    case IoBackend::kIoUring:
      return "io_uring";
    case IoBackend::kPread:
      return "pread";
  }
  return "?";
}

absl::StatusOr<IoBackend> ParseIoBackend(const std::string& name) {
  if (name == "auto") return IoBackend::kAuto;
  if (name == "io_uring" || name == "uring") return IoBackend::kIoUring;
  if (name == "pread") return IoBackend::kPread;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown io backend '", name, "' (auto, io_uring, pread)"));
}

AlignedBuffer::AlignedBuffer(size_t size) : size_(size) {
  if (size == 0) return;
  size_t rounded = (size + kAlignment - 1) / kAlignment * kAlignment;
  void* p = nullptr;
  if (posix_memalign(&p, kAlignment, rounded) != 0) {
    size_ = 0;
    return;
  }
  data_ = static_cast<uint8_t*>(p);
}

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    std::free(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

AlignedBuffer::~AlignedBuffer() { std::free(data_); }

struct IoUringSource::Ring {
  io_uring ring;
  uint32_t depth = 0;
  bool initialized = false;
  ~Ring() {
    if (initialized) io_uring_queue_exit(&ring);
  }
};

bool IoUringAvailable() {
  static const bool available = [] {
    io_uring ring;
    if (io_uring_queue_init(4, &ring, 0) < 0) return false;
    io_uring_queue_exit(&ring);
    return true;
  }();
  return available;
}

absl::StatusOr<std::unique_ptr<IoUringSource>> IoUringSource::Open(const std::string& path,
                                                                   const IoOptions& options) {
  // O_NONBLOCK: opening a FIFO with no writer (or some devices) would block
  // forever; O_NOCTTY: a tty never becomes our controlling terminal.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) return ErrnoToStatus(errno, absl::StrCat("open ", EscapeForLog(path)));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return ErrnoToStatus(err, absl::StrCat("stat ", EscapeForLog(path)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(EscapeForLog(path), " is not a regular file"));
  }
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
    int err = errno;
    ::close(fd);
    return ErrnoToStatus(err, absl::StrCat("fcntl ", EscapeForLog(path)));
  }
  return OpenFd(fd, path, options);
}

absl::StatusOr<std::unique_ptr<IoUringSource>> IoUringSource::OpenFd(int fd, std::string name,
                                                                     const IoOptions& options) {
  if (fd < 0) {
    return absl::InvalidArgumentError(absl::StrCat("invalid descriptor for ", EscapeForLog(name)));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return ErrnoToStatus(err, absl::StrCat("stat ", EscapeForLog(name)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(EscapeForLog(name), " is not a regular file"));
  }
  IoBackend backend = options.backend;
  if (backend == IoBackend::kAuto) {
    backend = IoUringAvailable() ? IoBackend::kIoUring : IoBackend::kPread;
  } else if (backend == IoBackend::kIoUring && !IoUringAvailable()) {
    ::close(fd);
    return absl::UnavailableError("io_uring is not available in this process (try --io pread)");
  }
  int direct_fd = -1;
  if (options.direct) {
    // Reopen the open file itself, not the path: /proc/self/fd/N names the
    // inode this descriptor holds even after a rename or replacement. tmpfs
    // and some overlay filesystems refuse O_DIRECT: then buffered only.
    std::string self = absl::StrCat("/proc/self/fd/", fd);
    direct_fd = ::open(self.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT | O_NOCTTY | O_NONBLOCK);
    if (direct_fd >= 0) {
      struct stat dst;
      int flags = fcntl(direct_fd, F_GETFL);
      if (fstat(direct_fd, &dst) != 0 || dst.st_dev != st.st_dev || dst.st_ino != st.st_ino ||
          flags < 0 || fcntl(direct_fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
        ::close(direct_fd);
        direct_fd = -1;
      }
    }
  }
  return std::unique_ptr<IoUringSource>(new IoUringSource(
      std::move(name), fd, direct_fd, static_cast<uint64_t>(st.st_size), options, backend));
}

IoUringSource::IoUringSource(std::string path, int fd, int direct_fd, uint64_t size,
                             IoOptions options, IoBackend backend)
    : path_(std::move(path)),
      log_name_(EscapeForLog(path_)),
      fd_(fd),
      direct_fd_(direct_fd),
      size_(size),
      options_(options),
      backend_(backend) {
  if (options_.queue_depth == 0) options_.queue_depth = 1;
  if (options_.chunk_bytes < AlignedBuffer::kAlignment) {
    options_.chunk_bytes = AlignedBuffer::kAlignment;
  }
  options_.chunk_bytes = options_.chunk_bytes / AlignedBuffer::kAlignment * AlignedBuffer::kAlignment;
}

IoUringSource::~IoUringSource() {
  if (fd_ >= 0) ::close(fd_);
  if (direct_fd_ >= 0) ::close(direct_fd_);
}

absl::Status IoUringSource::ReadAt(uint64_t offset, absl::Span<uint8_t> out) {
  if (offset > size_ || out.size() > size_ - offset) {
    return absl::OutOfRangeError(absl::StrCat(log_name_, ": read of ", out.size(), " bytes at ",
                                              offset, " is past the end (", size_, " bytes)"));
  }
  if (out.empty()) return absl::OkStatus();
  auto read = [&](int fd, uint64_t off, absl::Span<uint8_t> part) {
    return backend_ == IoBackend::kIoUring ? ReadUring(fd, off, part) : ReadPread(fd, off, part);
  };
  constexpr uint64_t kAlign = AlignedBuffer::kAlignment;
  size_t direct_len = 0;
  if (direct_fd_ >= 0 && offset % kAlign == 0 &&
      reinterpret_cast<uintptr_t>(out.data()) % kAlign == 0) {
    direct_len = out.size() / kAlign * kAlign;
  }
  if (direct_len > 0) {
    absl::Status status = read(direct_fd_, offset, out.subspan(0, direct_len));
    if (!status.ok()) {
      // Some filesystems accept O_DIRECT at open and refuse it at read
      // time (EINVAL): redo this part buffered.
      RETURN_IF_ERROR(read(fd_, offset, out.subspan(0, direct_len)));
    }
  }
  if (direct_len < out.size()) {
    RETURN_IF_ERROR(read(fd_, offset + direct_len, out.subspan(direct_len)));
  }
  bytes_read_.fetch_add(out.size(), std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::Status IoUringSource::ReadPread(int fd, uint64_t offset, absl::Span<uint8_t> out) {
  size_t done = 0;
  while (done < out.size()) {
    size_t want = out.size() - done;
    if (options_.max_read_bytes > 0 && want > options_.max_read_bytes) {
      want = options_.max_read_bytes;
    }
    ssize_t n = ::pread(fd, out.data() + done, want, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return ErrnoToStatus(errno, absl::StrCat("pread ", log_name_, " at ", offset + done));
    }
    if (n == 0) {
      return absl::DataLossError(absl::StrCat(log_name_, ": truncated (end of file at ",
                                              offset + done, ", expected ", size_, " bytes)"));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

std::unique_ptr<IoUringSource::Ring> IoUringSource::AcquireRing() {
  {
    std::lock_guard<std::mutex> lock(rings_mu_);
    if (!free_rings_.empty()) {
      auto ring = std::move(free_rings_.back());
      free_rings_.pop_back();
      return ring;
    }
  }
  auto ring = std::make_unique<Ring>();
  if (io_uring_queue_init(options_.queue_depth, &ring->ring, 0) < 0) return nullptr;
  ring->initialized = true;
  ring->depth = options_.queue_depth;
  return ring;
}

void IoUringSource::ReturnRing(std::unique_ptr<Ring> ring) {
  std::lock_guard<std::mutex> lock(rings_mu_);
  if (free_rings_.size() < 8) free_rings_.push_back(std::move(ring));
}

absl::Status IoUringSource::ReadUring(int fd, uint64_t offset, absl::Span<uint8_t> out) {
  std::unique_ptr<Ring> ring = AcquireRing();
  if (ring == nullptr) {
    // Ring creation refused now (e.g. memlock limit): this read goes by pread.
    return ReadPread(fd, offset, out);
  }
  struct Piece {
    uint64_t offset;
    uint8_t* data;
    size_t remaining;
  };
  std::vector<Piece> pieces;
  for (size_t pos = 0; pos < out.size(); pos += options_.chunk_bytes) {
    size_t len = std::min<size_t>(options_.chunk_bytes, out.size() - pos);
    pieces.push_back({offset + pos, out.data() + pos, len});
  }
  size_t next = 0;      // next piece not yet submitted
  size_t in_flight = 0;
  std::vector<size_t> retry;  // pieces to resubmit (short reads, EAGAIN)
  absl::Status status;
  auto submit = [&](size_t i) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring->ring);
    Piece& p = pieces[i];
    size_t want = p.remaining;
    if (options_.max_read_bytes > 0 && want > options_.max_read_bytes) {
      want = options_.max_read_bytes;
    }
    io_uring_prep_read(sqe, fd, p.data, static_cast<unsigned>(want), p.offset);
    io_uring_sqe_set_data64(sqe, i);
    ++in_flight;
  };
  while ((next < pieces.size() || !retry.empty() || in_flight > 0)) {
    while (status.ok() && in_flight < ring->depth && (!retry.empty() || next < pieces.size())) {
      if (!retry.empty()) {
        submit(retry.back());
        retry.pop_back();
      } else {
        submit(next++);
      }
    }
    if (in_flight == 0) break;
    int ret = io_uring_submit_and_wait(&ring->ring, 1);
    if (ret < 0 && ret != -EINTR) {
      status = ErrnoToStatus(-ret, absl::StrCat("io_uring_submit ", log_name_));
      // The kernel owns the submitted buffers until their completions arrive.
    }
    io_uring_cqe* cqe = nullptr;
    unsigned head;
    unsigned seen = 0;
    io_uring_for_each_cqe(&ring->ring, head, cqe) {
      ++seen;
      --in_flight;
      size_t i = static_cast<size_t>(io_uring_cqe_get_data64(cqe));
      Piece& p = pieces[i];
      int res = cqe->res;
      if (res == -EINTR || res == -EAGAIN) {
        retry.push_back(i);
      } else if (res < 0) {
        if (status.ok()) {
          status = ErrnoToStatus(-res, absl::StrCat("read ", log_name_, " at ", p.offset));
        }
      } else if (res == 0) {
        if (status.ok()) {
          status = absl::DataLossError(absl::StrCat(log_name_, ": truncated (end of file at ",
                                                    p.offset, ", expected ", size_, " bytes)"));
        }
      } else {
        p.offset += static_cast<uint64_t>(res);
        p.data += res;
        p.remaining -= static_cast<size_t>(res);
        if (p.remaining > 0) retry.push_back(i);  // short read: continue where it stopped
      }
    }
    io_uring_cq_advance(&ring->ring, seen);
    if (!status.ok()) {
      retry.clear();
      next = pieces.size();
      if (ret < 0 && ret != -EINTR && in_flight > 0 && seen == 0) {
        // Submission is broken; drop this ring rather than reuse it.
        // Wait for outstanding completions so no buffer is written later.
        while (in_flight > 0) {
          io_uring_cqe* c = nullptr;
          if (io_uring_wait_cqe(&ring->ring, &c) < 0) break;
          io_uring_cqe_seen(&ring->ring, c);
          --in_flight;
        }
        return status;
      }
    }
  }
  ReturnRing(std::move(ring));
  return status;
}

}  // namespace bigsmall::daemon
