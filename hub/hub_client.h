// The Hub's model API, over HttpClient and HubCache:
//   Resolve   GET /api/models/{repo}/revision/{rev}?blobs=true: the commit a
//             revision names now, and the repo's files (size; the LFS sha256
//             where there is one). Offline (or with the revision cached and
//             `prefer_cache`): from refs/ and snapshots/ only.
//   Head      HEAD /{repo}/resolve/{commit}/{path} without following the
//             redirect: X-Repo-Commit, X-Linked-Etag/ETag, X-Linked-Size/
//             Content-Length, Location (a CDN, or for Xet-backed repos the
//             LFS-compatible route; X-Xet-Hash is kept).
//   Download  a file into the cache (hub/hub_cache.h), resumable, verified,
//             parts (part_bytes) fetched in parallel_connections parallel
//             GETs, each appended as soon as it and every earlier part are
//             complete (so the .incomplete is always a prefix, and a killed
//             download resumes from its last whole part); at most
//             parallel_connections + 1 parts held in memory; cancellable;
//             no network when it is already there. (Only our own Download,
//             and huggingface_hub 0.x, resume our <etag>.incomplete:
//             huggingface_hub 1.x and 2.x download to a per-process
//             <etag>.<8 hex>.incomplete and do not resume ours.)
//   OpenRemote a ByteSource over one file of a resolved commit: reads come
//             from the cached blob when it is complete, else by ranged GETs
//             (the daemon streams layers this way before the download ends),
//             after the first one straight to the file's CDN URL (HttpClient
//             remembers it for final_url_ttl; a CDN refusal resolves again).
// Errors: see HttpError (hub/http.h); offline and not cached is NOT_FOUND
// saying so; a size or sha256 that does not match is DATA_LOSS.
#ifndef BIGSMALL_HUB_HUB_CLIENT_H_
#define BIGSMALL_HUB_HUB_CLIENT_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "codec/byte_source.h"
#include "hub/http.h"
#include "hub/hub_cache.h"
#include "hub/hub_config.h"
#include "hub/repo_ref.h"

namespace bigsmall::hub {

struct RepoFile {
  std::string path;                 // "model-00001-of-00002.safetensors"
  uint64_t size = 0;
  std::string blob_id;              // git object id
  std::optional<std::string> sha256;  // LFS files
  // What the cache names its blob: the sha256 for LFS files, else blob_id.
  const std::string& etag() const { return sha256 ? *sha256 : blob_id; }
};

struct RepoInfo {
  RepoRef ref;
  std::string commit;  // 40 hex
  bool is_private = false;
  bool gated = false;
  bool from_cache = false;  // resolved offline from refs/ + snapshots/
  std::vector<RepoFile> files;
  const RepoFile* Find(absl::string_view path) const;
};

struct FileMeta {
  std::string commit;
  std::string etag;
  uint64_t size = 0;
  std::string location;  // absolute URL the bytes come from
  std::optional<std::string> xet_hash;
};

// Called with (bytes done, bytes total) as a download advances.
using ProgressFn = std::function<void(uint64_t, uint64_t)>;

struct DownloadOptions {
  ProgressFn progress;  // bytes appended to the .incomplete so far
  // When set and it becomes true, the download stops within ~0.2 s and
  // returns CANCELLED; what was appended stays in the .incomplete, which the
  // next Download resumes.
  const std::atomic<bool>* cancel = nullptr;
};

class HubClient {
 public:
  explicit HubClient(HubConfig config);
  ~HubClient();

  const HubConfig& config() const;
  HttpClient& http();
  HubCache& cache();

  // `prefer_cache`: a revision the cache already resolved is not asked
  // again (a commit hash always is served from the cache when it has it).
  absl::StatusOr<RepoInfo> Resolve(const RepoRef& ref, bool prefer_cache = false);
  absl::StatusOr<FileMeta> Head(const RepoInfo& repo, absl::string_view path);
  // Returns the snapshot path (snapshots/<commit>/<path>); writes refs/ for
  // a branch or tag.
  absl::StatusOr<std::string> Download(const RepoInfo& repo, absl::string_view path,
                                       const ProgressFn& progress = nullptr);
  absl::StatusOr<std::string> Download(const RepoInfo& repo, absl::string_view path,
                                       const DownloadOptions& options);
  absl::StatusOr<std::unique_ptr<ByteSource>> OpenRemote(const RepoInfo& repo,
                                                         absl::string_view path);

  // The URL of a file at a commit: {endpoint}/{repo}/resolve/{commit}/{path}.
  std::string ResolveUrl(const RepoInfo& repo, absl::string_view path) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace bigsmall::hub

#endif  // BIGSMALL_HUB_HUB_CLIENT_H_
