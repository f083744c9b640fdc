// Format 1.1 (docs/FORMAT.md §3.1, §3.2): the writer's device and group
// checksums, BsReader::CheckGroup / CheckDeviceChecksum, the reader's
// rejection of corrupt trailers and unknown minor versions, VerifyPath's
// checks, and 1.0 files (golden and rewritten) still reading bit-exactly.
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "codec/alloc_hook_for_test.h"
#include "codec/bs_reader.h"
#include "codec/byte_io.h"
#include "codec/byte_source.h"
#include "codec/compress.h"
#include "codec/decompress.h"
#include "codec/device_checksum.h"
#include "codec/error_kind.h"
#include "codec/format.h"
#include "codec/hash.h"
#include "codec/safetensors.h"
#include "gmock/gmock.h"
#include "codec/test_files.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "zstd.h"

namespace bigsmall {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

using testing::ReadAll;
using testing::WriteAll;
using T = testing::TestTensor;

std::vector<uint8_t> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng() & 0x3f);  // compressible
  return v;
}

std::vector<T> Model(uint32_t seed) {
  return {{"model.embed_tokens.weight", "BF16", {64, 32}, Random(4096, seed)},
          {"model.layers.0.q.weight", "BF16", {32, 32}, Random(2048, seed + 1)},
          {"model.layers.0.norm.weight", "F32", {5}, Random(20, seed + 2)},
          {"model.layers.1.q.weight", "F32", {33}, Random(132, seed + 3)},
          {"ids", "I64", {3}, Random(24, seed + 4)}};
}

// The parts of a .bs file: header fields, and the raw index.
struct Parsed {
  std::vector<uint8_t> file;
  uint64_t index_offset = 0;
  std::vector<uint8_t> raw;
};

Parsed Parse(const std::vector<uint8_t>& file) {
  Parsed p;
  p.file = file;
  std::memcpy(&p.index_offset, file.data() + 16, 8);
  uint64_t stored = 0, raw_size = 0;
  std::memcpy(&stored, file.data() + 24, 8);
  std::memcpy(&raw_size, file.data() + 32, 8);
  p.raw.resize(raw_size);
  EXPECT_EQ(ZSTD_decompress(p.raw.data(), p.raw.size(), file.data() + p.index_offset, stored), raw_size);
  return p;
}

// Rebuilds a consistent file (index checksum, header checksum, file size)
// around a modified raw index and minor version.
std::vector<uint8_t> Assemble(const Parsed& p, const std::vector<uint8_t>& raw, uint16_t minor) {
  std::vector<uint8_t> frame(ZSTD_compressBound(raw.size()));
  frame.resize(ZSTD_compress(frame.data(), frame.size(), raw.data(), raw.size(), 3));
  std::vector<uint8_t> file(p.file.begin(), p.file.begin() + p.index_offset);
  file.insert(file.end(), frame.begin(), frame.end());
  auto put = [&](size_t at, uint64_t v) { std::memcpy(file.data() + at, &v, 8); };
  std::memcpy(file.data() + 10, &minor, 2);
  put(24, frame.size());
  put(32, raw.size());
  put(40, HashBytes64(frame));
  put(48, file.size());
  put(56, HashBytes64(absl::MakeConstSpan(file.data(), 56)));
  return file;
}

absl::StatusOr<std::unique_ptr<BsReader>> Open(const std::vector<uint8_t>& file, const std::string& name) {
  return BsReader::Open(MakeMemorySource(file, name));
}

class Format11Test : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("bs_format_" + std::to_string(getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    tensors_ = Model(5);
    WriteAll(Path("m.safetensors"), testing::MakeSafetensors(tensors_, /*metadata=*/false));
    CompressOptions co;
    co.layout = Layout::kAligned;  // these tests edit the aligned layout's padding
    co.chunk_elements = 256;
    ASSERT_TRUE(CompressPath(Path("m.safetensors"), Path("m.bs"), co).ok());
    good_ = Parse(ReadAll(Path("m.bs")));
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }
  // Bytes of the trailer: 8 per tensor and per group.
  size_t TrailerSize(const BsIndex& ix) const { return 8 * (ix.tensors.size() + ix.groups.size()); }
  fs::path dir_;
  std::vector<T> tensors_;
  Parsed good_;
};

TEST_F(Format11Test, WriterStoresDeviceAndGroupChecksums) {
  auto r = BsReader::OpenFile(Path("m.bs"));
  ASSERT_TRUE(r.ok()) << r.status();
  const BsIndex& ix = (*r)->index();
  EXPECT_EQ(ix.version_major, 1);
  EXPECT_EQ(ix.version_minor, kFormatVersionMinor);
  EXPECT_TRUE(ix.has_checksums());
  ASSERT_EQ(ix.tensors.size(), tensors_.size());
  for (const BsTensor& t : ix.tensors) {
    const auto& src = *std::find_if(tensors_.begin(), tensors_.end(), [&](const T& x) { return x.name == t.info.name; });
    EXPECT_TRUE(t.has_device_checksum);
    EXPECT_EQ(t.device_checksum, DeviceChecksum(src.bytes.data(), src.bytes.size())) << t.info.name;
  }
  ASSERT_EQ(ix.groups.size(), 3u);
  for (uint32_t g = 0; g < ix.groups.size(); ++g) {
    auto bytes = (*r)->ReadGroup(g);
    ASSERT_TRUE(bytes.ok());
    EXPECT_TRUE(ix.groups[g].has_checksum);
    EXPECT_EQ(ix.groups[g].checksum, HashBytes64(*bytes));
    EXPECT_TRUE((*r)->CheckGroup(g, *bytes).ok());
    EXPECT_TRUE((*r)->CheckStoredGroup(g).ok());
  }
  // The trailer is the last 8 × (tensors + groups) bytes of the index.
  const size_t trailer = TrailerSize(ix);
  for (size_t t = 0; t < ix.tensors.size(); ++t) {
    EXPECT_EQ(LoadLe64(good_.raw.data() + good_.raw.size() - trailer + 8 * t), ix.tensors[t].device_checksum);
  }
  EXPECT_EQ(LoadLe64(good_.raw.data() + good_.raw.size() - 8), ix.groups.back().checksum);
}

TEST_F(Format11Test, CheckGroupCatchesDamageAndNamesFileAndGroup) {
  auto r = BsReader::OpenFile(Path("m.bs"));
  ASSERT_TRUE(r.ok()) << r.status();
  for (uint32_t g = 0; g < (*r)->index().groups.size(); ++g) {
    auto bytes = (*r)->ReadGroup(g);
    ASSERT_TRUE(bytes.ok());
    for (size_t pos : {size_t{0}, bytes->size() / 2, bytes->size() - 1}) {
      std::vector<uint8_t> bad = *bytes;
      bad[pos] ^= 0x10;
      absl::Status st = (*r)->CheckGroup(g, bad);
      EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
      EXPECT_THAT(std::string(st.message()), HasSubstr("m.bs"));
      EXPECT_THAT(std::string(st.message()), HasSubstr(absl::StrCat("group ", g, " ('")));
      EXPECT_THAT(std::string(st.message()), HasSubstr("group checksum"));
    }
    std::vector<uint8_t> shorter(bytes->begin(), bytes->end() - 1);
    EXPECT_EQ((*r)->CheckGroup(g, shorter).code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ((*r)->CheckGroup(99, {}).code(), absl::StatusCode::kOutOfRange);
  // A damaged blob in the file: CheckStoredGroup reads it and refuses.
  std::vector<uint8_t> file = good_.file;
  file[(*r)->index().groups[1].offset + 3] ^= 1;
  auto damaged = Open(file, "damaged.bs");
  ASSERT_TRUE(damaged.ok());
  EXPECT_TRUE((*damaged)->CheckStoredGroup(0).ok());
  absl::Status st = (*damaged)->CheckStoredGroup(1);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("damaged.bs: group 1 ('model.layers.0')"));
}

TEST_F(Format11Test, CheckDeviceChecksum) {
  auto r = BsReader::OpenFile(Path("m.bs"));
  ASSERT_TRUE(r.ok());
  for (uint32_t t = 0; t < (*r)->index().tensors.size(); ++t) {
    auto bytes = (*r)->ReadTensor(t);
    ASSERT_TRUE(bytes.ok());
    EXPECT_TRUE((*r)->CheckDeviceChecksum(t, *bytes).ok());
    (*bytes)[bytes->size() - 1] ^= 0x80;
    absl::Status st = (*r)->CheckDeviceChecksum(t, *bytes);
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(std::string(st.message()),
                HasSubstr(absl::StrCat("tensor '", (*r)->index().tensors[t].info.name, "' failed its device checksum")));
  }
}

TEST_F(Format11Test, ReaderRejectsCorruptTrailers) {
  auto r = BsReader::OpenFile(Path("m.bs"));
  ASSERT_TRUE(r.ok());
  const size_t trailer = TrailerSize((*r)->index());
  ASSERT_TRUE(Open(Assemble(good_, good_.raw, 1), "same.bs").ok()) << "the rebuild helper itself";
  struct Case {
    std::string what;
    std::function<void(std::vector<uint8_t>&)> edit;
    uint16_t minor;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"one byte short", [](std::vector<uint8_t>& raw) { raw.pop_back(); }, 1, "trailer is truncated"},
      {"one group checksum short", [](std::vector<uint8_t>& raw) { raw.resize(raw.size() - 8); }, 1,
       "trailer is truncated"},
      {"no trailer at all", [&](std::vector<uint8_t>& raw) { raw.resize(raw.size() - trailer); }, 1,
       "trailer is truncated"},
      {"a byte after the trailer", [](std::vector<uint8_t>& raw) { raw.push_back(0); }, 1, "trailing bytes"},
      {"a 1.0 header over a 1.1 index", [](std::vector<uint8_t>&) {}, 0, "trailing bytes"},
  };
  for (const Case& c : cases) {
    std::vector<uint8_t> raw = good_.raw;
    c.edit(raw);
    auto bad = Open(Assemble(good_, raw, c.minor), "bad.bs");
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss) << c.what << ": " << bad.status();
    EXPECT_THAT(std::string(bad.status().message()), HasSubstr("bad.bs")) << c.what;
    EXPECT_THAT(std::string(bad.status().message()), HasSubstr(c.message)) << c.what;
  }
}

TEST_F(Format11Test, UnknownMinorVersionIsUnsupported) {
  for (uint16_t minor : {uint16_t{kFormatVersionMinor + 1}, uint16_t{0xffff}}) {
    auto bad = Open(Assemble(good_, good_.raw, minor), "v.bs");
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss) << bad.status();
    EXPECT_EQ(GetErrorKind(bad.status()), ErrorKind::kUnsupportedVersion);
    EXPECT_THAT(std::string(bad.status().message()), HasSubstr(absl::StrCat("format version 1.", minor,
                                                                            " is not supported")));
    EXPECT_THAT(std::string(bad.status().message()), HasSubstr(absl::StrCat("reads 1.0 to 1.", kFormatVersionMinor)));
  }
}

// A wrong stored device checksum or group checksum (the data intact, so the
// XXH3-128 hashes pass): decompress still rebuilds (it relies on XXH3-128),
// verify refuses and names which check failed.
TEST_F(Format11Test, VerifyChecksEveryDeviceAndGroupChecksum) {
  auto r = BsReader::OpenFile(Path("m.bs"));
  ASSERT_TRUE(r.ok());
  const BsIndex& ix = (*r)->index();
  auto ok = VerifyPath(Path("m.bs"), {});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->device_checksums, ix.tensors.size());
  EXPECT_EQ(ok->group_checksums, ix.groups.size());
  const size_t trailer = TrailerSize(ix);
  // Tensor 2's device checksum, then group 1's checksum.
  for (size_t slot : {size_t{2}, ix.tensors.size() + 1}) {
    std::vector<uint8_t> raw = good_.raw;
    raw[raw.size() - trailer + 8 * slot + 3] ^= 0x04;
    WriteAll(Path("bad.bs"), Assemble(good_, raw, 1));
    auto v = VerifyPath(Path("bad.bs"), {});
    EXPECT_EQ(v.status().code(), absl::StatusCode::kDataLoss) << v.status();
    EXPECT_THAT(std::string(v.status().message()), HasSubstr("bad.bs"));
    if (slot < ix.tensors.size()) {
      EXPECT_THAT(std::string(v.status().message()),
                  HasSubstr(absl::StrCat("tensor '", ix.tensors[slot].info.name, "' failed its device checksum")));
    } else {
      EXPECT_THAT(std::string(v.status().message()), HasSubstr("group 1 ('model.layers.0') failed its group checksum"));
    }
    DecompressOptions d;
    d.force = true;
    EXPECT_TRUE(DecompressPath(Path("bad.bs"), Path("out.safetensors"), d).ok());
    EXPECT_EQ(ReadAll(Path("out.safetensors")), ReadAll(Path("m.safetensors")));
  }
  // A damaged blob: verify reports the group checksum, before decoding.
  std::vector<uint8_t> file = good_.file;
  file[ix.groups[2].offset + 1] ^= 1;
  WriteAll(Path("blob.bs"), file);
  auto v = VerifyPath(Path("blob.bs"), {});
  EXPECT_EQ(v.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("group 2 ('model.layers.1') failed its group checksum"));
}

TEST_F(Format11Test, DeltaFilesStoreTheChecksumOfTheRebuiltTensor) {
  std::vector<T> tuned = tensors_;
  for (auto& t : tuned) t.bytes[0] ^= 1;
  WriteAll(Path("tuned.safetensors"), testing::MakeSafetensors(tuned, /*metadata=*/false));
  CompressOptions co;
  co.base = Path("m.safetensors");
  ASSERT_TRUE(CompressPath(Path("tuned.safetensors"), Path("tuned.bs"), co).ok());
  auto r = BsReader::OpenFile(Path("tuned.bs"));
  ASSERT_TRUE(r.ok());
  for (const BsTensor& t : (*r)->index().tensors) {
    ASSERT_TRUE(t.is_delta()) << t.info.name;
    const auto& src = *std::find_if(tuned.begin(), tuned.end(), [&](const T& x) { return x.name == t.info.name; });
    EXPECT_EQ(t.device_checksum, DeviceChecksum(src.bytes.data(), src.bytes.size())) << t.info.name;
  }
  VerifyOptions v;
  v.base = Path("m.safetensors");
  auto vs = VerifyPath(Path("tuned.bs"), v);
  ASSERT_TRUE(vs.ok()) << vs.status();
  EXPECT_EQ(vs->device_checksums, tuned.size());
}

// A 1.0 file is a 1.1 file without the trailer: the rewritten file, and the
// committed 1.0 golden files, still decode bit-exactly, have no checksums,
// and pass CheckGroup / CheckDeviceChecksum trivially.
TEST_F(Format11Test, Version10FilesStillRoundTrip) {
  auto r = BsReader::OpenFile(Path("m.bs"));
  ASSERT_TRUE(r.ok());
  std::vector<uint8_t> raw = good_.raw;
  raw.resize(raw.size() - TrailerSize((*r)->index()));
  WriteAll(Path("old.bs"), Assemble(good_, raw, 0));
  auto old = BsReader::OpenFile(Path("old.bs"));
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ((*old)->index().version_minor, 0);
  EXPECT_FALSE((*old)->index().has_checksums());
  for (const BsTensor& t : (*old)->index().tensors) EXPECT_FALSE(t.has_device_checksum);
  for (uint32_t g = 0; g < (*old)->index().groups.size(); ++g) {
    EXPECT_FALSE((*old)->index().groups[g].has_checksum);
    EXPECT_TRUE((*old)->CheckGroup(g, std::vector<uint8_t>((*old)->index().groups[g].size, 0)).ok());
  }
  DecompressOptions d;
  ASSERT_TRUE(DecompressPath(Path("old.bs"), Path("old.safetensors"), d).ok());
  EXPECT_EQ(ReadAll(Path("old.safetensors")), ReadAll(Path("m.safetensors")));
  auto v = VerifyPath(Path("old.bs"), {});
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->device_checksums, 0u);
  EXPECT_EQ(v->group_checksums, 0u);

  const fs::path golden = fs::path(BIGSMALL_SOURCE_DIR) / "tests" / "golden" / "valid";
  int files = 0;
  for (const char* name : {"bf16_llama.balanced", "bf16_llama.storage", "mixed_dtypes.inference"}) {
    const std::string bs = (golden / (std::string(name) + ".bs")).string();
    auto g = BsReader::OpenFile(bs);
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_EQ((*g)->index().version_minor, 0) << name << " is a committed 1.0 golden file";
    const std::string original = (golden / (std::string(name).substr(0, std::string(name).find('.')) + ".safetensors")).string();
    const std::string out = Path(std::string(name) + ".out");
    ASSERT_TRUE(DecompressPath(bs, out, {}).ok()) << name;
    EXPECT_EQ(ReadAll(out), ReadAll(original)) << name;
    ++files;
  }
  EXPECT_EQ(files, 3);
}

// docs/FORMAT.md §1: every byte of a file is covered by a check. The padding
// (after the header, between groups, before the index) must be zero: Open
// checks [64, 4096), `bigsmall verify` all of it, naming the first bad offset.
class PaddingTest : public Format11Test {
 protected:
  // `p`'s file with `gap` zero bytes inserted before the index (index_offset,
  // file_size and the header checksum fixed up).
  static std::vector<uint8_t> WithGapBeforeIndex(const Parsed& p, uint64_t gap) {
    std::vector<uint8_t> file(p.file.begin(), p.file.begin() + p.index_offset);
    file.resize(file.size() + gap, 0);
    file.insert(file.end(), p.file.begin() + p.index_offset, p.file.end());
    auto put = [&](size_t at, uint64_t v) { std::memcpy(file.data() + at, &v, 8); };
    put(16, p.index_offset + gap);
    put(48, file.size());
    put(56, HashBytes64(absl::MakeConstSpan(file.data(), 56)));
    return file;
  }
  // The same model as a 1.0 file (no trailer).
  std::vector<uint8_t> Version10() const {
    auto r = Open(good_.file, "m.bs");
    EXPECT_TRUE(r.ok());
    std::vector<uint8_t> raw = good_.raw;
    raw.resize(raw.size() - TrailerSize((*r)->index()));
    return Assemble(good_, raw, 0);
  }
  // Verify of `file` (written as bad.bs) fails with DATA_LOSS naming the file
  // and `offset`.
  void ExpectVerifyNamesOffset(const std::vector<uint8_t>& file, uint64_t offset, const std::string& what) {
    WriteAll(Path("bad.bs"), file);
    auto v = VerifyPath(Path("bad.bs"), {});
    EXPECT_EQ(v.status().code(), absl::StatusCode::kDataLoss) << what << ": " << v.status();
    EXPECT_THAT(std::string(v.status().message()), HasSubstr("bad.bs")) << what;
    EXPECT_THAT(std::string(v.status().message()),
                HasSubstr(absl::StrCat("non-zero byte at offset ", offset, " in the padding")))
        << what;
  }
};

TEST_F(PaddingTest, CleanFilesOpenAndVerify) {
  const uint64_t align = kGroupAlignment - good_.index_offset % kGroupAlignment;
  const std::vector<std::pair<std::string, std::vector<uint8_t>>> files = {
      {"1.1", good_.file}, {"1.0", Version10()}, {"1.1 with a gap before the index", WithGapBeforeIndex(good_, align)}};
  for (const auto& [what, file] : files) {
    EXPECT_TRUE(Open(file, "clean.bs").ok()) << what;
    WriteAll(Path("clean.bs"), file);
    auto v = VerifyPath(Path("clean.bs"), {});
    EXPECT_TRUE(v.ok()) << what << ": " << v.status();
  }
}

TEST_F(PaddingTest, HeaderPaddingFlipFailsOpenAndVerifyNamingTheOffset) {
  for (const auto& [what, good] : {std::make_pair(std::string("1.1"), good_.file), std::make_pair(std::string("1.0"), Version10())}) {
    for (uint64_t offset : {uint64_t{64}, uint64_t{100}, uint64_t{4095}}) {
      std::vector<uint8_t> file = good;
      file[offset] ^= 0x20;
      const std::string case_name = absl::StrCat(what, " flip at ", offset);
      auto r = Open(file, "bad.bs");
      EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << case_name << ": " << r.status();
      EXPECT_THAT(std::string(r.status().message()),
                  HasSubstr(absl::StrCat("bad.bs: non-zero byte at offset ", offset, " in the padding after the header")))
          << case_name;
      EXPECT_EQ(GetErrorKind(r.status()), ErrorKind::kNone) << case_name;
      ExpectVerifyNamesOffset(file, offset, case_name);
      auto d = DecompressPath(Path("bad.bs"), Path("out.safetensors"), {});
      EXPECT_EQ(d.status().code(), absl::StatusCode::kDataLoss) << case_name;
      EXPECT_FALSE(fs::exists(Path("out.safetensors"))) << case_name;
    }
  }
}

// Padding between groups: only verify reads it (decompress reads blob by blob
// and still rebuilds the right bytes).
TEST_F(PaddingTest, PaddingBetweenGroupsIsCheckedByVerify) {
  for (const auto& [what, good] : {std::make_pair(std::string("1.1"), good_.file), std::make_pair(std::string("1.0"), Version10())}) {
    auto r = Open(good, "m.bs");
    ASSERT_TRUE(r.ok()) << r.status();
    const BsIndex& ix = (*r)->index();
    int gaps = 0;
    for (uint32_t g = 0; g + 1 < ix.groups.size(); ++g) {
      const uint64_t begin = ix.groups[g].offset + ix.groups[g].size, end = ix.groups[g + 1].offset;
      if (begin == end) continue;
      ++gaps;
      for (uint64_t offset : {begin, end - 1}) {
        std::vector<uint8_t> file = good;
        file[offset] ^= 0x01;
        const std::string case_name = absl::StrCat(what, " flip at ", offset, " after group ", g);
        ExpectVerifyNamesOffset(file, offset, case_name);
        ASSERT_TRUE(Open(file, "bad.bs").ok()) << case_name;
        DecompressOptions d;
        d.force = true;
        ASSERT_TRUE(DecompressPath(Path("bad.bs"), Path("out.safetensors"), d).ok()) << case_name;
        EXPECT_EQ(ReadAll(Path("out.safetensors")), ReadAll(Path("m.safetensors"))) << case_name;
      }
    }
    EXPECT_EQ(gaps, 2) << what << ": the model's three groups each fit in less than 4 KiB";
  }
}

TEST_F(PaddingTest, PaddingBeforeTheIndexIsCheckedByVerify) {
  // The writer puts the index right after the last group: the byte before it
  // is the last group's, caught by its group checksum.
  {
    std::vector<uint8_t> file = good_.file;
    file[good_.index_offset - 1] ^= 0x01;
    WriteAll(Path("bad.bs"), file);
    auto v = VerifyPath(Path("bad.bs"), {});
    EXPECT_EQ(v.status().code(), absl::StatusCode::kDataLoss) << v.status();
    EXPECT_THAT(std::string(v.status().message()), HasSubstr("group 2 ('model.layers.1') failed its group checksum"));
  }
  // A file (legal, not what this writer makes) with padding before the index:
  // its first and last byte.
  const uint64_t gap = kGroupAlignment - good_.index_offset % kGroupAlignment;
  for (const auto& [what, p] : {std::make_pair(std::string("1.1"), good_), std::make_pair(std::string("1.0"), Parse(Version10()))}) {
    const std::vector<uint8_t> padded = WithGapBeforeIndex(p, gap);
    for (uint64_t offset : {p.index_offset, p.index_offset + gap - 1}) {
      std::vector<uint8_t> file = padded;
      file[offset] ^= 0x80;
      const std::string case_name = absl::StrCat(what, " flip at ", offset);
      ExpectVerifyNamesOffset(file, offset, case_name);
      WriteAll(Path("bad.bs"), file);
      auto v = VerifyPath(Path("bad.bs"), {});
      EXPECT_THAT(std::string(v.status().message()), HasSubstr("after group 2 ('model.layers.1'), before the index"))
          << case_name;
    }
  }
}

// Verify reads padding in bounded pieces: a 24 MiB gap costs no 24 MiB buffer,
// and a non-zero byte at its very end is still found.
TEST_F(PaddingTest, LargePaddingIsReadInBoundedPieces) {
  constexpr uint64_t kGap = 24ull << 20;
  std::vector<uint8_t> file = WithGapBeforeIndex(good_, kGap);
  WriteAll(Path("big.bs"), file);
  bigsmall::test::ResetLargestAllocation();
  auto v = VerifyPath(Path("big.bs"), {});
  EXPECT_TRUE(v.ok()) << v.status();
  EXPECT_LT(bigsmall::test::LargestAllocation(), size_t{4} << 20);
  const uint64_t last = good_.index_offset + kGap - 1;
  file[last] = 1;
  ExpectVerifyNamesOffset(file, last, "last byte of a 24 MiB gap");
}

// Nothing after the index: a header whose index ends before file_size (the
// bytes after it covered by nothing) is refused at Open.
TEST_F(PaddingTest, IndexMustEndTheFile) {
  std::vector<uint8_t> file = good_.file;
  file.resize(file.size() + 8, 0);
  const uint64_t size = file.size();
  std::memcpy(file.data() + 48, &size, 8);
  const uint64_t sum = HashBytes64(absl::MakeConstSpan(file.data(), 56));
  std::memcpy(file.data() + 56, &sum, 8);
  auto r = Open(file, "bad.bs");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("bad.bs: index does not end the file (8 bytes after it)"));
}

}  // namespace
}  // namespace bigsmall
