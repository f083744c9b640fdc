// Little-endian serialisation helpers. ByteReader is the only way the decoder
// touches untrusted bytes: every read is bounds-checked and a short read
// turns into a kDataLoss status naming what was being read.
#ifndef BIGSMALL_CODEC_BYTE_IO_H_
#define BIGSMALL_CODEC_BYTE_IO_H_

#include <cstdint>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"

namespace bigsmall {

inline uint16_t LoadLe16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
inline uint32_t LoadLe32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);  // x86-64 and aarch64 are little-endian; the format is LE
  return v;
}
inline uint64_t LoadLe64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline void StoreLe32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
inline void StoreLe64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }

// Allocates `n` zero bytes without throwing: sizes often come from untrusted
// headers, and a failed allocation must be an error, not a crash.
inline absl::StatusOr<std::vector<uint8_t>> AllocateBytes(uint64_t n, absl::string_view what) {
  try {
    return std::vector<uint8_t>(n);
  } catch (const std::bad_alloc&) {
  } catch (const std::length_error&) {
  }
  return absl::ResourceExhaustedError(absl::StrCat(what, ": cannot allocate ", n, " bytes"));
}

// Runs fn() (returning a Status or StatusOr) and turns an allocation failure
// inside it (std::bad_alloc, std::length_error from a container growing)
// into RESOURCE_EXHAUSTED: the decode entry points use it so no allocation
// on the decode path can throw into a caller that must not throw (the
// daemon, pool threads).
template <typename Fn>
auto NoThrowAlloc(absl::string_view what, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
  } catch (const std::length_error&) {
  }
  return absl::ResourceExhaustedError(absl::StrCat(what, ": out of memory"));
}

class ByteWriter {
 public:
  explicit ByteWriter(std::vector<uint8_t>* out) : out_(out) {}
  void U8(uint8_t v) { out_->push_back(v); }
  void U16(uint16_t v) { Raw(&v, 2); }
  void U32(uint32_t v) { Raw(&v, 4); }
  void U64(uint64_t v) { Raw(&v, 8); }
  void I64(int64_t v) { Raw(&v, 8); }
  // Unsigned LEB128: 7 bits a byte, low bits first, high bit set on every
  // byte but the last (docs/FORMAT.md §5.6).
  void Varint(uint64_t v) {
    while (v >= 0x80) {
      out_->push_back(static_cast<uint8_t>(v | 0x80));
      v >>= 7;
    }
    out_->push_back(static_cast<uint8_t>(v));
  }
  static size_t VarintSize(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
      v >>= 7;
      ++n;
    }
    return n;
  }
  void Bytes(absl::Span<const uint8_t> b) { out_->insert(out_->end(), b.begin(), b.end()); }
  void String(absl::string_view s) {
    U32(static_cast<uint32_t>(s.size()));
    out_->insert(out_->end(), s.begin(), s.end());
  }
  size_t size() const { return out_->size(); }

 private:
  void Raw(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out_->insert(out_->end(), b, b + n);
  }
  std::vector<uint8_t>* out_;
};

class ByteReader {
 public:
  ByteReader(absl::Span<const uint8_t> bytes, absl::string_view what) : bytes_(bytes), what_(what) {}

  size_t remaining() const { return bytes_.size() - pos_; }
  size_t position() const { return pos_; }
  bool done() const { return pos_ == bytes_.size(); }

  absl::StatusOr<uint8_t> U8(absl::string_view field) {
    if (remaining() < 1) return Short(field, 1);
    return bytes_[pos_++];
  }
  absl::StatusOr<uint16_t> U16(absl::string_view field) {
    if (remaining() < 2) return Short(field, 2);
    uint16_t v = LoadLe16(bytes_.data() + pos_);
    pos_ += 2;
    return v;
  }
  absl::StatusOr<uint32_t> U32(absl::string_view field) {
    if (remaining() < 4) return Short(field, 4);
    uint32_t v = LoadLe32(bytes_.data() + pos_);
    pos_ += 4;
    return v;
  }
  absl::StatusOr<uint64_t> U64(absl::string_view field) {
    if (remaining() < 8) return Short(field, 8);
    uint64_t v = LoadLe64(bytes_.data() + pos_);
    pos_ += 8;
    return v;
  }
  absl::StatusOr<int64_t> I64(absl::string_view field) {
    if (remaining() < 8) return Short(field, 8);
    int64_t v;
    std::memcpy(&v, bytes_.data() + pos_, 8);
    pos_ += 8;
    return v;
  }
  // Unsigned LEB128 of at most max_bytes bytes, in its shortest form (a
  // value has one encoding: a last byte of 0 after others is refused).
  absl::StatusOr<uint64_t> Varint(absl::string_view field, int max_bytes) {
    uint64_t v = 0;
    for (int i = 0; i < max_bytes && i < 10; ++i) {
      if (remaining() < 1) return Short(field, 1);
      const uint8_t b = bytes_[pos_++];
      v |= uint64_t{b & 0x7fu} << (7 * i);
      if ((b & 0x80) == 0) {
        if (b == 0 && i > 0) {
          return absl::DataLossError(absl::StrCat(what_, ": ", field, " is not in its shortest form"));
        }
        return v;
      }
    }
    return absl::DataLossError(absl::StrCat(what_, ": ", field, " longer than ", max_bytes, " bytes"));
  }
  absl::StatusOr<absl::Span<const uint8_t>> Bytes(uint64_t n, absl::string_view field) {
    if (remaining() < n) return Short(field, n);
    auto s = bytes_.subspan(pos_, n);
    pos_ += n;
    return s;
  }
  absl::StatusOr<std::string> String(absl::string_view field, uint32_t max_len = 1u << 20) {
    auto len = U32(field);
    if (!len.ok()) return len.status();
    if (*len > max_len) {
      return absl::DataLossError(absl::StrCat(what_, ": ", field, " length ", *len, " too large"));
    }
    auto b = Bytes(*len, field);
    if (!b.ok()) return b.status();
    return std::string(b->begin(), b->end());
  }
  absl::Status Error(absl::string_view message) const {
    return absl::DataLossError(absl::StrCat(what_, ": ", message));
  }

 private:
  absl::Status Short(absl::string_view field, uint64_t need) const {
    return absl::DataLossError(absl::StrCat(what_, ": truncated while reading ", field, " (need ",
                                            need, " bytes at offset ", pos_, ", have ",
                                            remaining(), ")"));
  }
  absl::Span<const uint8_t> bytes_;
  size_t pos_ = 0;
  std::string what_;
};

}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_BYTE_IO_H_
