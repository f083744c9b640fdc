// Model: layer plan, in-process loads, and faults in the byte source.
#include "daemon/model.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <functional>
#include <map>
#include <random>

#include "codec/compress.h"
#include "codec/thread_pool.h"
#include "daemon/host_arena.h"
#include "daemon/metrics.h"
#include "daemon/tensor_copy.h"
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

  // Loads every layer of `model` and compares each tensor with `tensors`.
  void ExpectTensorsMatch(const Model& model, const std::vector<testing::SyntheticTensor>& tensors) {
    std::map<std::string, const testing::SyntheticTensor*> by_name;
    for (const auto& t : tensors) by_name[t.name] = &t;
    size_t seen = 0;
    for (int32_t i = -1; i < model.num_layers(); ++i) {
      auto data = model.LoadLayer(i, arenas_.get(), nullptr, nullptr);
      ASSERT_TRUE(data.ok()) << data.status();
      const v1::LayerInfo& info =
          i < 0 ? model.description().non_layer() : model.description().layers(i);
      for (const auto& t : info.tensors()) {
        ASSERT_EQ(by_name.count(t.name()), 1u) << t.name();
        const auto* orig = by_name.at(t.name());
        ASSERT_EQ(t.size(), orig->bytes.size());
        EXPECT_EQ(0, memcmp((*data)->arena->bytes().data() + t.offset(), orig->bytes.data(),
                            t.size()))
            << t.name();
        ++seen;
      }
    }
    EXPECT_EQ(seen, tensors.size());
  }

  std::string dir_, st_path_, bs_path_;
  std::shared_ptr<ArenaPool> arenas_;
  std::vector<testing::SyntheticTensor> tensors_;
};

// Plans the test model read with `backend` and loads every layer exactly.
void PlansAndLoadsWith(IoBackend backend, const std::string& bs_path,
                       const std::function<void(const Model&)>& check_model, size_t tensors) {
  ModelOptions options;
  options.io.backend = backend;
  auto model = Model::Open(bs_path, options);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->io_backend(), backend);
  EXPECT_EQ((*model)->num_layers(), 3);
  EXPECT_EQ((*model)->description().num_tensors(), tensors);
  EXPECT_EQ((*model)->layer(0)->name, "model.layers.0");
  EXPECT_EQ((*model)->layer(-1)->tensors.size(), 3u);  // embed, norm, head
  EXPECT_EQ((*model)->layer(3), nullptr);
  check_model(**model);
}

TEST_F(ModelTest, PlansLayersAndLoadsExactBytesWithPread) {
  PlansAndLoadsWith(IoBackend::kPread, bs_path_, [&](const Model& m) { ExpectModelMatches(m); },
                    tensors_.size());
}

TEST_F(ModelTest, PlansLayersAndLoadsExactBytesWithIoUring) {
  // Its own test: the pread case runs whether or not io_uring can.
  if (!IoUringAvailable()) GTEST_SKIP() << "io_uring refused here: " << IoUringStatus();
  PlansAndLoadsWith(IoBackend::kIoUring, bs_path_, [&](const Model& m) { ExpectModelMatches(m); },
                    tensors_.size());
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
  // A file that is not a .bs at all: bad magic is DATA_LOSS (docs/FORMAT.md).
  EXPECT_EQ(Model::Open(st_path_, {}).status().code(), absl::StatusCode::kDataLoss);
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

// A T5-style encoder-decoder: encoder.block.N and decoder.block.N are
// different layers (they were served as one layer named encoder.block.N),
// ordered by number, then by name; the same group split over two shards is
// one layer.
TEST_F(ModelTest, EncoderDecoderLayersAreKeptApartByGroup) {
  std::vector<testing::SyntheticTensor> t5;
  std::mt19937 rng(7);
  auto add = [&](const std::string& name, std::vector<uint64_t> shape) {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    t5.push_back({name, "F32", shape, testing::RandomWeights("F32", n, rng, 0.05f)});
  };
  add("shared.weight", {64, 16});
  for (int l = 0; l < 2; ++l) {
    add(absl::StrCat("encoder.block.", l, ".layer.0.SelfAttention.q.weight"), {16, 16});
    add(absl::StrCat("encoder.block.", l, ".layer.1.DenseReluDense.wi.weight"), {32, 16});
    add(absl::StrCat("decoder.block.", l, ".layer.0.SelfAttention.q.weight"), {16, 16});
    add(absl::StrCat("decoder.block.", l, ".layer.2.DenseReluDense.wi.weight"), {32, 16});
  }
  add("encoder.final_layer_norm.weight", {16});
  std::string st = dir_ + "/t5.safetensors";
  ASSERT_TRUE(testing::WriteSafetensors(st, t5));
  CompressOptions options;
  options.threads = 2;
  ASSERT_TRUE(CompressPath(st, st + ".bs", options).ok());
  auto model = Model::Open(st + ".bs", {});
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_EQ((*model)->num_layers(), 4);
  std::vector<std::string> names;
  for (int i = 0; i < 4; ++i) {
    const LayerPlan* plan = (*model)->layer(i);
    names.push_back(plan->name);
    EXPECT_EQ(plan->tensors.size(), 2u) << plan->name;
    for (const auto& info : (*model)->description().layers(i).tensors()) {
      EXPECT_EQ(info.name().rfind(plan->name + ".", 0), 0u) << info.name() << " in " << plan->name;
    }
  }
  EXPECT_EQ(names, (std::vector<std::string>{"decoder.block.0", "encoder.block.0",
                                             "decoder.block.1", "encoder.block.1"}));
  EXPECT_EQ((*model)->layer(-1)->tensors.size(), 2u);  // shared, final norm
  ExpectTensorsMatch(**model, t5);

  // The same layout split over two shards (encoder / decoder + the rest):
  // still four layers, each whole.
  std::vector<testing::SyntheticTensor> enc, dec;
  for (const auto& t : t5) (t.name.rfind("encoder.", 0) == 0 ? enc : dec).push_back(t);
  std::string d = dir_ + "/t5dir";
  ASSERT_EQ(mkdir(d.c_str(), 0755), 0);
  ASSERT_TRUE(testing::WriteSafetensors(dir_ + "/a.safetensors", enc));
  ASSERT_TRUE(testing::WriteSafetensors(dir_ + "/b.safetensors", dec));
  ASSERT_TRUE(CompressPath(dir_ + "/a.safetensors", d + "/a.safetensors.bs", options).ok());
  ASSERT_TRUE(CompressPath(dir_ + "/b.safetensors", d + "/b.safetensors.bs", options).ok());
  auto sharded = Model::Open(d, {});
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  ASSERT_EQ((*sharded)->num_layers(), 4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ((*sharded)->layer(i)->name, names[i]);
  ExpectTensorsMatch(**sharded, t5);
}

// GetTensors' lookup: by name, so a zero-size tensor keeps its own name,
// dtype and shape (lookup by offset reported the next tensor's).
TEST_F(ModelTest, TensorsAreFoundByNameEvenWhenEmpty) {
  std::vector<testing::SyntheticTensor> ts;
  ts.push_back({"model.embed_tokens.weight", "F32", {4, 4}, std::vector<uint8_t>(64, 1)});
  ts.push_back({"model.empty_bias", "F32", {0}, {}});
  ts.push_back({"model.norm.weight", "F32", {4}, std::vector<uint8_t>(16, 2)});
  std::string st = dir_ + "/empty.safetensors";
  ASSERT_TRUE(testing::WriteSafetensors(st, ts));
  CompressOptions options;
  ASSERT_TRUE(CompressPath(st, st + ".bs", options).ok());
  auto model = Model::Open(st + ".bs", {});
  ASSERT_TRUE(model.ok()) << model.status();
  for (const auto& t : ts) {
    const TensorRef* ref = (*model)->FindTensor(absl::string_view(t.name));
    ASSERT_NE(ref, nullptr) << t.name;
    const v1::TensorInfo& info = (*model)->tensor_info(*ref);
    EXPECT_EQ(info.name(), t.name);
    EXPECT_EQ(info.size(), t.bytes.size());
    EXPECT_EQ(info.shape_size(), static_cast<int>(t.shape.size()));
  }
  EXPECT_EQ((*model)->FindTensor(absl::string_view("nope")), nullptr);
  v1::GetTensorsRequest request;
  request.add_names("model.empty_bias");
  request.add_names("model.norm.weight");
  auto items = PlanTensorCopy(**model, request);
  ASSERT_TRUE(items.ok()) << items.status();
  ASSERT_EQ(items->size(), 2u);
  EXPECT_EQ((*items)[0].info->name(), "model.empty_bias");
  EXPECT_EQ((*items)[0].info->size(), 0u);
  EXPECT_EQ((*items)[1].info->name(), "model.norm.weight");
  // The copier: one chunk with the info for the empty tensor, then the next.
  auto data = (*model)->LoadLayer(-1, arenas_.get(), nullptr, nullptr);
  ASSERT_TRUE(data.ok()) << data.status();
  TensorCopier copier(std::move(*items), 4096);
  v1::TensorChunk chunk;
  int32_t layer = 7;
  ASSERT_EQ(copier.Next(&chunk, &layer), TensorCopier::Step::kNeedLayer);
  EXPECT_EQ(layer, -1);
  auto bytes = (*data)->arena->bytes();
  copier.SetLayer(-1, bytes.data(), bytes.size());
  ASSERT_EQ(copier.Next(&chunk, &layer), TensorCopier::Step::kChunk);
  EXPECT_EQ(chunk.info().name(), "model.empty_bias");
  EXPECT_EQ(chunk.name(), "model.empty_bias");
  EXPECT_TRUE(chunk.data().empty());
  ASSERT_EQ(copier.Next(&chunk, &layer), TensorCopier::Step::kChunk);
  EXPECT_EQ(chunk.info().name(), "model.norm.weight");
  EXPECT_EQ(chunk.data(), std::string(16, '\2'));
  EXPECT_EQ(copier.Next(&chunk, &layer), TensorCopier::Step::kDone);
  request.add_names("missing.weight");
  EXPECT_EQ(PlanTensorCopy(**model, request).status().code(), absl::StatusCode::kNotFound);
}

// A model from sources that are already open (the Hub's): same plan, same
// bytes as the file, its id from the path it is given, its key as given.
TEST_F(ModelTest, OpenSourcesServesTheSameModelAsTheFile) {
  auto file = Model::Open(bs_path_, ModelOptions{});
  ASSERT_TRUE(file.ok()) << file.status();
  std::ifstream in(bs_path_, std::ios::binary);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<ShardSource> shards;
  const std::string path = "hf://acme/tiny@0123456789012345678901234567890123456789";
  shards.push_back(ShardSource{MakeMemorySource(bytes, "mem"), path + "/m.safetensors.bs"});
  auto model = Model::OpenSources(std::move(shards), path, "commit", path, ModelOptions{});
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->path(), path);
  EXPECT_EQ((*model)->key(), path);
  EXPECT_EQ((*model)->fingerprint(), "commit");
  EXPECT_NE((*model)->id(), (*file)->id());
  EXPECT_EQ((*model)->num_layers(), (*file)->num_layers());
  EXPECT_EQ((*model)->description().shards(0), path + "/m.safetensors.bs");
  ExpectModelMatches(**model);
  // A byte flipped in a layer's group (what a corrupt range would bring) is
  // DATA_LOSS for that layer: the group checksum sees it.
  const LayerPlan* plan = (*model)->layer(1);
  const BsGroup& g = (*model)->shard(0).index().groups[plan->groups[0].second];
  bytes[g.offset + g.size / 2] ^= 0x10;
  std::vector<ShardSource> bad;
  bad.push_back(ShardSource{MakeMemorySource(bytes, "mem"), path + "/m.safetensors.bs"});
  auto damaged = Model::OpenSources(std::move(bad), path, "commit", path, ModelOptions{});
  ASSERT_TRUE(damaged.ok()) << damaged.status();
  auto layer = (*damaged)->LoadLayer(1, arenas_.get(), nullptr, nullptr);
  EXPECT_EQ(layer.status().code(), absl::StatusCode::kDataLoss) << layer.status();
  EXPECT_TRUE((*damaged)->LoadLayer(0, arenas_.get(), nullptr, nullptr).ok());
  // No shard at all.
  auto none = Model::OpenSources({}, path, "commit", path, ModelOptions{});
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
}

TEST(CheckShardIndexTest, EveryNamedShardMustBeThere) {
  const std::string index =
      R"({"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}})";
  EXPECT_TRUE(CheckShardIndex(index, {"m-1.safetensors.bs", "m-2.safetensors.bs"}, "m").ok());
  absl::Status missing = CheckShardIndex(index, {"m-1.safetensors.bs"}, "m");
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.message().find("m-2.safetensors.bs is missing"), std::string::npos);
  EXPECT_EQ(CheckShardIndex("{", {}, "m").code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(CheckShardIndex(R"({"weight_map": 3})", {}, "m").code(),
            absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace bigsmall::daemon
