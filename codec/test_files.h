// Test-only helpers shared by the codec's file-level tests: whole-file I/O
// and a minimal safetensors writer (header padded with spaces to 8 bytes,
// like the reference writer).
#ifndef BIGSMALL_CODEC_TEST_FILES_H_
#define BIGSMALL_CODEC_TEST_FILES_H_

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace bigsmall::testing {

struct TestTensor {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  std::vector<uint8_t> bytes;
};

inline std::vector<uint8_t> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

inline void WriteAll(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

// A safetensors file of `tensors` in order; `metadata` adds
// {"__metadata__": {"format": "pt"}} first.
inline std::vector<uint8_t> MakeSafetensors(const std::vector<TestTensor>& tensors,
                                            bool metadata = true) {
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
  const uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  out.insert(out.end(), json.begin(), json.end());
  for (const auto& t : tensors) out.insert(out.end(), t.bytes.begin(), t.bytes.end());
  return out;
}

}  // namespace bigsmall::testing

#endif  // BIGSMALL_CODEC_TEST_FILES_H_
