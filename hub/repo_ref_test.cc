#include "hub/repo_ref.h"

#include <string>

#include "gtest/gtest.h"

namespace bigsmall::hub {
namespace {

TEST(RepoRefTest, ParsesPlainNamesWithTheDefaultRevision) {
  absl::StatusOr<RepoRef> ref = ParseRepoRef("sentence-transformers/all-MiniLM-L6-v2");
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(ref->repo_id, "sentence-transformers/all-MiniLM-L6-v2");
  EXPECT_EQ(ref->revision, "main");
  EXPECT_FALSE(ref->revision_given);
  EXPECT_EQ(ref->ToString(), "sentence-transformers/all-MiniLM-L6-v2@main");
}

TEST(RepoRefTest, ParsesSchemeAndRevision) {
  absl::StatusOr<RepoRef> ref = ParseRepoRef("hf://Org_1/name.v2@refs/pr/1");
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(ref->repo_id, "Org_1/name.v2");
  EXPECT_EQ(ref->revision, "refs/pr/1");
  EXPECT_TRUE(ref->revision_given);
  ref = ParseRepoRef("a/b@v1.0");
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(ref->revision, "v1.0");
  const std::string commit(40, 'a');
  ref = ParseRepoRef("hf://a/b@" + commit);
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(ref->revision, commit);
}

TEST(RepoRefTest, RejectsBadRepoIdsLikeHuggingfaceHub) {
  for (const char* bad :
       {"",       "name",    "a/b/c",     "/a/b",       "a/",       "/b",
        ".a/b",   "a/.b",    "-a/b",      "a/b-",       "a/b.",     "a--x/b",
        "a/b..c", "a/b.git", "a b/c",     "a/b?c",      "a/b%2F",   "caf\xc3\xa9/x",
        "hf://",  "a/b@",    "a/b@/main", "a/b@x/../y", "a/b@x\ny", "a/b@x\x7f"}) {
    absl::StatusOr<RepoRef> ref = ParseRepoRef(bad);
    EXPECT_FALSE(ref.ok()) << "'" << bad << "' was accepted";
    if (!ref.ok()) {
      EXPECT_EQ(ref.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    }
  }
  // 96 characters in all is the limit.
  const std::string owner(47, 'o');
  EXPECT_TRUE(ParseRepoRef(owner + "/" + std::string(48, 'n')).ok());
  EXPECT_FALSE(ParseRepoRef(owner + "/" + std::string(49, 'n')).ok());
  EXPECT_TRUE(ParseRepoRef("a/b@" + std::string(256, 'r')).ok());
  EXPECT_FALSE(ParseRepoRef("a/b@" + std::string(257, 'r')).ok());
}

TEST(RepoRefTest, ErrorsSayWhatIsWrongAndEscapeTheInput) {
  absl::StatusOr<RepoRef> ref = ParseRepoRef("a--b/c");
  ASSERT_FALSE(ref.ok());
  EXPECT_NE(ref.status().message().find("'--'"), std::string::npos) << ref.status();
  ref = ParseRepoRef("a/b\nINJECTED");
  ASSERT_FALSE(ref.ok());
  EXPECT_EQ(ref.status().message().find('\n'), std::string::npos) << ref.status();
  ref = ParseRepoRef("a/b@");
  ASSERT_FALSE(ref.ok());
  EXPECT_NE(ref.status().message().find("empty"), std::string::npos) << ref.status();
}

TEST(RepoRefTest, LooksLikeHubName) {
  EXPECT_TRUE(LooksLikeHubName("hf://a/b"));
  EXPECT_TRUE(LooksLikeHubName("owner/name"));
  EXPECT_TRUE(LooksLikeHubName("owner/name@refs/pr/3"));
  EXPECT_FALSE(LooksLikeHubName("model.safetensors"));
  EXPECT_FALSE(LooksLikeHubName("./a/b"));
  EXPECT_FALSE(LooksLikeHubName("/abs/path"));
  EXPECT_FALSE(LooksLikeHubName("dir/sub/file.bs"));
  EXPECT_FALSE(LooksLikeHubName(".hidden/x"));
  EXPECT_FALSE(LooksLikeHubName("a/b c"));
  EXPECT_FALSE(LooksLikeHubName("a/"));
}

TEST(RepoRefTest, IsCommitHash) {
  EXPECT_TRUE(IsCommitHash("0123456789abcdef0123456789abcdef01234567"));
  EXPECT_FALSE(IsCommitHash("0123456789ABCDEF0123456789abcdef01234567"));
  EXPECT_FALSE(IsCommitHash("0123456789abcdef0123456789abcdef0123456"));
  EXPECT_FALSE(IsCommitHash("main"));
}

TEST(RepoRefTest, PercentEncoding) {
  EXPECT_EQ(EncodeRevision("refs/pr/1"), "refs%2Fpr%2F1");
  EXPECT_EQ(EncodeRevision("main"), "main");
  EXPECT_EQ(EncodeRevision("v1.0-rc_2~x"), "v1.0-rc_2~x");
  EXPECT_EQ(EncodeRevision("a b+c?d#e%"), "a%20b%2Bc%3Fd%23e%25");
  EXPECT_EQ(EncodePath("dir/sub file.safetensors"), "dir/sub%20file.safetensors");
  EXPECT_EQ(EncodePath("caf\xc3\xa9.bin"), "caf%C3%A9.bin");
  EXPECT_EQ(EncodePath("q?x#y&z=1"), "q%3Fx%23y%26z%3D1");
}

}  // namespace
}  // namespace bigsmall::hub
