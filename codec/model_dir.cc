#include "codec/model_dir.h"

#include <sys/stat.h>

#include <cstdlib>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "codec/byte_source.h"
#include "codec/error_kind.h"
#include "codec/file_util.h"
#include "codec/status_macros.h"
#include "codec/status_util.h"
#include "nlohmann/json.hpp"

namespace bigsmall {
namespace {
// A manifest lists file names: 64 MiB is millions of entries.
constexpr uint64_t kMaxManifestBytes = 64ull << 20;
}  // namespace

bool IsSafetensorsName(const std::string& path) { return absl::EndsWith(path, ".safetensors"); }

absl::StatusOr<uint64_t> FileSize(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return ErrnoToStatus(errno, path);
  return static_cast<uint64_t>(st.st_size);
}

namespace {

// True when `path` is `dir` or lies below it (both absolute, resolved).
bool Inside(const std::string& path, const std::string& dir) {
  if (dir == "/") return true;
  return path == dir ||
         (path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 && path[dir.size()] == '/');
}

absl::StatusOr<std::string> RealPath(const std::string& path) {
  char* real = realpath(path.c_str(), nullptr);
  if (real == nullptr) return ErrnoToStatus(errno, absl::StrCat("cannot resolve ", EscapeForLog(path)));
  std::string out(real);
  free(real);
  return out;
}

struct Walk {
  std::string root_real;   // realpath of the model directory
  std::string repo_blobs;  // <repo>/blobs when the root is <repo>/snapshots/<rev>, else ""
  bool follow_any = false;
  std::set<std::pair<dev_t, ino_t>> visited;  // directories entered so far
  std::vector<DirEntry>* out = nullptr;
};

constexpr int kMaxDepth = 64;

absl::Status WalkDir(Walk& w, const std::string& dir, const std::string& prefix, int depth) {
  struct stat ds;
  if (stat(dir.c_str(), &ds) != 0) return ErrnoToStatus(errno, absl::StrCat("cannot list ", EscapeForLog(dir)));
  if (!w.visited.insert({ds.st_dev, ds.st_ino}).second) {
    return ErrnoToStatus(ELOOP, absl::StrCat(EscapeForLog(prefix.empty() ? dir : prefix),
                                             ": directory reached twice (a symlink loop, or two names for one directory)"));
  }
  if (depth > kMaxDepth) {
    return ErrnoToStatus(ELOOP, absl::StrCat(EscapeForLog(prefix), ": directories nested too deep"));
  }
  std::vector<std::string> names;
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec);
  if (ec) return ErrnoToStatus(ec.value(), absl::StrCat("cannot list ", EscapeForLog(dir)));
  for (; it != std::filesystem::directory_iterator(); it.increment(ec)) {
    if (ec) return ErrnoToStatus(ec.value(), absl::StrCat("cannot list ", EscapeForLog(dir)));
    names.push_back(it->path().filename().string());
  }
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    const std::string full = absl::StrCat(dir, "/", name);
    const std::string rel = absl::StrCat(prefix, name);
    struct stat st;
    if (lstat(full.c_str(), &st) != 0) return ErrnoToStatus(errno, absl::StrCat("cannot stat ", EscapeForLog(full)));
    std::string source = full;
    if (S_ISLNK(st.st_mode)) {
      ASSIGN_OR_RETURN(source, RealPath(full));
      const bool allowed = w.follow_any || Inside(source, w.root_real) ||
                           (!w.repo_blobs.empty() && Inside(source, w.repo_blobs));
      if (!allowed) {
        return absl::FailedPreconditionError(absl::StrCat(
            EscapeForLog(rel), " is a symlink to ", EscapeForLog(source),
            ", outside the model directory (pass --follow-symlinks to follow it anyway)"));
      }
      if (stat(source.c_str(), &st) != 0) {
        return ErrnoToStatus(errno, absl::StrCat("cannot stat ", EscapeForLog(source)));
      }
    }
    if (S_ISDIR(st.st_mode)) {
      RETURN_IF_ERROR(WalkDir(w, source, absl::StrCat(rel, "/"), depth + 1));
    } else if (S_ISREG(st.st_mode)) {
      w.out->push_back({rel, static_cast<uint64_t>(st.st_size), source});
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> ResolveInside(const std::string& root, const std::string& relative) {
  const std::string path = (std::filesystem::path(root) / relative).string();
  ASSIGN_OR_RETURN(const std::string root_real, RealPath(root));
  auto real = RealPath(path);
  if (!real.ok()) return real.status();  // missing: NOT_FOUND naming it
  if (!Inside(*real, root_real)) {
    return absl::FailedPreconditionError(absl::StrCat(
        EscapeForLog(path), " leads outside the compressed directory (to ", EscapeForLog(*real),
        "): refused"));
  }
  return *real;
}

absl::StatusOr<std::vector<DirEntry>> ListModelDirectory(const std::string& dir, const ListOptions& options) {
  std::vector<DirEntry> out;
  Walk w;
  w.follow_any = options.follow_symlinks;
  w.out = &out;
  ASSIGN_OR_RETURN(w.root_real, RealPath(dir));
  // A Hugging Face cache snapshot: <repo>/snapshots/<rev>, files linking to <repo>/blobs/.
  const std::filesystem::path real(w.root_real);
  if (real.parent_path().filename() == "snapshots") {
    w.repo_blobs = (real.parent_path().parent_path() / "blobs").string();
  }
  RETURN_IF_ERROR(WalkDir(w, dir, "", 0));
  std::sort(out.begin(), out.end(), [](const DirEntry& a, const DirEntry& b) { return a.relative < b.relative; });
  return out;
}

absl::StatusOr<uint64_t> WriteManifest(const std::string& dir, const ModelManifest& manifest) {
  nlohmann::json files = nlohmann::json::array();
  for (const auto& e : manifest.entries) {
    files.push_back({{"original", e.original},
                     {"stored", e.stored},
                     {"kind", e.kind == ManifestKind::kCompressed ? "bs" : "copy"}});
  }
  nlohmann::json doc = {{"format", "bigsmall-directory"}, {"version", 1}, {"files", files}};
  const std::string text = doc.dump(2) + "\n";
  const std::string path = (std::filesystem::path(dir) / kManifestName).string();
  ASSIGN_OR_RETURN(AtomicFile f, AtomicFile::Create(path, false));
  RETURN_IF_ERROR(f.Write(absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(text.data()), text.size())));
  RETURN_IF_ERROR(f.Commit());
  return text.size();
}

namespace {
bool SafeRelative(const std::string& p) {
  if (p.empty() || p[0] == '/' || p == kManifestName) return false;
  for (const auto& part : std::filesystem::path(p)) {
    if (part == ".." || part == ".") return false;
  }
  return true;
}
}  // namespace

absl::StatusOr<ModelManifest> ReadManifest(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / kManifestName).string();
  auto source = OpenFileSource(path);
  if (absl::IsNotFound(source.status())) {
    return absl::NotFoundError(absl::StrCat(dir, ": not a compressed model directory (no ", kManifestName, ")"));
  }
  if (!source.ok()) return source.status();
  if ((*source)->size() > kMaxManifestBytes) {
    return absl::DataLossError(absl::StrCat(path, ": ", (*source)->size(), " bytes, more than a manifest can be"));
  }
  ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, ReadRange(**source, 0, (*source)->size()));
  return ParseManifest(std::string(bytes.begin(), bytes.end()), path);
}

absl::StatusOr<ModelManifest> ParseManifest(const std::string& text, const std::string& path) {
  auto doc = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  auto bad = [&](const std::string& why) { return absl::DataLossError(absl::StrCat(path, ": ", why)); };
  if (doc.is_discarded() || !doc.is_object()) return bad("not a JSON object");
  auto files = doc.find("files");
  auto fmt = doc.find("format");
  if (fmt == doc.end() || !fmt->is_string() || fmt->get<std::string>() != "bigsmall-directory") {
    return bad("not a bigsmall manifest");
  }
  if (files == doc.end() || !files->is_array()) return bad("missing files array");
  ModelManifest m;
  std::set<std::string> seen;
  for (const auto& f : *files) {
    if (!f.is_object()) return bad("file entry is not an object");
    auto o = f.find("original"), s = f.find("stored"), k = f.find("kind");
    if (o == f.end() || s == f.end() || k == f.end() || !o->is_string() || !s->is_string() ||
        !k->is_string()) {
      return bad("file entry needs string original, stored and kind");
    }
    ManifestEntry e;
    e.original = o->get<std::string>();
    e.stored = s->get<std::string>();
    const std::string kind = k->get<std::string>();
    if (kind == "bs") {
      e.kind = ManifestKind::kCompressed;
    } else if (kind == "copy") {
      e.kind = ManifestKind::kCopied;
    } else {
      return bad(absl::StrCat("unknown kind '", kind, "'"));
    }
    if (!SafeRelative(e.original) || !SafeRelative(e.stored)) {
      return bad(absl::StrCat("unsafe path '", e.original, "'"));
    }
    if (!seen.insert(e.original).second) return bad(absl::StrCat("duplicate entry '", e.original, "'"));
    m.entries.push_back(std::move(e));
  }
  return m;
}

absl::Status MakeParentDirs(const std::string& root, const std::string& relative) {
  std::error_code ec;
  const auto parent = (std::filesystem::path(root) / relative).parent_path();
  std::filesystem::create_directories(parent, ec);
  if (ec) {
    return WithErrorKind(ErrnoToStatus(ec.value(), absl::StrCat("cannot create ", EscapeForLog(parent.string()))),
                         ErrorKind::kOutput);
  }
  return absl::OkStatus();
}

}  // namespace bigsmall
