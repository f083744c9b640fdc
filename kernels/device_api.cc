// ResolveDevice: the device names requests use ("cuda:N", a GPU UUID).
#include <cctype>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "codec/status_macros.h"
#include "codec/status_util.h"
#include "kernels/device_api.h"

namespace bigsmall::gpu {
namespace {

// "GPU-" then 8-4-4-4-12 hex digits, as nvidia-smi -L prints it.
bool IsGpuUuid(const std::string& s) {
  static constexpr int kGroups[] = {8, 4, 4, 4, 12};
  if (!absl::StartsWith(s, "GPU-")) return false;
  size_t at = 4;
  for (size_t g = 0; g < 5; ++g) {
    if (g > 0) {
      if (at >= s.size() || s[at] != '-') return false;
      ++at;
    }
    for (int k = 0; k < kGroups[g]; ++k, ++at) {
      if (at >= s.size() || !std::isxdigit(static_cast<unsigned char>(s[at]))) return false;
    }
  }
  return at == s.size();
}

}  // namespace

absl::StatusOr<int> ResolveDevice(DeviceApi& api, const std::string& name) {
  const std::string shown = EscapeForLog(name);
  if (absl::StartsWith(name, "cuda:")) {
    const std::string digits = name.substr(5);
    int ordinal = 0;
    // Plain decimal digits only ("cuda:+1", "cuda: 1", "cuda:0x1" are malformed).
    const bool digits_only = !digits.empty() && digits.size() <= 9 &&
                             digits.find_first_not_of("0123456789") == std::string::npos;
    if (!digits_only || !absl::SimpleAtoi(digits, &ordinal)) {
      return absl::InvalidArgumentError(
          absl::StrCat("malformed device name ", shown, ": expected cuda:N (N a device ordinal) or a GPU UUID"));
    }
    ASSIGN_OR_RETURN(const int count, api.DeviceCount());
    if (ordinal >= count) {
      return absl::NotFoundError(absl::StrCat("no device ", shown, ": this ", api.name(), " runtime has ", count,
                                              count == 1 ? " device (cuda:0)" : " devices",
                                              count > 1 ? absl::StrCat(" (cuda:0 to cuda:", count - 1, ")") : ""));
    }
    return ordinal;
  }
  if (!IsGpuUuid(name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "malformed device name ", shown,
        ": expected cuda:N or a GPU UUID (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, as nvidia-smi -L prints it)"));
  }
  ASSIGN_OR_RETURN(const int count, api.DeviceCount());
  const std::string wanted = absl::AsciiStrToLower(name.substr(4));
  for (int i = 0; i < count; ++i) {
    absl::StatusOr<DeviceInfo> info = api.Describe(i);
    if (!info.ok()) return info.status();
    const std::string& uuid = info->uuid;
    if (absl::StartsWith(uuid, "GPU-") && absl::AsciiStrToLower(uuid.substr(4)) == wanted) return i;
  }
  return absl::NotFoundError(absl::StrCat("no device with UUID ", shown, " among the ", count, " of this ",
                                          api.name(), " runtime"));
}

}  // namespace bigsmall::gpu
