// UploadFolder against the fake Hub (tests/hub/fake_hub.py): what is
// uploaded is downloaded back through the resolve endpoint, byte for byte.
#include "hub/hub_upload.h"

#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "hub/fake_hub_process.h"
#include "hub/http.h"
#include "hub/hub_client.h"
#include "hub/repo_ref.h"
#include "nlohmann/json.hpp"

namespace bigsmall::hub {
namespace {

using testing::FakeHub;
namespace fs = std::filesystem;

constexpr char kToken[] = "hf_uploadtesttoken0123456789";
// The fake splits LFS objects of at least this many bytes into parts.
constexpr uint64_t kMultipartThreshold = 1 << 20;

std::string MakeTempDir(const char* what) {
  std::string tmpl = absl::StrCat(fs::temp_directory_path().string(), "/bigsmall-", what,
                                  "-XXXXXX");
  if (mkdtemp(tmpl.data()) == nullptr) return "";
  return tmpl;
}

std::string RandomBytes(size_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string out(size, '\0');
  for (char& c : out) c = static_cast<char>(rng());
  return out;
}

void WriteFile(const std::string& path, const std::string& data) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

std::string Sha256Hex(const std::string& data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(data.data(), data.size(), digest, &length, EVP_sha256(), nullptr);
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(digest), length));
}

class Sha256Stream {
 public:
  Sha256Stream() : ctx_(EVP_MD_CTX_new()) { EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr); }
  ~Sha256Stream() { EVP_MD_CTX_free(ctx_); }
  void Update(const std::string& data) { EVP_DigestUpdate(ctx_, data.data(), data.size()); }
  std::string Hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    EVP_DigestFinal_ex(ctx_, digest, &length);
    return absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(digest), length));
  }

 private:
  EVP_MD_CTX* ctx_;
};

class HubUploadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    data_dir_ = MakeTempDir("fakehub-data");
    work_dir_ = MakeTempDir("upload");
    ASSERT_FALSE(data_dir_.empty());
    ASSERT_FALSE(work_dir_.empty());
    // One existing (empty) repo to upload to; others are created.
    fs::create_directories(data_dir_ + "/alice/existing");
    hub_ = std::make_unique<FakeHub>(
        data_dir_, std::vector<std::string>{kToken},
        std::vector<std::string>{"--multipart-threshold", std::to_string(kMultipartThreshold),
                                 "--multipart-chunk-size", std::to_string(kMultipartThreshold),
                                });
    ASSERT_TRUE(hub_->ok()) << hub_->log();
    client_ = MakeClient(kToken);
  }

  void TearDown() override {
    client_.reset();
    hub_.reset();
    std::error_code ec;
    fs::remove_all(data_dir_, ec);
    fs::remove_all(work_dir_, ec);
  }

  std::unique_ptr<HubClient> MakeClient(const std::string& token) {
    HubConfig config;
    config.endpoint = hub_->endpoint();
    if (!token.empty()) config.token = Secret(token);
    config.cache_dir = work_dir_ + "/cache";
    config.max_retries = 3;
    config.backoff_initial = std::chrono::milliseconds(5);
    config.backoff_max = std::chrono::milliseconds(20);
    config.stall_timeout = std::chrono::milliseconds(10'000);
    return std::make_unique<HubClient>(config);
  }

  // The directory to upload: small files (one nested), an empty one, an LFS
  // object sent in one PUT and one above the multipart threshold.
  std::string MakeModelDir() {
    const std::string dir = work_dir_ + "/model";
    files_.clear();
    files_["config.json"] = R"({"architectures": ["Llama"], "hidden_size": 64})";
    files_["tokenizer/special/tokens.txt"] = "<s>\n</s>\n<unk>\n";
    files_["empty.txt"] = "";
    files_["model.bs"] = RandomBytes(300'000, 1);
    files_["shards/big.bs"] = RandomBytes(2 * kMultipartThreshold + 12345, 2);
    for (const auto& [path, data] : files_) WriteFile(dir + "/" + path, data);
    return dir;
  }

  uint64_t LfsBytes() const {
    return files_.at("model.bs").size() + files_.at("shards/big.bs").size();
  }

  // GET {endpoint}/{repo}/resolve/{revision}/{path} (redirects followed).
  absl::StatusOr<std::string> DownloadBack(const std::string& repo, const std::string& revision,
                                           const std::string& path) {
    HttpRequest request;
    request.url = absl::StrCat(hub_->endpoint(), "/", repo, "/resolve/", EncodeRevision(revision),
                               "/", EncodePath(path));
    request.max_body = 64ull << 20;
    absl::StatusOr<HttpResponse> response = client_->http().Send(request);
    if (!response.ok()) return response.status();
    if (response->status != 200) return HttpError(*response, "download " + path);
    return response->body;
  }

  void ExpectDownloadsBack(const std::string& repo, const std::string& revision) {
    for (const auto& [path, data] : files_) {
      absl::StatusOr<std::string> got = DownloadBack(repo, revision, path);
      ASSERT_TRUE(got.ok()) << path << ": " << got.status() << "\n" << hub_->log();
      EXPECT_EQ(got->size(), data.size()) << path;
      EXPECT_TRUE(*got == data) << path << " differs from what was uploaded";
    }
  }

  // The fake's request log: how many requests of `method` had `needle` in
  // their path.
  int CountRequests(const std::string& method, const std::string& needle) {
    absl::StatusOr<std::string> stats = hub_->Stats();
    EXPECT_TRUE(stats.ok()) << stats.status();
    if (!stats.ok()) return -1;
    nlohmann::json json = nlohmann::json::parse(*stats, nullptr, false);
    int n = 0;
    if (!json.is_object() || !json.contains("log")) return -1;
    for (const auto& entry : json["log"]) {
      if (entry.value("method", "") == method &&
          absl::StrContains(entry.value("path", ""), needle)) {
        ++n;
      }
    }
    return n;
  }

  std::string data_dir_;
  std::string work_dir_;
  std::unique_ptr<FakeHub> hub_;
  std::unique_ptr<HubClient> client_;
  std::map<std::string, std::string> files_;
};

TEST_F(HubUploadTest, CreatesTheRepoAndEveryFileDownloadsBackByteForByte) {
  const std::string dir = MakeModelDir();
  UploadOptions options;
  options.create_repo = true;
  options.commit_message = "first upload";
  uint64_t last_done = 0, last_total = 0, calls = 0;
  bool monotonic = true;
  options.progress = [&](uint64_t done, uint64_t total) {
    monotonic = monotonic && done >= last_done && done <= total;
    last_done = done;
    last_total = total;
    ++calls;
  };
  absl::StatusOr<UploadResult> result = UploadFolder(*client_, dir, "alice/new-model", options);
  ASSERT_TRUE(result.ok()) << result.status() << "\n" << hub_->log();
  EXPECT_EQ(result->files, files_.size());
  EXPECT_EQ(result->lfs_files_sent, 2u);
  EXPECT_EQ(result->lfs_files_skipped, 0u);
  EXPECT_EQ(result->bytes_sent, LfsBytes());
  EXPECT_TRUE(IsCommitHash(result->commit)) << result->commit;
  EXPECT_FALSE(result->commit_url.empty());
  EXPECT_TRUE(monotonic);
  EXPECT_GT(calls, 2u);
  EXPECT_EQ(last_done, LfsBytes());
  EXPECT_EQ(last_total, LfsBytes());
  // The big object went in parts: more PUTs than LFS objects.
  EXPECT_GE(CountRequests("PUT", ""), 4);
  ExpectDownloadsBack("alice/new-model", "main");
  // The Hub lists what was committed, with the LFS sha256s.
  HttpRequest info;
  info.url = absl::StrCat(hub_->endpoint(), "/api/models/alice/new-model/revision/main?blobs=true");
  absl::StatusOr<HttpResponse> answer = client_->http().Send(info);
  ASSERT_TRUE(answer.ok()) << answer.status();
  ASSERT_EQ(answer->status, 200) << answer->body;
  nlohmann::json json = nlohmann::json::parse(answer->body, nullptr, false);
  ASSERT_TRUE(json.is_object()) << answer->body;
  EXPECT_EQ(json.value("sha", ""), result->commit);
  std::map<std::string, std::string> lfs;
  for (const auto& sibling : json["siblings"]) {
    if (sibling.contains("lfs")) lfs[sibling.value("rfilename", "")] = sibling["lfs"].value("sha256", "");
  }
  EXPECT_EQ(lfs["model.bs"], Sha256Hex(files_["model.bs"]));
  EXPECT_EQ(lfs["shards/big.bs"], Sha256Hex(files_["shards/big.bs"]));
  EXPECT_EQ(lfs.count("config.json"), 0u);
}

TEST_F(HubUploadTest, ASecondUploadOfTheSameDirectorySendsNoLfsBytes) {
  const std::string dir = MakeModelDir();
  absl::StatusOr<UploadResult> first = UploadFolder(*client_, dir, "alice/existing", {});
  ASSERT_TRUE(first.ok()) << first.status() << "\n" << hub_->log();
  ASSERT_TRUE(hub_->ResetStats().ok());
  absl::StatusOr<UploadResult> second = UploadFolder(*client_, dir, "alice/existing", {});
  ASSERT_TRUE(second.ok()) << second.status() << "\n" << hub_->log();
  EXPECT_EQ(second->lfs_files_sent, 0u);
  EXPECT_EQ(second->bytes_sent, 0u);
  EXPECT_EQ(second->files, files_.size());
  // Nothing changed: no commit either (as huggingface_hub's create_commit).
  EXPECT_EQ(second->files_unchanged, files_.size());
  EXPECT_EQ(second->commit, first->commit);
  EXPECT_EQ(CountRequests("PUT", ""), 0);
  EXPECT_EQ(CountRequests("POST", "/commit/"), 0);
  ExpectDownloadsBack("alice/existing", "main");
}

TEST_F(HubUploadTest, OnlyTheFilesThatChangedAreCommittedAgain) {
  const std::string dir = MakeModelDir();
  absl::StatusOr<UploadResult> first = UploadFolder(*client_, dir, "alice/existing", {});
  ASSERT_TRUE(first.ok()) << first.status() << "\n" << hub_->log();
  files_["config.json"] = R"({"architectures": ["Llama"], "hidden_size": 96})";
  WriteFile(dir + "/config.json", files_["config.json"]);
  files_["model.bs"][1000] ^= 0x5A;
  WriteFile(dir + "/model.bs", files_["model.bs"]);
  ASSERT_TRUE(hub_->ResetStats().ok());
  absl::StatusOr<UploadResult> second = UploadFolder(*client_, dir, "alice/existing", {});
  ASSERT_TRUE(second.ok()) << second.status() << "\n" << hub_->log();
  EXPECT_NE(second->commit, first->commit);
  EXPECT_EQ(second->files_unchanged, files_.size() - 2);
  EXPECT_EQ(second->lfs_files_sent, 1u);
  EXPECT_EQ(second->lfs_files_skipped, 0u);
  EXPECT_EQ(second->bytes_sent, files_["model.bs"].size());
  ExpectDownloadsBack("alice/existing", "main");
}

TEST_F(HubUploadTest, AFailedPutIsRetried) {
  const std::string dir = MakeModelDir();
  ASSERT_TRUE(hub_->AddFaults(R"({"rules": [{"path": "/_lfs/", "method": "PUT", "kind": "status",
                                             "status": 500, "times": 2}]})")
                  .ok());
  absl::StatusOr<UploadResult> result = UploadFolder(*client_, dir, "alice/existing", {});
  ASSERT_TRUE(result.ok()) << result.status() << "\n" << hub_->log();
  EXPECT_EQ(result->lfs_files_sent, 2u);
  EXPECT_GE(client_->http().stats().retries, 2u);
  ExpectDownloadsBack("alice/existing", "main");
}

TEST_F(HubUploadTest, AnInterruptedUploadResumesSendingOnlyWhatIsMissing) {
  const std::string dir = MakeModelDir();
  // The batch answers objects in the order asked, and we ask by oid: the
  // object whose oid sorts last fails for good, after the other is complete.
  const std::string small_oid = Sha256Hex(files_["model.bs"]);
  const std::string big_oid = Sha256Hex(files_["shards/big.bs"]);
  const std::string& failing = std::max(small_oid, big_oid);
  const uint64_t failing_size =
      failing == big_oid ? files_["shards/big.bs"].size() : files_["model.bs"].size();
  ASSERT_TRUE(hub_->AddFaults(absl::StrCat(R"({"rules": [{"path": ")", failing,
                                           R"(", "method": "PUT", "kind": "status",
                                              "status": 503, "times": -1}]})"))
                  .ok());
  absl::StatusOr<UploadResult> interrupted = UploadFolder(*client_, dir, "alice/existing", {});
  ASSERT_FALSE(interrupted.ok());
  EXPECT_EQ(interrupted.status().code(), absl::StatusCode::kUnavailable) << interrupted.status();
  ASSERT_TRUE(hub_->ClearFaults().ok());
  ASSERT_TRUE(hub_->ResetStats().ok());
  absl::StatusOr<UploadResult> resumed = UploadFolder(*client_, dir, "alice/existing", {});
  ASSERT_TRUE(resumed.ok()) << resumed.status() << "\n" << hub_->log();
  EXPECT_EQ(resumed->lfs_files_skipped, 1u);
  EXPECT_EQ(resumed->lfs_files_sent, 1u);
  EXPECT_EQ(resumed->bytes_sent, failing_size);
  ExpectDownloadsBack("alice/existing", "main");
}

TEST_F(HubUploadTest, WithoutATokenItIsUnauthenticatedAndNoTokenIsEverInTheMessage) {
  const std::string dir = MakeModelDir();
  std::unique_ptr<HubClient> anonymous = MakeClient("");
  absl::StatusOr<UploadResult> result = UploadFolder(*anonymous, dir, "alice/existing", {});
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnauthenticated) << result.status();
  EXPECT_TRUE(absl::StrContains(result.status().message(), "alice/existing"))
      << result.status();

  const std::string wrong = "hf_wrongtoken_do_not_print_me_42";
  std::unique_ptr<HubClient> refused = MakeClient(wrong);
  result = UploadFolder(*refused, dir, "alice/existing", {});
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnauthenticated) << result.status();
  EXPECT_FALSE(absl::StrContains(result.status().ToString(), wrong)) << result.status();
}

TEST_F(HubUploadTest, ASymlinkInTheDirectoryIsRefusedBeforeAnythingIsSent) {
  const std::string dir = MakeModelDir();
  WriteFile(work_dir_ + "/outside.txt", "secret outside the directory");
  ASSERT_EQ(symlink((work_dir_ + "/outside.txt").c_str(), (dir + "/tokenizer/link.txt").c_str()),
            0);
  ASSERT_TRUE(hub_->ResetStats().ok());
  absl::StatusOr<UploadResult> result = UploadFolder(*client_, dir, "alice/existing", {});
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition) << result.status();
  EXPECT_TRUE(absl::StrContains(result.status().message(), "tokenizer/link.txt"))
      << result.status();
  EXPECT_EQ(CountRequests("POST", "/api/"), 0);
}

TEST_F(HubUploadTest, AFifoInTheDirectoryIsRefused) {
  const std::string dir = MakeModelDir();
  ASSERT_EQ(mkfifo((dir + "/pipe").c_str(), 0600), 0);
  absl::StatusOr<UploadResult> result = UploadFolder(*client_, dir, "alice/existing", {});
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
  EXPECT_TRUE(absl::StrContains(result.status().message(), "pipe")) << result.status();
}

TEST_F(HubUploadTest, AFileThatChangesDuringTheUploadIsNotCommitted) {
  const std::string dir = MakeModelDir();
  absl::StatusOr<std::string> before = hub_->Control("GET", "/api/models/alice/existing");
  ASSERT_TRUE(before.ok()) << before.status();
  UploadOptions options;
  bool changed = false;
  // The first progress report comes after every file was hashed, before any
  // LFS byte is sent: the big file grows then.
  options.progress = [&](uint64_t, uint64_t) {
    if (changed) return;
    changed = true;
    std::ofstream out(dir + "/shards/big.bs", std::ios::binary | std::ios::app);
    out << "appended";
  };
  absl::StatusOr<UploadResult> result = UploadFolder(*client_, dir, "alice/existing", options);
  ASSERT_TRUE(changed);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition) << result.status();
  EXPECT_TRUE(absl::StrContains(result.status().message(), "shards/big.bs")) << result.status();
  absl::StatusOr<std::string> after = hub_->Control("GET", "/api/models/alice/existing");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(nlohmann::json::parse(*after, nullptr, false).value("sha", "x"),
            nlohmann::json::parse(*before, nullptr, false).value("sha", "y"))
      << "a commit was made";
}

TEST_F(HubUploadTest, CommitsToABranchItCreates) {
  const std::string dir = MakeModelDir();
  absl::StatusOr<UploadResult> main = UploadFolder(*client_, dir, "alice/existing", {});
  ASSERT_TRUE(main.ok()) << main.status() << "\n" << hub_->log();
  files_["config.json"] = R"({"architectures": ["Llama"], "hidden_size": 128})";
  WriteFile(dir + "/config.json", files_["config.json"]);
  UploadOptions options;
  options.revision = "dev";
  absl::StatusOr<UploadResult> dev = UploadFolder(*client_, dir, "alice/existing", options);
  ASSERT_TRUE(dev.ok()) << dev.status() << "\n" << hub_->log();
  EXPECT_NE(dev->commit, main->commit);
  ExpectDownloadsBack("alice/existing", "dev");
  absl::StatusOr<std::string> on_main = DownloadBack("alice/existing", "main", "config.json");
  ASSERT_TRUE(on_main.ok()) << on_main.status();
  EXPECT_TRUE(absl::StrContains(*on_main, "\"hidden_size\": 64")) << *on_main;
}

// The process's peak resident memory (VmHWM), and its reset (clear_refs 5),
// in KiB: what a basic PUT of a large file costs in memory.
int64_t StatusKiB(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, key)) {
      int64_t kib = 0;
      std::string digits;
      for (char c : line) {
        if (c >= '0' && c <= '9') digits += c;
      }
      return absl::SimpleAtoi(digits, &kib) ? kib : -1;
    }
  }
  return -1;
}
bool ResetPeakRss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return out.good();
}

TEST_F(HubUploadTest, ALargeBasicPutIsStreamedNotHeldInMemory) {
  // A fake that never offers multipart: the object goes in one basic PUT,
  // which fails once (the stream is read again from 0 for the retry).
  FakeHub basic(data_dir_, {kToken}, {"--multipart-threshold", "1099511627776"});
  ASSERT_TRUE(basic.ok()) << basic.log();
  HubConfig config;
  config.endpoint = basic.endpoint();
  config.token = Secret(kToken);
  config.cache_dir = work_dir_ + "/cache-basic";
  config.max_retries = 3;
  config.backoff_initial = std::chrono::milliseconds(5);
  config.backoff_max = std::chrono::milliseconds(20);
  HubClient client(config);
  constexpr size_t kChunk = 1 << 20;
  constexpr size_t kChunks = 48;  // 48 MiB, written and hashed 1 MiB at a time
  const std::string dir = work_dir_ + "/large";
  fs::create_directories(dir);
  Sha256Stream whole;
  {
    std::ofstream out(dir + "/big.bs", std::ios::binary);
    for (size_t i = 0; i < kChunks; ++i) {
      const std::string chunk = RandomBytes(kChunk, 100 + static_cast<uint32_t>(i));
      whole.Update(chunk);
      out.write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    }
  }
  ASSERT_TRUE(basic.AddFaults(R"({"rules": [{"path": "/_lfs/", "method": "PUT", "kind": "status",
                                             "status": 500, "times": 1}]})")
                  .ok());
  if (!ResetPeakRss()) GTEST_SKIP() << "/proc/self/clear_refs is not writable here";
  const int64_t rss_before = StatusKiB("VmRSS:");
  ASSERT_GT(rss_before, 0);
  absl::StatusOr<UploadResult> result = UploadFolder(client, dir, "alice/existing", {});
  const int64_t peak = StatusKiB("VmHWM:");
  ASSERT_TRUE(result.ok()) << result.status() << "\n" << basic.log();
  EXPECT_EQ(result->lfs_files_sent, 1u);
  EXPECT_EQ(result->bytes_sent, kChunk * kChunks);
  EXPECT_GE(client.http().stats().retries, 1u);
  // Held whole it would be 48 MiB more; streamed, a few buffers.
  EXPECT_LT(peak - rss_before, 16 << 10) << "peak " << peak << " KiB, before " << rss_before;
  // The Hub checked the sha256 of what it got; and it downloads back.
  HttpRequest request;
  request.url = absl::StrCat(basic.endpoint(), "/alice/existing/resolve/main/big.bs");
  request.max_body = 64ull << 20;
  absl::StatusOr<HttpResponse> back = client.http().Send(request);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->status, 200);
  EXPECT_EQ(Sha256Hex(back->body), whole.Hex());
}

TEST_F(HubUploadTest, AMissingRepoIsNotFoundUnlessCreated) {
  const std::string dir = MakeModelDir();
  absl::StatusOr<UploadResult> result = UploadFolder(*client_, dir, "alice/missing", {});
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kNotFound) << result.status();
  EXPECT_TRUE(absl::StrContains(result.status().message(), "alice/missing")) << result.status();
}

}  // namespace
}  // namespace bigsmall::hub
