// Human-readable numbers for the CLI: sizes, rates, durations, ratios.
#ifndef BIGSMALL_CLI_FORMAT_UTIL_H_
#define BIGSMALL_CLI_FORMAT_UTIL_H_

#include <cstdint>
#include <string>

namespace bigsmall::cli {

// Decimal units, one decimal: 950 B, 1.2 kB, 90.9 MB, 3.4 GB.
std::string HumanBytes(uint64_t bytes);
// Throughput in MB/s (decimal), e.g. "75 MB/s", "1.2 GB/s".
std::string HumanRate(double bytes_per_second);
// "0.4 s", "12.3 s", "4m05s", "1h02m".
std::string HumanDuration(double seconds);
// stored/original as a percentage with one decimal ("66.1%"); "-" for 0/0.
std::string Percent(uint64_t part, uint64_t whole);
// part/whole, 0 when whole is 0.
double Ratio(uint64_t part, uint64_t whole);
// Bytes per second, 0 when seconds is 0.
double Rate(uint64_t bytes, double seconds);

}  // namespace bigsmall::cli

#endif  // BIGSMALL_CLI_FORMAT_UTIL_H_
