#include "codec/planes.h"

#include <cstring>

namespace bigsmall {

bool ValidSplit(PlaneSplit split, uint32_t width) {
  switch (split) {
    case PlaneSplit::kBytes: return width >= 1 && width <= kMaxPlanes;
    case PlaneSplit::kBf16: return width == 2;
    case PlaneSplit::kFp32: return width == 4;
  }
  return false;
}

void SplitPlanes(PlaneSplit split, uint32_t width, const uint8_t* elements, size_t count,
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

void MergePlanes(PlaneSplit split, uint32_t width, const uint8_t* const* planes, size_t count,
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

}  // namespace bigsmall
