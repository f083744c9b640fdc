// Files written atomically: data goes to a temporary sibling and is renamed
// into place only after a successful fsync, so a failure or crash never
// leaves a half-written output under the final name.
#ifndef BIGSMALL_CODEC_FILE_UTIL_H_
#define BIGSMALL_CODEC_FILE_UTIL_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace bigsmall {

// A writable shared mapping of part of an AtomicFile: writes to bytes() are
// writes to the file. Unmapped on destruction (or Reset()).
class MappedRange {
 public:
  MappedRange() = default;
  MappedRange(MappedRange&& other) noexcept;
  MappedRange& operator=(MappedRange&& other) noexcept;
  ~MappedRange() { Reset(); }
  // Exactly the range asked for.
  absl::Span<uint8_t> bytes() const { return absl::MakeSpan(data_, size_); }
  void Reset();

 private:
  friend class AtomicFile;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// A regular file mapped read-only, whole (compress and decompress read their
// input through it: no copy, no buffer). Empty (ok() false) when the file
// cannot be mapped, is not regular, is empty, or its size is no longer
// `expected_size` (what the caller opened); callers then read it instead.
// Someone truncating the file while it is mapped makes a read of the lost
// pages SIGBUS (InstallTempCleanupOnSignals removes the temporaries then).
class ReadOnlyMapping {
 public:
  static ReadOnlyMapping Open(const std::string& path, uint64_t expected_size);
  ReadOnlyMapping() = default;
  ReadOnlyMapping(ReadOnlyMapping&& other) noexcept;
  ReadOnlyMapping& operator=(ReadOnlyMapping&&) = delete;
  ~ReadOnlyMapping();
  bool ok() const { return data_ != nullptr; }
  uint64_t size() const { return size_; }
  // [offset, offset + size), which must lie inside the file.
  absl::Span<const uint8_t> bytes(uint64_t offset, uint64_t size) const { return {data_ + offset, size}; }
  // Starts reading [offset, offset + size) into the page cache (readahead),
  // mapping nothing yet; advisory.
  void WillNeed(uint64_t offset, uint64_t size) const;
  // Drops this process's mappings of the pages of [offset, offset + size)
  // (the page cache keeps them; a later read faults them back), so the
  // resident set stays at the part in use; advisory.
  void Release(uint64_t offset, uint64_t size) const;

 private:
  void Advise(uint64_t offset, uint64_t size, int advice) const;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// An output file under construction. Write/WriteAt go to "<path>.tmp.<pid>.<n>";
// Commit() fsyncs and renames; the destructor removes the temporary unless
// committed. Create() refuses an existing output unless `overwrite`, and with
// `overwrite` refuses an existing directory (kInvalidArgument) before any
// work is done. Every error carries ErrorKind::kOutput; a missing output
// directory is NOT_FOUND saying so. While it exists, the temporary is in the
// registry InstallTempCleanupOnSignals() empties on SIGINT/SIGTERM/SIGHUP.
class AtomicFile {
 public:
  static absl::StatusOr<AtomicFile> Create(const std::string& path, bool overwrite);
  AtomicFile(AtomicFile&& other) noexcept;
  AtomicFile& operator=(AtomicFile&& other) noexcept;
  ~AtomicFile();

  absl::Status Write(absl::Span<const uint8_t> bytes);  // appends
  absl::Status WriteAt(uint64_t offset, absl::Span<const uint8_t> bytes);
  absl::Status PadTo(uint64_t offset);  // appends zeros up to offset
  uint64_t size() const { return size_; }

  // Writing in place (decompress decodes straight into the file's pages):
  // Resize sets the file's size (the new part reads as zeros); Reserve
  // allocates the space of [offset, offset + length) now (fallocate), so a
  // full disk is an error here and never a SIGBUS while writing through a
  // mapping; it is UNIMPLEMENTED where the filesystem cannot reserve space
  // (write with WriteAt there). MapRange maps [offset, offset + length)
  // (inside the size) for writing (UNIMPLEMENTED where the filesystem cannot
  // map files writably). Map only reserved ranges.
  absl::Status Resize(uint64_t size);
  absl::Status Reserve(uint64_t offset, uint64_t length);
  absl::StatusOr<MappedRange> MapRange(uint64_t offset, uint64_t length);
  absl::Status Commit();
  const std::string& path() const { return path_; }

 private:
  AtomicFile(std::string path, std::string temp_path, int fd, bool overwrite);
  void Abandon();
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  uint64_t size_ = 0;
  bool overwrite_ = false;
  int slot_ = -1;  // in the signal-cleanup registry
};

// A directory built under a temporary sibling name and renamed into place;
// with `overwrite`, replaces an existing directory (never a file).
class AtomicDirectory {
 public:
  static absl::StatusOr<AtomicDirectory> Create(const std::string& path, bool overwrite);
  AtomicDirectory(AtomicDirectory&& other) noexcept;
  AtomicDirectory& operator=(AtomicDirectory&& other) = delete;
  ~AtomicDirectory();
  // Where to write the contents before Commit().
  const std::string& temp_path() const { return temp_path_; }
  absl::Status Commit();

 private:
  AtomicDirectory(std::string path, std::string temp_path, bool overwrite);
  std::string path_;
  std::string temp_path_;
  bool overwrite_ = false;
  bool committed_ = false;
  int slot_ = -1;  // in the signal-cleanup registry
};

bool PathExists(const std::string& path);
bool IsDirectory(const std::string& path);
// Same file (device + inode), following symlinks; false when either is missing.
bool SameFile(const std::string& a, const std::string& b);
// Copies a regular file byte for byte (used for the non-tensor files of a model
// directory); `to` must not exist. A FIFO, device or socket is refused unread.
absl::Status CopyFile(const std::string& from, const std::string& to);

// OK when an output may be created at `path`: nothing there, or `overwrite`
// and the same kind (file, or `directory`) or a symlink. Else
// ALREADY_EXISTS / INVALID_ARGUMENT (with ErrorKind::kOutput).
absl::Status CheckOutputReplaceable(const std::string& path, bool overwrite, bool directory);

// Installs SIGINT/SIGTERM/SIGHUP handlers (not over an ignored signal) that
// remove every AtomicFile/AtomicDirectory temporary still in progress, then
// re-raise the signal with its default action. SIGBUS too (a mapped input
// truncated by someone else while it is read): the temporaries go, then the
// process dies of it. For the CLI's main().
void InstallTempCleanupOnSignals();

// Removes temporaries of `output` ("<name>.tmp.<pid>.<n>", and the
// "<name>.old.tmp.<pid>.<n>" of a replaced directory) left in its directory
// by processes that no longer exist (kill(pid, 0) fails with ESRCH): regular
// files and directories owned by this user only, never through a symlink.
// Returns how many it removed.
int ReapStaleTemps(const std::string& output);

}  // namespace bigsmall

#endif  // BIGSMALL_CODEC_FILE_UTIL_H_
