#include "daemon/io_uring_source.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
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

std::string TempPath(const char* stem) {
  return absl::StrCat(::testing::TempDir(), "/", stem, "_", getpid());
}

TEST(IoUringSourceOpenFdTest, FifoAndDirectoryFailWithoutBlocking) {
  std::string fifo = TempPath("io_source_fifo");
  unlink(fifo.c_str());
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  // Open(path) on a FIFO with no writer must not block (O_NONBLOCK).
  auto by_path = IoUringSource::Open(fifo, {});
  EXPECT_EQ(by_path.status().code(), absl::StatusCode::kInvalidArgument) << by_path.status();
  int fd = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  auto by_fd = IoUringSource::OpenFd(fd, fifo, {});
  EXPECT_EQ(by_fd.status().code(), absl::StatusCode::kInvalidArgument) << by_fd.status();
  // OpenFd closed it.
  EXPECT_EQ(fcntl(fd, F_GETFD), -1);
  unlink(fifo.c_str());

  int dir = ::open(::testing::TempDir().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(dir, 0);
  auto by_dir = IoUringSource::OpenFd(dir, "tmpdir", {});
  EXPECT_EQ(by_dir.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(fcntl(dir, F_GETFD), -1);
  EXPECT_EQ(IoUringSource::Open(::testing::TempDir(), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(IoUringSource::OpenFd(-1, "bad", {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

class IoUringSourceOpenFdFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // In the working directory (the build tree: a real filesystem, so the
    // O_DIRECT reopen is exercised where the filesystem allows it).
    path_ = absl::StrCat("io_source_openfd_", getpid());
    data_.resize(2 * 1024 * 1024 + 4096 + 17);
    std::mt19937 rng(11);
    for (auto& b : data_) b = static_cast<uint8_t>(rng());
    Write(path_, data_);
  }
  void TearDown() override {
    unlink(path_.c_str());
    unlink((path_ + ".moved").c_str());
  }
  static void Write(const std::string& path, const std::vector<uint8_t>& data) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
    close(fd);
  }
  std::string path_;
  std::vector<uint8_t> data_;
};

TEST_F(IoUringSourceOpenFdFileTest, ReadsTheSameBytesAsOpen) {
  for (IoBackend backend : {IoBackend::kAuto, IoBackend::kPread}) {
    IoOptions options;
    options.backend = backend;
    auto by_path = IoUringSource::Open(path_, options);
    ASSERT_TRUE(by_path.ok()) << by_path.status();
    int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    auto by_fd = IoUringSource::OpenFd(fd, "model.bs", options);
    ASSERT_TRUE(by_fd.ok()) << by_fd.status();
    EXPECT_EQ((*by_fd)->name(), "model.bs");
    EXPECT_EQ((*by_fd)->size(), data_.size());
    EXPECT_EQ((*by_fd)->direct(), (*by_path)->direct());
    AlignedBuffer a(data_.size()), b(data_.size());
    ASSERT_TRUE((*by_path)->ReadAt(0, {a.data(), a.size()}).ok());
    ASSERT_TRUE((*by_fd)->ReadAt(0, {b.data(), b.size()}).ok());
    EXPECT_EQ(0, memcmp(a.data(), b.data(), data_.size()));
    EXPECT_EQ(0, memcmp(b.data(), data_.data(), data_.size()));
  }
}

TEST_F(IoUringSourceOpenFdFileTest, DirectDescriptorIsTheSameInodeAfterReplace) {
  // The descriptor is opened, then the path is renamed away and a different
  // file put in its place, then OpenFd runs: the O_DIRECT descriptor must
  // come from the open file (not from the path, which now names another).
  int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(rename(path_.c_str(), (path_ + ".moved").c_str()), 0);
  std::vector<uint8_t> other(data_.size(), 0xAB);
  Write(path_, other);
  IoOptions options;
  options.backend = IoBackend::kPread;
  auto src = IoUringSource::OpenFd(fd, path_, options);
  ASSERT_TRUE(src.ok()) << src.status();
  // Aligned offset and buffer: the first 2 MiB + 4 KiB go by the direct fd.
  AlignedBuffer buf(data_.size());
  ASSERT_TRUE((*src)->ReadAt(0, {buf.data(), buf.size()}).ok());
  EXPECT_EQ(0, memcmp(buf.data(), data_.data(), data_.size()));
  if (!(*src)->direct()) {
    GTEST_SKIP() << "this filesystem refuses O_DIRECT (or /proc is absent): the buffered "
                    "read above was checked, the direct descriptor could not be";
  }
}

}  // namespace
}  // namespace bigsmall::daemon
