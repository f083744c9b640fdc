#include "codec/file_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>  // renameat2, RENAME_EXCHANGE (glibc >= 2.28)
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <system_error>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "codec/byte_source.h"
#include "codec/error_kind.h"
#include "codec/status_util.h"

namespace bigsmall {
namespace {

constexpr char kTempInfix[] = ".tmp.";

// "<path>.tmp.<pid>.<n>": the pid lets a later run tell a dead writer's
// leftovers (ReapStaleTemps) from a live writer's work in progress.
std::string TempName(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  return absl::StrCat(path, kTempInfix, getpid(), ".", counter.fetch_add(1));
}

absl::Status OutputError(absl::Status status) { return WithErrorKind(std::move(status), ErrorKind::kOutput); }

std::string ParentDir(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? "." : dir;
}

absl::Status FsyncParent(const std::string& path) {
  int fd = open(ParentDir(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return absl::OkStatus();  // best effort
  fsync(fd);
  close(fd);
  return absl::OkStatus();
}

// "cannot create OUT": with the reason, and for a missing directory the
// directory, so it never reads like a missing input.
absl::Status CreateError(int err, const std::string& path) {
  if (err == ENOENT || err == ENOTDIR) {
    return OutputError(ErrnoToStatus(
        err, absl::StrCat("cannot create output ", EscapeForLog(path), ": output directory ",
                          EscapeForLog(ParentDir(path)), " does not exist")));
  }
  return OutputError(ErrnoToStatus(err, absl::StrCat("cannot create output ", EscapeForLog(path))));
}

// ---------------------------------------------------------------------------
// Temporaries in progress, for removal from a signal handler. Slots are
// claimed with atomics; the handler only reads a path and calls unlink /
// openat / getdents64 / unlinkat (async-signal-safe system calls).

constexpr int kTempSlots = 64;
constexpr size_t kTempPathMax = 4096;
enum SlotState : int { kFree = 0, kFilling = 1, kFile = 2, kDir = 3, kFileBusy = 4, kDirBusy = 5 };
struct TempSlot {
  std::atomic<int> state{kFree};
  char path[kTempPathMax];
};
TempSlot g_temp_slots[kTempSlots];

int RegisterTemp(const std::string& path, bool directory) {
  if (path.size() >= kTempPathMax) return -1;  // not removed on a signal (still on error or exit)
  for (int i = 0; i < kTempSlots; ++i) {
    int expected = kFree;
    if (g_temp_slots[i].state.compare_exchange_strong(expected, kFilling)) {
      std::memcpy(g_temp_slots[i].path, path.c_str(), path.size() + 1);
      g_temp_slots[i].state.store(directory ? kDir : kFile);
      return i;
    }
  }
  return -1;
}

void UnregisterTemp(int slot) {
  if (slot < 0) return;
  for (;;) {
    int s = g_temp_slots[slot].state.load();
    // A signal handler is removing it (and will end the process): wait.
    if (s == kFileBusy || s == kDirBusy) continue;
    if (g_temp_slots[slot].state.compare_exchange_weak(s, kFree)) return;
  }
}

struct LinuxDirent64 {
  uint64_t d_ino;
  int64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[1];
};

// Removes `name` (relative to `parent_fd`) and, if it is a directory,
// everything below it, never following a symlink. Async-signal-safe.
void RemoveTreeAt(int parent_fd, const char* name, int depth) {
  if (unlinkat(parent_fd, name, 0) == 0 || (errno != EISDIR && errno != EPERM)) return;
  if (depth > 32) return;
  const int fd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return;
  alignas(8) char buf[4096];
  for (;;) {
    const long n = syscall(SYS_getdents64, fd, buf, sizeof buf);
    if (n <= 0) break;
    for (long off = 0; off < n;) {
      const auto* d = reinterpret_cast<const LinuxDirent64*>(buf + off);
      off += d->d_reclen;
      if (std::strcmp(d->d_name, ".") == 0 || std::strcmp(d->d_name, "..") == 0) continue;
      RemoveTreeAt(fd, d->d_name, depth + 1);
    }
  }
  close(fd);
  unlinkat(parent_fd, name, AT_REMOVEDIR);
}

void RemoveTempsOnSignal(int sig) {
  const int saved_errno = errno;
  // Files first (some live inside a temporary directory), then directories.
  for (TempSlot& slot : g_temp_slots) {
    int s = kFile;
    if (slot.state.compare_exchange_strong(s, kFileBusy)) unlink(slot.path);
  }
  for (TempSlot& slot : g_temp_slots) {
    int s = kDir;
    if (slot.state.compare_exchange_strong(s, kDirBusy)) RemoveTreeAt(AT_FDCWD, slot.path, 0);
  }
  errno = saved_errno;
  // SA_RESETHAND restored the default action; SA_NODEFER lets it act now.
  raise(sig);
}

// Parses "<pid>.<n>" (the tail of a temporary's name); 0 when it is not.
pid_t TempPid(absl::string_view tail) {
  std::vector<absl::string_view> parts = absl::StrSplit(tail, '.');
  uint64_t pid = 0, n = 0;
  if (parts.size() != 2 || parts[0].empty() || parts[1].empty()) return 0;
  for (absl::string_view p : parts) {
    for (char c : p) {
      if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return 0;
    }
  }
  if (!absl::SimpleAtoi(parts[0], &pid) || !absl::SimpleAtoi(parts[1], &n) || pid == 0 || pid > 0x3fffffff) {
    return 0;
  }
  return static_cast<pid_t>(pid);
}

}  // namespace

void InstallTempCleanupOnSignals() {
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGBUS}) {
    struct sigaction old {};
    if (sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;  // e.g. nohup
    struct sigaction sa {};
    sa.sa_handler = RemoveTempsOnSignal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND | SA_NODEFER;
    sigaction(sig, &sa, nullptr);
  }
}

int ReapStaleTemps(const std::string& output) {
  std::string base = std::filesystem::path(output).filename().string();
  if (base.empty()) {
    std::string trimmed = output;
    while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
    base = std::filesystem::path(trimmed).filename().string();
  }
  if (base.empty() || base == "." || base == "..") return 0;
  const int dir_fd = open(ParentDir(output).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return 0;
  DIR* dir = fdopendir(dir_fd);
  if (dir == nullptr) {
    close(dir_fd);
    return 0;
  }
  std::vector<std::string> stale;
  const uid_t me = geteuid();
  for (struct dirent* d = readdir(dir); d != nullptr; d = readdir(dir)) {
    absl::string_view name(d->d_name);
    // Ours: "<base>.tmp.<pid>.<n>" or "<base>.old.tmp.<pid>.<n>", nothing else.
    if (!absl::ConsumePrefix(&name, base)) continue;
    absl::ConsumePrefix(&name, ".old");
    if (!absl::ConsumePrefix(&name, kTempInfix)) continue;
    const pid_t pid = TempPid(name);
    if (pid == 0 || pid == getpid()) continue;
    struct stat st;
    if (fstatat(dir_fd, d->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    if (!(S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)) || st.st_uid != me) continue;
    if (kill(pid, 0) == 0 || errno != ESRCH) continue;  // alive (or not ours to ask): keep
    stale.emplace_back(d->d_name);
  }
  for (const std::string& name : stale) RemoveTreeAt(dir_fd, name.c_str(), 0);
  closedir(dir);  // closes dir_fd
  return static_cast<int>(stale.size());
}

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

absl::Status CheckOutputReplaceable(const std::string& path, bool overwrite, bool directory) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return absl::OkStatus();  // nothing there
  if (!overwrite) {
    return OutputError(absl::AlreadyExistsError(
        absl::StrCat(EscapeForLog(path), ": output exists (use --force to overwrite)")));
  }
  // A symlink is replaced itself (rename never follows it).
  if (!S_ISLNK(st.st_mode) && S_ISDIR(st.st_mode) != directory) {
    return OutputError(absl::InvalidArgumentError(absl::StrCat(
        EscapeForLog(path), ": output exists and is a ", S_ISDIR(st.st_mode) ? "directory" : "file",
        "; --force replaces a file with a file and a directory with a directory, nothing else")));
  }
  return absl::OkStatus();
}

absl::StatusOr<AtomicFile> AtomicFile::Create(const std::string& path, bool overwrite) {
  if (absl::Status s = CheckOutputReplaceable(path, overwrite, /*directory=*/false); !s.ok()) return s;
  std::string temp = TempName(path);
  // Registered before it exists, so a signal between creation and
  // registration cannot leave it behind (unlinking a missing name is harmless).
  const int slot = RegisterTemp(temp, /*directory=*/false);
  // Read-write: MapRange's shared mappings need it.
  int fd = open(temp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) {
    const int err = errno;
    UnregisterTemp(slot);
    return CreateError(err, path);
  }
  AtomicFile f(path, std::move(temp), fd, overwrite);
  f.slot_ = slot;
  return f;
}

AtomicFile::AtomicFile(std::string path, std::string temp_path, int fd, bool overwrite)
    : path_(std::move(path)), temp_path_(std::move(temp_path)), fd_(fd), overwrite_(overwrite) {}

AtomicFile::AtomicFile(AtomicFile&& other) noexcept
    : path_(std::move(other.path_)),
      temp_path_(std::move(other.temp_path_)),
      fd_(other.fd_),
      size_(other.size_),
      overwrite_(other.overwrite_),
      slot_(other.slot_) {
  other.fd_ = -1;
  other.temp_path_.clear();
  other.slot_ = -1;
}

AtomicFile& AtomicFile::operator=(AtomicFile&& other) noexcept {
  if (this != &other) {
    Abandon();
    path_ = std::move(other.path_);
    temp_path_ = std::move(other.temp_path_);
    fd_ = other.fd_;
    size_ = other.size_;
    overwrite_ = other.overwrite_;
    slot_ = other.slot_;
    other.fd_ = -1;
    other.temp_path_.clear();
    other.slot_ = -1;
  }
  return *this;
}

AtomicFile::~AtomicFile() { Abandon(); }

void AtomicFile::Abandon() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  if (!temp_path_.empty()) unlink(temp_path_.c_str());
  temp_path_.clear();
  UnregisterTemp(slot_);
  slot_ = -1;
}

absl::Status AtomicFile::WriteAt(uint64_t offset, absl::Span<const uint8_t> bytes) {
  if (fd_ < 0) return absl::FailedPreconditionError("file already closed");
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = pwrite(fd_, bytes.data() + done, bytes.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return OutputError(ErrnoToStatus(errno, absl::StrCat("write to ", EscapeForLog(temp_path_))));
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
  if (fsync(fd_) != 0) return OutputError(ErrnoToStatus(errno, absl::StrCat("fsync ", EscapeForLog(temp_path_))));
  if (close(fd_) != 0) {
    fd_ = -1;
    return OutputError(ErrnoToStatus(errno, absl::StrCat("close ", EscapeForLog(temp_path_))));
  }
  fd_ = -1;
  if (!overwrite_ && PathExists(path_)) {
    return OutputError(absl::AlreadyExistsError(absl::StrCat(EscapeForLog(path_), ": output appeared while writing")));
  }
  if (rename(temp_path_.c_str(), path_.c_str()) != 0) {
    return OutputError(ErrnoToStatus(errno, absl::StrCat("rename to ", EscapeForLog(path_))));
  }
  temp_path_.clear();
  UnregisterTemp(slot_);
  slot_ = -1;
  return FsyncParent(path_);
}

ReadOnlyMapping ReadOnlyMapping::Open(const std::string& path, uint64_t expected_size) {
  ReadOnlyMapping m;
  if (expected_size == 0 || expected_size > std::numeric_limits<size_t>::max()) return m;
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);  // never waits on a FIFO
  if (fd < 0) return m;
  struct stat st;
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) == expected_size) {
    void* p = mmap(nullptr, static_cast<size_t>(expected_size), PROT_READ, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED) {
      m.data_ = static_cast<const uint8_t*>(p);
      m.size_ = expected_size;
    }
  }
  close(fd);
  return m;
}

ReadOnlyMapping::ReadOnlyMapping(ReadOnlyMapping&& other) noexcept : data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

ReadOnlyMapping::~ReadOnlyMapping() {
  if (data_ != nullptr) munmap(const_cast<uint8_t*>(data_), static_cast<size_t>(size_));
}

void ReadOnlyMapping::WillNeed(uint64_t offset, uint64_t size) const { Advise(offset, size, MADV_WILLNEED); }

void ReadOnlyMapping::Release(uint64_t offset, uint64_t size) const { Advise(offset, size, MADV_DONTNEED); }

void ReadOnlyMapping::Advise(uint64_t offset, uint64_t size, int advice) const {
  if (data_ == nullptr || size == 0 || offset >= size_) return;
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t start = offset / page * page;
  const uint64_t end = std::min(size_, offset + size);
  madvise(const_cast<uint8_t*>(data_) + start, static_cast<size_t>(end - start), advice);
}

absl::Status AtomicFile::Resize(uint64_t size) {
  if (fd_ < 0) return absl::FailedPreconditionError("file already closed");
  if (size > static_cast<uint64_t>(std::numeric_limits<off_t>::max())) {
    return OutputError(absl::InvalidArgumentError(absl::StrCat(EscapeForLog(temp_path_), ": size ", size, " is too large")));
  }
  while (ftruncate(fd_, static_cast<off_t>(size)) != 0) {
    if (errno == EINTR) continue;
    return OutputError(ErrnoToStatus(errno, absl::StrCat("resize ", EscapeForLog(temp_path_))));
  }
  size_ = size;
  return absl::OkStatus();
}

absl::Status AtomicFile::Reserve(uint64_t offset, uint64_t length) {
  if (fd_ < 0) return absl::FailedPreconditionError("file already closed");
  if (length == 0) return absl::OkStatus();
  if (offset > static_cast<uint64_t>(std::numeric_limits<off_t>::max()) - length) {
    return OutputError(absl::InvalidArgumentError(absl::StrCat(EscapeForLog(temp_path_), ": range too large")));
  }
  while (fallocate(fd_, 0, static_cast<off_t>(offset), static_cast<off_t>(length)) != 0) {
    const int err = errno;
    if (err == EINTR) continue;
    if (err == EOPNOTSUPP || err == ENOSYS) {
      return absl::UnimplementedError(absl::StrCat(EscapeForLog(temp_path_), ": cannot reserve space here"));
    }
    return OutputError(ErrnoToStatus(err, absl::StrCat("write to ", EscapeForLog(temp_path_))));
  }
  size_ = std::max<uint64_t>(size_, offset + length);
  return absl::OkStatus();
}

absl::StatusOr<MappedRange> AtomicFile::MapRange(uint64_t offset, uint64_t length) {
  if (fd_ < 0) return absl::FailedPreconditionError("file already closed");
  if (offset > size_ || length > size_ - offset) {
    return absl::OutOfRangeError(absl::StrCat(EscapeForLog(temp_path_), ": mapping past the end"));
  }
  MappedRange m;
  if (length == 0) return m;
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t start = offset / page * page;
  const size_t map_size = static_cast<size_t>(offset + length - start);
  void* p = mmap(nullptr, map_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, static_cast<off_t>(start));
  if (p == MAP_FAILED) {
    return absl::UnimplementedError(
        absl::StrCat(EscapeForLog(temp_path_), ": cannot map for writing: ", std::strerror(errno)));
  }
  m.map_ = p;
  m.map_size_ = map_size;
  m.data_ = static_cast<uint8_t*>(p) + (offset - start);
  m.size_ = static_cast<size_t>(length);
  return m;
}

MappedRange::MappedRange(MappedRange&& other) noexcept
    : map_(other.map_), map_size_(other.map_size_), data_(other.data_), size_(other.size_) {
  other.map_ = nullptr;
  other.map_size_ = other.size_ = 0;
  other.data_ = nullptr;
}

MappedRange& MappedRange::operator=(MappedRange&& other) noexcept {
  if (this != &other) {
    Reset();
    std::swap(map_, other.map_);
    std::swap(map_size_, other.map_size_);
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
  }
  return *this;
}

void MappedRange::Reset() {
  if (map_ != nullptr) munmap(map_, map_size_);
  map_ = nullptr;
  map_size_ = size_ = 0;
  data_ = nullptr;
}

absl::StatusOr<AtomicDirectory> AtomicDirectory::Create(const std::string& path, bool overwrite) {
  if (absl::Status s = CheckOutputReplaceable(path, overwrite, /*directory=*/true); !s.ok()) return s;
  std::string temp = TempName(path);
  const int slot = RegisterTemp(temp, /*directory=*/true);  // before it exists, as above
  if (mkdir(temp.c_str(), 0755) != 0) {
    const int err = errno;
    UnregisterTemp(slot);
    return CreateError(err, path);
  }
  AtomicDirectory d(path, std::move(temp), overwrite);
  d.slot_ = slot;
  return d;
}

AtomicDirectory::AtomicDirectory(std::string path, std::string temp_path, bool overwrite)
    : path_(std::move(path)), temp_path_(std::move(temp_path)), overwrite_(overwrite) {}

AtomicDirectory::AtomicDirectory(AtomicDirectory&& other) noexcept
    : path_(std::move(other.path_)),
      temp_path_(std::move(other.temp_path_)),
      overwrite_(other.overwrite_),
      committed_(other.committed_),
      slot_(other.slot_) {
  other.committed_ = true;
  other.slot_ = -1;
}

AtomicDirectory::~AtomicDirectory() {
  if (!committed_ && !temp_path_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(temp_path_, ec);
  }
  UnregisterTemp(slot_);
}

absl::Status AtomicDirectory::Commit() {
  std::error_code ec;
  if (PathExists(path_)) {
    if (!overwrite_) {
      return OutputError(absl::AlreadyExistsError(absl::StrCat(EscapeForLog(path_), ": output appeared while writing")));
    }
    // Swap the new tree in atomically: the old one is then at temp_path_,
    // still registered for signal cleanup, and is deleted.
    if (renameat2(AT_FDCWD, temp_path_.c_str(), AT_FDCWD, path_.c_str(), RENAME_EXCHANGE) == 0) {
      std::filesystem::remove_all(temp_path_, ec);
      committed_ = true;
      UnregisterTemp(slot_);
      slot_ = -1;
      return FsyncParent(path_);
    }
    // No RENAME_EXCHANGE here (old kernel or filesystem): move the old one
    // aside, put the new one in, then delete the old one.
    std::string old = TempName(path_ + ".old");
    if (rename(path_.c_str(), old.c_str()) != 0) {
      return OutputError(ErrnoToStatus(errno, absl::StrCat("rename ", EscapeForLog(path_))));
    }
    if (rename(temp_path_.c_str(), path_.c_str()) != 0) {
      int err = errno;
      rename(old.c_str(), path_.c_str());
      return OutputError(ErrnoToStatus(err, absl::StrCat("rename to ", EscapeForLog(path_))));
    }
    // The old tree, until it is gone.
    UnregisterTemp(slot_);
    slot_ = -1;
    const int old_slot = RegisterTemp(old, /*directory=*/true);
    std::filesystem::remove_all(old, ec);
    UnregisterTemp(old_slot);
  } else if (rename(temp_path_.c_str(), path_.c_str()) != 0) {
    return OutputError(ErrnoToStatus(errno, absl::StrCat("rename to ", EscapeForLog(path_))));
  }
  committed_ = true;
  UnregisterTemp(slot_);
  slot_ = -1;
  return FsyncParent(path_);
}

absl::Status CopyFile(const std::string& from, const std::string& to) {
  // Through OpenFileSource: a FIFO or device swapped in is refused, never read.
  auto source = OpenFileSource(from);
  if (!source.ok()) return source.status();
  const int fd = open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return CreateError(errno, to);
  std::vector<uint8_t> buf(std::min<uint64_t>((*source)->size(), 4u << 20));
  absl::Status status;
  for (uint64_t off = 0; off < (*source)->size() && status.ok(); off += buf.size()) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), (*source)->size() - off));
    status = (*source)->ReadAt(off, absl::MakeSpan(buf.data(), n));
    for (size_t done = 0; status.ok() && done < n;) {
      const ssize_t w = write(fd, buf.data() + done, n - done);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        status = OutputError(ErrnoToStatus(errno, absl::StrCat("write to ", EscapeForLog(to))));
        break;
      }
      done += static_cast<size_t>(w);
    }
  }
  if (close(fd) != 0 && status.ok()) status = OutputError(ErrnoToStatus(errno, absl::StrCat("close ", EscapeForLog(to))));
  if (!status.ok()) unlink(to.c_str());
  return status;
}

}  // namespace bigsmall
