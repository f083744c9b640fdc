#include "codec/base_model.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "codec/file_util.h"
#include "codec/model_dir.h"
#include "codec/status_macros.h"

namespace bigsmall {

absl::StatusOr<SafetensorsFile> OpenSafetensors(const std::string& path) {
  SafetensorsFile f;
  ASSIGN_OR_RETURN(f.source, OpenFileSource(path));
  const uint64_t size = f.source->size();
  if (size < 8) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": too short to be a safetensors file"));
  }
  uint8_t first8[8];
  RETURN_IF_ERROR(f.source->ReadAt(0, absl::MakeSpan(first8, 8)));
  auto header_len_or = ParseSafetensorsHeaderLength(absl::MakeConstSpan(first8, 8), size);
  if (!header_len_or.ok()) {
    return absl::Status(header_len_or.status().code(),
                        absl::StrCat(path, ": ", header_len_or.status().message()));
  }
  const uint64_t header_len = *header_len_or;
  ASSIGN_OR_RETURN(f.prefix, ReadRange(*f.source, 0, 8 + header_len));
  ASSIGN_OR_RETURN(f.header, ParseSafetensorsHeader(f.prefix, size, path));
  return f;
}

absl::StatusOr<BaseModel> BaseModel::Open(const std::string& path) {
  BaseModel m;
  m.path_ = path;
  std::vector<std::string> paths;
  if (IsDirectory(path)) {
    ASSIGN_OR_RETURN(std::vector<DirEntry> entries, ListModelDirectory(path));
    for (const auto& e : entries) {
      if (IsSafetensorsName(e.relative)) paths.push_back(e.source);
    }
    if (paths.empty()) return absl::NotFoundError(absl::StrCat(path, ": no .safetensors files in base"));
  } else {
    paths.push_back(path);
  }
  for (const auto& p : paths) {
    ASSIGN_OR_RETURN(SafetensorsFile f, OpenSafetensors(p));
    const size_t index = m.files_.size();
    for (const auto& t : f.header.tensors) m.tensors_.emplace(t.name, Entry{index, t});
    m.files_.push_back(std::make_shared<SafetensorsFile>(std::move(f)));
  }
  return m;
}

const SafetensorsTensor* BaseModel::Find(const SafetensorsTensor& tensor) const {
  auto it = tensors_.find(tensor.name);
  if (it == tensors_.end()) return nullptr;
  const SafetensorsTensor& b = it->second.tensor;
  if (b.dtype_name != tensor.dtype_name || b.size() != tensor.size()) return nullptr;
  return &b;
}

absl::StatusOr<std::vector<uint8_t>> BaseModel::Read(const SafetensorsTensor& tensor) const {
  auto it = tensors_.find(tensor.name);
  if (it == tensors_.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_, ": base has no tensor '", tensor.name, "' (wrong --base?)"));
  }
  const SafetensorsFile& f = *files_[it->second.file];
  const SafetensorsTensor& b = it->second.tensor;
  if (b.size() != tensor.size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        path_, ": base tensor '", tensor.name, "' has a different size (wrong --base?)"));
  }
  return ReadRange(*f.source, f.header.header_bytes + b.begin, b.size());
}

}  // namespace bigsmall
