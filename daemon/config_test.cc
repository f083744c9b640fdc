#include "daemon/config.h"

#include <cstdlib>

#include "gtest/gtest.h"

namespace bigsmall::daemon {
namespace {

TEST(ConfigTest, ParsesByteSizes) {
  EXPECT_EQ(*ParseByteSize("4096"), 4096u);
  EXPECT_EQ(*ParseByteSize("8G"), 8ull << 30);
  EXPECT_EQ(*ParseByteSize("512MiB"), 512ull << 20);
  EXPECT_EQ(*ParseByteSize("1.5k"), 1536u);
  EXPECT_FALSE(ParseByteSize("").ok());
  EXPECT_FALSE(ParseByteSize("12Q").ok());
  EXPECT_FALSE(ParseByteSize("-1").ok());
}

TEST(ConfigTest, JsonAppliesKeysAndFlagsWin) {
  DaemonConfig c;
  c.prefetch = 7;
  auto json = nlohmann::json::parse(
      R"({"socket": "/tmp/x.sock", "cache_budget": "1G", "prefetch": 3, "socket_mode": "0600"})");
  ASSERT_TRUE(ApplyConfigJson(json, &c, [](const std::string& k) { return k == "prefetch"; }).ok());
  EXPECT_EQ(c.socket, "/tmp/x.sock");
  EXPECT_EQ(c.cache_budget, 1ull << 30);
  EXPECT_EQ(c.prefetch, 7u);  // set on the command line
  EXPECT_EQ(c.socket_mode, 0600u);
}

TEST(ConfigTest, UnknownKeysAndBadTypesAreErrors) {
  DaemonConfig c;
  auto st = ApplyConfigJson(nlohmann::json::parse(R"({"sokcet": "x"})"), &c, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("sokcet"), std::string::npos);
  st = ApplyConfigJson(nlohmann::json::parse(R"({"prefetch": "many"})"), &c, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
}

TEST(ConfigTest, SocketDefaultsFromEnvironment) {
  setenv("BIGSMALL_SOCKET", "/tmp/env.sock", 1);
  EXPECT_EQ(DefaultSocketPath(), "/tmp/env.sock");
  unsetenv("BIGSMALL_SOCKET");
  EXPECT_EQ(DefaultSocketPath(), kDefaultSocket);
  DaemonConfig c;
  ASSERT_TRUE(FinalizeConfig(&c).ok());
  EXPECT_EQ(c.socket, kDefaultSocket);
  EXPECT_GT(c.cache_budget, 0u);
  EXPECT_EQ(c.load_threads, static_cast<int>(c.prefetch) + 2);
}

}  // namespace
}  // namespace bigsmall::daemon
