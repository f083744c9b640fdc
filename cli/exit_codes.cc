#include "cli/exit_codes.h"

#include "codec/error_kind.h"

namespace bigsmall::cli {

int ExitCodeFor(const absl::Status& status) {
  // docs/FORMAT.md "Errors" (CLI exit codes): the status code decides, except
  // where the error kind says the remedy differs.
  switch (GetErrorKind(status)) {
    case ErrorKind::kNotBsFile:
      return kExitFailure;  // "not a .bs file"
    case ErrorKind::kUnsupportedVersion:
      return kExitPrecondition;  // "unsupported format version"
    case ErrorKind::kOutput:
      // An output that cannot be written is an I/O failure, never "input not
      // found" (a missing output directory is NOT_FOUND to the codec).
      if (status.code() == absl::StatusCode::kNotFound) return kExitFailure;
      break;
    case ErrorKind::kNone:
      break;
  }
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return kExitOk;
    case absl::StatusCode::kDataLoss:
      return kExitDataLoss;
    case absl::StatusCode::kNotFound:
      return kExitNotFound;
    case absl::StatusCode::kFailedPrecondition:
      return kExitPrecondition;
    case absl::StatusCode::kAlreadyExists:
      return kExitAlreadyExists;
    case absl::StatusCode::kUnauthenticated:
      return kExitUnauthenticated;
    default:
      return kExitFailure;
  }
}

const char* ExitCodeHelp() {
  return "Exit codes:\n"
         "  0  success\n"
         "  1  other failure (I/O error, not a .bs file, invalid input, output cannot be created,\n"
         "     the Hub refused access to a gated repo, the Hub unreachable, ...)\n"
         "  2  usage error (bad flags or arguments, output would overwrite the input,\n"
         "     --force over an output of the other kind)\n"
         "  3  corrupt or mismatching data (failed hash check, truncated file,\n"
         "     bytes differ from --against)\n"
         "  4  input not found (a file, or a Hub repo, revision or file; offline and not cached)\n"
         "  5  wrong or missing --base, unsupported format version, or a refused symlink\n"
         "  6  output exists (use --force to overwrite)\n"
         "  7  authentication needed or refused by the Hub (set HF_TOKEN or log in)\n"
         "  (docs/FORMAT.md section 10 lists every failure with its code)\n";
}

}  // namespace bigsmall::cli
