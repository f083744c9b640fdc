#include "hub/hub_parse.h"

#include <curl/curl.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "codec/status_util.h"

namespace bigsmall::hub {
namespace {

using json = nlohmann::json;

// A multipart chunk_size the Hub may ask for (S3 allows 5 GiB; the Hub
// uses far less), and parts per object (S3's limit).
constexpr uint64_t kMaxPartBytes = 1ull << 30;
constexpr uint64_t kMaxParts = 10'000;

bool IsHex(absl::string_view s, size_t size) {
  if (s.size() != size) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

json Parse(absl::string_view body) {
  return json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
}

const json* Member(const json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

std::optional<std::string> StringMember(const json& object, const char* key) {
  const json* v = Member(object, key);
  if (v == nullptr || !v->is_string()) return std::nullopt;
  return v->get<std::string>();
}

// An unsigned number, given as a number or as a decimal string.
std::optional<uint64_t> NumberMember(const json& object, const char* key) {
  const json* v = Member(object, key);
  if (v == nullptr) return std::nullopt;
  if (v->is_number_unsigned()) return v->get<uint64_t>();
  if (v->is_number_integer()) {
    const int64_t n = v->get<int64_t>();
    if (n < 0) return std::nullopt;
    return static_cast<uint64_t>(n);
  }
  if (v->is_string()) {
    uint64_t n = 0;
    if (absl::SimpleAtoi(v->get_ref<const std::string&>(), &n)) return n;
  }
  return std::nullopt;
}

}  // namespace

absl::Status MalformedAnswer(absl::string_view what, absl::string_view why) {
  return absl::DataLossError(absl::StrCat(what, ": malformed answer from the Hub (", why, ")"));
}

bool IsSafeRepoPath(absl::string_view path) {
  if (path.empty() || path.size() > 4096 || path.front() == '/') return false;
  for (unsigned char c : path) {
    if (c < 0x20 || c == 0x7f) return false;
  }
  for (absl::string_view seg : absl::StrSplit(path, '/')) {
    if (seg.empty() || seg == "." || seg == ".." || seg.size() > 255) return false;
  }
  return true;
}

absl::StatusOr<RepoInfo> ParseModelInfo(const RepoRef& ref, absl::string_view body) {
  const std::string what = absl::StrCat("hf://", EscapeForLog(ref.ToString()));
  json j = Parse(body);
  if (j.is_discarded() || !j.is_object()) {
    return absl::DataLossError(absl::StrCat(what, ": the Hub's model info is not a JSON object"));
  }
  RepoInfo info;
  info.ref = ref;
  auto sha = j.find("sha");
  if (sha == j.end() || !sha->is_string() || !IsCommitHash(sha->get<std::string>())) {
    return absl::DataLossError(absl::StrCat(what, ": the Hub's model info has no 40-hex \"sha\""));
  }
  info.commit = sha->get<std::string>();
  if (auto p = j.find("private"); p != j.end() && p->is_boolean()) info.is_private = p->get<bool>();
  if (auto g = j.find("gated"); g != j.end()) {
    // false, or "auto" / "manual".
    info.gated =
        (g->is_boolean() && g->get<bool>()) || (g->is_string() && !g->get<std::string>().empty());
  }
  auto siblings = j.find("siblings");
  if (siblings == j.end()) return info;
  if (!siblings->is_array()) {
    return absl::DataLossError(absl::StrCat(what, ": \"siblings\" is not a list"));
  }
  info.files.reserve(siblings->size());
  for (const json& s : *siblings) {
    if (!s.is_object()) {
      return absl::DataLossError(absl::StrCat(what, ": a sibling is not an object"));
    }
    auto name = s.find("rfilename");
    if (name == s.end() || !name->is_string()) {
      return absl::DataLossError(absl::StrCat(what, ": a sibling has no \"rfilename\""));
    }
    RepoFile f;
    f.path = name->get<std::string>();
    if (!IsSafeRepoPath(f.path)) {
      return absl::DataLossError(absl::StrCat(what, ": the Hub listed a file with an unsafe path '",
                                              EscapeForLog(f.path), "'"));
    }
    auto size = s.find("size");
    if (size != s.end() && size->is_number_unsigned()) f.size = size->get<uint64_t>();
    // Asked with ?blobs=true: every file has its git blob id.
    auto blob = s.find("blobId");
    if (blob == s.end() || !blob->is_string() || !IsHex(blob->get<std::string>(), 40)) {
      return absl::DataLossError(
          absl::StrCat(what, ": file '", EscapeForLog(f.path), "' has no 40-hex blobId"));
    }
    f.blob_id = blob->get<std::string>();
    if (auto lfs = s.find("lfs"); lfs != s.end() && lfs->is_object()) {
      auto oid = lfs->find("sha256");
      if (oid == lfs->end() || !oid->is_string() || !IsHex(oid->get<std::string>(), 64)) {
        return absl::DataLossError(
            absl::StrCat(what, ": LFS file '", EscapeForLog(f.path), "' has no sha256"));
      }
      f.sha256 = oid->get<std::string>();
      if (auto lsize = lfs->find("size"); lsize != lfs->end() && lsize->is_number_unsigned()) {
        f.size = lsize->get<uint64_t>();
      }
    }
    info.files.push_back(std::move(f));
  }
  return info;
}

std::optional<ContentRange> ParseContentRange(absl::string_view value) {
  absl::string_view v = absl::StripAsciiWhitespace(value);
  if (!absl::ConsumePrefix(&v, "bytes ")) return std::nullopt;
  const size_t dash = v.find('-');
  const size_t slash = v.find('/');
  if (dash == absl::string_view::npos || slash == absl::string_view::npos || slash < dash) {
    return std::nullopt;
  }
  ContentRange r;
  if (!absl::SimpleAtoi(v.substr(0, dash), &r.first) ||
      !absl::SimpleAtoi(v.substr(dash + 1, slash - dash - 1), &r.last) || r.last < r.first) {
    return std::nullopt;
  }
  const absl::string_view t = v.substr(slash + 1);
  if (t != "*") {
    uint64_t x = 0;
    if (!absl::SimpleAtoi(t, &x) || x <= r.last) return std::nullopt;
    r.total = x;
  }
  return r;
}

std::optional<std::chrono::milliseconds> ParseRetryAfter(absl::string_view value, time_t now) {
  const absl::string_view v = absl::StripAsciiWhitespace(value);
  constexpr int64_t kMaxSeconds = int64_t{1} << 40;
  int64_t seconds = 0;
  if (absl::SimpleAtoi(v, &seconds)) {
    if (seconds < 0) return std::nullopt;
    return std::chrono::milliseconds(std::min(seconds, kMaxSeconds) * 1000);
  }
  if (v.size() > 256) return std::nullopt;  // no date is that long
  const std::string date(v);
  const time_t when = curl_getdate(date.c_str(), nullptr);
  if (when == -1) return std::nullopt;
  if (when <= now) return std::chrono::milliseconds(0);
  // Both are time_t: the difference may overflow int64 for hostile dates.
  const int64_t ahead = static_cast<int64_t>(when) / 2 - static_cast<int64_t>(now) / 2;
  if (ahead >= kMaxSeconds / 2) return std::chrono::milliseconds(kMaxSeconds * 1000);
  return std::chrono::milliseconds(static_cast<int64_t>(when - now) * 1000);
}

std::string UnquoteEtag(absl::string_view etag) {
  absl::ConsumePrefix(&etag, "W/");
  if (etag.size() >= 2 && etag.front() == '"' && etag.back() == '"') {
    etag = etag.substr(1, etag.size() - 2);
  }
  return std::string(etag);
}

std::string AbsoluteUrl(absl::string_view base, absl::string_view location) {
  if (absl::StartsWith(location, "http://") || absl::StartsWith(location, "https://")) {
    return std::string(location);
  }
  const size_t scheme_end = base.find("://");
  if (scheme_end == absl::string_view::npos) return std::string(location);
  const size_t path_start = base.find('/', scheme_end + 3);
  const absl::string_view origin =
      path_start == absl::string_view::npos ? base : base.substr(0, path_start);
  if (absl::StartsWith(location, "//")) {
    return absl::StrCat(base.substr(0, scheme_end + 1), location);
  }
  if (absl::StartsWith(location, "/")) return absl::StrCat(origin, location);
  // Relative to the current directory.
  absl::string_view path =
      path_start == absl::string_view::npos ? absl::string_view("/") : base.substr(path_start);
  path = path.substr(0, path.find_first_of("?#"));
  path = path.substr(0, path.rfind('/') + 1);
  return absl::StrCat(origin, path, location);
}

absl::StatusOr<std::vector<PreuploadEntry>> ParsePreuploadAnswer(absl::string_view body,
                                                                 absl::string_view what) {
  const json answer = Parse(body);
  if (answer.is_discarded()) return MalformedAnswer(what, "not JSON");
  const json* files = Member(answer, "files");
  if (files == nullptr || !files->is_array()) return MalformedAnswer(what, "no files");
  std::vector<PreuploadEntry> out;
  out.reserve(files->size());
  for (const json& entry : *files) {
    PreuploadEntry e;
    std::optional<std::string> path = StringMember(entry, "path");
    std::optional<std::string> mode = StringMember(entry, "uploadMode");
    if (!path || !mode) return MalformedAnswer(what, "a file without path or uploadMode");
    e.path = std::move(*path);
    e.mode = std::move(*mode);
    e.oid = StringMember(entry, "oid");
    out.push_back(std::move(e));
  }
  return out;
}

absl::StatusOr<std::vector<LfsObjectAnswer>> ParseLfsBatchAnswer(absl::string_view body,
                                                                 absl::string_view what) {
  const json answer = Parse(body);
  if (answer.is_discarded()) return MalformedAnswer(what, "not JSON");
  const json* objects = Member(answer, "objects");
  if (objects == nullptr || !objects->is_array()) return MalformedAnswer(what, "no objects");
  std::vector<LfsObjectAnswer> out;
  out.reserve(objects->size());
  for (const json& object : *objects) {
    LfsObjectAnswer a;
    std::optional<std::string> oid = StringMember(object, "oid");
    if (!oid) return MalformedAnswer(what, "an object without oid");
    a.oid = std::move(*oid);
    if (const json* error = Member(object, "error"); error != nullptr) {
      a.has_error = true;
      a.error_code = NumberMember(*error, "code").value_or(0);
      a.error_message = StringMember(*error, "message").value_or("");
      out.push_back(std::move(a));
      continue;
    }
    const json* actions = Member(object, "actions");
    const json* upload = actions == nullptr ? nullptr : Member(*actions, "upload");
    if (upload == nullptr) {  // the Hub has it already
      out.push_back(std::move(a));
      continue;
    }
    a.upload = true;
    std::optional<std::string> href = StringMember(*upload, "href");
    if (!href) return MalformedAnswer(what, "upload action without href");
    a.upload_href = std::move(*href);
    const json* header = Member(*upload, "header");
    if (header != nullptr && !header->is_null() && !header->is_object()) {
      return MalformedAnswer(what, "upload header is not an object");
    }
    if (header != nullptr && Member(*header, "chunk_size") != nullptr) {
      const std::optional<uint64_t> chunk_size = NumberMember(*header, "chunk_size");
      if (!chunk_size || *chunk_size == 0 || *chunk_size > kMaxPartBytes) {
        return MalformedAnswer(what, "chunk_size out of range");
      }
      a.chunk_size = *chunk_size;
      for (auto it = header->begin(); it != header->end(); ++it) {
        const std::string& key = it.key();
        if (key.empty() || !std::all_of(key.begin(), key.end(), absl::ascii_isdigit)) continue;
        uint64_t number = 0;
        if (!absl::SimpleAtoi(key, &number) || number == 0 || number > kMaxParts ||
            !it.value().is_string()) {
          return MalformedAnswer(what, absl::StrCat("part '", EscapeForLog(key, 40), "'"));
        }
        a.part_urls[number] = it.value().get<std::string>();
      }
    }
    if (const json* verify = actions == nullptr ? nullptr : Member(*actions, "verify");
        verify != nullptr) {
      std::optional<std::string> verify_href = StringMember(*verify, "href");
      if (!verify_href) return MalformedAnswer(what, "verify action without href");
      a.verify_href = std::move(*verify_href);
    }
    out.push_back(std::move(a));
  }
  return out;
}

absl::Status CheckMultipart(const LfsObjectAnswer& answer, uint64_t size, absl::string_view what) {
  if (!answer.chunk_size || *answer.chunk_size == 0) return MalformedAnswer(what, "no chunk_size");
  const uint64_t chunk = *answer.chunk_size;
  const uint64_t parts = size / chunk + (size % chunk != 0 ? 1 : 0);
  if (parts > kMaxParts) return MalformedAnswer(what, "too many parts");
  for (const auto& [number, url] : answer.part_urls) {
    if (number == 0 || number > parts) {
      return MalformedAnswer(what, absl::StrCat("part '", number, "'"));
    }
  }
  if (answer.part_urls.size() != parts) {
    return MalformedAnswer(what, absl::StrCat(answer.part_urls.size(), " part URLs for ", parts,
                                              " parts of ", chunk, " bytes"));
  }
  return absl::OkStatus();
}

absl::StatusOr<CommitAnswer> ParseCommitAnswer(absl::string_view body, absl::string_view what) {
  const json answer = Parse(body);
  if (answer.is_discarded()) return MalformedAnswer(what, "not JSON");
  std::optional<std::string> oid = StringMember(answer, "commitOid");
  if (!oid) return MalformedAnswer(what, "no commitOid");
  CommitAnswer out;
  out.commit = std::move(*oid);
  out.commit_url = StringMember(answer, "commitUrl").value_or("");
  return out;
}

absl::StatusOr<std::string> ParseRevisionSha(absl::string_view body, absl::string_view what) {
  const json answer = Parse(body);
  if (answer.is_discarded()) return MalformedAnswer(what, "not JSON");
  std::optional<std::string> sha = StringMember(answer, "sha");
  if (!sha || !IsCommitHash(*sha)) return MalformedAnswer(what, "no 40-hex sha");
  return *sha;
}

}  // namespace bigsmall::hub
