// Fuzzes the whole decode path of a .bs file held in memory: header, index,
// group reads and every tensor's decode + hash check. Must never crash, hang
// or read out of bounds; every failure must be a status.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "codec/bs_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace bigsmall;
  auto reader = BsReader::Open(MakeMemorySource(std::vector<uint8_t>(data, data + size), "fuzz.bs"));
  if (!reader.ok()) return 0;
  const BsIndex& ix = (*reader)->index();
  for (uint32_t g = 0; g < ix.groups.size(); ++g) {
    auto bytes = (*reader)->ReadGroup(g);
    if (!bytes.ok()) continue;
    for (uint32_t t : ix.groups[g].tensors) {
      const uint64_t size_t_bytes = ix.tensors[t].info.size();
      if (size_t_bytes > (64u << 20)) continue;  // keep each input cheap
      std::vector<uint8_t> out(size_t_bytes);
      (void)(*reader)->DecodeTensor(t, *bytes, absl::MakeSpan(out));
    }
  }
  return 0;
}
