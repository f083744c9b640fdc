// A one-line progress bar on stderr: bytes done/total, percent, MB/s, ETA.
// Redraws at most ~10 times a second; does nothing when disabled (stderr not
// a terminal, --quiet or --json).
#ifndef BIGSMALL_CLI_PROGRESS_BAR_H_
#define BIGSMALL_CLI_PROGRESS_BAR_H_

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

#include "codec/progress.h"

namespace bigsmall::cli {

class ProgressBar {
 public:
  // `label` prefixes the bar (e.g. "compressing"). The codec reports progress
  // over the whole job, so each update carries its own total (0: unknown,
  // shown as bytes and rate only).
  ProgressBar(std::string label, bool enabled);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // True when stderr is a terminal (and TERM is not "dumb").
  static bool StderrIsTerminal();

  // A callback for the codec's options. The bar must outlive it.
  ProgressFn Callback();
  void Update(uint64_t done, uint64_t total);
  // Erases the bar (call before printing the summary or an error).
  void Finish();

 private:
  void Draw(uint64_t done, uint64_t total, double elapsed);

  std::mutex mu_;
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace bigsmall::cli

#endif  // BIGSMALL_CLI_PROGRESS_BAR_H_
