// Publishing a directory to the Hub through its commit API, the way
// huggingface_hub's upload_folder does:
//   1. (create_repo) POST /api/repos/create {name, organization, private,
//      type: "model"}; 409 (exists) is fine. A branch other than main that
//      the repo lacks is made first, as `hf upload --revision` does: POST
//      /api/models/{repo}/branch/{branch} (409 fine).
//   2. POST /api/models/{repo}/preupload/{rev} {files: [{path, size,
//      sample (base64 of the first 512 bytes)}]}: the Hub says which files
//      go through LFS ("uploadMode": "lfs") and which inline ("regular"),
//      and the "oid" of the file of that path the branch has now: a file
//      that has not changed (that sha256 for LFS, its git blob sha1 for
//      regular files) is left out of the commit, and when nothing changed
//      no commit is made (huggingface_hub's create_commit does the same).
//   3. POST /{repo}.git/info/lfs/objects/batch {operation: "upload",
//      transfers: ["basic", "multipart"], objects: [{oid: sha256, size}],
//      hash_algo: "sha256"}: objects the Hub already has come back without
//      actions (that is how an interrupted upload resumes: what was sent is
//      not sent again); "basic": PUT the bytes to actions.upload.href;
//      "multipart": PUT each chunk_size part to header["1".."N"], then POST
//      {oid, parts: [{partNumber, etag}]} to actions.upload.href; then
//      actions.verify (POST {oid, size}) when given.
//   4. POST /api/models/{repo}/commit/{rev} (application/x-ndjson): a
//      header line {key: "header", value: {summary, description}}, then one
//      line per file: {key: "file", value: {content (base64), path,
//      encoding: "base64"}} or {key: "lfsFile", value: {path, algo:
//      "sha256", oid, size}}. Answers {commitOid, commitUrl}.
#ifndef BIGSMALL_HUB_HUB_UPLOAD_H_
#define BIGSMALL_HUB_HUB_UPLOAD_H_

#include <string>

#include "absl/status/statusor.h"
#include "hub/hub_client.h"

namespace bigsmall::hub {

struct UploadOptions {
  std::string revision = kDefaultRevision;  // branch to commit to
  bool create_repo = false;
  bool private_repo = false;  // when creating it
  std::string commit_message = "Upload with bigsmall";
  ProgressFn progress;  // bytes of LFS objects sent / to send
};

struct UploadResult {
  std::string commit;      // commitOid
  std::string commit_url;  // (when nothing changed: the branch's head)
  uint64_t files = 0;            // regular files beneath the directory
  uint64_t files_unchanged = 0;  // on the branch as they are: not committed
  uint64_t lfs_files_sent = 0;     // uploaded now
  uint64_t lfs_files_skipped = 0;  // the Hub had them already
  uint64_t bytes_sent = 0;
};

// Every regular file beneath `dir` (no symlinks followed, nothing outside
// it), committed as one commit.
absl::StatusOr<UploadResult> UploadFolder(HubClient& client, const std::string& dir,
                                          const std::string& repo_id,
                                          const UploadOptions& options);

}  // namespace bigsmall::hub

#endif  // BIGSMALL_HUB_HUB_UPLOAD_H_
