// Names of Hugging Face Hub models, the way users write them everywhere else:
// "owner/repo", "owner/repo@revision", "hf://owner/repo[@revision]". A
// revision is a branch, a tag, a commit (40 hex digits) or "refs/pr/N".
#ifndef BIGSMALL_HUB_REPO_REF_H_
#define BIGSMALL_HUB_REPO_REF_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace bigsmall::hub {

inline constexpr char kDefaultRevision[] = "main";

struct RepoRef {
  std::string repo_id;                    // "owner/name"
  std::string revision = kDefaultRevision;
  bool revision_given = false;            // "@rev" was written
  // "owner/name@revision".
  std::string ToString() const;
  friend bool operator==(const RepoRef&, const RepoRef&) = default;
};

// True when `text` names a Hub model rather than a local path: it starts with
// "hf://", or it is "owner/name[@rev]" (exactly one '/', no leading '/' or
// '.', every character allowed in a repo id). Callers that accept both (the
// CLI) check for an existing local path first.
bool LooksLikeHubName(absl::string_view text);

// Parses and validates (INVALID_ARGUMENT, saying what is wrong): a repo id is
// "owner/name", each part [A-Za-z0-9][A-Za-z0-9._-]* with no "--" or "..",
// at most 96 characters in all; a revision is non-empty, at most 256 bytes,
// no "..", no control characters, no leading '/'.
absl::StatusOr<RepoRef> ParseRepoRef(absl::string_view text);

// True for a full commit hash (40 lowercase hex digits).
bool IsCommitHash(absl::string_view revision);

// Percent-encoding for URLs: a revision is one path segment ('/' becomes
// %2F: "refs/pr/1" -> "refs%2Fpr%2F1"); a file path keeps its '/'.
std::string EncodeRevision(absl::string_view revision);
std::string EncodePath(absl::string_view path);

}  // namespace bigsmall::hub

#endif  // BIGSMALL_HUB_REPO_REF_H_
