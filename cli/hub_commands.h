// The Hugging Face Hub as a source and a destination for the `bigsmall`
// commands (hub/): compress, decompress and info of a Hub model named
// "owner/repo[@revision]" or "hf://owner/repo[@revision]", and upload.
// The environment configures the Hub the way huggingface_hub reads it
// (hub/hub_config.h: HF_ENDPOINT, HF_TOKEN or the token file, HF_HUB_OFFLINE,
// HF_HUB_CACHE / HF_HOME), so both share one cache and one login. A process
// that loaded a token disables its core dumps first; the token is never
// printed.
#ifndef BIGSMALL_CLI_HUB_COMMANDS_H_
#define BIGSMALL_CLI_HUB_COMMANDS_H_

#include <string>

#include "absl/status/statusor.h"
#include "cli/commands.h"
#include "nlohmann/json.hpp"

namespace bigsmall::cli {

// True when a command's INPUT names a Hub model: "hf://owner/repo[@rev]", or
// "owner/repo[@rev]" when that is no existing local path and no local
// directory "owner" exists (hub::LooksLikeHubName).
bool IsHubInput(const std::string& input);

// Whether a Hub command that loaded a token disables the process's core
// dumps and ptrace first (hub::DisableCoreDumps). On by default (the CLI);
// the Python extension turns it off at import: changing a user's
// interpreter process behind its back is not a library's business, and
// there the token is in the environment or huggingface_hub's memory anyway.
void SetHardenProcessWithToken(bool harden);

// Downloads every file of the repo at the revision into the cache (with
// progress; an interrupted run resumes the partial files), compresses it as
// a model directory into args.output (default: NAME.bs) and adds a README.md
// model card saying what it is and how to load it (a README.md of the source
// is kept, under another stored name the manifest maps back).
// HubCompress does it and returns the --json summary (or the failure);
// RunHubCompress also reports it, as `bigsmall compress owner/repo` does.
absl::StatusOr<nlohmann::ordered_json> HubCompress(const CompressArgs& args);
int RunHubCompress(const CompressArgs& args);
// Downloads a compressed repo (its manifest and the files it lists) and
// rebuilds the original files into args.output.
absl::StatusOr<nlohmann::ordered_json> HubDecompress(const DecompressArgs& args);
int RunHubDecompress(const DecompressArgs& args);
// Describes a compressed repo from its .bs headers and indexes only (range
// requests), with the repo, revision and commit.
absl::StatusOr<nlohmann::ordered_json> HubInfo(const InfoArgs& args);
int RunHubInfo(const InfoArgs& args);

struct UploadArgs {
  std::string dir;
  std::string repo;  // "owner/name"
  std::string revision = "main";
  bool private_repo = false;
  bool create = false;
  std::string message;
  bool json = false;
  bool quiet = false;
};
// Publishes every regular file of args.dir as one commit (hub::UploadFolder);
// HubUpload returns the --json summary (or the failure), RunUpload reports it.
absl::StatusOr<nlohmann::ordered_json> HubUpload(const UploadArgs& args);
int RunUpload(const UploadArgs& args);

}  // namespace bigsmall::cli

#endif  // BIGSMALL_CLI_HUB_COMMANDS_H_
