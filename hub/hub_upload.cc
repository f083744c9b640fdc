#include "hub/hub_upload.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <stdexcept>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "codec/status_macros.h"
#include "codec/status_util.h"
#include "hub/http.h"
#include "hub/hub_parse.h"
#include "hub/repo_ref.h"
#include "nlohmann/json.hpp"

namespace bigsmall::hub {
namespace {

using json = nlohmann::json;

// huggingface_hub asks the preupload and LFS batch endpoints about 256 files
// at a time (UPLOAD_BATCH_MAX_NUM_FILES); so do we.
constexpr size_t kBatchFiles = 256;
// Bounds on what a directory and the Hub's answers may make us hold.
constexpr int kMaxDepth = 64;
constexpr size_t kMaxFiles = 100'000;
// The preupload sample: the first 512 bytes of each file.
constexpr size_t kSampleBytes = 512;
// Hashing reads this much at a time.
constexpr size_t kReadBytes = 1 << 20;
// A file the Hub takes inline (base64 in the commit): the Hub says "regular"
// only for small files (it keeps binaries and anything over 10 MB in LFS).
constexpr uint64_t kMaxRegularBytes = 64ull << 20;
constexpr uint64_t kMaxCommitBodyBytes = 1ull << 30;
// A "basic" LFS transfer is one PUT of the whole object: up to this size it
// is read into memory, beyond it is streamed from the file as libcurl sends
// it (HttpRequest::body_reader), so memory stays bounded whatever the size.
// (S3 takes at most 5 GiB in one PUT; the Hub answers "multipart" beyond,
// and a server that does not refuses it itself.)
constexpr uint64_t kMaxInMemoryBasicBytes = 4ull << 20;
constexpr uint64_t kMaxAnswerBytes = 64ull << 20;

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  ~Fd() { Reset(); }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  void Reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }
  int fd_ = -1;
};

struct LocalFile {
  std::string path;  // in the repo, '/'-separated
  uint64_t size = 0;
  dev_t dev = 0;
  ino_t ino = 0;
  std::string sha256;  // lowercase hex
  std::string sample;  // the first kSampleBytes
  bool lfs = false;
  bool unchanged = false;  // the branch has this very file at this path
};

std::string Quoted(absl::string_view path) { return absl::StrCat("'", EscapeForLog(path), "'"); }

bool IsValidUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;
    for (size_t k = 1; k <= n; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += n + 1;
  }
  return true;
}

// ---------------------------------------------------------------------------
// The directory: every regular file beneath it, nothing followed.

absl::Status WalkDir(int dir_fd, const std::string& prefix, int depth,
                     std::vector<LocalFile>* files) {
  if (depth > kMaxDepth) {
    return absl::InvalidArgumentError(absl::StrCat(
        "upload: ", Quoted(prefix), " is nested deeper than ", kMaxDepth, " directories"));
  }
  const int dup_fd = fcntl(dir_fd, F_DUPFD_CLOEXEC, 0);
  if (dup_fd < 0) return ErrnoToStatus(errno, absl::StrCat("upload: dup ", Quoted(prefix)));
  DIR* dir = fdopendir(dup_fd);
  if (dir == nullptr) {
    const int err = errno;
    close(dup_fd);
    return ErrnoToStatus(err, absl::StrCat("upload: read directory ", Quoted(prefix)));
  }
  std::unique_ptr<DIR, int (*)(DIR*)> closer(dir, closedir);
  std::vector<std::string> names;
  for (;;) {
    errno = 0;
    const dirent* entry = readdir(dir);
    if (entry == nullptr) {
      if (errno != 0) {
        return ErrnoToStatus(errno, absl::StrCat("upload: read directory ", Quoted(prefix)));
      }
      break;
    }
    const absl::string_view name = entry->d_name;
    if (name == "." || name == "..") continue;
    names.emplace_back(name);
  }
  closer.reset();
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    const std::string path = prefix.empty() ? name : absl::StrCat(prefix, "/", name);
    if (!IsValidUtf8(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("upload: ", Quoted(path), ": the Hub takes UTF-8 file names only"));
    }
    struct stat st;
    if (fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      return ErrnoToStatus(errno, absl::StrCat("upload: stat ", Quoted(path)));
    }
    if (S_ISLNK(st.st_mode)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "upload: ", Quoted(path), " is a symlink; uploads follow no symlinks (copy the file "
          "into the directory instead)"));
    }
    if (S_ISDIR(st.st_mode)) {
      const int child = openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (child < 0) return ErrnoToStatus(errno, absl::StrCat("upload: open ", Quoted(path)));
      Fd child_fd(child);
      RETURN_IF_ERROR(WalkDir(child_fd.get(), path, depth + 1, files));
      continue;
    }
    if (!S_ISREG(st.st_mode)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "upload: ", Quoted(path), " is not a regular file (a FIFO, socket or device)"));
    }
    if (files->size() >= kMaxFiles) {
      return absl::ResourceExhaustedError(
          absl::StrCat("upload: more than ", kMaxFiles, " files in one commit"));
    }
    LocalFile file;
    file.path = path;
    file.size = static_cast<uint64_t>(st.st_size);
    file.dev = st.st_dev;
    file.ino = st.st_ino;
    files->push_back(std::move(file));
  }
  return absl::OkStatus();
}

// Opens `file` beneath `root_fd` again, through no symlink, and checks that
// it is the file the walk saw.
absl::StatusOr<Fd> OpenBeneath(int root_fd, const LocalFile& file) {
  std::vector<std::string> parts = absl::StrSplit(file.path, '/');
  Fd dir;
  int at = root_fd;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    const int fd = openat(at, parts[i].c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return ErrnoToStatus(errno, absl::StrCat("upload: open ", Quoted(file.path)));
    dir = Fd(fd);
    at = dir.get();
  }
  const int fd = openat(at, parts.back().c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY |
                                                     O_NONBLOCK);
  if (fd < 0) return ErrnoToStatus(errno, absl::StrCat("upload: open ", Quoted(file.path)));
  Fd out(fd);
  struct stat st;
  if (fstat(out.get(), &st) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("upload: stat ", Quoted(file.path)));
  }
  if (!S_ISREG(st.st_mode) || st.st_dev != file.dev || st.st_ino != file.ino ||
      static_cast<uint64_t>(st.st_size) != file.size) {
    return absl::FailedPreconditionError(
        absl::StrCat("upload: ", Quoted(file.path), " changed while it was being uploaded"));
  }
  return out;
}

// Exactly `size` bytes at `offset`, or FAILED_PRECONDITION if the file got
// shorter.
absl::Status ReadExactly(int fd, const LocalFile& file, uint64_t offset, char* out,
                         size_t size) {
  size_t done = 0;
  while (done < size) {
    const ssize_t n = pread(fd, out + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, absl::StrCat("upload: read ", Quoted(file.path)));
    }
    if (n == 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("upload: ", Quoted(file.path), " got shorter while it was being uploaded"));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// Room for `size` bytes, or RESOURCE_EXHAUSTED (no std::bad_alloc escapes).
absl::Status Reserve(std::string* buffer, uint64_t size, const LocalFile& file) {
  try {
    buffer->resize(static_cast<size_t>(size));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "upload: no memory for ", size, " bytes of ", Quoted(file.path)));
  } catch (const std::length_error&) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "upload: no memory for ", size, " bytes of ", Quoted(file.path)));
  }
  return absl::OkStatus();
}

class Sha256 {
 public:
  explicit Sha256(const EVP_MD* md = EVP_sha256()) : ctx_(EVP_MD_CTX_new(), EVP_MD_CTX_free) {
    ok_ = ctx_ != nullptr && EVP_DigestInit_ex(ctx_.get(), md, nullptr) == 1;
  }
  void Update(const char* data, size_t size) {
    ok_ = ok_ && EVP_DigestUpdate(ctx_.get(), data, size) == 1;
  }
  absl::StatusOr<std::string> HexDigest() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    ok_ = ok_ && EVP_DigestFinal_ex(ctx_.get(), digest, &length) == 1;
    if (!ok_) return absl::InternalError("upload: OpenSSL's SHA-256 failed");
    return absl::BytesToHexString(
        absl::string_view(reinterpret_cast<const char*>(digest), length));
  }

 private:
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx_;
  bool ok_ = false;
};

absl::Status HashFile(int root_fd, LocalFile* file, std::vector<char>* buffer) {
  ASSIGN_OR_RETURN(Fd fd, OpenBeneath(root_fd, *file));
  Sha256 sha;
  uint64_t offset = 0;
  while (offset < file->size) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buffer->size(), file->size - offset));
    RETURN_IF_ERROR(ReadExactly(fd.get(), *file, offset, buffer->data(), n));
    if (offset == 0) file->sample.assign(buffer->data(), std::min(n, kSampleBytes));
    sha.Update(buffer->data(), n);
    offset += n;
  }
  ASSIGN_OR_RETURN(file->sha256, sha.HexDigest());
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// The Hub's answers.

absl::Status Malformed(absl::string_view what, absl::string_view why) {
  return MalformedAnswer(what, why);
}

std::string Dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

class Uploader {
 public:
  Uploader(HubClient& client, const std::string& repo_id, const UploadOptions& options)
      : http_(client.http()),
        endpoint_(client.config().endpoint),
        repo_id_(repo_id),
        options_(options),
        repo_for_log_(Quoted(repo_id)) {}

  absl::StatusOr<UploadResult> Run(const std::string& dir);

 private:
  absl::StatusOr<HttpResponse> Send(HttpRequest request) {
    return http_.Send(request);
  }
  // POST a JSON body; the 2xx answer's JSON (an empty body is null).
  absl::StatusOr<json> PostJson(const std::string& url, const json& body, absl::string_view what,
                                bool lfs_headers = false, bool authorize = true,
                                std::vector<long> accepted = {});
  absl::Status CreateRepo();
  absl::Status EnsureBranch();
  absl::Status Preupload(std::vector<LocalFile>& files);
  absl::StatusOr<std::string> GitBlobId(const LocalFile& file);
  // Nothing to commit: the branch's head.
  absl::Status CurrentHead();
  absl::Status UploadLfs(std::vector<LocalFile>& files);
  absl::Status UploadObject(const LocalFile& file, const LfsObjectAnswer& object);
  absl::Status PutBasic(const LocalFile& file, const std::string& href);
  absl::Status PutMultipart(const LocalFile& file, const LfsObjectAnswer& object);
  absl::Status Commit(const std::vector<LocalFile>& files);
  void Progress() {
    if (options_.progress) options_.progress(bytes_done_, bytes_total_);
  }

  HttpClient& http_;
  std::string endpoint_;
  std::string repo_id_;
  const UploadOptions& options_;
  std::string repo_for_log_;
  Fd root_;
  UploadResult result_;
  std::map<std::string, std::string> remote_oids_;  // path -> the branch's oid
  uint64_t bytes_done_ = 0;
  uint64_t bytes_total_ = 0;
};

absl::StatusOr<json> Uploader::PostJson(const std::string& url, const json& body,
                                        absl::string_view what, bool lfs_headers,
                                        bool authorize, std::vector<long> accepted) {
  HttpRequest request;
  request.method = "POST";
  request.url = url;
  request.authorize = authorize;
  request.max_body = kMaxAnswerBytes;
  if (lfs_headers) {
    request.headers.push_back({"accept", "application/vnd.git-lfs+json"});
    request.headers.push_back({"content-type", "application/vnd.git-lfs+json"});
  } else {
    request.headers.push_back({"content-type", "application/json"});
  }
  request.body = Dump(body);
  ASSIGN_OR_RETURN(HttpResponse response, Send(std::move(request)));
  const bool ok = (response.status >= 200 && response.status < 300) ||
                  std::find(accepted.begin(), accepted.end(), response.status) != accepted.end();
  if (!ok) return HttpError(response, what);
  if (response.status < 200 || response.status >= 300) return json();
  if (absl::StripAsciiWhitespace(response.body).empty()) return json();
  json answer = json::parse(response.body, nullptr, /*allow_exceptions=*/false);
  if (answer.is_discarded()) return Malformed(what, "not JSON");
  return answer;
}

absl::Status Uploader::CreateRepo() {
  const std::vector<std::string> parts = absl::StrSplit(repo_id_, absl::MaxSplits('/', 1));
  json body = {{"name", parts.size() == 2 ? parts[1] : repo_id_},
               {"organization", parts.size() == 2 ? json(parts[0]) : json()},
               {"private", options_.private_repo},
               {"visibility", options_.private_repo ? "private" : "public"},
               {"type", "model"}};
  // 409: it exists already, which is what we want.
  return PostJson(absl::StrCat(endpoint_, "/api/repos/create"), body,
                  absl::StrCat("upload: create repo ", repo_for_log_), false, true, {409})
      .status();
}

// A commit goes to an existing branch; like `hf upload --revision`, make it
// when it is missing (POST /api/models/{repo}/branch/{branch}, 409 = exists).
absl::Status Uploader::EnsureBranch() {
  const std::string& revision = options_.revision;
  if (revision == kDefaultRevision || absl::StartsWith(revision, "refs/pr/")) {
    return absl::OkStatus();
  }
  if (IsCommitHash(revision)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "upload: ", repo_for_log_, ": the revision to commit to is a branch, not a commit hash"));
  }
  HttpRequest request;
  request.method = "GET";
  request.url = absl::StrCat(endpoint_, "/api/models/", repo_id_, "/revision/",
                             EncodeRevision(revision));
  request.max_body = kMaxAnswerBytes;
  ASSIGN_OR_RETURN(HttpResponse response, Send(std::move(request)));
  if (response.status >= 200 && response.status < 300) return absl::OkStatus();
  const std::string* code = response.Header("x-error-code");
  if (response.status != 404 || code == nullptr || *code != "RevisionNotFound") {
    return HttpError(response, absl::StrCat("upload: ", repo_for_log_, " revision ",
                                            Quoted(revision)));
  }
  // 409: someone made it meanwhile.
  request = HttpRequest();
  request.method = "POST";
  request.url = absl::StrCat(endpoint_, "/api/models/", repo_id_, "/branch/",
                             EncodeRevision(revision));
  request.headers.push_back({"content-type", "application/json"});
  request.body = "{}";
  request.max_body = kMaxAnswerBytes;
  ASSIGN_OR_RETURN(response, Send(std::move(request)));
  if ((response.status >= 200 && response.status < 300) || response.status == 409) {
    return absl::OkStatus();
  }
  return HttpError(response, absl::StrCat("upload: create branch ", Quoted(revision), " of ",
                                          repo_for_log_));
}

absl::Status Uploader::Preupload(std::vector<LocalFile>& files) {
  const std::string what = absl::StrCat("upload: preupload to ", repo_for_log_);
  const std::string url = absl::StrCat(endpoint_, "/api/models/", repo_id_, "/preupload/",
                                       EncodeRevision(options_.revision));
  for (size_t begin = 0; begin < files.size(); begin += kBatchFiles) {
    const size_t end = std::min(files.size(), begin + kBatchFiles);
    json list = json::array();
    std::map<std::string, LocalFile*> by_path;
    for (size_t i = begin; i < end; ++i) {
      list.push_back({{"path", files[i].path},
                      {"sample", absl::Base64Escape(files[i].sample)},
                      {"size", files[i].size}});
      by_path[files[i].path] = &files[i];
    }
    ASSIGN_OR_RETURN(json answer, PostJson(url, json{{"files", list}}, what));
    ASSIGN_OR_RETURN(std::vector<PreuploadEntry> entries, ParsePreuploadAnswer(Dump(answer), what));
    for (PreuploadEntry& entry : entries) {
      auto it = by_path.find(entry.path);
      if (it == by_path.end()) return Malformed(what, "a file that was not asked about");
      if (entry.oid) remote_oids_[entry.path] = *entry.oid;
      if (entry.mode == "lfs") {
        it->second->lfs = true;
      } else if (entry.mode == "regular") {
        it->second->lfs = false;
      } else {
        return absl::UnimplementedError(absl::StrCat(
            what, ": the Hub wants ", Quoted(entry.path), " uploaded as '", EscapeForLog(entry.mode),
            "', which bigsmall does not speak (only regular and LFS)"));
      }
      by_path.erase(it);
    }
    if (!by_path.empty()) {
      return Malformed(what, absl::StrCat("no upload mode for ", Quoted(by_path.begin()->first)));
    }
  }
  // Empty files cannot go through LFS (S3 refuses them): huggingface_hub
  // commits them inline, whatever the Hub said.
  for (LocalFile& file : files) {
    if (file.size == 0) file.lfs = false;
    if (!file.lfs && file.size > kMaxRegularBytes) {
      return absl::FailedPreconditionError(absl::StrCat(
          what, ": the Hub wants ", Quoted(file.path), " (", file.size,
          " bytes) committed inline; bigsmall inlines at most ", kMaxRegularBytes, " bytes"));
    }
    auto remote = remote_oids_.find(file.path);
    if (remote == remote_oids_.end()) continue;
    if (file.lfs) {
      file.unchanged = remote->second == file.sha256;
    } else {
      ASSIGN_OR_RETURN(std::string blob_id, GitBlobId(file));
      file.unchanged = remote->second == blob_id;
    }
  }
  return absl::OkStatus();
}

// Git's id of a regular file: sha1("blob <size>\0" + content).
absl::StatusOr<std::string> Uploader::GitBlobId(const LocalFile& file) {
  ASSIGN_OR_RETURN(Fd fd, OpenBeneath(root_.get(), file));
  Sha256 sha1(EVP_sha1());
  const std::string head = absl::StrCat("blob ", file.size, std::string(1, '\0'));
  sha1.Update(head.data(), head.size());
  std::vector<char> buffer(static_cast<size_t>(std::min<uint64_t>(kReadBytes, file.size)));
  uint64_t offset = 0;
  while (offset < file.size) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buffer.size(), file.size - offset));
    RETURN_IF_ERROR(ReadExactly(fd.get(), file, offset, buffer.data(), n));
    sha1.Update(buffer.data(), n);
    offset += n;
  }
  return sha1.HexDigest();
}

absl::Status Uploader::UploadLfs(std::vector<LocalFile>& files) {
  // One object per distinct content (two files may share one).
  std::map<std::string, const LocalFile*> by_oid;
  for (const LocalFile& file : files) {
    if (file.lfs && !file.unchanged) by_oid.emplace(file.sha256, &file);
  }
  std::vector<const LocalFile*> objects;
  for (const auto& [oid, file] : by_oid) {
    objects.push_back(file);
    bytes_total_ += file->size;
  }
  Progress();
  const std::string what = absl::StrCat("upload: LFS batch for ", repo_for_log_);
  const std::string url = absl::StrCat(endpoint_, "/", repo_id_, ".git/info/lfs/objects/batch");
  for (size_t begin = 0; begin < objects.size(); begin += kBatchFiles) {
    const size_t end = std::min(objects.size(), begin + kBatchFiles);
    json list = json::array();
    for (size_t i = begin; i < end; ++i) {
      list.push_back({{"oid", objects[i]->sha256}, {"size", objects[i]->size}});
    }
    json body = {{"operation", "upload"},
                 {"transfers", {"basic", "multipart"}},
                 {"objects", list},
                 {"hash_algo", "sha256"},
                 {"ref", {{"name", options_.revision}}}};
    ASSIGN_OR_RETURN(json answer, PostJson(url, body, what, /*lfs_headers=*/true));
    ASSIGN_OR_RETURN(std::vector<LfsObjectAnswer> answered, ParseLfsBatchAnswer(Dump(answer), what));
    std::map<std::string, const LocalFile*> pending;
    for (size_t i = begin; i < end; ++i) pending[objects[i]->sha256] = objects[i];
    for (const LfsObjectAnswer& object : answered) {
      auto it = pending.find(object.oid);
      if (it == pending.end()) return Malformed(what, "an object that was not asked about");
      const LocalFile& file = *it->second;
      pending.erase(it);
      if (object.has_error) {
        const uint64_t code = object.error_code;
        const std::string text = absl::StrCat(what, ": the Hub refused ", Quoted(file.path),
                                              " (", code, "): ", EscapeForLog(object.error_message));
        if (code == 401) return absl::UnauthenticatedError(text);
        if (code == 403) return absl::PermissionDeniedError(text);
        if (code == 404) return absl::NotFoundError(text);
        if (code >= 500) return absl::UnavailableError(text);
        return absl::InvalidArgumentError(text);
      }
      if (!object.upload) {
        // The Hub has it already: an earlier (perhaps interrupted) upload
        // sent it.
        ++result_.lfs_files_skipped;
        bytes_done_ += file.size;
        Progress();
        continue;
      }
      RETURN_IF_ERROR(UploadObject(file, object));
      ++result_.lfs_files_sent;
    }
    if (!pending.empty()) {
      return Malformed(what, absl::StrCat("no answer for ", Quoted(pending.begin()->second->path)));
    }
  }
  return absl::OkStatus();
}

absl::Status Uploader::UploadObject(const LocalFile& file, const LfsObjectAnswer& object) {
  const std::string what = absl::StrCat("upload: LFS object of ", Quoted(file.path));
  if (object.chunk_size) {
    RETURN_IF_ERROR(CheckMultipart(object, file.size, what));
    RETURN_IF_ERROR(PutMultipart(file, object));
  } else {
    RETURN_IF_ERROR(PutBasic(file, object.upload_href));
  }
  if (object.verify_href) {
    RETURN_IF_ERROR(PostJson(*object.verify_href, json{{"oid", file.sha256}, {"size", file.size}},
                             absl::StrCat(what, ": verify"), /*lfs_headers=*/true)
                        .status());
  }
  return absl::OkStatus();
}

// The bytes sent must be the bytes hashed: checked as they go, before the Hub
// is told the object is complete.
absl::Status CheckSent(const LocalFile& file, Sha256& sha) {
  ASSIGN_OR_RETURN(std::string digest, sha.HexDigest());
  if (digest != file.sha256) {
    return absl::FailedPreconditionError(
        absl::StrCat("upload: ", Quoted(file.path), " changed while it was being uploaded"));
  }
  return absl::OkStatus();
}

absl::Status Uploader::PutBasic(const LocalFile& file, const std::string& href) {
  ASSIGN_OR_RETURN(Fd fd, OpenBeneath(root_.get(), file));
  HttpRequest request;
  request.method = "PUT";
  request.url = href;
  // A presigned URL: huggingface_hub sends it no token either.
  request.authorize = false;
  Sha256 sha;
  // Streamed: what was hashed is what was sent last (a retry or redirect
  // sends it again from 0: the hash starts again).
  uint64_t hashed = 0;
  bool hash_ok = true;
  if (file.size <= kMaxInMemoryBasicBytes) {
    RETURN_IF_ERROR(Reserve(&request.body, file.size, file));
    RETURN_IF_ERROR(ReadExactly(fd.get(), file, 0, request.body.data(), file.size));
    sha.Update(request.body.data(), request.body.size());
    RETURN_IF_ERROR(CheckSent(file, sha));
  } else {
    const int raw_fd = fd.get();
    request.body_size = file.size;
    request.body_reader = [&, raw_fd](uint64_t offset,
                                      absl::Span<uint8_t> out) -> absl::StatusOr<size_t> {
      if (offset == 0 && hashed != 0) {
        sha = Sha256();
        hashed = 0;
      }
      if (offset != hashed) hash_ok = false;  // libcurl seeks only back to 0
      RETURN_IF_ERROR(
          ReadExactly(raw_fd, file, offset, reinterpret_cast<char*>(out.data()), out.size()));
      if (offset == hashed) {
        sha.Update(reinterpret_cast<const char*>(out.data()), out.size());
        hashed += out.size();
      }
      return out.size();
    };
  }
  ASSIGN_OR_RETURN(HttpResponse response, Send(std::move(request)));
  if (response.status < 200 || response.status >= 300) {
    return HttpError(response, absl::StrCat("upload: PUT ", Quoted(file.path)));
  }
  if (file.size > kMaxInMemoryBasicBytes) {
    // The bytes sent must be the bytes hashed before the Hub is told (the
    // commit names this sha256): a file changed meanwhile is refused.
    if (!hash_ok || hashed != file.size) {
      return absl::InternalError(absl::StrCat("upload: PUT ", Quoted(file.path), ": ", hashed,
                                              " of ", file.size, " bytes were hashed as sent"));
    }
    RETURN_IF_ERROR(CheckSent(file, sha));
  }
  result_.bytes_sent += file.size;
  bytes_done_ += file.size;
  Progress();
  return absl::OkStatus();
}

absl::Status Uploader::PutMultipart(const LocalFile& file, const LfsObjectAnswer& object) {
  const std::string what = absl::StrCat("upload: multipart ", Quoted(file.path));
  // CheckMultipart: part URLs 1..parts, every one.
  const uint64_t chunk_size = *object.chunk_size;
  const uint64_t parts = object.part_urls.size();
  const std::map<uint64_t, std::string>& urls = object.part_urls;
  const std::string& href = object.upload_href;
  ASSIGN_OR_RETURN(Fd fd, OpenBeneath(root_.get(), file));
  Sha256 sha;
  json completed = json::array();
  for (const auto& [number, url] : urls) {
    const uint64_t offset = (number - 1) * chunk_size;
    const uint64_t size = std::min(chunk_size, file.size - offset);
    HttpRequest request;
    request.method = "PUT";
    request.url = url;
    request.authorize = false;  // presigned, as above
    RETURN_IF_ERROR(Reserve(&request.body, size, file));
    RETURN_IF_ERROR(ReadExactly(fd.get(), file, offset, request.body.data(), size));
    sha.Update(request.body.data(), size);
    ASSIGN_OR_RETURN(HttpResponse response, Send(std::move(request)));
    if (response.status < 200 || response.status >= 300) {
      return HttpError(response, absl::StrCat(what, ": PUT part ", number, " of ", parts));
    }
    const std::string* etag = response.Header("etag");
    if (etag == nullptr || etag->empty()) {
      return Malformed(absl::StrCat(what, ": PUT part ", number), "no ETag");
    }
    completed.push_back({{"partNumber", number}, {"etag", *etag}});
    result_.bytes_sent += size;
    bytes_done_ += size;
    Progress();
  }
  RETURN_IF_ERROR(CheckSent(file, sha));
  // The completion goes to the Hub (huggingface_hub sends it the LFS
  // headers only).
  return PostJson(href, json{{"oid", file.sha256}, {"parts", completed}},
                  absl::StrCat(what, ": completion"), /*lfs_headers=*/true,
                  /*authorize=*/false)
      .status();
}

absl::Status Uploader::Commit(const std::vector<LocalFile>& files) {
  const std::string what = absl::StrCat("upload: commit to ", repo_for_log_);
  std::string body;
  body += Dump(json{{"key", "header"},
                    {"value", {{"summary", options_.commit_message}, {"description", ""}}}});
  body += '\n';
  std::string content;
  for (const LocalFile& file : files) {
    if (file.unchanged) continue;
    if (file.lfs) {
      body += Dump(json{{"key", "lfsFile"},
                        {"value",
                         {{"path", file.path},
                          {"algo", "sha256"},
                          {"oid", file.sha256},
                          {"size", file.size}}}});
    } else {
      ASSIGN_OR_RETURN(Fd fd, OpenBeneath(root_.get(), file));
      RETURN_IF_ERROR(Reserve(&content, file.size, file));
      RETURN_IF_ERROR(ReadExactly(fd.get(), file, 0, content.data(), file.size));
      Sha256 sha;
      sha.Update(content.data(), content.size());
      RETURN_IF_ERROR(CheckSent(file, sha));
      body += Dump(json{{"key", "file"},
                        {"value",
                         {{"content", absl::Base64Escape(content)},
                          {"path", file.path},
                          {"encoding", "base64"}}}});
    }
    body += '\n';
    if (body.size() > kMaxCommitBodyBytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          what, ": the files committed inline exceed ", kMaxCommitBodyBytes, " bytes"));
    }
  }
  HttpRequest request;
  request.method = "POST";
  request.url = absl::StrCat(endpoint_, "/api/models/", repo_id_, "/commit/",
                             EncodeRevision(options_.revision));
  request.headers.push_back({"content-type", "application/x-ndjson"});
  request.body = std::move(body);
  request.retry = false;  // a lost answer to a retried commit makes two commits
  request.max_body = kMaxAnswerBytes;
  ASSIGN_OR_RETURN(HttpResponse response, Send(std::move(request)));
  if (response.status < 200 || response.status >= 300) return HttpError(response, what);
  ASSIGN_OR_RETURN(CommitAnswer answer, ParseCommitAnswer(response.body, what));
  result_.commit = std::move(answer.commit);
  result_.commit_url = std::move(answer.commit_url);
  return absl::OkStatus();
}

absl::Status Uploader::CurrentHead() {
  const std::string what = absl::StrCat("upload: ", repo_for_log_, " revision ",
                                        Quoted(options_.revision));
  HttpRequest request;
  request.url = absl::StrCat(endpoint_, "/api/models/", repo_id_, "/revision/",
                             EncodeRevision(options_.revision));
  request.max_body = kMaxAnswerBytes;
  ASSIGN_OR_RETURN(HttpResponse response, Send(std::move(request)));
  if (response.status < 200 || response.status >= 300) return HttpError(response, what);
  ASSIGN_OR_RETURN(std::string sha, ParseRevisionSha(response.body, what));
  result_.commit = sha;
  result_.commit_url = absl::StrCat(endpoint_, "/", repo_id_, "/commit/", sha);
  return absl::OkStatus();
}

absl::StatusOr<UploadResult> Uploader::Run(const std::string& dir) {
  ASSIGN_OR_RETURN(RepoRef ref, ParseRepoRef(repo_id_));
  if (ref.revision_given) {
    return absl::InvalidArgumentError(absl::StrCat(
        "upload: ", repo_for_log_, ": name the branch with the revision option, not '@'"));
  }
  if (options_.revision.empty() || !IsValidUtf8(options_.revision) ||
      !IsValidUtf8(options_.commit_message)) {
    return absl::InvalidArgumentError(
        "upload: the revision must be non-empty and it and the commit message UTF-8");
  }
  if (http_.config().offline) {
    return absl::FailedPreconditionError(
        absl::StrCat("upload: ", repo_for_log_, ": offline (HF_HUB_OFFLINE), nothing is sent"));
  }
  const int root = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (root < 0) return ErrnoToStatus(errno, absl::StrCat("upload: open ", Quoted(dir)));
  root_ = Fd(root);

  std::vector<LocalFile> files;
  RETURN_IF_ERROR(WalkDir(root_.get(), "", 0, &files));
  if (files.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("upload: ", Quoted(dir), " holds no files: nothing to commit"));
  }
  std::vector<char> buffer(kReadBytes);
  for (LocalFile& file : files) RETURN_IF_ERROR(HashFile(root_.get(), &file, &buffer));
  buffer = {};

  if (options_.create_repo) RETURN_IF_ERROR(CreateRepo());
  RETURN_IF_ERROR(EnsureBranch());
  RETURN_IF_ERROR(Preupload(files));
  result_.files = files.size();
  for (const LocalFile& file : files) result_.files_unchanged += file.unchanged ? 1 : 0;
  if (result_.files_unchanged == files.size()) {
    RETURN_IF_ERROR(CurrentHead());
    return result_;
  }
  RETURN_IF_ERROR(UploadLfs(files));
  RETURN_IF_ERROR(Commit(files));
  return result_;
}

}  // namespace

absl::StatusOr<UploadResult> UploadFolder(HubClient& client, const std::string& dir,
                                          const std::string& repo_id,
                                          const UploadOptions& options) {
  Uploader uploader(client, repo_id, options);
  return uploader.Run(dir);
}

}  // namespace bigsmall::hub
