// Test helper: writes small LLM-shaped safetensors files (embeddings, N
// layers of attention + MLP weights, final norm, head) with realistic
// BF16/F32 values, and compresses them to .bs with the codec.
#ifndef BIGSMALL_TESTS_INTEGRATION_SYNTHETIC_MODEL_H_
#define BIGSMALL_TESTS_INTEGRATION_SYNTHETIC_MODEL_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace bigsmall::testing {

struct SyntheticTensor {
  std::string name;
  std::string dtype;  // "BF16" or "F32"
  std::vector<uint64_t> shape;
  std::vector<uint8_t> bytes;
};

struct SyntheticModelSpec {
  int layers = 4;
  int hidden = 64;
  int vocab = 128;
  uint32_t seed = 1;
};

inline std::vector<uint8_t> RandomWeights(const std::string& dtype, uint64_t count,
                                          std::mt19937& rng, float scale) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<uint8_t> out;
  if (dtype == "F32") {
    out.resize(count * 4);
    for (uint64_t i = 0; i < count; ++i) {
      float v = dist(rng);
      std::memcpy(&out[i * 4], &v, 4);
    }
  } else {  // BF16: the top half of an F32
    out.resize(count * 2);
    for (uint64_t i = 0; i < count; ++i) {
      float v = dist(rng);
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      uint16_t h = static_cast<uint16_t>(bits >> 16);
      std::memcpy(&out[i * 2], &h, 2);
    }
  }
  return out;
}

inline std::vector<SyntheticTensor> MakeSyntheticTensors(const SyntheticModelSpec& spec) {
  std::mt19937 rng(spec.seed);
  std::vector<SyntheticTensor> tensors;
  auto add = [&](std::string name, std::string dtype, std::vector<uint64_t> shape, float scale) {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    tensors.push_back({name, dtype, shape, RandomWeights(dtype, n, rng, scale)});
  };
  uint64_t h = static_cast<uint64_t>(spec.hidden);
  add("model.embed_tokens.weight", "BF16", {static_cast<uint64_t>(spec.vocab), h}, 0.02f);
  for (int l = 0; l < spec.layers; ++l) {
    std::string p = absl::StrCat("model.layers.", l, ".");
    add(p + "input_layernorm.weight", "F32", {h}, 1.0f);
    add(p + "self_attn.q_proj.weight", "BF16", {h, h}, 0.05f);
    add(p + "self_attn.k_proj.weight", "BF16", {h, h}, 0.05f);
    add(p + "self_attn.v_proj.weight", "BF16", {h, h}, 0.05f);
    add(p + "self_attn.o_proj.weight", "BF16", {h, h}, 0.05f);
    add(p + "mlp.up_proj.weight", "BF16", {2 * h, h}, 0.05f);
    add(p + "mlp.down_proj.weight", "F32", {h, 2 * h}, 0.05f);
  }
  add("model.norm.weight", "F32", {h}, 1.0f);
  add("lm_head.weight", "BF16", {static_cast<uint64_t>(spec.vocab), h}, 0.02f);
  return tensors;
}

// Writes a safetensors file; returns false on I/O failure.
inline bool WriteSafetensors(const std::string& path, const std::vector<SyntheticTensor>& tensors) {
  nlohmann::ordered_json header;
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump();
  while ((text.size() + 8) % 8 != 0) text.push_back(' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  uint64_t n = text.size();
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
  out.write(reinterpret_cast<const char*>(len), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const auto& t : tensors) {
    out.write(reinterpret_cast<const char*>(t.bytes.data()),
              static_cast<std::streamsize>(t.bytes.size()));
  }
  return static_cast<bool>(out);
}

}  // namespace bigsmall::testing

#endif  // BIGSMALL_TESTS_INTEGRATION_SYNTHETIC_MODEL_H_
