#include "cli/exit_codes.h"

namespace bigsmall::cli {

int ExitCodeFor(const absl::Status& status) {
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
    default:
      return kExitFailure;
  }
}

const char* ExitCodeHelp() {
  return "Exit codes:\n"
         "  0  success\n"
         "  1  other failure (I/O error, not a .bs file, invalid input, ...)\n"
         "  2  usage error (bad flags or arguments, output would overwrite the input)\n"
         "  3  corrupt or mismatching data (failed hash check, truncated file,\n"
         "     bytes differ from --against)\n"
         "  4  input not found\n"
         "  5  wrong or missing --base, or unsupported format version\n"
         "  6  output exists (use --force to overwrite)\n";
}

}  // namespace bigsmall::cli
