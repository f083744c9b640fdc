#include "codec/byte_source.h"

#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace bigsmall {
namespace {

using ::testing::HasSubstr;

std::vector<uint8_t> Pattern(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i * 7 + 1);
  return v;
}

std::string WriteTempFile(const std::string& name, const std::vector<uint8_t>& bytes) {
  const std::string path = ::testing::TempDir() + "/byte_source_test_" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  return path;
}

TEST(MemorySourceTest, ReadsRanges) {
  const std::vector<uint8_t> data = Pattern(100);
  auto source = MakeMemorySource(data, "mem");
  EXPECT_EQ(source->size(), 100u);
  EXPECT_EQ(source->name(), "mem");
  std::vector<uint8_t> out(10);
  ASSERT_TRUE(source->ReadAt(90, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, std::vector<uint8_t>(data.begin() + 90, data.end()));
  // Empty reads succeed anywhere up to the end.
  EXPECT_TRUE(source->ReadAt(100, {}).ok());
}

TEST(MemorySourceTest, PastEndIsOutOfRange) {
  auto source = MakeMemorySource(Pattern(100), "mem");
  std::vector<uint8_t> out(10);
  absl::Status s = source->ReadAt(91, absl::MakeSpan(out));
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(s.message(), HasSubstr("mem"));
  EXPECT_EQ(source->ReadAt(101, {}).code(), absl::StatusCode::kOutOfRange);
  // Offset + size overflowing 64 bits must not wrap around into range.
  EXPECT_EQ(source->ReadAt(std::numeric_limits<uint64_t>::max() - 2, absl::MakeSpan(out)).code(),
            absl::StatusCode::kOutOfRange);
}

TEST(ReadRangeTest, ReturnsBytes) {
  const std::vector<uint8_t> data = Pattern(64);
  auto source = MakeMemorySource(data, "mem");
  absl::StatusOr<std::vector<uint8_t>> got = ReadRange(*source, 8, 16);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, std::vector<uint8_t>(data.begin() + 8, data.begin() + 24));
  got = ReadRange(*source, 64, 0);
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(got->empty());
}

TEST(ReadRangeTest, RejectsAbsurdSizesBeforeAllocating) {
  auto source = MakeMemorySource(Pattern(64), "mem");
  // Would be a 16 EiB allocation if it were attempted.
  EXPECT_EQ(ReadRange(*source, 0, std::numeric_limits<uint64_t>::max()).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(ReadRange(*source, 1, 64).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(ReadRange(*source, std::numeric_limits<uint64_t>::max(), 2).status().code(),
            absl::StatusCode::kOutOfRange);
}

TEST(FileSourceTest, ReadsFile) {
  const std::vector<uint8_t> data = Pattern(1 << 20);
  const std::string path = WriteTempFile("reads", data);
  absl::StatusOr<std::unique_ptr<ByteSource>> source = OpenFileSource(path);
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ((*source)->size(), data.size());
  EXPECT_EQ((*source)->name(), path);
  absl::StatusOr<std::vector<uint8_t>> all = ReadRange(**source, 0, data.size());
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(*all, data);
  std::vector<uint8_t> out(3);
  ASSERT_TRUE((*source)->ReadAt(12345, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, std::vector<uint8_t>(data.begin() + 12345, data.begin() + 12348));
  unlink(path.c_str());
}

TEST(FileSourceTest, PastEndIsOutOfRangeNamingPath) {
  const std::string path = WriteTempFile("pastend", Pattern(10));
  auto source = OpenFileSource(path);
  ASSERT_TRUE(source.ok());
  std::vector<uint8_t> out(4);
  absl::Status s = (*source)->ReadAt(8, absl::MakeSpan(out));
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(s.message(), HasSubstr(path));
  unlink(path.c_str());
}

TEST(FileSourceTest, MissingFileIsNotFoundNamingPath) {
  const std::string path = ::testing::TempDir() + "/byte_source_test_does_not_exist";
  absl::StatusOr<std::unique_ptr<ByteSource>> source = OpenFileSource(path);
  EXPECT_EQ(source.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(source.status().message(), HasSubstr(path));
}

TEST(FileSourceTest, DirectoryIsRejected) {
  absl::StatusOr<std::unique_ptr<ByteSource>> source = OpenFileSource(::testing::TempDir());
  EXPECT_FALSE(source.ok());
}

TEST(FileSourceTest, FileShrunkAfterOpenIsDataLoss) {
  const std::string path = WriteTempFile("shrink", Pattern(4096));
  auto source = OpenFileSource(path);
  ASSERT_TRUE(source.ok());
  ASSERT_EQ(truncate(path.c_str(), 100), 0);
  std::vector<uint8_t> out(200);
  absl::Status s = (*source)->ReadAt(0, absl::MakeSpan(out));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr(path));
  unlink(path.c_str());
}

}  // namespace
}  // namespace bigsmall
