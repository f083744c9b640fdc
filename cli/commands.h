// The `bigsmall` subcommands, parsed arguments in, exit code out. Each prints
// its summary (text, or one JSON object with --json) to stdout and errors to
// stderr as "bigsmall: error: <message>".
#ifndef BIGSMALL_CLI_COMMANDS_H_
#define BIGSMALL_CLI_COMMANDS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
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

int RunCompress(const CompressArgs& args);
int RunDecompress(const DecompressArgs& args);
int RunInfo(const InfoArgs& args);
int RunVerify(const VerifyArgs& args);

// Prints "bigsmall: error: <message>" to stderr (and with `json` a JSON
// error object to stdout); returns `exit_code`.
int ReportError(const std::string& command, const std::string& message, int exit_code, bool json,
                const std::string& status_code = "");

// Shared by the command implementations (commands.cc, hub_commands.cc).
// One JSON object on stdout (bad UTF-8 replaced, never thrown).
void PrintJson(const nlohmann::ordered_json& j);

// The summary of a finished compress or decompress: one JSON object with
// --json (with "hub" after "output" when `hub` is given), else one line
// naming `shown` (unless --quiet). Returns kExitOk.
int ReportCompressed(const CompressArgs& args, const std::string& shown, const std::string& output,
                     Mode mode, const CompressStats& stats, const nlohmann::ordered_json* hub);
int ReportDecompressed(const DecompressArgs& args, const std::string& shown,
                       const std::string& output, const DecompressStats& stats,
                       const nlohmann::ordered_json* hub);
void PrintLine(const std::string& line);
// ReportError with the status's message, exit code (ExitCodeFor) and code name.
int Fail(const std::string& command, const absl::Status& status, bool json);
// Before any work: kExitOk when `output` may be written (see commands.cc).
int CheckOutput(const std::string& command, const std::string& output, bool force, bool directory, bool json);
// Progress bars only on a terminal, without --json or --quiet.
bool ShowProgress(bool json, bool quiet);

}  // namespace bigsmall::cli

#endif  // BIGSMALL_CLI_COMMANDS_H_
