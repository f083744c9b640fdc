// bigsmall: lossless compression of safetensors model weights into .bs files.
//
//   bigsmall compress INPUT [-o OUT] [--storage|--inference] [--base BASE] ...
//   bigsmall decompress INPUT.bs [-o OUT] [--base BASE] ...
//   bigsmall info FILE.bs [--json] [--tensors]
//   bigsmall verify FILE.bs [--against ORIGINAL] [--base BASE] ...
//   bigsmall upload DIR owner/repo [--private] [--revision BRANCH] [--create] [-m MESSAGE]
//   bigsmall help [COMMAND] | --version
// compress, decompress and info also take a Hugging Face Hub model,
// owner/repo[@revision] or hf://owner/repo[@revision] (cli/hub_commands.h).
//
// Exit codes (see cli/exit_codes.h, printed by `bigsmall help`):
//   0 ok, 1 other failure (I/O etc.), 2 usage error, 3 corrupt or mismatching
//   data, 4 not found, 5 wrong or missing base / precondition, 6 output exists,
//   7 authentication needed or refused (the Hub's 401).
//
// CLI11 reports parse problems by throwing; those exceptions are caught here
// and nowhere else. Everything below main works with absl::Status.

#include <cstdio>
#include <exception>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/exit_codes.h"
#include "cli/hub_commands.h"
#include "codec/file_util.h"
#include "codec/format.h"
#include "codec/tensor_codec.h"

#ifndef BIGSMALL_VERSION
#define BIGSMALL_VERSION "0.0.0"
#endif

namespace bigsmall::cli {
namespace {

std::string VersionText() {
  return absl::StrCat("bigsmall ", BIGSMALL_VERSION, " (.bs format ", kFormatVersionMajor, ".",
                      kFormatVersionMinor, ", rANS decoder ", DecoderImplName(BestDecoderImpl()), ")");
}

constexpr char kDescription[] =
    "BigSmall: lossless compression of safetensors model weights into .bs files.\n"
    "Every tensor and the whole file are hashed; decompress rebuilds the original byte for byte.";

constexpr char kNotes[] =
    "Notes:\n"
    "  INPUT may be a .safetensors file or a model directory (every *.safetensors\n"
    "  shard is compressed, every other file is copied).\n"
    "  Default outputs: X.safetensors -> X.safetensors.bs, DIR -> DIR.bs, and back.\n"
    "  compress, decompress and info also take a Hugging Face Hub model: hf://owner/repo[@rev],\n"
    "  or owner/repo[@rev] when no local path of that name and no local directory 'owner'\n"
    "  exist. compress downloads it into huggingface_hub's cache (resumable) and writes a .bs\n"
    "  directory with a model card (README.md); decompress downloads a compressed repo and\n"
    "  rebuilds the original files; info reads only the .bs headers and indexes (range\n"
    "  requests). upload publishes a directory. The Hub is configured as huggingface_hub does\n"
    "  it: HF_ENDPOINT, HF_TOKEN (or the token file `huggingface-cli login` writes),\n"
    "  HF_HUB_OFFLINE=1 (the cache only), HF_HUB_CACHE / HF_HOME. The token is never printed.\n"
    "  Outputs are written atomically; an existing output needs --force.\n"
    "  An interrupted run (SIGINT, SIGTERM, SIGHUP) removes its temporary output;\n"
    "  leftovers of a killed run are removed by the next run writing that output.\n"
    "  'ratio' in --json output is stored bytes / original bytes.\n"
    "  Progress goes to stderr (only on a terminal); summaries and --json to stdout.\n";

constexpr char kBsInput[] = ".bs file, compressed directory, or Hub repo owner/repo[@revision]";

// Options shared by the commands that run a job.
void AddThreadsOption(CLI::App* cmd, int& threads) {
  cmd->add_option("--threads", threads, "Worker threads (0: all cores)")->check(CLI::NonNegativeNumber);
}
void AddForceFlag(CLI::App* cmd, bool& force) {
  cmd->add_flag("-f,--force", force,
                "Overwrite an existing output of the same kind (a file with a file, a directory with a directory)");
}
void AddReportFlags(CLI::App* cmd, bool& json, bool& quiet) {
  cmd->add_flag("--json", json, "Print one JSON object with the stats");
  cmd->add_flag("-q,--quiet", quiet, "No progress bar, no summary");
}

int Main(int argc, char** argv) {
  CLI::App app{kDescription, "bigsmall"};
  app.set_version_flag("--version", VersionText(), "Print the version and exit");
  app.footer(absl::StrCat("\n", kNotes, "\n", ExitCodeHelp()));
  app.require_subcommand(1);

  CompressArgs ca;
  CLI::App* compress =
      app.add_subcommand("compress", "Compress a .safetensors file, a model directory or a Hub model");
  compress->add_option("INPUT", ca.input, ".safetensors file, model directory, or Hub model owner/repo[@revision]")
      ->required();
  compress->add_option("-o,--output", ca.output, "Output path (default: INPUT.bs; a Hub model: NAME.bs)");
  CLI::Option* storage =
      compress->add_flag("--storage", ca.storage,
                         "Smallest output: every candidate per tensor measured (exponent-conditioned mantissa "
                         "tables, larger chunks, zstd -19 on small and structured tensors), smallest kept");
  CLI::Option* inference =
      compress->add_flag("--inference", ca.inference,
                         "Fastest decode: per tensor, the cheapest-to-decode coding within 0.2% of the "
                         "smallest; default is balanced");
  storage->excludes(inference);
  compress->add_option("--base", ca.base, "Store a fine-tune as a delta against this base file or directory");
  AddThreadsOption(compress, ca.threads);
  compress->add_option("--layer-pattern", ca.layer_pattern,
                       "Custom layer grouping: a prefix with one {N}, e.g. 'decoder.block.{N}.'");
  compress->add_option("--chunk-elements", ca.chunk_elements, "Elements per coded chunk (default: the mode's)")
      ->check(CLI::Range(uint32_t{1}, kMaxChunkElements));
  compress->add_option("--layout", ca.layout,
                       "File layout: aligned (4 KiB-aligned groups, for O_DIRECT reads), packed (no padding), "
                       "or auto (packed below 64 MiB of original; the default)")
      ->check(CLI::IsMember({"auto", "aligned", "packed"}));
  compress->add_flag("--follow-symlinks", ca.follow_symlinks,
                     "Directories: also follow symlinks that point outside the model directory "
                     "(by default only links inside it, or into its Hugging Face repo's blobs/, are followed)");
  AddForceFlag(compress, ca.force);
  AddReportFlags(compress, ca.json, ca.quiet);

  DecompressArgs da;
  CLI::App* decompress =
      app.add_subcommand("decompress", "Rebuild the original file or directory from .bs (local or a Hub repo)");
  decompress->add_option("INPUT", da.input, kBsInput)->required();
  decompress->add_option("-o,--output", da.output, "Output path (default: INPUT without .bs)");
  decompress->add_option("--base", da.base, "The base model a fine-tune delta was made against");
  AddThreadsOption(decompress, da.threads);
  AddForceFlag(decompress, da.force);
  AddReportFlags(decompress, da.json, da.quiet);

  InfoArgs ia;
  CLI::App* info =
      app.add_subcommand("info", "Describe a .bs file, a compressed directory or a compressed Hub repo");
  info->add_option("INPUT", ia.input, kBsInput)->required();
  info->add_flag("--json", ia.json, "Print one JSON object");
  info->add_flag("--tensors", ia.tensors, "Add a per-tensor table (reads every tensor's blob header)");

  VerifyArgs va;
  CLI::App* verify = app.add_subcommand("verify", "Decode everything and check every hash");
  verify->add_option("INPUT", va.input, kBsInput)->required();
  verify->add_option("--against", va.against, "Also compare the rebuilt bytes with this original");
  verify->add_option("--base", va.base, "The base model a fine-tune delta was made against");
  AddThreadsOption(verify, va.threads);
  AddReportFlags(verify, va.json, va.quiet);

  UploadArgs ua;
  CLI::App* upload =
      app.add_subcommand("upload", "Publish a directory (e.g. a compressed one) to the Hugging Face Hub");
  upload->add_option("DIR", ua.dir, "Directory to upload (every regular file in it)")->required();
  upload->add_option("REPO", ua.repo, "Hub repo owner/name")->required();
  upload->add_option("--revision", ua.revision, "Branch to commit to (default: main)");
  upload->add_flag("--create", ua.create, "Create the repo first (an existing one is fine)");
  upload->add_flag("--private", ua.private_repo, "Make the repo private when creating it");
  upload->add_option("-m,--message", ua.message, "Commit message");
  AddReportFlags(upload, ua.json, ua.quiet);

  std::string help_topic;
  CLI::App* help = app.add_subcommand("help", "Show help for bigsmall or one command");
  help->add_option("COMMAND", help_topic, "Command to describe");

  // After parsing, App::help() describes the selected subcommand; keep the top-level text.
  const std::string main_help = app.help();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);  // --help, --version
    std::fprintf(stderr, "bigsmall: error: %s\nRun 'bigsmall help' for usage.\n", e.what());
    return kExitUsage;
  }

  if (help->parsed()) {
    if (help_topic.empty()) {
      std::fputs(main_help.c_str(), stdout);
      return kExitOk;
    }
    for (CLI::App* sub : {compress, decompress, info, verify, upload, help}) {
      if (sub->get_name() == help_topic) {
        std::fputs(sub->help().c_str(), stdout);  // the footer lists the exit codes
        return kExitOk;
      }
    }
    std::fprintf(stderr, "bigsmall: error: unknown command '%s'\nRun 'bigsmall help' for usage.\n",
                 help_topic.c_str());
    return kExitUsage;
  }
  if (compress->parsed()) return RunCompress(ca);
  if (decompress->parsed()) return RunDecompress(da);
  if (info->parsed()) return RunInfo(ia);
  if (verify->parsed()) return RunVerify(va);
  if (upload->parsed()) return RunUpload(ua);
  std::fputs(main_help.c_str(), stderr);
  return kExitUsage;
}

}  // namespace
}  // namespace bigsmall::cli

int main(int argc, char** argv) {
  // Last line of defence: nothing below throws by design, but std::bad_alloc
  // (or a CLI11 formatting exception) must not abort the process.
  bigsmall::InstallTempCleanupOnSignals();
  try {
    return bigsmall::cli::Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bigsmall: error: %s\n", e.what());
    return bigsmall::cli::kExitFailure;
  }
}
