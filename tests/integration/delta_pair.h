// Test helper: a base model and a synthetic fine-tune of it, compressed as a
// full .bs and as a fine-tune delta (`bigsmall compress --base`), for the
// daemon's delta tests (daemon/delta_test.cc, delta_integration_test.cc).
#ifndef BIGSMALL_TESTS_INTEGRATION_DELTA_PAIR_H_
#define BIGSMALL_TESTS_INTEGRATION_DELTA_PAIR_H_

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "codec/compress.h"
#include "tests/integration/synthetic_model.h"

namespace bigsmall::testing {

// The name of the tensor a fine-tune adds (absent from the base: stored
// without DELTA_TENSOR, decoded alone).
inline constexpr char kAddedTensor[] = "model.layers.0.adapter.weight";

// A fine-tune of `base`: every layer weight with about 1 in 8 elements'
// low byte changed (a small update), norms untouched, plus kAddedTensor.
inline std::vector<SyntheticTensor> FineTuneOf(const std::vector<SyntheticTensor>& base,
                                               uint32_t seed = 7) {
  std::mt19937 rng(seed);
  std::vector<SyntheticTensor> out = base;
  for (SyntheticTensor& t : out) {
    if (t.name.find("proj") == std::string::npos) continue;
    const size_t width = t.dtype == "F32" ? 4 : 2;
    for (size_t i = 0; i + width <= t.bytes.size(); i += width) {
      if (rng() % 8 == 0) t.bytes[i] ^= static_cast<uint8_t>(1 + rng() % 255);
    }
  }
  out.push_back({kAddedTensor, "BF16", {16, 8}, RandomWeights("BF16", 128, rng, 0.05f)});
  return out;
}

inline std::map<std::string, std::vector<uint8_t>> ByName(const std::vector<SyntheticTensor>& ts) {
  std::map<std::string, std::vector<uint8_t>> out;
  for (const auto& t : ts) out[t.name] = t.bytes;
  return out;
}

// Writes <dir>/<base_name>.safetensors(.bs) and its fine-tune's delta
// <dir>/<ft_name>.safetensors.bs (compressed with --base the base's
// safetensors); returns the fine-tune's tensors.
inline absl::Status WriteDeltaPair(const std::string& dir, const SyntheticModelSpec& spec,
                                   const std::string& base_name, const std::string& ft_name,
                                   std::map<std::string, std::vector<uint8_t>>* ft_tensors) {
  const std::vector<SyntheticTensor> base = MakeSyntheticTensors(spec);
  const std::vector<SyntheticTensor> ft = FineTuneOf(base);
  const std::string base_st = dir + "/" + base_name + ".safetensors";
  const std::string ft_st = dir + "/" + ft_name + ".safetensors";
  if (!WriteSafetensors(base_st, base) || !WriteSafetensors(ft_st, ft)) {
    return absl::InternalError("cannot write the safetensors files");
  }
  CompressOptions options;
  options.threads = 2;
  absl::Status st = CompressPath(base_st, base_st + ".bs", options).status();
  if (!st.ok()) return st;
  options.base = base_st;
  st = CompressPath(ft_st, ft_st + ".bs", options).status();
  if (!st.ok()) return st;
  if (ft_tensors != nullptr) *ft_tensors = ByName(ft);
  return absl::OkStatus();
}

}  // namespace bigsmall::testing

#endif  // BIGSMALL_TESTS_INTEGRATION_DELTA_PAIR_H_
