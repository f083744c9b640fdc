// The real bigsmalld binary with bad flags and bad config values: each one
// exits 2 with a message naming what is wrong (no crash, no daemon started).
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"

namespace {

struct Result {
  int exit_code = -1;  // -1: killed by a signal or by the time limit
  std::string output;  // stdout and stderr
};

std::string Quote(const std::string& arg) {
  std::string out = "'";
  for (char c : arg) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

// Runs bigsmalld with `args` (and a socket and shm dir of its own, so that
// a value wrongly accepted cannot touch anything real), 20 s at most.
Result RunDaemon(std::vector<std::string> args) {
  static const std::string dir = [] {
    std::string tmpl = ::testing::TempDir() + "/bigsmalld_flags_XXXXXX";
    return std::string(mkdtemp(tmpl.data()));
  }();
  std::vector<std::string> cmd = {"timeout", "-s", "KILL", "20", BIGSMALLD_PATH, "--socket",
                                  dir + "/d.sock", "--shm-dir", dir + "/shm"};
  cmd.insert(cmd.end(), args.begin(), args.end());
  std::vector<std::string> quoted;
  for (const std::string& a : cmd) quoted.push_back(Quote(a));
  std::string line = absl::StrJoin(quoted, " ") + " 2>&1 </dev/null";
  Result r;
  FILE* p = popen(line.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.output.append(buf, n);
  int status = pclose(p);
  if (WIFEXITED(status) && WEXITSTATUS(status) != 137 && WEXITSTATUS(status) != 124) {
    r.exit_code = WEXITSTATUS(status);
  }
  return r;
}

std::string WriteConfig(const std::string& name, const std::string& json) {
  std::string path = absl::StrCat(::testing::TempDir(), "/", name, "_", getpid(), ".json");
  std::ofstream(path) << json;
  return path;
}

TEST(BigsmalldFlagsTest, BadFlagValuesExitTwoWithAMessage) {
  struct Case {
    std::vector<std::string> args;
    const char* expect;  // in the message
  } cases[] = {
      {{"--socket-mode", "abc"}, "socket-mode"},
      {{"--socket-mode", "0999"}, "octal"},
      {{"--socket-mode", "-1"}, "octal"},
      {{"--io", "mmap"}, "io"},
      {{"--decoder", "avx9000"}, "decoder"},
      {{"--log-level", "loud"}, "log_level"},
      {{"--window", "0"}, "window"},
      {{"--window", "100", "--max-window", "8"}, "window"},
      {{"--prefetch", "abc"}, "prefetch"},
      {{"--prefetch", "-1"}, "prefetch"},
      {{"--uring-depth", "0"}, "uring_depth"},
      {{"--cache-budget", "lots"}, "cache-budget"},
      {{"--read-chunk", "1Q"}, "read-chunk"},
      {{"--drain-seconds", "-3"}, "drain_seconds"},
      {{"--arena-size", "12345"}, "arena_size"},
      {{"--arena-size", "100G"}, "arena_size"},
      {{"--arena-size", "big"}, "arena-size"},
      {{"--admission-timeout-seconds", "0"}, "admission_timeout_seconds"},
      {{"--gpu-backend", "metal"}, "gpu_backend"},
      {{"--gpu-memory", "lots"}, "gpu-memory"},
      {{"--gpu-memory", "1M"}, "gpu_memory"},
      {{"--gpu-arena-size", "12345"}, "gpu_arena_size"},
      {{"--gpu-arena-size", "big"}, "gpu-arena-size"},
      {{"--pipeline-depth", "0"}, "pipeline_depth"},
      {{"--pipeline-depth", "1000"}, "pipeline_depth"},
      {{"--pipeline-depth", "two"}, "pipeline-depth"},
      {{"--staging-bytes", "1K"}, "staging_bytes"},
      {{"--staging-bytes", "x"}, "staging-bytes"},
      {{"--fault-staging", "abc"}, "fault_staging"},
      {{"--hub-allow", "a/b/c"}, "hub_allow"},
      {{"--hub-allow", "acme/$(x)"}, "hub_allow"},
      {{"--hub-concurrency", "100"}, "hub_concurrency"},
      {{"--hub-max-bandwidth", "fast"}, "hub-max-bandwidth"},
      {{"--hub-endpoint", "ftp://hub"}, "hub_endpoint"},
      {{"--hub-token-file", "/nonexistent/token"}, "hub_token_file"},
      {{"--no-such-flag"}, "no-such-flag"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrJoin(c.args, " "));
    Result r = RunDaemon(c.args);
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("terminate"), std::string::npos) << r.output;
  }
}

TEST(BigsmalldFlagsTest, BadConfigValuesExitTwoWithAMessage) {
  struct Case {
    const char* json;
    const char* expect;
  } cases[] = {
      {R"({"socket_mode": "abc"})", "socket_mode"},
      {R"({"socket_mode": 660})", "socket_mode"},
      {R"({"io": "mmap"})", "io"},
      {R"({"decoder": "fast"})", "decoder"},
      {R"({"log_level": "chatty"})", "log_level"},
      {R"({"prefetch": -1})", "prefetch"},
      {R"({"max_window": 0})", "max_window"},
      {R"({"sokcet": "/x"})", "sokcet"},
      {R"({"arena_size": "3K"})", "arena_size"},
      {R"({"admission_timeout_seconds": -1})", "admission_timeout_seconds"},
      {R"({"gpu_backend": "metal"})", "gpu_backend"},
      {R"({"gpu_memory": -1})", "gpu_memory"},
      {R"({"pipeline_depth": 0})", "pipeline_depth"},
      {R"({"staging_bytes": "10"})", "staging_bytes"},
      {R"({"hub_allow": "acme"})", "hub_allow"},
      {R"({"hub_allow": ["a/b/c"]})", "hub_allow"},
      {R"({"hub": "yes"})", "hub"},
      {R"({"hub_max_bandwidth": "x"})", "hub_max_bandwidth"},
      {R"({"io": )", "not valid JSON"},
  };
  int i = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.json);
    std::string path = WriteConfig(absl::StrCat("bad", i++), c.json);
    Result r = RunDaemon({"--config", path});
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << r.output;
    unlink(path.c_str());
  }
  Result missing = RunDaemon({"--config", "/nonexistent/bigsmalld.json"});
  EXPECT_EQ(missing.exit_code, 2) << missing.output;
}

TEST(BigsmalldFlagsTest, GoodValuesAreAccepted) {
  Result r = RunDaemon({"--socket-mode", "0600", "--io", "pread", "--decoder", "scalar", "--log-level",
                  "warn", "--print-config"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\"socket_mode\": \"0600\""), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"io\": \"pread\""), std::string::npos) << r.output;
  std::string path = WriteConfig(
      "good", R"({"socket_mode": "0640", "decoder": "reference", "arena_size": "64M",
                  "admission_timeout_seconds": 2.5})");
  r = RunDaemon({"--config", path, "--print-config"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\"socket_mode\": \"0640\""), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"arena_size\": 67108864"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"admission_timeout_seconds\": 2.5"), std::string::npos) << r.output;
  r = RunDaemon({"--gpu-backend", "emulated", "--gpu-memory", "2G", "--gpu-arena-size", "64M",
                 "--pipeline-depth", "5", "--staging-bytes", "64M", "--print-config"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\"gpu_backend\": \"emulated\""), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"gpu_memory\": 2147483648"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"gpu_arena_size\": 67108864"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"pipeline_depth\": 5"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"staging_bytes\": 67108864"), std::string::npos) << r.output;
  r = RunDaemon({"--hub-allow", "acme", "--hub-allow", "org/model-*", "--hub-max-bandwidth",
                 "10M", "--hub-concurrency", "0", "--hub-offline", "--print-config"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\"hub_max_bandwidth\": 10485760"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"hub_offline\": true"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"org/model-*\""), std::string::npos) << r.output;
  r = RunDaemon({"--no-hub", "--print-config"});
  EXPECT_NE(r.output.find("\"hub\": false"), std::string::npos) << r.output;
  r = RunDaemon({"--arena-size", "32M", "--print-config"});
  EXPECT_NE(r.output.find("\"arena_size\": 33554432"), std::string::npos) << r.output;
  unlink(path.c_str());
  EXPECT_EQ(RunDaemon({"--help"}).exit_code, 0);
  // The shipped example config stays valid.
  r = RunDaemon({"--config", BIGSMALL_SOURCE_DIR "/deploy/bigsmalld.example.json", "--print-config"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

}  // namespace
