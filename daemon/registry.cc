#include "daemon/registry.h"

#include <sys/stat.h>

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "codec/status_macros.h"
#include "codec/status_util.h"
#include "spdlog/spdlog.h"

namespace bigsmall::daemon {
namespace {

// "/a//b/./c/" -> "/a/b/c"; ".." is kept (OpenBeneath refuses an escape).
std::string Normalize(const std::string& path) {
  std::vector<std::string> parts;
  for (absl::string_view part : absl::StrSplit(path, '/', absl::SkipEmpty())) {
    if (part == ".") continue;
    parts.emplace_back(part);
  }
  return "/" + absl::StrJoin(parts, "/");
}

// The part of `path` beneath `root` ("." for the root itself), or false.
bool Beneath(const std::string& path, const std::string& root, std::string* relative) {
  if (root == "/") {
    *relative = path.size() > 1 ? path.substr(1) : ".";
    return true;
  }
  if (path == root) {
    *relative = ".";
    return true;
  }
  if (absl::StartsWith(path, root) && path.size() > root.size() && path[root.size()] == '/') {
    *relative = path.substr(root.size() + 1);
    return true;
  }
  return false;
}

absl::Status Outside() { return absl::PermissionDeniedError(kOutsideRoots); }

}  // namespace

ModelRegistry::ModelRegistry(RegistryOptions options) : options_(std::move(options)) {
  for (const std::string& configured : options_.roots) {
    if (configured.empty() || configured[0] != '/') {
      spdlog::warn("model directory '{}' is not an absolute path; ignored",
                   EscapeForLog(configured));
      continue;
    }
    Root root;
    root.configured = Normalize(configured);
    auto fd = OpenRootDir(configured, &root.real);
    if (!fd.ok()) {
      spdlog::warn("model directory {}: {}; no model is served from it",
                   EscapeForLog(configured), fd.status().ToString());
      continue;
    }
    root.fd = std::move(*fd);
    roots_.push_back(std::move(root));
  }
  // Longest first: a nested root wins over its parent.
  std::sort(roots_.begin(), roots_.end(), [](const Root& a, const Root& b) {
    return a.configured.size() > b.configured.size();
  });
}

std::vector<std::string> ModelRegistry::root_paths() const {
  std::vector<std::string> out;
  for (const Root& r : roots_) out.push_back(r.real);
  return out;
}

absl::Status ModelRegistry::CheckPath(const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError("OpenModel: empty model path");
  if (path.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("OpenModel: the model path contains a NUL byte");
  }
  if (path.size() > kMaxPathBytes) {
    return absl::InvalidArgumentError(absl::StrCat("OpenModel: the model path is ", path.size(),
                                                   " bytes; at most ", kMaxPathBytes));
  }
  if (path[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("OpenModel: '", EscapeForLog(path), "' is not an absolute path"));
  }
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> ModelRegistry::OpenPath(const std::string& path,
                                                 std::string* real) const {
  const std::string normalized = Normalize(path);
  for (const Root& root : roots_) {
    std::string relative;
    if (!Beneath(normalized, root.configured, &relative) &&
        !Beneath(normalized, root.real, &relative)) {
      continue;
    }
    auto fd = OpenBeneath(root.fd.get(), root.real, relative);
    if (!fd.ok()) {
      switch (fd.status().code()) {
        case absl::StatusCode::kNotFound:
          return absl::NotFoundError(
              absl::StrCat("model '", EscapeForLog(path), "' not found"));
        case absl::StatusCode::kFailedPrecondition:  // ELOOP: a symlink
        case absl::StatusCode::kPermissionDenied:    // EXDEV: an escape; EACCES
          return Outside();
        default:
          return absl::Status(fd.status().code(),
                              absl::StrCat("model '", EscapeForLog(path), "': ",
                                           fd.status().message()));
      }
    }
    auto fd_path = FdPath(fd->get());
    *real = fd_path.ok() ? *fd_path
                         : (relative == "." ? root.real : root.real + "/" + relative);
    return std::move(*fd);
  }
  return Outside();
}

absl::StatusOr<ModelRegistry::Opened> ModelRegistry::Open(const std::string& path) {
  return OpenImpl(path, /*resolve_bases=*/true);
}

absl::StatusOr<ModelRegistry::Opened> ModelRegistry::OpenImpl(const std::string& path,
                                                              bool resolve_bases) {
  RETURN_IF_ERROR(CheckPath(path));
  std::string real;
  ASSIGN_OR_RETURN(UniqueFd fd, OpenPath(path, &real));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoToStatus(errno, "fstat");
  const std::string key = absl::StrCat("file:", st.st_dev, ":", st.st_ino);
  ASSIGN_OR_RETURN(std::string fingerprint, Model::Fingerprint(fd.get()));
  return Register(
      key, fingerprint, real,
      [&]() -> absl::StatusOr<std::shared_ptr<Model>> {
        ASSIGN_OR_RETURN(auto model, Model::OpenFd(std::move(fd), real, options_.model_options));
        if (model->is_delta() && !resolve_bases) {
          return absl::FailedPreconditionError(
              absl::StrCat("model '", EscapeForLog(real),
                           "' is itself a fine-tune delta; a base must be a full model"));
        }
        return model;
      },
      /*beside=*/true);
}

absl::StatusOr<ModelRegistry::Opened> ModelRegistry::OpenKeyed(
    const std::string& key, const std::string& fingerprint,
    const std::function<absl::StatusOr<std::shared_ptr<Model>>()>& open) {
  return Register(key, fingerprint, key, open, /*beside=*/false);
}

absl::Status ModelRegistry::ResolveBase(const std::shared_ptr<Model>& model, bool beside) {
  const std::string what = absl::StrCat("model '", EscapeForLog(model->path()), "'");
  // 1. An open full model that matches, most recently used first.
  std::vector<std::pair<uint64_t, std::shared_ptr<Model>>> open;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [key, entry] : by_key_) {
      if (!entry.model->is_delta()) open.emplace_back(entry.last_used, entry.model);
    }
  }
  std::sort(open.begin(), open.end(),
            [](const auto& a, const auto& b) { return a.first > b.first; });
  for (const auto& [used, candidate] : open) {
    if (model->CheckBase(*candidate).ok()) return model->AttachBase(candidate);
  }
  // 2. "<last component of base_name>.bs" beside the delta.
  std::string name = model->base_name();
  while (!name.empty() && name.back() == '/') name.pop_back();
  if (size_t slash = name.rfind('/'); slash != std::string::npos) name = name.substr(slash + 1);
  std::string looked_for;
  if (beside && !name.empty() && name != "." && name != ".." &&
      name.find('\0') == std::string::npos) {
    const std::string& path = model->path();
    const size_t slash = path.rfind('/');
    const std::string dir = slash == std::string::npos || slash == 0 ? "/" : path.substr(0, slash);
    const std::string candidate = absl::StrCat(dir == "/" ? "" : dir, "/", name, ".bs");
    looked_for = absl::StrCat(", nor is '", EscapeForLog(candidate), "' beside it");
    if (candidate != path) {
      auto opened = OpenImpl(candidate, /*resolve_bases=*/false);
      if (opened.ok()) {
        absl::Status st = model->AttachBase(opened->model);
        if (st.ok()) {
          spdlog::info("{}: fine-tune delta against {} ({})", what, EscapeForLog(candidate),
                       opened->model->id());
        }
        return st;
      }
      const absl::StatusCode code = opened.status().code();
      if (code != absl::StatusCode::kNotFound && code != absl::StatusCode::kPermissionDenied) {
        return absl::Status(code, absl::StrCat(what, ": its base '", EscapeForLog(candidate),
                                               "': ", opened.status().message()));
      }
    }
  }
  return absl::FailedPreconditionError(absl::StrCat(
      what, " is a fine-tune delta against '", EscapeForLog(model->base_name()),
      "' and its base is not available: no open model matches its base hashes", looked_for,
      " (open the base model first, or put its .bs beside the delta)"));
}

absl::StatusOr<ModelRegistry::Opened> ModelRegistry::Register(
    const std::string& key, const std::string& fingerprint, const std::string& what,
    const std::function<absl::StatusOr<std::shared_ptr<Model>>()>& open, bool beside) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_key_.find(key);
    if (it != by_key_.end() && it->second.model->fingerprint() == fingerprint) {
      it->second.last_used = ++clock_;
      return Opened{it->second.model, true};
    }
  }
  ASSIGN_OR_RETURN(auto model, open());
  if (model->is_delta() && model->base() == nullptr) RETURN_IF_ERROR(ResolveBase(model, beside));
  const size_t description_bytes = model->description().ByteSizeLong();
  if (description_bytes > options_.max_description_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "model '", EscapeForLog(what), "': its description is ", description_bytes,
        " bytes, over the daemon's max_description_bytes ", options_.max_description_bytes));
  }
  std::vector<std::shared_ptr<Model>> dropped;
  absl::Status status;
  Opened result{model, false};
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_key_.find(key);
    if (it != by_key_.end() && it->second.model->fingerprint() == model->fingerprint()) {
      // Opened concurrently by another call: keep the registered one.
      it->second.last_used = ++clock_;
      return Opened{it->second.model, true};
    }
    std::shared_ptr<Model> old;
    if (it != by_key_.end()) {
      old = it->second.model;  // the same file, changed on disk
    } else if (auto id = by_id_.find(model->id()); id != by_id_.end()) {
      if (id->second->path() != model->path()) {
        return absl::InternalError(absl::StrCat("model id ", model->id(), " of ",
                                                EscapeForLog(what), " collides with ",
                                                EscapeForLog(id->second->path())));
      }
      old = id->second;  // the same path, now another file
    }
    if (old != nullptr) {
      RemoveLocked(old);
      dropped.push_back(old);
      spdlog::info("model {} changed on disk; reopened", EscapeForLog(what));
    } else {
      status = MakeRoomLocked(&dropped, model->base().get());
    }
    if (status.ok()) {
      by_key_[key] = Entry{model, ++clock_};
      by_id_[model->id()] = model;
    }
  }
  if (options_.dropped) {
    for (const auto& m : dropped) options_.dropped(m);
  }
  if (!status.ok()) return status;
  return result;
}

bool ModelRegistry::IsBaseLocked(const Model& model) const {
  for (const auto& [key, entry] : by_key_) {
    if (entry.model->base().get() == &model) return true;
  }
  return false;
}

absl::Status ModelRegistry::MakeRoomLocked(std::vector<std::shared_ptr<Model>>* dropped,
                                           const Model* keep) {
  while (by_key_.size() >= options_.max_models) {
    const Entry* victim = nullptr;
    for (const auto& [id, entry] : by_key_) {
      if (options_.busy && options_.busy(*entry.model)) continue;
      // The base of an open delta (or of the one being registered) stays.
      if (entry.model.get() == keep || IsBaseLocked(*entry.model)) continue;
      if (victim == nullptr || entry.last_used < victim->last_used) victim = &entry;
    }
    if (victim == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the daemon has ", by_key_.size(), " models open (max_models ", options_.max_models,
          "), all in use; close one (evict --unload) or raise max_models"));
    }
    std::shared_ptr<Model> m = victim->model;
    spdlog::info("closing idle model {} ({}) to open another (max_models {})", m->id(),
                 EscapeForLog(m->path()), options_.max_models);
    RemoveLocked(m);
    dropped->push_back(std::move(m));
  }
  return absl::OkStatus();
}

void ModelRegistry::RemoveLocked(const std::shared_ptr<Model>& model) {
  by_key_.erase(model->key());
  auto it = by_id_.find(model->id());
  if (it != by_id_.end() && it->second == model) by_id_.erase(it);
}

absl::StatusOr<std::shared_ptr<Model>> ModelRegistry::Find(const std::string& model_id) {
  if (model_id.empty()) return absl::InvalidArgumentError("model_id is empty");
  std::lock_guard<std::mutex> lock(mu_);
  auto it = by_id_.find(model_id);
  if (it == by_id_.end()) {
    return absl::NotFoundError(
        absl::StrCat("unknown model id '", EscapeForLog(model_id), "' (OpenModel first)"));
  }
  auto entry = by_key_.find(it->second->key());
  if (entry != by_key_.end()) entry->second.last_used = ++clock_;
  return it->second;
}

std::vector<std::shared_ptr<Model>> ModelRegistry::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::shared_ptr<Model>> out;
  for (const auto& [id, m] : by_id_) out.push_back(m);
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a->id() < b->id(); });
  return out;
}

size_t ModelRegistry::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return by_id_.size();
}

absl::StatusOr<std::vector<std::shared_ptr<Model>>> ModelRegistry::Unload(
    const std::string& model_id) {
  std::vector<std::shared_ptr<Model>> victims;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [id, m] : by_id_) {
      if (!model_id.empty() && id != model_id) continue;
      if (m->active_sessions.load() > 0) {
        return absl::FailedPreconditionError(absl::StrCat("model ", m->id(), " has ",
                                                          m->active_sessions.load(),
                                                          " active sessions; not unloaded"));
      }
      victims.push_back(m);
    }
    if (!model_id.empty() && victims.empty()) {
      return absl::NotFoundError(
          absl::StrCat("unknown model id '", EscapeForLog(model_id), "' (OpenModel first)"));
    }
    // A base goes only with its deltas.
    for (const auto& [key, entry] : by_key_) {
      const Model* base = entry.model->base().get();
      if (base == nullptr) continue;
      const bool base_goes = std::any_of(victims.begin(), victims.end(),
                                         [&](const auto& v) { return v.get() == base; });
      const bool delta_goes = std::any_of(victims.begin(), victims.end(),
                                          [&](const auto& v) { return v == entry.model; });
      if (base_goes && !delta_goes) {
        return absl::FailedPreconditionError(absl::StrCat(
            "model ", base->id(), " is the base of the open fine-tune delta ",
            entry.model->id(), "; unload the delta first"));
      }
    }
    for (const auto& m : victims) RemoveLocked(m);
  }
  if (options_.dropped) {
    for (const auto& m : victims) options_.dropped(m);
  }
  return victims;
}

}  // namespace bigsmall::daemon
