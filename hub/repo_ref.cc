#include "hub/repo_ref.h"

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "codec/status_util.h"

namespace bigsmall::hub {
namespace {

constexpr absl::string_view kHfScheme = "hf://";
constexpr size_t kMaxRepoIdBytes = 96;
constexpr size_t kMaxRevisionBytes = 256;

bool IsAlnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}
bool IsRepoIdChar(char c) { return IsAlnum(c) || c == '-' || c == '_' || c == '.'; }

// One part of "owner/name" (huggingface_hub's validate_repo_id, per part):
// starts with [A-Za-z0-9], then [A-Za-z0-9._-]*, does not end with '-' or '.'.
absl::Status CheckRepoIdPart(absl::string_view part, absl::string_view what,
                             absl::string_view text) {
  if (part.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("repo id '", EscapeForLog(text), "': the ", what, " is empty"));
  }
  if (!IsAlnum(part.front())) {
    return absl::InvalidArgumentError(absl::StrCat("repo id '", EscapeForLog(text), "': the ", what,
                                                   " must start with a letter or digit"));
  }
  if (part.back() == '-' || part.back() == '.') {
    return absl::InvalidArgumentError(absl::StrCat("repo id '", EscapeForLog(text), "': the ", what,
                                                   " cannot end with '-' or '.'"));
  }
  for (char c : part) {
    if (!IsRepoIdChar(c)) {
      return absl::InvalidArgumentError(
          absl::StrCat("repo id '", EscapeForLog(text), "': the ", what,
                       " may use only letters, digits, '-', '_' and '.'"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckRepoId(absl::string_view repo_id) {
  if (repo_id.size() > kMaxRepoIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "repo id '", EscapeForLog(repo_id), "' is longer than ", kMaxRepoIdBytes, " characters"));
  }
  const size_t slash = repo_id.find('/');
  if (slash == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("repo id '", EscapeForLog(repo_id), "' must be 'owner/name'"));
  }
  if (repo_id.find('/', slash + 1) != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("repo id '", EscapeForLog(repo_id), "' must be 'owner/name' (one '/')"));
  }
  absl::Status s = CheckRepoIdPart(repo_id.substr(0, slash), "owner", repo_id);
  if (!s.ok()) return s;
  s = CheckRepoIdPart(repo_id.substr(slash + 1), "name", repo_id);
  if (!s.ok()) return s;
  if (absl::StrContains(repo_id, "--") || absl::StrContains(repo_id, "..")) {
    return absl::InvalidArgumentError(
        absl::StrCat("repo id '", EscapeForLog(repo_id), "' cannot contain '--' or '..'"));
  }
  if (absl::EndsWith(repo_id, ".git")) {
    return absl::InvalidArgumentError(
        absl::StrCat("repo id '", EscapeForLog(repo_id), "' cannot end with '.git'"));
  }
  return absl::OkStatus();
}

absl::Status CheckRevision(absl::string_view revision) {
  if (revision.empty()) return absl::InvalidArgumentError("the revision after '@' is empty");
  if (revision.size() > kMaxRevisionBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "revision '", EscapeForLog(revision), "' is longer than ", kMaxRevisionBytes, " bytes"));
  }
  for (unsigned char c : revision) {
    if (c < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError(
          absl::StrCat("revision '", EscapeForLog(revision), "' contains a control character"));
    }
  }
  if (absl::StrContains(revision, "..")) {
    return absl::InvalidArgumentError(
        absl::StrCat("revision '", EscapeForLog(revision), "' cannot contain '..'"));
  }
  if (revision.front() == '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("revision '", EscapeForLog(revision), "' cannot start with '/'"));
  }
  return absl::OkStatus();
}

// RFC 3986 unreserved characters, plus '/' when `keep_slash` (Python's
// urllib.parse.quote with safe="" or safe="/", as huggingface_hub uses).
std::string PercentEncode(absl::string_view text, bool keep_slash) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size());
  for (unsigned char c : text) {
    if (IsAlnum(static_cast<char>(c)) || c == '-' || c == '_' || c == '.' || c == '~' ||
        (keep_slash && c == '/')) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xf]);
    }
  }
  return out;
}

}  // namespace

std::string RepoRef::ToString() const { return absl::StrCat(repo_id, "@", revision); }

bool LooksLikeHubName(absl::string_view text) {
  if (absl::StartsWith(text, kHfScheme)) return true;
  const size_t at = text.find('@');
  const absl::string_view repo = text.substr(0, at);
  if (repo.empty() || repo.front() == '/' || repo.front() == '.') return false;
  size_t slashes = 0;
  for (char c : repo) {
    if (c == '/') {
      ++slashes;
    } else if (!IsRepoIdChar(c)) {
      return false;
    }
  }
  return slashes == 1 && repo.back() != '/';
}

absl::StatusOr<RepoRef> ParseRepoRef(absl::string_view text) {
  absl::string_view rest = text;
  if (absl::StartsWith(rest, kHfScheme)) rest.remove_prefix(kHfScheme.size());
  RepoRef ref;
  const size_t at = rest.find('@');
  if (at != absl::string_view::npos) {
    const absl::string_view revision = rest.substr(at + 1);
    absl::Status s = CheckRevision(revision);
    if (!s.ok()) return s;
    ref.revision = std::string(revision);
    ref.revision_given = true;
    rest = rest.substr(0, at);
  }
  absl::Status s = CheckRepoId(rest);
  if (!s.ok()) return s;
  ref.repo_id = std::string(rest);
  return ref;
}

bool IsCommitHash(absl::string_view revision) {
  if (revision.size() != 40) return false;
  for (char c : revision) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

std::string EncodeRevision(absl::string_view revision) { return PercentEncode(revision, false); }
std::string EncodePath(absl::string_view path) { return PercentEncode(path, true); }

}  // namespace bigsmall::hub
