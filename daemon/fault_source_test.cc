#include "daemon/fault_source.h"

#include <numeric>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace bigsmall::daemon {
namespace {

std::unique_ptr<ByteSource> Bytes(size_t n) {
  std::vector<uint8_t> v(n);
  std::iota(v.begin(), v.end(), 0);
  return MakeMemorySource(std::move(v), "mem");
}

TEST(FaultSourceTest, ParsesSpecs) {
  auto spec = ParseFaultSpec("short=7,eio=100,eio_after=2,truncate=50,stall_ms=1,flip=3");
  ASSERT_TRUE(spec.ok());
  EXPECT_EQ(spec->short_read_bytes, 7u);
  EXPECT_EQ(*spec->eio_offset, 100u);
  EXPECT_EQ(spec->eio_after, 2u);
  EXPECT_EQ(*spec->truncate_at, 50u);
  EXPECT_EQ(spec->stall_ms, 1u);
  EXPECT_EQ(*spec->flip_offset, 3u);
  EXPECT_FALSE(ParseFaultSpec("bogus=1").ok());
  EXPECT_FALSE(ParseFaultSpec("short").ok());
}

TEST(FaultSourceTest, UringFaultsParseAndReachTheSource) {
  auto spec = ParseFaultSpec(
      "uring_submit_fail=3,uring_short_submit=2,uring_wait_fail=5,uring_wait_fail_count=9");
  ASSERT_TRUE(spec.ok()) << spec.status();
  IoOptions io;
  ApplyUringFaults(*spec, &io);
  EXPECT_EQ(io.uring_faults.submit_fail, 3u);
  EXPECT_EQ(io.uring_faults.short_submit, 2u);
  EXPECT_EQ(io.uring_faults.wait_fail, 5u);
  EXPECT_EQ(io.uring_faults.wait_fail_count, 9u);
  EXPECT_FALSE(ParseFaultSpec("uring_bogus=1").ok());
  EXPECT_FALSE(ParseFaultSpec("uring_wait_fail=99999999999").ok());
  if (!IoUringAvailable()) {
    GTEST_SKIP() << "io_uring refused in this process: " << IoUringStatus();
  }
  // End to end: the first submit of a real source fails.
  auto one = ParseFaultSpec("uring_submit_fail=1");
  ASSERT_TRUE(one.ok());
  IoOptions options;
  options.backend = IoBackend::kIoUring;
  options.direct = false;
  ApplyUringFaults(*one, &options);
  auto src = IoUringSource::Open("/proc/self/exe", options);
  ASSERT_TRUE(src.ok()) << src.status();
  std::vector<uint8_t> out(std::min<uint64_t>((*src)->size(), 8192));
  EXPECT_EQ((*src)->ReadAt(0, absl::MakeSpan(out)).code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE((*src)->ReadAt(0, absl::MakeSpan(out)).ok());
}

TEST(FaultSourceTest, ShortReadsReassemble) {
  FaultSpec spec;
  spec.short_read_bytes = 7;
  FaultInjectingSource src(Bytes(200), spec);
  std::vector<uint8_t> out(100);
  ASSERT_TRUE(src.ReadAt(50, absl::MakeSpan(out)).ok());
  for (size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i], static_cast<uint8_t>(50 + i));
}

TEST(FaultSourceTest, EioAfterNReads) {
  FaultSpec spec;
  spec.eio_offset = 10;
  spec.eio_after = 1;
  FaultInjectingSource src(Bytes(100), spec);
  std::vector<uint8_t> out(20);
  EXPECT_TRUE(src.ReadAt(0, absl::MakeSpan(out)).ok());  // first read passes
  auto st = src.ReadAt(0, absl::MakeSpan(out));
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(src.ReadAt(50, absl::MakeSpan(out)).ok());  // elsewhere is fine
}

TEST(FaultSourceTest, TruncationAndFlip) {
  FaultSpec spec;
  spec.truncate_at = 60;
  spec.flip_offset = 5;
  FaultInjectingSource src(Bytes(100), spec);
  std::vector<uint8_t> out(10);
  ASSERT_TRUE(src.ReadAt(0, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out[5], static_cast<uint8_t>(5 ^ 0xff));
  EXPECT_EQ(src.ReadAt(55, absl::MakeSpan(out)).code(), absl::StatusCode::kDataLoss);
}

// Counts which entry point the wrapper used on its inner source.
class CountingSource final : public ByteSource {
 public:
  explicit CountingSource(std::unique_ptr<ByteSource> inner) : inner_(std::move(inner)) {}
  uint64_t size() const override { return inner_->size(); }
  absl::Status ReadAt(uint64_t offset, absl::Span<uint8_t> out) override {
    ++*reads_;
    return inner_->ReadAt(offset, out);
  }
  absl::Status ReadBulk(uint64_t offset, absl::Span<uint8_t> out) override {
    ++*bulk_reads_;
    return inner_->ReadAt(offset, out);
  }
  std::string name() const override { return inner_->name(); }
  std::shared_ptr<int> reads_ = std::make_shared<int>(0);
  std::shared_ptr<int> bulk_reads_ = std::make_shared<int>(0);

 private:
  std::unique_ptr<ByteSource> inner_;
};

TEST(FaultSourceTest, BulkReadsGetTheFaultsAndStayBulkInside) {
  auto counting = std::make_unique<CountingSource>(Bytes(100));
  auto reads = counting->reads_;
  auto bulk = counting->bulk_reads_;
  FaultSpec spec;
  spec.short_read_bytes = 7;
  spec.flip_offset = 5;
  spec.eio_offset = 90;
  FaultInjectingSource src(std::move(counting), spec);
  std::vector<uint8_t> out(20);
  ASSERT_TRUE(src.ReadBulk(0, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out[5], static_cast<uint8_t>(5 ^ 0xff));
  EXPECT_EQ(out[19], 19);
  EXPECT_EQ(*bulk, 3);  // 7 + 7 + 6 bytes, each a ReadBulk of the inner source
  EXPECT_EQ(*reads, 0);
  EXPECT_EQ(src.ReadBulk(80, absl::MakeSpan(out)).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(src.reads(), 2u);
}

}  // namespace
}  // namespace bigsmall::daemon
