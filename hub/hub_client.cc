#include "hub/hub_client.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <map>
#include <filesystem>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "codec/status_util.h"
#include "hub/hub_parse.h"

namespace bigsmall::hub {
namespace {

namespace fs = std::filesystem;

// Files listed from the cache (offline resolve): more is not a model.
constexpr size_t kMaxCachedFiles = 100'000;
// A download's part (config.part_bytes) within these bounds: it holds
// parallel_connections + 1 of them at most.
constexpr uint64_t kMinDownloadPartBytes = 64ull << 10;
constexpr uint64_t kMaxDownloadPartBytes = 64ull << 20;

std::string HfName(const RepoRef& ref) { return absl::StrCat("hf://", ref.ToString()); }
std::string HfName(const RepoInfo& repo) {
  return absl::StrCat("hf://", repo.ref.repo_id, "@", repo.commit);
}

absl::Status CheckRef(const RepoRef& ref) {
  absl::StatusOr<RepoRef> parsed = ParseRepoRef(absl::StrCat(ref.repo_id, "@", ref.revision));
  if (!parsed.ok()) return parsed.status();
  if (parsed->repo_id != ref.repo_id || parsed->revision != ref.revision) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", EscapeForLog(ref.ToString()), "' is not a valid Hub model name"));
  }
  return absl::OkStatus();
}

absl::Status CheckRepoInfo(const RepoInfo& repo) {
  if (!IsCommitHash(repo.commit)) {
    return absl::InvalidArgumentError(
        absl::StrCat(EscapeForLog(repo.ref.repo_id), ": the repo is not resolved to a commit"));
  }
  return CheckRef(repo.ref);
}

// A ByteSource over one file of a commit: the cached blob once it is
// complete, ranged GETs of the resolve URL before. It shares the client's
// HttpClient and HubCache, so it may outlive the HubClient.
class RemoteSource final : public ByteSource {
 public:
  RemoteSource(std::shared_ptr<HttpClient> http, std::shared_ptr<HubCache> cache,
               std::string repo_id, RepoFile file, std::string url, std::string name)
      : http_(std::move(http)),
        cache_(std::move(cache)),
        repo_id_(std::move(repo_id)),
        file_(std::move(file)),
        url_(std::move(url)),
        name_(std::move(name)) {}
  ~RemoteSource() override {
    if (blob_fd_ >= 0) close(blob_fd_);
  }

  uint64_t size() const override { return file_.size; }
  std::string name() const override { return name_; }

  absl::Status ReadAt(uint64_t offset, absl::Span<uint8_t> out) override {
    if (offset > file_.size || out.size() > file_.size - offset) {
      return absl::OutOfRangeError(absl::StrCat(name_, ": read of ", out.size(), " bytes at ",
                                                offset, " is past its end (", file_.size, ")"));
    }
    if (out.empty()) return absl::OkStatus();
    const int fd = BlobFd();
    if (fd >= 0) return PreadAll(fd, offset, out);
    absl::Status s = http_->GetRange(url_, offset, out, file_.size);
    if (!s.ok()) return absl::Status(s.code(), absl::StrCat(name_, ": ", s.message()));
    return s;
  }
  absl::Status ReadBulk(uint64_t offset, absl::Span<uint8_t> out) override {
    return ReadAt(offset, out);  // GetRange already splits into parallel parts
  }

 private:
  // The complete blob's fd once the cache has it (checked per read until
  // then: a download may finish while we stream), else -1.
  int BlobFd() {
    std::lock_guard<std::mutex> lock(mu_);
    if (blob_fd_ >= 0) return blob_fd_;
    std::optional<std::string> path = cache_->BlobFile(repo_id_, file_.etag());
    if (!path) return -1;
    int fd = open(path->c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
        static_cast<uint64_t>(st.st_size) != file_.size) {
      close(fd);
      return -1;
    }
    blob_fd_ = fd;
    return blob_fd_;
  }
  absl::Status PreadAll(int fd, uint64_t offset, absl::Span<uint8_t> out) {
    size_t done = 0;
    while (done < out.size()) {
      ssize_t n =
          pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoToStatus(errno, absl::StrCat("read ", name_));
      }
      if (n == 0) return absl::DataLossError(absl::StrCat(name_, ": the cached blob is short"));
      done += static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }

  const std::shared_ptr<HttpClient> http_;
  const std::shared_ptr<HubCache> cache_;
  const std::string repo_id_;
  const RepoFile file_;
  const std::string url_;
  const std::string name_;
  // std::mutex, not absl::Mutex: the system's absl is not TSan-instrumented,
  // so the daemon's concurrent layer reads looked like a race on blob_fd_.
  std::mutex mu_;
  int blob_fd_ = -1;  // guarded by mu_
};

}  // namespace

const RepoFile* RepoInfo::Find(absl::string_view path) const {
  for (const RepoFile& f : files) {
    if (f.path == path) return &f;
  }
  return nullptr;
}

struct HubClient::Impl {
  explicit Impl(HubConfig c)
      : config(std::move(c)),
        http_owner(std::make_shared<HttpClient>(config)),
        cache_owner(std::make_shared<HubCache>(config.cache_dir)),
        http(*http_owner),
        cache(*cache_owner) {}
  HubConfig config;
  // Shared with the sources OpenRemote makes, which may outlive the client.
  const std::shared_ptr<HttpClient> http_owner;
  const std::shared_ptr<HubCache> cache_owner;
  HttpClient& http;
  HubCache& cache;

  absl::Status OfflineNotCached(absl::string_view what) const {
    return absl::NotFoundError(absl::StrCat(what, ": offline and not in the cache ",
                                            EscapeForLog(cache.root()), " (HF_HUB_OFFLINE)"));
  }

  // refs/ + snapshots/<commit>/ only.
  absl::StatusOr<RepoInfo> FromCache(const RepoRef& ref, const std::string& commit) {
    RepoInfo info;
    info.ref = ref;
    info.commit = commit;
    info.from_cache = true;
    const std::string snap = absl::StrCat(cache.RepoDir(ref.repo_id), "/snapshots/", commit);
    std::error_code ec;
    // Never follows a directory symlink (the default).
    fs::recursive_directory_iterator it(snap, ec), end;
    if (ec) return info;  // a ref with no files yet
    for (; it != end; it.increment(ec)) {
      if (ec) break;
      if (info.files.size() >= kMaxCachedFiles) {
        return absl::ResourceExhaustedError(absl::StrCat(
            HfName(ref), ": more than ", kMaxCachedFiles, " files in the cached snapshot"));
      }
      if (!it->is_symlink(ec)) continue;
      const std::string rel = it->path().lexically_relative(snap).generic_string();
      if (!IsSafeRepoPath(rel) || !cache.SnapshotFile(ref.repo_id, commit, rel)) continue;
      const std::string target = fs::read_symlink(it->path(), ec).filename().string();
      if (ec) continue;
      std::optional<std::string> blob = cache.BlobFile(ref.repo_id, target);
      if (!blob) continue;
      RepoFile f;
      f.path = rel;
      f.size = fs::file_size(*blob, ec);
      if (ec) continue;
      if (target.size() == 64) {
        f.sha256 = target;
      } else {
        f.blob_id = target;
      }
      info.files.push_back(std::move(f));
    }
    std::sort(info.files.begin(), info.files.end(),
              [](const RepoFile& a, const RepoFile& b) { return a.path < b.path; });
    return info;
  }

  absl::StatusOr<RepoInfo> ResolveOnline(const RepoRef& ref) {
    HttpRequest req;
    req.url = absl::StrCat(config.endpoint, "/api/models/", ref.repo_id, "/revision/",
                           EncodeRevision(ref.revision), "?blobs=true");
    absl::StatusOr<HttpResponse> resp = http.Send(req);
    if (!resp.ok()) return resp.status();
    if (resp->status != 200) return HttpError(*resp, HfName(ref));
    absl::StatusOr<RepoInfo> info = ParseModelInfo(ref, resp->body);
    if (!info.ok()) return info.status();
    if (!IsCommitHash(ref.revision)) {
      // Best effort, as huggingface_hub: a read-only cache still resolves.
      cache.WriteRef(ref.repo_id, ref.revision, info->commit).IgnoreError();
    }
    return info;
  }

  // `path` in `repo`'s listing. A listing read from the cache has only the
  // files cached so far: online, the commit's own listing is asked for the
  // others (`fetched` keeps it alive).
  absl::StatusOr<const RepoFile*> FindFile(const RepoInfo& repo, absl::string_view path,
                                           std::optional<RepoInfo>& fetched) {
    if (const RepoFile* f = repo.Find(path)) return f;
    if (repo.from_cache && !config.offline) {
      RepoRef at_commit = repo.ref;
      at_commit.revision = repo.commit;
      absl::StatusOr<RepoInfo> online = ResolveOnline(at_commit);
      if (!online.ok()) return online.status();
      if (online->commit != repo.commit) {
        return absl::DataLossError(
            absl::StrCat(HfName(repo), ": the Hub resolved the commit to ", online->commit));
      }
      fetched = *std::move(online);
      if (const RepoFile* f = fetched->Find(path)) return f;
    } else if (repo.from_cache) {
      return OfflineNotCached(absl::StrCat(HfName(repo), "/", EscapeForLog(path)));
    }
    return absl::NotFoundError(
        absl::StrCat("no file '", EscapeForLog(path), "' in ", HfName(repo)));
  }

  std::string SnapshotPath(const RepoInfo& repo, absl::string_view path) const {
    return absl::StrCat(cache.RepoDir(repo.ref.repo_id), "/snapshots/", repo.commit, "/", path);
  }

  absl::StatusOr<std::string> Finish(const RepoInfo& repo, const RepoFile& f) {
    absl::Status s = cache.LinkSnapshot(repo.ref.repo_id, repo.commit, f.path, f.etag());
    if (!s.ok()) return s;
    if (repo.ref.revision != repo.commit && !IsCommitHash(repo.ref.revision)) {
      // Best effort, as huggingface_hub: the file is there either way.
      cache.WriteRef(repo.ref.repo_id, repo.ref.revision, repo.commit).IgnoreError();
    }
    return SnapshotPath(repo, f.path);
  }
};

HubClient::HubClient(HubConfig config) : impl_(std::make_unique<Impl>(std::move(config))) {}
HubClient::~HubClient() = default;

const HubConfig& HubClient::config() const { return impl_->config; }
HttpClient& HubClient::http() { return impl_->http; }
HubCache& HubClient::cache() { return impl_->cache; }

std::string HubClient::ResolveUrl(const RepoInfo& repo, absl::string_view path) const {
  return absl::StrCat(impl_->config.endpoint, "/", repo.ref.repo_id, "/resolve/", repo.commit, "/",
                      EncodePath(path));
}

absl::StatusOr<RepoInfo> HubClient::Resolve(const RepoRef& ref, bool prefer_cache) {
  absl::Status s = CheckRef(ref);
  if (!s.ok()) return s;
  HubCache& cache = impl_->cache;
  // A commit the cache has a snapshot of needs no network; nor, with
  // prefer_cache, a revision the cache resolved. A snapshot with no file yet
  // (only a ref was written) is asked online unless offline.
  const bool offline = impl_->config.offline;
  if (offline || prefer_cache || IsCommitHash(ref.revision)) {
    std::optional<std::string> c = cache.CachedCommit(ref.repo_id, ref.revision);
    if (c && (offline || prefer_cache || *c == ref.revision)) {
      absl::StatusOr<RepoInfo> cached = impl_->FromCache(ref, *c);
      if (!cached.ok() || offline || !cached->files.empty()) return cached;
    }
    if (offline) return impl_->OfflineNotCached(HfName(ref));
  }
  return impl_->ResolveOnline(ref);
}

absl::StatusOr<FileMeta> HubClient::Head(const RepoInfo& repo, absl::string_view path) {
  absl::Status s = CheckRepoInfo(repo);
  if (!s.ok()) return s;
  const std::string what = absl::StrCat(HfName(repo), "/", EscapeForLog(path));
  if (impl_->config.offline) return impl_->OfflineNotCached(what);
  HttpRequest req;
  req.method = "HEAD";
  req.url = ResolveUrl(repo, path);
  req.follow_redirects = false;
  absl::StatusOr<HttpResponse> resp;
  // Relative redirects (a renamed repo) are followed, as huggingface_hub
  // does; an absolute one is the CDN and is where the bytes are.
  for (int hop = 0;; ++hop) {
    resp = impl_->http.Send(req);
    if (!resp.ok()) return resp.status();
    const std::string* loc = resp->Header("location");
    if (resp->status >= 300 && resp->status < 400 && loc != nullptr &&
        absl::StartsWith(*loc, "/") && !absl::StartsWith(*loc, "//") && hop < kMaxRedirects) {
      req.url = AbsoluteUrl(req.url, *loc);
      continue;
    }
    break;
  }
  const bool redirect = resp->status >= 300 && resp->status < 400;
  if (resp->status != 200 && !redirect) return HttpError(*resp, what);
  FileMeta meta;
  if (const std::string* c = resp->Header("x-repo-commit")) meta.commit = *c;
  const std::string* etag = resp->Header("x-linked-etag");
  if (etag == nullptr) etag = resp->Header("etag");
  if (etag == nullptr) return absl::DataLossError(absl::StrCat(what, ": the Hub sent no ETag"));
  meta.etag = UnquoteEtag(*etag);
  const std::string* size = resp->Header("x-linked-size");
  if (size == nullptr) size = resp->Header("content-length");
  if (size == nullptr || !absl::SimpleAtoi(*size, &meta.size)) {
    return absl::DataLossError(absl::StrCat(what, ": the Hub sent no size"));
  }
  if (redirect) {
    const std::string* loc = resp->Header("location");
    if (loc == nullptr) {
      return absl::DataLossError(absl::StrCat(what, ": a redirect without a Location"));
    }
    meta.location = AbsoluteUrl(req.url, *loc);
  } else {
    meta.location = req.url;
  }
  if (const std::string* x = resp->Header("x-xet-hash")) meta.xet_hash = *x;
  return meta;
}

absl::StatusOr<std::string> HubClient::Download(const RepoInfo& repo, absl::string_view path,
                                                const ProgressFn& progress) {
  DownloadOptions options;
  options.progress = progress;
  return Download(repo, path, options);
}

namespace {

// The parts of [offset, size) of `url`, fetched by `connections` threads,
// each part handed to `append` in order as soon as it and every earlier
// part are there. At most connections + 1 parts are held. Stops at the
// first error (every thread joined before returning), or at `cancel`.
class PartFetcher {
 public:
  PartFetcher(HttpClient& http, std::string url, uint64_t offset, uint64_t size,
              uint64_t part_bytes, int connections, const std::atomic<bool>* cancel)
      : http_(http),
        url_(std::move(url)),
        offset_(offset),
        size_(size),
        part_bytes_(part_bytes),
        cancel_(cancel) {
    count_ = (size_ - offset_ + part_bytes_ - 1) / part_bytes_;
    workers_ = static_cast<size_t>(
        std::min<uint64_t>(static_cast<uint64_t>(std::max(connections, 1)), count_));
    window_ = workers_ + 1;
  }
  ~PartFetcher() { Stop(); }

  // `append(bytes)` for each part in order; then OK, or the first error.
  absl::Status Run(const std::function<absl::Status(absl::Span<const uint8_t>)>& append) {
    for (size_t i = 0; i < workers_; ++i) threads_.emplace_back([this] { Work(); });
    for (uint64_t index = 0; index < count_; ++index) {
      std::vector<uint8_t> bytes;
      {
        std::unique_lock<std::mutex> lock(mu_);
        while (true) {
          // A part that is there is appended even after an error or a
          // cancel elsewhere: the .incomplete keeps every whole prefix part.
          auto it = done_.find(index);
          if (it != done_.end()) {
            bytes = std::move(it->second);
            done_.erase(it);
            break;
          }
          if (!error_.ok()) return StopWith(lock, error_);
          if (stop_ || Cancelled()) return StopWith(lock, absl::CancelledError("cancelled"));
          // Bounded: wakes for every finished part, and polls `cancel`.
          cv_.wait_for(lock, std::chrono::milliseconds(100));
        }
      }
      absl::Status s = append(absl::MakeConstSpan(bytes));
      {
        std::lock_guard<std::mutex> lock(mu_);
        appended_ = index + 1;
        if (free_.size() < window_) free_.push_back(std::move(bytes));
      }
      cv_.notify_all();
      if (!s.ok()) {
        std::unique_lock<std::mutex> lock(mu_);
        return StopWith(lock, s);
      }
    }
    Stop();
    return absl::OkStatus();
  }

 private:
  bool Cancelled() const { return cancel_ != nullptr && cancel_->load(); }
  absl::Status StopWith(std::unique_lock<std::mutex>& lock, absl::Status s) {
    stop_ = true;
    lock.unlock();
    Stop();
    return s;
  }
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    stop_flag_.store(true);
    cv_.notify_all();
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
    threads_.clear();
  }
  void Work() {
    while (true) {
      uint64_t index = 0;
      std::vector<uint8_t> buffer;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || next_ >= count_ || next_ < appended_ + window_; });
        if (stop_ || next_ >= count_) return;
        index = next_++;
        if (!free_.empty()) {
          buffer = std::move(free_.back());
          free_.pop_back();
        }
      }
      const uint64_t at = offset_ + index * part_bytes_;
      const uint64_t n = std::min(part_bytes_, size_ - at);
      buffer.resize(static_cast<size_t>(n));
      RangeOptions options;
      options.total_size = size_;
      options.connections = 1;
      options.cancel = &stop_flag_;
      absl::Status s = http_.GetRange(url_, at, absl::MakeSpan(buffer), options);
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (s.ok()) {
          done_.emplace(index, std::move(buffer));
        } else if (error_.ok() && !(stop_ && absl::IsCancelled(s))) {
          error_ = s;
          stop_ = true;
          stop_flag_.store(true);
        }
      }
      cv_.notify_all();
    }
  }

  HttpClient& http_;
  const std::string url_;
  const uint64_t offset_, size_, part_bytes_;
  const std::atomic<bool>* const cancel_;
  uint64_t count_ = 0;
  size_t workers_ = 0;
  uint64_t window_ = 0;  // parts fetched or being fetched ahead of appended_
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_flag_{false};  // stops the GetRanges in flight
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;                                // guarded by mu_
  uint64_t next_ = 0;                                // guarded by mu_
  uint64_t appended_ = 0;                            // guarded by mu_
  std::map<uint64_t, std::vector<uint8_t>> done_;    // guarded by mu_
  std::vector<std::vector<uint8_t>> free_;           // guarded by mu_
  absl::Status error_;                               // guarded by mu_
};

}  // namespace

absl::StatusOr<std::string> HubClient::Download(const RepoInfo& repo, absl::string_view path,
                                                const DownloadOptions& options) {
  const ProgressFn& progress = options.progress;
  absl::Status s = CheckRepoInfo(repo);
  if (!s.ok()) return s;
  std::optional<RepoInfo> fetched;
  absl::StatusOr<const RepoFile*> found = impl_->FindFile(repo, path, fetched);
  if (!found.ok()) return found.status();
  const RepoFile* f = *found;
  if (!IsSafeRepoPath(f->path)) {
    return absl::InvalidArgumentError(
        absl::StrCat(HfName(repo), ": unsafe file path '", EscapeForLog(f->path), "'"));
  }
  const std::string what = absl::StrCat(HfName(repo), "/", EscapeForLog(f->path));
  HubCache& cache = impl_->cache;
  const std::string& repo_id = repo.ref.repo_id;
  const std::string etag = f->etag();
  // Already there: no network.
  if (std::optional<std::string> blob = cache.BlobFile(repo_id, etag)) {
    std::error_code ec;
    if (fs::file_size(*blob, ec) == f->size && !ec) {
      if (progress) progress(f->size, f->size);
      return impl_->Finish(repo, *f);
    }
  }
  if (impl_->config.offline) return impl_->OfflineNotCached(what);
  if (options.cancel != nullptr && options.cancel->load()) {
    return absl::CancelledError(absl::StrCat(what, ": cancelled"));
  }
  absl::StatusOr<std::unique_ptr<HubCache::BlobWriter>> writer =
      cache.BeginBlob(repo_id, etag, f->size);
  if (!writer.ok()) return writer.status();
  HubCache::BlobWriter& w = **writer;
  if (!w.complete()) {
    // Every byte comes from the resolved commit's URL, never the branch's.
    const std::string url = ResolveUrl(repo, f->path);
    const int connections = std::max(1, impl_->config.parallel_connections);
    const uint64_t part = std::clamp<uint64_t>(impl_->config.part_bytes, kMinDownloadPartBytes,
                                               kMaxDownloadPartBytes);
    uint64_t offset = w.resume_offset();
    if (progress) progress(offset, f->size);
    if (offset < f->size) {
      PartFetcher fetcher(impl_->http, url, offset, f->size, part, connections, options.cancel);
      s = fetcher.Run([&](absl::Span<const uint8_t> bytes) {
        absl::Status appended = w.Append(bytes);
        if (!appended.ok()) return appended;
        offset += bytes.size();
        if (progress) progress(offset, f->size);
        return absl::OkStatus();
      });
      if (!s.ok()) return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
    }
  }
  absl::StatusOr<std::string> blob = w.Commit();
  if (!blob.ok())
    return absl::Status(blob.status().code(), absl::StrCat(what, ": ", blob.status().message()));
  writer->reset();
  return impl_->Finish(repo, *f);
}

absl::StatusOr<std::unique_ptr<ByteSource>> HubClient::OpenRemote(const RepoInfo& repo,
                                                                  absl::string_view path) {
  absl::Status s = CheckRepoInfo(repo);
  if (!s.ok()) return s;
  std::optional<RepoInfo> fetched;
  absl::StatusOr<const RepoFile*> found = impl_->FindFile(repo, path, fetched);
  if (!found.ok()) return found.status();
  const RepoFile* f = *found;
  std::string name = absl::StrCat(HfName(repo), "/", EscapeForLog(f->path));
  if (impl_->config.offline && !impl_->cache.BlobFile(repo.ref.repo_id, f->etag())) {
    return impl_->OfflineNotCached(name);
  }
  return std::unique_ptr<ByteSource>(
      std::make_unique<RemoteSource>(impl_->http_owner, impl_->cache_owner, repo.ref.repo_id, *f,
                                     ResolveUrl(repo, f->path), std::move(name)));
}

}  // namespace bigsmall::hub
