// `bigsmall info`: what a .bs file or a compressed model directory holds.
#ifndef BIGSMALL_CLI_INFO_COMMAND_H_
#define BIGSMALL_CLI_INFO_COMMAND_H_

#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace bigsmall::cli {

// Describes `path` (a .bs file or a compressed directory) as JSON: format
// version, mode, writer, original/stored sizes and ratio (stored/original),
// delta info, layer groups, per-dtype totals and, with `with_tensors`, one
// entry per tensor including how each byte plane is stored (this reads every
// tensor blob's header; without it only the index is read).
absl::StatusOr<nlohmann::ordered_json> BuildInfo(const std::string& path, bool with_tensors);

// Renders BuildInfo's result as text tables.
std::string FormatInfo(const nlohmann::ordered_json& info);

// Name of a plane coder as shown by info ("raw", "const", "rans", "rans-ctx", "zstd").
const char* PlaneCoderName(uint8_t coder);

}  // namespace bigsmall::cli

#endif  // BIGSMALL_CLI_INFO_COMMAND_H_
