// Fuzzes the parsers of what the Hub sends (hub/hub_parse.h) and of Hub model
// names (ParseRepoRef). The first byte picks the parser; the rest is its
// input. Seeds (corpus/hub_parse/) are the fake Hub's real answers.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "hub/hub_parse.h"
#include "hub/repo_ref.h"

namespace {

using namespace bigsmall::hub;

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t which = data[0];
  const absl::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (which % 9) {
    case 0: {
      RepoRef ref;
      ref.repo_id = "owner/model";
      ref.revision = "main";
      absl::StatusOr<RepoInfo> info = ParseModelInfo(ref, in);
      if (info.ok()) {
        Check(IsCommitHash(info->commit));
        for (const RepoFile& f : info->files) {
          // Accepted paths are relative and never climb out of the repo.
          Check(IsSafeRepoPath(f.path));
          Check(f.blob_id.size() == 40);
          Check(!f.sha256 || f.sha256->size() == 64);
        }
      }
      break;
    }
    case 1: {
      std::optional<ContentRange> r = ParseContentRange(in);
      if (r) Check(r->first <= r->last && (!r->total || *r->total > r->last));
      break;
    }
    case 2: {
      std::optional<std::chrono::milliseconds> d = ParseRetryAfter(in, 1'700'000'000);
      if (d) Check(d->count() >= 0);
      break;
    }
    case 3: {
      const std::string e = UnquoteEtag(in);
      Check(e.size() <= in.size());
      break;
    }
    case 4: {
      // "base\nlocation"
      const size_t nl = in.find('\n');
      const absl::string_view base = nl == absl::string_view::npos ? in : in.substr(0, nl);
      const absl::string_view location =
          nl == absl::string_view::npos ? absl::string_view() : in.substr(nl + 1);
      const std::string url = AbsoluteUrl(base, location);
      Check(url.size() <= base.size() + location.size() + 1);
      break;
    }
    case 5:
      ParsePreuploadAnswer(in, "fuzz").IgnoreError();
      break;
    case 6: {
      absl::StatusOr<std::vector<LfsObjectAnswer>> a = ParseLfsBatchAnswer(in, "fuzz");
      if (a.ok()) {
        for (const LfsObjectAnswer& o : *a) {
          for (const auto& [number, url] : o.part_urls) Check(number >= 1 && number <= 10'000);
          // Sizes from 0 up to past what the parts may cover.
          for (uint64_t object_size : {uint64_t{0}, uint64_t{1}, uint64_t{12345}, ~uint64_t{0}}) {
            CheckMultipart(o, object_size, "fuzz").IgnoreError();
          }
        }
      }
      break;
    }
    case 7:
      ParseCommitAnswer(in, "fuzz").IgnoreError();
      ParseRevisionSha(in, "fuzz").IgnoreError();
      break;
    case 8: {
      absl::StatusOr<RepoRef> ref = ParseRepoRef(in);
      if (ref.ok()) {
        // What ParseRepoRef accepts, it accepts again from its own text.
        absl::StatusOr<RepoRef> again = ParseRepoRef(ref->ToString());
        Check(again.ok() && again->repo_id == ref->repo_id && again->revision == ref->revision);
        Check(!EncodeRevision(ref->revision).empty());
      }
      break;
    }
  }
  return 0;
}
