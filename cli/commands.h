// The `bigsmall` subcommands, parsed arguments in, exit code out. Each prints
// its summary (text, or one JSON object with --json) to stdout and errors to
// stderr as "bigsmall: error: <message>".
#ifndef BIGSMALL_CLI_COMMANDS_H_
#define BIGSMALL_CLI_COMMANDS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "codec/compress.h"
#include "codec/decompress.h"
#include "nlohmann/json.hpp"

namespace bigsmall::cli {

struct CompressArgs {
  std::string input;
  std::string output;  // empty: DefaultCompressedName(input)
  bool storage = false;
  bool inference = false;
  std::string base;
  int threads = 0;
  std::string layer_pattern;
  uint32_t chunk_elements = 0;
  std::string layout = "auto";  // auto | aligned | packed (docs/FORMAT.md §1.1)
  bool follow_symlinks = false;
  bool force = false;
  bool json = false;
  bool quiet = false;
};

struct DecompressArgs {
  std::string input;
  std::string output;  // empty: DefaultDecompressedName(input)
  std::string base;
  int threads = 0;
  bool force = false;
  bool json = false;
  bool quiet = false;
};

struct InfoArgs {
  std::string input;
  bool json = false;
  bool tensors = false;
};

struct VerifyArgs {
  std::string input;
  std::string against;
  std::string base;
  int threads = 0;
  bool json = false;
  bool quiet = false;
};

// The commands' work, without printing: each returns the JSON object that
// `bigsmall <command> --json` prints on success (the same keys, in the same
// order), or the failure the command reports (its exit code: CliExitCode).
// A Hub input (IsHubInput) goes to the Hub's core (cli/hub_commands.h), as
// on the command line. Nothing goes to stdout or stderr, but a progress bar
// on stderr when ShowProgress(args.json, args.quiet). The CLI's Run*
// functions and the Python extension (python/src/codec_ops.cc) call these.
absl::StatusOr<nlohmann::ordered_json> CompressToJson(const CompressArgs& args);
absl::StatusOr<nlohmann::ordered_json> DecompressToJson(const DecompressArgs& args);
absl::StatusOr<nlohmann::ordered_json> VerifyToJson(const VerifyArgs& args);
// What `bigsmall info --json` prints: BuildInfo, or the Hub's description.
absl::StatusOr<nlohmann::ordered_json> InfoToJson(const InfoArgs& args);

// The commands: the core above, then its summary (text, or the JSON with
// --json) or its error (ReportError); returns the exit code.
int RunCompress(const CompressArgs& args);
int RunDecompress(const DecompressArgs& args);
int RunInfo(const InfoArgs& args);
int RunVerify(const VerifyArgs& args);

// Usage errors (exit code 2: bad arguments, an output that would overwrite
// the input, --force over an output of the other kind) are INVALID_ARGUMENT
// statuses marked as such (a payload), since other INVALID_ARGUMENT failures
// exit 1 (docs/FORMAT.md section 10.3).
absl::Status UsageError(absl::string_view message);
// `status` (not OK) marked as a usage error, its message and payloads kept.
absl::Status AsUsageError(absl::Status status);
bool IsUsageError(const absl::Status& status);
// The exit code of a failed command: kExitUsage for a usage error, else ExitCodeFor.
int CliExitCode(const absl::Status& status);

// Prints "bigsmall: error: <message>" to stderr (and with `json` a JSON
// error object to stdout); returns `exit_code`.
int ReportError(const std::string& command, const std::string& message, int exit_code, bool json,
                const std::string& status_code = "");

// Shared by the command implementations (commands.cc, hub_commands.cc).
// One JSON object on stdout (bad UTF-8 replaced, never thrown).
void PrintJson(const nlohmann::ordered_json& j);

// The --json summary of a finished compress or decompress (with "hub" after
// "output" when `hub` is given).
nlohmann::ordered_json CompressedJson(const CompressArgs& args, const std::string& output, Mode mode,
                                      const CompressStats& stats, const nlohmann::ordered_json* hub);
nlohmann::ordered_json DecompressedJson(const DecompressArgs& args, const std::string& output,
                                        const DecompressStats& stats, const nlohmann::ordered_json* hub);
// A compress or decompress summary (CompressedJson/DecompressedJson) as the
// command prints it: the JSON with --json, else one line (unless --quiet)
// naming the input (a Hub input as hf://repo@commit). Returns kExitOk.
int ReportCompressed(bool json, bool quiet, const nlohmann::ordered_json& summary);
int ReportDecompressed(bool json, bool quiet, const nlohmann::ordered_json& summary);
void PrintLine(const std::string& line);
// ReportError with the status's message, exit code (CliExitCode) and code name.
int Fail(const std::string& command, const absl::Status& status, bool json);
// Before any work: OK when `output` may be written (see commands.cc); a
// refusal that is a usage error is marked so (IsUsageError).
absl::Status CheckOutput(const std::string& output, bool force, bool directory);
// Progress bars only on a terminal, without --json or --quiet.
bool ShowProgress(bool json, bool quiet);

}  // namespace bigsmall::cli

#endif  // BIGSMALL_CLI_COMMANDS_H_
