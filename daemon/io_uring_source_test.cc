#include "daemon/io_uring_source.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
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
  if (GetParam() == IoBackend::kIoUring && !IoUringAvailable()) {
    GTEST_SKIP() << "io_uring refused in this process: " << IoUringStatus();
  }
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

TEST_P(IoUringSourceTest, ReadBulkIsBitExactAroundTheSplit) {
  if (GetParam() == IoBackend::kIoUring && !IoUringAvailable()) {
    GTEST_SKIP() << "io_uring refused in this process: " << IoUringStatus();
  }
  IoOptions options;
  options.backend = GetParam();
  options.split_bytes = 64 * 1024;
  options.queue_depth = 4;
  auto src = IoUringSource::Open(path_, options);
  ASSERT_TRUE(src.ok()) << src.status();
  const uint64_t split = options.split_bytes;
  const uint64_t sizes[] = {1, 4095, 4096, split - 1, split, split + 1, 2 * split + 4096,
                            4 * split + 17, 9 * split + 4095};
  const uint64_t offsets[] = {0, 4096, 13, split - 1};
  for (uint64_t size : sizes) {
    for (uint64_t offset : offsets) {
      // An aligned buffer (the O_DIRECT part) and a misaligned one, with
      // guard bytes either side that must stay untouched.
      for (size_t shift : {size_t{0}, size_t{1}}) {
        SCOPED_TRACE(absl::StrCat("size ", size, " offset ", offset, " shift ", shift));
        constexpr size_t kGuard = 4096;
        AlignedBuffer buf(kGuard + size + kGuard + 1);
        memset(buf.data(), 0xC3, buf.size());
        uint8_t* dst = buf.data() + kGuard + shift;
        ASSERT_TRUE((*src)->ReadBulk(offset, {dst, size}).ok());
        EXPECT_EQ(0, memcmp(dst, data_.data() + offset, size));
        EXPECT_TRUE(std::all_of(buf.data(), dst, [](uint8_t b) { return b == 0xC3; }));
        EXPECT_TRUE(std::all_of(dst + size, buf.data() + buf.size(),
                                [](uint8_t b) { return b == 0xC3; }));
        EXPECT_EQ((*src)->bulk_in_flight(), 0u);
      }
    }
  }
  if (GetParam() == IoBackend::kIoUring) {
    EXPECT_GT((*src)->bulk_reads(), 0u) << "ReadBulk did not read through io_uring";
  } else {
    EXPECT_EQ((*src)->bulk_reads(), 0u);
  }
  std::vector<uint8_t> past(10);
  EXPECT_EQ((*src)->ReadBulk(data_.size() - 5, absl::MakeSpan(past)).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_TRUE((*src)->ReadBulk(data_.size(), {past.data(), 0}).ok());
}

TEST_P(IoUringSourceTest, ShortReadsAreContinued) {
  if (GetParam() == IoBackend::kIoUring && !IoUringAvailable()) {
    GTEST_SKIP() << "io_uring refused in this process: " << IoUringStatus();
  }
  IoOptions options;
  options.backend = GetParam();
  options.direct = false;
  options.max_read_bytes = 1000;  // every kernel read returns at most this
  auto src = IoUringSource::Open(path_, options);
  ASSERT_TRUE(src.ok());
  std::vector<uint8_t> out(300000);
  ASSERT_TRUE((*src)->ReadAt(17, absl::MakeSpan(out)).ok());
  EXPECT_EQ(0, memcmp(out.data(), data_.data() + 17, out.size()));
  std::vector<uint8_t> bulk(300000);
  ASSERT_TRUE((*src)->ReadBulk(17, absl::MakeSpan(bulk)).ok());
  EXPECT_EQ(0, memcmp(bulk.data(), data_.data() + 17, bulk.size()));
}

TEST_P(IoUringSourceTest, FileTruncatedAfterOpenIsDataLoss) {
  if (GetParam() == IoBackend::kIoUring && !IoUringAvailable()) {
    GTEST_SKIP() << "io_uring refused in this process: " << IoUringStatus();
  }
  IoOptions options;
  options.backend = GetParam();
  auto src = IoUringSource::Open(path_, options);
  ASSERT_TRUE(src.ok());
  ASSERT_EQ(truncate(path_.c_str(), 1000), 0);
  std::vector<uint8_t> out(5000);
  EXPECT_EQ((*src)->ReadAt(0, absl::MakeSpan(out)).code(), absl::StatusCode::kDataLoss);
  // The same error from ReadBulk, end of file inside its range.
  EXPECT_EQ((*src)->ReadBulk(0, absl::MakeSpan(out)).code(), absl::StatusCode::kDataLoss);
}

TEST_P(IoUringSourceTest, ReadBulkEndOfFileInALaterPieceIsDataLossAndReapsAll) {
  if (GetParam() == IoBackend::kIoUring && !IoUringAvailable()) {
    GTEST_SKIP() << "io_uring refused in this process: " << IoUringStatus();
  }
  IoOptions options;
  options.backend = GetParam();
  options.split_bytes = 64 * 1024;
  options.queue_depth = 8;
  auto src = IoUringSource::Open(path_, options);
  ASSERT_TRUE(src.ok());
  ASSERT_EQ(truncate(path_.c_str(), 200000), 0);  // inside the 4th piece
  for (uint64_t offset : {uint64_t{0}, uint64_t{77}}) {
    std::vector<uint8_t> out(1 << 20);
    absl::Status st = (*src)->ReadBulk(offset, absl::MakeSpan(out));
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
    EXPECT_NE(st.message().find("truncated"), std::string::npos) << st;
    EXPECT_EQ((*src)->bulk_in_flight(), 0u);
  }
  // The ring(s) are still usable: what is left reads exactly.
  std::vector<uint8_t> head(150000);
  ASSERT_TRUE((*src)->ReadBulk(5, absl::MakeSpan(head)).ok());
  EXPECT_EQ(0, memcmp(head.data(), data_.data() + 5, head.size()));
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

// Runs src.ReadAt on another thread and fails the test (ending the process:
// the read still owns `out`) if it does not return within `limit`.
absl::Status ReadWithin(IoUringSource& src, uint64_t offset, absl::Span<uint8_t> out,
                        std::chrono::seconds limit = std::chrono::seconds(20),
                        bool bulk = false) {
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    absl::Status status;
  };
  auto shared = std::make_shared<Shared>();
  std::thread t([shared, &src, offset, out, bulk] {
    absl::Status st = bulk ? src.ReadBulk(offset, out) : src.ReadAt(offset, out);
    std::lock_guard<std::mutex> lock(shared->mu);
    shared->status = st;
    shared->done = true;
    shared->cv.notify_all();
  });
  std::unique_lock<std::mutex> lock(shared->mu);
  if (!shared->cv.wait_for(lock, limit, [&] { return shared->done; })) {
    ADD_FAILURE() << "ReadAt did not return within " << limit.count() << " s (hang)";
    std::fflush(nullptr);
    _exit(1);
  }
  lock.unlock();
  t.join();
  return shared->status;
}

class IoUringFaultTest : public IoUringSourceOpenFdFileTest {
 protected:
  void SetUp() override {
    if (!IoUringAvailable()) {
      GTEST_SKIP() << "io_uring refused in this process: " << IoUringStatus();
    }
    IoUringSourceOpenFdFileTest::SetUp();
  }
  // Several reads in flight per batch, buffered (so ReadAt has no direct
  // part to redo buffered, which would hide the error).
  IoOptions Options() const {
    IoOptions options;
    options.backend = IoBackend::kIoUring;
    options.direct = false;
    options.queue_depth = 4;
    options.chunk_bytes = 64 * 1024;
    options.drain_timeout_ms = 2000;
    return options;
  }
  // After a fault: the next read on the same source works, on a new ring.
  void ExpectNextReadWorks(IoUringSource& src, uint64_t rings_before) {
    std::vector<uint8_t> again(data_.size());
    absl::Status st = ReadWithin(src, 0, absl::MakeSpan(again));
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(0, memcmp(again.data(), data_.data(), data_.size()));
    EXPECT_EQ(src.rings_created(), rings_before + 1) << "the broken ring was reused";
  }
};

TEST_F(IoUringFaultTest, FailedSubmitIsAnErrorNotAHang) {
  IoOptions options = Options();
  options.uring_faults.submit_fail = 1;
  auto src = IoUringSource::Open(path_, options);
  ASSERT_TRUE(src.ok()) << src.status();
  auto out = std::make_unique<std::vector<uint8_t>>(data_.size());
  absl::Status st = ReadWithin(**src, 0, absl::MakeSpan(*out));
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_NE(st.message().find("io_uring_submit"), std::string::npos) << st;
  out.reset();  // the caller may free its buffer at once
  EXPECT_EQ((*src)->rings_discarded(), 1u);
  EXPECT_EQ((*src)->rings_quarantined(), 0u);
  ExpectNextReadWorks(**src, (*src)->rings_created());
}

TEST_F(IoUringFaultTest, ShortSubmitWaitsOnlyForAcceptedReads) {
  IoOptions options = Options();
  options.uring_faults.short_submit = 1;
  auto src = IoUringSource::Open(path_, options);
  ASSERT_TRUE(src.ok()) << src.status();
  auto out = std::make_unique<std::vector<uint8_t>>(data_.size());
  absl::Status st = ReadWithin(**src, 0, absl::MakeSpan(*out));
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_NE(st.message().find("took 1 of 4"), std::string::npos) << st;
  out.reset();
  // The one accepted read was drained, so the ring could be destroyed.
  EXPECT_EQ((*src)->rings_discarded(), 1u);
  EXPECT_EQ((*src)->rings_quarantined(), 0u);
  ExpectNextReadWorks(**src, (*src)->rings_created());
}

TEST_F(IoUringFaultTest, FailedWaitDrainsAndDropsTheRing) {
  IoOptions options = Options();
  options.uring_faults.wait_fail = 1;  // the first wait only
  auto src = IoUringSource::Open(path_, options);
  ASSERT_TRUE(src.ok()) << src.status();
  auto out = std::make_unique<std::vector<uint8_t>>(data_.size());
  absl::Status st = ReadWithin(**src, 0, absl::MakeSpan(*out));
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  out.reset();
  EXPECT_EQ((*src)->rings_discarded(), 1u);
  EXPECT_EQ((*src)->rings_quarantined(), 0u);
  ExpectNextReadWorks(**src, (*src)->rings_created());
}

TEST_F(IoUringFaultTest, UndrainableRingIsQuarantinedAndTheCallerBufferIsSafe) {
  IoOptions options = Options();
  options.uring_faults.wait_fail = 1;
  options.uring_faults.wait_fail_count = 4;  // the wait and every drain attempt
  auto src = IoUringSource::Open(path_, options);
  ASSERT_TRUE(src.ok()) << src.status();
  auto start = std::chrono::steady_clock::now();
  auto out = std::make_unique<std::vector<uint8_t>>(data_.size(), 0x5A);
  absl::Status st = ReadWithin(**src, 0, absl::MakeSpan(*out));
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_EQ((*src)->rings_quarantined(), 1u);
  EXPECT_EQ((*src)->rings_discarded(), 0u);
  // The reads still in flight target the quarantined ring's bounce memory,
  // never `out`: whatever the kernel completes later leaves it untouched.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // let stray reads land
  EXPECT_TRUE(std::all_of(out->begin(), out->end(), [](uint8_t b) { return b == 0x5A; }));
  out.reset();  // and it may be freed (ASan: no use after free)
  ExpectNextReadWorks(**src, (*src)->rings_created());
}

TEST_F(IoUringFaultTest, FaultsAfterSomeCompletionsStillEndBounded) {
  // Faults in the middle of a read (later submits and waits), with short
  // reads in the mix: every one ends with an error or the exact bytes.
  for (uint32_t n = 2; n <= 6; ++n) {
    for (int kind = 0; kind < 3; ++kind) {
      SCOPED_TRACE(absl::StrCat("fault ", kind, " at call ", n));
      IoOptions options = Options();
      options.max_read_bytes = 40000;  // short reads: retries share the ring
      if (kind == 0) options.uring_faults.submit_fail = n;
      if (kind == 1) options.uring_faults.short_submit = n;
      if (kind == 2) options.uring_faults.wait_fail = n;
      auto src = IoUringSource::Open(path_, options);
      ASSERT_TRUE(src.ok()) << src.status();
      std::vector<uint8_t> out(data_.size());
      absl::Status st = ReadWithin(**src, 0, absl::MakeSpan(out));
      if (st.ok()) {
        EXPECT_EQ(0, memcmp(out.data(), data_.data(), data_.size()));
      } else {
        EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
        EXPECT_EQ((*src)->rings_discarded() + (*src)->rings_quarantined(), 1u);
        ExpectNextReadWorks(**src, (*src)->rings_created());
      }
    }
  }
}

absl::Status BulkWithin(IoUringSource& src, uint64_t offset, absl::Span<uint8_t> out) {
  return ReadWithin(src, offset, out, std::chrono::seconds(20), /*bulk=*/true);
}

class IoUringBulkFaultTest : public IoUringFaultTest {
 protected:
  IoOptions Options() const {
    IoOptions options = IoUringFaultTest::Options();
    options.split_bytes = 64 * 1024;  // 33 pieces, 4 in flight
    return options;
  }
  // After a fault: nothing of the failed read in flight, the caller's buffer
  // not written after the return (its contents then, checked again after
  // the kernel had time to land any stray read), and the next reads work.
  void ExpectQuietAfterFailure(IoUringSource& src, std::unique_ptr<std::vector<uint8_t>> out,
                               bool then_read = true) {
    EXPECT_EQ(src.bulk_in_flight(), 0u);
    const std::vector<uint8_t> at_return = *out;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // let stray reads land
    EXPECT_TRUE(*out == at_return) << "the buffer was written after ReadBulk returned";
    out.reset();  // and it may be freed (ASan: no use after free)
    if (!then_read) return;
    ExpectNextReadWorks(src, src.rings_created());  // on a new ring
    std::vector<uint8_t> again(data_.size());
    absl::Status st = BulkWithin(src, 0, absl::MakeSpan(again));
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(0, memcmp(again.data(), data_.data(), data_.size()));
    EXPECT_EQ(src.bulk_in_flight(), 0u);
  }
};

TEST_F(IoUringBulkFaultTest, FailedWaitCancelsAndReapsEveryReadBeforeReturning) {
  // The first wait only; then every wait from then on (the drain polls the
  // completion queue instead; this source's later reads fail too).
  for (uint32_t count : {1u, 1000000u}) {
    SCOPED_TRACE(absl::StrCat(count, " failed waits"));
    IoOptions options = Options();
    options.uring_faults.wait_fail = 1;
    options.uring_faults.wait_fail_count = count;
    auto src = IoUringSource::Open(path_, options);
    ASSERT_TRUE(src.ok()) << src.status();
    auto out = std::make_unique<std::vector<uint8_t>>(data_.size(), 0x5A);
    absl::Status st = BulkWithin(**src, 0, absl::MakeSpan(*out));
    EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
    EXPECT_GT((*src)->bulk_cancels(), 0u) << "the reads in flight were not cancelled";
    EXPECT_EQ((*src)->rings_discarded(), 1u);
    EXPECT_EQ((*src)->rings_quarantined(), 0u);
    ExpectQuietAfterFailure(**src, std::move(out), /*then_read=*/count == 1);
  }
}

TEST_F(IoUringBulkFaultTest, FailedAndShortSubmitsWaitForTheAcceptedReads) {
  for (int kind = 0; kind < 2; ++kind) {
    SCOPED_TRACE(kind == 0 ? "submit_fail" : "short_submit");
    IoOptions options = Options();
    (kind == 0 ? options.uring_faults.submit_fail : options.uring_faults.short_submit) = 1;
    auto src = IoUringSource::Open(path_, options);
    ASSERT_TRUE(src.ok()) << src.status();
    auto out = std::make_unique<std::vector<uint8_t>>(data_.size(), 0x5A);
    absl::Status st = BulkWithin(**src, 0, absl::MakeSpan(*out));
    EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
    EXPECT_NE(st.message().find("io_uring_submit"), std::string::npos) << st;
    if (kind == 1) EXPECT_NE(st.message().find("took 1 of 4"), std::string::npos) << st;
    EXPECT_EQ((*src)->rings_discarded(), 1u);  // its SQ holds reads never submitted
    ExpectQuietAfterFailure(**src, std::move(out));
  }
}

TEST_F(IoUringBulkFaultTest, FaultsMidReadEndWithExactBytesOrAnErrorAndNothingInFlight) {
  for (uint32_t n = 2; n <= 8; ++n) {
    for (int kind = 0; kind < 3; ++kind) {
      SCOPED_TRACE(absl::StrCat("fault ", kind, " at call ", n));
      IoOptions options = Options();
      options.max_read_bytes = 40000;  // short reads: continued pieces in the mix
      if (kind == 0) options.uring_faults.submit_fail = n;
      if (kind == 1) options.uring_faults.short_submit = n;
      if (kind == 2) options.uring_faults.wait_fail = n;
      auto src = IoUringSource::Open(path_, options);
      ASSERT_TRUE(src.ok()) << src.status();
      auto out = std::make_unique<std::vector<uint8_t>>(data_.size(), 0x5A);
      absl::Status st = BulkWithin(**src, 0, absl::MakeSpan(*out));
      if (st.ok()) {
        EXPECT_EQ(0, memcmp(out->data(), data_.data(), data_.size()));
        EXPECT_EQ((*src)->bulk_in_flight(), 0u);
      } else {
        EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
        EXPECT_EQ((*src)->rings_discarded(), 1u);
        ExpectQuietAfterFailure(**src, std::move(out));
      }
    }
  }
}

TEST(IoUringSourceProbeTest, StatusAgreesWithAvailability) {
  EXPECT_EQ(IoUringAvailable(), IoUringStatus().ok()) << IoUringStatus();
  if (!IoUringAvailable()) {
    EXPECT_FALSE(IoUringStatus().message().empty());
    IoOptions options;
    options.backend = IoBackend::kIoUring;
    EXPECT_EQ(IoUringSource::Open("/proc/self/exe", options).status().code(),
              absl::StatusCode::kUnavailable);
  }
}

}  // namespace
}  // namespace bigsmall::daemon
