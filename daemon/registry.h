// The daemon's open models: where a requested path may come from (the model
// directories), opening it once and safely, and the limits on what stays
// open.
//
// Path rules (docs/API.md, "Model paths"):
//  * Each root (config `model_dirs`, or `allowed_roots` when set) is opened
//    once at creation (O_PATH | O_DIRECTORY). A request names an absolute
//    path lexically beneath one of them (the configured spelling or its real
//    path); the rest is opened from the root's descriptor with OpenBeneath
//    (no symlinks, no escape) and every read of the model goes through that
//    one open.
//  * Any path that is not beneath a root, or that tries to leave it, gets
//    one PERMISSION_DENIED message whatever exists there (kOutsideRoots).
//    Beneath a root, a missing path is NOT_FOUND.
//  * NUL bytes and paths over kMaxPathBytes are INVALID_ARGUMENT; untrusted
//    text is escaped (EscapeForLog) in logs and messages.
//
// Identity and limits: a model is keyed by the (device, inode) of what was
// opened, so hard links are one model (a Hub model by
// "hf://owner/repo@commit", OpenKeyed); reopening it costs one open + fstat
// (Model::Fingerprint), the index is read again only when the fingerprint
// changed. At most `max_models` stay open: when a new one needs room the
// least recently used idle model (no session, no lease) is closed; when all
// are busy, RESOURCE_EXHAUSTED. A description over `max_description_bytes`
// is refused with RESOURCE_EXHAUSTED and never registered.
//
// Fine-tune deltas (docs/API.md "Fine-tune deltas"): a model whose shards
// are deltas is registered only with its base attached (Model::AttachBase),
// found in this order:
//  1. an open full model of the registry that CheckBase accepts (every
//     DELTA_TENSOR's base hash matches), most recently used first;
//  2. for a file or directory model, "<B>.bs" beside it, where B is the last
//     path component of the delta's base_name (the --base given at compress
//     time, e.g. "base.safetensors" or a base directory "base"), in the
//     directory that holds the delta: opened with Open (beneath the same
//     root, no symlinks, the same rules as any model) and registered as a
//     model of its own, shared with its own clients. It must be a full
//     model that CheckBase accepts.
// No base: FAILED_PRECONDITION naming the delta and what was looked for; a
// base that does not match: FAILED_PRECONDITION naming the tensor
// (docs/FORMAT.md §10.1 base-mismatch). A model that is the base of an open
// delta is never closed for room and not unloaded alone.
#ifndef BIGSMALL_DAEMON_REGISTRY_H_
#define BIGSMALL_DAEMON_REGISTRY_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "daemon/model.h"
#include "daemon/safe_open.h"

namespace bigsmall::daemon {

inline constexpr size_t kMaxPathBytes = 4096;  // PATH_MAX
inline constexpr char kOutsideRoots[] = "model path is outside the daemon's model directories";

struct RegistryOptions {
  std::vector<std::string> roots;
  uint32_t max_models = 64;
  uint64_t max_description_bytes = 60ull << 20;
  ModelOptions model_options;
  // True while the model must not be closed (sessions, leases, calls).
  std::function<bool(const Model&)> busy;
  // Called (outside the registry's lock) for each model the registry drops:
  // replaced by a changed file, closed LRU, or unloaded.
  std::function<void(const std::shared_ptr<Model>&)> dropped;
};

class ModelRegistry {
 public:
  // Roots that cannot be opened are logged and skipped (paths beneath them
  // are then outside every root).
  explicit ModelRegistry(RegistryOptions options);

  // Checks a requested path's form: INVALID_ARGUMENT for empty, NUL,
  // over-long.
  static absl::Status CheckPath(const std::string& path);

  struct Opened {
    std::shared_ptr<Model> model;
    bool already_open = false;
  };
  absl::StatusOr<Opened> Open(const std::string& path);
  // A model that is not a file beneath a root (a Hub model): `key` names it
  // in the registry (Model::key(), "hf://owner/repo@commit"); when a model
  // of that key with `fingerprint` is open it is returned, else `open`
  // makes one, registered under the same limits as files.
  absl::StatusOr<Opened> OpenKeyed(
      const std::string& key, const std::string& fingerprint,
      const std::function<absl::StatusOr<std::shared_ptr<Model>>()>& open);
  absl::StatusOr<std::shared_ptr<Model>> Find(const std::string& model_id);
  std::vector<std::shared_ptr<Model>> List() const;
  size_t size() const;
  // Admin call: forgets one model (id) or every model (""), unless one of
  // them is busy (FAILED_PRECONDITION, nothing unloaded). Returns those
  // unloaded.
  absl::StatusOr<std::vector<std::shared_ptr<Model>>> Unload(const std::string& model_id);

  // The real paths of the usable roots.
  std::vector<std::string> root_paths() const;

 private:
  struct Root {
    std::string configured;  // as configured, without trailing '/'
    std::string real;        // its real path
    UniqueFd fd;
  };
  struct Entry {
    std::shared_ptr<Model> model;
    uint64_t last_used = 0;
  };
  // Opens `path` beneath a root: the descriptor and the model's real path.
  absl::StatusOr<UniqueFd> OpenPath(const std::string& path, std::string* real) const;
  // The common part of Open and OpenKeyed: a registered model of `key` and
  // `fingerprint`, else `open`'s, checked and registered.
  // `beside`: a file model whose delta base may be opened beside it.
  absl::StatusOr<Opened> Register(
      const std::string& key, const std::string& fingerprint, const std::string& what,
      const std::function<absl::StatusOr<std::shared_ptr<Model>>()>& open, bool beside);
  // Open; `resolve_bases` false (opening a base beside a delta) refuses a
  // delta instead of resolving its base.
  absl::StatusOr<Opened> OpenImpl(const std::string& path, bool resolve_bases);
  // Finds and attaches the base of the delta `model` (rules above).
  absl::Status ResolveBase(const std::shared_ptr<Model>& model, bool beside);
  // True when an open model has `model` as its base. mu_ held.
  bool IsBaseLocked(const Model& model) const;
  // Drops LRU idle models until one more fits; `keep` (the base of the
  // model being registered) stays. mu_ held.
  absl::Status MakeRoomLocked(std::vector<std::shared_ptr<Model>>* dropped,
                              const Model* keep = nullptr);
  void RemoveLocked(const std::shared_ptr<Model>& model);

  const RegistryOptions options_;
  std::vector<Root> roots_;
  mutable std::mutex mu_;
  uint64_t clock_ = 0;
  absl::flat_hash_map<std::string, Entry> by_key_;  // Model::key()
  absl::flat_hash_map<std::string, std::shared_ptr<Model>> by_id_;
};

}  // namespace bigsmall::daemon

#endif  // BIGSMALL_DAEMON_REGISTRY_H_
