#include "cli/commands.h"

#include <cstdio>
#include <filesystem>
#include <cstdint>
#include <string>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/cord.h"
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

absl::Status RefuseSamePath(const std::string& output) {
  return UsageError(absl::StrCat(output, ": output would overwrite the input (choose another -o)"));
}

// The Hub label a summary names its input by (the "hub" object's repo and
// commit), else the input as given.
std::string Shown(const Json& summary) {
  if (summary.contains("hub")) {
    const Json& hub = summary["hub"];
    return absl::StrCat("hf://", hub["repo"].get<std::string>(), "@", hub["commit"].get<std::string>());
  }
  return summary["input"].get<std::string>();
}

constexpr char kUsagePayload[] = "type.googleapis.com/bigsmall.cli.UsageError";

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

absl::Status AsUsageError(absl::Status status) {
  status.SetPayload(kUsagePayload, absl::Cord("1"));
  return status;
}

absl::Status UsageError(absl::string_view message) {
  return AsUsageError(absl::InvalidArgumentError(message));
}

bool IsUsageError(const absl::Status& status) { return status.GetPayload(kUsagePayload).has_value(); }

int CliExitCode(const absl::Status& status) { return IsUsageError(status) ? kExitUsage : ExitCodeFor(status); }

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
  return ReportError(command, std::string(status.message()), CliExitCode(status), json,
                     absl::StatusCodeToString(status.code()));
}

// Before any work: the output must be creatable (docs/FORMAT.md "Errors":
// an existing output needs --force, and --force replaces a file with a file,
// a directory with a directory); stale temporaries of dead runs are removed.
absl::Status CheckOutput(const std::string& output, bool force, bool directory) {
  ReapStaleTemps(output);
  absl::Status st = CheckOutputReplaceable(output, force, directory);
  if (absl::IsInvalidArgument(st)) return AsUsageError(std::move(st));
  return st;
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

Json CompressedJson(const CompressArgs& args, const std::string& output, Mode mode, const CompressStats& stats,
                    const Json* hub) {
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
  j["bytes_per_second"] = Rate(stats.input_bytes, stats.seconds);
  return j;
}

Json DecompressedJson(const DecompressArgs& args, const std::string& output, const DecompressStats& stats,
                      const Json* hub) {
  const double rate = Rate(stats.output_bytes, stats.seconds);
  Json j = RebuildJson("decompress", args.input, "output", output, args.base, stats, rate);
  if (hub == nullptr) return j;
  // "hub" right after "output", as in compress.
  Json ordered;
  for (auto it = j.begin(); it != j.end(); ++it) {
    ordered[it.key()] = it.value();
    if (it.key() == "output") ordered["hub"] = *hub;
  }
  return ordered;
}

int ReportCompressed(bool json, bool quiet, const Json& j) {
  if (json) {
    PrintJson(j);
  } else if (!quiet) {
    const uint64_t in = j["input_bytes"].get<uint64_t>();
    const uint64_t out = j["output_bytes"].get<uint64_t>();
    PrintLine(absl::StrCat("compressed ", Shown(j), " -> ", j["output"].get<std::string>(), ": ", HumanBytes(in),
                           " -> ", HumanBytes(out), " (", Percent(out, in), "), ",
                           HumanDuration(j["seconds"].get<double>()), ", ",
                           HumanRate(j["bytes_per_second"].get<double>())));
  }
  return kExitOk;
}

int ReportDecompressed(bool json, bool quiet, const Json& j) {
  if (json) {
    PrintJson(j);
  } else if (!quiet) {
    PrintLine(absl::StrCat("decompressed ", Shown(j), " -> ", j["output"].get<std::string>(), ": ",
                           HumanBytes(j["input_bytes"].get<uint64_t>()), " -> ",
                           HumanBytes(j["output_bytes"].get<uint64_t>()), ", ",
                           HumanDuration(j["seconds"].get<double>()), ", ",
                           HumanRate(j["bytes_per_second"].get<double>())));
  }
  return kExitOk;
}

absl::StatusOr<Json> CompressToJson(const CompressArgs& args) {
  if (IsHubInput(args.input)) return HubCompress(args);
  const std::string output = args.output.empty() ? DefaultCompressedName(args.input) : args.output;
  if (SamePath(args.input, output)) return RefuseSamePath(output);
  if (InsideDirectory(args.input, output)) {
    return UsageError(absl::StrCat(output, ": output would be inside the input directory ", args.input));
  }
  if (PathExists(args.input)) {
    if (absl::Status st = CheckOutput(output, args.force, IsDirectory(args.input)); !st.ok()) return st;
  }
  CompressOptions options;
  options.follow_symlinks = args.follow_symlinks;
  options.mode = args.storage ? Mode::kStorage : args.inference ? Mode::kInference : Mode::kBalanced;
  options.threads = args.threads;
  options.base = args.base;
  options.layer_pattern = args.layer_pattern;
  options.chunk_elements = args.chunk_elements;
  options.layout = args.layout == "aligned"  ? Layout::kAligned
                   : args.layout == "packed" ? Layout::kPacked
                                             : Layout::kAuto;
  options.force = args.force;
  ProgressBar bar("compressing", ShowProgress(args.json, args.quiet));
  options.progress = bar.Callback();
  absl::StatusOr<CompressStats> stats = CompressPath(args.input, output, options);
  bar.Finish();
  if (!stats.ok()) return stats.status();
  return CompressedJson(args, output, options.mode, *stats, nullptr);
}

absl::StatusOr<Json> DecompressToJson(const DecompressArgs& args) {
  if (IsHubInput(args.input)) return HubDecompress(args);
  const std::string output = args.output.empty() ? DefaultDecompressedName(args.input) : args.output;
  if (SamePath(args.input, output)) return RefuseSamePath(output);
  if (PathExists(args.input)) {
    if (absl::Status st = CheckOutput(output, args.force, IsDirectory(args.input)); !st.ok()) return st;
  }
  DecompressOptions options;
  options.threads = args.threads;
  options.base = args.base;
  options.force = args.force;
  ProgressBar bar("decompressing", ShowProgress(args.json, args.quiet));
  options.progress = bar.Callback();
  absl::StatusOr<DecompressStats> stats = DecompressPath(args.input, output, options);
  bar.Finish();
  if (!stats.ok()) return stats.status();
  return DecompressedJson(args, output, *stats, nullptr);
}

absl::StatusOr<Json> InfoToJson(const InfoArgs& args) {
  if (IsHubInput(args.input)) return HubInfo(args);
  return BuildInfo(args.input, args.tensors);
}

absl::StatusOr<Json> VerifyToJson(const VerifyArgs& args) {
  VerifyOptions options;
  options.threads = args.threads;
  options.base = args.base;
  options.against = args.against;
  ProgressBar bar("verifying", ShowProgress(args.json, args.quiet));
  options.progress = bar.Callback();
  absl::StatusOr<DecompressStats> stats = VerifyPath(args.input, options);
  bar.Finish();
  if (!stats.ok()) return stats.status();
  const double rate = Rate(stats->output_bytes, stats->seconds);
  return RebuildJson("verify", args.input, "against", args.against, args.base, *stats, rate);
}

int RunCompress(const CompressArgs& args) {
  absl::StatusOr<Json> j = CompressToJson(args);
  if (!j.ok()) return Fail("compress", j.status(), args.json);
  return ReportCompressed(args.json, args.quiet, *j);
}

int RunDecompress(const DecompressArgs& args) {
  absl::StatusOr<Json> j = DecompressToJson(args);
  if (!j.ok()) return Fail("decompress", j.status(), args.json);
  return ReportDecompressed(args.json, args.quiet, *j);
}

int RunInfo(const InfoArgs& args) {
  absl::StatusOr<Json> info = InfoToJson(args);
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
  absl::StatusOr<Json> j = VerifyToJson(args);
  if (!j.ok()) return Fail("verify", j.status(), args.json);
  if (args.json) {
    PrintJson(*j);
  } else if (!args.quiet) {
    const uint64_t files = (*j)["files"].get<uint64_t>();
    const uint64_t device_checksums = (*j)["device_checksums"].get<uint64_t>();
    const uint64_t group_checksums = (*j)["group_checksums"].get<uint64_t>();
    const std::string against = (*j)["against"].get<std::string>();
    std::string line = absl::StrCat("verified ", args.input, ": OK, ", files, files == 1 ? " file, " : " files, ",
                                    (*j)["tensors"].get<uint64_t>(), " tensors, ",
                                    HumanBytes((*j)["output_bytes"].get<uint64_t>()), ", every hash matches");
    if (device_checksums + group_checksums > 0) {
      absl::StrAppend(&line, " (with ", device_checksums, " device checksums and ", group_checksums,
                      " group checksums of format 1.1)");
    } else {
      absl::StrAppend(&line, " (format 1.0: no device or group checksums)");
    }
    if (!against.empty()) absl::StrAppend(&line, ", identical to ", against);
    absl::StrAppend(&line, ", ", HumanDuration((*j)["seconds"].get<double>()), ", ",
                    HumanRate((*j)["bytes_per_second"].get<double>()));
    PrintLine(line);
  }
  return kExitOk;
}

}  // namespace bigsmall::cli
