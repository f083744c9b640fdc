#include "codec/byte_source.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "codec/byte_io.h"
#include "codec/status_util.h"

namespace bigsmall {
namespace {

absl::Status CheckRange(const ByteSource& source, uint64_t offset, uint64_t size) {
  const uint64_t total = source.size();
  if (offset > total || size > total - offset) {
    return absl::OutOfRangeError(absl::StrCat(source.name(), ": read of ", size,
                                              " bytes at offset ", offset,
                                              " past end of source (size ", total, ")"));
  }
  return absl::OkStatus();
}

// pread-backed source. ReadAt is safe to call from several threads at once:
// pread does not move a shared file offset.
class FileSource final : public ByteSource {
 public:
  FileSource(int fd, uint64_t size, std::string path)
      : fd_(fd), size_(size), path_(std::move(path)) {}
  ~FileSource() override { ::close(fd_); }
  FileSource(const FileSource&) = delete;
  FileSource& operator=(const FileSource&) = delete;

  uint64_t size() const override { return size_; }
  std::string name() const override { return path_; }

  absl::Status ReadAt(uint64_t offset, absl::Span<uint8_t> out) override {
    if (absl::Status s = CheckRange(*this, offset, out.size()); !s.ok()) return s;
    size_t done = 0;
    while (done < out.size()) {
      // Linux transfers at most ~2 GiB per call; ask for at most 1 GiB.
      const size_t want = std::min<size_t>(out.size() - done, size_t{1} << 30);
      const ssize_t got =
          ::pread(fd_, out.data() + done, want, static_cast<off_t>(offset + done));
      if (got < 0) {
        if (errno == EINTR) continue;
        return ErrnoToStatus(errno, absl::StrCat(path_, ": read of ", want, " bytes at offset ",
                                               offset + done));
      }
      if (got == 0) {
        return absl::DataLossError(absl::StrCat(path_, ": file ended at offset ", offset + done,
                                                " before its size when opened (", size_,
                                                "): truncated while in use?"));
      }
      done += static_cast<size_t>(got);
    }
    return absl::OkStatus();
  }

 private:
  int fd_;
  uint64_t size_;
  std::string path_;
};

class MemorySource final : public ByteSource {
 public:
  MemorySource(std::vector<uint8_t> bytes, std::string name)
      : bytes_(std::move(bytes)), name_(std::move(name)) {}

  uint64_t size() const override { return bytes_.size(); }
  std::string name() const override { return name_; }

  absl::Status ReadAt(uint64_t offset, absl::Span<uint8_t> out) override {
    if (absl::Status s = CheckRange(*this, offset, out.size()); !s.ok()) return s;
    if (!out.empty()) std::memcpy(out.data(), bytes_.data() + offset, out.size());
    return absl::OkStatus();
  }

 private:
  std::vector<uint8_t> bytes_;
  std::string name_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ByteSource>> OpenFileSource(const std::string& path) {
  int fd;
  // O_NONBLOCK: opening a FIFO without a writer (or a tty, a device) must not
  // block; what is not a regular file is refused right after, before any read.
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return ErrnoToStatus(errno, absl::StrCat("cannot open ", path));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoToStatus(err, absl::StrCat("cannot stat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(
        path, S_ISDIR(st.st_mode) ? ": is a directory" : ": not a regular file (a FIFO, device or socket)"));
  }
  const int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoToStatus(err, absl::StrCat("cannot open ", path));
  }
  return std::unique_ptr<ByteSource>(
      new FileSource(fd, static_cast<uint64_t>(st.st_size), path));
}

std::unique_ptr<ByteSource> MakeMemorySource(std::vector<uint8_t> bytes, std::string name) {
  return std::make_unique<MemorySource>(std::move(bytes), std::move(name));
}

absl::StatusOr<std::vector<uint8_t>> ReadRange(ByteSource& source, uint64_t offset,
                                               uint64_t size) {
  // Checked before allocating, so a corrupt length cannot ask for terabytes.
  if (absl::Status s = CheckRange(source, offset, size); !s.ok()) return s;
  auto out = AllocateBytes(size, source.name());
  if (!out.ok()) return out.status();
  if (absl::Status s = source.ReadAt(offset, absl::MakeSpan(*out)); !s.ok()) return s;
  return out;
}

}  // namespace bigsmall
