#include "cli/progress_bar.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/format_util.h"

namespace bigsmall::cli {
namespace {

constexpr auto kRedrawInterval = std::chrono::milliseconds(100);
constexpr int kBarWidth = 24;

}  // namespace

ProgressBar::ProgressBar(std::string label, bool enabled)
    : label_(std::move(label)),
      enabled_(enabled),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_ - kRedrawInterval) {}

ProgressBar::~ProgressBar() { Finish(); }

bool ProgressBar::StderrIsTerminal() {
  if (isatty(STDERR_FILENO) == 0) return false;
  const char* term = std::getenv("TERM");
  return term == nullptr || std::strcmp(term, "dumb") != 0;
}

ProgressFn ProgressBar::Callback() {
  if (!enabled_) return nullptr;
  return [this](uint64_t done, uint64_t total) { Update(done, total); };
}

void ProgressBar::Update(uint64_t done, uint64_t total) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_draw_ < kRedrawInterval && !(total != 0 && done >= total)) return;
  last_draw_ = now;
  Draw(done, total, std::chrono::duration<double>(now - start_).count());
}

void ProgressBar::Draw(uint64_t done, uint64_t total, double elapsed) {
  const double rate = Rate(done, elapsed);
  std::string line = absl::StrCat(label_, " ");
  if (total > 0) {
    const double frac = done >= total ? 1.0 : static_cast<double>(done) / static_cast<double>(total);
    const int filled = static_cast<int>(frac * kBarWidth);
    absl::StrAppend(&line, "[", std::string(filled, '#'), std::string(kBarWidth - filled, '.'), "] ",
                    absl::StrFormat("%5.1f%% ", 100.0 * frac), HumanBytes(done), " / ",
                    HumanBytes(total), "  ", HumanRate(rate));
    if (rate > 0 && done < total) {
      absl::StrAppend(&line, "  ETA ", HumanDuration(static_cast<double>(total - done) / rate));
    }
  } else {
    absl::StrAppend(&line, HumanBytes(done), "  ", HumanRate(rate));
  }
  // \r, the line, then clear to the end of the line.
  std::fprintf(stderr, "\r%s\033[K", line.c_str());
  std::fflush(stderr);
  drawn_ = true;
}

void ProgressBar::Finish() {
  std::lock_guard<std::mutex> lock(mu_);
  enabled_ = false;  // nothing is drawn after the bar is finished
  if (!drawn_) return;
  std::fprintf(stderr, "\r\033[K");
  std::fflush(stderr);
  drawn_ = false;
}

}  // namespace bigsmall::cli
