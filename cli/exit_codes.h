// Process exit codes of the `bigsmall` command-line tool.
//
// docs/FORMAT.md §10.3 is the authority:
//   0  success
//   1  any other failure (I/O error, not a .bs file [ErrorKind::kNotBsFile],
//      bad input, an output that cannot be created [ErrorKind::kOutput])
//   2  usage error (bad flags or arguments, output would overwrite the input,
//      --force over an output of the other kind)
//   3  corrupt or mismatching data (a hash check failed, truncated file,
//      rebuilt bytes differ from --against)                     [kDataLoss]
//   4  an input was not found                                   [kNotFound]
//   5  wrong or missing --base, unsupported format version [ErrorKind::
//      kUnsupportedVersion], a refused symlink                  [kFailedPrecondition]
//   6  the output exists and --force was not given              [kAlreadyExists]
//   7  the Hub wants a token, or refused the one given (HTTP 401) [kUnauthenticated]
#ifndef BIGSMALL_CLI_EXIT_CODES_H_
#define BIGSMALL_CLI_EXIT_CODES_H_

#include "absl/status/status.h"

namespace bigsmall::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitDataLoss = 3;
inline constexpr int kExitNotFound = 4;
inline constexpr int kExitPrecondition = 5;
inline constexpr int kExitAlreadyExists = 6;
inline constexpr int kExitUnauthenticated = 7;

// The exit code for a failed (or ok) status.
int ExitCodeFor(const absl::Status& status);

// Text for `bigsmall help`, one code per line.
const char* ExitCodeHelp();

}  // namespace bigsmall::cli

#endif  // BIGSMALL_CLI_EXIT_CODES_H_
