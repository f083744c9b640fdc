// The daemon's Hub settings and the checks made before any request (no
// server: the end-to-end behaviour is tests/integration/hub_integration_test).
#include "daemon/hub_models.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "daemon/metrics.h"
#include "gtest/gtest.h"

namespace bigsmall::daemon {
namespace {

class HubModelsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/hub_models_testXXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    for (const char* name : {"HF_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE", "HF_HUB_CACHE",
                             "HF_ENDPOINT"}) {
      unsetenv(name);
    }
    setenv("HF_HOME", dir_.c_str(), 1);
  }
  void TearDown() override {
    unsetenv("HF_HOME");
    unsetenv("HF_HUB_OFFLINE");
    std::string cmd = "rm -rf '" + dir_ + "'";
    ASSERT_EQ(system(cmd.c_str()), 0);
  }
  std::string Write(const std::string& name, const std::string& text) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }
  std::string dir_;
};

TEST_F(HubModelsTest, ConfigComesFromTheEnvironmentUnderTheFlags) {
  DaemonConfig config;
  auto hub = HubConfigFor(config);
  ASSERT_TRUE(hub.ok()) << hub.status();
  EXPECT_EQ(hub->endpoint, "https://huggingface.co");
  EXPECT_TRUE(hub->token.empty());
  EXPECT_FALSE(hub->offline);
  EXPECT_EQ(hub->cache_dir, dir_ + "/hub");
  setenv("HF_HUB_OFFLINE", "1", 1);
  EXPECT_TRUE(HubConfigFor(config)->offline);
  unsetenv("HF_HUB_OFFLINE");
  config.hub_offline = true;
  config.hub_endpoint = "http://127.0.0.1:1/";
  config.hub_cache = dir_ + "/cache";
  config.hub_token_file = Write("token", "  hf_secret_value \n");
  hub = HubConfigFor(config);
  ASSERT_TRUE(hub.ok()) << hub.status();
  EXPECT_TRUE(hub->offline);
  EXPECT_EQ(hub->endpoint, "http://127.0.0.1:1");
  EXPECT_EQ(hub->cache_dir, dir_ + "/cache");
  EXPECT_EQ(hub->token.Reveal(), "hf_secret_value");
  // An empty, missing or huge token file is an error that names the file,
  // never its contents.
  for (const std::string& text : {std::string(" \n"), std::string(5000, 'x')}) {
    config.hub_token_file = Write("bad", text);
    auto bad = HubConfigFor(config);
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(bad.status().message(), "hub_token_file"));
    EXPECT_FALSE(absl::StrContains(bad.status().message(), "xxxx"));
  }
  config.hub_token_file = dir_ + "/none";
  EXPECT_EQ(HubConfigFor(config).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(HubModelsTest, HubNamesAreNotPaths) {
  for (const char* name : {"acme/tiny", "acme/tiny@main", "hf://acme/tiny", "acme/t@refs/pr/1"}) {
    EXPECT_TRUE(IsHubModelName(name)) << name;
  }
  for (const char* name : {"/models/acme/tiny", "", "tiny", "./acme/tiny", "a/b/c"}) {
    EXPECT_FALSE(IsHubModelName(name)) << name;
  }
}

TEST_F(HubModelsTest, AllowListIsCheckedBeforeAnyRequest) {
  DaemonConfig config;
  // Nothing listens there: a request would be UNAVAILABLE after retries.
  config.hub_endpoint = "http://127.0.0.1:9";
  config.hub_allow = {"other/*", "acme/tiny", "ORG"};
  config.hub_concurrency = 0;
  Metrics metrics;
  auto hub = HubModels::Create(config, &metrics);
  ASSERT_TRUE(hub.ok()) << hub.status();
  for (const char* name : {"acme/other", "acme/tiny-bs", "hf://evil/x@main", "others/x"}) {
    auto refused = (*hub)->Resolve(name);
    EXPECT_EQ(refused.status(), absl::PermissionDeniedError(kHubNotAllowed)) << name;
  }
  EXPECT_EQ(metrics.hub_bytes_fetched(), 0u);
  EXPECT_EQ((*hub)->Resolve("not a name").status().code(), absl::StatusCode::kInvalidArgument);
  config.hub_allow = {"a/b/c"};
  EXPECT_EQ(HubModels::Create(config, &metrics).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The daemon serves what its cache holds (the .bs indexes that the tensor
// hashes are checked against come from there too), so a cache that another
// user could write is refused at start, like a shared shm directory.
TEST_F(HubModelsTest, ACacheOthersCanWriteIsRefusedAtStart) {
  DaemonConfig config;
  config.hub_endpoint = "http://127.0.0.1:9";
  config.hub_concurrency = 0;
  Metrics metrics;
  const std::string cache = dir_ + "/cache";
  ASSERT_EQ(mkdir(cache.c_str(), 0755), 0);
  config.hub_cache = cache;
  EXPECT_TRUE(HubModels::Create(config, &metrics).ok());
  // Missing: made later by the cache, beneath a directory we own.
  config.hub_cache = cache + "/not/yet";
  EXPECT_TRUE(HubModels::Create(config, &metrics).ok());

  ASSERT_EQ(chmod(cache.c_str(), 0777), 0);
  config.hub_cache = cache;
  auto refused = HubModels::Create(config, &metrics);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "others can write")) << refused.status();
  // Beneath it, too: a world-writable directory without the sticky bit
  // lets others rename what lies in it.
  ASSERT_EQ(mkdir((cache + "/hub").c_str(), 0755), 0);
  config.hub_cache = cache + "/hub";
  EXPECT_EQ(HubModels::Create(config, &metrics).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // Sticky (like /tmp): others cannot rename our entries; ours is fine.
  ASSERT_EQ(chmod(cache.c_str(), 01777), 0);
  EXPECT_TRUE(HubModels::Create(config, &metrics).ok());
  // Group-writable: a group the owner trusts (a team's shared cache).
  ASSERT_EQ(chmod(cache.c_str(), 0775), 0);
  config.hub_cache = cache;
  EXPECT_TRUE(HubModels::Create(config, &metrics).ok());
  if (geteuid() == 0) {  // another user's directory
    ASSERT_EQ(chmod(cache.c_str(), 0755), 0);
    ASSERT_EQ(chown(cache.c_str(), 65534, 65534), 0);
    EXPECT_EQ(HubModels::Create(config, &metrics).status().code(),
              absl::StatusCode::kFailedPrecondition);
  }
}

}  // namespace
}  // namespace bigsmall::daemon
