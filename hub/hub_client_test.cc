// HubClient against the fake Hub (tests/hub/fake_hub.py, tests/hub/FAKE_HUB.md).
#include "hub/hub_client.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "hub/fake_hub_process.h"

namespace bigsmall::hub {
namespace {

namespace fs = std::filesystem;
using testing::FakeHub;

constexpr char kToken[] = "hf_good_token_for_tests";
constexpr char kGranted[] = "hf_granted_token";

std::string Pattern(size_t n, unsigned seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 7;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1103515245u + 12345u;
    s[i] = static_cast<char>(x >> 24);
  }
  return s;
}

std::string Sha256Hex(const std::string& data) {
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned n = 0;
  EVP_Digest(data.data(), data.size(), d, &n, EVP_sha256(), nullptr);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < n; ++i) {
    out.push_back(kHex[d[i] >> 4]);
    out.push_back(kHex[d[i] & 15]);
  }
  return out;
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

// The repos of the fake, and their files' bytes.
struct Fixture {
  std::string dir;
  std::unique_ptr<FakeHub> hub;
  std::string model_big = Pattern(3 << 20, 1);      // LFS, 3 MiB
  std::string model_small = "{\"hidden\": 384}\n";  // a plain git blob
  std::string model_nested = Pattern(100000, 2);    // LFS in a subdirectory
  std::string moving_old = Pattern(2 << 20, 3);
  std::string moving_new = Pattern(2 << 20, 4);
};
Fixture* g = nullptr;

class HubClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    g = new Fixture;
    char tmpl[] = "/tmp/bigsmall-hubclient-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    g->dir = tmpl;
    const std::string data = g->dir + "/data";
    WriteFile(data + "/owner/model/model.safetensors", g->model_big);
    WriteFile(data + "/owner/model/config.json", g->model_small);
    WriteFile(data + "/owner/model/sub/dir/weights.bin", g->model_nested);
    WriteFile(data + "/owner/model.json", R"({"tags": {"v1": "main"}})");
    WriteFile(data + "/owner/private/a.bin", Pattern(5000, 5));
    WriteFile(data + "/owner/private.json", R"({"private": true})");
    WriteFile(data + "/owner/gated/a.bin", Pattern(5000, 6));
    WriteFile(data + "/owner/gated.json",
              absl::StrCat(R"({"gated": true, "granted": [")", kGranted, R"("]})"));
    WriteFile(data + "/owner/moving/big.bin", g->moving_old);
    WriteFile(data + "/owner/xet/model.safetensors", Pattern(70000, 9));
    WriteFile(data + "/owner/xet.json", R"({"xet": true})");
    WriteFile(data + "/owner/interop/model.safetensors", Pattern(200000, 7));
    WriteFile(data + "/owner/interop/sub/python.bin", Pattern(150000, 8));
    WriteFile(data + "/owner/interop/README.md", "# interop\n");
    g->hub = std::make_unique<FakeHub>(data, std::vector<std::string>{kToken, kGranted});
  }
  static void TearDownTestSuite() {
    if (g == nullptr) return;
    g->hub.reset();
    std::error_code ec;
    fs::remove_all(g->dir, ec);
    delete g;
    g = nullptr;
  }
  void SetUp() override {
    ASSERT_TRUE(g->hub->ok()) << g->hub->log();
    ASSERT_TRUE(g->hub->ClearFaults().ok());
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    cache_dir_ = absl::StrCat(g->dir, "/cache-", info->name());
  }
  void TearDown() override {
    if (HasFailure()) fprintf(stderr, "fake hub log:\n%s\n", g->hub->log().c_str());
  }
  HubConfig Config(bool token = false) const {
    HubConfig c;
    c.endpoint = g->hub->endpoint();
    c.cache_dir = cache_dir_;
    if (token) c.token = Secret(kToken);
    c.parallel_connections = 2;
    c.part_bytes = 256 << 10;  // 512 KiB windows: a 3 MiB file takes 6
    c.max_retries = 3;
    c.backoff_initial = std::chrono::milliseconds(5);
    c.backoff_max = std::chrono::milliseconds(20);
    c.stall_timeout = std::chrono::milliseconds(5000);
    c.connect_timeout = std::chrono::milliseconds(2000);
    return c;
  }
  static RepoRef Ref(const std::string& text) {
    absl::StatusOr<RepoRef> r = ParseRepoRef(text);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.value_or(RepoRef{});
  }
  static nlohmann::json Stats() {
    absl::StatusOr<std::string> s = g->hub->Stats();
    EXPECT_TRUE(s.ok()) << s.status();
    return nlohmann::json::parse(s.value_or("{}"), nullptr, false);
  }
  // The fake counts a request once its answer went out, so a client may
  // hold the answer before the fake has counted it: "no request" is asked of
  // our own HttpClient, and byte counts wait for the fake to catch up.
  static uint64_t Net(HubClient& client) { return client.http().stats().requests; }
  static uint64_t BytesSentFor(const nlohmann::json& stats, const std::string& sha256) {
    return stats["bytes_sent"].value("/_cdn/" + sha256, uint64_t{0});
  }
  // The fake's stats once `at_least` bytes of that blob are counted (10 s at
  // most; a larger count comes back as is).
  static nlohmann::json StatsOnceSent(const std::string& sha256, uint64_t at_least) {
    nlohmann::json j = Stats();
    for (int i = 0; i < 2000 && BytesSentFor(j, sha256) < at_least; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      j = Stats();
    }
    return j;
  }

  std::string cache_dir_;
};

TEST_F(HubClientTest, ResolvesBranchTagAndCommit) {
  HubClient client(Config());
  absl::StatusOr<RepoInfo> main = client.Resolve(Ref("owner/model"));
  ASSERT_TRUE(main.ok()) << main.status();
  EXPECT_TRUE(IsCommitHash(main->commit));
  EXPECT_FALSE(main->from_cache);
  EXPECT_FALSE(main->is_private);
  ASSERT_EQ(main->files.size(), 3u);
  const RepoFile* big = main->Find("model.safetensors");
  ASSERT_NE(big, nullptr);
  EXPECT_EQ(big->size, g->model_big.size());
  EXPECT_EQ(big->sha256, Sha256Hex(g->model_big));
  EXPECT_EQ(big->etag(), Sha256Hex(g->model_big));
  const RepoFile* small = main->Find("config.json");
  ASSERT_NE(small, nullptr);
  EXPECT_FALSE(small->sha256.has_value());
  EXPECT_EQ(small->size, g->model_small.size());
  EXPECT_EQ(small->etag(), small->blob_id);
  ASSERT_NE(main->Find("sub/dir/weights.bin"), nullptr);
  EXPECT_EQ(ReadFile(client.cache().RepoDir("owner/model") + "/refs/main"), main->commit);

  absl::StatusOr<RepoInfo> tag = client.Resolve(Ref("owner/model@v1"));
  ASSERT_TRUE(tag.ok()) << tag.status();
  EXPECT_EQ(tag->commit, main->commit);
  EXPECT_EQ(client.cache().CachedCommit("owner/model", "v1"), main->commit);

  // A pull request's ref: one URL segment, refs/refs/pr/N in the cache.
  absl::StatusOr<std::string> pr = g->hub->Control(
      "POST", "/_fake/commit",
      R"({"repo": "owner/model", "branch": "refs/pr/1", "files": {"pr.txt": "cHI="}})");
  ASSERT_TRUE(pr.ok()) << pr.status();
  absl::StatusOr<RepoInfo> pr_info = client.Resolve(Ref("owner/model@refs/pr/1"));
  ASSERT_TRUE(pr_info.ok()) << pr_info.status();
  EXPECT_EQ(pr_info->commit, nlohmann::json::parse(*pr, nullptr, false).value("commit", ""));
  EXPECT_NE(pr_info->Find("pr.txt"), nullptr);
  EXPECT_EQ(ReadFile(client.cache().RepoDir("owner/model") + "/refs/refs/pr/1"), pr_info->commit);

  absl::StatusOr<RepoInfo> commit = client.Resolve(Ref("owner/model@" + main->commit));
  ASSERT_TRUE(commit.ok()) << commit.status();
  EXPECT_EQ(commit->commit, main->commit);
  EXPECT_EQ(commit->files.size(), 3u);
}

TEST_F(HubClientTest, PrivateNeedsAToken) {
  HubClient anonymous(Config());
  absl::StatusOr<RepoInfo> r = anonymous.Resolve(Ref("owner/private"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated) << r.status();
  HubClient authed(Config(/*token=*/true));
  r = authed.Resolve(Ref("owner/private"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->is_private);
  absl::StatusOr<std::string> path = authed.Download(*r, "a.bin");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(ReadFile(*path), Pattern(5000, 5));
  // The token is nowhere in what the client reports.
  absl::StatusOr<std::unique_ptr<ByteSource>> src = authed.OpenRemote(*r, "a.bin");
  ASSERT_TRUE(src.ok()) << src.status();
  EXPECT_EQ((*src)->name(), absl::StrCat("hf://owner/private@", r->commit, "/a.bin"));
  // A wrong token is refused too.
  HubConfig bad = Config();
  bad.token = Secret("hf_wrong");
  HubClient wrong(bad);
  r = wrong.Resolve(Ref("owner/private"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated) << r.status();
  EXPECT_FALSE(absl::StrContains(r.status().message(), "hf_wrong")) << r.status();
}

TEST_F(HubClientTest, GatedIsPermissionDenied) {
  HubClient client(Config(/*token=*/true));
  absl::StatusOr<RepoInfo> r = client.Resolve(Ref("owner/gated"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->gated);
  absl::StatusOr<std::string> path = client.Download(*r, "a.bin");
  EXPECT_EQ(path.status().code(), absl::StatusCode::kPermissionDenied) << path.status();
  EXPECT_FALSE(client.cache().BlobFile("owner/gated", r->Find("a.bin")->etag()).has_value());
  HubConfig granted = Config();
  granted.token = Secret(kGranted);
  HubClient allowed(granted);
  path = allowed.Download(*r, "a.bin");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(ReadFile(*path), Pattern(5000, 6));
}

TEST_F(HubClientTest, MissingRepoRevisionAndFileAreNotFoundWithDistinctMessages) {
  HubClient client(Config());
  absl::StatusOr<RepoInfo> repo = client.Resolve(Ref("owner/nope"));
  EXPECT_EQ(repo.status().code(), absl::StatusCode::kNotFound) << repo.status();
  absl::StatusOr<RepoInfo> rev = client.Resolve(Ref("owner/model@no-such-branch"));
  EXPECT_EQ(rev.status().code(), absl::StatusCode::kNotFound) << rev.status();
  absl::StatusOr<RepoInfo> ok = client.Resolve(Ref("owner/model"));
  ASSERT_TRUE(ok.ok()) << ok.status();
  absl::StatusOr<std::string> file = client.Download(*ok, "no/such/file");
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound) << file.status();
  absl::StatusOr<FileMeta> head = client.Head(*ok, "no/such/file");
  EXPECT_EQ(head.status().code(), absl::StatusCode::kNotFound) << head.status();
  const std::vector<std::string> messages = {
      std::string(repo.status().message()), std::string(rev.status().message()),
      std::string(file.status().message()), std::string(head.status().message())};
  for (size_t i = 0; i < messages.size(); ++i) {
    for (size_t j = i + 1; j < messages.size(); ++j) {
      EXPECT_NE(messages[i], messages[j]);
    }
  }
  EXPECT_TRUE(absl::StrContains(messages[0], "owner/nope")) << messages[0];
  EXPECT_TRUE(absl::StrContains(messages[1], "no-such-branch")) << messages[1];
  EXPECT_TRUE(absl::StrContains(messages[2], "no/such/file")) << messages[2];
}

TEST_F(HubClientTest, HeadReportsTheHubsHeaders) {
  HubClient client(Config());
  absl::StatusOr<RepoInfo> r = client.Resolve(Ref("owner/model"));
  ASSERT_TRUE(r.ok()) << r.status();
  absl::StatusOr<FileMeta> big = client.Head(*r, "model.safetensors");
  ASSERT_TRUE(big.ok()) << big.status();
  EXPECT_EQ(big->commit, r->commit);
  EXPECT_EQ(big->etag, Sha256Hex(g->model_big));
  EXPECT_EQ(big->size, g->model_big.size());
  EXPECT_TRUE(absl::StartsWith(big->location, "http://localhost:")) << big->location;
  EXPECT_TRUE(absl::StrContains(big->location, "/_cdn/" + Sha256Hex(g->model_big)));
  absl::StatusOr<FileMeta> small = client.Head(*r, "config.json");
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_EQ(small->etag, r->Find("config.json")->blob_id);
  EXPECT_EQ(small->size, g->model_small.size());
  EXPECT_EQ(small->location, client.ResolveUrl(*r, "config.json"));
  EXPECT_EQ(client.ResolveUrl(*r, "sub/a b.bin"),
            absl::StrCat(g->hub->endpoint(), "/owner/model/resolve/", r->commit, "/sub/a%20b.bin"));
}

TEST_F(HubClientTest, XetBackedFilesKeepTheirXetHashAndDownloadOverTheLfsRoute) {
  HubClient client(Config());
  absl::StatusOr<RepoInfo> r = client.Resolve(Ref("owner/xet"));
  ASSERT_TRUE(r.ok()) << r.status();
  absl::StatusOr<FileMeta> meta = client.Head(*r, "model.safetensors");
  ASSERT_TRUE(meta.ok()) << meta.status();
  ASSERT_TRUE(meta->xet_hash.has_value());
  EXPECT_EQ(meta->xet_hash->size(), 64u);
  EXPECT_EQ(meta->etag, Sha256Hex(Pattern(70000, 9)));
  absl::StatusOr<std::string> path = client.Download(*r, "model.safetensors");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(ReadFile(*path), Pattern(70000, 9));
  // Plain repos have none.
  absl::StatusOr<RepoInfo> plain = client.Resolve(Ref("owner/model"));
  ASSERT_TRUE(plain.ok()) << plain.status();
  meta = client.Head(*plain, "model.safetensors");
  ASSERT_TRUE(meta.ok()) << meta.status();
  EXPECT_FALSE(meta->xet_hash.has_value());
}

TEST_F(HubClientTest, DownloadIsBitExactAndThenServedFromTheCache) {
  HubClient client(Config());
  absl::StatusOr<RepoInfo> r = client.Resolve(Ref("owner/model"));
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<std::pair<uint64_t, uint64_t>> calls;
  absl::StatusOr<std::string> path =
      client.Download(*r, "model.safetensors", [&](uint64_t done, uint64_t total) {
        calls.push_back({done, total});
      });
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, absl::StrCat(client.cache().RepoDir("owner/model"), "/snapshots/", r->commit,
                                "/model.safetensors"));
  EXPECT_EQ(ReadFile(*path), g->model_big);
  EXPECT_EQ(fs::read_symlink(*path).string(), "../../blobs/" + Sha256Hex(g->model_big));
  ASSERT_GE(calls.size(), 2u);
  EXPECT_EQ(calls.back(),
            std::make_pair(uint64_t{g->model_big.size()}, uint64_t{g->model_big.size()}));
  for (size_t i = 1; i < calls.size(); ++i) EXPECT_GE(calls[i].first, calls[i - 1].first);
  for (const char* p : {"config.json", "sub/dir/weights.bin"}) {
    absl::StatusOr<std::string> q = client.Download(*r, p);
    ASSERT_TRUE(q.ok()) << q.status();
  }
  EXPECT_EQ(
      ReadFile(client.cache().SnapshotFile("owner/model", r->commit, "config.json").value_or("")),
      g->model_small);
  EXPECT_EQ(ReadFile(*client.cache().SnapshotFile("owner/model", r->commit, "sub/dir/weights.bin")),
            g->model_nested);
  // Again: no network at all.
  const uint64_t before = Net(client);
  for (const char* p : {"model.safetensors", "config.json", "sub/dir/weights.bin"}) {
    absl::StatusOr<std::string> q = client.Download(*r, p);
    ASSERT_TRUE(q.ok()) << q.status();
  }
  EXPECT_EQ(Net(client), before);
  // A commit with a snapshot needs no network either.
  absl::StatusOr<RepoInfo> by_commit = client.Resolve(Ref("owner/model@" + r->commit));
  ASSERT_TRUE(by_commit.ok()) << by_commit.status();
  EXPECT_TRUE(by_commit->from_cache);
  EXPECT_EQ(by_commit->files.size(), 3u);
  EXPECT_EQ(Net(client), before);
}

TEST_F(HubClientTest, ADroppedConnectionIsResumed) {
  HubClient client(Config());
  absl::StatusOr<RepoInfo> r = client.Resolve(Ref("owner/model"));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(g->hub
                  ->AddFaults(R"({"rules": [{"path": "^/_cdn/", "method": "GET",
      "kind": "drop_after", "bytes": 100000, "times": 2}]})")
                  .ok());
  absl::StatusOr<std::string> path = client.Download(*r, "model.safetensors");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(ReadFile(*path), g->model_big);
}

TEST_F(HubClientTest, AnInterruptedDownloadResumesFromItsIncomplete) {
  const std::string sha = Sha256Hex(g->model_big);
  uint64_t stopped_at = 0;
  {
    HubConfig c = Config();
    c.max_retries = 0;
    HubClient client(c);
    absl::StatusOr<RepoInfo> r = client.Resolve(Ref("owner/model"));
    ASSERT_TRUE(r.ok()) << r.status();
    bool armed = false;
    // After the second window, every CDN request fails.
    absl::StatusOr<std::string> path =
        client.Download(*r, "model.safetensors", [&](uint64_t done, uint64_t) {
          if (!armed && done >= (1u << 20)) {
            armed = true;
            stopped_at = done;
            ASSERT_TRUE(g->hub
                            ->AddFaults(R"({"rules": [{"path": "^/_cdn/", "kind": "status",
                "status": 503, "times": -1}]})")
                            .ok());
          }
        });
    EXPECT_EQ(path.status().code(), absl::StatusCode::kUnavailable) << path.status();
    EXPECT_FALSE(client.cache().BlobFile("owner/model", sha).has_value());
  }
  const std::string incomplete =
      absl::StrCat(cache_dir_, "/models--owner--model/blobs/", sha, ".incomplete");
  ASSERT_TRUE(fs::exists(incomplete));
  // What was appended before the failure stays: whole parts, a prefix.
  EXPECT_GE(fs::file_size(incomplete), stopped_at);
  EXPECT_LT(fs::file_size(incomplete), g->model_big.size());
  EXPECT_EQ(fs::file_size(incomplete) % (256 << 10), 0u);
  stopped_at = fs::file_size(incomplete);
  EXPECT_EQ(ReadFile(incomplete), g->model_big.substr(0, stopped_at));
  ASSERT_TRUE(g->hub->ClearFaults().ok());
  ASSERT_TRUE(g->hub->ResetStats().ok());
  HubClient client(Config());
  absl::StatusOr<RepoInfo> r = client.Resolve(Ref("owner/model"));
  ASSERT_TRUE(r.ok()) << r.status();
  absl::StatusOr<std::string> path = client.Download(*r, "model.safetensors");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(ReadFile(*path), g->model_big);
  EXPECT_FALSE(fs::exists(incomplete));
  // Only the missing bytes were asked for (late 503s of the first client
  // may still be counted: only the 206s count here).
  const uint64_t missing = g->model_big.size() - stopped_at;
  uint64_t sent = 0, first = UINT64_MAX;
  for (int i = 0; i < 2000 && sent < missing; ++i) {
    if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    sent = 0;
    first = UINT64_MAX;
    const nlohmann::json stats = Stats();
    for (const nlohmann::json& e : stats["log"]) {
      if (e.value("path", "") != "/_cdn/" + sha || e.value("status", 0) != 206) continue;
      sent += e.value("bytes", uint64_t{0});
      uint64_t start = 0;
      const std::string range = e["range"].is_string() ? e["range"].get<std::string>() : "";
      if (absl::SimpleAtoi(range.substr(6, range.find('-') - 6), &start)) {
        first = std::min(first, start);
      }
    }
  }
  EXPECT_EQ(sent, missing);
  EXPECT_EQ(first, stopped_at);
}

// Restores the fake's bandwidth when a test ends, however it ends.
struct Unthrottle {
  ~Unthrottle() { EXPECT_TRUE(g->hub->Throttle(0).ok()); }
};

TEST_F(HubClientTest, EachPartIsAppendedAsSoonAsItAndEveryEarlierPartAreThere) {
  // 16 connections of 256 KiB parts: the 3 MiB file is less than one old
  // "window" (connections * part_bytes), which was appended only whole.
  HubConfig c = Config();
  c.parallel_connections = 16;
  HubClient client(c);
  absl::StatusOr<RepoInfo> r = client.Resolve(Ref("owner/model"));
  ASSERT_TRUE(r.ok()) << r.status();
  const std::string sha = Sha256Hex(g->model_big);
  const std::string incomplete =
      absl::StrCat(cache_dir_, "/models--owner--model/blobs/", sha, ".incomplete");
  std::vector<uint64_t> reported;
  bool prefix_ok = true;
  absl::StatusOr<std::string> path =
      client.Download(*r, "model.safetensors", [&](uint64_t done, uint64_t total) {
        if (!reported.empty() && reported.back() == done) return;
        reported.push_back(done);
        if (done == 0 || done == total) return;
        // What is reported is on disk already, as a prefix.
        std::error_code ec;
        if (fs::file_size(incomplete, ec) != done || ec ||
            ReadFile(incomplete) != g->model_big.substr(0, done)) {
          prefix_ok = false;
        }
      });
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(ReadFile(*path), g->model_big);
  std::vector<uint64_t> every_part;
  for (uint64_t at = 0; at <= g->model_big.size(); at += 256 << 10) every_part.push_back(at);
  EXPECT_EQ(reported, every_part);
  EXPECT_TRUE(prefix_ok);
}

TEST_F(HubClientTest, ACancelledDownloadKeepsItsIncompleteAndResumes) {
  const std::string sha = Sha256Hex(g->model_big);
  const std::string incomplete =
      absl::StrCat(cache_dir_, "/models--owner--model/blobs/", sha, ".incomplete");
  uint64_t kept = 0;
  {
    HubConfig c = Config();
    c.parallel_connections = 4;
    HubClient client(c);
    absl::StatusOr<RepoInfo> r = client.Resolve(Ref("owner/model"));
    ASSERT_TRUE(r.ok()) << r.status();
    Unthrottle unthrottle;
    ASSERT_TRUE(g->hub->Throttle(1u << 20).ok());  // ~3 s for the file
    std::atomic<bool> cancel{false};
    std::chrono::steady_clock::time_point cancelled_at;
    DownloadOptions options;
    options.cancel = &cancel;
    options.progress = [&](uint64_t done, uint64_t) {
      if (done > 0 && !cancel.load()) {
        cancelled_at = std::chrono::steady_clock::now();
        cancel.store(true);
      }
    };
    absl::StatusOr<std::string> path = client.Download(*r, "model.safetensors", options);
    const auto took = std::chrono::steady_clock::now() - cancelled_at;
    EXPECT_EQ(path.status().code(), absl::StatusCode::kCancelled) << path.status();
    EXPECT_TRUE(cancel.load());
    // It stopped the transfers in flight (the rest would take ~2.5 s more).
    EXPECT_LT(took, std::chrono::milliseconds(1500));
    EXPECT_FALSE(client.cache().BlobFile("owner/model", sha).has_value());
    ASSERT_TRUE(fs::exists(incomplete));
    kept = fs::file_size(incomplete);
    EXPECT_GT(kept, 0u);
    EXPECT_LT(kept, g->model_big.size());
    EXPECT_EQ(kept % (256 << 10), 0u);
    EXPECT_TRUE(ReadFile(incomplete) == g->model_big.substr(0, kept));
    // Cancelled before it starts: nothing is asked.
    const uint64_t before = Net(client);
    absl::StatusOr<std::string> again = client.Download(*r, "model.safetensors", options);
    EXPECT_EQ(again.status().code(), absl::StatusCode::kCancelled) << again.status();
    EXPECT_EQ(Net(client), before);
  }
  HubClient client(Config());
  absl::StatusOr<RepoInfo> r = client.Resolve(Ref("owner/model"));
  ASSERT_TRUE(r.ok()) << r.status();
  uint64_t first_progress = UINT64_MAX;
  absl::StatusOr<std::string> path =
      client.Download(*r, "model.safetensors", [&](uint64_t done, uint64_t) {
        first_progress = std::min(first_progress, done);
      });
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(first_progress, kept);  // resumed
  EXPECT_EQ(ReadFile(*path), g->model_big);
}

// Requests of the fake's log for `sha256`: resolve ones and CDN ones.
struct RequestCounts {
  int resolve = 0, cdn = 0, cdn_authorized = 0;
};
RequestCounts CountFor(const nlohmann::json& stats, const std::string& file_path,
                       const std::string& sha256) {
  RequestCounts n;
  for (const nlohmann::json& e : stats["log"]) {
    const std::string path = e.value("path", "");
    if (absl::StrContains(path, "/resolve/") && absl::EndsWith(path, file_path)) ++n.resolve;
    if (path == "/_cdn/" + sha256) {
      ++n.cdn;
      if (e.value("authorized", false)) ++n.cdn_authorized;
    }
  }
  return n;
}

TEST_F(HubClientTest, ARemoteSourceGoesStraightToTheCdnAfterTheFirstRead) {
  HubConfig c = Config(/*token=*/true);  // the token must not reach the CDN
  HubClient client(c);
  absl::StatusOr<RepoInfo> r = client.Resolve(Ref("owner/model"));
  ASSERT_TRUE(r.ok()) << r.status();
  absl::StatusOr<std::unique_ptr<ByteSource>> src = client.OpenRemote(*r, "model.safetensors");
  ASSERT_TRUE(src.ok()) << src.status();
  const std::string sha = Sha256Hex(g->model_big);
  auto read = [&](uint64_t offset) {
    std::vector<uint8_t> out(4096);
    absl::Status st = (*src)->ReadAt(offset, absl::MakeSpan(out));
    EXPECT_TRUE(st.ok()) << st;
    EXPECT_TRUE(std::string(out.begin(), out.end()) == g->model_big.substr(offset, 4096));
  };
  // The fake counts a request once answered: wait for the count to settle.
  auto counts = [&](int cdn_at_least) {
    RequestCounts n = CountFor(Stats(), "model.safetensors", sha);
    for (int i = 0; i < 2000 && n.cdn < cdn_at_least; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      n = CountFor(Stats(), "model.safetensors", sha);
    }
    return n;
  };
  ASSERT_TRUE(g->hub->ResetStats().ok());
  const uint64_t before = Net(client);
  for (int i = 0; i < 5; ++i) read(1000 * i);
  EXPECT_EQ(Net(client) - before, 6u);  // resolve + CDN, then the CDN only
  RequestCounts n = counts(5);
  EXPECT_EQ(n.resolve, 1);
  EXPECT_EQ(n.cdn, 5);
  EXPECT_EQ(n.cdn_authorized, 0);

  // The CDN refuses the remembered URL (expired): resolved again, once.
  for (int status : {403, 404, 410, 401}) {
    SCOPED_TRACE(status);
    ASSERT_TRUE(g->hub->ResetStats().ok());
    ASSERT_TRUE(g->hub
                    ->AddFaults(absl::StrCat(R"({"rules": [{"path": "^/_cdn/", "kind": "status",
                                "status": )", status, R"(, "times": 1}]})"))
                    .ok());
    read(77);
    read(5000);
    n = counts(3);
    EXPECT_EQ(n.resolve, 1);
    EXPECT_EQ(n.cdn, 3);  // refused, then the new URL twice
    EXPECT_EQ(n.cdn_authorized, 0);
  }
}

TEST_F(HubClientTest, ARemoteSourceResolvesAgainOnceItsCdnUrlIsOld) {
  HubConfig c = Config();
  c.final_url_ttl = std::chrono::milliseconds(300);
  HubClient client(c);
  absl::StatusOr<RepoInfo> r = client.Resolve(Ref("owner/model"));
  ASSERT_TRUE(r.ok()) << r.status();
  absl::StatusOr<std::unique_ptr<ByteSource>> src = client.OpenRemote(*r, "model.safetensors");
  ASSERT_TRUE(src.ok()) << src.status();
  std::vector<uint8_t> out(100);
  const uint64_t before = Net(client);
  ASSERT_TRUE((*src)->ReadAt(0, absl::MakeSpan(out)).ok());
  ASSERT_TRUE((*src)->ReadAt(100, absl::MakeSpan(out)).ok());
  EXPECT_EQ(Net(client) - before, 3u);
  // The subject is time itself: the URL's age passes the bound.
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  ASSERT_TRUE((*src)->ReadAt(200, absl::MakeSpan(out)).ok());
  EXPECT_EQ(Net(client) - before, 5u);  // resolve + CDN again
  EXPECT_TRUE(std::string(out.begin(), out.end()) == g->model_big.substr(200, 100));
}

TEST_F(HubClientTest, CorruptBytesNeverBecomeAVisibleBlob) {
  HubClient client(Config());
  absl::StatusOr<RepoInfo> r = client.Resolve(Ref("owner/model"));
  ASSERT_TRUE(r.ok()) << r.status();
  struct Case {
    std::string path, rule_path;
  };
  for (const Case& c : {Case{"model.safetensors", "^/_cdn/"},
                        Case{"config.json", "/resolve/[0-9a-f]+/config[.]json$"}}) {
    const RepoFile* f = r->Find(c.path);
    ASSERT_NE(f, nullptr);
    ASSERT_TRUE(g->hub
                    ->AddFaults(absl::StrCat(R"({"rules": [{"path": ")", c.rule_path,
                                             R"(", "method": "GET", "kind": "corrupt"}]})"))
                    .ok());
    absl::StatusOr<std::string> path = client.Download(*r, c.path);
    EXPECT_EQ(path.status().code(), absl::StatusCode::kDataLoss) << c.path << path.status();
    const std::string blobs = absl::StrCat(cache_dir_, "/models--owner--model/blobs/");
    EXPECT_FALSE(fs::exists(blobs + f->etag())) << c.path;
    EXPECT_FALSE(fs::exists(blobs + f->etag() + ".incomplete")) << c.path;
    EXPECT_FALSE(client.cache().SnapshotFile("owner/model", r->commit, c.path).has_value());
    // The fault was used up: a retry gets the right bytes.
    path = client.Download(*r, c.path);
    ASSERT_TRUE(path.ok()) << c.path << path.status();
    EXPECT_EQ(ReadFile(*path), c.path == "config.json" ? g->model_small : g->model_big);
  }
}

TEST_F(HubClientTest, ARevisionMovedMidDownloadStillYieldsTheResolvedCommit) {
  HubClient client(Config());
  absl::StatusOr<RepoInfo> old = client.Resolve(Ref("owner/moving"));
  ASSERT_TRUE(old.ok()) << old.status();
  ASSERT_TRUE(g->hub->ResetStats().ok());
  std::string new_commit;
  absl::StatusOr<std::string> path = client.Download(*old, "big.bin", [&](uint64_t done, uint64_t) {
    if (new_commit.empty() && done > 0) {
      const std::string body =
          absl::StrCat(R"({"repo": "owner/moving", "branch": "main", "files": {"big.bin": ")",
                       absl::Base64Escape(g->moving_new), R"("}})");
      absl::StatusOr<std::string> answer = g->hub->Control("POST", "/_fake/commit", body);
      ASSERT_TRUE(answer.ok()) << answer.status();
      new_commit = nlohmann::json::parse(*answer, nullptr, false).value("commit", "");
    }
  });
  ASSERT_TRUE(path.ok()) << path.status();
  ASSERT_TRUE(IsCommitHash(new_commit));
  ASSERT_NE(new_commit, old->commit);
  EXPECT_EQ(ReadFile(*path), g->moving_old);
  EXPECT_TRUE(absl::StrContains(*path, old->commit));
  // No request named the branch.
  const nlohmann::json stats = Stats();
  for (const nlohmann::json& e : stats["log"]) {
    EXPECT_FALSE(absl::StrContains(e.value("path", ""), "/resolve/main/")) << e.dump();
  }
  absl::StatusOr<RepoInfo> moved = client.Resolve(Ref("owner/moving"));
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(moved->commit, new_commit);
  path = client.Download(*moved, "big.bin");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(ReadFile(*path), g->moving_new);
  EXPECT_EQ(client.cache().CachedCommit("owner/moving", "main"), new_commit);
  // The old snapshot is still the old bytes.
  EXPECT_EQ(ReadFile(*client.cache().SnapshotFile("owner/moving", old->commit, "big.bin")),
            g->moving_old);
}

TEST_F(HubClientTest, OfflineServesTheCacheOnly) {
  std::string commit;
  {
    HubClient online(Config());
    absl::StatusOr<RepoInfo> r = online.Resolve(Ref("owner/model"));
    ASSERT_TRUE(r.ok()) << r.status();
    commit = r->commit;
    ASSERT_TRUE(online.Download(*r, "config.json").ok());
    ASSERT_TRUE(online.Download(*r, "sub/dir/weights.bin").ok());
  }
  HubConfig c = Config();
  c.offline = true;
  HubClient offline(c);
  absl::StatusOr<RepoInfo> r = offline.Resolve(Ref("owner/model"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->from_cache);
  EXPECT_EQ(r->commit, commit);
  ASSERT_EQ(r->files.size(), 2u);
  const RepoFile* nested = r->Find("sub/dir/weights.bin");
  ASSERT_NE(nested, nullptr);
  EXPECT_EQ(nested->size, g->model_nested.size());
  EXPECT_EQ(nested->sha256, Sha256Hex(g->model_nested));
  absl::StatusOr<std::string> path = offline.Download(*r, "sub/dir/weights.bin");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(ReadFile(*path), g->model_nested);
  absl::StatusOr<std::unique_ptr<ByteSource>> src = offline.OpenRemote(*r, "config.json");
  ASSERT_TRUE(src.ok()) << src.status();
  // What the cache lacks is NOT_FOUND, saying why.
  absl::StatusOr<RepoInfo> other = offline.Resolve(Ref("owner/moving"));
  EXPECT_EQ(other.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(other.status().message(), "offline and not in the cache"))
      << other.status();
  absl::StatusOr<RepoInfo> tag = offline.Resolve(Ref("owner/model@v9"));
  EXPECT_EQ(tag.status().code(), absl::StatusCode::kNotFound);
  // A file the online listing has but the cache lacks.
  RepoInfo listed = *r;
  listed.files.push_back(RepoFile{"model.safetensors", g->model_big.size(), std::string(40, 'a'),
                                  Sha256Hex(g->model_big)});
  path = offline.Download(listed, "model.safetensors");
  EXPECT_EQ(path.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(path.status().message(), "offline and not in the cache"))
      << path.status();
  EXPECT_EQ(offline.OpenRemote(listed, "model.safetensors").status().code(),
            absl::StatusCode::kNotFound);
  path = offline.Download(*r, "model.safetensors");  // not in the cached listing
  EXPECT_EQ(path.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(path.status().message(), "offline and not in the cache"))
      << path.status();
  EXPECT_EQ(Net(offline), 0u);
  // Online with prefer_cache: no request either.
  HubClient online(Config());
  absl::StatusOr<RepoInfo> preferred = online.Resolve(Ref("owner/model"), /*prefer_cache=*/true);
  ASSERT_TRUE(preferred.ok()) << preferred.status();
  EXPECT_TRUE(preferred->from_cache);
  EXPECT_EQ(Net(online), 0u);
}

TEST_F(HubClientTest, OpenRemoteReadsExactRangesWithAndWithoutTheCache) {
  HubClient client(Config(/*token=*/true));
  absl::StatusOr<RepoInfo> r = client.Resolve(Ref("owner/model"));
  ASSERT_TRUE(r.ok()) << r.status();
  absl::StatusOr<std::unique_ptr<ByteSource>> src = client.OpenRemote(*r, "model.safetensors");
  ASSERT_TRUE(src.ok()) << src.status();
  ByteSource& s = **src;
  EXPECT_EQ(s.size(), g->model_big.size());
  EXPECT_EQ(s.name(), absl::StrCat("hf://owner/model@", r->commit, "/model.safetensors"));
  EXPECT_FALSE(absl::StrContains(s.name(), kToken));
  const size_t n = g->model_big.size();
  struct Range {
    uint64_t offset, size;
  };
  const std::vector<Range> ranges = {{0, 1},       {0, 8},     {12345, 1}, {1000, 700000},
                                     {n - 10, 10}, {n - 1, 1}, {0, n},     {5, 0}};
  auto check_all = [&](const char* when) {
    for (const Range& rg : ranges) {
      std::vector<uint8_t> out(rg.size, 0xAB);
      absl::Status st = rg.size > 100000 ? s.ReadBulk(rg.offset, absl::MakeSpan(out))
                                         : s.ReadAt(rg.offset, absl::MakeSpan(out));
      ASSERT_TRUE(st.ok()) << when << " " << rg.offset << "+" << rg.size << ": " << st;
      EXPECT_EQ(std::string(out.begin(), out.end()), g->model_big.substr(rg.offset, rg.size))
          << when << " " << rg.offset << "+" << rg.size;
    }
    std::vector<uint8_t> past(2);
    EXPECT_EQ(s.ReadAt(n - 1, absl::MakeSpan(past)).code(), absl::StatusCode::kOutOfRange);
    EXPECT_EQ(s.ReadAt(n + 1, absl::MakeSpan(past).subspan(0, 0)).code(),
              absl::StatusCode::kOutOfRange);
  };
  ASSERT_TRUE(g->hub->ResetStats().ok());
  uint64_t before = Net(client);
  check_all("remote");
  EXPECT_GT(Net(client), before);
  EXPECT_GT(BytesSentFor(StatsOnceSent(Sha256Hex(g->model_big), 1), Sha256Hex(g->model_big)), 0u);
  ASSERT_TRUE(client.Download(*r, "model.safetensors").ok());
  before = Net(client);
  check_all("cached");  // the same source switches to the blob
  absl::StatusOr<std::unique_ptr<ByteSource>> fresh = client.OpenRemote(*r, "model.safetensors");
  ASSERT_TRUE(fresh.ok());
  std::vector<uint8_t> out(4096);
  ASSERT_TRUE((*fresh)->ReadAt(n - 4096, absl::MakeSpan(out)).ok());
  EXPECT_EQ(std::string(out.begin(), out.end()), g->model_big.substr(n - 4096));
  EXPECT_EQ(Net(client), before);
}

TEST_F(HubClientTest, ARemoteSourceOutlivesItsClient) {
  std::unique_ptr<ByteSource> src;
  {
    HubClient client(Config());
    absl::StatusOr<RepoInfo> r = client.Resolve(Ref("owner/model"));
    ASSERT_TRUE(r.ok()) << r.status();
    absl::StatusOr<std::unique_ptr<ByteSource>> opened = client.OpenRemote(*r, "model.safetensors");
    ASSERT_TRUE(opened.ok()) << opened.status();
    src = *std::move(opened);
  }
  const size_t n = g->model_big.size();
  std::vector<uint8_t> out(4096);
  absl::Status st = src->ReadAt(n - 4096, absl::MakeSpan(out));  // over HTTP
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(std::string(out.begin(), out.end()), g->model_big.substr(n - 4096));
}

TEST_F(HubClientTest, TwoDownloadsOfOneFileAtOnceFetchItOnce) {
  HubClient first(Config());
  absl::StatusOr<RepoInfo> r = first.Resolve(Ref("owner/model"));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(g->hub->ResetStats().ok());
  // Slow enough that the second starts while the first holds the lock.
  ASSERT_TRUE(g->hub->Throttle(8 << 20).ok());
  absl::StatusOr<std::string> a = absl::UnknownError("not run"), b = a;
  std::thread other([&] {
    HubClient second(Config());
    b = second.Download(*r, "model.safetensors");
  });
  a = first.Download(*r, "model.safetensors");
  other.join();
  ASSERT_TRUE(g->hub->Throttle(0).ok());
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(*a, *b);
  EXPECT_EQ(ReadFile(*a), g->model_big);
  const std::string sha = Sha256Hex(g->model_big);
  EXPECT_EQ(BytesSentFor(StatsOnceSent(sha, g->model_big.size()), sha), g->model_big.size());
}

TEST_F(HubClientTest, ACachedCommitsListingIsCompletedOnline) {
  HubClient client(Config());
  absl::StatusOr<RepoInfo> r = client.Resolve(Ref("owner/model"));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(client.Download(*r, "config.json").ok());
  // By commit: from the cache, which holds one file of three.
  absl::StatusOr<RepoInfo> cached = client.Resolve(Ref("owner/model@" + r->commit));
  ASSERT_TRUE(cached.ok()) << cached.status();
  EXPECT_TRUE(cached->from_cache);
  EXPECT_EQ(cached->files.size(), 1u);
  absl::StatusOr<std::string> path = client.Download(*cached, "sub/dir/weights.bin");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(ReadFile(*path), g->model_nested);
  absl::StatusOr<std::unique_ptr<ByteSource>> src = client.OpenRemote(*cached, "model.safetensors");
  ASSERT_TRUE(src.ok()) << src.status();
  EXPECT_EQ((*src)->size(), g->model_big.size());
}

TEST_F(HubClientTest, ARefWithNothingCachedIsAskedOnlineEvenWithPreferCache) {
  HubClient client(Config());
  absl::StatusOr<RepoInfo> r = client.Resolve(Ref("owner/model"));  // writes refs/main only
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(client.cache().CachedCommit("owner/model", "main"), r->commit);
  absl::StatusOr<RepoInfo> preferred = client.Resolve(Ref("owner/model"), /*prefer_cache=*/true);
  ASSERT_TRUE(preferred.ok()) << preferred.status();
  EXPECT_FALSE(preferred->from_cache);
  EXPECT_EQ(preferred->files.size(), 3u);
  // Offline, the cache is all there is: the commit, and no file.
  HubConfig c = Config();
  c.offline = true;
  HubClient offline(c);
  absl::StatusOr<RepoInfo> cached = offline.Resolve(Ref("owner/model"));
  ASSERT_TRUE(cached.ok()) << cached.status();
  EXPECT_TRUE(cached->from_cache);
  EXPECT_EQ(cached->commit, r->commit);
  EXPECT_TRUE(cached->files.empty());
}

TEST_F(HubClientTest, HostilePathsFromTheHubAreRefused) {
  int n = 0;
  for (const char* hostile : {"../escape.bin", "/abs.bin", "a//b.bin", "a/./b.bin", "x/../../y"}) {
    const std::string branch = absl::StrCat("evil", n++);
    const std::string body = absl::StrCat(R"({"repo": "owner/model", "branch": ")", branch,
                                          R"(", "files": {")", hostile, R"(": "aGVsbG8="}})");
    absl::StatusOr<std::string> answer = g->hub->Control("POST", "/_fake/commit", body);
    ASSERT_TRUE(answer.ok()) << answer.status();
    HubClient client(Config());
    absl::StatusOr<RepoInfo> r = client.Resolve(Ref("owner/model@" + branch));
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << hostile << " " << r.status();
  }
  // Nor from a caller's listing.
  HubClient client(Config());
  absl::StatusOr<RepoInfo> r = client.Resolve(Ref("owner/model"));
  ASSERT_TRUE(r.ok()) << r.status();
  RepoInfo forged = *r;
  forged.files.push_back(RepoFile{"../../../../evil", 5, std::string(40, 'a'), std::nullopt});
  EXPECT_EQ(client.Download(forged, "../../../../evil").status().code(),
            absl::StatusCode::kInvalidArgument);
  for (const auto& e : fs::directory_iterator(g->dir)) {
    EXPECT_NE(e.path().filename(), "evil");
    EXPECT_NE(e.path().filename(), "escape.bin");
  }
}

// huggingface_hub (2.4.0, pip-installed) reads what we write, and we read
// what it writes.
class HubClientInteropTest : public HubClientTest {
 protected:
  void SetUp() override {
    HubClientTest::SetUp();
    if (system("python3 -c 'import huggingface_hub' >/dev/null 2>&1") != 0) {
      GTEST_SKIP() << "python3 with huggingface_hub is not installed";
    }
  }
  // Runs a Python snippet with the cache and the fake as huggingface_hub's
  // environment; returns its stdout, or "<exit N>".
  std::string Python(const std::string& code) {
    const std::string script = cache_dir_ + ".py";
    WriteFile(script, code);
    const std::string cmd = absl::StrCat(
        "env -u HF_TOKEN HF_HUB_CACHE='", cache_dir_, "' HF_ENDPOINT='", g->hub->endpoint(),
        "' HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_PROGRESS_BARS=1 HF_HOME='", g->dir,
        "/hf-home' python3 '", script, "' 2>&1");
    FILE* p = popen(cmd.c_str(), "r");
    if (p == nullptr) return "<popen failed>";
    std::string out;
    char buf[4096];
    size_t got;
    while ((got = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, got);
    const int rc = pclose(p);
    if (rc != 0) return absl::StrCat("<exit ", rc, ">\n", out);
    return out;
  }
};

TEST_F(HubClientInteropTest, HuggingfaceHubFindsOurDownload) {
  HubClient client(Config());
  absl::StatusOr<RepoInfo> r = client.Resolve(Ref("owner/interop"));
  ASSERT_TRUE(r.ok()) << r.status();
  absl::StatusOr<std::string> ours = client.Download(*r, "model.safetensors");
  ASSERT_TRUE(ours.ok()) << ours.status();
  ASSERT_TRUE(client.Download(*r, "README.md").ok());
  ASSERT_TRUE(g->hub->ResetStats().ok());
  const std::string out = Python(absl::StrCat(R"(
import hashlib, os
from huggingface_hub import scan_cache_dir, hf_hub_download
info = scan_cache_dir(os.environ["HF_HUB_CACHE"])
for w in info.warnings: print("warning", w)
for repo in info.repos:
    for rev in repo.revisions:
        print("repo", repo.repo_id, repo.repo_type, rev.commit_hash, sorted(rev.refs),
              sorted(f.file_name for f in rev.files), repo.size_on_disk)
p = hf_hub_download("owner/interop", "model.safetensors", revision="main", local_files_only=True)
print("path", p)
print("sha", hashlib.sha256(open(p, "rb").read()).hexdigest())
p = hf_hub_download("owner/interop", "README.md", revision=")",
                                              r->commit, R"(", local_files_only=True)
print("readme", p)
)"));
  const uint64_t size_on_disk = 200000 + 10;
  EXPECT_TRUE(absl::StrContains(
      out, absl::StrCat("repo owner/interop model ", r->commit,
                        " ['main'] ['README.md', 'model.safetensors'] ", size_on_disk)))
      << out;
  EXPECT_FALSE(absl::StrContains(out, "warning")) << out;
  EXPECT_TRUE(absl::StrContains(out, "path " + *ours + "\n")) << out;
  EXPECT_TRUE(absl::StrContains(out, "sha " + Sha256Hex(Pattern(200000, 7)))) << out;
  EXPECT_TRUE(absl::StrContains(
      out, absl::StrCat("readme ", cache_dir_, "/models--owner--interop/snapshots/", r->commit,
                        "/README.md")))
      << out;
  // local_files_only: huggingface_hub asked nothing (it would HEAD first).
  const nlohmann::json stats = Stats();
  for (const nlohmann::json& e : stats["log"]) EXPECT_NE(e.value("method", ""), "HEAD") << e.dump();
}

TEST_F(HubClientInteropTest, WeFindHuggingfaceHubsDownloadWithoutNetwork) {
  const std::string out = Python(R"(
from huggingface_hub import hf_hub_download
print("path", hf_hub_download("owner/interop", "sub/python.bin"))
)");
  ASSERT_TRUE(absl::StrContains(out, "path ")) << out;
  HubClient client(Config());
  absl::StatusOr<RepoInfo> r = client.Resolve(Ref("owner/interop"), /*prefer_cache=*/true);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->from_cache);  // huggingface_hub wrote refs/main
  const RepoFile* f = r->Find("sub/python.bin");
  ASSERT_NE(f, nullptr);
  ASSERT_TRUE(f->sha256.has_value());
  EXPECT_EQ(Net(client), 0u);
  // huggingface_hub's process is gone: the fake counted its bytes long ago.
  ASSERT_TRUE(g->hub->ResetStats().ok());
  absl::StatusOr<std::string> path = client.Download(*r, "sub/python.bin");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(ReadFile(*path), Pattern(150000, 8));
  EXPECT_TRUE(absl::StrContains(out, "path " + *path)) << out;
  EXPECT_EQ(Net(client), 0u);
  // From a fresh listing too (the network is asked for the listing only).
  absl::StatusOr<RepoInfo> online = client.Resolve(Ref("owner/interop"));
  ASSERT_TRUE(online.ok()) << online.status();
  const uint64_t before = Net(client);
  path = client.Download(*online, "sub/python.bin");
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(Net(client), before);
  EXPECT_EQ(BytesSentFor(Stats(), *f->sha256), 0u);
}

TEST_F(HubClientInteropTest, WeWaitForHuggingfaceHubsDownloadOfTheSameFile) {
  HubClient client(Config());
  absl::StatusOr<RepoInfo> r = client.Resolve(Ref("owner/interop"));
  ASSERT_TRUE(r.ok()) << r.status();
  const RepoFile* f = r->Find("model.safetensors");
  ASSERT_NE(f, nullptr);
  ASSERT_TRUE(g->hub->ResetStats().ok());
  ASSERT_TRUE(g->hub->Throttle(200000).ok());  // about a second for Python's download
  const std::string script = cache_dir_ + "-bg.py";
  WriteFile(script, R"(
from huggingface_hub import hf_hub_download
print("path", hf_hub_download("owner/interop", "model.safetensors"))
)");
  const std::string cmd = absl::StrCat(
      "env -u HF_TOKEN HF_HUB_CACHE='", cache_dir_, "' HF_ENDPOINT='", g->hub->endpoint(),
      "' HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_PROGRESS_BARS=1 HF_HOME='", g->dir,
      "/hf-home' python3 '", script, "' 2>&1");
  FILE* py = popen(cmd.c_str(), "r");
  ASSERT_NE(py, nullptr);
  // Python holds the blob's lock once its temporary file exists.
  const std::string blobs = absl::StrCat(cache_dir_, "/models--owner--interop/blobs");
  bool started = false;
  for (int i = 0; i < 1000 && !started; ++i) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(blobs, ec)) {
      if (absl::EndsWith(e.path().string(), ".incomplete")) started = true;
    }
    if (!started) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  absl::StatusOr<std::string> path = absl::UnknownError("not run");
  if (started) path = client.Download(*r, "model.safetensors");
  std::string out;
  char buf[4096];
  size_t got;
  while ((got = fread(buf, 1, sizeof(buf), py)) > 0) out.append(buf, got);
  EXPECT_EQ(pclose(py), 0) << out;
  ASSERT_TRUE(g->hub->Throttle(0).ok());
  ASSERT_TRUE(started) << "huggingface_hub's download did not start: " << out;
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_TRUE(absl::StrContains(out, "path " + *path)) << out;
  EXPECT_EQ(ReadFile(*path), Pattern(200000, 7));
  // The bytes were sent once: to Python.
  EXPECT_EQ(BytesSentFor(StatsOnceSent(*f->sha256, f->size), *f->sha256), f->size);
}

}  // namespace
}  // namespace bigsmall::hub
