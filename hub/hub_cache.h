// huggingface_hub's cache layout, shared with Python tools (hf_hub_download,
// snapshot_download, scan_cache_dir read what we write and we read theirs):
//   <root>/models--<owner>--<name>/
//     refs/<revision>                 the commit hash a branch/tag resolved to
//     blobs/<etag>                    file contents (etag: LFS sha256, or the
//                                     git blob id of a small file)
//     blobs/<etag>.incomplete         a download in progress: always a prefix
//                                     of the file (our Download resumes from
//                                     its size, as huggingface_hub 0.x did;
//                                     1.x and 2.x download to a per-process
//                                     <etag>.<8 hex>.incomplete instead and
//                                     do not resume ours)
//     snapshots/<commit>/<path>       symlink -> ../../blobs/<etag> (relative)
//   <root>/.locks/models--<owner>--<name>/<etag>.lock   flock()ed while a
//                                     process writes that blob (huggingface_hub
//                                     uses the same lock: filelock = flock)
// Writes are atomic: a blob appears only by rename of its verified
// .incomplete (size, and sha256 when the etag is one); a ref and a snapshot
// link are written to a temporary name and renamed. A partial blob is never
// visible under its final name. Paths from the Hub are checked (no "..",
// no absolute, no NUL) before they touch the file system, and nothing is
// followed out of the repo's directory.
#ifndef BIGSMALL_HUB_HUB_CACHE_H_
#define BIGSMALL_HUB_HUB_CACHE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace bigsmall::hub {

class HubCache {
 public:
  explicit HubCache(std::string root);

  const std::string& root() const { return root_; }
  // <root>/models--owner--name
  std::string RepoDir(absl::string_view repo_id) const;

  // refs/<revision>, or `revision` itself when it is a commit with a
  // snapshot directory; nullopt when the cache does not know it.
  std::optional<std::string> CachedCommit(absl::string_view repo_id,
                                          absl::string_view revision) const;
  absl::Status WriteRef(absl::string_view repo_id, absl::string_view revision,
                        absl::string_view commit);

  // snapshots/<commit>/<path> when it links to a complete blob.
  std::optional<std::string> SnapshotFile(absl::string_view repo_id, absl::string_view commit,
                                          absl::string_view path) const;
  // blobs/<etag> when complete.
  std::optional<std::string> BlobFile(absl::string_view repo_id, absl::string_view etag) const;
  // Makes snapshots/<commit>/<path> link to blobs/<etag> (atomic).
  absl::Status LinkSnapshot(absl::string_view repo_id, absl::string_view commit,
                            absl::string_view path, absl::string_view etag);

  // Writing one blob. Begin takes the blob's lock (waiting for another
  // process that holds it, at most `lock_timeout_ms`; UNAVAILABLE after) and
  // opens blobs/<etag>.incomplete for appending; resume_offset() is its
  // size (a longer one than expected_size is discarded). Append writes in
  // order; Commit checks the size and, for a 64-hex etag, the sha256 of the
  // whole file (DATA_LOSS on a mismatch: the .incomplete is removed, nothing
  // becomes visible), fsyncs, renames it to blobs/<etag> and releases the
  // lock. Destroying an uncommitted writer keeps the .incomplete (to resume)
  // and releases the lock. When the blob already exists, Begin returns a
  // writer whose complete() is true.
  class BlobWriter {
   public:
    ~BlobWriter();
    BlobWriter(const BlobWriter&) = delete;
    BlobWriter& operator=(const BlobWriter&) = delete;
    bool complete() const;
    uint64_t resume_offset() const;
    absl::Status Append(absl::Span<const uint8_t> bytes);
    // Returns the blob's path.
    absl::StatusOr<std::string> Commit();

   private:
    friend class HubCache;
    struct State;
    explicit BlobWriter(std::unique_ptr<State> state);
    std::unique_ptr<State> state_;
  };
  absl::StatusOr<std::unique_ptr<BlobWriter>> BeginBlob(absl::string_view repo_id,
                                                        absl::string_view etag,
                                                        uint64_t expected_size,
                                                        int lock_timeout_ms = 600'000);

 private:
  std::string root_;
};

}  // namespace bigsmall::hub

#endif  // BIGSMALL_HUB_HUB_CACHE_H_
