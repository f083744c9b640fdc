// `bigsmall info`: what a .bs file or a compressed model directory holds.
#ifndef BIGSMALL_CLI_INFO_COMMAND_H_
#define BIGSMALL_CLI_INFO_COMMAND_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "codec/bs_reader.h"
#include "codec/model_dir.h"
#include "nlohmann/json.hpp"

namespace bigsmall::cli {

// Describes `path` (a .bs file or a compressed directory) as JSON: format
// version, mode, writer, original/stored sizes and ratio (stored/original),
// delta info, layer groups, per-dtype totals and, with `with_tensors`, one
// entry per tensor including how each byte plane is stored (this reads every
// tensor blob's header; without it only the index is read).
absl::StatusOr<nlohmann::ordered_json> BuildInfo(const std::string& path, bool with_tensors);

// The same description for a .bs file already open (its header and index
// read; `path` is what the output calls it, e.g. a Hub URL).
absl::StatusOr<nlohmann::ordered_json> BuildFileInfo(BsReader& reader, const std::string& path,
                                                     bool with_tensors);

// How a compressed directory's stored files are reached (local files, or a
// Hub repo's files by range requests): open a .bs file, size a copied one.
struct InfoFiles {
  std::function<absl::StatusOr<std::unique_ptr<BsReader>>(const std::string& stored)> open;
  std::function<absl::StatusOr<uint64_t>(const std::string& stored)> size;
};
// A compressed directory's description from its manifest (`manifest_bytes`:
// the manifest file's size, counted as stored); `path` prefixes the files'
// paths in the output.
absl::StatusOr<nlohmann::ordered_json> BuildDirectoryInfo(const std::string& path, const ModelManifest& manifest,
                                                          uint64_t manifest_bytes, const InfoFiles& files,
                                                          bool with_tensors);

// Renders BuildInfo's result as text tables.
std::string FormatInfo(const nlohmann::ordered_json& info);

// Name of a plane coder as shown by info ("raw", "const", "rans", "rans-ctx", "zstd").
const char* PlaneCoderName(uint8_t coder);

}  // namespace bigsmall::cli

#endif  // BIGSMALL_CLI_INFO_COMMAND_H_
