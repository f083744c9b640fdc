#include "codec/error_kind.h"

#include "absl/types/optional.h"
#include <string>

#include "absl/strings/cord.h"

namespace bigsmall {
namespace {

constexpr char kPayloadUrl[] = "type.bigsmall.dev/error-kind";

const char* KindName(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kNotBsFile: return "not-bs-file";
    case ErrorKind::kUnsupportedVersion: return "unsupported-version";
    case ErrorKind::kOutput: return "output";
    case ErrorKind::kNone: break;
  }
  return "";
}

}  // namespace

absl::Status WithErrorKind(absl::Status status, ErrorKind kind) {
  if (status.ok() || kind == ErrorKind::kNone) return status;
  status.SetPayload(kPayloadUrl, absl::Cord(KindName(kind)));
  return status;
}

ErrorKind GetErrorKind(const absl::Status& status) {
  const absl::optional<absl::Cord> payload = status.GetPayload(kPayloadUrl);
  if (!payload.has_value()) return ErrorKind::kNone;
  const std::string name(*payload);
  for (ErrorKind k : {ErrorKind::kNotBsFile, ErrorKind::kUnsupportedVersion, ErrorKind::kOutput}) {
    if (name == KindName(k)) return k;
  }
  return ErrorKind::kNone;
}

}  // namespace bigsmall
