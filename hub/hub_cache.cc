#include "hub/hub_cache.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "codec/status_util.h"
#include "hub/repo_ref.h"

namespace bigsmall::hub {
namespace {

constexpr size_t kMaxRelPathBytes = 4096;
constexpr size_t kMaxSegmentBytes = 255;
constexpr int kDirMode = 0777;   // less the umask, as os.makedirs
constexpr int kFileMode = 0666;  // less the umask, as open() in Python
constexpr int kLockMode = 0664;  // huggingface_hub's WeakFileLock

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~Fd() { Reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void Reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

bool IsLowerHex(absl::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

bool IsEtag(absl::string_view etag) {
  return (etag.size() == 40 || etag.size() == 64) && IsLowerHex(etag);
}

absl::Status CheckRepoIdArg(absl::string_view repo_id) {
  absl::StatusOr<RepoRef> ref = ParseRepoRef(repo_id);
  if (!ref.ok()) return ref.status();
  if (ref->revision_given || ref->repo_id != repo_id) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", EscapeForLog(repo_id), "' is not a plain repo id"));
  }
  return absl::OkStatus();
}

absl::Status CheckEtagArg(absl::string_view etag) {
  if (!IsEtag(etag)) {
    return absl::InvalidArgumentError(
        absl::StrCat("blob id '", EscapeForLog(etag), "' is not 40 or 64 lowercase hex digits"));
  }
  return absl::OkStatus();
}

absl::Status CheckCommitArg(absl::string_view commit) {
  if (!IsCommitHash(commit)) {
    return absl::InvalidArgumentError(
        absl::StrCat("commit '", EscapeForLog(commit), "' is not 40 lowercase hex digits"));
  }
  return absl::OkStatus();
}

// A relative path from the Hub or a user (a file in a repo, a revision):
// '/'-separated, non-empty segments, none "." or "..", no NUL, not absolute.
absl::Status CheckRelPath(absl::string_view path, absl::string_view what) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " '", EscapeForLog(path), "' is refused: ", why));
  };
  if (path.empty()) return bad("it is empty");
  if (path.size() > kMaxRelPathBytes) return bad("it is too long");
  if (path.find('\0') != absl::string_view::npos) return bad("it contains a NUL byte");
  if (path.front() == '/') return bad("it is absolute");
  for (absl::string_view seg : absl::StrSplit(path, '/')) {
    if (seg.empty()) return bad("it has an empty segment");
    if (seg == "." || seg == "..") return bad("it has a '.' or '..' segment");
    if (seg.size() > kMaxSegmentBytes) return bad("a segment is too long");
  }
  return absl::OkStatus();
}

std::vector<std::string> Segments(absl::string_view path) { return absl::StrSplit(path, '/'); }

std::string RandomSuffix() {
  uint8_t bytes[8];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      // Fall back on something unique enough within this host.
      const uint64_t t =
          static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
          (static_cast<uint64_t>(getpid()) << 40);
      std::memcpy(bytes, &t, sizeof(bytes));
      break;
    }
    got += static_cast<size_t>(n);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (uint8_t b : bytes) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 0xf]);
  }
  return out;
}

// mkdir -p of the cache root itself (the user's: a symlink there is allowed).
absl::StatusOr<Fd> OpenRoot(const std::string& root, bool create) {
  if (root.empty()) return absl::InvalidArgumentError("the Hub cache directory is not set");
  if (create) {
    for (size_t i = 1; i <= root.size(); ++i) {
      if (i == root.size() || root[i] == '/') {
        const std::string prefix = root.substr(0, i);
        if (mkdir(prefix.c_str(), kDirMode) != 0 && errno != EEXIST) {
          return ErrnoToStatus(errno, absl::StrCat("mkdir ", EscapeForLog(prefix)));
        }
      }
    }
  }
  Fd fd(open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoToStatus(errno, absl::StrCat("open ", EscapeForLog(root)));
  return fd;
}

// Opens (creating when asked) each directory of `segments` under `base`,
// never following a symlink.
absl::StatusOr<Fd> OpenDirs(int base, const std::vector<std::string>& segments, bool create,
                            absl::string_view where) {
  Fd current;
  int dir = base;
  for (const std::string& seg : segments) {
    int fd = openat(dir, seg.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && create) {
      if (mkdirat(dir, seg.c_str(), kDirMode) != 0 && errno != EEXIST) {
        return ErrnoToStatus(errno, absl::StrCat("mkdir in ", EscapeForLog(where)));
      }
      fd = openat(dir, seg.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    }
    if (fd < 0) {
      const int err = errno;
      // O_NOFOLLOW on a symlink: ELOOP; O_DIRECTORY on one: ENOTDIR.
      return ErrnoToStatus(
          err, absl::StrCat("open directory '", EscapeForLog(seg), "' in ", EscapeForLog(where)));
    }
    current = Fd(fd);
    dir = fd;
  }
  if (!current.valid()) {
    int fd = fcntl(base, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return ErrnoToStatus(errno, "dup");
    current = Fd(fd);
  }
  return current;
}

std::string RepoFolderName(absl::string_view repo_id) {
  std::string out = "models--";
  for (char c : repo_id) {
    if (c == '/') {
      out += "--";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

absl::Status WriteAll(int fd, const uint8_t* data, size_t size, uint64_t offset,
                      absl::string_view what) {
  while (size > 0) {
    ssize_t n = pwrite(fd, data, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, absl::StrCat("write ", what));
    }
    data += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

// Reads a small file (a ref) under `dir`, nullopt when absent or odd.
std::optional<std::string> ReadSmallFile(int dir, const std::string& name, size_t max) {
  Fd fd(openat(dir, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) return std::nullopt;
  struct stat st;
  if (fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
  std::string out(max + 1, '\0');
  size_t got = 0;
  while (got < out.size()) {
    ssize_t n = read(fd.get(), out.data() + got, out.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      return std::nullopt;
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  if (got > max) return std::nullopt;
  out.resize(got);
  return out;
}

// The mode a new file gets in `dir` (0666 less the umask, read without
// umask(2), which is not thread-safe): huggingface_hub's _chmod_and_move.
std::optional<mode_t> ProbeFileMode(int dir) {
  const std::string name = "tmp_" + RandomSuffix();
  Fd fd(openat(dir, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, kFileMode));
  if (!fd.valid()) return std::nullopt;
  struct stat st;
  const bool ok = fstat(fd.get(), &st) == 0;
  unlinkat(dir, name.c_str(), 0);
  if (!ok) return std::nullopt;
  return st.st_mode & 07777;
}

std::string ToHex(const unsigned char* data, size_t size) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(size * 2);
  for (size_t i = 0; i < size; ++i) {
    out.push_back(kHex[data[i] >> 4]);
    out.push_back(kHex[data[i] & 0xf]);
  }
  return out;
}

struct MdCtxFree {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};

}  // namespace

// ---------------------------------------------------------------------------
// BlobWriter

struct HubCache::BlobWriter::State {
  std::string blob_path;
  std::string etag;
  std::string incomplete_name;
  uint64_t expected_size = 0;
  uint64_t offset = 0;
  bool complete = false;
  bool failed = false;
  Fd lock_fd;
  Fd blobs_fd;
  Fd file_fd;
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> md;

  absl::Status Fail(absl::Status status) {
    failed = true;
    file_fd.Reset();
    if (blobs_fd.valid()) unlinkat(blobs_fd.get(), incomplete_name.c_str(), 0);
    lock_fd.Reset();  // closing releases the flock
    return status;
  }
  absl::Status Hash(const uint8_t* data, size_t size) {
    if (EVP_DigestUpdate(md.get(), data, size) != 1) {
      return absl::InternalError("EVP_DigestUpdate failed");
    }
    return absl::OkStatus();
  }
};

HubCache::BlobWriter::BlobWriter(std::unique_ptr<State> state) : state_(std::move(state)) {}
HubCache::BlobWriter::~BlobWriter() = default;  // keeps the .incomplete; unlocks

bool HubCache::BlobWriter::complete() const { return state_->complete; }
uint64_t HubCache::BlobWriter::resume_offset() const { return state_->offset; }

absl::Status HubCache::BlobWriter::Append(absl::Span<const uint8_t> bytes) {
  State& s = *state_;
  if (s.complete) return absl::FailedPreconditionError("the blob is already complete");
  if (s.failed) return absl::FailedPreconditionError("the blob writer failed before");
  if (bytes.size() > s.expected_size - s.offset) {
    return s.Fail(absl::DataLossError(absl::StrCat("blob ", s.etag, ": more bytes than its size ",
                                                   s.expected_size, " (", s.offset + bytes.size(),
                                                   " so far)")));
  }
  absl::Status st =
      WriteAll(s.file_fd.get(), bytes.data(), bytes.size(), s.offset, EscapeForLog(s.blob_path));
  if (!st.ok()) {
    s.failed = true;  // the .incomplete stays a prefix: a new writer resumes it
    s.file_fd.Reset();
    s.lock_fd.Reset();
    return st;
  }
  st = s.Hash(bytes.data(), bytes.size());
  if (!st.ok()) return s.Fail(st);
  s.offset += bytes.size();
  return absl::OkStatus();
}

absl::StatusOr<std::string> HubCache::BlobWriter::Commit() {
  State& s = *state_;
  if (s.complete) return s.blob_path;
  if (s.failed) return absl::FailedPreconditionError("the blob writer failed before");
  if (s.offset != s.expected_size) {
    return s.Fail(absl::DataLossError(absl::StrCat("blob ", s.etag, ": got ", s.offset,
                                                   " bytes, its size is ", s.expected_size)));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_size = 0;
  if (EVP_DigestFinal_ex(s.md.get(), digest, &digest_size) != 1) {
    return s.Fail(absl::InternalError("EVP_DigestFinal_ex failed"));
  }
  const std::string actual = ToHex(digest, digest_size);
  if (actual != s.etag) {
    return s.Fail(absl::DataLossError(absl::StrCat(
        "blob ", s.etag, ": the downloaded bytes hash to ", actual,
        s.etag.size() == 64 ? " (sha256)" : " (git blob sha1)", "; nothing was kept")));
  }
  if (std::optional<mode_t> mode = ProbeFileMode(s.blobs_fd.get())) {
    fchmod(s.file_fd.get(), *mode);  // best effort, like huggingface_hub
  }
  if (fsync(s.file_fd.get()) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("fsync ", EscapeForLog(s.blob_path)));
  }
  if (renameat(s.blobs_fd.get(), s.incomplete_name.c_str(), s.blobs_fd.get(), s.etag.c_str()) !=
      0) {
    return ErrnoToStatus(errno, absl::StrCat("rename to ", EscapeForLog(s.blob_path)));
  }
  if (fsync(s.blobs_fd.get()) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("fsync the directory of ", EscapeForLog(s.blob_path)));
  }
  s.file_fd.Reset();
  s.lock_fd.Reset();
  s.complete = true;
  return s.blob_path;
}

// ---------------------------------------------------------------------------
// HubCache

HubCache::HubCache(std::string root) : root_(std::move(root)) {
  while (root_.size() > 1 && root_.back() == '/') root_.pop_back();
}

std::string HubCache::RepoDir(absl::string_view repo_id) const {
  return absl::StrCat(root_, "/", RepoFolderName(repo_id));
}

std::optional<std::string> HubCache::CachedCommit(absl::string_view repo_id,
                                                  absl::string_view revision) const {
  if (!CheckRepoIdArg(repo_id).ok() || !CheckRelPath(revision, "revision").ok()) {
    return std::nullopt;
  }
  absl::StatusOr<Fd> root = OpenRoot(root_, false);
  if (!root.ok()) return std::nullopt;
  absl::StatusOr<Fd> repo = OpenDirs(root->get(), {RepoFolderName(repo_id)}, false, root_);
  if (!repo.ok()) return std::nullopt;
  if (IsCommitHash(revision)) {
    absl::StatusOr<Fd> snap =
        OpenDirs(repo->get(), {"snapshots", std::string(revision)}, false, root_);
    if (snap.ok()) return std::string(revision);
  }
  std::vector<std::string> segs = Segments(revision);
  const std::string leaf = segs.back();
  segs.pop_back();
  segs.insert(segs.begin(), "refs");
  absl::StatusOr<Fd> dir = OpenDirs(repo->get(), segs, false, root_);
  if (!dir.ok()) return std::nullopt;
  std::optional<std::string> text = ReadSmallFile(dir->get(), leaf, 128);
  if (!text) return std::nullopt;
  std::string commit(absl::StripAsciiWhitespace(*text));
  if (!IsCommitHash(commit)) return std::nullopt;
  return commit;
}

absl::Status HubCache::WriteRef(absl::string_view repo_id, absl::string_view revision,
                                absl::string_view commit) {
  absl::Status st = CheckRepoIdArg(repo_id);
  if (!st.ok()) return st;
  st = CheckRelPath(revision, "revision");
  if (!st.ok()) return st;
  st = CheckCommitArg(commit);
  if (!st.ok()) return st;
  if (revision == commit) return absl::OkStatus();  // as huggingface_hub: no ref for a commit
  absl::StatusOr<Fd> root = OpenRoot(root_, true);
  if (!root.ok()) return root.status();
  std::vector<std::string> segs = Segments(revision);
  const std::string leaf = segs.back();
  segs.pop_back();
  segs.insert(segs.begin(), "refs");
  segs.insert(segs.begin(), RepoFolderName(repo_id));
  absl::StatusOr<Fd> dir = OpenDirs(root->get(), segs, true, root_);
  if (!dir.ok()) return dir.status();
  if (std::optional<std::string> old = ReadSmallFile(dir->get(), leaf, 128);
      old && *old == commit) {
    return absl::OkStatus();  // unchanged: no write (a read-only cache still works)
  }
  const std::string tmp = absl::StrCat(leaf, ".", RandomSuffix(), ".tmp");
  Fd fd(openat(dir->get(), tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
               kFileMode));
  if (!fd.valid()) {
    return ErrnoToStatus(errno, absl::StrCat("create a ref in ", EscapeForLog(RepoDir(repo_id))));
  }
  st = WriteAll(fd.get(), reinterpret_cast<const uint8_t*>(commit.data()), commit.size(), 0,
                "a ref");
  if (st.ok() && fsync(fd.get()) != 0) st = ErrnoToStatus(errno, "fsync a ref");
  if (st.ok() && renameat(dir->get(), tmp.c_str(), dir->get(), leaf.c_str()) != 0) {
    st = ErrnoToStatus(errno, absl::StrCat("rename the ref '", EscapeForLog(revision), "'"));
  }
  if (!st.ok()) {
    unlinkat(dir->get(), tmp.c_str(), 0);
    return st;
  }
  fsync(dir->get());
  return absl::OkStatus();
}

std::optional<std::string> HubCache::BlobFile(absl::string_view repo_id,
                                              absl::string_view etag) const {
  if (!CheckRepoIdArg(repo_id).ok() || !IsEtag(etag)) return std::nullopt;
  absl::StatusOr<Fd> root = OpenRoot(root_, false);
  if (!root.ok()) return std::nullopt;
  absl::StatusOr<Fd> blobs =
      OpenDirs(root->get(), {RepoFolderName(repo_id), "blobs"}, false, root_);
  if (!blobs.ok()) return std::nullopt;
  struct stat st;
  if (fstatat(blobs->get(), std::string(etag).c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 ||
      !S_ISREG(st.st_mode)) {
    return std::nullopt;
  }
  return absl::StrCat(RepoDir(repo_id), "/blobs/", etag);
}

std::optional<std::string> HubCache::SnapshotFile(absl::string_view repo_id,
                                                  absl::string_view commit,
                                                  absl::string_view path) const {
  if (!CheckRepoIdArg(repo_id).ok() || !IsCommitHash(commit) ||
      !CheckRelPath(path, "file path").ok()) {
    return std::nullopt;
  }
  absl::StatusOr<Fd> root = OpenRoot(root_, false);
  if (!root.ok()) return std::nullopt;
  absl::StatusOr<Fd> repo = OpenDirs(root->get(), {RepoFolderName(repo_id)}, false, root_);
  if (!repo.ok()) return std::nullopt;
  std::vector<std::string> segs = Segments(path);
  const std::string leaf = segs.back();
  segs.pop_back();
  const size_t depth = segs.size();
  segs.insert(segs.begin(), std::string(commit));
  segs.insert(segs.begin(), "snapshots");
  absl::StatusOr<Fd> dir = OpenDirs(repo->get(), segs, false, root_);
  if (!dir.ok()) return std::nullopt;
  struct stat st;
  if (fstatat(dir->get(), leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return std::nullopt;
  const std::string result = absl::StrCat(RepoDir(repo_id), "/snapshots/", commit, "/", path);
  if (S_ISREG(st.st_mode)) return result;  // a copy (caches without symlinks)
  if (!S_ISLNK(st.st_mode)) return std::nullopt;
  char target[512];
  ssize_t n = readlinkat(dir->get(), leaf.c_str(), target, sizeof(target));
  if (n <= 0 || static_cast<size_t>(n) >= sizeof(target)) return std::nullopt;
  absl::string_view link(target, static_cast<size_t>(n));
  // Only huggingface_hub's own form: "../" * (2 + depth) + "blobs/<etag>".
  for (size_t i = 0; i < depth + 2; ++i) {
    if (!absl::ConsumePrefix(&link, "../")) return std::nullopt;
  }
  if (!absl::ConsumePrefix(&link, "blobs/") || !IsEtag(link)) return std::nullopt;
  absl::StatusOr<Fd> blobs = OpenDirs(repo->get(), {"blobs"}, false, root_);
  if (!blobs.ok()) return std::nullopt;
  if (fstatat(blobs->get(), std::string(link).c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 ||
      !S_ISREG(st.st_mode)) {
    return std::nullopt;
  }
  return result;
}

absl::Status HubCache::LinkSnapshot(absl::string_view repo_id, absl::string_view commit,
                                    absl::string_view path, absl::string_view etag) {
  absl::Status st = CheckRepoIdArg(repo_id);
  if (!st.ok()) return st;
  st = CheckCommitArg(commit);
  if (!st.ok()) return st;
  st = CheckRelPath(path, "file path");
  if (!st.ok()) return st;
  st = CheckEtagArg(etag);
  if (!st.ok()) return st;
  absl::StatusOr<Fd> root = OpenRoot(root_, true);
  if (!root.ok()) return root.status();
  std::vector<std::string> segs = Segments(path);
  const std::string leaf = segs.back();
  segs.pop_back();
  std::string target;
  for (size_t i = 0; i < segs.size() + 2; ++i) target += "../";
  absl::StrAppend(&target, "blobs/", etag);
  segs.insert(segs.begin(), std::string(commit));
  segs.insert(segs.begin(), "snapshots");
  segs.insert(segs.begin(), RepoFolderName(repo_id));
  absl::StatusOr<Fd> dir = OpenDirs(root->get(), segs, true, root_);
  if (!dir.ok()) return dir.status();
  char old[512];
  ssize_t n = readlinkat(dir->get(), leaf.c_str(), old, sizeof(old));
  if (n > 0 && absl::string_view(old, static_cast<size_t>(n)) == target) {
    return absl::OkStatus();
  }
  const std::string tmp = absl::StrCat(".", leaf.substr(0, 200), ".", RandomSuffix(), ".tmp");
  if (symlinkat(target.c_str(), dir->get(), tmp.c_str()) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("symlink ", EscapeForLog(path), " in ",
                                             EscapeForLog(RepoDir(repo_id))));
  }
  if (renameat(dir->get(), tmp.c_str(), dir->get(), leaf.c_str()) != 0) {
    const int err = errno;
    unlinkat(dir->get(), tmp.c_str(), 0);
    return ErrnoToStatus(err, absl::StrCat("rename the link of ", EscapeForLog(path), " in ",
                                           EscapeForLog(RepoDir(repo_id))));
  }
  fsync(dir->get());
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<HubCache::BlobWriter>> HubCache::BeginBlob(absl::string_view repo_id,
                                                                          absl::string_view etag,
                                                                          uint64_t expected_size,
                                                                          int lock_timeout_ms) {
  absl::Status st = CheckRepoIdArg(repo_id);
  if (!st.ok()) return st;
  st = CheckEtagArg(etag);
  if (!st.ok()) return st;
  if (expected_size > static_cast<uint64_t>(std::numeric_limits<off_t>::max())) {
    return absl::InvalidArgumentError("blob size out of range");
  }
  const std::string folder = RepoFolderName(repo_id);
  const std::string etag_s(etag);
  absl::StatusOr<Fd> root = OpenRoot(root_, true);
  if (!root.ok()) return root.status();

  // As huggingface_hub: backup tools skip the cache (best effort).
  static constexpr char kCacheDirTag[] =
      "Signature: 8a477f597d28d172789f06886806bc55\n"
      "# This file is a cache directory tag created by huggingface_hub.\n"
      "# For information about cache directory tags, see:\n"
      "#\thttps://bford.info/cachedir/\n";
  if (Fd tag(openat(root->get(), "CACHEDIR.TAG",
                    O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, kFileMode));
      tag.valid()) {
    WriteAll(tag.get(), reinterpret_cast<const uint8_t*>(kCacheDirTag), sizeof(kCacheDirTag) - 1, 0,
             "CACHEDIR.TAG")
        .IgnoreError();
  }

  auto state = std::make_unique<BlobWriter::State>();
  state->etag = etag_s;
  state->expected_size = expected_size;
  state->blob_path = absl::StrCat(RepoDir(repo_id), "/blobs/", etag);
  state->incomplete_name = etag_s + ".incomplete";

  // The lock: <root>/.locks/models--owner--name/<etag>.lock, flock()ed.
  absl::StatusOr<Fd> locks = OpenDirs(root->get(), {".locks", folder}, true, root_);
  if (!locks.ok()) return locks.status();
  const std::string lock_name = etag_s + ".lock";
  int lfd = openat(locks->get(), lock_name.c_str(),
                   O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, kLockMode);
  if (lfd >= 0) {
    fchmod(lfd, kLockMode);  // group-writable, like huggingface_hub (best effort)
  } else if (errno == EEXIST) {
    lfd = openat(locks->get(), lock_name.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
  }
  if (lfd < 0) {
    return ErrnoToStatus(
        errno, absl::StrCat("open the lock of blob ", etag_s, " in ", EscapeForLog(root_)));
  }
  state->lock_fd = Fd(lfd);
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(std::max(0, lock_timeout_ms));
  auto wait = std::chrono::milliseconds(1);
  while (flock(lfd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EINTR) continue;
    if (errno != EWOULDBLOCK) {
      return ErrnoToStatus(errno, absl::StrCat("flock the lock of blob ", etag_s));
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return absl::UnavailableError(absl::StrCat("blob ", etag_s, " of ", EscapeForLog(repo_id),
                                                 ": another download still holds ",
                                                 EscapeForLog(root_), "/.locks/", folder, "/",
                                                 lock_name, " after ", lock_timeout_ms, " ms"));
    }
    // Waiting on another process (flock has no timed wait).
    std::this_thread::sleep_for(wait);
    wait = std::min(wait * 2, std::chrono::milliseconds(50));
  }

  absl::StatusOr<Fd> blobs = OpenDirs(root->get(), {folder, "blobs"}, true, root_);
  if (!blobs.ok()) return blobs.status();
  state->blobs_fd = std::move(*blobs);
  struct stat sb;
  if (fstatat(state->blobs_fd.get(), etag_s.c_str(), &sb, AT_SYMLINK_NOFOLLOW) == 0 &&
      S_ISREG(sb.st_mode) && static_cast<uint64_t>(sb.st_size) == expected_size) {
    state->complete = true;
    state->offset = expected_size;
    state->lock_fd.Reset();
    return std::unique_ptr<BlobWriter>(new BlobWriter(std::move(state)));
  }

  int ffd = openat(state->blobs_fd.get(), state->incomplete_name.c_str(),
                   O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, kFileMode);
  if (ffd < 0) {
    return ErrnoToStatus(errno,
                         absl::StrCat("open ", EscapeForLog(state->blob_path), ".incomplete"));
  }
  state->file_fd = Fd(ffd);
  if (fstat(ffd, &sb) != 0) return ErrnoToStatus(errno, "fstat a .incomplete blob");
  if (!S_ISREG(sb.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(EscapeForLog(state->blob_path), ".incomplete is not a regular file"));
  }
  uint64_t have = static_cast<uint64_t>(sb.st_size);
  if (have > expected_size) {
    if (ftruncate(ffd, 0) != 0) return ErrnoToStatus(errno, "truncate a .incomplete blob");
    have = 0;
  }

  state->md.reset(EVP_MD_CTX_new());
  const EVP_MD* md = etag_s.size() == 64 ? EVP_sha256() : EVP_sha1();
  if (!state->md || EVP_DigestInit_ex(state->md.get(), md, nullptr) != 1) {
    return absl::InternalError("EVP_DigestInit_ex failed");
  }
  if (etag_s.size() == 40) {  // a git blob id: sha1("blob <size>\0" + bytes)
    const std::string header = absl::StrCat("blob ", expected_size, std::string(1, '\0'));
    st = state->Hash(reinterpret_cast<const uint8_t*>(header.data()), header.size());
    if (!st.ok()) return st;
  }
  // The prefix already there (resumed) goes into the hash first.
  std::vector<uint8_t> buf(std::min<uint64_t>(have, 1u << 20));
  uint64_t pos = 0;
  while (pos < have) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(buf.size(), have - pos));
    ssize_t n = pread(ffd, buf.data(), want, static_cast<off_t>(pos));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, "read a .incomplete blob");
    }
    if (n == 0) {  // shrank under us: keep what was read
      have = pos;
      if (ftruncate(ffd, static_cast<off_t>(have)) != 0) {
        return ErrnoToStatus(errno, "truncate a .incomplete blob");
      }
      break;
    }
    st = state->Hash(buf.data(), static_cast<size_t>(n));
    if (!st.ok()) return st;
    pos += static_cast<uint64_t>(n);
  }
  state->offset = have;
  return std::unique_ptr<BlobWriter>(new BlobWriter(std::move(state)));
}

}  // namespace bigsmall::hub
