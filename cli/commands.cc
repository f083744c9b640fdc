#include "cli/commands.h"

#include <cstdio>
#include <filesystem>
#include <string>
#include <system_error>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "cli/exit_codes.h"
#include "cli/format_util.h"
#include "cli/hub_commands.h"
#include "cli/info_command.h"
#include "cli/progress_bar.h"
#include "codec/compress.h"
#include "codec/decompress.h"
#include "codec/file_util.h"
#include "codec/format.h"
#include "nlohmann/json.hpp"

namespace bigsmall::cli {
namespace {

using Json = nlohmann::ordered_json;

// True when writing `output` would replace `input` (the same path, or the same file).
bool SamePath(const std::string& input, const std::string& output) {
  if (SameFile(input, output)) return true;
  std::error_code ec1, ec2;
  const auto a = std::filesystem::weakly_canonical(input, ec1);
  const auto b = std::filesystem::weakly_canonical(output, ec2);
  if (ec1 || ec2) return false;
  return a == b;
}

// True when `output` would lie inside the directory `input` (it would be
// picked up by the next compression of that directory).
bool InsideDirectory(const std::string& input, const std::string& output) {
  if (!IsDirectory(input)) return false;
  std::error_code ec1, ec2;
  const auto dir = std::filesystem::weakly_canonical(input, ec1);
  const auto out = std::filesystem::weakly_canonical(output, ec2);
  if (ec1 || ec2) return false;
  const auto rel = out.lexically_relative(dir);
  return !rel.empty() && *rel.begin() != "..";
}

int RefuseSamePath(const std::string& command, const std::string& input, const std::string& output,
                   bool json) {
  return ReportError(command,
                     absl::StrCat(output, ": output would overwrite the input (choose another -o)"),
                     kExitUsage, json, "INVALID_ARGUMENT");
}


// The --json summary of a decompress or verify job; `target_key` ("output" or
// "against") names the path that follows the input.
Json RebuildJson(const std::string& command, const std::string& input, const char* target_key,
                 const std::string& target, const std::string& base, const DecompressStats& stats,
                 double rate) {
  Json j;
  j["ok"] = true;
  j["command"] = command;
  j["input"] = input;
  j[target_key] = target;
  j["base"] = base;
  j["input_bytes"] = stats.input_bytes;
  j["output_bytes"] = stats.output_bytes;
  j["tensors"] = stats.tensors;
  j["files"] = stats.files;
  if (command == "verify") {
    // Format 1.1 files (docs/FORMAT.md §3.2); 0 for 1.0 files, which have none.
    j["device_checksums"] = stats.device_checksums;
    j["group_checksums"] = stats.group_checksums;
  }
  j["seconds"] = stats.seconds;
  j["bytes_per_second"] = rate;
  return j;
}

}  // namespace

void PrintJson(const Json& j) {
  // Paths from the command line need not be UTF-8: replace bad bytes rather than throw.
  const std::string text = j.dump(2, ' ', false, Json::error_handler_t::replace);
  std::fprintf(stdout, "%s\n", text.c_str());
  std::fflush(stdout);
}

void PrintLine(const std::string& line) {
  std::fprintf(stdout, "%s\n", line.c_str());
  std::fflush(stdout);
}

int Fail(const std::string& command, const absl::Status& status, bool json) {
  return ReportError(command, std::string(status.message()), ExitCodeFor(status), json,
                     absl::StatusCodeToString(status.code()));
}

// Before any work: the output must be creatable (docs/FORMAT.md "Errors":
// an existing output needs --force, and --force replaces a file with a file,
// a directory with a directory); stale temporaries of dead runs are removed.
int CheckOutput(const std::string& command, const std::string& output, bool force, bool directory,
                bool json) {
  ReapStaleTemps(output);
  absl::Status st = CheckOutputReplaceable(output, force, directory);
  if (st.ok()) return kExitOk;
  if (absl::IsInvalidArgument(st)) {
    return ReportError(command, std::string(st.message()), kExitUsage, json, "INVALID_ARGUMENT");
  }
  return Fail(command, st, json);
}

bool ShowProgress(bool json, bool quiet) { return !json && !quiet && ProgressBar::StderrIsTerminal(); }

int ReportError(const std::string& command, const std::string& message, int exit_code, bool json,
                const std::string& status_code) {
  std::fprintf(stderr, "bigsmall: error: %s\n", message.c_str());
  std::fflush(stderr);
  if (json) {
    Json j;
    j["ok"] = false;
    j["command"] = command;
    j["error"] = message;
    if (!status_code.empty()) j["code"] = status_code;
    j["exit_code"] = exit_code;
    PrintJson(j);
  }
  return exit_code;
}

int ReportCompressed(const CompressArgs& args, const std::string& shown, const std::string& output,
                     Mode mode, const CompressStats& stats, const Json* hub) {
  const double rate = Rate(stats.input_bytes, stats.seconds);
  if (args.json) {
    Json j;
    j["ok"] = true;
    j["command"] = "compress";
    j["input"] = args.input;
    j["output"] = output;
    if (hub != nullptr) j["hub"] = *hub;
    j["mode"] = ModeName(mode);
    j["base"] = args.base;
    j["input_bytes"] = stats.input_bytes;
    j["output_bytes"] = stats.output_bytes;
    j["ratio"] = Ratio(stats.output_bytes, stats.input_bytes);
    j["tensors"] = stats.tensors;
    j["files"] = stats.files;
    j["seconds"] = stats.seconds;
    j["bytes_per_second"] = rate;
    PrintJson(j);
  } else if (!args.quiet) {
    PrintLine(absl::StrCat("compressed ", shown, " -> ", output, ": ", HumanBytes(stats.input_bytes),
                           " -> ", HumanBytes(stats.output_bytes), " (",
                           Percent(stats.output_bytes, stats.input_bytes), "), ",
                           HumanDuration(stats.seconds), ", ", HumanRate(rate)));
  }
  return kExitOk;
}

int ReportDecompressed(const DecompressArgs& args, const std::string& shown,
                       const std::string& output, const DecompressStats& stats, const Json* hub) {
  const double rate = Rate(stats.output_bytes, stats.seconds);
  if (args.json) {
    Json j = RebuildJson("decompress", args.input, "output", output, args.base, stats, rate);
    if (hub != nullptr) {
      // "hub" right after "output", as in compress.
      Json ordered;
      for (auto it = j.begin(); it != j.end(); ++it) {
        ordered[it.key()] = it.value();
        if (it.key() == "output") ordered["hub"] = *hub;
      }
      j = std::move(ordered);
    }
    PrintJson(j);
  } else if (!args.quiet) {
    PrintLine(absl::StrCat("decompressed ", shown, " -> ", output, ": ", HumanBytes(stats.input_bytes),
                           " -> ", HumanBytes(stats.output_bytes), ", ", HumanDuration(stats.seconds), ", ",
                           HumanRate(rate)));
  }
  return kExitOk;
}

int RunCompress(const CompressArgs& args) {
  if (IsHubInput(args.input)) return RunHubCompress(args);
  const std::string output = args.output.empty() ? DefaultCompressedName(args.input) : args.output;
  if (SamePath(args.input, output)) return RefuseSamePath("compress", args.input, output, args.json);
  if (InsideDirectory(args.input, output)) {
    return ReportError("compress", absl::StrCat(output, ": output would be inside the input directory ", args.input),
                       kExitUsage, args.json, "INVALID_ARGUMENT");
  }
  if (PathExists(args.input)) {
    if (int rc = CheckOutput("compress", output, args.force, IsDirectory(args.input), args.json); rc != kExitOk) {
      return rc;
    }
  }
  CompressOptions options;
  options.follow_symlinks = args.follow_symlinks;
  options.mode = args.storage ? Mode::kStorage : args.inference ? Mode::kInference : Mode::kBalanced;
  options.threads = args.threads;
  options.base = args.base;
  options.layer_pattern = args.layer_pattern;
  options.chunk_elements = args.chunk_elements;
  options.force = args.force;
  ProgressBar bar("compressing", ShowProgress(args.json, args.quiet));
  options.progress = bar.Callback();
  absl::StatusOr<CompressStats> stats = CompressPath(args.input, output, options);
  bar.Finish();
  if (!stats.ok()) return Fail("compress", stats.status(), args.json);
  return ReportCompressed(args, args.input, output, options.mode, *stats, nullptr);
}

int RunDecompress(const DecompressArgs& args) {
  if (IsHubInput(args.input)) return RunHubDecompress(args);
  const std::string output = args.output.empty() ? DefaultDecompressedName(args.input) : args.output;
  if (SamePath(args.input, output)) return RefuseSamePath("decompress", args.input, output, args.json);
  if (PathExists(args.input)) {
    if (int rc = CheckOutput("decompress", output, args.force, IsDirectory(args.input), args.json); rc != kExitOk) {
      return rc;
    }
  }
  DecompressOptions options;
  options.threads = args.threads;
  options.base = args.base;
  options.force = args.force;
  ProgressBar bar("decompressing", ShowProgress(args.json, args.quiet));
  options.progress = bar.Callback();
  absl::StatusOr<DecompressStats> stats = DecompressPath(args.input, output, options);
  bar.Finish();
  if (!stats.ok()) return Fail("decompress", stats.status(), args.json);
  return ReportDecompressed(args, args.input, output, *stats, nullptr);
}

int RunInfo(const InfoArgs& args) {
  if (IsHubInput(args.input)) return RunHubInfo(args);
  absl::StatusOr<Json> info = BuildInfo(args.input, args.tensors);
  if (!info.ok()) return Fail("info", info.status(), args.json);
  if (args.json) {
    PrintJson(*info);
  } else {
    std::fputs(FormatInfo(*info).c_str(), stdout);
    std::fflush(stdout);
  }
  return kExitOk;
}

int RunVerify(const VerifyArgs& args) {
  VerifyOptions options;
  options.threads = args.threads;
  options.base = args.base;
  options.against = args.against;
  ProgressBar bar("verifying", ShowProgress(args.json, args.quiet));
  options.progress = bar.Callback();
  absl::StatusOr<DecompressStats> stats = VerifyPath(args.input, options);
  bar.Finish();
  if (!stats.ok()) return Fail("verify", stats.status(), args.json);
  const double rate = Rate(stats->output_bytes, stats->seconds);
  if (args.json) {
    PrintJson(RebuildJson("verify", args.input, "against", args.against, args.base, *stats, rate));
  } else if (!args.quiet) {
    std::string line = absl::StrCat("verified ", args.input, ": OK, ", stats->files,
                                    stats->files == 1 ? " file, " : " files, ", stats->tensors, " tensors, ",
                                    HumanBytes(stats->output_bytes), ", every hash matches");
    if (stats->device_checksums + stats->group_checksums > 0) {
      absl::StrAppend(&line, " (with ", stats->device_checksums, " device checksums and ",
                      stats->group_checksums, " group checksums of format 1.1)");
    } else {
      absl::StrAppend(&line, " (format 1.0: no device or group checksums)");
    }
    if (!args.against.empty()) absl::StrAppend(&line, ", identical to ", args.against);
    absl::StrAppend(&line, ", ", HumanDuration(stats->seconds), ", ", HumanRate(rate));
    PrintLine(line);
  }
  return kExitOk;
}

}  // namespace bigsmall::cli
