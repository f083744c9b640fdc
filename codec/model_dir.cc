#include "codec/model_dir.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "codec/file_util.h"
#include "codec/status_macros.h"
#include "codec/status_util.h"
#include "nlohmann/json.hpp"

namespace bigsmall {

bool IsSafetensorsName(const std::string& path) { return absl::EndsWith(path, ".safetensors"); }

absl::StatusOr<uint64_t> FileSize(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return ErrnoToStatus(errno, path);
  return static_cast<uint64_t>(st.st_size);
}

absl::StatusOr<std::vector<DirEntry>> ListModelDirectory(const std::string& dir) {
  namespace fs = std::filesystem;
  std::vector<DirEntry> out;
  std::error_code ec;
  fs::recursive_directory_iterator it(dir, fs::directory_options::follow_directory_symlink, ec);
  if (ec) return ErrnoToStatus(ec.value(), absl::StrCat("cannot list ", dir));
  for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) return ErrnoToStatus(ec.value(), absl::StrCat("cannot list ", dir));
    if (!it->is_regular_file(ec)) continue;
    DirEntry e;
    // Lexical, not fs::relative: a symlinked file (as in a Hugging Face cache
    // snapshot) keeps its own name, not its target's.
    e.relative = it->path().lexically_relative(dir).generic_string();
    ASSIGN_OR_RETURN(e.size, FileSize(it->path().string()));
    out.push_back(std::move(e));
  }
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
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(dir, ": not a compressed model directory (no ", kManifestName, ")"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseManifest(ss.str(), path);
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
  if (ec) return ErrnoToStatus(ec.value(), absl::StrCat("cannot create ", parent.string()));
  return absl::OkStatus();
}

}  // namespace bigsmall
