#include "daemon/config.h"

#include <cstdlib>
#include <functional>
#include <optional>

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

TEST(ConfigTest, FileModeIsStrictOctal) {
  EXPECT_EQ(*ParseFileMode("0660"), 0660u);
  EXPECT_EQ(*ParseFileMode("660"), 0660u);
  EXPECT_EQ(*ParseFileMode("0"), 0u);
  EXPECT_EQ(*ParseFileMode("0777"), 0777u);
  for (const char* bad : {"abc", "", "0999", "8", "0x1ff", "-0660", "+660", " 0660", "0660 ",
                          "01777", "00000", "066O", "1e3"}) {
    SCOPED_TRACE(bad);
    auto mode = ParseFileMode(bad);
    ASSERT_FALSE(mode.ok());
    EXPECT_EQ(mode.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(mode.status().message().find("octal"), std::string::npos) << mode.status();
  }
}

absl::Status ApplyJson(const char* text, DaemonConfig* c) {
  return ApplyConfigJson(nlohmann::json::parse(text), c, nullptr);
}

TEST(ConfigTest, BadSocketModeInJsonIsAnErrorNotZero) {
  DaemonConfig c;
  absl::Status st = ApplyJson(R"({"socket_mode": "abc"})", &c);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("socket_mode"), std::string::npos) << st;
  EXPECT_EQ(c.socket_mode, 0660u);  // untouched, not 0
  // JSON has no octal: a number is refused rather than read as decimal.
  st = ApplyJson(R"({"socket_mode": 660})", &c);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("octal string"), std::string::npos) << st;
  ASSERT_TRUE(ApplyJson(R"({"socket_mode": "0600"})", &c).ok());
  EXPECT_EQ(c.socket_mode, 0600u);
}

TEST(ConfigTest, NumbersAreStrict) {
  for (const char* bad : {R"({"prefetch": -1})", R"({"max_models": -1})", R"({"prefetch": 1.5})",
                          R"({"uring_depth": 99999999999})", R"({"decode_threads": 1e12})",
                          R"({"direct": 1})", R"({"drain_seconds": "ten"})",
                          R"({"cache_budget": -5})", R"({"read_chunk": "1Q"})"}) {
    SCOPED_TRACE(bad);
    DaemonConfig c;
    absl::Status st = ApplyJson(bad, &c);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("config key"), std::string::npos) << st;
  }
  DaemonConfig c;
  ASSERT_TRUE(ApplyJson(R"({"decode_threads": 3, "drain_seconds": 2, "direct": false})", &c).ok());
  EXPECT_EQ(c.decode_threads, 3);
  EXPECT_EQ(c.drain_seconds, 2.0);
  EXPECT_FALSE(c.direct);
}

TEST(ConfigTest, FinalizeRejectsUnknownNamesAndBadRanges) {
  struct Case {
    const char* json;
    const char* key;  // named in the message
  } cases[] = {
      {R"({"io": "mmap"})", "io"},
      {R"({"io": ""})", "io"},
      {R"({"decoder": "avx9000"})", "decoder"},
      {R"({"log_level": "loud"})", "log_level"},
      {R"({"default_window": 0})", "default_window"},
      {R"({"default_window": 100, "max_window": 8})", "default_window"},
      {R"({"max_window": 0})", "max_window"},
      {R"({"max_window": 1000000})", "max_window"},
      {R"({"max_window": 64, "max_total_window": 10})", "max_total_window"},
      {R"({"prefetch": 100000})", "prefetch"},
      {R"({"decode_threads": -2})", "decode_threads"},
      {R"({"load_threads": -1})", "load_threads"},
      {R"({"uring_depth": 0})", "uring_depth"},
      {R"({"read_chunk": 100})", "read_chunk"},
      {R"({"uring_depth": 4096, "read_chunk": "1G"})", "uring_depth x read_chunk"},
      {R"({"drain_seconds": -1})", "drain_seconds"},
      {R"({"session_idle_seconds": -1})", "session_idle_seconds"},
      {R"({"max_models": 0})", "max_models"},
      {R"({"open_threads": 0})", "open_threads"},
  };
  for (const Case& tc : cases) {
    SCOPED_TRACE(tc.json);
    DaemonConfig c;
    ASSERT_TRUE(ApplyJson(tc.json, &c).ok());
    absl::Status st = FinalizeConfig(&c);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find(tc.key), std::string::npos) << st;
  }
  for (const char* good : {R"({"io": "pread", "decoder": "scalar", "log_level": "warn"})",
                           R"({"io": "io_uring", "decoder": "avx512", "log_level": "off"})",
                           R"({"default_window": 8, "max_window": 8, "prefetch": 0})"}) {
    SCOPED_TRACE(good);
    DaemonConfig c;
    ASSERT_TRUE(ApplyJson(good, &c).ok());
    EXPECT_TRUE(FinalizeConfig(&c).ok()) << FinalizeConfig(&c);
  }
  EXPECT_EQ(*ParseDecoderImpl("avx2"), DecoderImpl::kAvx2);
  EXPECT_FALSE(ParseDecoderImpl("AVX2").ok());
}

TEST(ConfigTest, GpuAndPipelineKeys) {
  DaemonConfig c;
  EXPECT_EQ(c.gpu_backend, "auto");
  EXPECT_EQ(c.gpu_memory, 8ull << 30);
  EXPECT_EQ(c.gpu_arena_size, 1ull << 30);
  EXPECT_EQ(c.pipeline_depth, 3u);
  EXPECT_EQ(c.staging_bytes, 512ull << 20);
  auto json = nlohmann::json::parse(
      R"({"gpu_backend": "emulated", "gpu_memory": "2G", "gpu_arena_size": "64M",
          "pipeline_depth": 5, "staging_bytes": "128M", "fault_staging": "2"})");
  ASSERT_TRUE(ApplyConfigJson(json, &c, nullptr).ok());
  ASSERT_TRUE(FinalizeConfig(&c).ok());
  EXPECT_EQ(c.gpu_backend, "emulated");
  EXPECT_EQ(c.gpu_memory, 2ull << 30);
  EXPECT_EQ(c.gpu_arena_size, 64ull << 20);
  EXPECT_EQ(c.pipeline_depth, 5u);
  EXPECT_EQ(c.staging_bytes, 128ull << 20);
  EXPECT_EQ(*ParseFaultStaging(c.fault_staging), std::optional<int32_t>(2));
  EXPECT_EQ(ConfigToJson(c)["pipeline_depth"], 5);
  for (const char* name : {"auto", "cuda", "emulated", "none"}) EXPECT_TRUE(ParseGpuBackend(name).ok());
  EXPECT_EQ(ParseGpuBackend("metal").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(ParseFaultStaging("-2").ok());
  EXPECT_FALSE(ParseFaultStaging("x").ok());
  EXPECT_EQ(*ParseFaultStaging(""), std::nullopt);
  EXPECT_EQ(*ParseFaultStaging("-1"), std::optional<int32_t>(-1));
  struct Bad {
    std::function<void(DaemonConfig*)> set;
    const char* key;
  } bad[] = {
      {[](DaemonConfig* c) { c->gpu_backend = "metal"; }, "gpu_backend"},
      {[](DaemonConfig* c) { c->gpu_memory = 1 << 20; }, "gpu_memory"},
      {[](DaemonConfig* c) { c->gpu_arena_size = 12345; }, "gpu_arena_size"},
      {[](DaemonConfig* c) { c->gpu_arena_size = 128ull << 30; }, "gpu_arena_size"},
      {[](DaemonConfig* c) { c->pipeline_depth = 0; }, "pipeline_depth"},
      {[](DaemonConfig* c) { c->pipeline_depth = 65; }, "pipeline_depth"},
      {[](DaemonConfig* c) { c->staging_bytes = 4096; }, "staging_bytes"},
      {[](DaemonConfig* c) { c->fault_staging = "layer2"; }, "fault_staging"},
  };
  for (const Bad& b : bad) {
    DaemonConfig d;
    b.set(&d);
    absl::Status st = FinalizeConfig(&d);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << b.key;
    EXPECT_NE(st.message().find(b.key), std::string::npos) << st;
  }
}

TEST(ConfigTest, HubKeys) {
  DaemonConfig c;
  EXPECT_TRUE(c.hub);
  EXPECT_TRUE(c.hub_allow.empty());
  EXPECT_EQ(c.hub_concurrency, 2u);
  EXPECT_EQ(c.hub_max_bandwidth, 0u);
  EXPECT_EQ(c.hub_read_ahead, 8ull << 20);
  EXPECT_EQ(c.hub_max_model_bytes, 0u);
  EXPECT_EQ(c.hub_min_free_bytes, 1ull << 30);
  EXPECT_FALSE(c.hub_offline);
  auto json = nlohmann::json::parse(
      R"({"hub": false, "hub_allow": ["acme", "org/m-*", "*"], "hub_endpoint": "http://h:1",
          "hub_token_file": "/t", "hub_cache": "/c", "hub_max_bandwidth": "20M",
          "hub_concurrency": 4, "hub_read_ahead": "1M", "hub_offline": true,
          "hub_max_model_bytes": "500G", "hub_min_free_bytes": "10G"})");
  ASSERT_TRUE(ApplyConfigJson(json, &c, nullptr).ok());
  ASSERT_TRUE(FinalizeConfig(&c).ok());
  EXPECT_FALSE(c.hub);
  EXPECT_EQ(c.hub_allow, (std::vector<std::string>{"acme", "org/m-*", "*"}));
  EXPECT_EQ(c.hub_max_bandwidth, 20ull << 20);
  EXPECT_EQ(c.hub_concurrency, 4u);
  EXPECT_EQ(c.hub_read_ahead, 1ull << 20);
  EXPECT_EQ(c.hub_max_model_bytes, 500ull << 30);
  EXPECT_EQ(c.hub_min_free_bytes, 10ull << 30);
  EXPECT_TRUE(c.hub_offline);
  EXPECT_EQ(ConfigToJson(c)["hub_endpoint"], "http://h:1");
  EXPECT_EQ(ConfigToJson(c)["hub_read_ahead"], 1ull << 20);
  for (const char* good : {"*", "acme", "acme/*", "acme/tiny-bs", "a.b_c/m-?.x"}) {
    EXPECT_TRUE(ValidHubPattern(good)) << good;
  }
  for (const char* bad : {"", "/", "a/", "/b", "a/b/c", "a b", "a/$x", "a\n"}) {
    EXPECT_FALSE(ValidHubPattern(bad)) << bad;
  }
  struct Bad {
    std::function<void(DaemonConfig*)> set;
    const char* key;
  } bad[] = {
      {[](DaemonConfig* c) { c->hub_allow = {"a/b/c"}; }, "hub_allow"},
      {[](DaemonConfig* c) { c->hub_endpoint = "hub.example"; }, "hub_endpoint"},
      {[](DaemonConfig* c) { c->hub_concurrency = 65; }, "hub_concurrency"},
  };
  for (const Bad& b : bad) {
    DaemonConfig d;
    b.set(&d);
    absl::Status st = FinalizeConfig(&d);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << b.key;
    EXPECT_NE(st.message().find(b.key), std::string::npos) << st;
  }
}

}  // namespace
}  // namespace bigsmall::daemon
