#include "codec/hash.h"

#define XXH_STATIC_LINKING_ONLY  // full XXH3_state_t definition, to embed it
#include <xxhash.h>

namespace bigsmall {
namespace {

Hash128 ToBytes(XXH128_hash_t h) {
  Hash128 out;
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<uint8_t>(h.low64 >> (8 * i));
    out[8 + i] = static_cast<uint8_t>(h.high64 >> (8 * i));
  }
  return out;
}

}  // namespace

Hash128 HashBytes128(absl::Span<const uint8_t> bytes) {
  return ToBytes(XXH3_128bits(bytes.data(), bytes.size()));
}

uint64_t HashBytes64(absl::Span<const uint8_t> bytes) {
  return XXH3_64bits(bytes.data(), bytes.size());
}

// Canonical XXH128 form (high 64 bits first, big-endian), as printed by
// `xxhsum -H2` and Python's xxhash hexdigest(), so users can cross-check.
// Note that this is not the byte order of the stored Hash128.
std::string HashToHex(const Hash128& hash) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(32);
  for (int i = 15; i >= 0; --i) {
    out.push_back(kDigits[hash[i] >> 4]);
    out.push_back(kDigits[hash[i] & 0xf]);
  }
  return out;
}

struct StreamingHash128::State {
  XXH3_state_t xxh;
};

StreamingHash128::StreamingHash128() : state_(std::make_unique<State>()) {
  XXH3_128bits_reset(&state_->xxh);
}

StreamingHash128::~StreamingHash128() = default;

void StreamingHash128::Update(absl::Span<const uint8_t> bytes) {
  if (bytes.empty()) return;
  XXH3_128bits_update(&state_->xxh, bytes.data(), bytes.size());
}

Hash128 StreamingHash128::Finish() const { return ToBytes(XXH3_128bits_digest(&state_->xxh)); }

struct StreamingHash64::State {
  XXH3_state_t xxh;
};

StreamingHash64::StreamingHash64() : state_(std::make_unique<State>()) { XXH3_64bits_reset(&state_->xxh); }

StreamingHash64::~StreamingHash64() = default;

void StreamingHash64::Update(absl::Span<const uint8_t> bytes) {
  if (bytes.empty()) return;
  XXH3_64bits_update(&state_->xxh, bytes.data(), bytes.size());
}

uint64_t StreamingHash64::Finish() const { return XXH3_64bits_digest(&state_->xxh); }

}  // namespace bigsmall
