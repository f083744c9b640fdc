#include "codec/planes.h"

#include <cstring>

#include "codec/tensor_codec.h"

#if defined(__x86_64__)
// GCC 12 reports the _mm512_undefined_epi32() pass-through operand of
// AVX-512 intrinsics as "may be used uninitialized" once inlined (GCC bug
// 105593); the operand is never read.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#endif

namespace bigsmall {

bool ValidSplit(PlaneSplit split, uint32_t width) {
  switch (split) {
    case PlaneSplit::kBytes: return width >= 1 && width <= kMaxPlanes;
    case PlaneSplit::kBf16: return width == 2;
    case PlaneSplit::kFp32: return width == 4;
  }
  return false;
}

namespace {

void SplitScalar(PlaneSplit split, uint32_t width, const uint8_t* elements, size_t count,
                 uint8_t* const* planes) {
  switch (split) {
    case PlaneSplit::kBf16: {
      uint8_t* e = planes[0];
      uint8_t* sm = planes[1];
      for (size_t k = 0; k < count; ++k) {
        uint16_t v;
        std::memcpy(&v, elements + 2 * k, 2);
        e[k] = static_cast<uint8_t>(v >> 7);
        sm[k] = static_cast<uint8_t>(((v >> 8) & 0x80) | (v & 0x7f));
      }
      return;
    }
    case PlaneSplit::kFp32: {
      for (size_t k = 0; k < count; ++k) {
        uint32_t v;
        std::memcpy(&v, elements + 4 * k, 4);
        planes[0][k] = static_cast<uint8_t>(v >> 23);
        planes[1][k] = static_cast<uint8_t>(((v >> 24) & 0x80) | ((v >> 16) & 0x7f));
        planes[2][k] = static_cast<uint8_t>(v >> 8);
        planes[3][k] = static_cast<uint8_t>(v);
      }
      return;
    }
    case PlaneSplit::kBytes: {
      if (width == 1) {
        std::memcpy(planes[0], elements, count);
        return;
      }
      for (size_t k = 0; k < count; ++k) {
        for (uint32_t p = 0; p < width; ++p) planes[p][k] = elements[k * width + (width - 1 - p)];
      }
      return;
    }
  }
}


#if defined(__x86_64__)

// 16 u16 lanes (each < 256) -> 16 bytes, in order.
__attribute__((target("avx2"), always_inline)) inline __m128i Pack16(__m256i v) {
  return _mm_packus_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
}

// SIMD splits (the inverse of the merges below) for bf16, fp32, bytes/2 and
// bytes/4; they return how many elements they did.
size_t SplitAvx2Prefix(PlaneSplit split, uint32_t width, const uint8_t* elements, size_t count,
                       uint8_t* const* planes) __attribute__((target("avx2")));
size_t SplitAvx2Prefix(PlaneSplit split, uint32_t width, const uint8_t* elements, size_t count,
                       uint8_t* const* planes) {
  size_t k = 0;
  const __m256i kByte16 = _mm256_set1_epi16(0xff);
  if (split == PlaneSplit::kBf16 || (split == PlaneSplit::kBytes && width == 2)) {
    const bool bf16 = split == PlaneSplit::kBf16;
    const __m256i k7f = _mm256_set1_epi16(0x7f), k80 = _mm256_set1_epi16(0x80);
    for (; k + 16 <= count; k += 16) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(elements + 2 * k));
      __m256i p0, p1;
      if (bf16) {
        p0 = _mm256_and_si256(_mm256_srli_epi16(v, 7), kByte16);
        p1 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 8), k80), _mm256_and_si256(v, k7f));
      } else {
        p0 = _mm256_srli_epi16(v, 8);
        p1 = _mm256_and_si256(v, kByte16);
      }
      _mm_storeu_si128(reinterpret_cast<__m128i*>(planes[0] + k), Pack16(p0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(planes[1] + k), Pack16(p1));
    }
  } else if (split == PlaneSplit::kFp32 || (split == PlaneSplit::kBytes && width == 4)) {
    const bool fp32 = split == PlaneSplit::kFp32;
    // Byte b of each u32 -> 8 bytes: pshufb within 128-bit halves, then join.
    const __m256i kShuf = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                           0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m256i kJoin = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (; k + 8 <= count; k += 8) {
      __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(elements + 4 * k));
      if (fp32) {
        // Byte 3 <- exponent (v >> 23), byte 2 <- sign | mantissa bits 16-22.
        const __m256i e = _mm256_and_si256(_mm256_srli_epi32(v, 23), _mm256_set1_epi32(0xff));
        const __m256i sm = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(v, 24), _mm256_set1_epi32(0x80)),
                                           _mm256_and_si256(_mm256_srli_epi32(v, 16), _mm256_set1_epi32(0x7f)));
        v = _mm256_or_si256(_mm256_and_si256(v, _mm256_set1_epi32(0xffff)),
                            _mm256_or_si256(_mm256_slli_epi32(sm, 16), _mm256_slli_epi32(e, 24)));
      }
      // Now plane p = byte 3 - p of each u32.
      const __m256i t = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(v, kShuf), kJoin);
      // t's 64-bit words: bytes 0, 1, 2, 3 of the 8 elements.
      alignas(32) uint64_t b[4];
      _mm256_store_si256(reinterpret_cast<__m256i*>(b), t);
      for (int p = 0; p < 4; ++p) std::memcpy(planes[p] + k, &b[3 - p], 8);
    }
  }
  return k;
}

size_t SplitAvx512Prefix(PlaneSplit split, uint32_t width, const uint8_t* elements, size_t count,
                         uint8_t* const* planes) __attribute__((target("avx512f,avx512bw")));
size_t SplitAvx512Prefix(PlaneSplit split, uint32_t width, const uint8_t* elements, size_t count,
                         uint8_t* const* planes) {
  size_t k = 0;
  if (split == PlaneSplit::kBf16 || (split == PlaneSplit::kBytes && width == 2)) {
    const bool bf16 = split == PlaneSplit::kBf16;
    const __m512i k7f = _mm512_set1_epi16(0x7f), k80 = _mm512_set1_epi16(0x80);
    for (; k + 32 <= count; k += 32) {
      const __m512i v = _mm512_loadu_si512(elements + 2 * k);
      __m512i p0, p1;
      if (bf16) {
        p0 = _mm512_srli_epi16(v, 7);  // vpmovwb keeps the low byte
        p1 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(v, 8), k80), _mm512_and_si512(v, k7f));
      } else {
        p0 = _mm512_srli_epi16(v, 8);
        p1 = v;
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(planes[0] + k), _mm512_cvtepi16_epi8(p0));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(planes[1] + k), _mm512_cvtepi16_epi8(p1));
    }
  } else if (split == PlaneSplit::kFp32 || (split == PlaneSplit::kBytes && width == 4)) {
    const bool fp32 = split == PlaneSplit::kFp32;
    const __m512i k7f = _mm512_set1_epi32(0x7f), k80 = _mm512_set1_epi32(0x80);
    for (; k + 16 <= count; k += 16) {
      const __m512i v = _mm512_loadu_si512(elements + 4 * k);
      __m512i p0, p1;
      if (fp32) {
        p0 = _mm512_srli_epi32(v, 23);  // vpmovdb keeps the low byte
        p1 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(v, 24), k80),
                             _mm512_and_si512(_mm512_srli_epi32(v, 16), k7f));
      } else {
        p0 = _mm512_srli_epi32(v, 24);
        p1 = _mm512_srli_epi32(v, 16);
      }
      _mm_storeu_si128(reinterpret_cast<__m128i*>(planes[0] + k), _mm512_cvtepi32_epi8(p0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(planes[1] + k), _mm512_cvtepi32_epi8(p1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(planes[2] + k), _mm512_cvtepi32_epi8(_mm512_srli_epi32(v, 8)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(planes[3] + k), _mm512_cvtepi32_epi8(v));
    }
  }
  return k;
}

#else
size_t SplitAvx2Prefix(PlaneSplit, uint32_t, const uint8_t*, size_t, uint8_t* const*) { return 0; }
size_t SplitAvx512Prefix(PlaneSplit, uint32_t, const uint8_t*, size_t, uint8_t* const*) { return 0; }
#endif


void MergeScalar(PlaneSplit split, uint32_t width, const uint8_t* const* planes, size_t count,
                 uint8_t* elements) {
  switch (split) {
    case PlaneSplit::kBf16: {
      const uint8_t* e = planes[0];
      const uint8_t* sm = planes[1];
      uint16_t* out = reinterpret_cast<uint16_t*>(elements);
      for (size_t k = 0; k < count; ++k) {
        const uint32_t s = sm[k];
        const uint16_t v = static_cast<uint16_t>(((s & 0x80) << 8) | (uint32_t{e[k]} << 7) | (s & 0x7f));
        std::memcpy(out + k, &v, 2);
      }
      return;
    }
    case PlaneSplit::kFp32: {
      for (size_t k = 0; k < count; ++k) {
        const uint32_t s = planes[1][k];
        const uint32_t v = ((s & 0x80) << 24) | (uint32_t{planes[0][k]} << 23) | ((s & 0x7f) << 16) |
                           (uint32_t{planes[2][k]} << 8) | planes[3][k];
        std::memcpy(elements + 4 * k, &v, 4);
      }
      return;
    }
    case PlaneSplit::kBytes: {
      if (width == 1) {
        std::memcpy(elements, planes[0], count);
        return;
      }
      if (width == 2) {
        for (size_t k = 0; k < count; ++k) {
          elements[2 * k] = planes[1][k];
          elements[2 * k + 1] = planes[0][k];
        }
        return;
      }
      for (size_t k = 0; k < count; ++k) {
        for (uint32_t p = 0; p < width; ++p) elements[k * width + (width - 1 - p)] = planes[p][k];
      }
      return;
    }
  }
}

#if defined(__x86_64__)

// Plane bytes p[0..n) zero-extended to 16- or 32-bit lanes.
__attribute__((target("avx2"), always_inline)) inline __m256i Widen16x16(const uint8_t* p) {
  return _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
__attribute__((target("avx2"), always_inline)) inline __m256i Widen8x32(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}
__attribute__((target("avx512f,avx512bw"), always_inline)) inline __m512i Widen32x16(const uint8_t* p) {
  return _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
__attribute__((target("avx512f,avx512bw"), always_inline)) inline __m512i Widen16x32(const uint8_t* p) {
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// The SIMD merges handle whole vectors and leave the tail to MergeScalar.
// Each covers bf16, fp32 and bytes/2 and bytes/4 (F16, I32, U32); the other
// byte widths stay scalar.
size_t MergeAvx2Prefix(PlaneSplit split, uint32_t width, const uint8_t* const* planes, size_t count,
                       uint8_t* elements) __attribute__((target("avx2")));
size_t MergeAvx2Prefix(PlaneSplit split, uint32_t width, const uint8_t* const* planes, size_t count,
                       uint8_t* elements) {
  size_t k = 0;
  if (split == PlaneSplit::kBf16) {
    const __m256i k7f = _mm256_set1_epi16(0x7f), k80 = _mm256_set1_epi16(0x80);
    for (; k + 16 <= count; k += 16) {
      const __m256i e = Widen16x16(planes[0] + k), sm = Widen16x16(planes[1] + k);
      __m256i v = _mm256_or_si256(_mm256_slli_epi16(e, 7), _mm256_and_si256(sm, k7f));
      v = _mm256_or_si256(v, _mm256_slli_epi16(_mm256_and_si256(sm, k80), 8));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(elements + 2 * k), v);
    }
  } else if (split == PlaneSplit::kFp32) {
    const __m256i k7f = _mm256_set1_epi32(0x7f), k80 = _mm256_set1_epi32(0x80);
    for (; k + 8 <= count; k += 8) {
      const __m256i e = Widen8x32(planes[0] + k), sm = Widen8x32(planes[1] + k);
      const __m256i b2 = Widen8x32(planes[2] + k), b3 = Widen8x32(planes[3] + k);
      __m256i v = _mm256_or_si256(_mm256_slli_epi32(e, 23), _mm256_slli_epi32(_mm256_and_si256(sm, k7f), 16));
      v = _mm256_or_si256(v, _mm256_slli_epi32(_mm256_and_si256(sm, k80), 24));
      v = _mm256_or_si256(v, _mm256_or_si256(_mm256_slli_epi32(b2, 8), b3));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(elements + 4 * k), v);
    }
  } else if (split == PlaneSplit::kBytes && width == 2) {
    for (; k + 16 <= count; k += 16) {
      const __m256i v = _mm256_or_si256(_mm256_slli_epi16(Widen16x16(planes[0] + k), 8), Widen16x16(planes[1] + k));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(elements + 2 * k), v);
    }
  } else if (split == PlaneSplit::kBytes && width == 4) {
    for (; k + 8 <= count; k += 8) {
      __m256i v = _mm256_or_si256(_mm256_slli_epi32(Widen8x32(planes[0] + k), 24),
                                  _mm256_slli_epi32(Widen8x32(planes[1] + k), 16));
      v = _mm256_or_si256(v, _mm256_or_si256(_mm256_slli_epi32(Widen8x32(planes[2] + k), 8), Widen8x32(planes[3] + k)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(elements + 4 * k), v);
    }
  }
  return k;
}

size_t MergeAvx512Prefix(PlaneSplit split, uint32_t width, const uint8_t* const* planes, size_t count,
                         uint8_t* elements) __attribute__((target("avx512f,avx512bw")));
size_t MergeAvx512Prefix(PlaneSplit split, uint32_t width, const uint8_t* const* planes, size_t count,
                         uint8_t* elements) {
  size_t k = 0;
  if (split == PlaneSplit::kBf16) {
    const __m512i k7f = _mm512_set1_epi16(0x7f), k80 = _mm512_set1_epi16(0x80);
    for (; k + 32 <= count; k += 32) {
      const __m512i e = Widen32x16(planes[0] + k), sm = Widen32x16(planes[1] + k);
      __m512i v = _mm512_or_si512(_mm512_slli_epi16(e, 7), _mm512_and_si512(sm, k7f));
      v = _mm512_or_si512(v, _mm512_slli_epi16(_mm512_and_si512(sm, k80), 8));
      _mm512_storeu_si512(elements + 2 * k, v);
    }
  } else if (split == PlaneSplit::kFp32) {
    const __m512i k7f = _mm512_set1_epi32(0x7f), k80 = _mm512_set1_epi32(0x80);
    for (; k + 16 <= count; k += 16) {
      const __m512i e = Widen16x32(planes[0] + k), sm = Widen16x32(planes[1] + k);
      const __m512i b2 = Widen16x32(planes[2] + k), b3 = Widen16x32(planes[3] + k);
      __m512i v = _mm512_or_si512(_mm512_slli_epi32(e, 23), _mm512_slli_epi32(_mm512_and_si512(sm, k7f), 16));
      v = _mm512_or_si512(v, _mm512_slli_epi32(_mm512_and_si512(sm, k80), 24));
      v = _mm512_or_si512(v, _mm512_or_si512(_mm512_slli_epi32(b2, 8), b3));
      _mm512_storeu_si512(elements + 4 * k, v);
    }
  } else if (split == PlaneSplit::kBytes && width == 2) {
    for (; k + 32 <= count; k += 32) {
      const __m512i v = _mm512_or_si512(_mm512_slli_epi16(Widen32x16(planes[0] + k), 8), Widen32x16(planes[1] + k));
      _mm512_storeu_si512(elements + 2 * k, v);
    }
  } else if (split == PlaneSplit::kBytes && width == 4) {
    for (; k + 16 <= count; k += 16) {
      __m512i v = _mm512_or_si512(_mm512_slli_epi32(Widen16x32(planes[0] + k), 24),
                                  _mm512_slli_epi32(Widen16x32(planes[1] + k), 16));
      v = _mm512_or_si512(v, _mm512_or_si512(_mm512_slli_epi32(Widen16x32(planes[2] + k), 8), Widen16x32(planes[3] + k)));
      _mm512_storeu_si512(elements + 4 * k, v);
    }
  }
  return k;
}

bool HasAvx2() { return __builtin_cpu_supports("avx2"); }
bool HasAvx512() { return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"); }

#else
size_t MergeAvx2Prefix(PlaneSplit, uint32_t, const uint8_t* const*, size_t, uint8_t*) { return 0; }
size_t MergeAvx512Prefix(PlaneSplit, uint32_t, const uint8_t* const*, size_t, uint8_t*) { return 0; }
bool HasAvx2() { return false; }
bool HasAvx512() { return false; }
#endif

// Merges the tail [k, count) with the scalar loop.
void MergeTail(PlaneSplit split, uint32_t width, const uint8_t* const* planes, size_t k, size_t count,
               uint8_t* elements) {
  if (k == count) return;
  const uint8_t* rest[kMaxPlanes];
  const uint32_t np = split == PlaneSplit::kBf16 ? 2 : split == PlaneSplit::kFp32 ? 4 : width;
  for (uint32_t p = 0; p < np && p < kMaxPlanes; ++p) rest[p] = planes[p] + k;
  MergeScalar(split, width, rest, count - k, elements + k * width);
}

}  // namespace

bool MergePlanesWith(MergeImpl impl, PlaneSplit split, uint32_t width, const uint8_t* const* planes,
                     size_t count, uint8_t* elements) {
  size_t k = 0;
  switch (impl) {
    case MergeImpl::kScalar:
      break;
    case MergeImpl::kAvx2:
      if (!HasAvx2()) return false;
      k = MergeAvx2Prefix(split, width, planes, count, elements);
      break;
    case MergeImpl::kAvx512:
      if (!HasAvx512()) return false;
      k = MergeAvx512Prefix(split, width, planes, count, elements);
      break;
  }
  MergeTail(split, width, planes, k, count, elements);
  return true;
}

namespace {
// The widest SIMD the rANS decoders use here (BestDecoderImpl, which
// BIGSMALL_DECODER can force down), so that a forced avx2 or scalar run
// measures and exercises the whole path at that level.
MergeImpl BestMergeImpl() {
  static const MergeImpl best = [] {
    switch (BestDecoderImpl()) {
      case DecoderImpl::kAvx512:
        return HasAvx512() ? MergeImpl::kAvx512 : HasAvx2() ? MergeImpl::kAvx2 : MergeImpl::kScalar;
      case DecoderImpl::kAvx2:
        return HasAvx2() ? MergeImpl::kAvx2 : MergeImpl::kScalar;
      default:
        return MergeImpl::kScalar;
    }
  }();
  return best;
}
}  // namespace

bool SplitPlanesWith(MergeImpl impl, PlaneSplit split, uint32_t width, const uint8_t* elements,
                     size_t count, uint8_t* const* planes) {
  size_t k = 0;
  switch (impl) {
    case MergeImpl::kScalar:
      break;
    case MergeImpl::kAvx2:
      if (!HasAvx2()) return false;
      k = SplitAvx2Prefix(split, width, elements, count, planes);
      break;
    case MergeImpl::kAvx512:
      if (!HasAvx512()) return false;
      k = SplitAvx512Prefix(split, width, elements, count, planes);
      break;
  }
  if (k < count) {
    uint8_t* rest[kMaxPlanes];
    const uint32_t np = split == PlaneSplit::kBf16 ? 2 : split == PlaneSplit::kFp32 ? 4 : width;
    for (uint32_t p = 0; p < np && p < kMaxPlanes; ++p) rest[p] = planes[p] + k;
    SplitScalar(split, width, elements + k * width, count - k, rest);
  }
  return true;
}

void SplitPlanes(PlaneSplit split, uint32_t width, const uint8_t* elements, size_t count,
                 uint8_t* const* planes) {
  SplitPlanesWith(BestMergeImpl(), split, width, elements, count, planes);
}

void MergePlanes(PlaneSplit split, uint32_t width, const uint8_t* const* planes, size_t count,
                 uint8_t* elements) {
  MergePlanesWith(BestMergeImpl(), split, width, planes, count, elements);
}

}  // namespace bigsmall
