// The parsers of the Hub's answers (hub/hub_parse.h), without a server;
// each case the fuzzer (tests/fuzz/hub_parse_fuzz.cc) found is here too.
#include "hub/hub_parse.h"

#include <string>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace bigsmall::hub {
namespace {

const char kSha[] = "0123456789abcdef0123456789abcdef01234567";

RepoRef Ref() {
  RepoRef r;
  r.repo_id = "owner/model";
  r.revision = "main";
  return r;
}

TEST(HubParseTest, ModelInfoWithFiles) {
  const std::string body = std::string(R"({"sha": ")") + kSha +
                           R"(", "private": true, "gated": "manual", "siblings": [
      {"rfilename": "a/b.bin", "size": 5, "blobId": ")" + kSha + R"("},
      {"rfilename": "m.safetensors", "size": 130, "blobId": ")" + kSha +
                           R"(", "lfs": {"sha256": ")" + std::string(kSha) + "abcdefabcdefabcdefabcdef" +
                           R"(", "size": 1000}}]})";
  absl::StatusOr<RepoInfo> info = ParseModelInfo(Ref(), body);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->commit, kSha);
  EXPECT_TRUE(info->is_private);
  EXPECT_TRUE(info->gated);
  ASSERT_EQ(info->files.size(), 2u);
  EXPECT_EQ(info->files[0].path, "a/b.bin");
  EXPECT_EQ(info->files[0].size, 5u);
  EXPECT_FALSE(info->files[0].sha256);
  EXPECT_EQ(info->files[1].size, 1000u);
  ASSERT_TRUE(info->files[1].sha256);
}

TEST(HubParseTest, ModelInfoRefusals) {
  const std::string sha = std::string(R"({"sha": ")") + kSha + R"(", "siblings": )";
  for (const std::string& body :
       {std::string("not json"), std::string("[]"), std::string(R"({"sha": "abc"})"),
        sha + "{}}", sha + "[1]}", sha + R"([{"size": 1}]})",
        sha + R"([{"rfilename": "../x", "blobId": ")" + kSha + R"("}]})",
        sha + R"([{"rfilename": "a//b", "blobId": ")" + kSha + R"("}]})",
        sha + R"([{"rfilename": "ok"}]})",
        sha + R"([{"rfilename": "ok", "blobId": ")" + kSha + R"(", "lfs": {}}]})"}) {
    absl::StatusOr<RepoInfo> info = ParseModelInfo(Ref(), body);
    EXPECT_EQ(info.status().code(), absl::StatusCode::kDataLoss) << body;
  }
}

TEST(HubParseTest, SafeRepoPaths) {
  EXPECT_TRUE(IsSafeRepoPath("a/b.c"));
  for (const char* bad : {"", "/a", "a/", "a//b", "./a", "a/..", "..", "a\nb", "a\x7f"}) {
    EXPECT_FALSE(IsSafeRepoPath(bad)) << bad;
  }
  EXPECT_FALSE(IsSafeRepoPath(std::string("a\0b", 3)));
  EXPECT_FALSE(IsSafeRepoPath(std::string(256, 'x')));
  EXPECT_TRUE(IsSafeRepoPath(std::string(255, 'x')));
}

TEST(HubParseTest, ContentRange) {
  std::optional<ContentRange> r = ParseContentRange(" bytes 0-9/100 ");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->first, 0u);
  EXPECT_EQ(r->last, 9u);
  EXPECT_EQ(r->total, 100u);
  r = ParseContentRange("bytes 5-5/*");
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->total);
  for (const char* bad : {"bytes 9-0/100", "bytes 0-9/9", "bytes */100", "bytes 0-9", "0-9/100",
                          "bytes -1-9/100", "bytes 0-99999999999999999999/1", "bytes 0/9-10"}) {
    EXPECT_FALSE(ParseContentRange(bad)) << bad;
  }
}

TEST(HubParseTest, RetryAfter) {
  EXPECT_EQ(ParseRetryAfter("3", 0), std::chrono::milliseconds(3000));
  EXPECT_FALSE(ParseRetryAfter("-3", 0));
  EXPECT_FALSE(ParseRetryAfter("soon", 0));
  EXPECT_EQ(ParseRetryAfter("99999999999999999", 0),
            std::chrono::milliseconds((int64_t{1} << 40) * 1000));
  const time_t when = 784111777;  // Sun, 06 Nov 1994 08:49:37 GMT
  EXPECT_EQ(ParseRetryAfter("Sun, 06 Nov 1994 08:49:37 GMT", when - 7),
            std::chrono::milliseconds(7000));
  EXPECT_EQ(ParseRetryAfter("Sun, 06 Nov 1994 08:49:37 GMT", when + 7),
            std::chrono::milliseconds(0));
}

TEST(HubParseTest, EtagsAndUrls) {
  EXPECT_EQ(UnquoteEtag("W/\"abc\""), "abc");
  EXPECT_EQ(UnquoteEtag("\"abc\""), "abc");
  EXPECT_EQ(UnquoteEtag("\""), "\"");
  EXPECT_EQ(UnquoteEtag("abc"), "abc");
  EXPECT_EQ(AbsoluteUrl("http://h:1/a/b?q", "/x"), "http://h:1/x");
  EXPECT_EQ(AbsoluteUrl("http://h:1/a/b?q", "x"), "http://h:1/a/x");
  EXPECT_EQ(AbsoluteUrl("https://h/a", "//cdn/y"), "https://cdn/y");
  EXPECT_EQ(AbsoluteUrl("http://h", "x"), "http://h/x");
  EXPECT_EQ(AbsoluteUrl("http://h/a", "https://o/z"), "https://o/z");
}

TEST(HubParseTest, PreuploadAnswer) {
  absl::StatusOr<std::vector<PreuploadEntry>> e = ParsePreuploadAnswer(
      R"({"files": [{"path": "a", "uploadMode": "lfs", "oid": "x"},
                    {"path": "b", "uploadMode": "regular", "oid": null}]})",
      "t");
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_EQ(e->size(), 2u);
  EXPECT_EQ((*e)[0].mode, "lfs");
  EXPECT_EQ((*e)[0].oid, "x");
  EXPECT_FALSE((*e)[1].oid);
  for (const char* bad : {"x", "{}", R"({"files": {}})", R"({"files": [{"path": "a"}]})",
                          R"({"files": [1]})"}) {
    EXPECT_EQ(ParsePreuploadAnswer(bad, "t").status().code(), absl::StatusCode::kDataLoss) << bad;
  }
}

TEST(HubParseTest, LfsBatchAnswer) {
  absl::StatusOr<std::vector<LfsObjectAnswer>> a = ParseLfsBatchAnswer(R"({"objects": [
      {"oid": "have"},
      {"oid": "err", "error": {"code": 422, "message": "no"}},
      {"oid": "basic", "actions": {"upload": {"href": "u"}, "verify": {"href": "v"}}},
      {"oid": "multi", "actions": {"upload": {"href": "c", "header":
          {"chunk_size": "10", "1": "p1", "2": "p2", "x-amz": "ignored"}}}}]})",
                                                                       "t");
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->size(), 4u);
  EXPECT_FALSE((*a)[0].upload);
  EXPECT_TRUE((*a)[1].has_error);
  EXPECT_EQ((*a)[1].error_code, 422u);
  EXPECT_EQ((*a)[2].upload_href, "u");
  EXPECT_EQ((*a)[2].verify_href, "v");
  EXPECT_FALSE((*a)[2].chunk_size);
  EXPECT_EQ((*a)[3].chunk_size, 10u);
  EXPECT_EQ((*a)[3].part_urls.size(), 2u);
  EXPECT_TRUE(CheckMultipart((*a)[3], 20, "t").ok());
  EXPECT_TRUE(CheckMultipart((*a)[3], 11, "t").ok());
  EXPECT_FALSE(CheckMultipart((*a)[3], 21, "t").ok());  // 3 parts, 2 URLs
  EXPECT_FALSE(CheckMultipart((*a)[3], 10, "t").ok());  // 1 part, 2 URLs
  for (const char* bad :
       {"[]", R"({"objects": [{}]})", R"({"objects": [{"oid": "a", "actions": {"upload": {}}}]})",
        R"({"objects": [{"oid": "a", "actions": {"upload": {"href": "u", "header": 1}}}]})",
        R"({"objects": [{"oid": "a", "actions": {"upload": {"href": "u", "header":
            {"chunk_size": 0}}}}]})",
        R"({"objects": [{"oid": "a", "actions": {"upload": {"href": "u", "header":
            {"chunk_size": 5, "0": "p"}}}}]})",
        R"({"objects": [{"oid": "a", "actions": {"upload": {"href": "u", "header":
            {"chunk_size": 5, "1": 7}}}}]})",
        R"({"objects": [{"oid": "a", "actions": {"upload": {"href": "u"}, "verify": {}}}]})"}) {
    EXPECT_EQ(ParseLfsBatchAnswer(bad, "t").status().code(), absl::StatusCode::kDataLoss) << bad;
  }
}

TEST(HubParseTest, CommitAnswer) {
  absl::StatusOr<CommitAnswer> c = ParseCommitAnswer(R"({"commitOid": "c", "commitUrl": "u"})", "t");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->commit, "c");
  EXPECT_EQ(c->commit_url, "u");
  EXPECT_FALSE(ParseCommitAnswer(R"({"commitUrl": "u"})", "t").ok());
  EXPECT_FALSE(ParseCommitAnswer("", "t").ok());
}

TEST(HubParseTest, RevisionSha) {
  const std::string sha(40, 'a');
  auto ok = ParseRevisionSha(R"({"id": "o/n", "sha": ")" + sha + R"("})", "t");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, sha);
  for (const char* bad : {"", "[]", R"({"sha": 1})", R"({"sha": "abc"})",
                          R"({"id": "o/n"})", R"({"sha": "../../../../etc/passwd/aaaaaaaaaaaaaaa"})"}) {
    EXPECT_EQ(ParseRevisionSha(bad, "t").status().code(), absl::StatusCode::kDataLoss) << bad;
  }
}

}  // namespace
}  // namespace bigsmall::hub
