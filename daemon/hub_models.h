// Hugging Face Hub models in the daemon (docs/API.md "Hugging Face Hub
// models"): OpenModel{model: "owner/repo[@rev]"} or "hf://owner/repo[@rev]".
//
//  * The allow list (hub_allow) is checked before any network request; a
//    repo it refuses, and a private or gated repo that no explicit pattern
//    lists (the default list is "any public repo"), is PERMISSION_DENIED
//    with one message (kHubNotAllowed).
//  * The revision is resolved to a commit with the daemon's own token (a
//    client never supplies one); the model is "hf://owner/repo@commit", so
//    a branch that moved is another model.
//  * Every .bs shard (top-level *.bs of the commit; with
//    model.safetensors.index.json every shard it names must be there) is a
//    ByteSource that reads the cached blob when the cache has it, else by
//    ranged GETs (HubClient::OpenRemote): the first layer is served before
//    the model is downloaded. Meanwhile a background fill, hub_concurrency
//    files at a time at most hub_max_bandwidth bytes/s, writes the files
//    into huggingface_hub's cache (verified: the LFS sha256 or the git blob
//    id; a corrupt download is never made visible), and the open model's
//    reads switch to the cached blob once it is complete.
//  * Each byte of a shard is fetched once in the common case (one client
//    streaming in layer order): the fill appends the blob's .incomplete in
//    order, and a read of a file being filled (after Fill; OpenModel's own
//    header and index reads are ranged GETs) is served from the
//    .incomplete when the fill has written it; when it starts at most
//    hub_read_ahead past the fill's prefix it waits for the fill, which
//    then fetches up to the nearest waiting read's end at once without the
//    bandwidth limit; farther reads (a client starting at a late layer, a
//    layer after a large embedding) are ranged GETs of their own, whose
//    bytes (at most 256 MiB held over all files) the fill appends when it
//    gets there instead of fetching them again (it waits for such a read
//    in flight over its prefix). A file a reader needs that no worker took
//    is started at once by one extra thread (or the read is a ranged GET
//    while that thread is busy). A fill that fails, or makes no progress
//    for 30 s, sends its waiting reads to ranged GETs (and a failed fill
//    is not restarted by reads, only by the next Fill); a fill whose sha256
//    check fails at Commit removes the .incomplete and this daemon never
//    reads that file's .incomplete again. The pipeline's group checksums
//    and tensor hashes verify every read, wherever it came from.
//  * Offline (hub_offline or HF_HUB_OFFLINE): only what the cache holds.
#ifndef BIGSMALL_DAEMON_HUB_MODELS_H_
#define BIGSMALL_DAEMON_HUB_MODELS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/config.h"
#include "daemon/model.h"
#include "hub/hub_client.h"
#include "hub/hub_config.h"

namespace bigsmall::daemon {

class Metrics;

inline constexpr char kHubNotAllowed[] =
    "this Hugging Face Hub repo is not allowed by the daemon's hub_allow list";

// The Hub settings of the daemon: the environment (HF_ENDPOINT, HF_TOKEN or
// huggingface_hub's token file, HF_HUB_OFFLINE, HF_HUB_CACHE/HF_HOME) under
// the config's hub_* values. INVALID_ARGUMENT for a bad endpoint, an
// unreadable or empty hub_token_file.
absl::StatusOr<hub::HubConfig> HubConfigFor(const DaemonConfig& config);

// FAILED_PRECONDITION when another user could write the cache: its
// directory (or the nearest existing ancestor) or one above it belongs to
// neither the daemon's user nor root, or is writable by others (above the
// cache, a sticky world-writable one like /tmp is fine). Group-writable is
// allowed: a team's shared cache. HubModels::Create checks it.
absl::Status CheckCacheIsTrusted(const std::string& cache_dir);

// True when `name` names a Hub model (not an absolute path).
bool IsHubModelName(const std::string& name);

// The files of a Hub model: every top-level *.bs (sorted by path) and the
// shard index (model.safetensors.index.json) when the repo has one. Shared
// with the Python extension's in-process loader (python/src/local_model.cc).
// The pointers point into `repo`.
struct ModelFiles {
  std::vector<const hub::RepoFile*> shards;
  const hub::RepoFile* index = nullptr;
};
ModelFiles SelectFiles(const hub::RepoInfo& repo);

class HubModels {
 public:
  static absl::StatusOr<std::unique_ptr<HubModels>> Create(const DaemonConfig& config,
                                                           Metrics* metrics);
  // Stops the background fill (a file being written stays .incomplete, to
  // resume) and waits for its threads.
  ~HubModels();
  HubModels(const HubModels&) = delete;
  HubModels& operator=(const HubModels&) = delete;

  // Parses `name`, checks the allow list, resolves the revision.
  absl::StatusOr<std::shared_ptr<const hub::RepoInfo>> Resolve(const std::string& name);
  // "hf://owner/repo@commit": the model's path, registry key and identity.
  static std::string ModelPath(const hub::RepoInfo& repo);
  // Opens the shards of a resolved repo (no download first).
  absl::StatusOr<std::shared_ptr<Model>> Open(const std::shared_ptr<const hub::RepoInfo>& repo,
                                              const ModelOptions& options);
  // Queues the background download of the model's files the cache lacks
  // (nothing offline or with hub_concurrency 0; a file already queued or
  // being written is not queued twice).
  void Fill(const std::shared_ptr<const hub::RepoInfo>& repo);

  const hub::HubConfig& hub_config() const;
  bool offline() const;

  struct Core;  // shared with the open models' sources

 private:
  explicit HubModels(std::shared_ptr<Core> core);
  std::shared_ptr<Core> core_;
};

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_HUB_MODELS_H_
