#include "codec/status_util.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace bigsmall {

absl::Status ErrnoToStatus(int err, absl::string_view what) {
  const std::string msg = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(msg);
    case EEXIST:
      return absl::AlreadyExistsError(msg);
    case EACCES:
    case EPERM:
    case EXDEV:
      return absl::PermissionDeniedError(msg);
    case ELOOP:
    case EROFS:
      return absl::FailedPreconditionError(msg);
    case ENOSPC:
    case EDQUOT:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
    case EFBIG:
    case EMLINK:
    case EOVERFLOW:
      return absl::ResourceExhaustedError(msg);
    case EIO:
      return absl::DataLossError(msg);
    case EISDIR:
    case EINVAL:
    case ENAMETOOLONG:
    case ENXIO:
      return absl::InvalidArgumentError(msg);
    case EAGAIN:
    case EINTR:
    case EBUSY:
    case ETIMEDOUT:
    case ECANCELED:
      return absl::UnavailableError(msg);
    default:
      return absl::InternalError(msg);
  }
}

std::string EscapeForLog(absl::string_view text, size_t max_bytes) {
  const bool cut = text.size() > max_bytes;
  std::string out = absl::CHexEscape(cut ? text.substr(0, max_bytes) : text);
  if (cut) absl::StrAppend(&out, "...(", text.size(), " bytes)");
  return out;
}

}  // namespace bigsmall
