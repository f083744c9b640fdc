#include "codec/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "codec/status_util.h"

namespace bigsmall {
namespace {

std::string TempName(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  return absl::StrCat(path, ".tmp.", getpid(), ".", counter.fetch_add(1));
}

absl::Status FsyncParent(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return absl::OkStatus();  // best effort
  fsync(fd);
  close(fd);
  return absl::OkStatus();
}

}  // namespace

bool PathExists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool SameFile(const std::string& a, const std::string& b) {
  struct stat sa, sb;
  if (stat(a.c_str(), &sa) != 0 || stat(b.c_str(), &sb) != 0) return false;
  return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

absl::StatusOr<AtomicFile> AtomicFile::Create(const std::string& path, bool overwrite) {
  if (!overwrite && PathExists(path)) {
    return absl::AlreadyExistsError(absl::StrCat(path, ": output exists (use --force to overwrite)"));
  }
  std::string temp = TempName(path);
  int fd = open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoToStatus(errno, absl::StrCat("cannot create ", path));
  return AtomicFile(path, std::move(temp), fd, overwrite);
}

AtomicFile::AtomicFile(std::string path, std::string temp_path, int fd, bool overwrite)
    : path_(std::move(path)), temp_path_(std::move(temp_path)), fd_(fd), overwrite_(overwrite) {}

AtomicFile::AtomicFile(AtomicFile&& other) noexcept
    : path_(std::move(other.path_)),
      temp_path_(std::move(other.temp_path_)),
      fd_(other.fd_),
      size_(other.size_),
      overwrite_(other.overwrite_) {
  other.fd_ = -1;
  other.temp_path_.clear();
}

AtomicFile& AtomicFile::operator=(AtomicFile&& other) noexcept {
  if (this != &other) {
    Abandon();
    path_ = std::move(other.path_);
    temp_path_ = std::move(other.temp_path_);
    fd_ = other.fd_;
    size_ = other.size_;
    overwrite_ = other.overwrite_;
    other.fd_ = -1;
    other.temp_path_.clear();
  }
  return *this;
}

AtomicFile::~AtomicFile() { Abandon(); }

void AtomicFile::Abandon() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  if (!temp_path_.empty()) unlink(temp_path_.c_str());
  temp_path_.clear();
}

absl::Status AtomicFile::WriteAt(uint64_t offset, absl::Span<const uint8_t> bytes) {
  if (fd_ < 0) return absl::FailedPreconditionError("file already closed");
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = pwrite(fd_, bytes.data() + done, bytes.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, absl::StrCat("write to ", temp_path_));
    }
    done += static_cast<size_t>(n);
  }
  size_ = std::max<uint64_t>(size_, offset + bytes.size());
  return absl::OkStatus();
}

absl::Status AtomicFile::Write(absl::Span<const uint8_t> bytes) { return WriteAt(size_, bytes); }

absl::Status AtomicFile::PadTo(uint64_t offset) {
  if (offset <= size_) return absl::OkStatus();
  std::vector<uint8_t> zeros(offset - size_, 0);
  return Write(zeros);
}

absl::Status AtomicFile::Commit() {
  if (fd_ < 0) return absl::FailedPreconditionError("file already closed");
  if (fsync(fd_) != 0) return ErrnoToStatus(errno, absl::StrCat("fsync ", temp_path_));
  if (close(fd_) != 0) {
    fd_ = -1;
    return ErrnoToStatus(errno, absl::StrCat("close ", temp_path_));
  }
  fd_ = -1;
  if (!overwrite_ && PathExists(path_)) {
    return absl::AlreadyExistsError(absl::StrCat(path_, ": output appeared while writing"));
  }
  if (rename(temp_path_.c_str(), path_.c_str()) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("rename to ", path_));
  }
  temp_path_.clear();
  return FsyncParent(path_);
}

absl::StatusOr<AtomicDirectory> AtomicDirectory::Create(const std::string& path, bool overwrite) {
  if (!overwrite && PathExists(path)) {
    return absl::AlreadyExistsError(absl::StrCat(path, ": output exists (use --force to overwrite)"));
  }
  std::string temp = TempName(path);
  if (mkdir(temp.c_str(), 0755) != 0) return ErrnoToStatus(errno, absl::StrCat("cannot create ", path));
  return AtomicDirectory(path, std::move(temp), overwrite);
}

AtomicDirectory::AtomicDirectory(std::string path, std::string temp_path, bool overwrite)
    : path_(std::move(path)), temp_path_(std::move(temp_path)), overwrite_(overwrite) {}

AtomicDirectory::AtomicDirectory(AtomicDirectory&& other) noexcept
    : path_(std::move(other.path_)),
      temp_path_(std::move(other.temp_path_)),
      overwrite_(other.overwrite_),
      committed_(other.committed_) {
  other.committed_ = true;
}

AtomicDirectory::~AtomicDirectory() {
  if (!committed_ && !temp_path_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(temp_path_, ec);
  }
}

absl::Status AtomicDirectory::Commit() {
  std::error_code ec;
  if (PathExists(path_)) {
    if (!overwrite_) return absl::AlreadyExistsError(absl::StrCat(path_, ": output appeared while writing"));
    // Move the old one aside, put the new one in, then delete the old one.
    std::string old = TempName(path_ + ".old");
    if (rename(path_.c_str(), old.c_str()) != 0) return ErrnoToStatus(errno, absl::StrCat("rename ", path_));
    if (rename(temp_path_.c_str(), path_.c_str()) != 0) {
      int err = errno;
      rename(old.c_str(), path_.c_str());
      return ErrnoToStatus(err, absl::StrCat("rename to ", path_));
    }
    std::filesystem::remove_all(old, ec);
  } else if (rename(temp_path_.c_str(), path_.c_str()) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("rename to ", path_));
  }
  committed_ = true;
  return FsyncParent(path_);
}

absl::Status CopyFile(const std::string& from, const std::string& to) {
  std::error_code ec;
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing, ec);
  if (ec) return ErrnoToStatus(ec.value(), absl::StrCat("copy ", from, " -> ", to));
  return absl::OkStatus();
}

}  // namespace bigsmall
