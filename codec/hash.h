// Content hashes: XXH3-128 for tensors and whole files, XXH3-64 for the
// header and index checksums (docs/FORMAT.md §2).
#ifndef BIGSMALL_CODEC_HASH_H_
#define BIGSMALL_CODEC_HASH_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/types/span.h"

namespace bigsmall {

// Stored little-endian: low 64 bits first, then high 64 bits.
using Hash128 = std::array<uint8_t, 16>;

Hash128 HashBytes128(absl::Span<const uint8_t> bytes);
uint64_t HashBytes64(absl::Span<const uint8_t> bytes);
std::string HashToHex(const Hash128& hash);

// Incremental XXH3-128 over a byte stream.
class StreamingHash128 {
 public:
  StreamingHash128();
  ~StreamingHash128();
  StreamingHash128(const StreamingHash128&) = delete;
  StreamingHash128& operator=(const StreamingHash128&) = delete;
  void Update(absl::Span<const uint8_t> bytes);
  Hash128 Finish() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Incremental XXH3-64 (format 1.1 group checksums, docs/FORMAT.md §3.2):
// equals HashBytes64 of the concatenated updates.
class StreamingHash64 {
 public:
  StreamingHash64();
  ~StreamingHash64();
  StreamingHash64(const StreamingHash64&) = delete;
  StreamingHash64& operator=(const StreamingHash64&) = delete;
  void Update(absl::Span<const uint8_t> bytes);
  uint64_t Finish() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_HASH_H_
