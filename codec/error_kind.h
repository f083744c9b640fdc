// Finer kinds of failure carried as a payload on an absl::Status, for the few
// places where one status code covers failures that need different remedies
// (docs/FORMAT.md "Errors"): a file that is not a .bs at all and a .bs of an
// unknown major version are both DATA_LOSS to a decoder, but the CLI gives
// them their own exit codes; an output path that cannot be created is not
// "input not found". Status codes never change because of a kind.
#ifndef BIGSMALL_CODEC_ERROR_KIND_H_
#define BIGSMALL_CODEC_ERROR_KIND_H_

#include "absl/status/status.h"

namespace bigsmall {

enum class ErrorKind {
  kNone = 0,
  kNotBsFile,           // bad magic: not a .bs file
  kUnsupportedVersion,  // a .bs of a major version this build cannot read
  kOutput,              // the failure concerns an output path, not an input
};

// `status` with `kind` attached (an OK status is returned unchanged).
absl::Status WithErrorKind(absl::Status status, ErrorKind kind);
// The kind attached to `status`, or kNone.
ErrorKind GetErrorKind(const absl::Status& status);

}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_ERROR_KIND_H_
