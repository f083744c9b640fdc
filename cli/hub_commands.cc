#include "cli/hub_commands.h"

#include <atomic>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "cli/exit_codes.h"
#include "cli/format_util.h"
#include "cli/info_command.h"
#include "cli/progress_bar.h"
#include "codec/bs_reader.h"
#include "codec/byte_source.h"
#include "codec/compress.h"
#include "codec/decompress.h"
#include "codec/file_util.h"
#include "codec/format.h"
#include "codec/model_dir.h"
#include "codec/status_macros.h"
#include "codec/status_util.h"
#include "hub/hub_client.h"
#include "hub/hub_config.h"
#include "hub/hub_upload.h"
#include "hub/repo_ref.h"
#include "hub/secret.h"

namespace bigsmall::cli {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

// The manifest's size bound when info reads it over the network.
constexpr uint64_t kMaxManifestBytes = 64ull << 20;
// Where decompress assembles a compressed repo's snapshot for the codec (in
// the cache, next to the blobs it hard-links): <cache>/.bigsmall-staging/.
constexpr char kStagingDir[] = ".bigsmall-staging";
// What a compressed repo keeps the source's own README.md as (the model card
// takes its name; the manifest maps it back).
constexpr char kOriginalReadme[] = "README.original.md";

std::atomic<bool> harden_process_with_token{true};

// The parsed name, the config and a client: what every Hub command starts with.
struct HubSession {
  hub::RepoRef ref;
  std::unique_ptr<hub::HubClient> client;
};

// Parses the name (a malformed one is a usage error, exit 2) and reads the
// Hub's settings from the environment.
absl::Status OpenSession(const std::string& name, HubSession& s) {
  absl::StatusOr<hub::RepoRef> ref = hub::ParseRepoRef(name);
  if (!ref.ok()) return UsageError(ref.status().message());
  s.ref = *std::move(ref);
  absl::StatusOr<hub::HubConfig> config = hub::HubConfigFromEnvironment();
  if (!config.ok()) return config.status();
  // A process holding a token leaves no core file and refuses ptrace by its
  // peers (hub/secret.h); failing to is not fatal, only less protected. Not
  // in a library's host process (SetHardenProcessWithToken).
  if (!config->token.empty() && harden_process_with_token.load()) hub::DisableCoreDumps();
  s.client = std::make_unique<hub::HubClient>(*std::move(config));
  return absl::OkStatus();
}

std::string RepoName(const hub::RepoRef& ref) {
  const size_t slash = ref.repo_id.find('/');
  return slash == std::string::npos ? ref.repo_id : ref.repo_id.substr(slash + 1);
}

std::string HubLabel(const hub::RepoInfo& info) {
  return absl::StrCat("hf://", info.ref.repo_id, "@", info.commit);
}

Json HubJson(const HubSession& s, const hub::RepoInfo& info) {
  const hub::TransferStats t = s.client->http().stats();
  Json h;
  h["repo"] = info.ref.repo_id;
  h["revision"] = info.ref.revision;
  h["commit"] = info.commit;
  h["endpoint"] = s.client->config().endpoint;
  h["from_cache"] = info.from_cache;
  h["bytes_fetched"] = t.bytes;
  h["requests"] = t.requests;
  h["retries"] = t.retries;
  return h;
}

// Downloads `paths` of the resolved repo into the cache with one progress bar
// over all of them; returns their snapshot paths.
absl::StatusOr<std::vector<std::string>> DownloadAll(hub::HubClient& client, const hub::RepoInfo& info,
                                                     const std::vector<std::string>& paths, bool show) {
  uint64_t total = 0;
  for (const std::string& p : paths) {
    const hub::RepoFile* f = info.Find(p);
    if (f == nullptr) {
      return absl::NotFoundError(absl::StrCat(HubLabel(info), ": no file '", EscapeForLog(p), "'"));
    }
    total += f->size;
  }
  ProgressBar bar("downloading", show);
  std::vector<std::string> out;
  uint64_t before = 0;
  for (const std::string& p : paths) {
    hub::ProgressFn progress = nullptr;
    if (show) progress = [&bar, before, total](uint64_t done, uint64_t) { bar.Update(before + done, total); };
    absl::StatusOr<std::string> local = client.Download(info, p, progress);
    if (!local.ok()) {
      bar.Finish();
      return local.status();
    }
    out.push_back(*std::move(local));
    before += info.Find(p)->size;
    bar.Update(before, total);
  }
  bar.Finish();
  return out;
}

// The snapshot directory of the commit (huggingface_hub's layout):
// <cache>/models--owner--name/snapshots/<commit>.
std::string SnapshotDir(hub::HubClient& client, const hub::RepoInfo& info) {
  return (fs::path(client.cache().RepoDir(info.ref.repo_id)) / "snapshots" / info.commit).string();
}

// ---------------------------------------------------------------------------
// compress

// A sharded checkpoint's index (NAME.safetensors.index.json) names every
// shard: all of them must be in the listing. Offline, the listing is what
// the cache holds, which may be part of the repo; compressing a part would
// make a model that cannot load.
absl::Status CheckShardIndex(const hub::RepoInfo& info, const std::string& path, const std::string& local) {
  constexpr uint64_t kMaxIndexBytes = 64ull << 20;
  if (!absl::EndsWith(path, ".safetensors.index.json")) return absl::OkStatus();
  const std::string what = absl::StrCat(HubLabel(info), "/", EscapeForLog(path));
  ASSIGN_OR_RETURN(uint64_t size, FileSize(local));
  if (size > kMaxIndexBytes) return absl::InvalidArgumentError(absl::StrCat(what, ": ", size, " bytes, too large"));
  std::FILE* f = std::fopen(local.c_str(), "rb");
  if (f == nullptr) return ErrnoToStatus(errno, absl::StrCat("cannot open ", what));
  std::string text(size, '\0');
  const size_t got = std::fread(text.data(), 1, text.size(), f);
  std::fclose(f);
  if (got != text.size()) return absl::DataLossError(absl::StrCat(what, ": short read"));
  const Json index = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    return absl::OkStatus();  // not an index we know: copied as it is
  }
  const std::string dir = fs::path(path).parent_path().string();
  for (const auto& [tensor, shard] : index["weight_map"].items()) {
    if (!shard.is_string()) continue;
    const std::string rel = dir.empty() ? shard.get<std::string>() : absl::StrCat(dir, "/", shard.get<std::string>());
    if (info.Find(rel) != nullptr) continue;
    return absl::NotFoundError(absl::StrCat(
        what, " names the shard '", EscapeForLog(rel), "', which ",
        info.from_cache ? "the cache does not hold (offline: only what was downloaded before is there)"
                        : "the repo lacks"));
  }
  return absl::OkStatus();
}

std::string ModelCard(const hub::RepoInfo& info, const std::string& endpoint, const CompressStats& stats,
                      Mode mode, const std::string& base, bool kept_readme) {
  const std::string& repo = info.ref.repo_id;
  std::string card = absl::StrCat(
      "---\n"
      "tags:\n"
      "- bigsmall\n"
      "base_model: ", repo, "\n"
      "---\n\n"
      "# ", repo, " (BigSmall .bs, lossless)\n\n"
      "This is [", repo, "](", endpoint, "/", repo, ") at commit `", info.commit, "` (revision `",
      info.ref.revision, "`), compressed losslessly by BigSmall (`.bs` format ", kFormatVersionMajor, ".",
      kFormatVersionMinor, ", mode ", ModeName(mode), "). Each `*.safetensors` shard is stored as "
      "`NAME.safetensors.bs`; every other file is copied unchanged; `", kManifestName,
      "` lists them. Every tensor and every whole file is hashed: decompressing gives back the original "
      "files byte for byte.\n\n",
      "| | |\n|---|---|\n"
      "| original | ", HumanBytes(stats.input_bytes), " (", stats.input_bytes, " bytes, ", stats.files,
      stats.files == 1 ? " shard, " : " shards, ", stats.tensors, " tensors) |\n"
      "| stored | ", HumanBytes(stats.output_bytes), " (", Percent(stats.output_bytes, stats.input_bytes),
      " of the original) |\n\n"
      "## Loading it\n\n"
      "- The original safetensors files: `bigsmall decompress OWNER/THIS-REPO -o DIR` (from the Hub), or "
      "`bigsmall decompress ./this-directory -o DIR` (a local copy).\n"
      "- Straight to GPU memory: the `bigsmalld` daemon's `OpenModel{model: \"OWNER/THIS-REPO@REVISION\"}` "
      "streams the layers from the Hub by range requests (the first layer before the download completes), "
      "or `OpenModel` with the path of a local copy.\n"
      "- Python `from_pretrained` on this repo: planned (not available yet).\n\n"
      "`bigsmall info OWNER/THIS-REPO` describes the compressed files from their headers and indexes "
      "without downloading them.\n");
  if (!base.empty()) {
    absl::StrAppend(&card, "\nThe tensors are stored as a fine-tune delta against the base model `",
                    fs::path(base).filename().string(),
                    "`: decompressing needs that base (`bigsmall decompress ... --base BASE`).\n");
  }
  if (kept_readme) {
    absl::StrAppend(&card, "\nThe source repo's own README.md is kept as `", kOriginalReadme,
                    "` (decompress restores it as README.md).\n");
  }
  return card;
}

// In the compressed directory `dir`: a source README.md moves to another
// stored name (the manifest says so), and the model card becomes README.md.
absl::Status AddModelCard(const std::string& dir, const hub::RepoInfo& info, const std::string& endpoint,
                          const CompressStats& stats, Mode mode, const std::string& base) {
  ASSIGN_OR_RETURN(ModelManifest manifest, ReadManifest(dir));
  bool kept = false;
  std::set<std::string> names;
  for (const ManifestEntry& e : manifest.entries) {
    names.insert(e.stored);
    names.insert(e.original);
  }
  for (ManifestEntry& e : manifest.entries) {
    if (e.stored != "README.md") continue;
    std::string stored = kOriginalReadme;
    for (int n = 1; names.count(stored) != 0; ++n) stored = absl::StrCat("README.original.", n, ".md");
    if (std::rename((fs::path(dir) / e.stored).c_str(), (fs::path(dir) / stored).c_str()) != 0) {
      return ErrnoToStatus(errno, absl::StrCat("cannot rename ", EscapeForLog(dir), "/README.md"));
    }
    e.stored = stored;
    kept = true;
    std::error_code ec;
    fs::remove(fs::path(dir) / kManifestName, ec);
    if (ec) return ErrnoToStatus(ec.value(), absl::StrCat("cannot replace ", EscapeForLog(dir), "/", kManifestName));
    RETURN_IF_ERROR(WriteManifest(dir, manifest).status());
    break;
  }
  const std::string card = ModelCard(info, endpoint, stats, mode, base, kept);
  ASSIGN_OR_RETURN(AtomicFile f, AtomicFile::Create((fs::path(dir) / "README.md").string(), false));
  RETURN_IF_ERROR(f.Write(absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(card.data()), card.size())));
  return f.Commit();
}

}  // namespace

void SetHardenProcessWithToken(bool harden) { harden_process_with_token.store(harden); }

bool IsHubInput(const std::string& input) {
  if (PathExists(input) || !hub::LooksLikeHubName(input)) return false;
  if (absl::StartsWith(input, "hf://")) return true;
  // "models/x.bs" where ./models exists is a local path with a typo, not a
  // repo of the user "models" (which would cost a trip to the Hub and a
  // confusing 404, or minutes of retries without a network).
  return !IsDirectory(input.substr(0, input.find('/')));
}

absl::StatusOr<Json> HubCompress(const CompressArgs& args) {
  const bool show = ShowProgress(args.json, args.quiet);
  HubSession s;
  RETURN_IF_ERROR(OpenSession(args.input, s));
  const std::string output = args.output.empty() ? RepoName(s.ref) + ".bs" : args.output;
  RETURN_IF_ERROR(CheckOutput(output, args.force, /*directory=*/true));

  absl::StatusOr<hub::RepoInfo> info = s.client->Resolve(s.ref);
  if (!info.ok()) return info.status();
  std::vector<std::string> paths;
  bool shards = false;
  for (const hub::RepoFile& f : info->files) {
    if (f.path == kManifestName) {
      return absl::InvalidArgumentError(
          absl::StrCat(HubLabel(*info), " is already compressed (it has ", kManifestName, "): use bigsmall decompress"));
    }
    shards = shards || IsSafetensorsName(f.path);
    paths.push_back(f.path);
  }
  if (!shards) {
    return absl::InvalidArgumentError(absl::StrCat(HubLabel(*info), ": no .safetensors files in the repo"));
  }
  absl::StatusOr<std::vector<std::string>> local = DownloadAll(*s.client, *info, paths, show);
  if (!local.ok()) return local.status();
  for (size_t i = 0; i < paths.size(); ++i) RETURN_IF_ERROR(CheckShardIndex(*info, paths[i], (*local)[i]));
  const std::string snapshot = SnapshotDir(*s.client, *info);

  // The output is built under a temporary name (the codec writes the
  // compressed directory there, then the model card is added) and renamed
  // into place at the end.
  absl::StatusOr<AtomicDirectory> out = AtomicDirectory::Create(output, args.force);
  if (!out.ok()) return out.status();
  CompressOptions options;
  options.mode = args.storage ? Mode::kStorage : args.inference ? Mode::kInference : Mode::kBalanced;
  options.threads = args.threads;
  options.base = args.base;
  options.layer_pattern = args.layer_pattern;
  options.chunk_elements = args.chunk_elements;
  options.layout = args.layout == "aligned"  ? Layout::kAligned
                   : args.layout == "packed" ? Layout::kPacked
                                             : Layout::kAuto;
  options.force = true;  // over the (empty) temporary directory
  ProgressBar bar("compressing", show);
  options.progress = bar.Callback();
  absl::StatusOr<CompressStats> stats = CompressPath(snapshot, out->temp_path(), options);
  bar.Finish();
  if (!stats.ok()) return stats.status();
  RETURN_IF_ERROR(AddModelCard(out->temp_path(), *info, s.client->config().endpoint, *stats, options.mode, args.base));
  RETURN_IF_ERROR(out->Commit());

  const Json hub = HubJson(s, *info);
  return CompressedJson(args, output, options.mode, *stats, &hub);
}

int RunHubCompress(const CompressArgs& args) {
  absl::StatusOr<Json> j = HubCompress(args);
  if (!j.ok()) return Fail("compress", j.status(), args.json);
  return ReportCompressed(args.json, args.quiet, *j);
}

// ---------------------------------------------------------------------------
// decompress

namespace {

// A directory of hard links to a snapshot's files (the codec reads a
// compressed directory only when no file leads outside it, and a snapshot's
// files are symlinks into blobs/), removed when it goes. Lives in the cache,
// on the blobs' file system; a copy where a link is refused.
class Staging {
 public:
  static absl::StatusOr<Staging> Create(const std::string& cache_root) {
    const fs::path parent = fs::path(cache_root) / kStagingDir;
    int err = 0;
    // A few tries: another process may remove the (empty) parent in between.
    for (int attempt = 0; attempt < 3; ++attempt) {
      std::error_code ec;
      fs::create_directories(parent, ec);
      if (ec) return ErrnoToStatus(ec.value(), absl::StrCat("cannot create ", EscapeForLog(parent.string())));
      if (attempt == 0) ReapDead(parent);
      std::string templ = (parent / absl::StrCat(getpid(), ".XXXXXX")).string();
      if (mkdtemp(templ.data()) != nullptr) return Staging(std::move(templ));
      err = errno;
      if (err != ENOENT) break;
    }
    return ErrnoToStatus(err, absl::StrCat("cannot create a directory in ", EscapeForLog(parent.string())));
  }
  Staging(Staging&& other) noexcept : dir_(std::move(other.dir_)) { other.dir_.clear(); }
  Staging& operator=(Staging&&) = delete;
  ~Staging() {
    if (dir_.empty()) return;
    std::error_code ec;
    fs::remove_all(dir_, ec);
    // The parent goes too when no other run uses it (huggingface_hub's
    // scan_cache_dir warns about directories it does not know).
    rmdir(fs::path(dir_).parent_path().c_str());
  }
  const std::string& dir() const { return dir_; }

  absl::Status Add(const std::string& relative, const std::string& from) {
    RETURN_IF_ERROR(MakeParentDirs(dir_, relative));
    std::error_code ec;
    const fs::path real = fs::canonical(from, ec);
    if (ec) return ErrnoToStatus(ec.value(), absl::StrCat("cannot resolve ", EscapeForLog(from)));
    const std::string to = (fs::path(dir_) / relative).string();
    if (link(real.c_str(), to.c_str()) == 0) return absl::OkStatus();
    return CopyFile(real.string(), to);
  }

 private:
  explicit Staging(std::string dir) : dir_(std::move(dir)) {}
  // Staging directories of processes that no longer exist ("<pid>.XXXXXX").
  static void ReapDead(const fs::path& parent) {
    std::error_code ec;
    for (const fs::directory_entry& e : fs::directory_iterator(parent, ec)) {
      const std::string name = e.path().filename().string();
      int pid = 0;
      const std::vector<absl::string_view> parts = absl::StrSplit(name, absl::MaxSplits('.', 1));
      if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &pid) || pid <= 0) continue;
      if (kill(pid, 0) == 0 || errno != ESRCH) continue;
      std::error_code rm;
      if (e.is_directory(rm) && !e.is_symlink(rm)) fs::remove_all(e.path(), rm);
    }
  }
  std::string dir_;
};

std::string DefaultHubDecompressedName(const hub::RepoRef& ref) {
  std::string name = RepoName(ref);
  for (absl::string_view suffix : {"-bigsmall", "-bs", ".bs"}) {
    if (name.size() > suffix.size() && absl::EndsWith(name, suffix)) {
      name.resize(name.size() - suffix.size());
      break;
    }
  }
  return name;
}

absl::Status NotCompressed(const hub::RepoInfo& info) {
  return absl::InvalidArgumentError(absl::StrCat(HubLabel(info), " is not a BigSmall repo (no ", kManifestName,
                                                 " and not exactly one .bs file)"));
}

}  // namespace

absl::StatusOr<Json> HubDecompress(const DecompressArgs& args) {
  const bool show = ShowProgress(args.json, args.quiet);
  HubSession s;
  RETURN_IF_ERROR(OpenSession(args.input, s));
  absl::StatusOr<hub::RepoInfo> info = s.client->Resolve(s.ref);
  if (!info.ok()) return info.status();

  const bool directory = info->Find(kManifestName) != nullptr;
  std::vector<std::string> bs_files;
  for (const hub::RepoFile& f : info->files) {
    if (absl::EndsWith(f.path, ".bs")) bs_files.push_back(f.path);
  }
  if (!directory && bs_files.size() != 1) return NotCompressed(*info);
  std::string output = args.output;
  if (output.empty()) {
    output = directory ? DefaultHubDecompressedName(s.ref)
                       : DefaultDecompressedName(fs::path(bs_files.front()).filename().string());
  }
  RETURN_IF_ERROR(CheckOutput(output, args.force, directory));

  DecompressOptions options;
  options.threads = args.threads;
  options.base = args.base;
  options.force = args.force;
  absl::StatusOr<DecompressStats> stats;
  if (!directory) {
    absl::StatusOr<std::vector<std::string>> local = DownloadAll(*s.client, *info, bs_files, show);
    if (!local.ok()) return local.status();
    ProgressBar bar("decompressing", show);
    options.progress = bar.Callback();
    stats = DecompressPath(local->front(), output, options);
  } else {
    // The manifest first: it says which files matter (a model card or
    // .gitattributes the repo also holds are not part of the model).
    absl::StatusOr<std::vector<std::string>> manifest_file =
        DownloadAll(*s.client, *info, {kManifestName}, /*show=*/false);
    if (!manifest_file.ok()) return manifest_file.status();
    const std::string snapshot = SnapshotDir(*s.client, *info);
    absl::StatusOr<ModelManifest> manifest = ReadManifest(snapshot);
    if (!manifest.ok()) return manifest.status();
    std::vector<std::string> paths;
    for (const ManifestEntry& e : manifest->entries) paths.push_back(e.stored);
    absl::StatusOr<std::vector<std::string>> local = DownloadAll(*s.client, *info, paths, show);
    if (!local.ok()) return local.status();
    absl::StatusOr<Staging> staging = Staging::Create(s.client->cache().root());
    if (!staging.ok()) return staging.status();
    absl::Status st = staging->Add(kManifestName, manifest_file->front());
    for (size_t i = 0; st.ok() && i < paths.size(); ++i) st = staging->Add(paths[i], (*local)[i]);
    if (!st.ok()) return st;
    ProgressBar bar("decompressing", show);
    options.progress = bar.Callback();
    stats = DecompressPath(staging->dir(), output, options);
  }
  if (!stats.ok()) return stats.status();
  const Json hub = HubJson(s, *info);
  return DecompressedJson(args, output, *stats, &hub);
}

int RunHubDecompress(const DecompressArgs& args) {
  absl::StatusOr<Json> j = HubDecompress(args);
  if (!j.ok()) return Fail("decompress", j.status(), args.json);
  return ReportDecompressed(args.json, args.quiet, *j);
}

// ---------------------------------------------------------------------------
// info

absl::StatusOr<Json> HubInfo(const InfoArgs& args) {
  HubSession s;
  RETURN_IF_ERROR(OpenSession(args.input, s));
  absl::StatusOr<hub::RepoInfo> info = s.client->Resolve(s.ref);
  if (!info.ok()) return info.status();
  const std::string label = HubLabel(*info);
  hub::HubClient& client = *s.client;
  const hub::RepoInfo& repo = *info;

  InfoFiles remote;
  remote.open = [&](const std::string& stored) -> absl::StatusOr<std::unique_ptr<BsReader>> {
    if (repo.Find(stored) == nullptr) {
      return absl::NotFoundError(absl::StrCat(label, ": no file '", EscapeForLog(stored), "'"));
    }
    ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> source, client.OpenRemote(repo, stored));
    return BsReader::Open(std::move(source));
  };
  remote.size = [&](const std::string& stored) -> absl::StatusOr<uint64_t> {
    const hub::RepoFile* f = repo.Find(stored);
    if (f == nullptr) return absl::NotFoundError(absl::StrCat(label, ": no file '", EscapeForLog(stored), "'"));
    return f->size;
  };

  absl::StatusOr<Json> j;
  if (const hub::RepoFile* mf = repo.Find(kManifestName); mf != nullptr) {
    j = [&]() -> absl::StatusOr<Json> {
      if (mf->size > kMaxManifestBytes) {
        return absl::DataLossError(absl::StrCat(label, "/", kManifestName, ": ", mf->size, " bytes, over the ",
                                                kMaxManifestBytes, "-byte bound"));
      }
      ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> source, client.OpenRemote(repo, kManifestName));
      ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, ReadRange(*source, 0, source->size()));
      ASSIGN_OR_RETURN(ModelManifest manifest,
                       ParseManifest(std::string(bytes.begin(), bytes.end()), absl::StrCat(label, "/", kManifestName)));
      return BuildDirectoryInfo(label, manifest, mf->size, remote, args.tensors);
    }();
  } else {
    std::vector<std::string> bs_files;
    for (const hub::RepoFile& f : repo.files) {
      if (absl::EndsWith(f.path, ".bs")) bs_files.push_back(f.path);
    }
    if (bs_files.size() != 1) {
      j = NotCompressed(repo);
    } else {
      j = [&]() -> absl::StatusOr<Json> {
        ASSIGN_OR_RETURN(std::unique_ptr<BsReader> reader, remote.open(bs_files.front()));
        return BuildFileInfo(*reader, absl::StrCat(label, "/", bs_files.front()), args.tensors);
      }();
    }
  }
  if (!j.ok()) return j.status();
  // "hub" goes first after the path, so that text and JSON read alike.
  Json out;
  for (auto it = j->begin(); it != j->end(); ++it) {
    out[it.key()] = it.value();
    if (it.key() == "kind") out["hub"] = HubJson(s, repo);
  }
  return out;
}

int RunHubInfo(const InfoArgs& args) {
  absl::StatusOr<Json> out = HubInfo(args);
  if (!out.ok()) return Fail("info", out.status(), args.json);
  if (args.json) {
    PrintJson(*out);
  } else {
    std::fputs(FormatInfo(*out).c_str(), stdout);
    std::fflush(stdout);
  }
  return kExitOk;
}

// ---------------------------------------------------------------------------
// upload

absl::StatusOr<Json> HubUpload(const UploadArgs& args) {
  if (!PathExists(args.dir)) return absl::NotFoundError(absl::StrCat(args.dir, ": no such directory"));
  if (!IsDirectory(args.dir)) {
    return UsageError(absl::StrCat(args.dir, ": not a directory (upload publishes a directory)"));
  }
  HubSession s;
  RETURN_IF_ERROR(OpenSession(args.repo, s));
  hub::UploadOptions options;
  options.revision = args.revision;
  if (s.ref.revision_given) {
    if (args.revision != hub::kDefaultRevision && args.revision != s.ref.revision) {
      return UsageError(
          absl::StrCat("two branches given: '", s.ref.revision, "' and --revision '", args.revision, "'"));
    }
    options.revision = s.ref.revision;
  }
  if (s.client->config().offline) {
    return absl::FailedPreconditionError("HF_HUB_OFFLINE is set: uploading needs the network");
  }
  options.create_repo = args.create;
  options.private_repo = args.private_repo;
  if (!args.message.empty()) options.commit_message = args.message;
  ProgressBar bar("uploading", ShowProgress(args.json, args.quiet));
  options.progress = bar.Callback();
  absl::StatusOr<hub::UploadResult> r = hub::UploadFolder(*s.client, args.dir, s.ref.repo_id, options);
  bar.Finish();
  if (!r.ok()) return r.status();
  Json j;
  j["ok"] = true;
  j["command"] = "upload";
  j["input"] = args.dir;
  j["repo"] = s.ref.repo_id;
  j["revision"] = options.revision;
  j["commit"] = r->commit;
  j["commit_url"] = r->commit_url;
  j["files"] = r->files;
  j["lfs_files_sent"] = r->lfs_files_sent;
  j["lfs_files_skipped"] = r->lfs_files_skipped;
  j["bytes_sent"] = r->bytes_sent;
  return j;
}

int RunUpload(const UploadArgs& args) {
  absl::StatusOr<Json> j = HubUpload(args);
  if (!j.ok()) return Fail("upload", j.status(), args.json);
  if (args.json) {
    PrintJson(*j);
  } else if (!args.quiet) {
    const uint64_t files = (*j)["files"].get<uint64_t>();
    PrintLine(absl::StrCat("uploaded ", args.dir, " -> ", (*j)["repo"].get<std::string>(), "@",
                           (*j)["revision"].get<std::string>(), ": ", files, files == 1 ? " file" : " files", " (",
                           (*j)["lfs_files_sent"].get<uint64_t>(), " LFS sent, ",
                           (*j)["lfs_files_skipped"].get<uint64_t>(), " already on the Hub), ",
                           HumanBytes((*j)["bytes_sent"].get<uint64_t>()), " sent"));
    PrintLine(absl::StrCat("commit ", (*j)["commit"].get<std::string>(), ": ", (*j)["commit_url"].get<std::string>()));
  }
  return kExitOk;
}

}  // namespace bigsmall::cli
