// The AVX2 build of XXH3-128 (codec/fast_hash.h). This file is compiled with
// -mavx2 (codec/CMakeLists.txt) and holds nothing but xxhash's own static
// inline functions and these four entry points, so no AVX2 code can reach
// the rest of the program except through them (called only where the CPU
// has AVX2).
#if defined(__x86_64__) && defined(__AVX2__)
#define XXH_INLINE_ALL
#define XXH_VECTOR XXH_AVX2
#include <xxhash.h>

namespace bigsmall::fast_hash_avx2 {

void* Create() {
  XXH3_state_t* s = XXH3_createState();
  if (s != nullptr) XXH3_128bits_reset(s);
  return s;
}
void Destroy(void* state) { XXH3_freeState(static_cast<XXH3_state_t*>(state)); }
void Update(void* state, const void* data, size_t size) {
  XXH3_128bits_update(static_cast<XXH3_state_t*>(state), data, size);
}
void Digest(const void* state, unsigned char out[16]) {
  const XXH128_hash_t h = XXH3_128bits_digest(static_cast<const XXH3_state_t*>(state));
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<unsigned char>(h.low64 >> (8 * i));
    out[8 + i] = static_cast<unsigned char>(h.high64 >> (8 * i));
  }
}

}  // namespace bigsmall::fast_hash_avx2
#endif
