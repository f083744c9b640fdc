// Fuzzes the whole decode path of a .bs file held in memory: header, index,
// group reads and every tensor's decode + hash check. Must never crash, hang
// or read out of bounds; every failure must be a status.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "tests/fuzz/decode_every_tensor.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  bigsmall::fuzz::DecodeEveryTensor(std::vector<uint8_t>(data, data + size), 64u << 20);
  return 0;
}
