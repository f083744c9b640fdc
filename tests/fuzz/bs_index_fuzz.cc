// Fuzzes the .bs index parser (docs/FORMAT.md §3) past the checksums that
// stop every mutant of a whole file (bs_file_fuzz): an input is a .bs file
// whose index is stored *uncompressed*, i.e. the bytes before index_offset
// (header, padding, layer groups) followed by the raw index. The harness
// keeps what the fuzzer wrote into the header's version, flags and
// index_offset, then compresses the raw index into a zstd frame and fixes up
// index_stored_size, index_raw_size, index_checksum, file_size and the header
// checksum, so mutants of the index bytes and header fields reach the index
// structure checks (and, when those pass, the blob decoders and hashes).
// Seeds: corpus/bs_index/ (written by make_seeds from valid .bs files).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "codec/bs_reader.h"
#include "codec/byte_source.h"
#include "codec/format.h"
#include "codec/hash.h"
#include "tests/fuzz/decode_every_tensor.h"
#include "zstd.h"

namespace {

void Put64(std::vector<uint8_t>& b, size_t at, uint64_t v) { std::memcpy(b.data() + at, &v, 8); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace bigsmall;
  if (size < kFileHeaderSize) return 0;
  uint64_t index_offset;
  std::memcpy(&index_offset, data + 16, 8);
  // Where the raw index starts in the input; a mutated offset outside it
  // still goes into the header as written (the reader must reject it).
  const size_t raw_begin = index_offset >= kFileHeaderSize && index_offset <= size ? index_offset : size;
  const uint8_t* raw = data + raw_begin;
  const size_t raw_size = size - raw_begin;
  std::vector<uint8_t> file(data, data + raw_begin);
  std::vector<uint8_t> frame(ZSTD_compressBound(raw_size));
  const size_t n = ZSTD_compress(frame.data(), frame.size(), raw, raw_size, 1);
  if (ZSTD_isError(n)) return 0;
  file.insert(file.end(), frame.begin(), frame.begin() + n);
  Put64(file, 24, n);
  Put64(file, 32, raw_size);
  Put64(file, 40, HashBytes64(absl::MakeConstSpan(frame.data(), n)));
  Put64(file, 48, file.size());
  Put64(file, 56, HashBytes64(absl::MakeConstSpan(file.data(), 56)));
  fuzz::DecodeEveryTensor(std::move(file), 16u << 20);
  return 0;
}
