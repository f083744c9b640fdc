// DecompressPath's file writer: batches decoded straight into the output
// file's pages (or, where that cannot be, into reused buffers that are
// written), the whole-file hash, and what a failure leaves behind.
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "codec/alloc_hook_for_test.h"
#include "codec/bs_reader.h"
#include "codec/compress.h"
#include "codec/decompress.h"
#include "codec/error_kind.h"
#include "codec/fast_hash.h"
#include "codec/file_util.h"
#include "codec/test_files.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace bigsmall {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
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
    const uint16_t b = static_cast<uint16_t>(u >> 16);
    std::memcpy(out.data() + 2 * i, &b, 2);
  }
  return out;
}

// Layers of tensors of different sizes and dtypes (one empty), in an order
// whose groups interleave in the file (embed first, lm_head last, both in
// the non-layer group).
std::vector<TestTensor> Model(uint32_t seed, int layers = 4) {
  std::vector<TestTensor> t;
  t.push_back({"model.embed_tokens.weight", "BF16", {128, 64}, RandomBf16(128 * 64, seed)});
  for (int l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.push_back({p + "self_attn.q_proj.weight", "BF16", {64, 64}, RandomBf16(4096, seed + 10 * l + 1)});
    t.push_back({p + "mlp.up_proj.weight", "BF16", {96, 64}, RandomBf16(96 * 64, seed + 10 * l + 2)});
    t.push_back({p + "input_layernorm.weight", "F32", {64}, std::vector<uint8_t>(256, 0)});
    t.push_back({p + "empty", "F32", {0}, {}});
  }
  t.push_back({"lm_head.weight", "BF16", {128, 64}, RandomBf16(128 * 64, seed + 99)});
  return t;
}

class DecompressTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("bs_decompress_" + std::to_string(getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }
  std::vector<std::string> Listing() const {
    std::vector<std::string> v;
    for (const auto& e : fs::directory_iterator(dir_)) v.push_back(e.path().filename().string());
    std::sort(v.begin(), v.end());
    return v;
  }
  fs::path dir_;
};

TEST_F(DecompressTest, EveryBatchSizeRebuildsTheFileInPlaceAndBuffered) {
  WriteAll(Path("m.safetensors"), MakeSafetensors(Model(1)));
  ASSERT_TRUE(CompressPath(Path("m.safetensors"), Path("m.bs"), {}).ok());
  const auto original = ReadAll(Path("m.safetensors"));
  // 1: a batch per tensor; 20000: a few tensors each; 0: the default (one batch here).
  for (uint64_t batch : {1ull, 20000ull, 0ull}) {
    for (bool in_place : {true, false}) {
      for (int threads : {1, 3}) {
        const std::string what = absl::StrCat("batch ", batch, " in_place ", in_place, " threads ", threads);
        DecompressOptions o;
        o.batch_bytes = batch;
        o.in_place = in_place;
        o.threads = threads;
        std::vector<uint64_t> progress;
        o.progress = [&](uint64_t done, uint64_t total) {
          EXPECT_EQ(total, original.size());
          progress.push_back(done);
        };
        auto st = DecompressPath(Path("m.bs"), Path("out.safetensors"), o);
        ASSERT_TRUE(st.ok()) << what << ": " << st.status();
        EXPECT_EQ(st->output_bytes, original.size()) << what;
        EXPECT_EQ(ReadAll(Path("out.safetensors")), original) << what;
        ASSERT_FALSE(progress.empty()) << what;
        EXPECT_TRUE(std::is_sorted(progress.begin(), progress.end())) << what;
        EXPECT_EQ(progress.back(), original.size()) << what;
        fs::remove(Path("out.safetensors"));
      }
    }
  }
  EXPECT_EQ(Listing(), (std::vector<std::string>{"m.bs", "m.safetensors"}));
}

// Decoding in place: no heap buffer the size of a tensor (before, every
// tensor was decoded into a vector of its own and then written).
TEST_F(DecompressTest, DecodesStraightIntoTheOutputFile) {
  std::vector<TestTensor> t = Model(2, 1);
  t.push_back({"big", "BF16", {2048, 1024}, RandomBf16(2048 * 1024, 5)});  // 4 MiB
  WriteAll(Path("m.safetensors"), MakeSafetensors(t));
  ASSERT_TRUE(CompressPath(Path("m.safetensors"), Path("m.bs"), {}).ok());
  DecompressOptions o;
  o.threads = 2;
  test::ResetLargestAllocation();
  auto st = DecompressPath(Path("m.bs"), Path("out.safetensors"), o);
  const size_t largest = test::LargestAllocation();
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(ReadAll(Path("out.safetensors")), ReadAll(Path("m.safetensors")));
  EXPECT_LT(largest, 1u << 20) << "a tensor-sized buffer was allocated: " << largest << " bytes";

  // Buffered, a batch is decoded into a buffer (reused: allocated once per
  // buffer, not per tensor).
  fs::remove(Path("out.safetensors"));
  o.in_place = false;
  test::ResetLargestAllocation();
  st = DecompressPath(Path("m.bs"), Path("out.safetensors"), o);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_GE(test::LargestAllocation(), 4u << 20);
  EXPECT_EQ(ReadAll(Path("out.safetensors")), ReadAll(Path("m.safetensors")));
}

// A tensor damaged in the last batch fails (naming it) after earlier batches
// were written, and nothing is left: no output, no temporary.
TEST_F(DecompressTest, CorruptTensorInALateBatchLeavesNothing) {
  WriteAll(Path("m.safetensors"), MakeSafetensors(Model(3)));
  ASSERT_TRUE(CompressPath(Path("m.safetensors"), Path("m.bs"), {}).ok());
  auto bytes = ReadAll(Path("m.bs"));
  {
    auto reader = BsReader::OpenFile(Path("m.bs"));
    ASSERT_TRUE(reader.ok()) << reader.status();
    const BsTensor& last = (*reader)->index().tensors.back();
    ASSERT_EQ(last.info.name, "lm_head.weight");
    ASSERT_GT(last.blob_size, 64u);
    bytes[last.blob_offset + last.blob_size - 7] ^= 0x5a;  // in the coded payload
  }
  WriteAll(Path("bad.bs"), bytes);
  for (uint64_t batch : {1ull, 20000ull}) {
    for (bool in_place : {true, false}) {
      const std::string what = absl::StrCat("batch ", batch, " in_place ", in_place);
      DecompressOptions o;
      o.batch_bytes = batch;
      o.in_place = in_place;
      o.threads = 2;
      auto st = DecompressPath(Path("bad.bs"), Path("out.safetensors"), o);
      EXPECT_EQ(st.status().code(), absl::StatusCode::kDataLoss) << what << ": " << st.status();
      EXPECT_THAT(std::string(st.status().message()), HasSubstr("bad.bs")) << what;
      EXPECT_THAT(std::string(st.status().message()), HasSubstr("'lm_head.weight'")) << what;
      EXPECT_EQ(Listing(), (std::vector<std::string>{"bad.bs", "m.bs", "m.safetensors"})) << what;
    }
  }
}

TEST_F(DecompressTest, DeltaRebuildsThroughSmallBatches) {
  auto base = Model(4);
  auto ft = base;
  for (size_t i = 0; i < ft[1].bytes.size(); i += 2) ft[1].bytes[i] ^= (i % 6 == 0) ? 1 : 0;
  ft.push_back({"zz_new.weight", "BF16", {16, 32}, RandomBf16(512, 77)});  // not in the base
  WriteAll(Path("base.safetensors"), MakeSafetensors(base));
  WriteAll(Path("ft.safetensors"), MakeSafetensors(ft));
  CompressOptions co;
  co.base = Path("base.safetensors");
  ASSERT_TRUE(CompressPath(Path("ft.safetensors"), Path("delta.bs"), co).ok());
  for (bool in_place : {true, false}) {
    DecompressOptions o;
    o.base = Path("base.safetensors");
    o.batch_bytes = 10000;
    o.in_place = in_place;
    auto st = DecompressPath(Path("delta.bs"), Path("x.safetensors"), o);
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_EQ(ReadAll(Path("x.safetensors")), ReadAll(Path("ft.safetensors")));
    fs::remove(Path("x.safetensors"));
    o.base = Path("ft.safetensors");  // the wrong base
    st = DecompressPath(Path("delta.bs"), Path("x.safetensors"), o);
    EXPECT_EQ(st.status().code(), absl::StatusCode::kFailedPrecondition) << st.status();
    EXPECT_FALSE(fs::exists(Path("x.safetensors")));
  }
}

// An output the process may not make that large (RLIMIT_FSIZE: fallocate and
// pwrite fail with EFBIG) is an output error, and nothing is left. In a child
// process: the limit is per process.
TEST_F(DecompressTest, OutputThatCannotGrowIsAnOutputErrorAndLeavesNothing) {
  WriteAll(Path("m.safetensors"), MakeSafetensors(Model(5)));
  ASSERT_TRUE(CompressPath(Path("m.safetensors"), Path("m.bs"), {}).ok());
  for (bool in_place : {true, false}) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      signal(SIGXFSZ, SIG_IGN);
      struct rlimit limit = {20000, 20000};
      setrlimit(RLIMIT_FSIZE, &limit);
      DecompressOptions o;
      o.batch_bytes = 4096;
      o.in_place = in_place;
      o.threads = 1;
      auto st = DecompressPath(Path("m.bs"), Path("out.safetensors"), o);
      const bool ok = !st.ok() && GetErrorKind(st.status()) == ErrorKind::kOutput &&
                      std::string(st.status().message()).find("File too large") != std::string::npos;
      if (!ok) std::fprintf(stderr, "in_place %d: %s\n", in_place, st.status().ToString().c_str());
      _exit(ok ? 0 : 1);
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status)) << "in_place " << in_place;
    EXPECT_EQ(WEXITSTATUS(status), 0) << "in_place " << in_place;
    EXPECT_EQ(Listing(), (std::vector<std::string>{"m.bs", "m.safetensors"})) << "in_place " << in_place;
  }
}

// SIGBUS (a mapped input truncated under the decoder) removes the
// temporaries like SIGINT/SIGTERM do, and the process still dies of it.
TEST_F(DecompressTest, SigbusRemovesTemporaries) {
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    InstallTempCleanupOnSignals();
    auto f = AtomicFile::Create(Path("out.safetensors"), false);
    if (!f.ok() || !f->Write(std::vector<uint8_t>(10, 1)).ok()) _exit(3);
    raise(SIGBUS);
    _exit(4);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status)) << "exit " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  EXPECT_EQ(WTERMSIG(status), SIGBUS);
  EXPECT_EQ(Listing(), std::vector<std::string>{});
}

// The AVX2 build of XXH3-128 equals libxxhash's on every length class (0,
// 1-16, 17-128, 129-240, long; stripes and blocks) and however the input is
// split into updates.
TEST(FastHashTest, EqualsHashBytes128ForEveryLengthAndSplit) {
  std::mt19937 rng(9);
  std::vector<uint8_t> data(3 << 20);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  {
    FastStreamingHash128 probe;
    if (__builtin_cpu_supports("avx2")) EXPECT_TRUE(probe.simd());
  }
  for (size_t n : {0, 1, 3, 4, 8, 9, 16, 17, 100, 128, 129, 200, 240, 241, 1023, 1024, 1025, 65536, 65537,
                   (3 << 20) - 5}) {
    const auto bytes = absl::MakeConstSpan(data.data(), n);
    const Hash128 want = HashBytes128(bytes);
    for (int trial = 0; trial < 4; ++trial) {
      FastStreamingHash128 h;
      size_t at = 0;
      while (at < n) {
        const size_t take = trial == 0 ? n : std::min<size_t>(n - at, 1 + rng() % (trial == 1 ? 64 : 300000));
        h.Update(bytes.subspan(at, take));
        at += take;
      }
      EXPECT_EQ(h.Finish(), want) << "length " << n << " trial " << trial;
    }
  }
}

}  // namespace
}  // namespace bigsmall
