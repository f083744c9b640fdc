// The tail every .bs fuzz target shares: open the file from memory and, if
// it opens, read every group and decode (and hash-check) every tensor up to
// `max_tensor_bytes`. Every failure must be a status, never a crash.
#ifndef BIGSMALL_TESTS_FUZZ_DECODE_EVERY_TENSOR_H_
#define BIGSMALL_TESTS_FUZZ_DECODE_EVERY_TENSOR_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "codec/bs_reader.h"
#include "codec/byte_source.h"

namespace bigsmall::fuzz {

inline void DecodeEveryTensor(std::vector<uint8_t> file, uint64_t max_tensor_bytes) {
  auto reader = BsReader::Open(MakeMemorySource(std::move(file), "fuzz.bs"));
  if (!reader.ok()) return;
  const BsIndex& ix = (*reader)->index();
  for (uint32_t g = 0; g < ix.groups.size(); ++g) {
    auto bytes = (*reader)->ReadGroup(g);
    if (!bytes.ok()) continue;
    for (uint32_t t : ix.groups[g].tensors) {
      const uint64_t tensor_bytes = ix.tensors[t].info.size();
      if (tensor_bytes > max_tensor_bytes) continue;  // keep each input cheap
      std::vector<uint8_t> out(tensor_bytes);
      (void)(*reader)->DecodeTensor(t, *bytes, absl::MakeSpan(out));
    }
  }
}

}  // namespace bigsmall::fuzz

#endif  // BIGSMALL_TESTS_FUZZ_DECODE_EVERY_TENSOR_H_
