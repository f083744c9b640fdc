// Test helpers for the load pipeline and its backends: a synthetic model
// written as a .bs with the encoder library, and comparisons of decoded
// layers with the original tensor bytes.
#ifndef BIGSMALL_DAEMON_TEST_MODEL_UTIL_H_
#define BIGSMALL_DAEMON_TEST_MODEL_UTIL_H_

#include <stdlib.h>

#include <map>
#include <string>
#include <vector>

#include "codec/compress.h"
#include "gtest/gtest.h"
#include "tests/integration/synthetic_model.h"

namespace bigsmall::daemon::testing {

// A temporary directory with a synthetic model compressed into m.safetensors.bs.
class SyntheticModelDir {
 public:
  explicit SyntheticModelDir(const bigsmall::testing::SyntheticModelSpec& spec) {
    char tmpl[] = "/tmp/bs_pipeline_testXXXXXX";
    if (mkdtemp(tmpl) == nullptr) return;
    dir_ = tmpl;
    tensors_ = bigsmall::testing::MakeSyntheticTensors(spec);
    const std::string st = dir_ + "/m.safetensors";
    if (!bigsmall::testing::WriteSafetensors(st, tensors_)) return;
    CompressOptions options;
    options.threads = 2;
    status_ = CompressPath(st, bs_path(), options).status();
  }
  ~SyntheticModelDir() {
    if (!dir_.empty()) {
      std::string cmd = "rm -rf '" + dir_ + "'";
      (void)!system(cmd.c_str());
    }
  }
  const absl::Status& status() const { return status_; }
  const std::string& dir() const { return dir_; }
  std::string bs_path() const { return dir_ + "/m.safetensors.bs"; }
  const std::vector<bigsmall::testing::SyntheticTensor>& tensors() const { return tensors_; }
  std::map<std::string, std::vector<uint8_t>> by_name() const {
    std::map<std::string, std::vector<uint8_t>> out;
    for (const auto& t : tensors_) out[t.name] = t.bytes;
    return out;
  }

 private:
  std::string dir_;
  absl::Status status_ = absl::UnknownError("not written");
  std::vector<bigsmall::testing::SyntheticTensor> tensors_;
};

}  // namespace bigsmall::daemon::testing

#endif  // BIGSMALL_DAEMON_TEST_MODEL_UTIL_H_
