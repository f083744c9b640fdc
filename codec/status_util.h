// The one errno -> absl::Status mapper of the codebase, and the one way to
// put untrusted text (paths, names from requests or files) into a log line or
// an error message. docs/FORMAT.md ("Errors") is the authority for the codes.
#ifndef BIGSMALL_CODEC_STATUS_UTIL_H_
#define BIGSMALL_CODEC_STATUS_UTIL_H_

#include <cstddef>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"

namespace bigsmall {

// "<what>: <strerror(err)>" with the code docs/FORMAT.md assigns to `err`:
//   ENOENT ENOTDIR                         -> NOT_FOUND
//   EEXIST                                 -> ALREADY_EXISTS
//   EACCES EPERM EXDEV                     -> PERMISSION_DENIED
//   ELOOP (a refused or looping symlink)   -> FAILED_PRECONDITION
//   EROFS                                  -> FAILED_PRECONDITION
//   ENOSPC EDQUOT ENOMEM EMFILE ENFILE     -> RESOURCE_EXHAUSTED
//   EFBIG EMLINK EOVERFLOW                 -> RESOURCE_EXHAUSTED
//   EIO                                    -> DATA_LOSS (the medium failed)
//   EISDIR EINVAL ENAMETOOLONG ENXIO       -> INVALID_ARGUMENT
//   EAGAIN EINTR EBUSY ETIMEDOUT ECANCELED -> UNAVAILABLE (may pass on retry)
//   anything else                          -> INTERNAL
absl::Status ErrnoToStatus(int err, absl::string_view what);

// `text` made safe for one log line or error message: printable ASCII kept,
// everything else (newlines, NUL, escapes, non-ASCII bytes) C-escaped, and
// cut to `max_bytes` of input with the full length noted, so a hostile
// 1 MB path costs a bounded, single-line message.
std::string EscapeForLog(absl::string_view text, size_t max_bytes = 256);

}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_STATUS_UTIL_H_
