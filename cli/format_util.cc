#include "cli/format_util.h"

#include <cmath>

#include "absl/strings/str_format.h"

namespace bigsmall::cli {

std::string HumanBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"kB", "MB", "GB", "TB", "PB", "EB"};
  if (bytes < 1000) return absl::StrFormat("%d B", bytes);
  double v = static_cast<double>(bytes) / 1000.0;
  int unit = 0;
  while (v >= 999.95 && unit < 5) {
    v /= 1000.0;
    ++unit;
  }
  return absl::StrFormat("%.1f %s", v, kUnits[unit]);
}

std::string HumanRate(double bytes_per_second) {
  if (!(bytes_per_second > 0) || !std::isfinite(bytes_per_second)) return "- MB/s";
  const double mb = bytes_per_second / 1e6;
  if (mb >= 1000) return absl::StrFormat("%.1f GB/s", mb / 1000);
  if (mb >= 10) return absl::StrFormat("%.0f MB/s", mb);
  return absl::StrFormat("%.1f MB/s", mb);
}

std::string HumanDuration(double seconds) {
  if (!(seconds >= 0) || !std::isfinite(seconds)) return "-";
  if (seconds < 60) return absl::StrFormat("%.1f s", seconds);
  const uint64_t s = static_cast<uint64_t>(seconds + 0.5);
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
}

std::string Percent(uint64_t part, uint64_t whole) {
  if (whole == 0) return "-";
  return absl::StrFormat("%.1f%%", 100.0 * static_cast<double>(part) / static_cast<double>(whole));
}

double Ratio(uint64_t part, uint64_t whole) {
  return whole == 0 ? 0.0 : static_cast<double>(part) / static_cast<double>(whole);
}

double Rate(uint64_t bytes, double seconds) {
  return seconds > 0 ? static_cast<double>(bytes) / seconds : 0.0;
}

}  // namespace bigsmall::cli
