// Fine-tune deltas served by a real bigsmalld (issue 11): a delta .bs whose
// base .bs lies beside it streams the fine-tune's exact bytes, to host
// memory and to the emulated GPU (the XOR kernel's code on the CPU); the
// base's layers are decoded once and shared by the delta and the base's own
// clients (the base model's layer_decodes); a wrong or missing base is
// FAILED_PRECONDITION at OpenModel, naming the model and tensor.
#include <sys/stat.h>
#include <unistd.h>

#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "codec/compress.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon_harness.h"
#include "tests/integration/delta_pair.h"

namespace bigsmall {
namespace {

using client::Client;
using testing::Daemon;
using testing::g_dir;

class DeltaIntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(testing::MakeSuiteDir("bigsmall_delta_itest"));
    ft_ = new std::map<std::string, std::vector<uint8_t>>();
    ASSERT_TRUE(testing::WriteDeltaPair(g_dir, {.layers = 4, .hidden = 64, .vocab = 128}, "base", "ft",
                                        ft_).ok());
    // The wrong base: another model of the same shapes, named as the base
    // beside a copy of the delta; and a copy of the delta with no base.
    testing::SyntheticModelSpec other{.layers = 4, .hidden = 64, .vocab = 128, .seed = 42};
    ASSERT_TRUE(testing::WriteSafetensors(g_dir + "/other.safetensors", testing::MakeSyntheticTensors(other)));
    ASSERT_EQ(::mkdir((g_dir + "/wrong").c_str(), 0700), 0);
    ASSERT_EQ(::mkdir((g_dir + "/alone").c_str(), 0700), 0);
    CompressOptions options;
    options.threads = 2;
    ASSERT_TRUE(CompressPath(g_dir + "/other.safetensors", g_dir + "/wrong/base.safetensors.bs", options).ok());
    ASSERT_EQ(system(absl::StrCat("cp ", g_dir, "/ft.safetensors.bs ", g_dir, "/wrong/ && cp ", g_dir,
                                  "/ft.safetensors.bs ", g_dir, "/alone/").c_str()),
              0);
  }
  static void TearDownTestSuite() {
    delete ft_;
    testing::RemoveSuiteDir();
  }
  static std::string ft_bs() { return g_dir + "/ft.safetensors.bs"; }
  static std::string base_bs() { return g_dir + "/base.safetensors.bs"; }

  // The layer_decodes of the open model at `path` (ListModels).
  static uint64_t Decodes(Client& client, const std::string& path) {
    auto list = client.ListModels();
    EXPECT_TRUE(list.ok()) << list.status();
    if (!list.ok()) return 0;
    for (const auto& m : list->models()) {
      if (m.path() == path) return m.layer_decodes();
    }
    ADD_FAILURE() << path << " is not open";
    return 0;
  }

  // Streams the model at `path` (host, or `device`) and compares every
  // tensor with the fine-tune (or, for the base, is only counted). Returns
  // the number of tensors compared and the layers that were cache hits.
  static absl::StatusOr<std::pair<size_t, size_t>> Stream(Client& client, const std::string& path,
                                                          const std::string& device = "",
                                                          bool compare = true) {
    auto desc = client.OpenModel(path);
    if (!desc.ok()) return desc.status();
    client::StreamOptions options;
    options.include_non_layer = true;
    options.device = device;
    auto stream = client.Stream(desc->model_id(), options);
    if (!stream.ok()) return stream.status();
    size_t compared = 0, hits = 0;
    while (true) {
      auto layer = (*stream)->Next();
      if (!layer.ok()) return layer.status();
      if (*layer == nullptr) break;
      hits += (*layer)->cache_hit() ? 1 : 0;
      if (!device.empty()) {
        if (absl::Status v = (*layer)->Verify(); !v.ok()) return v;
      }
      for (const auto& t : (*layer)->tensors()) {
        if (!compare) continue;
        auto it = ft_->find(t.name);
        if (it == ft_->end()) return absl::InternalError("unknown tensor " + t.name);
        std::vector<uint8_t> bytes;
        if (device.empty()) {
          bytes.assign(t.data, t.data + t.size);
        } else {
          auto copied = (*layer)->CopyToHost(t);
          if (!copied.ok()) return copied.status();
          bytes = std::move(*copied);
        }
        if (bytes != it->second) return absl::DataLossError("bytes differ in " + t.name);
        ++compared;
      }
    }
    return std::make_pair(compared, hits);
  }

  static std::map<std::string, std::vector<uint8_t>>* ft_;
};

std::map<std::string, std::vector<uint8_t>>* DeltaIntegrationTest::ft_ = nullptr;

TEST_F(DeltaIntegrationTest, ADeltaStreamsTheFineTuneAndSharesTheBasesLayers) {
  Daemon d;
  ASSERT_TRUE(d.ready()) << d.log();
  // Before issue 11: FAILED_PRECONDITION "is a fine-tune delta; the daemon
  // serves full models".
  auto r = Stream(d.client(), ft_bs());
  ASSERT_TRUE(r.ok()) << r.status() << d.log();
  EXPECT_EQ(r->first, ft_->size());
  // The base was opened beside the delta, and every one of its layers was
  // decoded once (5 layers: 4 + the non-layer group).
  const uint64_t base_decodes = Decodes(d.client(), base_bs());
  EXPECT_EQ(base_decodes, 5u);
  // The base's own client gets those layers from the cache: no new decode.
  auto base = Stream(d.client(), base_bs(), "", /*compare=*/false);
  ASSERT_TRUE(base.ok()) << base.status();
  EXPECT_EQ(base->second, 5u);
  EXPECT_EQ(Decodes(d.client(), base_bs()), base_decodes);
  // And the delta's layers are cached entries of their own.
  auto again = Stream(d.client(), ft_bs());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->second, 5u);
  EXPECT_EQ(Decodes(d.client(), ft_bs()), 5u);
  EXPECT_EQ(Decodes(d.client(), base_bs()), base_decodes);
}

TEST_F(DeltaIntegrationTest, ABaseOpenedFirstIsSharedWithTheDelta) {
  Daemon d({"--load-threads", "1"});  // a base load inside a delta load: no deadlock
  ASSERT_TRUE(d.ready()) << d.log();
  auto base = Stream(d.client(), base_bs(), "", /*compare=*/false);
  ASSERT_TRUE(base.ok()) << base.status();
  EXPECT_EQ(Decodes(d.client(), base_bs()), 5u);
  auto r = Stream(d.client(), ft_bs());
  ASSERT_TRUE(r.ok()) << r.status() << d.log();
  EXPECT_EQ(r->first, ft_->size());
  EXPECT_EQ(Decodes(d.client(), base_bs()), 5u);  // the delta used the cached base layers
}

TEST_F(DeltaIntegrationTest, ADeltaStreamsToTheEmulatedDevice) {
  Daemon d({"--gpu-backend", "emulated"});
  ASSERT_TRUE(d.ready()) << d.log();
  auto r = Stream(d.client(), ft_bs(), "cuda:0");
  ASSERT_TRUE(r.ok()) << r.status() << d.log();
  EXPECT_EQ(r->first, ft_->size());
  EXPECT_EQ(Decodes(d.client(), base_bs()), 5u);  // its device layers, decoded once
  auto base = Stream(d.client(), base_bs(), "cuda:0", /*compare=*/false);
  ASSERT_TRUE(base.ok()) << base.status();
  EXPECT_EQ(base->second, 5u);
  EXPECT_EQ(Decodes(d.client(), base_bs()), 5u);
}

TEST_F(DeltaIntegrationTest, AWrongOrMissingBaseIsFailedPrecondition) {
  Daemon d;
  ASSERT_TRUE(d.ready()) << d.log();
  auto wrong = d.client().OpenModel(g_dir + "/wrong/ft.safetensors.bs");
  ASSERT_EQ(wrong.status().code(), absl::StatusCode::kFailedPrecondition) << wrong.status();
  EXPECT_NE(wrong.status().message().find("wrong/ft.safetensors.bs"), std::string::npos) << wrong.status();
  EXPECT_NE(wrong.status().message().find("base tensor '"), std::string::npos) << wrong.status();
  EXPECT_NE(wrong.status().message().find("wrong base"), std::string::npos) << wrong.status();
  auto missing = d.client().OpenModel(g_dir + "/alone/ft.safetensors.bs");
  ASSERT_EQ(missing.status().code(), absl::StatusCode::kFailedPrecondition) << missing.status();
  EXPECT_NE(missing.status().message().find("alone/ft.safetensors.bs"), std::string::npos) << missing.status();
  EXPECT_NE(missing.status().message().find("not available"), std::string::npos) << missing.status();
}

}  // namespace
}  // namespace bigsmall
