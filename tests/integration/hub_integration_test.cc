// bigsmalld serving Hugging Face Hub models from the fake Hub
// (tests/hub/fake_hub.py): a sharded .bs repo streamed bit-exact while the
// cache fills, the first layer served before the download completes (an
// order, from the fake's byte counts), a second daemon and an offline one
// served from the cache without a byte of the files, private, gated and
// refused repos, a connection dropped mid-body, a corrupt range (that
// layer DATA_LOSS, then exact) and a corrupt download (never cached).
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "codec/compress.h"
#include "codec/hash.h"
#include "gtest/gtest.h"
#include "hub/fake_hub_process.h"
#include "nlohmann/json.hpp"
#include "tests/integration/daemon_harness.h"
#include "tests/integration/synthetic_model.h"

namespace bigsmall {
namespace {

using namespace std::chrono_literals;
using hub::testing::FakeHub;
using testing::Daemon;
using testing::g_dir;

constexpr char kToken[] = "hf_daemon_token_for_tests_0123456789";
constexpr char kRepo[] = "acme/tiny-bs";
constexpr char kPrivate[] = "acme/private-bs";
constexpr char kGated[] = "acme/gated-bs";
constexpr char kNotAllowed[] =
    "this Hugging Face Hub repo is not allowed by the daemon's hub_allow list";

// The repo's files: two .bs shards and the shard index.
struct RepoFiles {
  std::map<std::string, std::string> files;  // name -> contents
  std::map<std::string, std::vector<uint8_t>> tensors;
  uint64_t total = 0;
};
RepoFiles* g_repo = nullptr;
std::string g_data;  // the fake's data dir

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// The names in a directory (none when it does not exist).
std::vector<std::string> ListDir(const std::string& path) {
  std::vector<std::string> out;
  if (DIR* d = opendir(path.c_str())) {
    while (dirent* e = readdir(d)) {
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
        out.push_back(e->d_name);
      }
    }
    closedir(d);
  }
  return out;
}

// A TCP port on 127.0.0.1 that nothing listens on right now.
// GET /metrics from the daemon's exposer (retried while it starts, 5 s).
std::string Metrics(int port) {
  for (int attempt = 0; attempt < 250; ++attempt) {
    auto text = testing::HttpGet(port, "/metrics");
    if (text.ok() && absl::StrContains(*text, "bigsmall_")) return *text;
    std::this_thread::sleep_for(20ms);
  }
  return "";
}

// Whether the daemon's log shows `text` within `timeout`.
template <typename D>
bool LogShows(D& daemon, const std::string& text, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!absl::StrContains(daemon.log(), text)) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

// The value of one sample line ("name{labels} value") of a metrics text.
double Sample(const std::string& text, const std::string& series) {
  size_t pos = 0;
  while ((pos = text.find(series + " ", pos)) != std::string::npos) {
    if (pos == 0 || text[pos - 1] == '\n') return std::strtod(text.c_str() + pos + series.size(), nullptr);
    ++pos;
  }
  return -1;
}

void WriteRepo(const std::string& repo, const std::string& options_json) {
  const std::string dir = absl::StrCat(g_data, "/", repo);
  std::string cmd = absl::StrCat("mkdir -p '", dir, "'");
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  for (const auto& [name, bytes] : g_repo->files) WriteAll(dir + "/" + name, bytes);
  if (!options_json.empty()) WriteAll(dir + ".json", options_json);
}

class HubIntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(testing::MakeSuiteDir("bigsmall-hub-"));
    // No token or cache of the machine's user reaches the daemons: they get
    // theirs from flags. (Before any thread starts.)
    unsetenv("HF_TOKEN");
    unsetenv("HF_TOKEN_PATH");
    unsetenv("HF_HUB_OFFLINE");
    unsetenv("HF_HUB_CACHE");
    unsetenv("HF_ENDPOINT");
    setenv("HF_HOME", (g_dir + "/hf-home").c_str(), 1);
    g_data = g_dir + "/hub-data";
    g_repo = new RepoFiles();
    // A sharded model: 12 layers of 320 KiB in two shards.
    testing::SyntheticModelSpec spec;
    spec.layers = 12;
    spec.hidden = 128;
    std::vector<testing::SyntheticTensor> all = testing::MakeSyntheticTensors(spec);
    const size_t half = all.size() / 2;
    nlohmann::json weight_map = nlohmann::json::object();
    for (int s = 0; s < 2; ++s) {
      std::vector<testing::SyntheticTensor> part(all.begin() + (s == 0 ? 0 : half),
                                                 s == 0 ? all.begin() + half : all.end());
      const std::string name = absl::StrCat("model-0000", s + 1, "-of-00002.safetensors");
      const std::string st = absl::StrCat(g_dir, "/", name);
      ASSERT_TRUE(testing::WriteSafetensors(st, part));
      CompressOptions options;
      options.threads = 2;
      auto compressed = CompressPath(st, st + ".bs", options);
      ASSERT_TRUE(compressed.ok()) << compressed.status();
      g_repo->files[name + ".bs"] = ReadAll(st + ".bs");
      for (const auto& t : part) {
        g_repo->tensors[t.name] = t.bytes;
        weight_map[t.name] = name;
      }
    }
    g_repo->files["model.safetensors.index.json"] =
        nlohmann::json{{"metadata", nlohmann::json::object()}, {"weight_map", weight_map}}.dump();
    g_repo->files["README.md"] = "# tiny-bs\n";
    for (const auto& [name, bytes] : g_repo->files) g_repo->total += bytes.size();
    WriteRepo(kRepo, "");
    WriteRepo(kPrivate, R"({"private": true})");
    WriteRepo(kGated, R"({"gated": true, "granted": []})");
  }
  static void TearDownTestSuite() {
    delete g_repo;
    g_repo = nullptr;
    testing::RemoveSuiteDir();
  }

  void SetUp() override {
    static int n = 0;
    cache_ = absl::StrCat(g_dir, "/cache", n++);
    fake_ = std::make_unique<FakeHub>(g_data, std::vector<std::string>{kToken});
    ASSERT_TRUE(fake_->ok()) << fake_->log();
    token_file_ = g_dir + "/token";
    WriteAll(token_file_, std::string(kToken) + "\n");
  }
  void TearDown() override {
    if (HasFailure() && fake_ != nullptr) std::cerr << "fake hub log:\n" << fake_->log();
  }

  // A daemon on the fake Hub with this test's cache.
  std::unique_ptr<Daemon> StartDaemon(std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"--hub-endpoint", fake_->endpoint(), "--hub-cache", cache_};
    args.insert(args.end(), extra.begin(), extra.end());
    auto d = std::make_unique<Daemon>(args);
    EXPECT_TRUE(d->ready()) << d->log();
    return d;
  }

  nlohmann::json Stats() {
    auto text = fake_->Stats();
    EXPECT_TRUE(text.ok()) << text.status();
    return text.ok() ? nlohmann::json::parse(*text, nullptr, false) : nlohmann::json();
  }
  // Body bytes the fake sent for files (resolve and CDN), not API answers.
  uint64_t FileBytes(const nlohmann::json& stats) {
    uint64_t n = 0;
    if (!stats.contains("bytes_sent")) return n;
    for (const auto& [path, bytes] : stats["bytes_sent"].items()) {
      if (absl::StrContains(path, "/resolve/") || absl::StrContains(path, "/_cdn/")) {
        n += bytes.get<uint64_t>();
      }
    }
    return n;
  }

  // The cache holds every file of the repo at `commit` (bounded wait).
  std::string SnapshotDir(const std::string& repo, const std::string& commit) {
    std::string dashed = repo;
    dashed.replace(dashed.find('/'), 1, "--");
    return absl::StrCat(cache_, "/models--", dashed, "/snapshots/", commit);
  }
  bool WaitCached(const std::string& repo, const std::string& commit,
                  std::chrono::milliseconds timeout = 30s) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      bool all = true;
      for (const auto& [name, bytes] : g_repo->files) {
        if (!absl::EndsWith(name, ".bs") && name != "model.safetensors.index.json") continue;
        struct stat st;
        all = all && stat((SnapshotDir(repo, commit) + "/" + name).c_str(), &st) == 0;
      }
      if (all) return true;
      std::this_thread::sleep_for(20ms);
    }
    return false;
  }

  std::string cache_;
  std::string token_file_;
  std::unique_ptr<FakeHub> fake_;
};

std::string CommitOf(const v1::ModelDescription& desc) {
  const std::string& path = desc.path();
  const size_t at = path.rfind('@');
  return at == std::string::npos ? "" : path.substr(at + 1);
}

// Streams every layer (and the non-layer group) of an opened model and
// compares each tensor with the originals; the number compared.
absl::StatusOr<size_t> StreamExact(client::Client& client, const std::string& model_id) {
  client::StreamOptions options;
  options.include_non_layer = true;
  auto stream = client.Stream(model_id, options);
  if (!stream.ok()) return stream.status();
  size_t compared = 0;
  while (true) {
    auto layer = (*stream)->Next();
    if (!layer.ok()) return layer.status();
    if (*layer == nullptr) break;
    for (const auto& t : (*layer)->tensors()) {
      auto it = g_repo->tensors.find(t.name);
      if (it == g_repo->tensors.end()) return absl::InternalError("unknown tensor " + t.name);
      if (it->second.size() != t.size || std::memcmp(it->second.data(), t.data, t.size) != 0) {
        return absl::DataLossError("bytes differ in " + t.name);
      }
      if (HashBytes128({t.data, t.size}) != t.hash) return absl::DataLossError("hash " + t.name);
      ++compared;
    }
  }
  return compared;
}

TEST_F(HubIntegrationTest, FirstLayerIsServedBeforeTheDownloadEnds) {
  // 2 MB/s at the fake for everything, and the daemon's fill at 256 KiB/s:
  // the whole repo takes seconds; one layer is a tenth of a second.
  ASSERT_TRUE(fake_->Throttle(2 << 20).ok());
  auto d = StartDaemon({"--hub-max-bandwidth", "256K"});
  auto desc = d->client().OpenModel(kRepo);
  ASSERT_TRUE(desc.ok()) << desc.status() << d->log();
  EXPECT_TRUE(absl::StartsWith(desc->path(), absl::StrCat("hf://", kRepo, "@")));
  EXPECT_EQ(CommitOf(*desc).size(), 40u);
  EXPECT_EQ(desc->num_tensors(), g_repo->tensors.size());
  auto stream = d->client().Stream(desc->model_id(), {});
  ASSERT_TRUE(stream.ok()) << stream.status();
  auto layer0 = (*stream)->Next();
  ASSERT_TRUE(layer0.ok()) << layer0.status() << d->log();
  ASSERT_NE(*layer0, nullptr);
  EXPECT_EQ((*layer0)->index(), 0);
  // The order: layer 0 is in the client's hands while the fake has sent
  // less than the repo holds (and the cache is not complete).
  const nlohmann::json stats = Stats();
  EXPECT_LT(stats["total_bytes"].get<uint64_t>(), g_repo->total);
  std::cout << "first layer held after " << stats["total_bytes"].get<uint64_t>()
            << " bytes sent of the repo's " << g_repo->total << "\n";
  EXPECT_FALSE(WaitCached(kRepo, CommitOf(*desc), 0ms));
  for (const auto& t : (*layer0)->tensors()) {
    const auto& want = g_repo->tensors.at(t.name);
    ASSERT_EQ(want.size(), t.size);
    EXPECT_EQ(std::memcmp(want.data(), t.data, t.size), 0) << t.name;
  }
  layer0->reset();
  stream->reset();
  ASSERT_TRUE(fake_->Throttle(0).ok());
  // The fill (256 KiB/s again: no reader waits for it) is still running: a
  // SIGTERM stops it within a chunk (256 KiB here), and the daemon exits
  // cleanly. (Streaming the rest now would drive the fill to the end at
  // full speed: StreamedInLayerOrderEachByteIsFetchedOnce does.)
  EXPECT_FALSE(WaitCached(kRepo, CommitOf(*desc), 0ms));
  std::chrono::milliseconds took{0};
  EXPECT_TRUE(d->Stop(&took)) << d->log();
  EXPECT_LT(took, 5s);
}

TEST_F(HubIntegrationTest, SecondOpenAndOfflineAreServedFromTheCache) {
  std::string commit;
  {
    auto d = StartDaemon();
    auto desc = d->client().OpenModel(absl::StrCat("hf://", kRepo));
    ASSERT_TRUE(desc.ok()) << desc.status() << d->log();
    commit = CommitOf(*desc);
    auto compared = StreamExact(d->client(), desc->model_id());
    ASSERT_TRUE(compared.ok()) << compared.status() << d->log();
    EXPECT_EQ(*compared, g_repo->tensors.size());
    ASSERT_TRUE(WaitCached(kRepo, commit)) << d->log();
    // The cached blobs are the repo's bytes.
    for (const auto& [name, bytes] : g_repo->files) {
      if (!absl::EndsWith(name, ".bs")) continue;
      EXPECT_EQ(ReadAll(SnapshotDir(kRepo, commit) + "/" + name), bytes) << name;
    }
    EXPECT_TRUE(d->Stop());
  }
  // Another daemon on the same cache: the branch is asked (it may have
  // moved), no byte of a file is sent; by commit, nothing is asked at all.
  ASSERT_TRUE(fake_->ResetStats().ok());
  {
    const int port = testing::FreeTcpPort();
    auto d = StartDaemon({"--metrics", absl::StrCat("127.0.0.1:", port)});
    auto desc = d->client().OpenModel(kRepo);
    ASSERT_TRUE(desc.ok()) << desc.status() << d->log();
    EXPECT_EQ(CommitOf(*desc), commit);
    auto compared = StreamExact(d->client(), desc->model_id());
    ASSERT_TRUE(compared.ok()) << compared.status() << d->log();
    EXPECT_EQ(*compared, g_repo->tensors.size());
    nlohmann::json stats = Stats();
    EXPECT_EQ(FileBytes(stats), 0u) << stats.dump();
    EXPECT_EQ(stats["requests"].get<uint64_t>(), 1u) << stats.dump();
    // The metrics say so: one open and every read from the cache, the API
    // answer the only bytes fetched.
    const std::string metrics = Metrics(port);
    EXPECT_EQ(Sample(metrics, "bigsmall_hub_cache_hits_total{kind=\"open\"}"), 1) << metrics;
    EXPECT_GT(Sample(metrics, "bigsmall_hub_cache_hits_total{kind=\"read\"}"), 0) << metrics;
    EXPECT_EQ(Sample(metrics, "bigsmall_hub_bytes_fetched_total"),
              static_cast<double>(stats["total_bytes"].get<uint64_t>()))
        << metrics;
    EXPECT_EQ(Sample(metrics, "bigsmall_hub_fetch_errors_total"), 0) << metrics;
    // GetStats says the same.
    auto daemon_stats = d->client().Stats();
    ASSERT_TRUE(daemon_stats.ok()) << daemon_stats.status();
    EXPECT_EQ(daemon_stats->hub_cache_hit_opens(), 1u);
    EXPECT_EQ(static_cast<double>(daemon_stats->hub_cache_hit_reads()),
              Sample(metrics, "bigsmall_hub_cache_hits_total{kind=\"read\"}"));
    EXPECT_EQ(daemon_stats->hub_bytes_fetched(), stats["total_bytes"].get<uint64_t>());
    EXPECT_EQ(daemon_stats->hub_fetch_errors(), 0u);
    ASSERT_TRUE(fake_->ResetStats().ok());
    auto by_commit = d->client().OpenModel(absl::StrCat(kRepo, "@", commit));
    ASSERT_TRUE(by_commit.ok()) << by_commit.status();
    EXPECT_EQ(by_commit->model_id(), desc->model_id());
    stats = Stats();
    EXPECT_EQ(stats["requests"].get<uint64_t>(), 0u) << stats.dump();
    EXPECT_TRUE(d->Stop());
  }
  // Offline: no request at all; what the cache lacks is NOT_FOUND.
  ASSERT_TRUE(fake_->ResetStats().ok());
  {
    auto d = StartDaemon({"--hub-offline"});
    auto desc = d->client().OpenModel(kRepo);
    ASSERT_TRUE(desc.ok()) << desc.status() << d->log();
    EXPECT_EQ(CommitOf(*desc), commit);
    auto compared = StreamExact(d->client(), desc->model_id());
    ASSERT_TRUE(compared.ok()) << compared.status() << d->log();
    auto missing = d->client().OpenModel("acme/never-fetched");
    EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound) << missing.status();
    EXPECT_EQ(Stats()["requests"].get<uint64_t>(), 0u);
    EXPECT_TRUE(d->Stop());
  }
}

TEST_F(HubIntegrationTest, PrivateRepoNeedsTheDaemonsToken) {
  {
    auto d = StartDaemon({"--hub-allow", kPrivate});
    auto desc = d->client().OpenModel(kPrivate);
    EXPECT_EQ(desc.status().code(), absl::StatusCode::kUnauthenticated) << desc.status();
  }
  {
    // With the token but not listed: the default list is public repos only.
    auto d = StartDaemon({"--hub-token-file", token_file_});
    auto desc = d->client().OpenModel(kPrivate);
    EXPECT_EQ(desc.status().code(), absl::StatusCode::kPermissionDenied) << desc.status();
    EXPECT_EQ(desc.status().message(), kNotAllowed);
  }
  ASSERT_TRUE(fake_->ResetStats().ok());
  const int port = testing::FreeTcpPort();
  auto d = StartDaemon({"--hub-token-file", token_file_, "--hub-allow", "acme/private-*",
                        "--metrics", absl::StrCat("127.0.0.1:", port)});
  auto desc = d->client().OpenModel(kPrivate);
  ASSERT_TRUE(desc.ok()) << desc.status() << d->log();
  auto compared = StreamExact(d->client(), desc->model_id());
  ASSERT_TRUE(compared.ok()) << compared.status() << d->log();
  EXPECT_EQ(*compared, g_repo->tensors.size());
  // Every request carried the token, and it is nowhere in the log.
  const nlohmann::json stats = Stats();
  for (const auto& entry : stats["log"]) {
    if (!absl::StrContains(entry["path"].get<std::string>(), "/_cdn/")) {
      EXPECT_TRUE(entry["authorized"].get<bool>()) << entry.dump();
    }
  }
  const std::string metrics = Metrics(port);
  EXPECT_GT(Sample(metrics, "bigsmall_hub_bytes_fetched_total"), 0) << metrics;
  EXPECT_FALSE(absl::StrContains(metrics, "hf_daemon")) << metrics;
  EXPECT_TRUE(d->Stop());
  EXPECT_FALSE(absl::StrContains(d->log(), kToken));
  EXPECT_FALSE(absl::StrContains(d->log(), "hf_daemon"));
}

TEST_F(HubIntegrationTest, GatedAndRefusedRepos) {
  auto d = StartDaemon({"--hub-token-file", token_file_, "--hub-allow", "acme"});
  auto gated = d->client().OpenModel(kGated);
  EXPECT_EQ(gated.status().code(), absl::StatusCode::kPermissionDenied) << gated.status();
  d.reset();
  // Refused before any request, with one message whether the repo exists.
  ASSERT_TRUE(fake_->ResetStats().ok());
  d = StartDaemon({"--hub-allow", "other/*", "--hub-allow", "acme/tiny"});
  for (const char* name : {kRepo, "acme/does-not-exist", "hf://acme/tiny-bs@main"}) {
    auto refused = d->client().OpenModel(name);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kPermissionDenied) << name;
    EXPECT_EQ(refused.status().message(), kNotAllowed) << name;
  }
  EXPECT_EQ(Stats()["requests"].get<uint64_t>(), 0u);
  d.reset();
  // --no-hub: a Hub name is refused, clearly.
  d = StartDaemon({"--no-hub"});
  auto off = d->client().OpenModel(kRepo);
  EXPECT_EQ(off.status().code(), absl::StatusCode::kFailedPrecondition) << off.status();
  EXPECT_EQ(Stats()["requests"].get<uint64_t>(), 0u);
}

TEST_F(HubIntegrationTest, MovedBranchIsAnotherModel) {
  auto d = StartDaemon({"--hub-concurrency", "0"});
  auto before = d->client().OpenModel(kRepo);
  ASSERT_TRUE(before.ok()) << before.status() << d->log();
  // A new commit on main (a README change: the .bs files are the same).
  ASSERT_TRUE(fake_
                  ->Control("POST", "/_fake/commit",
                            R"({"repo": "acme/tiny-bs", "branch": "main",
                                "files": {"README.md": "bW92ZWQK"}})")
                  .ok());
  auto after = d->client().OpenModel(kRepo);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_NE(CommitOf(*after), CommitOf(*before));
  EXPECT_NE(after->model_id(), before->model_id());
  // The old commit is still the model that was open.
  auto old = d->client().OpenModel(absl::StrCat(kRepo, "@", CommitOf(*before)));
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(old->model_id(), before->model_id());
  auto compared = StreamExact(d->client(), after->model_id());
  ASSERT_TRUE(compared.ok()) << compared.status() << d->log();
  EXPECT_EQ(*compared, g_repo->tensors.size());
}

TEST_F(HubIntegrationTest, DroppedConnectionsResume) {
  // No background fill: every layer is read by ranged GETs.
  const int port = testing::FreeTcpPort();
  auto d = StartDaemon({"--hub-concurrency", "0", "--metrics", absl::StrCat("127.0.0.1:", port)});
  auto desc = d->client().OpenModel(kRepo);
  ASSERT_TRUE(desc.ok()) << desc.status() << d->log();
  ASSERT_TRUE(fake_
                  ->AddFaults(R"({"rules": [{"path": "/_cdn/", "method": "GET",
                                  "kind": "drop_after", "bytes": 1000, "times": 4}]})")
                  .ok());
  auto compared = StreamExact(d->client(), desc->model_id());
  ASSERT_TRUE(compared.ok()) << compared.status() << d->log();
  EXPECT_EQ(*compared, g_repo->tensors.size());
  // The faults were hit (and resumed from).
  int dropped = 0;
  const nlohmann::json stats = Stats();
  for (const auto& entry : stats["log"]) {
    if (entry["status"].get<int>() == 206 && entry["bytes"].get<uint64_t>() == 1000) ++dropped;
  }
  EXPECT_GE(dropped, 1) << stats.dump();
  const std::string metrics = Metrics(port);
  EXPECT_GE(Sample(metrics, "bigsmall_hub_retries_total"), dropped) << metrics;
  EXPECT_EQ(Sample(metrics, "bigsmall_hub_fetch_errors_total"), 0) << metrics;
  auto daemon_stats = d->client().Stats();
  ASSERT_TRUE(daemon_stats.ok()) << daemon_stats.status();
  EXPECT_GE(daemon_stats->hub_retries(), static_cast<uint64_t>(dropped));
  EXPECT_EQ(static_cast<double>(daemon_stats->hub_retries()),
            Sample(metrics, "bigsmall_hub_retries_total"));
  EXPECT_GT(daemon_stats->hub_bytes_fetched(), 0u);
  EXPECT_EQ(daemon_stats->hub_cache_hit_reads(), 0u);
}

// The body bytes the fake sent of one file of kRepo (resolve and CDN).
uint64_t FileBytesOf(const nlohmann::json& stats, const std::string& name) {
  const std::string key = absl::StrCat(kRepo, "/", name);
  if (!stats.contains("bytes_by_file") || !stats["bytes_by_file"].contains(key)) return 0;
  return stats["bytes_by_file"][key].get<uint64_t>();
}

// One client streams a fresh model in layer order while the fill (no limit
// of its own) runs: each shard's bytes cross the network once (plus the
// header and index OpenModel reads first), whether its reads wait for the
// fill and come from the .incomplete, or (past --hub-read-ahead) fetch
// their ranges and hand them to the fill. The fake sends at 4 MB/s, so the
// first layer still comes before the download ends.
void StreamInLayerOrderFetchingEachByteOnce(FakeHub* fake,
                                            std::unique_ptr<Daemon> d,
                                            const std::string& cache_dir) {
  auto desc = d->client().OpenModel(kRepo);
  ASSERT_TRUE(desc.ok()) << desc.status() << d->log();
  client::StreamOptions options;
  options.include_non_layer = true;
  auto stream = d->client().Stream(desc->model_id(), options);
  ASSERT_TRUE(stream.ok()) << stream.status();
  size_t compared = 0;
  bool first = true;
  auto stats_now = [&] {
    auto text = fake->Stats();
    EXPECT_TRUE(text.ok()) << text.status();
    return text.ok() ? nlohmann::json::parse(*text, nullptr, false) : nlohmann::json();
  };
  while (true) {
    auto layer = (*stream)->Next();
    ASSERT_TRUE(layer.ok()) << layer.status() << d->log();
    if (*layer == nullptr) break;
    if (first) {
      first = false;
      const nlohmann::json stats = stats_now();
      EXPECT_LT(stats["total_bytes"].get<uint64_t>(), g_repo->total) << stats.dump();
    }
    for (const auto& t : (*layer)->tensors()) {
      const auto& want = g_repo->tensors.at(t.name);
      ASSERT_EQ(want.size(), t.size) << t.name;
      EXPECT_EQ(std::memcmp(want.data(), t.data, t.size), 0) << t.name;
      ++compared;
    }
  }
  EXPECT_EQ(compared, g_repo->tensors.size());
  const std::string snapshot =
      absl::StrCat(cache_dir, "/models--acme--tiny-bs/snapshots/", CommitOf(*desc));
  auto deadline = std::chrono::steady_clock::now() + 30s;
  auto cached = [&] {
    struct stat st;
    return stat((snapshot + "/model-00001-of-00002.safetensors.bs").c_str(), &st) == 0 &&
           stat((snapshot + "/model-00002-of-00002.safetensors.bs").c_str(), &st) == 0;
  };
  while (!cached() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_TRUE(cached()) << d->log();
  const nlohmann::json stats = stats_now();
  for (const auto& [name, bytes] : g_repo->files) {
    if (!absl::EndsWith(name, ".bs")) continue;
    const uint64_t sent = FileBytesOf(stats, name);
    std::cout << name << ": " << sent << " bytes sent for its " << bytes.size() << "\n";
    EXPECT_GE(sent, bytes.size()) << name;
    EXPECT_LE(sent, bytes.size() + bytes.size() / 20) << name << "\n" << stats.dump();
    EXPECT_EQ(ReadAll(snapshot + "/" + name), bytes) << name;
  }
  EXPECT_TRUE(d->Stop());
}

TEST_F(HubIntegrationTest, StreamedInLayerOrderEachByteIsFetchedOnce) {
  ASSERT_TRUE(fake_->Throttle(4 << 20).ok());
  StreamInLayerOrderFetchingEachByteOnce(fake_.get(), StartDaemon(), cache_);
}

TEST_F(HubIntegrationTest, ReadsAheadOfTheFillHandTheirBytesToIt) {
  // --hub-read-ahead 0: only a read at the fill's prefix waits; the others
  // fetch their ranges, and the fill appends those instead of fetching them.
  ASSERT_TRUE(fake_->Throttle(4 << 20).ok());
  StreamInLayerOrderFetchingEachByteOnce(fake_.get(),
                                         StartDaemon({"--hub-read-ahead", "0"}), cache_);
}

TEST_F(HubIntegrationTest, ALateLayerFarAheadOfTheFillIsItsOwnRange) {
  // A slow fill (256 KiB/s) and a read-ahead bound of 64 KiB: a client that
  // starts at the last layer does not wait for the fill to get there; its
  // layer comes by a ranged GET of its own while the fill is still near the
  // start of the shard.
  auto d = StartDaemon({"--hub-max-bandwidth", "256K", "--hub-read-ahead", "64K"});
  auto desc = d->client().OpenModel(kRepo);
  ASSERT_TRUE(desc.ok()) << desc.status() << d->log();
  const int last = static_cast<int>(desc->num_layers()) - 1;
  ASSERT_GT(last, 0);
  client::StreamOptions options;
  options.from_layer = last;
  auto stream = d->client().Stream(desc->model_id(), options);
  ASSERT_TRUE(stream.ok()) << stream.status();
  auto layer = (*stream)->Next();
  ASSERT_TRUE(layer.ok()) << layer.status() << d->log();
  ASSERT_NE(*layer, nullptr);
  EXPECT_EQ((*layer)->index(), last);
  for (const auto& t : (*layer)->tensors()) {
    const auto& want = g_repo->tensors.at(t.name);
    ASSERT_EQ(want.size(), t.size) << t.name;
    EXPECT_EQ(std::memcmp(want.data(), t.data, t.size), 0) << t.name;
  }
  // The order: the last shard's bytes sent so far are its header and index,
  // that layer, and what the slow fill has read: far less than the shard
  // (a read that waited for the fill would have needed all before it).
  const nlohmann::json stats = Stats();
  const std::string name = "model-00002-of-00002.safetensors.bs";
  EXPECT_LT(FileBytesOf(stats, name), g_repo->files.at(name).size() / 2) << stats.dump();
  EXPECT_FALSE(WaitCached(kRepo, CommitOf(*desc), 0ms));
  layer->reset();
  stream->reset();
  EXPECT_TRUE(d->Stop());
}

TEST_F(HubIntegrationTest, AFailingFillDoesNotFailTheStream) {
  // OpenModel's own reads (the daemon's foreground client) resolve each
  // shard's URL once and then go to the CDN; the fill's client resolves
  // them again, and those requests fail (404, not retried): the fill fails,
  // and the stream's reads (some waiting for the fill) fetch their own
  // ranges, exact. The first rule lets OpenModel's two resolves through.
  ASSERT_TRUE(fake_
                  ->AddFaults(R"({"rules": [
                      {"path": "/resolve/.*[.]bs$", "method": "GET", "kind": "stall",
                       "seconds": 0, "times": 2},
                      {"path": "/resolve/.*[.]bs$", "method": "GET", "kind": "status",
                       "status": 404, "times": -1}]})")
                  .ok());
  auto d = StartDaemon();
  auto desc = d->client().OpenModel(kRepo);
  ASSERT_TRUE(desc.ok()) << desc.status() << d->log();
  auto compared = StreamExact(d->client(), desc->model_id());
  ASSERT_TRUE(compared.ok()) << compared.status() << d->log();
  EXPECT_EQ(*compared, g_repo->tensors.size());
  // The fill did fail (and so nothing is cached).
  EXPECT_TRUE(LogShows(*d, "model-00001-of-00002.safetensors.bs: ", 10s)) << d->log();
  EXPECT_FALSE(WaitCached(kRepo, CommitOf(*desc), 0ms));
  EXPECT_TRUE(d->Stop());
}

// What a client can make the daemon hold on disk is bounded: a model over
// hub_max_model_bytes is refused at open, and a file that would leave less
// than hub_min_free_bytes of the cache's file system free is not filled
// (its layers are still served, by ranged GETs).
TEST_F(HubIntegrationTest, ClientsCannotFillTheDiskThroughTheDaemon) {
  {
    auto d = StartDaemon({"--hub-max-model-bytes", "1000"});
    auto refused = d->client().OpenModel(kRepo);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
    EXPECT_TRUE(absl::StrContains(refused.status().message(), "hub_max_model_bytes"))
        << refused.status();
    EXPECT_TRUE(d->Stop());
  }
  auto d = StartDaemon({"--hub-min-free-bytes", "1125899906842624"});  // 1 PiB
  auto desc = d->client().OpenModel(kRepo);
  ASSERT_TRUE(desc.ok()) << desc.status() << d->log();
  auto compared = StreamExact(d->client(), desc->model_id());
  ASSERT_TRUE(compared.ok()) << compared.status() << d->log();
  EXPECT_EQ(*compared, g_repo->tensors.size());
  EXPECT_TRUE(LogShows(*d, "not filled into the cache", 10s)) << d->log();
  EXPECT_FALSE(WaitCached(kRepo, CommitOf(*desc), 0ms));
  // Nothing was begun either (no .incomplete).
  EXPECT_EQ(ListDir(cache_ + "/models--acme--tiny-bs/blobs"), std::vector<std::string>{});
  EXPECT_TRUE(d->Stop());
}

TEST_F(HubIntegrationTest, CorruptRangeIsDataLossThenExact) {
  auto d = StartDaemon({"--hub-concurrency", "0"});
  auto desc = d->client().OpenModel(kRepo);
  ASSERT_TRUE(desc.ok()) << desc.status() << d->log();
  // The next file range the fake sends has one byte flipped.
  ASSERT_TRUE(fake_
                  ->AddFaults(R"({"rules": [{"path": "/_cdn/", "method": "GET",
                                  "kind": "corrupt", "times": 1}]})")
                  .ok());
  auto first = StreamExact(d->client(), desc->model_id());
  EXPECT_EQ(first.status().code(), absl::StatusCode::kDataLoss) << first.status();
  // Nothing of it was kept: the layer is fetched again, exact.
  auto again = StreamExact(d->client(), desc->model_id());
  ASSERT_TRUE(again.ok()) << again.status() << d->log();
  EXPECT_EQ(*again, g_repo->tensors.size());
  // No background fill: the cache holds no blob, corrupt or not.
  EXPECT_EQ(ListDir(cache_ + "/models--acme--tiny-bs/blobs"), std::vector<std::string>{});
}

TEST_F(HubIntegrationTest, CorruptDownloadIsNeverCached) {
  // Every body longer than a quarter of a shard gets a byte flipped there:
  // only the fill's GETs are (no reader waits for it here, so it reads
  // chunks of 256 KiB, 512 KiB, 1 MiB...); the layers' ranges (a layer
  // group each, under 300 KB) are exact.
  uint64_t smallest = UINT64_MAX;
  for (const auto& [name, bytes] : g_repo->files) {
    if (absl::EndsWith(name, ".bs")) smallest = std::min<uint64_t>(smallest, bytes.size());
  }
  ASSERT_TRUE(fake_
                  ->AddFaults(absl::StrCat(R"({"rules": [{"path": "/_cdn/", "method": "GET",
                                  "kind": "corrupt", "times": -1, "offset": )",
                                           smallest / 4, "}]}"))
                  .ok());
  std::string commit;
  {
    auto d = StartDaemon();
    auto desc = d->client().OpenModel(kRepo);
    ASSERT_TRUE(desc.ok()) << desc.status() << d->log();
    commit = CommitOf(*desc);
    // The fill fails its checks: no shard ever appears in the cache.
    auto deadline = std::chrono::steady_clock::now() + 20s;
    while (std::chrono::steady_clock::now() < deadline &&
           !(absl::StrContains(d->log(), "model-00001-of-00002.safetensors.bs: ") &&
             absl::StrContains(d->log(), "model-00002-of-00002.safetensors.bs: "))) {
      std::this_thread::sleep_for(20ms);
    }
    EXPECT_TRUE(absl::StrContains(d->log(), "model-00001-of-00002.safetensors.bs: ")) << d->log();
    // The corrupt .incomplete is gone, and the open model's reads do not
    // come from it (nor from a new fill of it): ranged GETs, exact.
    auto compared = StreamExact(d->client(), desc->model_id());
    ASSERT_TRUE(compared.ok()) << compared.status() << d->log();
    EXPECT_EQ(*compared, g_repo->tensors.size());
    EXPECT_FALSE(WaitCached(kRepo, commit, 0ms));
    for (const auto& [name, bytes] : g_repo->files) {
      if (!absl::EndsWith(name, ".bs")) continue;
      struct stat st;
      EXPECT_NE(stat((SnapshotDir(kRepo, commit) + "/" + name).c_str(), &st), 0) << name;
    }
    EXPECT_TRUE(d->Stop());
  }
  // Without the fault, the next open fills the cache with the right bytes.
  ASSERT_TRUE(fake_->ClearFaults().ok());
  auto d = StartDaemon();
  auto desc = d->client().OpenModel(kRepo);
  ASSERT_TRUE(desc.ok()) << desc.status() << d->log();
  ASSERT_TRUE(WaitCached(kRepo, commit)) << d->log();
  for (const auto& [name, bytes] : g_repo->files) {
    if (!absl::EndsWith(name, ".bs")) continue;
    EXPECT_EQ(ReadAll(SnapshotDir(kRepo, commit) + "/" + name), bytes) << name;
  }
}

}  // namespace
}  // namespace bigsmall
