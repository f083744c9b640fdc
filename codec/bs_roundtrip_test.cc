// File- and directory-level round trips through CompressPath / DecompressPath
// / VerifyPath, fine-tune deltas, and hostile .bs files.
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "codec/alloc_hook_for_test.h"
#include "codec/bs_reader.h"
#include "codec/byte_io.h"
#include "codec/byte_source.h"
#include "codec/error_kind.h"
#include "codec/format.h"
#include "codec/hash.h"
#include "codec/model_dir.h"
#include "codec/compress.h"
#include "codec/decompress.h"
#include "gmock/gmock.h"
#include "codec/test_files.h"
#include "codec/thread_pool.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace bigsmall {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

using testing::MakeSafetensors;
using testing::ReadAll;
using testing::TestTensor;
using testing::WriteAll;

std::vector<uint8_t> RandomBf16(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0, 0.05f);
  std::vector<uint8_t> out(2 * n);
  for (size_t i = 0; i < n; ++i) {
    float f = d(rng);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    uint16_t b = static_cast<uint16_t>(u >> 16);
    std::memcpy(out.data() + 2 * i, &b, 2);
  }
  return out;
}

std::vector<TestTensor> LlamaLike(uint32_t seed, int layers = 3) {
  std::vector<TestTensor> t;
  t.push_back({"model.embed_tokens.weight", "BF16", {64, 32}, RandomBf16(64 * 32, seed)});
  for (int l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.push_back({p + "self_attn.q_proj.weight", "BF16", {32, 32}, RandomBf16(1024, seed + 10 * l + 1)});
    t.push_back({p + "mlp.up_proj.weight", "BF16", {64, 32}, RandomBf16(2048, seed + 10 * l + 2)});
    t.push_back({p + "input_layernorm.weight", "F32", {32}, std::vector<uint8_t>(128, 0)});
  }
  t.push_back({"model.norm.weight", "BF16", {32}, RandomBf16(32, seed + 99)});
  t.push_back({"position_ids", "I64", {4}, std::vector<uint8_t>(32, 1)});
  return t;
}

class RoundTripTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("bs_roundtrip_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }
  void MakeDeltaPair(std::vector<TestTensor>* base, std::vector<TestTensor>* ft);
  // Files in the test directory (to check no temporaries are left behind).
  std::vector<std::string> Listing() const {
    std::vector<std::string> v;
    for (const auto& e : fs::directory_iterator(dir_)) v.push_back(e.path().filename().string());
    std::sort(v.begin(), v.end());
    return v;
  }
  fs::path dir_;
};

TEST_F(RoundTripTest, FileRoundTripsInEveryMode) {
  const auto original = MakeSafetensors(LlamaLike(1));
  WriteAll(Path("m.safetensors"), original);
  for (Mode mode : {Mode::kBalanced, Mode::kStorage, Mode::kInference}) {
    CompressOptions co;
    co.mode = mode;
    co.force = true;
    auto cs = CompressPath(Path("m.safetensors"), Path("m.bs"), co);
    ASSERT_TRUE(cs.ok()) << cs.status();
    EXPECT_EQ(cs->input_bytes, original.size());
    DecompressOptions d;
    d.force = true;
    auto ds = DecompressPath(Path("m.bs"), Path("out.safetensors"), d);
    ASSERT_TRUE(ds.ok()) << ds.status();
    EXPECT_EQ(ReadAll(Path("out.safetensors")), original) << ModeName(mode);
    VerifyOptions v;
    v.against = Path("m.safetensors");
    EXPECT_TRUE(VerifyPath(Path("m.bs"), v).ok());
  }
  EXPECT_EQ(ReadAll(Path("m.safetensors")), original);  // input untouched
}

TEST_F(RoundTripTest, IndexGroupsLayersInOrder) {
  WriteAll(Path("m.safetensors"), MakeSafetensors(LlamaLike(2, 12)));
  CompressOptions aligned;
  aligned.layout = Layout::kAligned;
  ASSERT_TRUE(CompressPath(Path("m.safetensors"), Path("m.bs"), aligned).ok());
  auto r = BsReader::OpenFile(Path("m.bs"));
  ASSERT_TRUE(r.ok()) << r.status();
  const auto& ix = (*r)->index();
  ASSERT_EQ(ix.groups.size(), 13u);
  EXPECT_EQ(ix.groups[0].layer, -1);
  EXPECT_EQ(ix.groups[0].tensors.size(), 3u);  // embed, norm, position_ids
  for (int l = 0; l < 12; ++l) {
    EXPECT_EQ(ix.groups[l + 1].layer, l);
    EXPECT_EQ(ix.groups[l + 1].name, "model.layers." + std::to_string(l));
    EXPECT_EQ(ix.groups[l + 1].offset % kGroupAlignment, 0u);
    EXPECT_EQ(ix.groups[l + 1].tensors.size(), 3u);
  }
  // One group read decodes every tensor of that layer.
  auto bytes = (*r)->ReadGroup(5);
  ASSERT_TRUE(bytes.ok());
  for (uint32_t t : ix.groups[5].tensors) {
    std::vector<uint8_t> out(ix.tensors[t].info.size());
    EXPECT_TRUE((*r)->DecodeTensor(t, *bytes, absl::MakeSpan(out)).ok());
  }
}

TEST_F(RoundTripTest, OutputExistsNeedsForceAndNeverOverwritesInput) {
  WriteAll(Path("m.safetensors"), MakeSafetensors(LlamaLike(3)));
  ASSERT_TRUE(CompressPath(Path("m.safetensors"), Path("m.bs"), {}).ok());
  auto again = CompressPath(Path("m.safetensors"), Path("m.bs"), {});
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  CompressOptions force;
  force.force = true;
  auto self = CompressPath(Path("m.safetensors"), Path("m.safetensors"), force);
  EXPECT_EQ(self.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Listing(), (std::vector<std::string>{"m.bs", "m.safetensors"}));
}

TEST_F(RoundTripTest, DirectoryRoundTrips) {
  fs::create_directories(dir_ / "model" / "1_Pooling");
  WriteAll(Path("model/model-00001-of-00002.safetensors"), MakeSafetensors(LlamaLike(4)));
  WriteAll(Path("model/model-00002-of-00002.safetensors"), MakeSafetensors(LlamaLike(5)));
  const std::string index = R"({"weight_map": {}})";
  WriteAll(Path("model/model.safetensors.index.json"), std::vector<uint8_t>(index.begin(), index.end()));
  WriteAll(Path("model/1_Pooling/config.json"), std::vector<uint8_t>{'{', '}'});
  auto cs = CompressPath(Path("model"), Path("model.bs"), {});
  ASSERT_TRUE(cs.ok()) << cs.status();
  EXPECT_EQ(cs->files, 2u);
  EXPECT_TRUE(fs::exists(dir_ / "model.bs" / "model-00001-of-00002.safetensors.bs"));
  auto ds = DecompressPath(Path("model.bs"), Path("back"), {});
  ASSERT_TRUE(ds.ok()) << ds.status();
  for (const char* f : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                        "model.safetensors.index.json", "1_Pooling/config.json"}) {
    EXPECT_EQ(ReadAll(Path(std::string("back/") + f)), ReadAll(Path(std::string("model/") + f))) << f;
  }
  VerifyOptions v;
  v.against = Path("model");
  EXPECT_TRUE(VerifyPath(Path("model.bs"), v).ok());
  WriteAll(Path("model/extra.txt"), {'x'});
  EXPECT_EQ(VerifyPath(Path("model.bs"), v).status().code(), absl::StatusCode::kDataLoss);
}

// base.safetensors and a fine-tune ft.safetensors of it (a few low mantissa
// bits changed, plus a tensor the base lacks), ft compressed as delta.bs.
void RoundTripTest::MakeDeltaPair(std::vector<TestTensor>* base_out, std::vector<TestTensor>* ft_out) {
  auto base = LlamaLike(6);
  auto ft = base;
  for (size_t i = 0; i < ft[1].bytes.size(); i += 2) ft[1].bytes[i] ^= (i % 6 == 0) ? 1 : 0;
  ft.push_back({"lm_head.weight", "BF16", {16, 32}, RandomBf16(512, 77)});
  WriteAll(Path("base.safetensors"), MakeSafetensors(base));
  WriteAll(Path("ft.safetensors"), MakeSafetensors(ft));
  CompressOptions co;
  co.base = Path("base.safetensors");
  ASSERT_TRUE(CompressPath(Path("ft.safetensors"), Path("delta.bs"), co).ok());
  *base_out = std::move(base);
  *ft_out = std::move(ft);
}

TEST_F(RoundTripTest, DeltaAgainstBase) {
  std::vector<TestTensor> base, ft;
  ASSERT_NO_FATAL_FAILURE(MakeDeltaPair(&base, &ft));
  ASSERT_TRUE(CompressPath(Path("ft.safetensors"), Path("plain.bs"), {}).ok());
  auto blob_bytes = [](const std::string& path) {
    auto r = BsReader::OpenFile(path);
    uint64_t total = 0;
    if (r.ok()) {
      for (const auto& t : (*r)->index().tensors) total += t.blob_size;
    }
    return total;
  };
  EXPECT_LT(blob_bytes(Path("delta.bs")), blob_bytes(Path("plain.bs")) / 2);

  auto missing = DecompressPath(Path("delta.bs"), Path("x.safetensors"), {});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("--base"));

  auto other = LlamaLike(7);
  WriteAll(Path("wrong.safetensors"), MakeSafetensors(other));
  DecompressOptions wrong;
  wrong.base = Path("wrong.safetensors");
  auto bad = DecompressPath(Path("delta.bs"), Path("x.safetensors"), wrong);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("wrong --base"));
  EXPECT_FALSE(fs::exists(Path("x.safetensors")));

  DecompressOptions right;
  right.base = Path("base.safetensors");
  ASSERT_TRUE(DecompressPath(Path("delta.bs"), Path("x.safetensors"), right).ok());
  EXPECT_EQ(ReadAll(Path("x.safetensors")), ReadAll(Path("ft.safetensors")));
}

// DecodeTensors: a whole delta file's tensors decoded as one batch (one work
// queue), bases XORed in, every hash checked; a wrong base and damaged group
// bytes fail naming the tensor.
TEST_F(RoundTripTest, DecodeTensorsBatchRebuildsDeltasAndChecksHashes) {
  std::vector<TestTensor> base, ft;
  ASSERT_NO_FATAL_FAILURE(MakeDeltaPair(&base, &ft));
  auto reader = BsReader::OpenFile(Path("delta.bs"));
  ASSERT_TRUE(reader.ok()) << reader.status();
  const BsIndex& ix = (*reader)->index();
  std::vector<std::vector<uint8_t>> groups;
  for (uint32_t g = 0; g < ix.groups.size(); ++g) {
    auto bytes = (*reader)->ReadGroup(g);
    ASSERT_TRUE(bytes.ok());
    groups.push_back(*bytes);
  }
  auto base_bytes = [&](const std::string& name) {
    for (const auto& t : base) {
      if (t.name == name) return t.bytes;
    }
    return std::vector<uint8_t>{};
  };
  std::vector<std::vector<uint8_t>> outs(ix.tensors.size()), bases(ix.tensors.size());
  std::vector<TensorDecodeJob> jobs;
  int deltas = 0;
  for (uint32_t t = 0; t < ix.tensors.size(); ++t) {
    const BsTensor& bt = ix.tensors[t];
    outs[t].assign(bt.info.size(), 0);
    if (bt.is_delta()) {
      bases[t] = base_bytes(bt.info.name);
      ++deltas;
    }
    jobs.push_back({reader->get(), t, groups[bt.group], absl::MakeSpan(outs[t]), bases[t]});
  }
  ASSERT_GT(deltas, 0);
  ThreadPool pool(3);
  DecodeOptions options;
  options.pool = &pool;
  ASSERT_TRUE(DecodeTensors(jobs, options).ok());
  for (uint32_t t = 0; t < ix.tensors.size(); ++t) {
    const auto& name = ix.tensors[t].info.name;
    for (const auto& tt : ft) {
      if (tt.name == name) EXPECT_EQ(outs[t], tt.bytes) << name;
    }
  }
  // A base that is not the one the file was made against.
  for (auto& job : jobs) {
    if (!job.base.empty()) {
      std::vector<uint8_t>& b = bases[job.tensor];
      b[0] ^= 1;
      break;
    }
  }
  absl::Status st = DecodeTensors(jobs, options);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("wrong --base"));
  for (auto& job : jobs) {
    if (!job.base.empty()) {
      bases[job.tensor][0] ^= 1;
      break;
    }
  }
  // Damaged group bytes (the last payload byte of the largest blob):
  // DATA_LOSS naming the file and the tensor.
  uint32_t largest = 0;
  for (uint32_t t = 0; t < ix.tensors.size(); ++t) {
    if (ix.tensors[t].blob_size > ix.tensors[largest].blob_size) largest = t;
  }
  const BsTensor& lt = ix.tensors[largest];
  groups[lt.group][lt.blob_offset - ix.groups[lt.group].offset + lt.blob_size - 1] ^= 0x40;
  st = DecodeTensors(jobs, options);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("delta.bs"));
  EXPECT_THAT(std::string(st.message()), HasSubstr("tensor '" + lt.info.name + "'"));
}

// docs/FORMAT.md §1.1: small originals are packed (no padding: groups back
// to back from offset 64, the index right after the last group); big ones,
// or --layout aligned, keep 4 KiB alignment. Both decode the same; a packed
// file whose groups leave a gap, or a packed flag in a 1.1 file, is refused.
TEST_F(RoundTripTest, PackedLayout) {
  const auto original = MakeSafetensors(LlamaLike(9, 4));
  WriteAll(Path("m.safetensors"), original);
  CompressOptions co;
  ASSERT_TRUE(CompressPath(Path("m.safetensors"), Path("packed.bs"), co).ok());
  co.layout = Layout::kAligned;
  ASSERT_TRUE(CompressPath(Path("m.safetensors"), Path("aligned.bs"), co).ok());
  auto packed = BsReader::OpenFile(Path("packed.bs"));
  auto aligned = BsReader::OpenFile(Path("aligned.bs"));
  ASSERT_TRUE(packed.ok() && aligned.ok());
  const BsIndex& p = (*packed)->index();
  EXPECT_TRUE(p.is_packed());
  EXPECT_FALSE((*aligned)->index().is_packed());
  uint64_t cursor = kFileHeaderSize;
  for (const BsGroup& g : p.groups) {
    EXPECT_EQ(g.offset, cursor);
    cursor = g.offset + g.size;
  }
  EXPECT_EQ(p.index_offset, cursor);
  const uint64_t packed_size = fs::file_size(Path("packed.bs"));
  const uint64_t aligned_size = fs::file_size(Path("aligned.bs"));
  EXPECT_LE(packed_size + 4096 - kFileHeaderSize, aligned_size);
  for (const char* name : {"packed.bs", "aligned.bs"}) {
    DecompressOptions d;
    d.force = true;
    ASSERT_TRUE(DecompressPath(Path(name), Path("out.safetensors"), d).ok()) << name;
    EXPECT_EQ(ReadAll(Path("out.safetensors")), original) << name;
    VerifyOptions v;
    v.against = Path("m.safetensors");
    EXPECT_TRUE(VerifyPath(Path(name), v).ok()) << name;
  }
  // The packed flag in a 1.1 file is an unknown flag there.
  auto bytes = ReadAll(Path("packed.bs"));
  bytes[10] = 1;  // version_minor 1
  StoreLe64(bytes.data() + 56, HashBytes64(absl::MakeConstSpan(bytes.data(), 56)));
  WriteAll(Path("v11.bs"), bytes);
  auto v11 = BsReader::OpenFile(Path("v11.bs"));
  EXPECT_EQ(v11.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(v11.status().message()), HasSubstr("unknown header flags"));
  // The packed flag on an aligned file: its groups leave gaps.
  bytes = ReadAll(Path("aligned.bs"));
  bytes[12] |= static_cast<uint8_t>(kFlagPacked);
  StoreLe64(bytes.data() + 56, HashBytes64(absl::MakeConstSpan(bytes.data(), 56)));
  WriteAll(Path("gaps.bs"), bytes);
  auto gaps = BsReader::OpenFile(Path("gaps.bs"));
  EXPECT_EQ(gaps.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(gaps.status().message()), HasSubstr("bad byte range"));
}

// Each damage on its own must be caught with DATA_LOSS naming the file
// (docs/FORMAT.md "Errors"), leaving nothing behind. A flip in the padding
// (docs/FORMAT.md §1: must be zero) fails verify naming its offset; decompress
// refuses it in the header padding (checked at open) and, elsewhere (padding it
// never reads), rebuilds the right bytes.
TEST_F(RoundTripTest, CorruptFilesFailCleanlyAndLeaveNothing) {
  WriteAll(Path("m.safetensors"), MakeSafetensors(LlamaLike(8)));
  CompressOptions aligned;  // the layout with padding (packed files have none: PackedLayout below)
  aligned.layout = Layout::kAligned;
  ASSERT_TRUE(CompressPath(Path("m.safetensors"), Path("m.bs"), aligned).ok());
  const auto good = ReadAll(Path("m.bs"));
  // Which bytes a decoder decodes: the header, the groups, the index.
  std::vector<bool> read(good.size(), false);
  {
    auto reader = BsReader::OpenFile(Path("m.bs"));
    ASSERT_TRUE(reader.ok()) << reader.status();
    const BsIndex& ix = (*reader)->index();
    for (size_t i = 0; i < kFileHeaderSize; ++i) read[i] = true;
    for (const BsGroup& g : ix.groups) {
      for (uint64_t i = g.offset; i < g.offset + g.size; ++i) read[i] = true;
    }
    for (uint64_t i = ix.index_offset; i < good.size(); ++i) read[i] = true;
  }
  ASSERT_NE(std::find(read.begin() + kGroupAlignment, read.end(), false), read.end())
      << "the test needs padding between groups";
  std::mt19937 rng(1);
  int data_flips = 0, padding_flips = 0, header_padding_flips = 0;
  for (int trial = 0; trial < 90; ++trial) {
    auto bad = good;
    std::string what;
    bool harmless = false;
    if (trial % 3 == 0) {
      bad.resize(rng() % bad.size());
      what = absl::StrCat("truncated to ", bad.size());
    } else {
      // Alternate: a byte the decoder reads, then a padding byte (in turn
      // in the header padding and after it).
      const bool want_data = trial % 3 == 1;
      const bool want_header = padding_flips % 2 == 0;
      size_t pos;
      do {
        pos = rng() % bad.size();
      } while (read[pos] != want_data || (!want_data && (pos < kGroupAlignment) != want_header));
      bad[pos] ^= static_cast<uint8_t>(1 + rng() % 255);
      const bool padding = !want_data;
      harmless = padding && pos >= kGroupAlignment;
      (padding ? padding_flips : data_flips)++;
      header_padding_flips += padding && !harmless ? 1 : 0;
      what = absl::StrCat(padding ? "padding" : "data", " flip at ", pos);
      if (padding) {
        WriteAll(Path("bad.bs"), bad);
        auto vst = VerifyPath(Path("bad.bs"), {});
        EXPECT_EQ(vst.status().code(), absl::StatusCode::kDataLoss) << what << ": " << vst.status();
        EXPECT_THAT(std::string(vst.status().message()),
                    HasSubstr(absl::StrCat("bad.bs: non-zero byte at offset ", pos, " in the padding")))
            << what;
      }
    }
    WriteAll(Path("bad.bs"), bad);
    auto st = DecompressPath(Path("bad.bs"), Path("out.safetensors"), {});
    if (harmless) {
      ASSERT_TRUE(st.ok()) << what << ": " << st.status();
      EXPECT_EQ(ReadAll(Path("out.safetensors")), ReadAll(Path("m.safetensors"))) << what;
      fs::remove(Path("out.safetensors"));
    } else {
      EXPECT_EQ(st.status().code(), absl::StatusCode::kDataLoss) << what << ": " << st.status();
      EXPECT_THAT(std::string(st.status().message()), HasSubstr("bad.bs")) << what;
      EXPECT_FALSE(fs::exists(Path("out.safetensors"))) << what;
      auto vst = VerifyPath(Path("bad.bs"), {});
      EXPECT_EQ(vst.status().code(), absl::StatusCode::kDataLoss) << what << ": " << vst.status();
    }
  }
  EXPECT_EQ(data_flips, 30);
  EXPECT_EQ(padding_flips, 30);
  EXPECT_EQ(header_padding_flips, 15);
  EXPECT_EQ(Listing(), (std::vector<std::string>{"bad.bs", "m.bs", "m.safetensors"}));
}

// A zstd frame of `n` zero bytes made of RLE blocks (RFC 8878): 4 bytes per
// 128 KiB, so 1 GiB takes 32 KiB, with the content size in the frame header.
std::vector<uint8_t> ZeroFrame(uint64_t n) {
  std::vector<uint8_t> f = {0x28, 0xb5, 0x2f, 0xfd, 0xe0};  // magic; FCS 8 bytes, single segment
  for (int i = 0; i < 8; ++i) f.push_back(static_cast<uint8_t>(n >> (8 * i)));
  uint64_t left = n;
  do {
    const uint32_t size = static_cast<uint32_t>(std::min<uint64_t>(left, 128 << 10));
    left -= size;
    const uint32_t header = (left == 0 ? 1u : 0u) | (1u << 1) | (size << 3);  // last | RLE | size
    f.insert(f.end(), {static_cast<uint8_t>(header), static_cast<uint8_t>(header >> 8),
                       static_cast<uint8_t>(header >> 16), 0});
  } while (left > 0);
  return f;
}

// A .bs whose header declares an index of `raw_size` bytes stored as `frame`.
std::vector<uint8_t> FileWithIndex(const std::vector<uint8_t>& frame, uint64_t raw_size) {
  std::vector<uint8_t> file(kGroupAlignment, 0);
  std::copy(kMagic.begin(), kMagic.end(), file.begin());
  file[8] = kFormatVersionMajor;
  file.insert(file.end(), frame.begin(), frame.end());
  auto put = [&](size_t at, uint64_t v) { std::memcpy(file.data() + at, &v, 8); };
  put(16, kGroupAlignment);
  put(24, frame.size());
  put(32, raw_size);
  put(40, HashBytes64(frame));
  put(48, file.size());
  put(56, HashBytes64(absl::MakeConstSpan(file.data(), 56)));
  return file;
}

// Regression: a 36 KB file declaring a 1 GiB index made BsReader allocate
// (and zero, and inflate into) 1 GiB before finding the index invalid.
TEST(BsReaderLimits, SmallFileDeclaringHugeIndexFailsFastWithoutAllocating) {
  const std::vector<uint8_t> file = FileWithIndex(ZeroFrame(kMaxIndexSize), kMaxIndexSize);
  ASSERT_LT(file.size(), 40u << 10);
  test::ResetLargestAllocation();
  auto reader = BsReader::Open(MakeMemorySource(file, "huge_index.bs"));
  const size_t largest = test::LargestAllocation();
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kDataLoss) << reader.status();
  EXPECT_THAT(std::string(reader.status().message()), HasSubstr("huge_index.bs"));
  EXPECT_LT(largest, size_t{64} << 20) << "largest single allocation while opening";
}

// The frame must declare exactly index_raw_size (checked before allocating),
// and be one frame filling the stored bytes.
TEST(BsReaderLimits, FrameContentSizeMustMatchTheHeader) {
  for (uint64_t declared : {uint64_t{1000}, uint64_t{4000}}) {
    auto st = BsReader::Open(MakeMemorySource(FileWithIndex(ZeroFrame(2000), declared), "x.bs")).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr("zstd frame")) << st;
  }
  auto two = ZeroFrame(1000);
  const auto second = ZeroFrame(1000);
  two.insert(two.end(), second.begin(), second.end());
  auto st = BsReader::Open(MakeMemorySource(FileWithIndex(two, 1000), "x.bs")).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("zstd frame")) << st;
  // Within the limits the frame is inflated and the (empty) index rejected.
  st = BsReader::Open(MakeMemorySource(FileWithIndex(ZeroFrame(2000), 2000), "x.bs")).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_THAT(std::string(st.message()), Not(HasSubstr("zstd frame"))) << st;
}

TEST(BsReaderLimits, MaxIndexRawSize) {
  EXPECT_EQ(MaxIndexRawSize(0), kIndexRatioFloor);
  EXPECT_EQ(MaxIndexRawSize(100), kIndexRatioFloor);
  EXPECT_EQ(MaxIndexRawSize(1 << 20), uint64_t{1} << 30);
  EXPECT_EQ(MaxIndexRawSize(uint64_t{1} << 40), kMaxIndexSize);
  EXPECT_EQ(MaxIndexRawSize(~uint64_t{0}), kMaxIndexSize);
}

// docs/FORMAT.md "Errors": bad magic and an unknown major version are
// DATA_LOSS (§3), with a kind the CLI turns into its own exit code.
TEST(BsReaderLimits, BadMagicAndUnknownVersionAreDataLossWithAKind) {
  auto file = FileWithIndex(ZeroFrame(2000), 2000);
  auto magic = file;
  magic[0] = 'X';
  auto st = BsReader::Open(MakeMemorySource(magic, "m.bs")).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_EQ(GetErrorKind(st), ErrorKind::kNotBsFile);
  auto version = file;
  version[8] = 9;
  const uint64_t sum = HashBytes64(absl::MakeConstSpan(version.data(), 56));
  std::memcpy(version.data() + 56, &sum, 8);
  st = BsReader::Open(MakeMemorySource(version, "v.bs")).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_EQ(GetErrorKind(st), ErrorKind::kUnsupportedVersion);
  EXPECT_THAT(std::string(st.message()), HasSubstr("not supported"));
  // Other damage carries no kind.
  auto flags = file;
  flags[12] = 0x80;
  const uint64_t flags_sum = HashBytes64(absl::MakeConstSpan(flags.data(), 56));
  std::memcpy(flags.data() + 56, &flags_sum, 8);
  st = BsReader::Open(MakeMemorySource(flags, "f.bs")).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_EQ(GetErrorKind(st), ErrorKind::kNone);
}

TEST_F(RoundTripTest, RejectsNonBsAndMissingFiles) {
  WriteAll(Path("junk.bs"), std::vector<uint8_t>(100, 'x'));
  auto st = DecompressPath(Path("junk.bs"), Path("o"), {});
  EXPECT_EQ(st.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(GetErrorKind(st.status()), ErrorKind::kNotBsFile);
  EXPECT_THAT(std::string(st.status().message()), HasSubstr("not a .bs file"));
  EXPECT_EQ(DecompressPath(Path("nope.bs"), Path("o"), {}).status().code(), absl::StatusCode::kNotFound);
  WriteAll(Path("bad.safetensors"), {1, 2, 3});
  EXPECT_FALSE(CompressPath(Path("bad.safetensors"), Path("bad.bs"), {}).ok());
  EXPECT_FALSE(fs::exists(Path("bad.bs")));
}

// docs/FORMAT.md §10.1 symlink-refused: links are followed inside the model
// directory and from a Hugging Face snapshot into its repo's blobs/, nowhere
// else unless asked; a directory reached twice is refused (no 42 copies).
TEST_F(RoundTripTest, ModelDirectorySymlinkPolicy) {
  const fs::path repo = dir_ / "models--org--m";
  fs::create_directories(repo / "blobs");
  fs::create_directories(repo / "snapshots" / "rev");
  WriteAll((repo / "blobs" / "b1").string(), {1, 2, 3});
  fs::create_symlink("../../blobs/b1", repo / "snapshots" / "rev" / "config.json");
  auto listed = ListModelDirectory((repo / "snapshots" / "rev").string());
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].relative, "config.json");
  EXPECT_EQ((*listed)[0].size, 3u);
  EXPECT_EQ(fs::path((*listed)[0].source).filename(), "b1");

  const fs::path model = dir_ / "model";
  fs::create_directories(model / "sub");
  WriteAll((model / "sub" / "a.json").string(), {7});
  WriteAll(Path("secret"), {9, 9});
  fs::create_symlink("sub/a.json", model / "inside.json");
  ASSERT_TRUE(ListModelDirectory(model.string()).ok());
  fs::create_symlink(fs::path(Path("secret")), model / "tokenizer.json");
  auto st = ListModelDirectory(model.string()).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("tokenizer.json"));
  ListOptions follow;
  follow.follow_symlinks = true;
  auto all = ListModelDirectory(model.string(), follow);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->size(), 3u);
  fs::remove(model / "tokenizer.json");
  // The snapshot rule is for snapshots only: a plain dir's link into a
  // sibling blobs/ is outside.
  fs::create_symlink(repo / "blobs" / "b1", model / "b1");
  EXPECT_EQ(ListModelDirectory(model.string()).status().code(), absl::StatusCode::kFailedPrecondition);
  fs::remove(model / "b1");
  fs::create_directory_symlink(".", model / "sub" / "loop");
  st = ListModelDirectory(model.string()).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("reached twice"));
  st = ListModelDirectory(model.string(), follow).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << "loops are refused even when following";
}

// A missing output directory is NOT_FOUND with ErrorKind::kOutput (the CLI
// then says so and exits 1, never "input not found").
TEST_F(RoundTripTest, MissingOutputDirectoryIsAnOutputError) {
  WriteAll(Path("m.safetensors"), MakeSafetensors(LlamaLike(3, 1)));
  auto st = CompressPath(Path("m.safetensors"), Path("nope/m.bs"), {}).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound) << st;
  EXPECT_EQ(GetErrorKind(st), ErrorKind::kOutput);
  EXPECT_THAT(std::string(st.message()), HasSubstr("output directory"));
  // A missing input has no kind.
  st = CompressPath(Path("none.safetensors"), Path("x.bs"), {}).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(GetErrorKind(st), ErrorKind::kNone);
}

}  // namespace
}  // namespace bigsmall
