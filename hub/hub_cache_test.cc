#include "hub/hub_cache.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace bigsmall::hub {
namespace {

namespace fs = std::filesystem;

constexpr char kRepo[] = "owner/model";
constexpr char kCommit[] = "0123456789abcdef0123456789abcdef01234567";

std::string Hex(const unsigned char* d, unsigned n) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < n; ++i) {
    out.push_back(kHex[d[i] >> 4]);
    out.push_back(kHex[d[i] & 15]);
  }
  return out;
}

std::string Sha256Hex(const std::string& data) {
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned n = 0;
  EVP_Digest(data.data(), data.size(), d, &n, EVP_sha256(), nullptr);
  return Hex(d, n);
}

std::string GitBlobId(const std::string& data) {
  const std::string obj = absl::StrCat("blob ", data.size(), std::string(1, '\0'), data);
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned n = 0;
  EVP_Digest(obj.data(), obj.size(), d, &n, EVP_sha1(), nullptr);
  return Hex(d, n);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& data) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary);
  out << data;
}

std::string Pattern(size_t n, unsigned seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1103515245u + 12345u;
    s[i] = static_cast<char>(x >> 24);
  }
  return s;
}

absl::Span<const uint8_t> Bytes(const std::string& s) {
  return absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

class HubCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/bigsmall-hubcache-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    root_ = dir_ + "/hub";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  // Writes a whole blob through the writer.
  absl::StatusOr<std::string> Put(HubCache& cache, const std::string& data,
                                  const std::string& etag) {
    auto w = cache.BeginBlob(kRepo, etag, data.size());
    if (!w.ok()) return w.status();
    if (!(*w)->complete()) {
      absl::Status s = (*w)->Append(Bytes(data).subspan((*w)->resume_offset()));
      if (!s.ok()) return s;
    }
    return (*w)->Commit();
  }
  std::string dir_;
  std::string root_;
};

TEST_F(HubCacheTest, LayoutIsHuggingfaceHubs) {
  HubCache cache(root_);
  EXPECT_EQ(cache.RepoDir(kRepo), root_ + "/models--owner--model");
  const std::string data = Pattern(5000, 1);
  const std::string etag = Sha256Hex(data);
  absl::StatusOr<std::string> blob = Put(cache, data, etag);
  ASSERT_TRUE(blob.ok()) << blob.status();
  EXPECT_EQ(*blob, cache.RepoDir(kRepo) + "/blobs/" + etag);
  EXPECT_EQ(ReadFile(*blob), data);
  EXPECT_TRUE(fs::exists(root_ + "/.locks/models--owner--model/" + etag + ".lock"));
  EXPECT_TRUE(absl::StartsWith(ReadFile(root_ + "/CACHEDIR.TAG"),
                               "Signature: 8a477f597d28d172789f06886806bc55\n"));
  EXPECT_FALSE(fs::exists(*blob + ".incomplete"));
  EXPECT_EQ(cache.BlobFile(kRepo, etag), *blob);

  ASSERT_TRUE(cache.LinkSnapshot(kRepo, kCommit, "model.safetensors", etag).ok());
  ASSERT_TRUE(cache.LinkSnapshot(kRepo, kCommit, "sub/dir/model.safetensors", etag).ok());
  const std::string snap = cache.RepoDir(kRepo) + "/snapshots/" + kCommit;
  EXPECT_EQ(fs::read_symlink(snap + "/model.safetensors").string(), "../../blobs/" + etag);
  EXPECT_EQ(fs::read_symlink(snap + "/sub/dir/model.safetensors").string(),
            "../../../../blobs/" + etag);
  EXPECT_EQ(ReadFile(snap + "/sub/dir/model.safetensors"), data);
  EXPECT_EQ(cache.SnapshotFile(kRepo, kCommit, "model.safetensors"), snap + "/model.safetensors");
  EXPECT_EQ(cache.SnapshotFile(kRepo, kCommit, "missing"), std::nullopt);
  // Relinking is idempotent.
  EXPECT_TRUE(cache.LinkSnapshot(kRepo, kCommit, "model.safetensors", etag).ok());

  ASSERT_TRUE(cache.WriteRef(kRepo, "main", kCommit).ok());
  EXPECT_EQ(ReadFile(cache.RepoDir(kRepo) + "/refs/main"), kCommit);  // no newline
  EXPECT_EQ(cache.CachedCommit(kRepo, "main"), kCommit);
  EXPECT_EQ(cache.CachedCommit(kRepo, kCommit), kCommit);  // a snapshot dir exists
  EXPECT_EQ(cache.CachedCommit(kRepo, "v1"), std::nullopt);
  EXPECT_EQ(cache.CachedCommit(kRepo, std::string(40, 'b')), std::nullopt);
}

TEST_F(HubCacheTest, RefsWithSlashesAndUpdates) {
  HubCache cache(root_);
  ASSERT_TRUE(cache.WriteRef(kRepo, "refs/pr/1", kCommit).ok());
  EXPECT_EQ(ReadFile(cache.RepoDir(kRepo) + "/refs/refs/pr/1"), kCommit);
  EXPECT_EQ(cache.CachedCommit(kRepo, "refs/pr/1"), kCommit);
  const std::string other(40, 'c');
  ASSERT_TRUE(cache.WriteRef(kRepo, "refs/pr/1", other).ok());
  EXPECT_EQ(cache.CachedCommit(kRepo, "refs/pr/1"), other);
  // Python may leave whitespace; a garbage ref is not a commit.
  WriteFile(cache.RepoDir(kRepo) + "/refs/v2", other + "\n");
  EXPECT_EQ(cache.CachedCommit(kRepo, "v2"), other);
  WriteFile(cache.RepoDir(kRepo) + "/refs/v3", "not a commit");
  EXPECT_EQ(cache.CachedCommit(kRepo, "v3"), std::nullopt);
  // No temporaries are left next to the refs.
  for (const auto& e : fs::recursive_directory_iterator(cache.RepoDir(kRepo) + "/refs")) {
    EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << e.path();
  }
  EXPECT_EQ(cache.WriteRef(kRepo, "main", "xyz").code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(HubCacheTest, BlobModeIsTheUmasksLikeHuggingfaceHub) {
  const mode_t old = umask(027);
  HubCache cache(root_);
  const std::string data = "small file\n";
  absl::StatusOr<std::string> blob = Put(cache, data, GitBlobId(data));
  umask(old);
  ASSERT_TRUE(blob.ok()) << blob.status();
  struct stat st;
  ASSERT_EQ(stat(blob->c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
}

TEST_F(HubCacheTest, ResumesFromAnIncompletePrefix) {
  HubCache cache(root_);
  const std::string data = Pattern(300000, 2);
  const std::string etag = Sha256Hex(data);
  WriteFile(cache.RepoDir(kRepo) + "/blobs/" + etag + ".incomplete", data.substr(0, 123457));
  auto w = cache.BeginBlob(kRepo, etag, data.size());
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_FALSE((*w)->complete());
  ASSERT_EQ((*w)->resume_offset(), 123457u);
  ASSERT_TRUE((*w)->Append(Bytes(data).subspan(123457, 1000)).ok());
  ASSERT_TRUE((*w)->Append(Bytes(data).subspan(124457)).ok());
  absl::StatusOr<std::string> blob = (*w)->Commit();
  ASSERT_TRUE(blob.ok()) << blob.status();
  EXPECT_EQ(ReadFile(*blob), data);
}

TEST_F(HubCacheTest, AnAbandonedWriterKeepsItsPrefixAndReleasesTheLock) {
  HubCache cache(root_);
  const std::string data = Pattern(10000, 3);
  const std::string etag = Sha256Hex(data);
  {
    auto w = cache.BeginBlob(kRepo, etag, data.size());
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_TRUE((*w)->Append(Bytes(data).subspan(0, 4096)).ok());
  }
  EXPECT_FALSE(cache.BlobFile(kRepo, etag).has_value());
  auto w = cache.BeginBlob(kRepo, etag, data.size(), /*lock_timeout_ms=*/0);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->resume_offset(), 4096u);
  ASSERT_TRUE((*w)->Append(Bytes(data).subspan(4096)).ok());
  ASSERT_TRUE((*w)->Commit().ok());
  // Once there, Begin says so.
  auto again = cache.BeginBlob(kRepo, etag, data.size(), 0);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE((*again)->complete());
  EXPECT_EQ((*again)->Commit().value_or(""), cache.RepoDir(kRepo) + "/blobs/" + etag);
}

TEST_F(HubCacheTest, ALongerIncompleteIsDiscarded) {
  HubCache cache(root_);
  const std::string data = Pattern(1000, 4);
  const std::string etag = Sha256Hex(data);
  WriteFile(cache.RepoDir(kRepo) + "/blobs/" + etag + ".incomplete", Pattern(2000, 5));
  auto w = cache.BeginBlob(kRepo, etag, data.size());
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->resume_offset(), 0u);
  ASSERT_TRUE((*w)->Append(Bytes(data)).ok());
  ASSERT_TRUE((*w)->Commit().ok());
}

TEST_F(HubCacheTest, AHashMismatchIsDataLossAndLeavesNothingVisible) {
  HubCache cache(root_);
  const std::string data = Pattern(5000, 6);
  std::string bad = data;
  bad[2500] ^= 1;
  for (const std::string& etag : {Sha256Hex(data), GitBlobId(data)}) {
    auto w = cache.BeginBlob(kRepo, etag, data.size());
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_TRUE((*w)->Append(Bytes(bad)).ok());
    absl::StatusOr<std::string> blob = (*w)->Commit();
    EXPECT_EQ(blob.status().code(), absl::StatusCode::kDataLoss) << blob.status();
    EXPECT_FALSE(fs::exists(cache.RepoDir(kRepo) + "/blobs/" + etag));
    EXPECT_FALSE(fs::exists(cache.RepoDir(kRepo) + "/blobs/" + etag + ".incomplete"));
    EXPECT_FALSE(cache.BlobFile(kRepo, etag).has_value());
    // The lock went with it.
    auto retry = cache.BeginBlob(kRepo, etag, data.size(), 0);
    ASSERT_TRUE(retry.ok()) << retry.status();
    EXPECT_EQ((*retry)->resume_offset(), 0u);
  }
}

TEST_F(HubCacheTest, SizeMismatchesAreDataLoss) {
  HubCache cache(root_);
  const std::string data = Pattern(100, 7);
  const std::string etag = Sha256Hex(data);
  auto w = cache.BeginBlob(kRepo, etag, data.size());
  ASSERT_TRUE(w.ok());
  EXPECT_EQ((*w)->Append(Bytes(data + "x")).code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(fs::exists(cache.RepoDir(kRepo) + "/blobs/" + etag + ".incomplete"));
  auto w2 = cache.BeginBlob(kRepo, etag, data.size());
  ASSERT_TRUE(w2.ok());
  ASSERT_TRUE((*w2)->Append(Bytes(data).subspan(0, 50)).ok());
  EXPECT_EQ((*w2)->Commit().status().code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(fs::exists(cache.RepoDir(kRepo) + "/blobs/" + etag));
}

TEST_F(HubCacheTest, HostileNamesAreRefused) {
  HubCache cache(root_);
  const std::string etag = Sha256Hex("x");
  for (const std::string& path :
       {std::string("../escape"), std::string("/etc/passwd"), std::string("a//b"), std::string(""),
        std::string("a/./b"), std::string("a/../../b"), std::string("a/"), std::string("a\0b", 3),
        std::string(5000, 'a')}) {
    EXPECT_EQ(cache.LinkSnapshot(kRepo, kCommit, path, etag).code(),
              absl::StatusCode::kInvalidArgument)
        << path;
    EXPECT_FALSE(cache.SnapshotFile(kRepo, kCommit, path).has_value()) << path;
    EXPECT_EQ(cache.WriteRef(kRepo, path, kCommit).code(), absl::StatusCode::kInvalidArgument)
        << path;
  }
  EXPECT_EQ(cache.LinkSnapshot(kRepo, "../../x", "f", etag).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.LinkSnapshot(kRepo, kCommit, "f", "../../../etc").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.BeginBlob(kRepo, "../x", 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.BeginBlob("../../x", etag, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.WriteRef("a/b/c", "main", kCommit).code(), absl::StatusCode::kInvalidArgument);
  // Nothing was written outside the cache root.
  for (const auto& e : fs::directory_iterator(dir_)) EXPECT_EQ(e.path().filename(), "hub");
}

TEST_F(HubCacheTest, SymlinksOutOfTheRepoAreNotFollowed) {
  HubCache cache(root_);
  const std::string outside = dir_ + "/outside";
  fs::create_directories(outside);
  const std::string repo = cache.RepoDir(kRepo);
  fs::create_directories(repo + "/snapshots");
  fs::create_symlink(outside, repo + "/snapshots/" + kCommit);
  const std::string data = "payload";
  const std::string etag = GitBlobId(data);
  ASSERT_TRUE(Put(cache, data, etag).ok());
  EXPECT_FALSE(cache.LinkSnapshot(kRepo, kCommit, "f.bin", etag).ok());
  EXPECT_TRUE(fs::is_empty(outside));
  EXPECT_EQ(cache.CachedCommit(kRepo, kCommit), std::nullopt);

  // refs/ as a symlink to a directory with a "ref".
  WriteFile(outside + "/main", kCommit);
  fs::create_symlink(outside, repo + "/refs");
  EXPECT_EQ(cache.CachedCommit(kRepo, "main"), std::nullopt);
  EXPECT_FALSE(cache.WriteRef(kRepo, "main", std::string(40, 'd')).ok());
  EXPECT_EQ(ReadFile(outside + "/main"), kCommit);

  // A snapshot entry that links anywhere else than blobs/ is not served.
  const std::string other = "1111111111111111111111111111111111111111";
  fs::create_directories(repo + "/snapshots/" + other);
  WriteFile(outside + "/secret", "secret");
  fs::create_symlink(outside + "/secret", repo + "/snapshots/" + other + "/abs");
  fs::create_symlink("../../../outside/secret", repo + "/snapshots/" + other + "/rel");
  EXPECT_FALSE(cache.SnapshotFile(kRepo, other, "abs").has_value());
  EXPECT_FALSE(cache.SnapshotFile(kRepo, other, "rel").has_value());
  // blobs/<etag> as a symlink is not a blob.
  const std::string fake = Sha256Hex("fake");
  fs::create_symlink(outside + "/secret", repo + "/blobs/" + fake);
  EXPECT_FALSE(cache.BlobFile(kRepo, fake).has_value());
  // A .incomplete that is a symlink is not written through.
  const std::string data2 = "second";
  const std::string etag2 = GitBlobId(data2);
  fs::create_symlink(outside + "/secret", repo + "/blobs/" + etag2 + ".incomplete");
  EXPECT_FALSE(cache.BeginBlob(kRepo, etag2, data2.size()).ok());
  EXPECT_EQ(ReadFile(outside + "/secret"), "secret");
}

TEST_F(HubCacheTest, TwoWritersOfOneBlobExcludeEachOther) {
  HubCache cache(root_);
  const std::string data = Pattern(200000, 8);
  const std::string etag = Sha256Hex(data);
  auto first = cache.BeginBlob(kRepo, etag, data.size());
  ASSERT_TRUE(first.ok()) << first.status();
  // A second one gives up after its timeout while the first holds the lock.
  auto timed_out = cache.BeginBlob(kRepo, etag, data.size(), /*lock_timeout_ms=*/30);
  EXPECT_EQ(timed_out.status().code(), absl::StatusCode::kUnavailable) << timed_out.status();
  // One that waits finds the blob complete once the first commits.
  absl::StatusOr<std::unique_ptr<HubCache::BlobWriter>> second = absl::UnknownError("not run");
  std::thread waiter([&] {
    HubCache other(root_);
    second = other.BeginBlob(kRepo, etag, data.size(), 20000);
  });
  ASSERT_TRUE((*first)->Append(Bytes(data)).ok());
  ASSERT_TRUE((*first)->Commit().ok());
  waiter.join();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE((*second)->complete());
  EXPECT_EQ(ReadFile(*cache.BlobFile(kRepo, etag)), data);
}

TEST_F(HubCacheTest, TheLockExcludesHuggingfaceHubsFileLock) {
  if (system("python3 -c 'import filelock' 2>/dev/null") != 0) {
    GTEST_SKIP() << "python3 with filelock (a huggingface_hub dependency) is not installed";
  }
  HubCache cache(root_);
  const std::string data = Pattern(1000, 9);
  const std::string etag = Sha256Hex(data);
  const std::string lock = root_ + "/.locks/models--owner--model/" + etag + ".lock";
  const std::string release = dir_ + "/release";
  fs::create_directories(fs::path(lock).parent_path());
  // Python holds the lock the way hf_hub_download does until `release` exists.
  const std::string cmd = absl::StrCat(
      "python3 -c \"import os,sys,time\nfrom filelock import FileLock\n"
      "with FileLock('",
      lock, "'):\n  print('locked', flush=True)\n", "  while not os.path.exists('", release,
      "'): time.sleep(0.01)\n\"");
  FILE* py = popen(cmd.c_str(), "r");
  ASSERT_NE(py, nullptr);
  char line[64] = {};
  ASSERT_NE(fgets(line, sizeof(line), py), nullptr);
  EXPECT_STREQ(line, "locked\n");
  auto blocked = cache.BeginBlob(kRepo, etag, data.size(), 100);
  EXPECT_EQ(blocked.status().code(), absl::StatusCode::kUnavailable) << blocked.status();
  WriteFile(release, "");
  auto w = cache.BeginBlob(kRepo, etag, data.size(), 20000);
  EXPECT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(pclose(py), 0);
}

}  // namespace
}  // namespace bigsmall::hub
