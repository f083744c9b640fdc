// Model: layer plan, in-process loads, and faults in the byte source.
#include "daemon/model.h"

#include <unistd.h>

#include <map>

#include "codec/compress.h"
#include "codec/thread_pool.h"
#include "daemon/host_arena.h"
#include "daemon/metrics.h"
#include "gtest/gtest.h"
#include "tests/integration/synthetic_model.h"

namespace bigsmall::daemon {
namespace {

class ModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/model_testXXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    tensors_ = testing::MakeSyntheticTensors({.layers = 3, .hidden = 64, .vocab = 96});
    st_path_ = dir_ + "/m.safetensors";
    ASSERT_TRUE(testing::WriteSafetensors(st_path_, tensors_));
    bs_path_ = dir_ + "/m.safetensors.bs";
    CompressOptions options;
    options.threads = 2;
    auto stats = CompressPath(st_path_, bs_path_, options);
    ASSERT_TRUE(stats.ok()) << stats.status();
    auto shm = ShmDir::Prepare(dir_ + "/shm", "");
    ASSERT_TRUE(shm.ok()) << shm.status();
    arenas_ = MakeHostArenaPool(std::move(*shm));
  }
  void TearDown() override {
    arenas_.reset();
    std::string cmd = "rm -rf " + dir_;
    ASSERT_EQ(system(cmd.c_str()), 0);
  }

  // Loads every layer and compares every tensor with the original bytes.
  void ExpectModelMatches(const Model& model) {
    std::map<std::string, const testing::SyntheticTensor*> by_name;
    for (const auto& t : tensors_) by_name[t.name] = &t;
    ThreadPool pool(2);
    Metrics metrics;
    size_t seen = 0;
    for (int32_t i = -1; i < model.num_layers(); ++i) {
      auto data = model.LoadLayer(i, arenas_.get(), &pool, &metrics);
      ASSERT_TRUE(data.ok()) << data.status();
      const v1::LayerInfo& info =
          i < 0 ? model.description().non_layer() : model.description().layers(i);
      for (const auto& t : info.tensors()) {
        const auto* orig = by_name.at(t.name());
        ASSERT_EQ(t.size(), orig->bytes.size());
        EXPECT_EQ(t.offset() % kTensorAlignment, 0u);
        EXPECT_EQ(0, memcmp((*data)->arena->bytes().data() + t.offset(), orig->bytes.data(),
                            t.size()))
            << t.name();
        ++seen;
      }
    }
    EXPECT_EQ(seen, tensors_.size());
  }

  std::string dir_, st_path_, bs_path_;
  std::shared_ptr<ArenaPool> arenas_;
  std::vector<testing::SyntheticTensor> tensors_;
};

TEST_F(ModelTest, PlansLayersAndLoadsExactBytes) {
  for (const char* io : {"io_uring", "pread"}) {
    ModelOptions options;
    options.io.backend = *ParseIoBackend(io);
    if (options.io.backend == IoBackend::kIoUring && !IoUringAvailable()) continue;
    auto model = Model::Open(bs_path_, options);
    ASSERT_TRUE(model.ok()) << model.status();
    EXPECT_EQ((*model)->num_layers(), 3);
    EXPECT_EQ((*model)->description().num_tensors(), tensors_.size());
    EXPECT_EQ((*model)->layer(0)->name, "model.layers.0");
    EXPECT_EQ((*model)->layer(-1)->tensors.size(), 3u);  // embed, norm, head
    EXPECT_EQ((*model)->layer(3), nullptr);
    ExpectModelMatches(**model);
  }
}

TEST_F(ModelTest, ShortReadsAndStallsStillDecode) {
  ModelOptions options;
  options.fault_spec = "short=777,stall_ms=1";
  auto model = Model::Open(bs_path_, options);
  ASSERT_TRUE(model.ok()) << model.status();
  ExpectModelMatches(**model);
}

TEST_F(ModelTest, FlippedByteIsDataLossNamingTheLayer) {
  ModelOptions clean;
  auto model = Model::Open(bs_path_, clean);
  ASSERT_TRUE(model.ok());
  const LayerPlan* plan = (*model)->layer(1);
  // Damage the middle of layer 1's group only.
  ModelOptions options;
  uint64_t group_offset = 0, group_size = 0;
  {
    auto reader = BsReader::OpenFile(bs_path_);
    ASSERT_TRUE(reader.ok());
    const BsGroup& g = (*reader)->index().groups[plan->groups[0].second];
    group_offset = g.offset;
    group_size = g.size;
  }
  options.fault_spec = absl::StrCat("flip=", group_offset + group_size / 2);
  auto faulty = Model::Open(bs_path_, options);
  ASSERT_TRUE(faulty.ok());
  auto bad = (*faulty)->LoadLayer(1, arenas_.get(), nullptr, nullptr);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss) << bad.status();
  EXPECT_NE(bad.status().message().find("layer 1"), std::string::npos) << bad.status();
  EXPECT_TRUE((*faulty)->LoadLayer(0, arenas_.get(), nullptr, nullptr).ok());
  // EIO on that group is also a clear error.
  options.fault_spec = absl::StrCat("eio=", group_offset + 1, ",eio_after=0");
  auto eio = Model::Open(bs_path_, options);
  if (eio.ok()) {
    EXPECT_FALSE((*eio)->LoadLayer(1, arenas_.get(), nullptr, nullptr).ok());
  }
}

TEST_F(ModelTest, MissingAndTruncatedFiles) {
  EXPECT_EQ(Model::Open(dir_ + "/nope.bs", {}).status().code(), absl::StatusCode::kNotFound);
  std::string cut = dir_ + "/cut.bs";
  std::string cmd = absl::StrCat("head -c 3000 ", bs_path_, " > ", cut);
  ASSERT_EQ(system(cmd.c_str()), 0);
  auto st = Model::Open(cut, {}).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  // A file that is not a .bs at all (bad magic) is a caller error.
  EXPECT_EQ(Model::Open(st_path_, {}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ModelTest, DirectoryWithMissingShardIsNotFound) {
  std::string d = dir_ + "/sharded";
  ASSERT_EQ(system(("mkdir -p " + d + " && cp " + bs_path_ + " " + d +
                    "/model-00001-of-00002.safetensors.bs").c_str()),
            0);
  std::ofstream(d + "/model.safetensors.index.json")
      << R"({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})";
  auto st = Model::Open(d, {}).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(st.message().find("model-00002-of-00002"), std::string::npos) << st;
}

}  // namespace
}  // namespace bigsmall::daemon
