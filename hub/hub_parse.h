// Parsers of what the Hub (or anything answering at its endpoint, a CDN, an
// LFS server) sends: untrusted input, kept apart so that they are fuzzed
// (tests/fuzz/hub_parse_fuzz.cc) and unit-tested without a server. None of
// them throws, aborts or allocates more than a bounded multiple of its input.
#ifndef BIGSMALL_HUB_HUB_PARSE_H_
#define BIGSMALL_HUB_HUB_PARSE_H_

#include <chrono>
#include <cstdint>
#include <ctime>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "hub/hub_client.h"
#include "hub/repo_ref.h"

namespace bigsmall::hub {

// A file path the Hub listed: relative, '/'-separated, at most 4096 bytes,
// no empty, "." or ".." segment (each at most 255 bytes), no NUL or other
// control character.
bool IsSafeRepoPath(absl::string_view path);

// GET /api/models/{repo}/revision/{rev}?blobs=true: the commit (40 hex) and
// every file (a safe path, 40-hex blobId, the LFS sha256 when there is one).
// DATA_LOSS naming what is wrong.
absl::StatusOr<RepoInfo> ParseModelInfo(const RepoRef& ref, absl::string_view body);

// Content-Range: "bytes a-b/total" (total may be '*': nullopt). nullopt
// when malformed, b < a, or total <= b.
struct ContentRange {
  uint64_t first = 0, last = 0;
  std::optional<uint64_t> total;
};
std::optional<ContentRange> ParseContentRange(absl::string_view value);

// Retry-After: delta-seconds or an HTTP date (relative to `now`); nullopt
// when unreadable or negative. Never more than 2^40 s.
std::optional<std::chrono::milliseconds> ParseRetryAfter(absl::string_view value, time_t now);

// An ETag without W/ and its quotes: "W/\"abc\"" -> "abc".
std::string UnquoteEtag(absl::string_view etag);

// `location` made absolute against `base` (an absolute http(s) URL):
// absolute, scheme-relative ("//host/x"), absolute-path or relative.
std::string AbsoluteUrl(absl::string_view base, absl::string_view location);

// POST /api/models/{repo}/preupload/{rev}: {"files": [{path, uploadMode,
// oid?}]}. DATA_LOSS "malformed answer" on a missing piece.
struct PreuploadEntry {
  std::string path;
  std::string mode;  // "lfs", "regular" (anything else is kept to refuse)
  std::optional<std::string> oid;
};
absl::StatusOr<std::vector<PreuploadEntry>> ParsePreuploadAnswer(absl::string_view body,
                                                                 absl::string_view what);

// POST {repo}.git/info/lfs/objects/batch: {"objects": [...]}, per object
// its error, or no upload action (the Hub has it), or a basic upload (href),
// or a multipart one (header: chunk_size and "1".."N" part URLs), and the
// verify action.
struct LfsObjectAnswer {
  std::string oid;
  bool has_error = false;
  uint64_t error_code = 0;
  std::string error_message;
  bool upload = false;  // an upload action: send it
  std::string upload_href;
  std::optional<uint64_t> chunk_size;         // multipart when set (1..1 GiB)
  std::map<uint64_t, std::string> part_urls;  // part number (1..) -> URL
  std::optional<std::string> verify_href;
};
absl::StatusOr<std::vector<LfsObjectAnswer>> ParseLfsBatchAnswer(absl::string_view body,
                                                                 absl::string_view what);
// A multipart answer fits an object of `size` bytes: part URLs 1..N for
// exactly N = ceil(size / chunk_size) parts, N <= 10000.
absl::Status CheckMultipart(const LfsObjectAnswer& answer, uint64_t size, absl::string_view what);

// POST /api/models/{repo}/commit/{rev}: {commitOid, commitUrl?}.
struct CommitAnswer {
  std::string commit;
  std::string commit_url;
};
absl::StatusOr<CommitAnswer> ParseCommitAnswer(absl::string_view body, absl::string_view what);

// The "sha" (40 hex digits) of a model-info or revision answer (a branch's
// head): uploads, to report the commit when there was nothing to commit.
absl::StatusOr<std::string> ParseRevisionSha(absl::string_view body, absl::string_view what);

// A "DATA_LOSS: <what>: malformed answer from the Hub (<why>)" (docs/FORMAT.md
// §10.1 hub-data: an answer that is not what the API answers).
absl::Status MalformedAnswer(absl::string_view what, absl::string_view why);

}  // namespace bigsmall::hub

#endif  // BIGSMALL_HUB_HUB_PARSE_H_
