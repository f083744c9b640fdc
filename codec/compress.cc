#include "codec/compress.h"

#include <chrono>
#include <filesystem>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "codec/bs_writer.h"
#include "codec/file_util.h"
#include "codec/model_dir.h"
#include "codec/status_macros.h"

namespace bigsmall {

std::string DefaultCompressedName(const std::string& input) {
  std::string s = input;
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s + ".bs";
}

absl::StatusOr<CompressStats> CompressPath(const std::string& input, const std::string& output,
                                           const CompressOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  if (!PathExists(input)) return absl::NotFoundError(absl::StrCat(input, ": no such file or directory"));
  if (SameFile(input, output)) {
    return absl::InvalidArgumentError(absl::StrCat(output, ": output would overwrite the input"));
  }
  std::optional<BaseModel> base;
  if (!options.base.empty()) {
    ASSIGN_OR_RETURN(BaseModel b, BaseModel::Open(options.base));
    base = std::move(b);
  }
  ThreadPool pool(options.threads);
  CompressStats stats;
  if (!IsDirectory(input)) {
    ASSIGN_OR_RETURN(AtomicFile out, AtomicFile::Create(output, options.force));
    ASSIGN_OR_RETURN(uint64_t size, FileSize(input));
    ASSIGN_OR_RETURN(BsWriteResult r, WriteBsFile(input, out, options, base ? &*base : nullptr, pool, 0, size));
    RETURN_IF_ERROR(out.Commit());
    stats.input_bytes = r.input_bytes;
    stats.output_bytes = r.output_bytes;
    stats.tensors = r.tensors;
    stats.files = 1;
  } else {
    ListOptions list;
    list.follow_symlinks = options.follow_symlinks;
    ASSIGN_OR_RETURN(std::vector<DirEntry> entries, ListModelDirectory(input, list));
    uint64_t total = 0;
    for (const auto& e : entries) total += e.size;
    ASSIGN_OR_RETURN(AtomicDirectory dir, AtomicDirectory::Create(output, options.force));
    ModelManifest manifest;
    uint64_t done = 0;
    for (const auto& e : entries) {
      const std::string& src = e.source;  // a checked symlink target, or the file itself
      RETURN_IF_ERROR(MakeParentDirs(dir.temp_path(), e.relative));
      if (IsSafetensorsName(e.relative)) {
        const std::string rel_out = e.relative + ".bs";
        ASSIGN_OR_RETURN(AtomicFile out,
                         AtomicFile::Create((std::filesystem::path(dir.temp_path()) / rel_out).string(), false));
        ASSIGN_OR_RETURN(BsWriteResult r,
                         WriteBsFile(src, out, options, base ? &*base : nullptr, pool, done, total));
        RETURN_IF_ERROR(out.Commit());
        manifest.entries.push_back({e.relative, rel_out, ManifestKind::kCompressed});
        stats.output_bytes += r.output_bytes;
        stats.tensors += r.tensors;
        ++stats.files;
      } else {
        RETURN_IF_ERROR(CopyFile(src, (std::filesystem::path(dir.temp_path()) / e.relative).string()));
        manifest.entries.push_back({e.relative, e.relative, ManifestKind::kCopied});
        stats.output_bytes += e.size;
      }
      stats.input_bytes += e.size;
      done += e.size;
      if (options.progress) options.progress(done, total);
    }
    if (stats.files == 0) {
      return absl::InvalidArgumentError(absl::StrCat(input, ": no .safetensors files in directory"));
    }
    ASSIGN_OR_RETURN(uint64_t manifest_bytes, WriteManifest(dir.temp_path(), manifest));
    stats.output_bytes += manifest_bytes;
    RETURN_IF_ERROR(dir.Commit());
  }
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
}

}  // namespace bigsmall
