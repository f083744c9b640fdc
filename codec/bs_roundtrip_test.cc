// File- and directory-level round trips through CompressPath / DecompressPath
// / VerifyPath, fine-tune deltas, and hostile .bs files.
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "codec/bs_reader.h"
#include "codec/compress.h"
#include "codec/decompress.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace bigsmall {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

struct TestTensor {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  std::vector<uint8_t> bytes;
};

std::vector<uint8_t> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void WriteAll(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

// A safetensors file, header padded with spaces to 8 bytes like the reference writer.
std::vector<uint8_t> MakeSafetensors(const std::vector<TestTensor>& tensors, bool metadata = true) {
  nlohmann::ordered_json h;
  if (metadata) h["__metadata__"] = {{"format", "pt"}};
  uint64_t off = 0;
  for (const auto& t : tensors) {
    h[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.bytes.size()}}};
    off += t.bytes.size();
  }
  std::string json = h.dump();
  while (json.size() % 8) json.push_back(' ');
  std::vector<uint8_t> out(8);
  uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  out.insert(out.end(), json.begin(), json.end());
  for (const auto& t : tensors) out.insert(out.end(), t.bytes.begin(), t.bytes.end());
  return out;
}

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
  ASSERT_TRUE(CompressPath(Path("m.safetensors"), Path("m.bs"), {}).ok());
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

TEST_F(RoundTripTest, DeltaAgainstBase) {
  auto base = LlamaLike(6);
  auto ft = base;
  // Fine-tune: a few low mantissa bits change, plus a tensor the base lacks.
  for (size_t i = 0; i < ft[1].bytes.size(); i += 2) ft[1].bytes[i] ^= (i % 6 == 0) ? 1 : 0;
  ft.push_back({"lm_head.weight", "BF16", {16, 32}, RandomBf16(512, 77)});
  WriteAll(Path("base.safetensors"), MakeSafetensors(base));
  WriteAll(Path("ft.safetensors"), MakeSafetensors(ft));
  CompressOptions co;
  co.base = Path("base.safetensors");
  ASSERT_TRUE(CompressPath(Path("ft.safetensors"), Path("delta.bs"), co).ok());
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

TEST_F(RoundTripTest, CorruptFilesFailCleanlyAndLeaveNothing) {
  WriteAll(Path("m.safetensors"), MakeSafetensors(LlamaLike(8)));
  ASSERT_TRUE(CompressPath(Path("m.safetensors"), Path("m.bs"), {}).ok());
  const auto good = ReadAll(Path("m.bs"));
  std::mt19937 rng(1);
  int failures = 0;
  for (int trial = 0; trial < 60; ++trial) {
    auto bad = good;
    if (trial % 3 == 0) {
      bad.resize(rng() % bad.size());
    } else {
      // Flip a byte that carries data (header, a blob or the index), never only padding.
      size_t pos;
      do {
        pos = rng() % bad.size();
      } while (good[pos] == 0 && pos > 64 && rng() % 8);
      bad[pos] ^= static_cast<uint8_t>(1 + rng() % 255);
    }
    WriteAll(Path("bad.bs"), bad);
    auto st = DecompressPath(Path("bad.bs"), Path("out.safetensors"), {});
    if (!st.ok()) {
      ++failures;
      EXPECT_THAT(std::string(st.status().message()), HasSubstr("bad.bs"));
      EXPECT_FALSE(fs::exists(Path("out.safetensors")));
    } else {
      // A flip in alignment padding changes nothing the decoder reads.
      EXPECT_EQ(ReadAll(Path("out.safetensors")), ReadAll(Path("m.safetensors")));
      fs::remove(Path("out.safetensors"));
    }
  }
  EXPECT_GT(failures, 30);
  EXPECT_EQ(Listing(), (std::vector<std::string>{"bad.bs", "m.bs", "m.safetensors"}));
}

TEST_F(RoundTripTest, RejectsNonBsAndMissingFiles) {
  WriteAll(Path("junk.bs"), std::vector<uint8_t>(100, 'x'));
  auto st = DecompressPath(Path("junk.bs"), Path("o"), {});
  EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.status().message()), HasSubstr("not a .bs file"));
  EXPECT_EQ(DecompressPath(Path("nope.bs"), Path("o"), {}).status().code(), absl::StatusCode::kNotFound);
  WriteAll(Path("bad.safetensors"), {1, 2, 3});
  EXPECT_FALSE(CompressPath(Path("bad.safetensors"), Path("bad.bs"), {}).ok());
  EXPECT_FALSE(fs::exists(Path("bad.bs")));
}

}  // namespace
}  // namespace bigsmall
