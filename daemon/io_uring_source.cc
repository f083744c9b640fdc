#include "daemon/io_uring_source.h"

#include <fcntl.h>
#include <liburing.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>
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
      absl::StrCat("unknown io backend '", EscapeForLog(name, 64), "' (auto, io_uring, pread)"));
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
  // Bounce memory, one chunk per read in flight (allocated when first used).
  std::vector<AlignedBuffer> slots;
  ~Ring() {
    if (initialized) io_uring_queue_exit(&ring);
  }
};

namespace {

// Rings that broke with reads in flight: never destroyed, since the kernel
// may still write their bounce memory. Held here (reachable, so leak
// checkers stay quiet) for the life of the process.
std::mutex g_quarantine_mu;
std::vector<void*>* g_quarantine = new std::vector<void*>;

const absl::Status& ProbeStatus() {
  static const absl::Status* status = [] {
    io_uring ring;
    int ret = io_uring_queue_init(4, &ring, 0);
    if (ret < 0) {
      return new absl::Status(ErrnoToStatus(-ret, "io_uring_queue_init (io_uring refused here)"));
    }
    const bool ext_arg = (ring.features & IORING_FEAT_EXT_ARG) != 0;
    io_uring_queue_exit(&ring);
    if (!ext_arg) {
      // Without it a timed wait submits a timeout SQE, flushing whatever is
      // queued: a broken ring could then not be kept quiet.
      return new absl::Status(absl::UnavailableError(
          "io_uring lacks IORING_FEAT_EXT_ARG (kernel older than 5.11)"));
    }
    return new absl::Status();
  }();
  return *status;
}

}  // namespace

bool IoUringAvailable() { return ProbeStatus().ok(); }

absl::Status IoUringStatus() { return ProbeStatus(); }

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
  if (options_.split_bytes < AlignedBuffer::kAlignment) {
    options_.split_bytes = AlignedBuffer::kAlignment;
  }
  options_.split_bytes = options_.split_bytes / AlignedBuffer::kAlignment * AlignedBuffer::kAlignment;
}

IoUringSource::~IoUringSource() {
  if (fd_ >= 0) ::close(fd_);
  if (direct_fd_ >= 0) ::close(direct_fd_);
}

absl::Status IoUringSource::ReadAt(uint64_t offset, absl::Span<uint8_t> out) {
  return ReadRange(offset, out, /*bulk=*/false);
}

absl::Status IoUringSource::ReadBulk(uint64_t offset, absl::Span<uint8_t> out) {
  return ReadRange(offset, out, /*bulk=*/true);
}

absl::Status IoUringSource::ReadRange(uint64_t offset, absl::Span<uint8_t> out, bool bulk) {
  if (offset > size_ || out.size() > size_ - offset) {
    return absl::OutOfRangeError(absl::StrCat(log_name_, ": read of ", out.size(), " bytes at ",
                                              offset, " is past the end (", size_, " bytes)"));
  }
  if (out.empty()) return absl::OkStatus();
  auto read = [&](int fd, uint64_t off, absl::Span<uint8_t> part) {
    if (backend_ != IoBackend::kIoUring) return ReadPread(fd, off, part);
    return bulk ? ReadUringInto(fd, off, part) : ReadUring(fd, off, part);
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

absl::StatusOr<std::unique_ptr<IoUringSource::Ring>> IoUringSource::AcquireRing() {
  {
    std::lock_guard<std::mutex> lock(rings_mu_);
    if (!free_rings_.empty()) {
      auto ring = std::move(free_rings_.back());
      free_rings_.pop_back();
      return ring;
    }
  }
  auto ring = std::make_unique<Ring>();
  int ret = io_uring_queue_init(options_.queue_depth, &ring->ring, 0);
  if (ret < 0) return ErrnoToStatus(-ret, "io_uring_queue_init");
  ring->initialized = true;
  ring->depth = options_.queue_depth;
  ring->slots.resize(ring->depth);
  rings_created_.fetch_add(1);
  return ring;
}

void IoUringSource::ReturnRing(std::unique_ptr<Ring> ring) {
  std::lock_guard<std::mutex> lock(rings_mu_);
  if (free_rings_.size() < 8) free_rings_.push_back(std::move(ring));
}

void IoUringSource::DiscardRing(std::unique_ptr<Ring> ring, size_t in_flight) {
  if (in_flight == 0) {
    // Nothing in flight: unsubmitted SQEs (after a failed or short submit)
    // die with the ring, which is never reused.
    rings_discarded_.fetch_add(1);
    return;  // ~Ring
  }
  rings_quarantined_.fetch_add(1);
  std::lock_guard<std::mutex> lock(g_quarantine_mu);
  g_quarantine->push_back(ring.release());
}

int IoUringSource::Submit(Ring& ring, const std::vector<size_t>& batch,
                          const std::function<void(size_t)>& prep) {
  const uint32_t call = submit_calls_.fetch_add(1) + 1;
  const IoOptions::UringFaults& f = options_.uring_faults;
  if (f.submit_fail == call) {
    for (size_t i : batch) prep(i);  // queued, never handed to the kernel
    return -EIO;
  }
  if (f.short_submit == call && batch.size() > 1) {
    // The kernel takes the first read only; the others stay queued in the
    // SQ, as after a real partial submit.
    prep(batch[0]);
    int ret = io_uring_submit(&ring.ring);
    for (size_t k = 1; k < batch.size(); ++k) prep(batch[k]);
    return ret;
  }
  for (size_t i : batch) prep(i);
  return io_uring_submit(&ring.ring);
}

int IoUringSource::Wait(Ring& ring, io_uring_cqe** cqe, uint32_t timeout_ms) {
  const uint32_t call = wait_calls_.fetch_add(1) + 1;
  const IoOptions::UringFaults& f = options_.uring_faults;
  if (f.wait_fail > 0 && call >= f.wait_fail &&
      call - f.wait_fail < std::max<uint32_t>(f.wait_fail_count, 1)) {
    *cqe = nullptr;
    return -EIO;
  }
  __kernel_timespec ts;
  ts.tv_sec = timeout_ms / 1000;
  ts.tv_nsec = static_cast<long long>(timeout_ms % 1000) * 1000000;
  return io_uring_wait_cqe_timeout(&ring.ring, cqe, &ts);
}

absl::Status IoUringSource::ReadUring(int fd, uint64_t offset, absl::Span<uint8_t> out) {
  absl::StatusOr<std::unique_ptr<Ring>> acquired = AcquireRing();
  if (!acquired.ok()) {
    // Ring creation refused now (e.g. memlock limit): this read goes by pread.
    return ReadPread(fd, offset, out);
  }
  std::unique_ptr<Ring> ring = std::move(*acquired);
  const size_t chunk = options_.chunk_bytes;
  struct Piece {
    uint64_t offset;  // file offset of the piece
    uint8_t* dst;     // its place in `out`
    size_t len;
    size_t done = 0;  // bytes read into the slot so far
    int slot = -1;
  };
  std::vector<Piece> pieces;
  pieces.reserve(out.size() / chunk + 1);
  for (size_t pos = 0; pos < out.size(); pos += chunk) {
    pieces.push_back({offset + pos, out.data() + pos, std::min(chunk, out.size() - pos)});
  }
  std::vector<int> free_slots;
  for (int s = static_cast<int>(ring->depth) - 1; s >= 0; --s) free_slots.push_back(s);

  size_t next = 0;            // next piece never submitted
  std::vector<size_t> retry;  // pieces to resubmit (short reads, EAGAIN); they hold a slot
  size_t in_flight = 0;       // reads the kernel accepted and has not completed
  absl::Status status;        // first error; once set, nothing new is submitted
  bool broken = false;        // the ring itself failed: never reuse it

  auto prep = [&](size_t i) {
    Piece& p = pieces[i];
    io_uring_sqe* sqe = io_uring_get_sqe(&ring->ring);
    size_t want = p.len - p.done;
    if (options_.max_read_bytes > 0 && want > options_.max_read_bytes) {
      want = options_.max_read_bytes;
    }
    io_uring_prep_read(sqe, fd, ring->slots[p.slot].data() + p.done, static_cast<unsigned>(want),
                       p.offset + p.done);
    io_uring_sqe_set_data64(sqe, i);
  };
  auto complete = [&](io_uring_cqe* cqe) {
    size_t i = static_cast<size_t>(io_uring_cqe_get_data64(cqe));
    int res = cqe->res;
    --in_flight;
    if (i >= pieces.size()) return;  // not ours (cannot happen: the ring is exclusive)
    Piece& p = pieces[i];
    if (res == -EINTR || res == -EAGAIN) {
      retry.push_back(i);
      return;
    }
    if (res < 0) {
      if (status.ok()) {
        status = ErrnoToStatus(-res, absl::StrCat("read ", log_name_, " at ", p.offset + p.done));
      }
    } else if (res == 0) {
      if (status.ok()) {
        status = absl::DataLossError(absl::StrCat(log_name_, ": truncated (end of file at ",
                                                  p.offset + p.done, ", expected ", size_,
                                                  " bytes)"));
      }
    } else {
      p.done += static_cast<size_t>(std::min<int64_t>(res, p.len - p.done));
      if (p.done < p.len) {
        retry.push_back(i);  // short read: continue where it stopped
        return;
      }
      std::memcpy(p.dst, ring->slots[p.slot].data(), p.len);
    }
    free_slots.push_back(p.slot);
    p.slot = -1;
  };

  std::vector<size_t> batch;
  while (!broken) {
    // Queue what fits: retries first (they hold their slot), then new pieces.
    batch.clear();
    if (status.ok()) {
      while (in_flight + batch.size() < ring->depth && !retry.empty()) {
        batch.push_back(retry.back());
        retry.pop_back();
      }
      while (in_flight + batch.size() < ring->depth && next < pieces.size() &&
             !free_slots.empty()) {
        Piece& p = pieces[next];
        p.slot = free_slots.back();
        AlignedBuffer& slot = ring->slots[p.slot];
        if (slot.size() < chunk) slot = AlignedBuffer(chunk);
        if (!slot.ok() || slot.size() < chunk) {
          status = absl::ResourceExhaustedError(
              absl::StrCat("out of memory for a ", chunk, "-byte io_uring buffer"));
          p.slot = -1;
          break;
        }
        free_slots.pop_back();
        batch.push_back(next++);
      }
    }
    if (!batch.empty()) {
      int ret = Submit(*ring, batch, prep);
      for (int tries = 0; ret == -EINTR && tries < 3; ++tries) ret = io_uring_submit(&ring->ring);
      if (ret < 0) {
        // The kernel took none of them: they are never waited for, and the
        // ring (whose SQ still holds them) is never reused.
        status = ErrnoToStatus(-ret, absl::StrCat("io_uring_submit ", log_name_));
        if (status.code() != absl::StatusCode::kUnavailable) {
          status = absl::UnavailableError(status.message());
        }
        broken = true;
        break;
      }
      in_flight += static_cast<size_t>(ret);
      if (static_cast<size_t>(ret) < batch.size()) {
        // Only the first `ret` were accepted (the kernel consumes SQEs in
        // order); the rest stay queued in this ring, which is dropped.
        status = absl::UnavailableError(absl::StrCat("io_uring_submit ", log_name_, ": the kernel took ",
                                                     ret, " of ", batch.size(), " reads"));
        broken = true;
        break;
      }
    }
    if (in_flight == 0) break;
    io_uring_cqe* cqe = nullptr;
    int ret = Wait(*ring, &cqe, options_.wait_timeout_ms);
    if (ret == -EINTR) continue;
    if (ret < 0) {
      if (status.ok()) {
        status = ret == -ETIME
                     ? absl::UnavailableError(absl::StrCat("io_uring: no completion for ",
                                                           log_name_, " in ",
                                                           options_.wait_timeout_ms, " ms"))
                     : absl::UnavailableError(absl::StrCat(
                           "io_uring_wait_cqe ", log_name_, ": ",
                           ErrnoToStatus(-ret, "wait").message()));
      }
      broken = true;
      break;
    }
    // Reap everything that is ready.
    unsigned head;
    unsigned seen = 0;
    io_uring_for_each_cqe(&ring->ring, head, cqe) {
      ++seen;
      complete(cqe);
    }
    io_uring_cq_advance(&ring->ring, seen);
  }
  if (!broken) {
    ReturnRing(std::move(ring));
    return status;
  }
  // Broken ring: wait, bounded, for the reads the kernel did accept, so the
  // bounce memory is quiet before the ring goes; if they cannot be drained,
  // the ring is quarantined. `out` holds only completed pieces' bytes (copied
  // from the bounce memory), and the kernel never had it.
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(options_.drain_timeout_ms);
  int errors = 0;
  while (in_flight > 0 && errors < 3) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    io_uring_cqe* cqe = nullptr;
    int ret = Wait(*ring, &cqe, static_cast<uint32_t>(left.count()));
    if (ret == -EINTR) continue;
    if (ret == -ETIME) break;
    if (ret < 0) {
      ++errors;
      continue;
    }
    unsigned head;
    unsigned seen = 0;
    io_uring_for_each_cqe(&ring->ring, head, cqe) {
      ++seen;
      --in_flight;
    }
    io_uring_cq_advance(&ring->ring, seen);
  }
  DiscardRing(std::move(ring), in_flight);
  return status;
}


absl::Status IoUringSource::ReadUringInto(int fd, uint64_t offset, absl::Span<uint8_t> out) {
  absl::StatusOr<std::unique_ptr<Ring>> acquired = AcquireRing();
  if (!acquired.ok()) return ReadPread(fd, offset, out);  // ring creation refused now
  std::unique_ptr<Ring> ring = std::move(*acquired);
  bulk_reads_.fetch_add(1);
  const size_t split = options_.split_bytes;
  // Cancel SQEs carry this bit in their user data; reads carry their piece.
  constexpr uint64_t kCancelTag = uint64_t{1} << 63;
  struct Piece {
    uint64_t offset;  // file offset of the piece
    uint8_t* dst;     // its place in `out`, which the kernel reads into
    size_t len;
    size_t done = 0;
    bool in_flight = false;
  };
  std::vector<Piece> pieces;
  pieces.reserve(out.size() / split + 1);
  for (size_t pos = 0; pos < out.size(); pos += split) {
    pieces.push_back({offset + pos, out.data() + pos, std::min(split, out.size() - pos)});
  }
  size_t next = 0;            // next piece never submitted
  std::vector<size_t> retry;  // pieces to continue (short reads, EAGAIN)
  size_t in_flight = 0;       // reads the kernel accepted, completion not reaped
  size_t cancels = 0;         // cancel SQEs accepted, completion not reaped
  absl::Status status;        // first error; once set, nothing new is read
  bool sq_dirty = false;      // SQEs queued that the kernel never took: never submit again
  bool broken = false;        // a submit or wait failed: the ring is not reused

  auto prep = [&](size_t i) {
    Piece& p = pieces[i];
    io_uring_sqe* sqe = io_uring_get_sqe(&ring->ring);
    size_t want = p.len - p.done;
    if (options_.max_read_bytes > 0 && want > options_.max_read_bytes) {
      want = options_.max_read_bytes;
    }
    io_uring_prep_read(sqe, fd, p.dst + p.done, static_cast<unsigned>(want), p.offset + p.done);
    io_uring_sqe_set_data64(sqe, i);
    p.in_flight = true;
  };
  auto complete = [&](io_uring_cqe* cqe) {
    const uint64_t data = io_uring_cqe_get_data64(cqe);
    if ((data & kCancelTag) != 0) {
      --cancels;
      return;
    }
    const size_t i = static_cast<size_t>(data);
    if (i >= pieces.size()) return;  // cannot happen: the ring is exclusive and clean
    Piece& p = pieces[i];
    p.in_flight = false;
    --in_flight;
    bulk_in_flight_.fetch_sub(1);
    const int res = cqe->res;
    if (!status.ok()) return;  // failing already (-ECANCELED and the like)
    if (res == -EINTR || res == -EAGAIN) {
      retry.push_back(i);
    } else if (res < 0) {
      status = ErrnoToStatus(-res, absl::StrCat("read ", log_name_, " at ", p.offset + p.done));
    } else if (res == 0) {
      status = absl::DataLossError(absl::StrCat(log_name_, ": truncated (end of file at ",
                                                p.offset + p.done, ", expected ", size_,
                                                " bytes)"));
    } else {
      p.done += static_cast<size_t>(std::min<int64_t>(res, p.len - p.done));
      if (p.done < p.len) retry.push_back(i);  // short read: continue where it stopped
    }
  };
  auto reap = [&] {
    unsigned head;
    unsigned seen = 0;
    io_uring_cqe* cqe = nullptr;
    io_uring_for_each_cqe(&ring->ring, head, cqe) {
      ++seen;
      complete(cqe);
    }
    io_uring_cq_advance(&ring->ring, seen);
  };

  std::vector<size_t> batch;
  while (status.ok()) {
    batch.clear();
    while (in_flight + batch.size() < ring->depth && !retry.empty()) {
      batch.push_back(retry.back());
      retry.pop_back();
    }
    while (in_flight + batch.size() < ring->depth && next < pieces.size()) {
      batch.push_back(next++);
    }
    if (!batch.empty()) {
      int ret = Submit(*ring, batch, prep);
      for (int tries = 0; ret == -EINTR && tries < 3; ++tries) ret = io_uring_submit(&ring->ring);
      const size_t accepted = ret < 0 ? 0 : static_cast<size_t>(ret);
      in_flight += accepted;
      bulk_in_flight_.fetch_add(accepted);
      if (accepted < batch.size()) {
        // The kernel consumes SQEs in order: the rest stay queued, never to
        // be submitted (a cancel would flush them too), never in flight.
        for (size_t k = accepted; k < batch.size(); ++k) pieces[batch[k]].in_flight = false;
        status = ret < 0 ? absl::UnavailableError(absl::StrCat(
                               "io_uring_submit ", log_name_, ": ",
                               ErrnoToStatus(-ret, "submit").message()))
                         : absl::UnavailableError(absl::StrCat("io_uring_submit ", log_name_,
                                                               ": the kernel took ", ret, " of ",
                                                               batch.size(), " reads"));
        sq_dirty = true;
        broken = true;
        break;
      }
    }
    if (in_flight == 0) break;  // everything read (or retries only: impossible here)
    io_uring_cqe* cqe = nullptr;
    int ret = Wait(*ring, &cqe, options_.wait_timeout_ms);
    if (ret == -EINTR) continue;
    if (ret < 0) {
      status = ret == -ETIME
                   ? absl::UnavailableError(absl::StrCat("io_uring: no completion for ", log_name_,
                                                         " in ", options_.wait_timeout_ms, " ms"))
                   : absl::UnavailableError(absl::StrCat("io_uring_wait_cqe ", log_name_, ": ",
                                                         ErrnoToStatus(-ret, "wait").message()));
      broken = true;
      break;
    }
    reap();
  }
  if (in_flight > 0 && !sq_dirty) {
    // Failing with reads in flight into `out`: ask the kernel to cancel
    // them (a read already running completes anyway), then reap them all.
    for (size_t i = 0; i < pieces.size(); ++i) {
      if (!pieces[i].in_flight) continue;
      io_uring_sqe* sqe = io_uring_get_sqe(&ring->ring);
      if (sqe == nullptr) break;
      io_uring_prep_cancel64(sqe, i, 0);
      io_uring_sqe_set_data64(sqe, kCancelTag | i);
    }
    int ret = io_uring_submit(&ring->ring);
    if (ret > 0) {
      cancels += static_cast<size_t>(ret);
      bulk_cancels_.fetch_add(static_cast<uint64_t>(ret));
    }
    broken = true;  // its SQ may hold cancels the kernel did not take
  }
  // Never return while the kernel may still write `out`: wait for every
  // accepted read's completion (and the cancels', so the CQ is empty).
  int wait_errors = 0;
  while (in_flight > 0 || cancels > 0) {
    io_uring_cqe* cqe = nullptr;
    int ret = wait_errors < 3 ? Wait(*ring, &cqe, 1000) : -EBUSY;
    if (ret == -EINTR || ret == -ETIME) continue;
    if (ret < 0) {
      // io_uring_enter failing: completions still land in the shared CQ.
      ++wait_errors;
      if (io_uring_peek_cqe(&ring->ring, &cqe) != 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;
      }
    }
    reap();
  }
  if (!broken) {
    ReturnRing(std::move(ring));
  } else {
    DiscardRing(std::move(ring), 0);  // nothing in flight: destroyed
  }
  return status;
}

}  // namespace bigsmall::daemon
