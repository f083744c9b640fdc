#include "codec/fast_hash.h"

#include <cstddef>

namespace bigsmall {

#if defined(__x86_64__)
namespace fast_hash_avx2 {
void* Create();
void Destroy(void* state);
void Update(void* state, const void* data, size_t size);
void Digest(const void* state, unsigned char out[16]);
}  // namespace fast_hash_avx2

namespace {
bool HaveAvx2() {
  static const bool have = __builtin_cpu_supports("avx2");
  return have;
}
}  // namespace

FastStreamingHash128::FastStreamingHash128() {
  if (HaveAvx2()) state_ = fast_hash_avx2::Create();  // null (portable) if it cannot allocate
}

FastStreamingHash128::~FastStreamingHash128() {
  if (state_ != nullptr) fast_hash_avx2::Destroy(state_);
}

void FastStreamingHash128::Update(absl::Span<const uint8_t> bytes) {
  if (state_ == nullptr) return portable_.Update(bytes);
  fast_hash_avx2::Update(state_, bytes.data(), bytes.size());
}

Hash128 FastStreamingHash128::Finish() const {
  if (state_ == nullptr) return portable_.Finish();
  Hash128 h;
  fast_hash_avx2::Digest(state_, h.data());
  return h;
}
#else
FastStreamingHash128::FastStreamingHash128() = default;
FastStreamingHash128::~FastStreamingHash128() = default;
void FastStreamingHash128::Update(absl::Span<const uint8_t> bytes) { portable_.Update(bytes); }
Hash128 FastStreamingHash128::Finish() const { return portable_.Finish(); }
#endif

}  // namespace bigsmall
