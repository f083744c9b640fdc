#include "daemon/fault_source.h"

#include <chrono>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "codec/status_macros.h"

namespace bigsmall::daemon {

absl::StatusOr<FaultSpec> ParseFaultSpec(const std::string& text) {
  FaultSpec spec;
  if (text.empty()) return spec;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    std::vector<std::string> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    uint64_t value = 0;
    if (kv.size() != 2 || !absl::SimpleAtoi(kv[1], &value)) {
      return absl::InvalidArgumentError(absl::StrCat("bad fault item '", item, "'"));
    }
    const std::string& key = kv[0];
    if (key == "short") {
      spec.short_read_bytes = value;
    } else if (key == "eio") {
      spec.eio_offset = value;
    } else if (key == "eio_after") {
      spec.eio_after = value;
    } else if (key == "truncate") {
      spec.truncate_at = value;
    } else if (key == "stall_ms") {
      spec.stall_ms = static_cast<uint32_t>(value);
    } else if (key == "flip") {
      spec.flip_offset = value;
    } else if (key.rfind("uring_", 0) == 0) {
      if (value > UINT32_MAX) {
        return absl::InvalidArgumentError(absl::StrCat("fault item '", item, "' out of range"));
      }
      const uint32_t n = static_cast<uint32_t>(value);
      if (key == "uring_submit_fail") {
        spec.uring.submit_fail = n;
      } else if (key == "uring_short_submit") {
        spec.uring.short_submit = n;
      } else if (key == "uring_wait_fail") {
        spec.uring.wait_fail = n;
      } else if (key == "uring_wait_fail_count") {
        spec.uring.wait_fail_count = n;
      } else {
        return absl::InvalidArgumentError(absl::StrCat("unknown fault '", key, "'"));
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown fault '", key, "'"));
    }
  }
  return spec;
}

void ApplyUringFaults(const FaultSpec& spec, IoOptions* io) { io->uring_faults = spec.uring; }

FaultInjectingSource::FaultInjectingSource(std::unique_ptr<ByteSource> inner, FaultSpec spec)
    : inner_(std::move(inner)), spec_(spec) {}

absl::Status FaultInjectingSource::ReadAt(uint64_t offset, absl::Span<uint8_t> out) {
  return Read(offset, out, /*bulk=*/false);
}

absl::Status FaultInjectingSource::ReadBulk(uint64_t offset, absl::Span<uint8_t> out) {
  return Read(offset, out, /*bulk=*/true);
}

absl::Status FaultInjectingSource::Read(uint64_t offset, absl::Span<uint8_t> out, bool bulk) {
  auto inner_read = [&](uint64_t off, absl::Span<uint8_t> part) {
    return bulk ? inner_->ReadBulk(off, part) : inner_->ReadAt(off, part);
  };
  uint64_t n = reads_.fetch_add(1);
  if (spec_.stall_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(spec_.stall_ms));
  const uint64_t end = offset + out.size();
  if (spec_.eio_offset && n >= spec_.eio_after && offset <= *spec_.eio_offset &&
      *spec_.eio_offset < end) {
    return absl::DataLossError(absl::StrCat(name(), ": read at ", offset,
                                            ": Input/output error (injected)"));
  }
  if (spec_.truncate_at && end > *spec_.truncate_at) {
    return absl::DataLossError(absl::StrCat(name(), ": truncated (end of file at ",
                                            *spec_.truncate_at, ", injected)"));
  }
  if (spec_.short_read_bytes > 0) {
    for (uint64_t pos = 0; pos < out.size(); pos += spec_.short_read_bytes) {
      uint64_t len = std::min<uint64_t>(spec_.short_read_bytes, out.size() - pos);
      RETURN_IF_ERROR(inner_read(offset + pos, out.subspan(pos, len)));
    }
  } else {
    RETURN_IF_ERROR(inner_read(offset, out));
  }
  if (spec_.flip_offset && offset <= *spec_.flip_offset && *spec_.flip_offset < end) {
    out[*spec_.flip_offset - offset] ^= 0xff;
  }
  return absl::OkStatus();
}

}  // namespace bigsmall::daemon
