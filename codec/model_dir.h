// Model directories: listing a Hugging Face-style directory, and the
// manifest a compressed directory carries (docs/FORMAT.md §8).
#ifndef BIGSMALL_CODEC_MODEL_DIR_H_
#define BIGSMALL_CODEC_MODEL_DIR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace bigsmall {

inline constexpr char kManifestName[] = "bigsmall-manifest.json";

struct DirEntry {
  std::string relative;  // path relative to the directory, '/'-separated
  uint64_t size = 0;
  std::string source;    // the path to read it from (a symlink's checked target)
};

struct ListOptions {
  // Follow every symlink, wherever it points (--follow-symlinks).
  bool follow_symlinks = false;
};

// Regular files under `dir`, recursively, sorted by relative path (FIFOs,
// sockets and devices are skipped). Symlinks (to files or directories) are
// followed only when their target stays inside `dir`, or, for a Hugging Face
// cache snapshot (`<repo>/snapshots/<rev>`), inside `<repo>/blobs`; any other
// symlink is FAILED_PRECONDITION naming it, unless options.follow_symlinks.
// A directory reached twice (a symlink loop such as `loop -> .`, or two
// links to one directory, which would store it twice) is FAILED_PRECONDITION
// too.
absl::StatusOr<std::vector<DirEntry>> ListModelDirectory(const std::string& dir,
                                                         const ListOptions& options = {});

bool IsSafetensorsName(const std::string& path);

// The path to read `relative` (a manifest's stored path) of the compressed
// directory `root` from: FAILED_PRECONDITION when it is, or passes through,
// a symlink leading outside `root` (our writer stores no symlinks; a
// downloaded directory must not make decompress copy /etc/shadow).
absl::StatusOr<std::string> ResolveInside(const std::string& root, const std::string& relative);

enum class ManifestKind { kCompressed, kCopied };

struct ManifestEntry {
  std::string original;  // path in the original directory
  std::string stored;    // path in the compressed directory
  ManifestKind kind = ManifestKind::kCopied;
};

struct ModelManifest {
  std::vector<ManifestEntry> entries;
};

// Writes DIR/bigsmall-manifest.json; returns its size.
absl::StatusOr<uint64_t> WriteManifest(const std::string& dir, const ModelManifest& manifest);
// Reads and validates it: relative paths only, no "..", no duplicates.
absl::StatusOr<ModelManifest> ReadManifest(const std::string& dir);
// The same checks on manifest text (`path` names it in errors).
absl::StatusOr<ModelManifest> ParseManifest(const std::string& text, const std::string& path);

absl::StatusOr<uint64_t> FileSize(const std::string& path);
// Creates the parent directories of root/relative.
absl::Status MakeParentDirs(const std::string& root, const std::string& relative);

}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_MODEL_DIR_H_
