#include "hub/hub_config.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace bigsmall::hub {
namespace {

// Every variable HubConfigFromEnvironment reads; the fixture clears them
// and puts them back afterwards.
constexpr const char* kVars[] = {
    "HF_ENDPOINT",   "HF_TOKEN",        "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH",
    "HF_HOME",       "XDG_CACHE_HOME",  "HF_HUB_CACHE",           "HUGGINGFACE_HUB_CACHE",
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HOME", "BIGSMALL_TEST_VAR"};

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

class HubConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v : kVars) {
      const char* value = getenv(v);
      if (value != nullptr) saved_[v] = value;
      unsetenv(v);
    }
    char tmpl[] = "/tmp/bigsmall-config-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    setenv("HOME", dir_.c_str(), 1);
  }
  void TearDown() override {
    for (const char* v : kVars) unsetenv(v);
    for (const auto& [k, v] : saved_) setenv(k.c_str(), v.c_str(), 1);
    (void)std::system(("rm -rf '" + dir_ + "'").c_str());
  }
  HubConfig Load() {
    absl::StatusOr<HubConfig> c = HubConfigFromEnvironment();
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : HubConfig();
  }

  std::string dir_;
  std::map<std::string, std::string> saved_;
};

TEST_F(HubConfigTest, Defaults) {
  HubConfig c = Load();
  EXPECT_EQ(c.endpoint, "https://huggingface.co");
  EXPECT_TRUE(c.token.empty());
  EXPECT_FALSE(c.offline);
  EXPECT_EQ(c.cache_dir, dir_ + "/.cache/huggingface/hub");
}

TEST_F(HubConfigTest, Endpoint) {
  setenv("HF_ENDPOINT", "http://127.0.0.1:8080//", 1);
  EXPECT_EQ(Load().endpoint, "http://127.0.0.1:8080");
  setenv("HF_ENDPOINT", "https://hub.example.com/mirror", 1);
  EXPECT_EQ(Load().endpoint, "https://hub.example.com/mirror");
  for (const char* bad : {"ftp://example.com", "huggingface.co", "http://", "https:///x",
                          "http://user:pw@host", "http://ho st", "http://host?x=1"}) {
    setenv("HF_ENDPOINT", bad, 1);
    absl::StatusOr<HubConfig> c = HubConfigFromEnvironment();
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    if (!c.ok()) EXPECT_TRUE(absl::StrContains(c.status().message(), "HF_ENDPOINT")) << c.status();
  }
  setenv("HF_ENDPOINT", "", 1);  // empty: unset
  EXPECT_EQ(Load().endpoint, "https://huggingface.co");
}

TEST_F(HubConfigTest, TokenPrecedence) {
  const std::string file = dir_ + "/token-file";
  WriteFile(file, "  hf_from_file \r\n");
  setenv("HF_TOKEN_PATH", file.c_str(), 1);
  EXPECT_EQ(Load().token.Reveal(), "hf_from_file");
  setenv("HUGGING_FACE_HUB_TOKEN", "hf_legacy", 1);
  EXPECT_EQ(Load().token.Reveal(), "hf_legacy");
  setenv("HF_TOKEN", "\thf_env\n", 1);
  EXPECT_EQ(Load().token.Reveal(), "hf_env");
  // Empty (or blank) values fall through, as `get(...) or ...` and
  // _clean_token make them.
  setenv("HF_TOKEN", "", 1);
  EXPECT_EQ(Load().token.Reveal(), "hf_legacy");
  unsetenv("HUGGING_FACE_HUB_TOKEN");
  setenv("HF_TOKEN", " \n ", 1);
  EXPECT_EQ(Load().token.Reveal(), "hf_from_file");
}

TEST_F(HubConfigTest, TokenFileUnderHfHome) {
  const std::string home = dir_ + "/hfhome";
  ASSERT_EQ(mkdir(home.c_str(), 0700), 0);
  setenv("HF_HOME", home.c_str(), 1);
  EXPECT_TRUE(Load().token.empty());  // no file: anonymous, no error
  WriteFile(home + "/token", "hf_home_token\n");
  HubConfig c = Load();
  EXPECT_EQ(c.token.Reveal(), "hf_home_token");
  EXPECT_EQ(c.cache_dir, home + "/hub");
  // Without HF_HOME: ~/.cache/huggingface/token.
  unsetenv("HF_HOME");
  ASSERT_EQ(mkdir((dir_ + "/.cache").c_str(), 0700), 0);
  ASSERT_EQ(mkdir((dir_ + "/.cache/huggingface").c_str(), 0700), 0);
  WriteFile(dir_ + "/.cache/huggingface/token", "hf_default_place");
  EXPECT_EQ(Load().token.Reveal(), "hf_default_place");
}

TEST_F(HubConfigTest, UnreadableTokenFileIsAnError) {
  setenv("HF_TOKEN_PATH", dir_.c_str(), 1);  // a directory
  absl::StatusOr<HubConfig> c = HubConfigFromEnvironment();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << c.status();
  // Not a token: too big.
  const std::string big = dir_ + "/big-token";
  WriteFile(big, std::string(1 << 20, 'x'));
  setenv("HF_TOKEN_PATH", big.c_str(), 1);
  c = HubConfigFromEnvironment();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << c.status();
  EXPECT_FALSE(absl::StrContains(c.status().message(), "xxxxxxxx"));
  // Missing (also under a missing directory): anonymous.
  setenv("HF_TOKEN_PATH", (dir_ + "/none/token").c_str(), 1);
  EXPECT_TRUE(Load().token.empty());
}

TEST_F(HubConfigTest, CacheDirectory) {
  setenv("XDG_CACHE_HOME", (dir_ + "/xdg").c_str(), 1);
  EXPECT_EQ(Load().cache_dir, dir_ + "/xdg/huggingface/hub");
  setenv("HF_HOME", "~/hf", 1);
  EXPECT_EQ(Load().cache_dir, dir_ + "/hf/hub");
  setenv("HUGGINGFACE_HUB_CACHE", "/legacy/cache", 1);
  EXPECT_EQ(Load().cache_dir, "/legacy/cache");
  setenv("BIGSMALL_TEST_VAR", "/from/var", 1);
  setenv("HF_HUB_CACHE", "${BIGSMALL_TEST_VAR}/hub:$BIGSMALL_TEST_VAR:$UNSET_VAR_X", 1);
  EXPECT_EQ(Load().cache_dir, "/from/var/hub:/from/var:$UNSET_VAR_X");
}

TEST_F(HubConfigTest, Offline) {
  for (const char* yes : {"1", "true", "TRUE", "yes", "On"}) {
    setenv("HF_HUB_OFFLINE", yes, 1);
    EXPECT_TRUE(Load().offline) << yes;
  }
  for (const char* no : {"0", "false", "no", "off", "2", " 1", "auto"}) {
    setenv("HF_HUB_OFFLINE", no, 1);
    EXPECT_FALSE(Load().offline) << no;
  }
  // TRANSFORMERS_OFFLINE counts when HF_HUB_OFFLINE is unset (or empty).
  setenv("HF_HUB_OFFLINE", "", 1);
  setenv("TRANSFORMERS_OFFLINE", "1", 1);
  EXPECT_TRUE(Load().offline);
  setenv("HF_HUB_OFFLINE", "0", 1);
  EXPECT_FALSE(Load().offline);
}

// The same environment read by huggingface_hub itself: the same answers.
TEST_F(HubConfigTest, AgreesWithHuggingfaceHub) {
  if (std::system("python3 -c 'import huggingface_hub' >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "huggingface_hub is not importable by python3 here";
  }
  const std::string script = dir_ + "/probe.py";
  WriteFile(script,
            "from huggingface_hub import constants\n"
            "from huggingface_hub.utils import get_token\n"
            "print(constants.ENDPOINT)\n"
            "print(constants.HF_HUB_CACHE)\n"
            "print(constants.HF_HUB_OFFLINE)\n"
            "print(get_token())\n");
  struct Case {
    std::vector<std::pair<std::string, std::string>> env;
  };
  const std::string home = dir_ + "/home2";
  ASSERT_EQ(mkdir(home.c_str(), 0700), 0);
  WriteFile(home + "/token", " hf_case_file\n");
  WriteFile(dir_ + "/tp", "hf_token_path\r\n");
  const std::vector<Case> cases = {
      {{}},
      {{{"HF_HOME", home}, {"HF_HUB_OFFLINE", "yes"}, {"HF_ENDPOINT", "http://localhost:9/"}}},
      {{{"HF_HOME", home}, {"HF_TOKEN_PATH", dir_ + "/tp"}, {"TRANSFORMERS_OFFLINE", "1"},
        {"HUGGINGFACE_HUB_CACHE", dir_ + "/legacy"}}},
      {{{"HF_HOME", home}, {"HF_TOKEN", ""}, {"HUGGING_FACE_HUB_TOKEN", " hf_legacy "},
        {"XDG_CACHE_HOME", dir_ + "/xdg"}, {"HF_HUB_CACHE", "~/c"}}},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    for (const char* v : kVars) {
      if (std::string(v) != "HOME") unsetenv(v);
    }
    for (const auto& [k, v] : cases[i].env) setenv(k.c_str(), v.c_str(), 1);
    const std::string out = dir_ + "/out" + std::to_string(i);
    ASSERT_EQ(std::system(("python3 '" + script + "' > '" + out + "' 2>/dev/null").c_str()), 0);
    std::ifstream in(out);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    ASSERT_EQ(lines.size(), 4u) << "case " << i;
    HubConfig c = Load();
    EXPECT_EQ(c.endpoint, lines[0]) << "case " << i;
    EXPECT_EQ(c.cache_dir, lines[1]) << "case " << i;
    EXPECT_EQ(c.offline ? "True" : "False", lines[2]) << "case " << i;
    EXPECT_EQ(c.token.empty() ? std::string("None") : std::string(c.token.Reveal()), lines[3])
        << "case " << i;
  }
}

}  // namespace
}  // namespace bigsmall::hub
