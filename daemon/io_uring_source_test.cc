#include "daemon/io_uring_source.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <random>
#include <string>

#include "gtest/gtest.h"

namespace bigsmall::daemon {
namespace {

class IoUringSourceTest : public ::testing::TestWithParam<IoBackend> {
 protected:
  void SetUp() override {
    // Under the build tree (a real filesystem, so O_DIRECT is exercised).
    char tmpl[] = "io_source_testXXXXXX";
    int fd = mkstemp(tmpl);
    ASSERT_GE(fd, 0);
    path_ = tmpl;
    data_.resize(3 * 1024 * 1024 + 123);
    std::mt19937 rng(7);
    for (auto& b : data_) b = static_cast<uint8_t>(rng());
    ASSERT_EQ(write(fd, data_.data(), data_.size()), static_cast<ssize_t>(data_.size()));
    close(fd);
  }
  void TearDown() override { unlink(path_.c_str()); }
  std::string path_;
  std::vector<uint8_t> data_;
};

TEST_P(IoUringSourceTest, ReadsEveryRangeExactly) {
  if (GetParam() == IoBackend::kIoUring && !IoUringAvailable()) GTEST_SKIP() << "no io_uring";
  IoOptions options;
  options.backend = GetParam();
  options.chunk_bytes = 256 * 1024;
  options.queue_depth = 4;
  auto src = IoUringSource::Open(path_, options);
  ASSERT_TRUE(src.ok()) << src.status();
  EXPECT_EQ((*src)->backend(), GetParam());
  EXPECT_EQ((*src)->size(), data_.size());
  // Aligned buffer and offset (O_DIRECT path), unaligned, and tails.
  struct Case {
    uint64_t offset, size;
  } cases[] = {{0, data_.size()}, {4096, 1 << 20}, {4096, (1 << 20) + 77}, {13, 999999},
               {data_.size() - 5, 5}};
  for (const Case& c : cases) {
    AlignedBuffer buf(c.size);
    ASSERT_TRUE((*src)->ReadAt(c.offset, {buf.data(), buf.size()}).ok());
    EXPECT_EQ(0, memcmp(buf.data(), data_.data() + c.offset, c.size)) << c.offset;
  }
  std::vector<uint8_t> past(10);
  EXPECT_EQ((*src)->ReadAt(data_.size() - 5, absl::MakeSpan(past)).code(),
            absl::StatusCode::kOutOfRange);
}

TEST_P(IoUringSourceTest, ShortReadsAreContinued) {
  if (GetParam() == IoBackend::kIoUring && !IoUringAvailable()) GTEST_SKIP() << "no io_uring";
  IoOptions options;
  options.backend = GetParam();
  options.direct = false;
  options.max_read_bytes = 1000;  // every kernel read returns at most this
  auto src = IoUringSource::Open(path_, options);
  ASSERT_TRUE(src.ok());
  std::vector<uint8_t> out(300000);
  ASSERT_TRUE((*src)->ReadAt(17, absl::MakeSpan(out)).ok());
  EXPECT_EQ(0, memcmp(out.data(), data_.data() + 17, out.size()));
}

TEST_P(IoUringSourceTest, FileTruncatedAfterOpenIsDataLoss) {
  if (GetParam() == IoBackend::kIoUring && !IoUringAvailable()) GTEST_SKIP() << "no io_uring";
  IoOptions options;
  options.backend = GetParam();
  auto src = IoUringSource::Open(path_, options);
  ASSERT_TRUE(src.ok());
  ASSERT_EQ(truncate(path_.c_str(), 1000), 0);
  std::vector<uint8_t> out(5000);
  EXPECT_EQ((*src)->ReadAt(0, absl::MakeSpan(out)).code(), absl::StatusCode::kDataLoss);
}

INSTANTIATE_TEST_SUITE_P(Backends, IoUringSourceTest,
                         ::testing::Values(IoBackend::kIoUring, IoBackend::kPread),
                         [](const auto& info) { return std::string(IoBackendName(info.param)) == "io_uring" ? "IoUring" : "Pread"; });

TEST(IoUringSourceOpenTest, MissingFileIsNotFound) {
  auto src = IoUringSource::Open("/nonexistent/file.bs", {});
  EXPECT_EQ(src.status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(ParseIoBackend("mmap").ok());
  EXPECT_EQ(*ParseIoBackend("pread"), IoBackend::kPread);
}

}  // namespace
}  // namespace bigsmall::daemon
